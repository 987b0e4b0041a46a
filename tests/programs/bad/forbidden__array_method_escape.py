# expect: forbidden
# an attribute outside the array allowlist
def update_fn(w, g, var1, var2, t, d, t_p, b_p, l_p, key):
    dev = g.devices()
    update = g
    return update, var1, var2
