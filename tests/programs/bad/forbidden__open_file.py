# expect: forbidden
# open() on a file descriptor
def update_fn(w, g, var1, var2, t, d, t_p, b_p, l_p, key):
    f = open(0)
    update = g
    return update, var1, var2
