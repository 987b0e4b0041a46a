"""What an optimiser sees beyond the gradient: OPEN's extra inputs for one update."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax

PyTree = Any


class UpdateContext(NamedTuple):
    """The per-step inputs PPO hands to every optimiser (paper §2, App. C).

    Passed as the ``ctx`` extra argument of an optax ``GradientTransformationExtraArgs``;
    transformations that do not need it (Adam) ignore it.

    Attributes:
      key: a fresh PRNG key for this step; symbolic optimisers split it per tensor.
      t_p: training proportion, ``update / (num_updates - 1)`` in [0, 1].
      b_p: batch proportion, ``epoch / (update_epochs - 1)`` in [0, 1].
      dormancy: like params; each leaf is the dormancy of the neurons the tensor feeds,
        shape ``(out,)`` (broadcasts along a kernel's last axis).
      l_p: like params; scalar layer proportion ``i / (layers - 1)`` within its network.
      actor_mask: like params; 1.0 for actor tensors, 0.0 for critic tensors (OPEN's
        learned noise is applied to the actor only).
    """

    key: jax.Array
    t_p: jax.Array
    b_p: jax.Array
    dormancy: PyTree
    l_p: PyTree
    actor_mask: PyTree
