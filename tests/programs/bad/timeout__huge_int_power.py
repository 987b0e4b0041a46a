# expect: timeout
# timeout: 3
# Python integer arithmetic that runs for minutes at trace time
def update_fn(w, g, var1, var2, t, d, t_p, b_p, l_p, key):
    big = 10 ** 10 ** 9
    update = g
    return update, var1, var2
