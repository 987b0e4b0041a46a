# expect: runtime
# jnp.reshape(g, (7,))
def update_fn(w, g, var1, var2, t, d, t_p, b_p, l_p, key):
    update = jnp.reshape(g, (7,))
    return update, var1, var2
