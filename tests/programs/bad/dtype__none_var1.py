# expect: dtype
# None as var1
def update_fn(w, g, var1, var2, t, d, t_p, b_p, l_p, key):
    update = g
    return update, None, var2
