# expect: signature
# App. B's printed signature, without l_p
def update_fn(w, g, var1, var2, t, d, t_p, b_p, key):
    update = g
    return update, var1, var2
