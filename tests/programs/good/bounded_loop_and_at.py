def update_fn(w, g, var1, var2, t, d, t_p, b_p, l_p, key):
    # A few Newton steps for an inverse square root, unrolled by a bounded for loop.
    x = jnp.ones_like(var2)
    v = var2 + 1e-4
    for i in range(3):
        x = x * (1.5 - 0.5 * v * x * x)
    var2 = 0.99 * var2 + 0.01 * jnp.square(g)
    var2 = var2.at[..., 0].set(jnp.maximum(var2[..., 0], 0.0))
    update = g * jnp.clip(x, 0.0, 10.0) * (1 + l_p) * (1 + b_p) / 4
    return update.astype(jnp.float32), var1, var2
