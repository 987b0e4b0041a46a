# expect: forbidden
# __import__ to reach os
def update_fn(w, g, var1, var2, t, d, t_p, b_p, l_p, key):
    os = __import__(g)
    update = g
    return update, var1, var2
