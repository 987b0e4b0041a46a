# expect: non_finite
# t_p is 0 at the first update
def update_fn(w, g, var1, var2, t, d, t_p, b_p, l_p, key):
    update = g / t_p
    return update, var1, var2
