# expect: runtime
# d broadcast along the wrong axis
def update_fn(w, g, var1, var2, t, d, t_p, b_p, l_p, key):
    update = g * d[:, None]
    return update, var1, var2
