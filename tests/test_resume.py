"""Resume without re-doing what the journal settled, and the evaluator plumbing under it.

The discovery here runs the real driver, islands and journal on the session's Ray
instance with a scripted evaluator (answers at once, fails where told, logs every
task) instead of PPO, so a run and its resumes take seconds.
"""

from __future__ import annotations

import asyncio
import math
import re
from collections import Counter, OrderedDict
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import ray
from conftest import tiny_discovery

from rayopt.optim import SYMBOLIC, OptimiserSpec, resolve
from rayopt.results.journal import journal_dir, read
from rayopt.rl.ppo import config_for
from rayopt.search.driver import Discovery
from rayopt.search.evaluator import EvalTask, EvaluatorPool
from rayopt.search.mutators.actor import MutatorPool
from rayopt.search.replay import candidate_from_row
from rayopt.search.simulate import SleepMutator

VERDICTS = {"invalid", "duplicate", "rejected", "screened_out", "evaluation_failed", "evaluated"}
FAILS = "init-gradient_step/full/Breakout-MinAtar"  # one env of one initial candidate
SLOW_REF = "ref-adam/full/CartPole-v1"


@ray.remote(num_cpus=0)
class ScriptedEvaluator:
    """Answers ``evaluate`` like an EvaluatorActor, raising for the keys in ``fail``
    (an evaluation error: recorded, never retried) and sleeping for those in ``slow``."""

    def __init__(self, fail: tuple[str, ...] = (), slow: dict[str, float] | None = None):
        self.fail, self.slow, self.log = set(fail), dict(slow or {}), []

    async def evaluate(self, task: EvalTask) -> dict:
        self.log.append((task.key, task.keep))
        await asyncio.sleep(self.slow.get(task.key, 0.0))
        if task.key in self.fail:
            raise RuntimeError(f"scripted failure of {task.key}")
        n = len(task.seeds)
        final = np.full(n, float(sum(map(ord, task.key)) % 97))
        return dict(
            final_return=final,
            auc=final / 2,
            return_curve=np.zeros((n, task.config.num_updates), np.float32),
            finite=np.ones(n, bool),
            compile_s=0.0,
            run_s=0.0,
            node="sim",
            evaluator="scripted",
        )

    def tasks(self) -> list[tuple[str, bool]]:
        out, self.log = self.log, []
        return out


def _config():
    return tiny_discovery(**{"envs": ["CartPole-v1", "Breakout-MinAtar"]})


def _pools(actor):
    mutator = SleepMutator.options(max_concurrency=100).remote(0.0)
    return dict(evaluator_pool=EvaluatorPool([actor]), mutator_pool=MutatorPool([mutator]))


def _check_once(df) -> None:
    """One verdict per candidate (each created once), one row per full evaluation."""
    ev = df[df.row_type == "event"]
    created = Counter(ev[ev.event == "created"].candidate_id)
    verdicts = Counter(ev[ev.event.isin(VERDICTS)].candidate_id)
    assert max(created.values()) == 1 and set(verdicts) == set(created), (created, verdicts)
    assert max(verdicts.values()) == 1, f"a candidate judged twice: {verdicts}"
    full = df[(df.row_type == "evaluation") & (df.stage == "full")]
    per = Counter(zip(full.candidate_id, full.env, full.seed, strict=True))
    assert max(per.values()) == 1, "an evaluation row written twice"


@pytest.fixture(scope="module")
def finished_run(ray_local, tmp_path_factory):
    """A finished run in which one env of ``init-gradient_step`` failed and the reference
    took longer than the initial archive; with its summary and its evaluator's log."""
    run_dir = tmp_path_factory.mktemp("resume") / "run"
    actor = ScriptedEvaluator.remote(fail=(FAILS,), slow={SLOW_REF: 3.0})
    d = Discovery.create(_config(), run_dir, **_pools(actor))
    summary = asyncio.run(d.run())
    return run_dir, summary, ray.get(actor.tasks.remote())


def test_first_run_references_run_alongside_and_candidates_are_not_kept(finished_run):
    run_dir, summary, tasks = finished_run
    df = read(run_dir).to_pandas()
    _check_once(df)
    ev = df[df.row_type == "event"].reset_index(drop=True)
    judged = ev[ev.event.isin(VERDICTS)]
    verdict = dict(zip(judged.candidate_id, judged.event, strict=True))
    assert verdict["init-gradient_step"] == "evaluation_failed"
    assert verdict["ref-adam"] == "evaluated"
    # the search did not wait for the (slow) reference
    first_start = ev.index[ev.event == "generation_start"].min()
    ref_done = ev.index[(ev.event == "evaluated") & (ev.candidate_id == "ref-adam")].min()
    assert first_start < ref_done
    # library optimisers and references stay compiled on the evaluator; candidates do not
    keep = dict(tasks)
    mutated = {k for k in keep if re.match(r"i\d+-g\d+-s\d+/", k)}
    assert mutated and {k.split("/")[1] for k in mutated} == {"screen", "full"}
    assert not any(keep[k] for k in mutated)
    assert all(keep[k] for k in set(keep) - mutated) and len(keep) - len(mutated) == 10
    # 3 initial + 2 mutated candidates evaluated, references not counted
    assert summary["meta_seeds"][0]["evaluated"] == 5 and summary["meta_seeds"][0]["failed"] == 1


def test_resume_of_a_finished_run_reruns_nothing(finished_run):
    run_dir, summary, _ = finished_run
    before = read(run_dir).num_rows
    actor = ScriptedEvaluator.remote(fail=(FAILS,))
    again = asyncio.run(Discovery.load(run_dir, **_pools(actor)).run())
    assert ray.get(actor.tasks.remote()) == []  # not even the failed initial candidate
    assert read(run_dir).num_rows == before
    assert again["meta_seeds"] == summary["meta_seeds"]  # the same counts, resumed


def test_resume_after_a_crash_before_verdicts_trains_nothing_again(finished_run, tmp_path):
    """The journal of a run killed after the failed env's rows and the reference's rows
    but before their verdicts: resume writes the verdicts, trains nothing again, and
    journals the reference under its optimiser's name."""
    run_dir, summary, _ = finished_run
    crashed = tmp_path / "run"
    crashed.mkdir()
    (crashed / "config.yaml").write_bytes((run_dir / "config.yaml").read_bytes())
    rows = read(run_dir)
    lost = pc.and_(
        pc.is_in(rows.column("candidate_id"), pa.array(["init-gradient_step", "ref-adam"])),
        pc.is_in(rows.column("event"), pa.array(["evaluation_failed", "evaluated"])),
    )
    journal_dir(crashed).mkdir()
    kept = rows.filter(pc.invert(pc.fill_null(lost, False)))
    assert kept.num_rows == rows.num_rows - 2
    pq.write_table(kept, journal_dir(crashed) / "part-0000000000000-crash-000000.parquet")

    actor = ScriptedEvaluator.remote(fail=(FAILS,))
    again = asyncio.run(Discovery.load(crashed, **_pools(actor)).run())
    assert ray.get(actor.tasks.remote()) == []
    df = read(crashed).to_pandas()
    _check_once(df)
    ev = df[df.row_type == "event"]
    failed = ev[(ev.candidate_id == "init-gradient_step") & (ev.event == "evaluation_failed")]
    assert list(failed.env) == ["Breakout-MinAtar"]
    ref = df[(df.candidate_id == "ref-adam") & (df.event == "evaluated")]
    assert list(ref.optimizer) == ["adam"]
    assert again["meta_seeds"][0]["evaluated"] == summary["meta_seeds"][0]["evaluated"]
    assert again["meta_seeds"][0]["failed"] == 1


def test_restored_reference_keeps_its_optimiser_name():
    row = dict.fromkeys(
        ["parent_id", "base_id", "idea", "thought", "code_hash", "fingerprint", "island"]
    )
    row |= dict(candidate_id="ref-adam", code="", optimizer="adam", mutator="reference")
    row |= dict(generation=0, step=0, literal_count=0, new_literals=0)
    assert candidate_from_row(row).lineage_row()["optimizer"] == "adam"
    assert candidate_from_row({**row, "mutator": "library", "optimizer": "sign_update"}).name
    assert candidate_from_row({**row, "mutator": "llm", "candidate_id": "i0"}).name is None


# ------------------------------------------------------------------ evaluator plumbing
def test_an_unkept_trainer_leaves_the_cache_alone(monkeypatch):
    """keep=False neither adds a trainer nor evicts a kept one; it reuses a cached one."""
    from rayopt.rl import evaluation

    built = []
    result = SimpleNamespace(
        metrics=SimpleNamespace(
            final_return=np.zeros(1), auc=np.zeros(1), return_curve=np.zeros((1, 2)), finite=[1]
        ),
        compile_s=0.0,
        run_s=0.0,
    )
    monkeypatch.setattr(evaluation, "_TRAINERS", OrderedDict())
    monkeypatch.setattr(evaluation, "MAX_TRAINERS", 2)
    monkeypatch.setattr(evaluation, "build", lambda spec, max_norm: spec.name)
    monkeypatch.setattr(evaluation, "make_train", lambda cfg, opt: built.append(opt) or object())
    monkeypatch.setattr(evaluation, "train_seeds", lambda trainer, seeds, **kw: result)
    cfg = config_for("CartPole-v1")
    adam, sign = resolve("adam"), resolve("sign_update")
    cand = OptimiserSpec(name="i0-g1-s1", kind="symbolic", code=SYMBOLIC["gradient_step"])
    for spec in (adam, sign):
        evaluation.evaluate(spec, cfg, [0])
    for _ in range(2):
        evaluation.evaluate(cand, cfg, [0], keep=False)
    evaluation.evaluate(adam, cfg, [0], keep=False)  # cached: used, not rebuilt
    assert list(evaluation._TRAINERS) == [(adam, cfg), (sign, cfg)]
    assert built == ["adam", "sign_update", "i0-g1-s1", "i0-g1-s1"]


class _Method:
    def __init__(self, fn):
        self.remote = fn


class _FakeActor:
    """An actor handle whose ``evaluate`` runs ``behaviour`` (a coroutine function)."""

    def __init__(self, behaviour):
        self.evaluate = _Method(behaviour)
        self.__ray_ready__ = _Method(lambda: asyncio.sleep(0))


def _settled(pool: EvaluatorPool) -> bool:
    """Nothing running or waiting, and every slot free again."""
    return (
        pool.busy == 0
        and pool.pending == 0
        and not pool._waiters
        and not any(s.held or s.ahead for s in pool.slots)
    )


def test_pool_returns_the_slot_on_any_error_or_cancellation():
    from ray.exceptions import ActorDiedError, RaySystemError

    task = EvalTask("t", resolve("adam"), config_for("CartPole-v1"), (0,))

    async def lost(task):
        raise RaySystemError("object lost")

    async def hangs(task):
        await asyncio.Event().wait()

    calls = []

    async def dies_once(task):
        calls.append(task.key)
        if len(calls) == 1:
            raise ActorDiedError()
        return dict(final_return=np.zeros(1), auc=np.zeros(1))

    async def scenario():
        pool = EvaluatorPool([_FakeActor(lost)])
        with pytest.raises(RaySystemError):
            await pool.run(task)
        assert _settled(pool)

        pool = EvaluatorPool([_FakeActor(hangs)])
        run = asyncio.create_task(pool.run(task))
        await asyncio.sleep(0.05)
        assert pool.busy == 1
        run.cancel()
        with pytest.raises(asyncio.CancelledError):
            await run
        assert _settled(pool)

        pool = EvaluatorPool([_FakeActor(hangs)])  # cancelled while waiting for a slot
        running = asyncio.create_task(pool.run(task))
        waiting = asyncio.create_task(pool.run(task))
        await asyncio.sleep(0.05)
        assert pool.busy == 1 and len(pool._waiters) == 1
        waiting.cancel()
        await asyncio.sleep(0)
        running.cancel()
        for t in (waiting, running):
            with pytest.raises(asyncio.CancelledError):
                await t
        assert _settled(pool)

        pool = EvaluatorPool([_FakeActor(dies_once)], max_attempts=3)
        out = await pool.run(task)
        assert out.ok and out.attempts == 2 and pool.done == 1
        assert _settled(pool)

        # the lost evaluation is retried on the evaluator Ray restarted (on a new node,
        # on a cluster), even when another slot freed while it restarted
        ran, other_done = [], asyncio.Event()

        async def other(task):
            ran.append("other")
            await other_done.wait()
            return dict(final_return=np.zeros(1), auc=np.zeros(1))

        async def dies_then_runs(task):
            ran.append("restarted")
            if ran.count("restarted") == 1:
                raise ActorDiedError()
            return dict(final_return=np.zeros(1), auc=np.zeros(1))

        async def restarting():
            other_done.set()  # the other slot frees while this evaluator restarts
            await asyncio.sleep(0.05)

        restarted = _FakeActor(dies_then_runs)
        restarted.__ray_ready__ = _Method(restarting)
        pool = EvaluatorPool([_FakeActor(other), restarted], max_attempts=3)
        first = asyncio.create_task(pool.run(task))
        await asyncio.sleep(0.01)
        out = await pool.run(task)
        assert (await first).ok and out.ok and out.attempts == 2
        assert ran == ["other", "restarted", "restarted"], ran
        assert _settled(pool)

    asyncio.run(scenario())


def test_a_side_call_takes_a_free_slot_ahead_of_queued_evaluations_never_beside_one():
    """The cascade's random-policy floor runs through the pool: while the only slot's
    evaluation runs, the call waits (on the same evaluator it would share the cores a
    deadline times), then goes ahead of the evaluations queued before it; concurrent
    screens share one call per env."""
    from rayopt.search.cascade import Cascade

    task = EvalTask("t", resolve("adam"), config_for("CartPole-v1"), (0,))
    log, release = [], asyncio.Event()

    async def evaluate(task):
        log.append("evaluate start")
        await release.wait()
        log.append("evaluate end")
        return dict(final_return=np.zeros(1), auc=np.zeros(1))

    async def random_return(env):
        log.append(f"floor {env}")
        return 1.5

    actor = _FakeActor(evaluate)
    actor.random_return = _Method(random_return)

    async def scenario():
        pool = EvaluatorPool([actor])
        running = asyncio.create_task(pool.run(task))
        queued = asyncio.create_task(pool.run(task))
        await asyncio.sleep(0.01)
        cascade = Cascade(tiny_discovery(), pool, journal=None)
        floors = [asyncio.create_task(cascade._random_floor("Breakout-MinAtar")) for _ in (0, 1)]
        await asyncio.sleep(0.01)
        assert log == ["evaluate start"] and not any(f.done() for f in floors)
        release.set()
        assert [await f for f in floors] == [1.5, 1.5]
        await running, await queued
        assert log == [
            "evaluate start", "evaluate end", "floor Breakout-MinAtar",
            "evaluate start", "evaluate end",
        ]  # fmt: skip
        assert await cascade._random_floor("Breakout-MinAtar") == 1.5  # cached
        assert log.count("floor Breakout-MinAtar") == 1
        assert _settled(pool)

        # an evaluator without the method (a simulated one): no floor, the slot is freed
        bare = EvaluatorPool([_FakeActor(evaluate)])
        assert math.isnan(await Cascade(tiny_discovery(), bare, None)._random_floor("x"))
        assert _settled(bare)

    asyncio.run(scenario())


# ------------------------------------------------------------------ config: paths
def test_open_weights_are_absolute_and_may_move_on_resume(tmp_path, monkeypatch):
    """A run started with a relative --open-weights resumes from anywhere; a moved
    checkpoint is given again with --open-weights on resume."""
    import json

    from rayopt.cli import main
    from rayopt.config import ConfigError
    from rayopt.search import driver

    started = tmp_path / "started"
    started.mkdir()
    np.save(started / "ckpt.npy", np.zeros(1211, np.float32))
    monkeypatch.chdir(started)
    config = tiny_discovery(open_weights="ckpt.npy", **{"search.references": ["adam", "open"]})
    assert config.open_weights == str(started / "ckpt.npy")
    run_dir = tmp_path / "run"
    Discovery.create(config, run_dir)

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert Discovery.load(run_dir).config.open_weights == str(started / "ckpt.npy")
    (started / "ckpt.npy").rename(elsewhere / "moved.npy")
    with pytest.raises(ConfigError, match="ckpt.npy"):
        Discovery.load(run_dir)
    override = [f"open_weights={json.dumps('moved.npy')}"]
    assert Discovery.load(run_dir, overrides=override).config.open_weights == str(
        elsewhere / "moved.npy"
    )
    assert "ckpt.npy" in (run_dir / "config.yaml").read_text()  # the run's record stays

    seen = []

    def load(run_dir, overrides=None, **pools):
        seen.append(overrides)
        raise FileNotFoundError("stop here")

    monkeypatch.setattr(driver.Discovery, "load", load)
    assert main(["discover", "--resume", str(run_dir), "--open-weights", "moved.npy"]) == 2
    assert seen == [override]


def test_llm_prompt_paths_are_made_absolute(tmp_path, monkeypatch):
    from rayopt.config import ConfigError

    monkeypatch.chdir(tmp_path)
    config = tiny_discovery(
        **{"mutator.kind": "llm", "mutator.llm": {"prompts": {"coder_user": "coder.txt"}}}
    )
    assert config.mutator.llm["prompts"] == {"coder_user": str(tmp_path / "coder.txt")}
    with pytest.raises(ConfigError, match=r"^mutator\.llm\.prompts: unknown key"):
        tiny_discovery(**{"mutator.kind": "llm", "mutator.llm": {"prompts": {"coder": "x"}}})
