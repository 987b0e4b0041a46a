# expect: forbidden
# numpy is not available (np.sign)
def update_fn(w, g, var1, var2, t, d, t_p, b_p, l_p, key):
    update = np.sign(g)
    return update, var1, var2
