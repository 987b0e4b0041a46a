"""OPEN from its published checkpoints: loading, the update rule against an independent
numpy reference written from the public code's definition, and PPO with it."""

from __future__ import annotations

import os
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

from rayopt.optim import OptimiserSpec, UpdateContext, build, resolve
from rayopt.optim.open import (
    VARIANTS,
    OpenVariant,
    load_open_params,
    open_optimiser,
    open_transform,
    param_count,
)

OPEN_DIR = Path(os.environ.get("RAYOPT_OPEN_DIR", "/work/shared/open"))
PUBLISHED = {
    "multi_OPEN.npy": 3571,
    "asterix_OPEN.npy": 1211,
    "breakout_OPEN.npy": 1211,
    "freeway_OPEN.npy": 1211,
    "spaceinvaders_OPEN.npy": 1211,
}


def published(name: str) -> Path:
    path = OPEN_DIR / name
    if not path.is_file():
        pytest.skip(f"published OPEN checkpoint {path} not available (set RAYOPT_OPEN_DIR)")
    return path


def random_checkpoint(tmp_path: Path, size: int, seed: int = 0) -> Path:
    """A checkpoint-shaped file with random weights, so the numerics need no download."""
    path = tmp_path / f"random_{size}.npy"
    rng = np.random.default_rng(seed)
    np.save(path, (0.5 * rng.standard_normal(size)).astype(np.float32))
    return path


# ---------------------------------------------------------------- loading
def flax_template(hidden: int, gru_features: int) -> dict:
    """The meta-parameter pytree as OPEN's ``GRU_Opt.init`` builds it (eval.py unravels
    each published vector into this with ``ravel_pytree``)."""
    gru = nn.GRUCell(features=gru_features)
    mlp = nn.Sequential(
        [nn.Dense(hidden), nn.LayerNorm(), nn.relu, nn.Dense(hidden), nn.LayerNorm(), nn.relu,
         nn.Dense(3)]
    )  # fmt: skip
    k = jax.random.PRNGKey(0)
    return {
        "params": mlp.init(k, jnp.zeros([gru_features])),
        "gru_params": gru.init(k, gru.initialize_carry(k, (1,)), jnp.zeros([19])),
    }


@pytest.mark.parametrize("size,hidden,gru", [(1211, 16, 8), (3571, 32, 16)])
def test_parameter_counts_match_checkpoint_sizes(size: int, hidden: int, gru: int) -> None:
    assert VARIANTS[size] == OpenVariant(VARIANTS[size].name, hidden, gru)
    assert param_count(VARIANTS[size]) == size
    assert ravel_pytree(flax_template(hidden, gru))[0].size == size


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_every_published_checkpoint_loads(name: str) -> None:
    path = published(name)
    tree, variant = load_open_params(path)
    flat = np.load(path)
    assert flat.size == PUBLISHED[name]
    assert variant == VARIANTS[PUBLISHED[name]]
    # Unflattening is the inverse of the publisher's ravel_pytree, value for value.
    assert jax.tree.structure(tree) == jax.tree.structure(
        flax_template(variant.hidden_size, variant.gru_features)
    )
    np.testing.assert_array_equal(np.asarray(ravel_pytree(tree)[0]), flat)


def test_bad_checkpoints_have_clear_errors(tmp_path: Path) -> None:
    cases = {
        "wrong_size.npy": (np.zeros(1000, np.float32), r"1000 values; expected 1211 .* or 3571"),
        "float64.npy": (np.zeros(1211, np.float64), r"dtype float64; expected float32"),
        "two_d.npy": (np.zeros((1211, 1), np.float32), r"shape \(1211, 1\); expected a flat"),
        "nan.npy": (np.full(3571, np.nan, np.float32), r"non-finite"),
    }
    for name, (array, message) in cases.items():
        np.save(tmp_path / name, array)
        with pytest.raises(ValueError, match=message) as info:
            load_open_params(tmp_path / name)
        assert name in str(info.value)
    (tmp_path / "text.npy").write_text("not an array")
    with pytest.raises(ValueError, match=r"text\.npy.*not a readable \.npy"):
        load_open_params(tmp_path / "text.npy")
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match=r"objects\.npy"):
        load_open_params(tmp_path / "objects.npy")
    with pytest.raises(FileNotFoundError, match=r"missing\.npy.*not a file"):
        load_open_params(tmp_path / "missing.npy")
    with pytest.raises(FileNotFoundError, match="not a file"):
        load_open_params(tmp_path)  # a directory
    with pytest.raises(FileNotFoundError, match=r"missing\.npy"):
        build(resolve("open", open_weights=tmp_path / "missing.npy"))


def test_open_needs_weights(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAYOPT_OPEN_WEIGHTS", raising=False)
    with pytest.raises(ValueError, match="--open-weights"):
        resolve("open")


def test_loads_are_cached_by_path(tmp_path: Path) -> None:
    from rayopt.optim import open as open_module

    path = random_checkpoint(tmp_path, 1211)
    open_optimiser(path)
    before = open_module._load_cached.cache_info()
    open_optimiser(str(path))
    after = open_module._load_cached.cache_info()
    assert (after.hits, after.misses) == (before.hits + 1, before.misses)


# ---------------------------------------------------------------- numpy reference
# Written out from rl_optimizer/network.py (feature construction, update, global mean),
# learned_optimization's vec_rolling_mom, and flax's GRUCell / LayerNorm / Dense
# definitions, in float64. Only the per-tensor Gaussian draws come from JAX.
# OPEN holds the decays as float32 (jnp.asarray), so 1 - 0.9999 is 1.00017e-4, not 1e-4.
DECAYS_REF = np.array([0.1, 0.5, 0.9, 0.99, 0.999, 0.9999], np.float32).astype(np.float64)


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def ref_gru(w: dict, h: np.ndarray, x: np.ndarray) -> np.ndarray:
    """flax GRUCell: r, z gates; n with the reset gate inside; h' = (1 - z) n + z h."""
    k = lambda name: np.asarray(w[name]["kernel"], np.float64)  # noqa: E731
    b = lambda name: np.asarray(w[name]["bias"], np.float64)  # noqa: E731
    r = sigmoid(x @ k("ir") + b("ir") + h @ k("hr"))
    z = sigmoid(x @ k("iz") + b("iz") + h @ k("hz"))
    n = np.tanh(x @ k("in") + b("in") + r * (h @ k("hn") + b("hn")))
    return (1.0 - z) * n + z * h


def ref_layer_norm(x: np.ndarray, w: dict, eps: float = 1e-6) -> np.ndarray:
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * np.asarray(w["scale"]) + np.asarray(w["bias"])


def ref_mlp(w: dict, x: np.ndarray) -> np.ndarray:
    dense = lambda x, d: x @ np.asarray(d["kernel"], np.float64) + np.asarray(d["bias"])  # noqa: E731
    x = np.maximum(ref_layer_norm(dense(x, w["layers_0"]), w["layers_1"]), 0.0)
    x = np.maximum(ref_layer_norm(dense(x, w["layers_3"]), w["layers_4"]), 0.0)
    return dense(x, w["layers_6"])


def ref_tensor(p, g, mom, dorm, t_p, l_p, b_p, carry, mask, noise, meta):
    """OPEN's _update_tensor for one tensor: its (pre-mean) update and new GRU carry."""
    eps1, eps_norm = 1e-13, 1e-5
    stack = np.concatenate(
        [p[..., None], np.sign(mom), np.log(np.abs(mom) + eps1),
         np.sign(g)[..., None], np.log(np.abs(g) + eps1)[..., None]], axis=-1,
    )  # fmt: skip
    axes = tuple(range(p.ndim))
    stack = stack / np.sqrt(eps_norm + np.mean(stack**2, axis=axes, keepdims=True))
    ones = np.ones(p.shape + (1,))
    dorm_feature = dorm[..., None]
    if p.shape != dorm.shape:  # kernels: OPEN tiles the (out,) dormancy over the input axis
        dorm_feature = np.tile(dorm_feature, (p.shape[0], 1, 1))
    inp = np.concatenate(
        [stack, t_p * ones, l_p * ones, b_p * ones, dorm_feature], axis=-1
    )  # fmt: skip
    new_carry = ref_gru(meta["gru_params"]["params"], carry, inp)
    out = ref_mlp(meta["params"]["params"], new_carry)
    update = out[..., 0] * 1e-3 * np.exp(out[..., 1] * 1e-3) + out[..., 2] * mask * noise * 1e-3
    return update, new_carry


def ref_step(params, grads, moms, carries, ctx_np, key, meta):
    """One OPEN step over the flat leaf lists (JAX leaf order, as OPEN splits keys)."""
    keys = jax.random.split(key, len(params))
    new_moms = [DECAYS_REF * m + (1 - DECAYS_REF) * g[..., None]
                for m, g in zip(moms, grads, strict=True)]  # fmt: skip
    updates, new_carries = [], []
    for i, (p, g, m) in enumerate(zip(params, grads, new_moms, strict=True)):
        noise = np.asarray(jax.random.normal(keys[i], p.shape), np.float64)
        u, c = ref_tensor(
            p, g, m, ctx_np["dormancy"][i], ctx_np["t_p"], ctx_np["l_p"][i], ctx_np["b_p"],
            carries[i], ctx_np["mask"][i], noise, meta,
        )  # fmt: skip
        updates.append(u)
        new_carries.append(c)
    mean = np.concatenate([u.ravel() for u in updates]).mean()
    return [u - mean for u in updates], new_moms, new_carries


def tiny_params(rng: np.random.Generator) -> dict:
    def net() -> dict:
        return {
            "params": {
                "Dense_0": {"kernel": rng.normal(size=(3, 2)), "bias": rng.normal(size=2) * 0.1},
                "Dense_1": {"kernel": rng.normal(size=(2, 4)), "bias": np.zeros(4)},
            }
        }

    return {"actor": net(), "critic": net()}


@pytest.mark.parametrize("size", [3571, 1211, "multi_OPEN.npy"])
def test_update_matches_independent_reference(tmp_path: Path, size) -> None:
    path = published(size) if isinstance(size, str) else random_checkpoint(tmp_path, size)
    flat = np.load(path).astype(np.float64)
    variant = VARIANTS[flat.size]
    # The reference unflattens the way eval.py does: ravel_pytree of the flax init.
    meta = ravel_pytree(flax_template(variant.hidden_size, variant.gru_features))[1](
        jnp.asarray(flat)
    )
    meta = jax.tree.map(lambda x: np.asarray(x, np.float64), meta)

    rng = np.random.default_rng(1)
    params = tiny_params(rng)
    leaves, treedef = jax.tree.flatten(params)
    is_actor = [jax.tree_util.keystr(p).startswith("['actor']")
                for p, _ in jax.tree_util.tree_leaves_with_path(params)]  # fmt: skip
    layer = [1.0 if "Dense_1" in jax.tree_util.keystr(p) else 0.0
             for p, _ in jax.tree_util.tree_leaves_with_path(params)]  # fmt: skip
    dorm_leaves = [rng.uniform(0.0, 2.0, size=x.shape[-1:]) for x in leaves]
    tx = jax.jit(open_optimiser(path).update)
    state = open_optimiser(path).init(jax.tree.map(jnp.float32, params))

    f32 = lambda xs: treedef.unflatten([jnp.asarray(x, jnp.float32) for x in xs])  # noqa: E731
    moms = [np.zeros(x.shape + (6,)) for x in leaves]
    carries = [np.zeros(x.shape + (variant.gru_features,)) for x in leaves]
    p_ref = [np.asarray(x, np.float64) for x in leaves]
    p_jax = f32(p_ref)
    for step, (t_p, b_p) in enumerate([(0.25, 0.0), (0.5, 1.0 / 3.0)]):
        grads = [rng.normal(size=x.shape) * 10.0 ** rng.uniform(-4, 0) for x in leaves]
        key = jax.random.PRNGKey(step + 7)
        ctx_np = dict(t_p=t_p, b_p=b_p, l_p=layer, dormancy=dorm_leaves,
                      mask=[1.0 if a else 0.0 for a in is_actor])  # fmt: skip
        ctx = UpdateContext(
            key=key,
            t_p=jnp.float32(t_p),
            b_p=jnp.float32(b_p),
            dormancy=f32(dorm_leaves),
            l_p=treedef.unflatten(layer),
            actor_mask=treedef.unflatten(ctx_np["mask"]),
        )
        updates, state = tx(f32(grads), state, p_jax, ctx=ctx)
        u_ref, moms, carries = ref_step(p_ref, grads, moms, carries, ctx_np, key, meta)

        u_jax = [-np.asarray(u, np.float64) for u in jax.tree.leaves(updates)]
        # Updates are O(1e-3): compare in units of OPEN's step multiplier.
        for a, b in zip(u_jax, u_ref, strict=True):
            np.testing.assert_allclose(a / 1e-3, b / 1e-3, rtol=1e-4, atol=1e-5)
        # The carry is one (n, F) array: every tensor's elements, in JAX leaf order.
        flat_carry = np.concatenate([c.reshape(-1, variant.gru_features) for c in carries])
        np.testing.assert_allclose(np.asarray(state.carry), flat_carry, rtol=1e-4, atol=1e-5)
        for a, b in zip(jax.tree.leaves(state.momenta), moms, strict=True):
            np.testing.assert_allclose(np.asarray(a), b, rtol=1e-5, atol=1e-9)
        # Zero mean over actor and critic together, not per network.
        total = np.concatenate([u.ravel() for u in u_jax])
        actor = np.concatenate([u.ravel() for u, a in zip(u_jax, is_actor, strict=True) if a])
        assert abs(total.mean()) < 1e-9 < abs(actor.mean())
        p_ref = [p - u for p, u in zip(p_ref, u_ref, strict=True)]
        p_jax = optax.apply_updates(p_jax, updates)
    assert step == 1 and np.abs(np.asarray(jax.tree.leaves(state.carry)[0])).max() > 0


def test_noise_is_actor_only(tmp_path: Path) -> None:
    """Two keys change each actor element differently; the critic only by the shared
    shift of the global mean."""
    tx = open_optimiser(random_checkpoint(tmp_path, 1211))
    params = jax.tree.map(jnp.float32, tiny_params(np.random.default_rng(2)))
    grads = jax.tree.map(lambda p: 0.01 * jnp.cos(jnp.arange(p.size) + p.sum()).reshape(p.shape),
                         params)  # fmt: skip
    mask = {"actor": jax.tree.map(lambda _: 1.0, params["actor"]),
            "critic": jax.tree.map(lambda _: 0.0, params["critic"])}  # fmt: skip
    update = jax.jit(tx.update)

    def run(seed: int) -> dict:
        ctx = UpdateContext(
            jax.random.PRNGKey(seed), jnp.float32(0.5), jnp.float32(0.0),
            jax.tree.map(lambda p: jnp.ones(p.shape[-1:]), params),
            jax.tree.map(lambda _: 0.5, params), mask,
        )  # fmt: skip
        return update(grads, tx.init(params), params, ctx=ctx)[0]

    diff = jax.tree.map(lambda a, b: np.asarray(a - b), run(0), run(1))
    critic = np.concatenate([d.ravel() for d in jax.tree.leaves(diff["critic"])])
    actor = np.concatenate([d.ravel() for d in jax.tree.leaves(diff["actor"])])
    np.testing.assert_allclose(critic, critic[0], atol=1e-9)
    assert np.ptp(actor) > 1e-6


def test_open_transform_on_ppo_sized_tree_under_jit(tmp_path: Path) -> None:
    """A PPO-shaped agent (400 inputs, 64 hidden): finite updates that move the params."""
    from rayopt.rl.networks import MLP, layer_proportions

    theta, variant = load_open_params(random_checkpoint(tmp_path, 3571))
    tx = optax.chain(optax.identity(), open_transform(theta, variant))
    x = jnp.ones((5, 400))
    params = {
        "actor": MLP(64, 2, 6, "relu", 0.01).init(jax.random.PRNGKey(0), x),
        "critic": MLP(64, 2, 1).init(jax.random.PRNGKey(1), x),
    }
    ctx = UpdateContext(
        jax.random.PRNGKey(3), jnp.float32(0.1), jnp.float32(0.0),
        jax.tree.map(lambda p: jnp.ones(p.shape[-1:]), params),
        {k: layer_proportions(params[k]) for k in params},
        {"actor": jax.tree.map(lambda _: 1.0, params["actor"]),
         "critic": jax.tree.map(lambda _: 0.0, params["critic"])},
    )  # fmt: skip

    @jax.jit
    def step(params, state):
        grads = jax.tree.map(lambda p: 0.01 * jnp.tanh(p + 0.1), params)
        updates, state = tx.update(grads, state, params, ctx=ctx)
        return optax.apply_updates(params, updates), state

    new, state = params, tx.init(params)
    for _ in range(3):
        new, state = step(new, state)
    pairs = zip(jax.tree.leaves(new), jax.tree.leaves(params), strict=True)
    moved = [float(jnp.abs(a - b).max()) for a, b in pairs]
    assert all(np.isfinite(x).all() for x in jax.tree.leaves((new, state)))
    assert min(moved) > 0 and max(moved) < 0.1


# ---------------------------------------------------------------- PPO
def _open_spec(tmp_path: Path) -> OptimiserSpec:
    path = OPEN_DIR / "multi_OPEN.npy"
    if not path.is_file():
        path = random_checkpoint(tmp_path, 3571)
    return resolve("open", open_weights=path)


def test_ppo_smoke_with_open(tmp_path: Path) -> None:
    from rayopt.rl.evaluation import evaluate
    from rayopt.rl.ppo import config_for

    config = config_for("breakout", total_timesteps=3 * 8 * 32, num_envs=8, num_steps=32)
    result = evaluate(_open_spec(tmp_path), config, [0])
    assert result.return_curve.shape == (1, 3)
    assert bool(result.finite.all())


def frozen_policy_returns(config, seeds) -> np.ndarray:
    """The initial, near-uniform policy's mean return (PPO with every update zeroed)."""
    from rayopt.rl.execution import train_seeds
    from rayopt.rl.ppo import make_train

    frozen = optax.with_extra_args_support(optax.set_to_zero())
    return np.asarray(train_seeds(make_train(config, frozen), seeds).metrics.auc)


@pytest.mark.slow
def test_multi_open_learns_breakout() -> None:
    """At 5e5 steps (OPEN's own Breakout budget), multi-OPEN clearly beats random play."""
    from rayopt.rl.evaluation import evaluate
    from rayopt.rl.ppo import config_for

    spec = resolve("open", open_weights=published("multi_OPEN.npy"))
    seeds = [0, 1]
    config = config_for("breakout", total_timesteps=500_000)
    result = evaluate(spec, config, seeds)
    random_return = frozen_policy_returns(config.replace(total_timesteps=100_000), seeds)
    print("multi-OPEN final", result.final_return, "random", random_return)
    assert bool(result.finite.all())
    assert result.final_return.min() > 3.0 * random_return.max() + 2.0


# ---------------------------------------------------------------- CLI
def test_cli_rejects_missing_or_bad_weights_before_training(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    from rayopt.cli import main

    monkeypatch.delenv("RAYOPT_OPEN_WEIGHTS", raising=False)
    assert main(["evaluate", "--optimizers", "adam,open", "--envs", "breakout"]) == 2
    assert "--open-weights" in capsys.readouterr().err
    bad = tmp_path / "bad.npy"
    np.save(bad, np.zeros(7, np.float32))
    argv = ["evaluate", "--optimizers", "adam,open", "--envs", "breakout"]
    assert main([*argv, "--open-weights", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "bad.npy" in err and "7 values" in err
    monkeypatch.setenv("RAYOPT_OPEN_WEIGHTS", str(tmp_path / "gone.npy"))
    assert main(["evaluate", "--optimizers", "open", "--envs", "breakout"]) == 2
    assert "gone.npy" in capsys.readouterr().err


# ---------------------------------------------------------------- restructured = frozen
@pytest.mark.parametrize("mask_kind", ["python", "array"])
def test_restructured_update_matches_frozen_implementation(mask_kind: str) -> None:
    """The restructured OPEN (fused gates, per-tensor inputs as biases, flat carry, folded
    LayerNorm centring, no critic draw) gives the pre-issue-14 implementation's updates,
    momenta and carries (tests/open_frozen.py) to float tolerance: the published
    multi-OPEN on Breakout's PPO shapes, three steps."""
    from open_frozen import frozen_open_transform

    from rayopt.rl.networks import MLP, layer_proportions

    theta, variant = load_open_params(published("multi_OPEN.npy"))
    obs = jnp.ones((5, 400))  # Breakout-MinAtar: 10 x 10 x 4 flat, 3 actions
    params = {
        "actor": MLP(64, 2, 3, "relu", 0.01).init(jax.random.PRNGKey(0), obs),
        "critic": MLP(64, 2, 1).init(jax.random.PRNGKey(1), obs),
    }
    mask_value = (lambda v: v) if mask_kind == "python" else jnp.float32  # noqa: E731
    mask = {k: jax.tree.map(lambda _, v=v: mask_value(v), params[k])
            for k, v in (("actor", 1.0), ("critic", 0.0))}  # fmt: skip
    new, old = open_transform(theta, variant), frozen_open_transform(theta, variant)
    rng = np.random.default_rng(3)

    def step(tx, grads, state, p, ctx):
        return tx.update(grads, state, p, ctx=ctx)

    step = jax.jit(step, static_argnums=0)
    s_new, s_old, p = new.init(params), old.init(params), params
    for i in range(3):
        grads = jax.tree.map(
            lambda x: jnp.asarray(rng.normal(size=x.shape) * 10.0 ** rng.uniform(-4, -1),
                                  jnp.float32), params)  # fmt: skip
        ctx = UpdateContext(
            jax.random.PRNGKey(10 + i), jnp.float32(i / 3), jnp.float32(i % 2),
            jax.tree.map(lambda x: jnp.asarray(rng.uniform(0, 2, x.shape[-1:]), jnp.float32),
                         params),
            {k: layer_proportions(params[k]) for k in params}, mask,
        )  # fmt: skip
        u_new, s_new = step(new, grads, s_new, p, ctx)
        u_old, s_old = step(old, grads, s_old, p, ctx)
        for a, b in zip(jax.tree.leaves(u_new), jax.tree.leaves(u_old), strict=True):
            np.testing.assert_allclose(np.asarray(a) / 1e-3, np.asarray(b) / 1e-3,
                                       rtol=1e-4, atol=1e-5)  # fmt: skip
        old_carry = jnp.concatenate(
            [c.reshape(-1, variant.gru_features) for c in jax.tree.leaves(s_old.carry)]
        )
        pairs = [*zip(jax.tree.leaves(s_new.momenta), jax.tree.leaves(s_old.momenta),
                      strict=True), (s_new.carry, old_carry)]  # fmt: skip
        for a, b in pairs:
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)
        p = optax.apply_updates(p, u_old)
    assert np.abs(np.asarray(jax.tree.leaves(s_new.carry)[0])).max() > 0.01
