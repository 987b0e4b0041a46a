# expect: forbidden
# jnp.load reads files
def update_fn(w, g, var1, var2, t, d, t_p, b_p, l_p, key):
    data = jnp.load(w)
    update = g
    return update, var1, var2
