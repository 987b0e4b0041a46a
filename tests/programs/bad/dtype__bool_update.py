# expect: dtype
# a boolean update
def update_fn(w, g, var1, var2, t, d, t_p, b_p, l_p, key):
    update = g > 0
    return update, var1, var2
