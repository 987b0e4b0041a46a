"""The paper's optimisers as source strings: the four initial ones (App. B) and the three
discovered ones (§6). These are the exact strings the search starts from and mutates.

Choices (documented in docs/optimisers.md):
- Every function uses App. C's full signature, which includes ``l_p``; App. B prints the
  signature without it. The bodies of App. B are verbatim.
- §6 prints shorthand (``clip``, ``sqrt``, ``log``, ``where``, ``v1``/``v2``); it is
  translated to ``jnp`` with ``var1``/``var2`` and nothing else changed, including
  ``norm = g / (1 + g)`` in Discovered Optimiser 2 as printed (gradients are clipped to
  global norm 0.5 first, so ``1 + g`` stays >= 0.5).
"""

from __future__ import annotations

SIGNATURE = "def update_fn(w, g, var1, var2, t, d, t_p, b_p, l_p, key):"

SIGN_UPDATE = f"""{SIGNATURE}
    relative_update = 0.001
    sign_gradient = jnp.sign(g)
    var1 = var1 * t_p + (1 - t_p) * sign_gradient
    update = relative_update * w * var1
    return update, var1, var2
"""

RELATIVE_UPDATE = f"""{SIGNATURE}
    weight_norm = jnp.sqrt(jnp.sum(w**2))
    update = g * weight_norm
    return update, var1, var2
"""

GRADIENT_STEP = f"""{SIGNATURE}
    update = g
    return update, var1, var2
"""

CLIPPED_UPDATE = f"""{SIGNATURE}
    weight_threshold = 0.01
    weight_magnitude = jnp.sqrt(jnp.sum(w**2))
    clip_threshold = weight_threshold * weight_magnitude
    grad_norm = jnp.sqrt(jnp.sum(g**2))
    update = jax.lax.cond(
        grad_norm > clip_threshold,
        lambda: g * (clip_threshold / grad_norm),
        lambda: g,
    )
    return update, var1, var2
"""

DISCOVERED_1 = f"""{SIGNATURE}
    m = 0.9
    var1 = m * var1 + (1 - m) * g
    var2 = m * var2 + (1 - m) * g**2
    var2 = jnp.clip(var2, 1e-8, 1.0)
    lr = jnp.sqrt((1 - t_p) * (1 + b_p))
    lr = lr * (1 + l_p)
    d_scale = 1 + jnp.log(1 + d)
    lr2 = 1 / (1 + var2)
    update = var1 * lr * d_scale * lr2
    return update, var1, var2
"""

DISCOVERED_2 = f"""{SIGNATURE}
    m = 0.9
    norm = g / (1 + g)
    var1 = m * var1 + (1 - m) * norm
    var2 = m * var2 + (1 - m) * (g - var1)
    lr = 1 / (1 + var2)
    boost = 1 + jnp.log(1 + d)
    lr2 = (1 - t_p) * (1 + l_p)
    update = var1 * lr * boost * lr2 * (1 + b_p)
    return update, var1, var2
"""

DISCOVERED_3 = f"""{SIGNATURE}
    m = 0.9
    var1 = m * var1 + (1 - m) * g
    var2 = m * var2 + (1 - m) * (g - var1) ** 2
    lr = 1 / (1 + jnp.sqrt(var2 + 1e-8))
    lr2 = (1 - t_p) * (1 + l_p)
    d_scale = 1 + jnp.log(1 + d) * (1 - t_p)
    d_scale *= 1 + 0.1 * t_p
    boost = jnp.where(d < 1.0, 2.0, 1.0)
    d_scale *= boost
    update = var1 * lr * d_scale * lr2
    return update, var1, var2
"""

#: App. B, in the paper's order: the archive is initialised with these.
INITIAL: dict[str, str] = {
    "sign_update": SIGN_UPDATE,
    "relative_update": RELATIVE_UPDATE,
    "gradient_step": GRADIENT_STEP,
    "clipped_update": CLIPPED_UPDATE,
}

#: §6, Discovered Optimisers 1-3.
DISCOVERED: dict[str, str] = {
    "discovered_1": DISCOVERED_1,
    "discovered_2": DISCOVERED_2,
    "discovered_3": DISCOVERED_3,
}

#: Every symbolic optimiser of the paper by name.
SYMBOLIC: dict[str, str] = {**INITIAL, **DISCOVERED}
