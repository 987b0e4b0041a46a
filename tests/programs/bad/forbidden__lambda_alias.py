# expect: forbidden
# a lambda bound to a name (then called: unbounded nesting)
def update_fn(w, g, var1, var2, t, d, t_p, b_p, l_p, key):
    f = lambda x: x * 0.5
    update = f(g)
    return update, var1, var2
