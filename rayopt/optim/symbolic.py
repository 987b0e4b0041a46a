"""A symbolic optimiser: the paper's ``update_fn`` as an optax transformation."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from rayopt.optim.context import UpdateContext

UpdateFn = Callable[..., tuple[jax.Array, jax.Array, jax.Array]]


class SymbolicState(NamedTuple):
    """``count`` steps taken; ``var1``/``var2`` the two recurrent tensors, zero-initialised."""

    count: jax.Array
    var1: Any
    var2: Any


class UpdateShapeError(ValueError):
    """An update_fn returned a tensor whose shape differs from its parameter's."""


def symbolic(update_fn: UpdateFn) -> optax.GradientTransformationExtraArgs:
    """Wrap ``update_fn(w, g, var1, var2, t, d, t_p, b_p, l_p, key) -> (update, var1, var2)``.

    It is called once per parameter tensor (a kernel ``(in, out)`` or a bias ``(out,)``),
    with ``d`` of shape ``(out,)``; the new parameter is ``w - update``. ``t`` is the
    1-based step count. Each tensor gets its own key, split from ``ctx.key``.
    """

    def init(params: Any) -> SymbolicState:
        zeros = jax.tree.map(jnp.zeros_like, params)
        return SymbolicState(count=jnp.zeros((), jnp.int32), var1=zeros, var2=zeros)

    def update(
        grads: Any, state: SymbolicState, params: Any = None, *, ctx: UpdateContext, **_: Any
    ) -> tuple[Any, SymbolicState]:
        if params is None:
            raise ValueError("symbolic optimisers need the current parameters")
        t = state.count + 1
        leaves, treedef = jax.tree.flatten(params)
        keys = jax.random.split(ctx.key, len(leaves))
        keys = jax.tree.unflatten(treedef, list(keys))

        def one(path, w, g, v1, v2, d, l_p, k):
            u, nv1, nv2 = update_fn(w, g, v1, v2, t, d, ctx.t_p, ctx.b_p, l_p, k)
            for name, out, ref in (("update", u, w), ("var1", nv1, v1), ("var2", nv2, v2)):
                if jnp.shape(out) != ref.shape:
                    raise UpdateShapeError(
                        f"update_fn returned {name} of shape {jnp.shape(out)} for parameter "
                        f"{jax.tree_util.keystr(path)} of shape {ref.shape}"
                    )
            cast = lambda x: jnp.asarray(x, w.dtype)  # noqa: E731
            return -cast(u), cast(nv1), cast(nv2)

        out = jax.tree_util.tree_map_with_path(
            one, params, grads, state.var1, state.var2, ctx.dormancy, ctx.l_p, keys
        )
        updates = jax.tree.map(lambda _, o: o[0], params, out)
        var1 = jax.tree.map(lambda _, o: o[1], params, out)
        var2 = jax.tree.map(lambda _, o: o[2], params, out)
        return updates, SymbolicState(count=t, var1=var1, var2=var2)

    return optax.GradientTransformationExtraArgs(init, update)
