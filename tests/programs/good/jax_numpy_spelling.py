def update_fn(w, g, var1, var2, t, d, t_p, b_p, l_p, key):
    # Same modules spelled out in full, and lax without jax.
    m = jax.numpy.tanh(g) if t_p.ndim == 0 else g
    var1 = lax.select(jnp.abs(m) > var1, m, var1 * 0.5)
    update = jax.nn.sigmoid(var1) - 0.5
    update = update * jnp.sqrt(jnp.mean(w ** 2) + 1e-12)
    return update, var1, var2
