# expect: forbidden
# __builtins__ by name
def update_fn(w, g, var1, var2, t, d, t_p, b_p, l_p, key):
    b = __builtins__
    update = g
    return update, var1, var2
