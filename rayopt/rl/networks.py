"""Actor and critic MLPs that also report each layer's mean absolute activation.

The activations feed dormancy (Sokar et al., 2023), an input of OPEN and of every
symbolic optimiser. Layer ``i`` is ``Dense_i``; the output layer counts as a layer
(logits / value), as in OPEN.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax.linen.initializers import constant, orthogonal

ACTIVATIONS = {"relu": nn.relu, "tanh": nn.tanh}


class MLP(nn.Module):
    """``depth`` hidden layers of ``width`` units, then a linear output layer.

    Returns ``(output, activations)``: ``activations[i]`` is ``mean(|h_i|)`` over the batch
    for layer ``i`` (post-activation for hidden layers, raw output for the last), shape
    ``(units_i,)``. Initialisation follows PureJaxRL/OPEN: orthogonal(sqrt 2) hidden,
    orthogonal(``out_scale``) output, zero biases.
    """

    width: int
    depth: int
    out_dim: int
    activation: str = "relu"
    out_scale: float = 1.0

    @nn.compact
    def __call__(self, x: jax.Array) -> tuple[jax.Array, tuple[jax.Array, ...]]:
        act = ACTIVATIONS[self.activation]
        acts = []
        for _ in range(self.depth):
            x = act(
                nn.Dense(self.width, kernel_init=orthogonal(np.sqrt(2)), bias_init=constant(0.0))(x)
            )
            acts.append(_mean_abs(x))
        x = nn.Dense(self.out_dim, kernel_init=orthogonal(self.out_scale), bias_init=constant(0.0))(
            x
        )
        acts.append(_mean_abs(x))
        return x, tuple(acts)


def _mean_abs(x: jax.Array) -> jax.Array:
    return jnp.mean(jnp.abs(x.reshape(-1, x.shape[-1])), axis=0)


def dormancy(mean_abs_activation: jax.Array) -> jax.Array:
    """OPEN's dormancy of each neuron of a layer: ``a_i / sum_j |a_j| * N``.

    ``a`` are the layer's mean absolute activations; the result averages 1 over the layer
    and lies in ``[0, N]``. OPEN's ``1e-11`` guard keeps an all-dead layer finite.
    """
    a = mean_abs_activation + 1e-11
    return a / jnp.sum(jnp.abs(a), axis=-1, keepdims=True) * a.shape[-1]


def layer_tree(network_params: dict, values: Sequence) -> dict:
    """Map one value per layer (``Dense_i``) onto a network's ``{kernel, bias}`` leaves."""
    layers = network_params["params"]
    return {
        "params": {name: {leaf: values[_index(name)] for leaf in layers[name]} for name in layers}
    }


def layer_proportions(network_params: dict) -> dict:
    """OPEN's layer proportion ``i / (L - 1)`` for every leaf of one network."""
    n = len(network_params["params"])
    props = [i / (n - 1) if n > 1 else 0.0 for i in range(n)]
    return layer_tree(network_params, props)


def _index(layer_name: str) -> int:
    return int(layer_name.rsplit("_", 1)[1])
