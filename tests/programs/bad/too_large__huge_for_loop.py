# expect: too_large
# a for loop with a million iterations
def update_fn(w, g, var1, var2, t, d, t_p, b_p, l_p, key):
    update = g
    for i in range(1000000):
        update = update * 0.999
    return update, var1, var2
