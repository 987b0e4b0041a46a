# expect: memory
# the huge array hides in a lax.cond branch
def update_fn(w, g, var1, var2, t, d, t_p, b_p, l_p, key):
    update = jax.lax.cond(t_p > 2.0, lambda: g + jnp.ones((1 << 36,))[0], lambda: g)
    return update, var1, var2
