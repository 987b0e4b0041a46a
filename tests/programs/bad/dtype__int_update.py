# expect: dtype
# an integer update
def update_fn(w, g, var1, var2, t, d, t_p, b_p, l_p, key):
    update = jnp.sign(g).astype(jnp.int32)
    return update, var1, var2
