"""Dormancy and layer proportion, checked against hand computation on a tiny network."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from rayopt.rl.networks import MLP, dormancy, layer_proportions, layer_tree


def test_activations_and_dormancy_by_hand():
    net = MLP(width=3, depth=2, out_dim=2, activation="relu")
    x = jax.random.normal(jax.random.PRNGKey(0), (5, 4))
    params = net.init(jax.random.PRNGKey(1), x[0])
    out, acts = net.apply(params, x)

    # forward pass by hand in numpy
    p = jax.tree.map(np.asarray, params["params"])
    h1 = np.maximum(np.asarray(x) @ p["Dense_0"]["kernel"] + p["Dense_0"]["bias"], 0)
    h2 = np.maximum(h1 @ p["Dense_1"]["kernel"] + p["Dense_1"]["bias"], 0)
    o = h2 @ p["Dense_2"]["kernel"] + p["Dense_2"]["bias"]
    np.testing.assert_allclose(out, o, rtol=1e-5, atol=1e-6)
    for got, h in zip(acts, (h1, h2, o), strict=True):
        np.testing.assert_allclose(got, np.abs(h).mean(0), rtol=1e-5, atol=1e-6)

    # dormancy: a_i / sum_j a_j * N (OPEN), mean 1 over the layer
    a = np.abs(h1).mean(0) + 1e-11
    np.testing.assert_allclose(dormancy(acts[0]), a / a.sum() * 3, rtol=1e-5)
    np.testing.assert_allclose(float(jnp.mean(dormancy(acts[1]))), 1.0, rtol=1e-5)
    # a dead layer stays finite
    assert np.all(np.isfinite(dormancy(jnp.zeros(4))))


def test_layer_proportions_and_tree_mapping():
    net = MLP(width=3, depth=2, out_dim=2)
    params = net.init(jax.random.PRNGKey(0), jnp.zeros(4))
    props = layer_proportions(params)
    assert props["params"]["Dense_0"] == {"kernel": 0.0, "bias": 0.0}
    assert props["params"]["Dense_1"]["kernel"] == 0.5
    assert props["params"]["Dense_2"]["bias"] == 1.0
    tree = layer_tree(params, ["a", "b", "c"])
    assert tree["params"]["Dense_2"] == {"kernel": "c", "bias": "c"}
    assert jax.tree.structure(tree) == jax.tree.structure(params)
