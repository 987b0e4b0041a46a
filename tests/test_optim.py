"""The optimiser interface: symbolic update_fn wrapping, the library, clipping, resolve."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from rayopt.optim import (
    SYMBOLIC,
    OptimiserSpec,
    UpdateContext,
    UpdateShapeError,
    build,
    clip_by_global_norm_per_network,
    resolve,
    symbolic,
)
from rayopt.program import load_checked


def _params():
    k = jax.random.split(jax.random.PRNGKey(0), 4)
    net = lambda a, b: {
        "params": {  # noqa: E731
            "Dense_0": {"kernel": jax.random.normal(a, (5, 3)), "bias": jnp.zeros(3)},
            "Dense_1": {"kernel": jax.random.normal(b, (3, 2)), "bias": jnp.ones(2)},
        }
    }
    return {"actor": net(k[0], k[1]), "critic": net(k[2], k[3])}


def _ctx(params, key=0, t_p=0.25, b_p=0.5):
    def per_layer(value_fn):
        return {
            n: {
                "params": {
                    layer: {leaf: value_fn(layer, v[leaf]) for leaf in v}
                    for layer, v in params[n]["params"].items()
                }
            }
            for n in params
        }

    return UpdateContext(
        key=jax.random.PRNGKey(key),
        t_p=jnp.float32(t_p),
        b_p=jnp.float32(b_p),
        dormancy=per_layer(lambda layer, x: jnp.full(x.shape[-1:], 0.5)),
        l_p=per_layer(lambda layer, x: float(layer[-1])),
        actor_mask={
            "actor": jax.tree.map(lambda _: 1.0, params["actor"]),
            "critic": jax.tree.map(lambda _: 0.0, params["critic"]),
        },
    )


def test_symbolic_passes_inputs_and_carries_state():
    seen = []

    def update_fn(w, g, var1, var2, t, d, t_p, b_p, l_p, key):
        seen.append((w.shape, d.shape, l_p))
        var1 = var1 + g
        var2 = var2 + 1.0
        return 2.0 * g + 0 * t_p + 0 * b_p, var1, var2

    params = _params()
    grads = jax.tree.map(jnp.ones_like, params)
    opt = symbolic(update_fn)
    state = opt.init(params)
    updates, state = opt.update(grads, state, params, ctx=_ctx(params))
    # new parameter = w - update, so optax's additive update is -update
    np.testing.assert_allclose(updates["actor"]["params"]["Dense_0"]["kernel"], -2.0)
    updates, state = opt.update(grads, state, params, ctx=_ctx(params))
    assert int(state.count) == 2
    np.testing.assert_allclose(state.var1["critic"]["params"]["Dense_1"]["bias"], 2.0)
    np.testing.assert_allclose(state.var2["actor"]["params"]["Dense_0"]["kernel"], 2.0)
    # kernel (in, out) gets d of shape (out,), and its layer proportion
    assert ((5, 3), (3,), 0.0) in seen and ((3, 2), (2,), 1.0) in seen


def test_symbolic_gives_each_tensor_its_own_key():
    def update_fn(w, g, var1, var2, t, d, t_p, b_p, l_p, key):
        return jax.random.normal(key, w.shape), var1, var2

    params = _params()
    opt = symbolic(update_fn)
    updates, _ = opt.update(params, opt.init(params), params, ctx=_ctx(params))
    leaves = [np.asarray(x).ravel()[0] for x in jax.tree.leaves(updates)]
    assert len(set(np.round(leaves, 6))) == len(leaves)
    again, _ = opt.update(params, opt.init(params), params, ctx=_ctx(params, key=1))
    assert not np.allclose(jax.tree.leaves(again)[0], jax.tree.leaves(updates)[0])


def test_symbolic_rejects_wrong_shapes():
    def update_fn(w, g, var1, var2, t, d, t_p, b_p, l_p, key):
        return jnp.sum(g), var1, var2

    params = _params()
    opt = symbolic(update_fn)
    with pytest.raises(UpdateShapeError, match="shape"):
        opt.update(params, opt.init(params), params, ctx=_ctx(params))


@pytest.mark.parametrize("name", list(SYMBOLIC))
def test_library_optimisers_run_and_stay_finite(name):
    params = _params()
    grads = jax.tree.map(lambda x: 0.1 * jnp.ones_like(x), params)
    opt = build(resolve(name))
    state = opt.init(params)
    step = jax.jit(lambda g, s, p, c: opt.update(g, s, p, ctx=c))
    for i in range(3):
        updates, state = step(grads, state, params, _ctx(params, key=i, t_p=i / 2))
        params = optax.apply_updates(params, updates)
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(params))


def test_discovered_optimiser_1_matches_hand_computation():
    """One step of DO1 on a scalar-per-entry input, computed by hand."""
    fn = load_checked(SYMBOLIC["discovered_1"])
    w, g = jnp.array([[0.3, -0.2]]), jnp.array([[0.5, -1.0]])
    z = jnp.zeros_like(w)
    d = jnp.array([1.0, 3.0])
    u, v1, v2 = fn(w, g, z, z, 1, d, 0.5, 0.0, 1.0, jax.random.PRNGKey(0))
    m1 = 0.1 * np.array([[0.5, -1.0]])
    m2 = np.clip(0.1 * np.array([[0.25, 1.0]]), 1e-8, 1.0)
    lr = np.sqrt(0.5 * 1.0) * 2.0
    expect = m1 * lr * (1 + np.log(1 + np.array([1.0, 3.0]))) / (1 + m2)
    np.testing.assert_allclose(u, expect, rtol=1e-6)
    np.testing.assert_allclose(v1, m1, rtol=1e-6)
    np.testing.assert_allclose(v2, m2, rtol=1e-6)


def test_clip_is_per_network():
    grads = {"actor": {"w": jnp.full(4, 10.0)}, "critic": {"w": jnp.full(4, 0.01)}}
    clip = clip_by_global_norm_per_network(0.5)
    out, _ = clip.update(grads, clip.init(grads))
    assert float(jnp.linalg.norm(out["actor"]["w"])) == pytest.approx(0.5, rel=1e-5)
    np.testing.assert_allclose(out["critic"]["w"], 0.01)  # under the norm: untouched


def test_adam_is_optax_adam_after_clipping():
    params = _params()
    grads = jax.tree.map(lambda x: 0.01 * jnp.ones_like(x), params)
    ours = build(resolve("adam"))
    ref = optax.adam(1e-3)
    u1, _ = ours.update(grads, ours.init(params), params, ctx=_ctx(params))
    u2, _ = ref.update(grads, ref.init(params), params)
    for a, b in zip(jax.tree.leaves(u1), jax.tree.leaves(u2), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6)


def test_resolve(tmp_path):
    assert resolve("adam").learning_rate == 1e-3
    assert resolve("adam:3e-4").learning_rate == 3e-4
    assert resolve("discovered_2").code == SYMBOLIC["discovered_2"]
    f = tmp_path / "mine.py"
    f.write_text(SYMBOLIC["gradient_step"])
    spec = resolve(str(f))
    assert (spec.name, spec.kind) == ("mine", "symbolic")
    with pytest.raises(ValueError, match="unknown optimiser"):
        resolve("sgd")
    with pytest.raises(FileNotFoundError):
        resolve(str(tmp_path / "absent.py"))
    with pytest.raises(ValueError, match="OPEN needs its checkpoint"):
        OptimiserSpec(name="open", kind="open")
