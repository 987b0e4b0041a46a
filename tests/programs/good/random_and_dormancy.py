def update_fn(w, g, var1, var2, t, d, t_p, b_p, l_p, key):
    """Noise for dormant neurons (d < 1), relative to the weight norm, fading over training."""
    noise = jax.random.normal(key, w.shape)
    dormant = jnp.where(d < 1.0, 1.0 - d, 0.0)
    scale = jnp.linalg.norm(w) / jnp.sqrt(w.size) + 1e-3
    var1 = 0.9 * var1 + 0.1 * g
    update = var1 + (1 - t_p) * 0.01 * scale * noise * dormant
    return update, var1, var2
