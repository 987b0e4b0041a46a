# expect: forbidden
# eval()
def update_fn(w, g, var1, var2, t, d, t_p, b_p, l_p, key):
    update = eval(g)
    return update, var1, var2
