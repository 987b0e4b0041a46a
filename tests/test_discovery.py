"""The discovery engine on a real local Ray instance: islands, migration, the journal,
exact resume after kill -9 of the driver, and evaluator deaths."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.compute as pc
import pytest
import ray
from conftest import check_exactly_once, tiny_discovery

from rayopt.config import dump
from rayopt.optim import resolve
from rayopt.results.journal import dataset, read
from rayopt.results.schema import SCHEMA
from rayopt.rl.ppo import config_for
from rayopt.search.driver import Discovery
from rayopt.search.evaluator import EvalTask, EvaluatorPool


def test_tiny_discovery_two_meta_seeds(evaluator_pool, tmp_path):
    config = tiny_discovery(meta_seeds=[0, 1])
    d = Discovery.create(config, tmp_path / "run", evaluator_pool=evaluator_pool)
    summary = asyncio.run(d.run())
    assert set(summary["meta_seeds"]) == {0, 1}

    assert dataset(tmp_path / "run").schema.equals(SCHEMA, check_metadata=False)
    df = read(tmp_path / "run").to_pandas()
    check_exactly_once(df, config)
    assert set(df.run_id) == {"tiny-ms0", "tiny-ms1"}
    for ms in (0, 1):
        run = df[df.meta_seed == ms]
        ev = run[run.event == "evaluated"]
        assert {
            "init-sign_update",
            "init-relative_update",
            "init-gradient_step",
            "init-clipped_update",
            "ref-adam",
        } <= set(ev.candidate_id)
        migrated = run[run.event == "migrated"]
        assert len(migrated) >= 1 and (migrated.dest_island != migrated.island).all()
        mutated = run[(run.event == "created") & run.candidate_id.str.match(r"i\d-g\d-s\d")]
        assert len(mutated) == 2  # 2 islands x 1 generation x 1 refinement
        assert mutated.idea.str.startswith("offline:").all()
        assert mutated.parent_id.notna().all() and mutated.code_hash.notna().all()
        calls = run[run.event == "llm_call"]
        assert (calls.role == "offline").all() and len(calls) >= 2
    full = df[(df.row_type == "evaluation") & (df.stage == "full") & (df.status == "ok")]
    assert full.return_curve.map(len).eq(4).all()  # 256 steps / (4 envs x 16 steps)
    assert full.final_return.notna().all() and (full.total_timesteps == 256).all()
    # readable by other tools at any moment: a plain pyarrow dataset over the directory
    n = read(
        tmp_path / "run", columns=["candidate_id"], filter=pc.field("row_type") == "evaluation"
    ).num_rows
    assert n == int((df.row_type == "evaluation").sum())


def _discover(*args: str) -> list[str]:
    return [sys.executable, "-m", "rayopt", "discover", *args]


def test_kill_driver_then_resume_exactly_once(ray_local, tmp_path):
    # one island, two generations of two-step lineages (4 candidates): killed after the
    # first step, the resumed driver rebuilds that lineage from the journal, finishes it
    # and starts the next generation from the journal-restored archive (migration across
    # islands: test_resume.py)
    config = tiny_discovery(
        **{"islands.count": 1, "search.generations": 2, "search.refinements": 2,
           "address": ray_local}
    )  # fmt: skip
    path = tmp_path / "config.yaml"
    path.write_text(dump(config))
    run_dir = tmp_path / "run"
    proc = subprocess.Popen(
        _discover("--config", str(path), "--run-dir", str(run_dir)),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 400
    killed_after = None
    while time.time() < deadline and proc.poll() is None:
        time.sleep(1.0)
        try:
            df = read(run_dir, columns=["event", "candidate_id"]).to_pandas()
        except FileNotFoundError:
            continue
        done = df[(df.event == "evaluated") & df.candidate_id.str.match(r"i\d+-g\d+-s\d+")]
        if len(done) >= 1:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            killed_after = len(done)
            break
    assert killed_after is not None, (
        f"the run ended or stalled before the kill: {proc.stderr.read()[-2000:]}"
    )
    before = read(run_dir).to_pandas()
    ended = (before.event == "generation_end").sum()
    assert ended < config.search.generations, "killed too late to test resume"

    resumed = subprocess.run(
        _discover("--resume", str(run_dir)), capture_output=True, text=True, timeout=600
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    # it ends with a table a person reads (JSON only with --json)
    assert "in search (final return" in resumed.stdout and "best initial" in resumed.stdout
    assert not resumed.stdout.rstrip().endswith("}")
    after = read(run_dir).to_pandas()
    check_exactly_once(after, config)
    # nothing journalled before the kill was lost
    keys = ["candidate_id", "event", "env", "seed", "stage"]
    old = set(map(tuple, before[keys].astype(str).values))
    assert old <= set(map(tuple, after[keys].astype(str).values))


def _task(total_timesteps: int) -> EvalTask:
    cfg = config_for(
        "CartPole-v1", num_envs=4, num_steps=16, num_minibatches=2, total_timesteps=total_timesteps
    )
    return EvalTask("t", resolve("adam"), cfg, (0,), fast_compile=True)


def test_evaluator_killed_mid_evaluation_is_retried(evaluator_pool):
    actor = evaluator_pool.slots[0].actor
    pid = ray.get(actor.pid.remote())

    async def scenario():
        run = asyncio.create_task(evaluator_pool.run(_task(64 * 4000)))
        await asyncio.sleep(2.0)  # compiling or training: either way mid-evaluation
        os.kill(pid, signal.SIGKILL)
        return await run

    outcome = asyncio.run(scenario())
    assert outcome.ok and outcome.attempts == 2, outcome
    assert ray.get(actor.pid.remote()) != pid  # Ray restarted the actor


@ray.remote(max_restarts=-1, max_task_retries=0)
class DiesEveryTime:
    """An evaluator whose process dies on every evaluation (a test double for a
    candidate that crashes the runtime)."""

    def evaluate(self, task):
        os._exit(1)


def test_evaluation_recorded_failed_after_max_attempts(ray_local):
    pool = EvaluatorPool([DiesEveryTime.options(num_cpus=0).remote()], max_attempts=3)
    outcome = asyncio.run(pool.run(_task(256)))
    assert not outcome.ok and outcome.attempts == 3
    assert outcome.error_kind == "evaluator_died"


def test_quickstart_yaml_is_the_embedded_default():
    import yaml

    from rayopt.config import DiscoveryConfig, to_dict

    shipped = yaml.safe_load(Path("configs/quickstart.yaml").read_text())
    assert shipped == to_dict(DiscoveryConfig())


def test_config_errors_are_clear(tmp_path):
    from rayopt.config import ConfigError, load_discovery

    bad = tmp_path / "bad.yaml"
    bad.write_text("search:\n  generatoins: 3\n")
    with pytest.raises(ConfigError, match=r"search: unknown key\(s\) 'generatoins'"):
        load_discovery(bad)
    with pytest.raises(ConfigError, match="islands.count: expected int, got str"):
        load_discovery(None, ["islands.count=two"])
    with pytest.raises(ConfigError, match="unknown environment"):
        load_discovery(None, ["envs=[pong]"])
    with pytest.raises(ConfigError, match="ppo.overrides: unknown PPO setting"):
        load_discovery(None, ["ppo.overrides.lr=0.1"])
    proc = subprocess.run(_discover("--config", str(bad)), capture_output=True, text=True)
    assert proc.returncode == 2 and "generatoins" in proc.stderr
