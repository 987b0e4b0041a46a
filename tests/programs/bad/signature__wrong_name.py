# expect: signature
# the function is not called update_fn
def update(w, g, var1, var2, t, d, t_p, b_p, l_p, key):
    update = g
    return update, var1, var2
