# expect: forbidden
# globals()
def update_fn(w, g, var1, var2, t, d, t_p, b_p, l_p, key):
    env = globals()
    update = g
    return update, var1, var2
