# expect: non_finite
# var2 starts at zero
def update_fn(w, g, var1, var2, t, d, t_p, b_p, l_p, key):
    var1 = 0.9 * var1 + 0.1 * g
    update = var1 / var2
    return update, var1, var2
