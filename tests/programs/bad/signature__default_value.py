# expect: signature
# a default value on a parameter
def update_fn(w, g, var1, var2, t, d, t_p, b_p, l_p, key=None):
    update = g
    return update, var1, var2
