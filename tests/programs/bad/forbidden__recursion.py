# expect: forbidden
# update_fn calls itself
def update_fn(w, g, var1, var2, t, d, t_p, b_p, l_p, key):
    update, var1, var2 = update_fn(w, g, var1, var2, t, d, t_p, b_p, l_p, key)
    return update, var1, var2
