# expect: signature
# a second top-level function
def helper(x):
    return x * 0.5


def update_fn(w, g, var1, var2, t, d, t_p, b_p, l_p, key):
    update = g
    return update, var1, var2
