# expect: signature
# forgets to return
def update_fn(w, g, var1, var2, t, d, t_p, b_p, l_p, key):
    update = g
    var1 = 0.9 * var1 + g
