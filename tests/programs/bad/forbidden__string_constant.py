# expect: forbidden
# a string constant (a path, a command ...)
def update_fn(w, g, var1, var2, t, d, t_p, b_p, l_p, key):
    path = '/etc/passwd'
    update = g
    return update, var1, var2
