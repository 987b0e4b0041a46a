"""PPO: what the optimiser is fed, seed batching, every library optimiser, and learning."""

from __future__ import annotations

import jax
import numpy as np
import optax
import pytest

from rayopt.optim import SYMBOLIC, build, resolve
from rayopt.rl.execution import train_seeds
from rayopt.rl.ppo import config_for, make_train


def _probe(records: list):
    """An optimiser that records the inputs PPO hands it (and then does plain SGD)."""

    def record(t_p, b_p, dorm, l_p, mask, key):
        records.append(
            dict(t_p=float(t_p), b_p=float(b_p), dorm=dorm, l_p=l_p, mask=mask, key=np.asarray(key))
        )

    def init(params):
        return optax.EmptyState()

    def update(grads, state, params=None, *, ctx, **_):
        jax.debug.callback(
            record, ctx.t_p, ctx.b_p, ctx.dormancy, ctx.l_p, ctx.actor_mask, ctx.key, ordered=True
        )
        return jax.tree.map(lambda g: -1e-3 * g, grads), state

    return optax.GradientTransformationExtraArgs(init, update)


def test_optimiser_inputs_t_p_b_p_l_p_dormancy(tiny_cartpole):
    cfg = tiny_cartpole  # 3 updates x 2 epochs x 2 minibatches
    records: list = []
    trainer = make_train(cfg, _probe(records))
    jax.block_until_ready(jax.jit(trainer.train)(jax.random.PRNGKey(0)))
    assert len(records) == 3 * 2 * 2
    # t_p = update / (num_updates - 1); b_p = epoch / (epochs - 1); per minibatch update
    assert [r["t_p"] for r in records] == [0.0] * 4 + [0.5] * 4 + [1.0] * 4
    assert [r["b_p"] for r in records] == [0.0, 0.0, 1.0, 1.0] * 3
    r = records[0]
    assert r["l_p"]["actor"]["params"]["Dense_1"]["kernel"] == pytest.approx(0.5)
    assert r["l_p"]["critic"]["params"]["Dense_2"]["bias"] == pytest.approx(1.0)
    assert r["mask"]["actor"]["params"]["Dense_0"]["kernel"] == 1.0
    assert r["mask"]["critic"]["params"]["Dense_0"]["kernel"] == 0.0
    for net, out in (("actor", 2), ("critic", 1)):
        d = r["dorm"][net]["params"]
        assert d["Dense_0"]["kernel"].shape == (cfg.hidden_size,)
        assert d["Dense_2"]["bias"].shape == (out,)
        np.testing.assert_allclose(np.mean(d["Dense_1"]["kernel"]), 1.0, rtol=1e-4)
        np.testing.assert_array_equal(d["Dense_1"]["kernel"], d["Dense_1"]["bias"])
    keys = {tuple(x["key"].ravel()) for x in records}
    assert len(keys) == len(records)  # a fresh key every step


def test_vmapped_seeds_equal_seeds_one_by_one(tiny_cartpole):
    """The accelerator strategy (vmap) against the CPU one (a seed at a time)."""
    trainer = make_train(tiny_cartpole, build(resolve("adam")))
    together = train_seeds(trainer, [0, 1, 2, 3], strategy="vmap", fast_compile=True).metrics
    for i in range(4):
        alone = train_seeds(trainer, [i], strategy="map", fast_compile=True).metrics
        np.testing.assert_allclose(alone.return_curve[0], together.return_curve[i], rtol=1e-4)
        np.testing.assert_allclose(alone.auc[0], together.auc[i], rtol=1e-4)
    assert len({float(x) for x in together.auc}) > 1  # different seeds, different runs


def test_first_updates_run_on_the_full_runs_executable(tiny_cartpole):
    """The speed screen's run: the first updates of a run, on the executable the whole
    run compiles to (one compile), giving exactly the whole run's first points."""
    trainer = make_train(tiny_cartpole, build(resolve("adam")))  # 3 updates
    full = train_seeds(trainer, [0, 1], fast_compile=True)
    first = train_seeds(trainer, [0, 1], fast_compile=True, num_updates=2)
    assert first.compile_s == 0.0 and len(trainer.compiled) == 1
    assert first.metrics.return_curve.shape == (2, 2)
    np.testing.assert_array_equal(first.metrics.return_curve, full.metrics.return_curve[:, :2])
    np.testing.assert_array_equal(first.metrics.final_return, full.metrics.return_curve[:, 1])
    assert not np.array_equal(first.metrics.final_return, full.metrics.final_return)
    with pytest.raises(ValueError, match=r"within 1\.\.3"):
        train_seeds(trainer, [0, 1], num_updates=4)


@pytest.mark.parametrize("name", ["adam", *SYMBOLIC])
def test_every_library_optimiser_trains_minatar(name):
    cfg = config_for(
        "Breakout-MinAtar",
        num_envs=8,
        num_steps=16,
        num_minibatches=2,
        update_epochs=2,
        total_timesteps=8 * 16 * 4,
    )
    result = train_seeds(make_train(cfg, build(resolve(name))), [0, 1], fast_compile=True)
    m = result.metrics
    assert m.return_curve.shape == (2, 4)
    assert m.finite.all(), f"{name} produced non-finite parameters"


def test_cartpole_adam_learns():
    """The one real learning test: Table 1's CartPole column, 5e5 steps, 4 seeds."""
    trainer = make_train(config_for("CartPole-v1"), build(resolve("adam")))
    m = train_seeds(trainer, range(4)).metrics
    assert m.finite.all()
    assert float(np.mean(m.final_return)) >= 400, m.final_return
    # AUC is the mean of the curve: below the final return for a learning curve, over the
    # seeds (one seed may dip at the end: with the paper's truncation, seed 0 reaches 500
    # and ends at 396)
    assert float(np.mean(m.auc)) < float(np.mean(m.final_return))
    assert m.return_curve[:, 0].mean() < 50  # and it started near a random policy


def test_memory_is_flat_in_total_timesteps(tiny_cartpole):
    """Only per-update scalars leave the jit: the output grows with updates, not steps."""
    short = make_train(tiny_cartpole, build(resolve("adam")))
    longer = make_train(tiny_cartpole.replace(total_timesteps=4 * 16 * 300), build(resolve("adam")))
    out_short = jax.eval_shape(short.train, jax.random.PRNGKey(0))
    out_long = jax.eval_shape(longer.train, jax.random.PRNGKey(0))
    assert out_short.return_curve.shape == (3,) and out_long.return_curve.shape == (300,)
    size = lambda out: sum(np.prod(x.shape) for x in jax.tree.leaves(out))  # noqa: E731
    assert size(out_long) - size(out_short) == 297


def test_config_validation():
    with pytest.raises(ValueError, match="activation"):
        config_for("breakout", activation="gelu")
    with pytest.raises(ValueError, match="less than one rollout"):
        config_for("breakout", total_timesteps=100)
    with pytest.raises(ValueError, match="unknown environment"):
        config_for("pong")
    c = config_for("cartpole")
    assert (c.num_envs, c.num_steps, c.total_timesteps, c.num_minibatches) == (4, 128, 500_000, 4)
    m = config_for("spaceinvaders")
    assert (m.num_envs, m.num_steps, m.total_timesteps, m.num_minibatches) == (64, 128, 10**7, 8)


def test_truncation_default_is_the_papers_everywhere_it_is_reproduced():
    """OPEN and PureJaxRL (old gymnax API) end an episode at a time limit: ``terminate``
    is the default of PPOConfig, of the embedded (quickstart) config and of every shipped
    config; ``bootstrap`` stays an option."""
    from pathlib import Path

    from rayopt.analysis.sweep import load_sweep
    from rayopt.config import DiscoveryConfig, load_discovery

    assert config_for("freeway").truncation == "terminate"
    assert config_for("freeway", truncation="bootstrap").truncation == "bootstrap"
    root = Path(__file__).parent.parent / "configs"
    for cfg in [DiscoveryConfig().validate(), load_discovery(root / "bench/discovery-gain.yaml")]:
        assert {cfg.ppo_config(e).truncation for e in cfg.envs} == {"terminate"}
    paper = load_discovery(root / "paper.yaml", ["mutator.kind=offline", "mutator.llm={}"])
    assert {paper.ppo_config(e).truncation for e in paper.envs} == {"terminate"}
    for f in sorted((root / "sweeps").glob("*.yaml")):
        sweep = load_sweep(f)
        assert {sweep.ppo_config(e, v).truncation for v, e in sweep.points()} == {"terminate"}, f


@pytest.mark.slow
def test_craftax_classic_trains():
    """Craftax-Classic behind its optional extra (compiling it takes ~10 minutes on CPU)."""
    pytest.importorskip("craftax")
    cfg = config_for("craftax", total_timesteps=256 * 16 * 4)
    m = train_seeds(make_train(cfg, build(resolve("adam"))), [0], fast_compile=True).metrics
    assert m.finite.all() and np.isfinite(m.final_return).all()
