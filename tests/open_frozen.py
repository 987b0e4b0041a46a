"""OPEN's update as rayopt computed it before issue 14 (commit 7137b0d), frozen.

A verbatim copy of ``rayopt/optim/open.py``'s ``_features`` and ``open_transform`` at that
commit (per-tensor features concatenated into one batch, flax GRUCell and MLP, per-leaf
state). ``tests/test_open.py`` checks that the restructured implementation gives the same
updates and state to float tolerance, and ``benchmarks/open_throughput.py`` measures it as
the "before". Do not optimise this file: it is the yardstick.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from rayopt.optim.context import UpdateContext
from rayopt.optim.open import (
    DECAYS,
    EXP_MULT,
    LOG_EPS,
    NORM_EPS,
    NUM_INPUTS,
    STEP_MULT,
    OpenState,
    OpenVariant,
    open_networks,
)


def _features(
    p: jax.Array, g: jax.Array, m: jax.Array, dorm: jax.Array,
    t_p: jax.Array, l_p: jax.Array, b_p: jax.Array,
) -> jax.Array:  # fmt: skip
    x = jnp.concatenate(
        [
            p[..., None],
            jnp.sign(m),
            jnp.log(jnp.abs(m) + LOG_EPS),
            jnp.sign(g)[..., None],
            jnp.log(jnp.abs(g) + LOG_EPS)[..., None],
        ],
        axis=-1,
    )
    axes = tuple(range(p.ndim))
    x = x * jax.lax.rsqrt(NORM_EPS + jnp.mean(jnp.square(x), axis=axes, keepdims=True))
    scalars = jnp.stack([jnp.asarray(v, x.dtype) for v in (t_p, l_p, b_p)])
    return jnp.concatenate(
        [
            x,
            jnp.broadcast_to(scalars, p.shape + (3,)),
            jnp.broadcast_to(jnp.asarray(dorm, x.dtype), p.shape)[..., None],
        ],
        axis=-1,
    )


def frozen_open_transform(
    theta: dict, variant: OpenVariant
) -> optax.GradientTransformationExtraArgs:
    """The pre-issue-14 OPEN transformation (per-leaf ``OpenState``)."""
    gru, mlp = open_networks(variant)
    decays = jnp.asarray(DECAYS, jnp.float32)
    width = variant.gru_features

    def init(params: Any) -> OpenState:
        zeros = lambda p, n: jnp.zeros(p.shape + (n,), jnp.float32)  # noqa: E731
        return OpenState(
            momenta=jax.tree.map(lambda p: zeros(p, len(DECAYS)), params),
            carry=jax.tree.map(lambda p: zeros(p, width), params),
        )

    def update(
        grads: Any, state: OpenState, params: Any = None, *, ctx: UpdateContext, **_: Any
    ) -> tuple[Any, OpenState]:
        leaves, treedef = jax.tree.flatten(params)
        flat = lambda tree: treedef.flatten_up_to(tree)  # noqa: E731
        g = [x.astype(jnp.float32) for x in flat(grads)]
        m = [decays * m0 + (1.0 - decays) * gi[..., None]
             for m0, gi in zip(flat(state.momenta), g, strict=True)]  # fmt: skip
        keys = jax.random.split(ctx.key, len(leaves))
        per_tensor = zip(leaves, g, m, flat(ctx.dormancy), flat(ctx.l_p), strict=True)
        x = jnp.concatenate([
            _features(p.astype(jnp.float32), gi, mi, d, ctx.t_p, lp, ctx.b_p)
            .reshape(-1, NUM_INPUTS)
            for p, gi, mi, d, lp in per_tensor
        ])  # fmt: skip
        h = jnp.concatenate([c.reshape(-1, width) for c in flat(state.carry)])
        h, out = gru.apply(theta["gru_params"], h, x)
        o = mlp.apply(theta["params"], out)
        noise = jnp.concatenate([
            jax.random.normal(k, p.shape, jnp.float32).ravel() * jnp.asarray(mk, jnp.float32)
            for k, p, mk in zip(keys, leaves, flat(ctx.actor_mask), strict=True)
        ])  # fmt: skip
        u = o[:, 0] * STEP_MULT * jnp.exp(o[:, 1] * EXP_MULT) + o[:, 2] * noise * STEP_MULT
        u = u - jnp.mean(u)
        splits = np.cumsum([p.size for p in leaves])[:-1]
        parts = zip(leaves, jnp.split(u, splits), jnp.split(h, splits), strict=True)
        updates, carry = zip(*[
            (-ui.reshape(p.shape).astype(p.dtype), hi.reshape(p.shape + (width,)))
            for p, ui, hi in parts
        ], strict=True)  # fmt: skip
        return treedef.unflatten(updates), OpenState(
            momenta=treedef.unflatten(m), carry=treedef.unflatten(carry)
        )

    return optax.GradientTransformationExtraArgs(init, update)
