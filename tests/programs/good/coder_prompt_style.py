"""Written the way App. C's coder prompt asks: full annotations (including the
non-existent ``jax.ndarray``, never evaluated), comments, a docstring."""


def update_fn(w: jnp.ndarray, g: jnp.ndarray, var1: jnp.ndarray, var2: jnp.ndarray, t: int,
              d: jnp.ndarray, t_p: float, b_p: float, l_p: float,
              key: jax.ndarray) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
    """Sign momentum, relative to the weight, as in App. C's example."""
    # How much each weight will proportionally change
    relative_update = 0.001

    # Take the sign of the gradients
    sign_gradient = jnp.sign(g)

    # Momentum whose scale depends on how far through training we are
    var1 = var1 * t_p + (1 - t_p) * sign_gradient

    # Change each weight only by the relative size desired
    update = relative_update * w * var1

    return update, var1, var2
