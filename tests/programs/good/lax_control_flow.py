def update_fn(w, g, var1, var2, t, d, t_p, b_p, l_p, key):
    # Adam-like moments with a bias correction computed by a bounded fori_loop
    var1 = 0.9 * var1 + (1 - 0.9) * g
    var2 = 0.999 * var2 + (1 - 0.999) * g ** 2
    correction = jax.lax.fori_loop(0, 4, lambda i, c: c * 0.5 + 0.5, jnp.float32(0.0))
    scale = jax.lax.cond(
        t_p < 0.5,
        lambda: jnp.asarray(1.0, jnp.float32),
        lambda: 1.0 - 0.5 * t_p,
    )
    update = 0.001 * scale * correction * var1 / (jnp.sqrt(var2) + 1e-8)
    return update, var1, var2
