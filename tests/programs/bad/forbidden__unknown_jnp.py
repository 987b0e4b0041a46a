# expect: forbidden
# a jnp function that does not exist
def update_fn(w, g, var1, var2, t, d, t_p, b_p, l_p, key):
    update = jnp.softsign(g)
    return update, var1, var2
