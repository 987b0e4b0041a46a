"""Sweeps: config checks, resume planning, and a tiny real sweep on a local Ray instance
(written twice: the second run evaluates nothing)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from rayopt.analysis.sweep import SweepConfig, load_sweep, plan, resolve_optimizers
from rayopt.config import ConfigError
from rayopt.results.journal import JournalWriter, journal_dir, read
from rayopt.results.schema import SCHEMA

TINY = [
    "ppo.overrides={num_envs: 4, num_steps: 16, num_minibatches: 2, update_epochs: 2, "
    "total_timesteps: 192}"
]


def _tiny(**kw: str) -> SweepConfig:
    base = dict(
        name="tiny",
        optimizers="[adam, discovered_1]",
        envs="[cartpole]",
        seeds="2",
        axis="hidden_size",
        values="[16, 32]",
        fast_compile="true",
    )
    base.update(kw)
    return load_sweep(None, TINY + [f"{k}={v}" for k, v in base.items()])


def test_config_values_and_errors() -> None:
    cfg = load_sweep(None, ["axis=total_timesteps", "values=[1e5, 3e5]", "envs=[breakout]"])
    assert cfg.values == [100_000, 300_000]
    assert [c.total_timesteps for c in (cfg.ppo_config("Breakout-MinAtar", "100000"),)] == [100_000]
    assert cfg.in_distribution_for("Breakout-MinAtar") == 10_000_000  # Table 1
    assert (
        load_sweep(None, ["axis=hidden_size", "values=[16]"]).in_distribution_for("CartPole-v1")
        == 64
    )
    env = load_sweep(None, ["axis=env", "envs=[minatar, cartpole]"])
    assert [v for v, _ in env.points()] == [
        "Asterix-MinAtar",
        "Breakout-MinAtar",
        "Freeway-MinAtar",
        "SpaceInvaders-MinAtar",
        "CartPole-v1",
    ]
    for bad, match in [
        (["axis=env", "values=[1]"], "takes no values"),
        (["axis=hidden_size"], "needs a list"),
        (["axis=hidden_size", "values=[1.5]"], "whole numbers"),
        (["axis=activation", "values=[gelu]"], "relu or tanh"),
        (["axis=total_timesteps", "values=[10]"], "less than one rollout"),
        (["axis=hidden_size", "values=[8]", "ppo.overrides={hidden_size: 4}"], "swept axis"),
        (["envs=[pong]"], "unknown environment"),
        (["name=a b"], "name"),
        (["sedes=3"], "unknown key"),
    ]:
        with pytest.raises(ConfigError, match=match):
            load_sweep(None, bad)


def test_paper_and_cpu_configs_load() -> None:
    root = Path(__file__).parent.parent / "configs" / "sweeps"
    files = sorted(root.glob("*.yaml"))
    assert {f.stem for f in files} >= {
        "fig3-lengths",
        "fig4-sizes",
        "fig5-activations",
        "fig6-envs",
        "fig3-lengths-cpu",
        "fig4-sizes-cpu",
        "fig5-activations-cpu",
        "fig6-envs-cpu",
        "repro-cpu",
    }
    for f in files:
        cfg = load_sweep(f)
        if not f.stem.endswith("-cpu"):
            # paper scale: Table 1, with the paper's truncation semantics spelled out
            assert cfg.seeds == 16 and cfg.ppo.overrides == {"truncation": "terminate"}, f
        assert all(cfg.ppo_config(env, v).truncation == "terminate" for v, env in cfg.points())
        assert cfg.points(), f


def test_plan_skips_journalled_seeds_and_refuses_another_config(tmp_path: Path) -> None:
    cfg = _tiny()
    opts = resolve_optimizers(cfg.optimizers)
    todo, skipped, created = plan(cfg, opts, tmp_path)
    assert skipped == 0 and sum(len(w.seeds) for w in todo) == 2 * 2 * 2 and not created
    ppo = cfg.ppo_config("CartPole-v1", "16")
    row = dict(
        row_type="evaluation",
        stage="sweep",
        sweep="tiny",
        optimizer="adam",
        env="CartPole-v1",
        axis="hidden_size",
        axis_value="16",
        status="ok",
        final_return=1.0,
        ppo_config=json.dumps(dataclasses.asdict(ppo)),
    )
    made = dict(row_type="event", event="created", optimizer="adam")
    JournalWriter(tmp_path).write(
        [
            dict(row, seed=0),
            dict(row, seed=1, status="failed"),
            dict(made, sweep="tiny"),
            dict(made, sweep="other", optimizer="discovered_1"),
        ]
    )
    todo, skipped, created = plan(cfg, opts, tmp_path)
    assert skipped == 1  # the failed seed is tried again
    assert created == {"adam"}  # this sweep's created events only
    left = {(w.optimizer.name, w.axis_value): w.seeds for w in todo}
    assert left[("adam", "16")] == (1,) and left[("adam", "32")] == (0, 1)
    other = _tiny(**{"ppo.overrides.update_epochs": "1"})
    with pytest.raises(ConfigError, match="different PPO config"):
        plan(other, opts, tmp_path)
    assert plan(_tiny(name="other"), opts, tmp_path).skipped == 0  # another sweep, same dir


def test_sweep_config_extends_another(tmp_path: Path) -> None:
    (tmp_path / "base.yaml").write_text("envs: [cartpole]\naxis: hidden_size\nvalues: [16, 32]\n")
    (tmp_path / "child.yaml").write_text("extends: base.yaml\nname: child\nvalues: [64]\n")
    cfg = load_sweep(tmp_path / "child.yaml", ["seeds=3"])
    assert (cfg.name, cfg.envs, cfg.axis, cfg.values, cfg.seeds) == (
        "child",
        ["CartPole-v1"],
        "hidden_size",
        [64],
        3,
    )
    with pytest.raises(ConfigError, match="does not exist"):
        load_sweep(tmp_path / "missing.yaml")


def test_tiny_sweep_on_ray_writes_schema_rows_and_resumes(ray_local, tmp_path: Path) -> None:
    from rayopt.analysis.sweep import sweep

    # two 1-CPU evaluators: the four compiles (single-threaded) run two at a time
    cfg = _tiny(**{"evaluator.count": "2", "evaluator.num_cpus": "1"})
    logs: list[str] = []
    first = sweep(cfg, tmp_path, log=logs.append)
    assert first["evaluated"] == 4 and first["failed"] == 0 and first["skipped"] == 0, logs
    parts = sorted(journal_dir(tmp_path).glob("*.parquet"))
    for p in parts:
        assert pq.read_schema(p).remove_metadata().equals(SCHEMA.remove_metadata())
    t = read(tmp_path).to_pandas()
    ev = t[t.row_type == "evaluation"]
    assert len(ev) == 2 * 2 * 2
    assert set(ev.stage) == {"sweep"} and set(ev.sweep) == {"tiny"} and set(ev.status) == {"ok"}
    assert set(ev.axis) == {"hidden_size"}
    assert sorted(zip(ev.axis_value, ev.hidden_size, strict=True)) == sorted(
        [("16", 16)] * 4 + [("32", 32)] * 4
    )
    assert set(ev.total_timesteps) == {192} and set(ev.activation) == {"relu"}
    assert ev.final_return.notna().all() and ev.return_curve.map(len).eq(3).all()
    created = t[t.event == "created"]
    assert sorted(created.optimizer) == ["adam", "discovered_1"]
    assert "def update_fn" in created.set_index("optimizer").code["discovered_1"]
    assert (tmp_path / "sweep-tiny.yaml").is_file()

    second = sweep(cfg, tmp_path, log=logs.append)
    assert second["evaluated"] == 0 and second["skipped"] == 8
    assert sorted(journal_dir(tmp_path).glob("*.parquet")) == parts  # nothing written
    assert len(read(tmp_path)) == len(t)
