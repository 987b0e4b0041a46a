# expect: dtype
# a complex update
def update_fn(w, g, var1, var2, t, d, t_p, b_p, l_p, key):
    update = jnp.sqrt(g.astype(jnp.complex64))
    return update, var1, var2
