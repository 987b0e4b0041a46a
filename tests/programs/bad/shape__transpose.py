# expect: shape
# returns the transpose (fails on the (8, 4) kernel)
def update_fn(w, g, var1, var2, t, d, t_p, b_p, l_p, key):
    update = g.T
    return update, var1, var2
