# expect: forbidden
# w.__class__ to walk the object graph
def update_fn(w, g, var1, var2, t, d, t_p, b_p, l_p, key):
    k = w.__class__
    update = g
    return update, var1, var2
