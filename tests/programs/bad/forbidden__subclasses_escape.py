# expect: forbidden
# the classic ().__class__.__base__.__subclasses__() escape
def update_fn(w, g, var1, var2, t, d, t_p, b_p, l_p, key):
    s = ().__class__.__base__.__subclasses__()
    update = g
    return update, var1, var2
