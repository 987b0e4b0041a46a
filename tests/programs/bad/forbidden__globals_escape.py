# expect: forbidden
# reaching the module globals through the function
def update_fn(w, g, var1, var2, t, d, t_p, b_p, l_p, key):
    env = update_fn.__globals__
    update = g
    return update, var1, var2
