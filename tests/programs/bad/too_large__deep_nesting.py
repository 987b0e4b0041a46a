# expect: too_large
# an expression nested 80 deep
def update_fn(w, g, var1, var2, t, d, t_p, b_p, l_p, key):
    update = jnp.abs(jnp.abs(jnp.abs(jnp.abs(jnp.abs(jnp.abs(jnp.abs(jnp.abs(jnp.abs(jnp.abs(jnp.abs(jnp.abs(jnp.abs(jnp.abs(jnp.abs(jnp.abs(jnp.abs(jnp.abs(jnp.abs(jnp.abs(jnp.abs(jnp.abs(jnp.abs(jnp.abs(jnp.abs(jnp.abs(jnp.abs(jnp.abs(jnp.abs(jnp.abs(jnp.abs(jnp.abs(jnp.abs(jnp.abs(jnp.abs(jnp.abs(jnp.abs(jnp.abs(jnp.abs(jnp.abs(jnp.abs(jnp.abs(jnp.abs(jnp.abs(jnp.abs(jnp.abs(jnp.abs(jnp.abs(jnp.abs(jnp.abs(jnp.abs(jnp.abs(jnp.abs(jnp.abs(jnp.abs(jnp.abs(jnp.abs(jnp.abs(jnp.abs(jnp.abs(jnp.abs(jnp.abs(jnp.abs(jnp.abs(jnp.abs(jnp.abs(jnp.abs(jnp.abs(jnp.abs(jnp.abs(jnp.abs(jnp.abs(jnp.abs(jnp.abs(jnp.abs(jnp.abs(jnp.abs(jnp.abs(jnp.abs(jnp.abs(g))))))))))))))))))))))))))))))))))))))))))))))))))))))))))))))))))))))))))))))))
    return update, var1, var2
