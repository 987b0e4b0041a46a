# expect: forbidden
# getattr() to reach a denied function
def update_fn(w, g, var1, var2, t, d, t_p, b_p, l_p, key):
    f = getattr(jnp, w)
    update = g
    return update, var1, var2
