"""Compile ahead (issue 14): while an evaluator runs one evaluation, it compiles the next
queued one on a host thread, so the device never waits for that compile.

The scheduling is checked on simulated evaluators (real Ray actors whose compile and run
are sleeps, so the order of events is certain); real PPO checks that compiling beside a
run overlaps the two and changes no result. test_bounded.py runs a sweep with
compile-ahead on through a deadline kill (the compiled-ahead work is lost with the
process and compiled again).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import numpy as np
import pytest
import ray
from conftest import tiny_discovery

from rayopt.optim import resolve
from rayopt.results.journal import read
from rayopt.rl.ppo import config_for
from rayopt.search.driver import Discovery
from rayopt.search.evaluator import Bounds, EvalTask, EvaluatorActor, EvaluatorPool, actor_env
from rayopt.search.mutators.actor import MutatorPool
from rayopt.search.simulate import SleepEvaluator, SleepMutator

NO_DEADLINE = Bounds(max_slowdown=0.0)  # no reference runs: only compile and run


def _sim_task(key: str) -> EvalTask:
    cfg = config_for("CartPole-v1", num_envs=4, num_steps=16, total_timesteps=64)
    return EvalTask(key, resolve("sign_update"), cfg, (0,), keep=False)  # not the reference


def _times(log: list, what: str) -> dict[str, float]:
    return {key: t for w, key, t in log if w == what}


@pytest.mark.parametrize("ahead", [0, 1])
def test_one_evaluator_compiles_the_next_task_while_one_runs(ray_local, ahead):
    run_s, compile_s = 1.0, 0.4
    actor = SleepEvaluator.remote(run_s, jitter=0.0, compile_s=compile_s)
    ray.get(actor.release.remote(_sim_task("warm-up")))  # started, tasks' modules imported
    pool = EvaluatorPool([actor], bounds=NO_DEADLINE, compile_ahead=ahead)
    keys = [f"t{i}" for i in range(4)]

    async def scenario():
        return await asyncio.gather(*(pool.run(_sim_task(k)) for k in keys))

    t0 = time.monotonic()
    outs = asyncio.run(scenario())
    wall = time.monotonic() - t0
    assert all(o.ok for o in outs)
    log = ray.get(actor.log.remote())
    starts, ends = _times(log, "evaluate_start"), _times(log, "evaluate_end")
    prepared = _times(log, "prepare_start")
    order = sorted(keys, key=starts.get)
    assert order == keys  # first come, first served
    assert pool.compiled_ahead == 3 * ahead
    for prev, key in zip(order, order[1:], strict=False):
        overlaps = prepared[key] < ends[prev]  # compiled while the previous one ran
        assert overlaps == bool(ahead), (key, log)
    waits = [o.compile_wait_s for o in outs]
    assert waits[0] >= compile_s * 0.9  # nothing runs before the first compile
    if ahead:  # the others were compiled by the time the device freed
        assert max(waits[1:]) < compile_s / 2, waits
        assert wall < 4 * run_s + 2 * compile_s
    else:
        assert min(waits) >= compile_s * 0.9, waits
        assert wall >= 4 * (run_s + compile_s)
    share = pool.compile_wait_share()
    assert (share < 0.15) if ahead else (0.2 < share < 0.35), share
    ray.kill(actor)


def test_a_slot_that_frees_first_takes_a_task_pinned_elsewhere(ray_local):
    """No slot idles while a task waits: the task compiling ahead on a long run's
    evaluator goes to the evaluator that frees first, and the long one drops what it
    compiled for it."""
    long_ = SleepEvaluator.remote(3.0, jitter=0.0, compile_s=0.2)
    short = SleepEvaluator.remote(0.3, jitter=0.0, compile_s=0.2)
    ray.get([a.release.remote(_sim_task("warm-up")) for a in (long_, short)])
    pool = EvaluatorPool([long_, short], bounds=NO_DEADLINE, compile_ahead=1)

    async def scenario():
        first = asyncio.ensure_future(pool.run(_sim_task("long")))
        await asyncio.sleep(0.1)
        second = asyncio.ensure_future(pool.run(_sim_task("short")))
        await asyncio.sleep(0.1)
        third = await pool.run(_sim_task("moved"))  # pinned to the long run's slot
        return third, await first, await second

    third, first, second = asyncio.run(scenario())
    assert first.ok and second.ok and third.ok
    on_long, on_short = ray.get(long_.log.remote()), ray.get(short.log.remote())
    assert "moved" in _times(on_long, "prepare_start")  # compiled ahead there ...
    assert "moved" in _times(on_short, "evaluate_end")  # ... run here
    assert "moved" not in _times(on_long, "evaluate_start")
    # the long evaluator forgets the executable once its compile has ended
    deadline = time.monotonic() + 10
    while "moved" not in _times(on_long, "release") and time.monotonic() < deadline:
        time.sleep(0.1)
        on_long = ray.get(long_.log.remote())
    assert _times(on_long, "release")["moved"] >= _times(on_long, "prepare_end")["moved"]
    ray.kill(long_)
    ray.kill(short)


def test_a_task_goes_to_the_node_it_would_rather_run_on(ray_local):
    """``run(task, near=node)`` (a full evaluation after its speed screen, whose
    executable is in that node's compilation cache): a free slot there before one
    elsewhere; compiled ahead on a slot there, before tasks queued ahead of it when a
    slot there has room; a slot there that frees takes it before tasks queued ahead of
    it; never a wait for it."""
    actors = {
        n: SleepEvaluator.remote(0.2, jitter=0.0, compile_s=0.1, node=n, run_s=run_s)
        for n, run_s in (("n0", {"busy0": 2.0}), ("n1", {"busy1": 1.0}))
    }
    ray.get([a.release.remote(_sim_task("warm-up")) for a in actors.values()])

    def started(key: str, what: str = "evaluate_start") -> list[tuple[str, float]]:
        """(node, time) of each ``what`` of ``key``."""
        return [(n, t) for n, a in actors.items()
                for w, k, t in ray.get(a.log.remote()) if (w, k) == (what, key)]  # fmt: skip

    def began_before(a: str, b: str) -> bool:
        return started(a)[0][1] < started(b)[0][1]

    async def busy(pool):  # n0 held first and longest, n1 frees first
        held = [asyncio.ensure_future(pool.run(_sim_task("busy0")))]
        await asyncio.sleep(0.05)
        held.append(asyncio.ensure_future(pool.run(_sim_task("busy1"))))
        await asyncio.sleep(0.05)
        return held

    async def scenario(compile_ahead: int):
        pool = EvaluatorPool(list(actors.values()), bounds=NO_DEADLINE, compile_ahead=compile_ahead)
        await asyncio.gather(*(pool.run(_sim_task(f"learn{compile_ahead}-{i}")) for i in (0, 1)))
        assert {s.node for s in pool.slots} == {"n0", "n1"}  # learnt from their results
        # both free: the one on n1, though n0's slot comes first
        assert (await pool.run(_sim_task(f"free{compile_ahead}"), near="n1")).ok
        assert [n for n, _ in started(f"free{compile_ahead}")] == ["n1"]
        held = await busy(pool)
        if compile_ahead:  # pinned to n1's slot, though n0's has been held longer
            assert (await pool.run(_sim_task("pinned"), near="n1")).ok
            assert [n for n, _ in started("pinned", "prepare_start")] == ["n1"]
            assert [n for n, _ in started("pinned")] == ["n1"]
            await asyncio.gather(*held)
            # a queue longer than the room ahead: p0 and p1 take the room on n0 and n1;
            # when n1 frees (p1 runs), its room goes to x, near n1, before p2
            held = await busy(pool)
            order = (("p0", None), ("p1", None), ("p2", None), ("x", "n1"))
            queued = [asyncio.ensure_future(pool.run(_sim_task(k), near=n)) for k, n in order]
            await asyncio.gather(*queued)
            assert "n0" in [n for n, _ in started("p0", "prepare_start")]
            assert [n for n, _ in started("x", "prepare_start")] == ["n1"]
            assert [n for n, _ in started("x")] == ["n1"] and began_before("x", "p2")
        else:  # n1 frees first: its task goes before the one queued ahead of it
            plain = asyncio.ensure_future(pool.run(_sim_task("plain")))
            await asyncio.sleep(0.05)
            assert (await pool.run(_sim_task("near"), near="n1")).ok and (await plain).ok
            assert [n for n, _ in started("near")] == ["n1"] and began_before("near", "plain")
        await asyncio.gather(*held)
        if compile_ahead:
            return
        # near a node no slot is on: first come, first served
        held = await busy(pool)
        keys = ["fifo-0", "fifo-1"]
        queued = []
        for key, near in zip(keys, (None, "elsewhere"), strict=True):
            queued.append(asyncio.ensure_future(pool.run(_sim_task(key), near=near)))
            await asyncio.sleep(0.01)
        await asyncio.gather(*queued, *held)
        assert began_before(*keys)

    asyncio.run(scenario(0))
    asyncio.run(scenario(1))
    for a in actors.values():
        ray.kill(a)


def test_a_candidates_full_evaluations_are_asked_near_its_speed_screens(ray_local, tmp_path):
    """The cascade asks for each candidate's full evaluation on an env near the node its
    speed screen on that env ran on (the node the journal's speed row names)."""
    actors = [SleepEvaluator.remote(0.05, jitter=0.0, node=n) for n in ("n0", "n1")]
    pool = EvaluatorPool(actors, bounds=Bounds(max_slowdown=100.0, floor_s=60.0))
    asked: list[tuple[str, str | None]] = []  # (task key, near); keys recur per meta-seed
    run = pool.run

    async def spy(task, near=None):  # the real pool, its requests recorded
        asked.append((task.key, near))
        return await run(task, near=near)

    pool.run = spy
    config = tiny_discovery(
        **{"envs": ["CartPole-v1", "Breakout-MinAtar"], "cascade.speed_updates": 2,
           "search.refinements": 2, "meta_seeds": [0, 1]}
    )  # fmt: skip
    mutator = MutatorPool([SleepMutator.options(max_concurrency=100).remote(0.0)])
    asyncio.run(Discovery.create(config, tmp_path, evaluator_pool=pool, mutator_pool=mutator).run())
    df = read(tmp_path).to_pandas()
    speed = df[(df.row_type == "evaluation") & (df.stage == "speed")]
    # 2 meta-seeds x 4 candidates x 2 envs, whose candidate ids are the same in both
    assert len(speed) == 2 * 4 * 2 and set(speed.node) <= {"n0", "n1"}
    full = Counter((k, near) for k, near in asked if "/full/" in k and near is not None)
    assert full == Counter((f"{r.candidate_id}/full/{r.env}", r.node) for r in speed.itertuples())
    assert all(near is None for key, near in asked if "/full/" not in key)
    for a in actors:
        ray.kill(a)


def test_a_task_queued_first_is_passed_at_most_as_often_as_there_are_slots(ray_local):
    """Tasks near the freed slot's node go first, but each task queued before them is
    passed at most as many times as the pool has slots: with two slots (one held by a
    long run), the task queued first runs third, after two of the four queued after it
    for the slot that keeps freeing. A side call (``EvaluatorPool.call``) is never
    passed."""
    actors = [SleepEvaluator.remote(0.2, jitter=0.0, node=n, run_s=run_s)
              for n, run_s in (("n0", {"busy0": 1.0}), ("n1", {"busy1": 5.0}))]  # fmt: skip
    ray.get([a.release.remote(_sim_task("warm-up")) for a in actors])
    pool = EvaluatorPool(actors)

    async def scenario():
        await asyncio.gather(*(pool.run(_sim_task(f"learn{i}")) for i in (0, 1)))
        held = [asyncio.ensure_future(pool.run(_sim_task(f"busy{i}"))) for i in (0, 1)]
        await asyncio.sleep(0.05)
        # queued in this order (tasks start in the order they are created)
        queued = [asyncio.ensure_future(pool.run(_sim_task("first")))]
        for i in range(4):
            queued.append(asyncio.ensure_future(pool.run(_sim_task(f"n0-{i}"), near="n0")))
        side = asyncio.ensure_future(pool.call("log"))  # goes first, as the cascade's floor
        await asyncio.gather(*held, *queued)
        return await side

    seen_by_side = asyncio.run(scenario())
    # it ran on n0 when busy0 ended, before any task near n0 started
    assert "busy0" in _times(seen_by_side, "evaluate_end")
    assert not [k for k in _times(seen_by_side, "evaluate_start") if k.startswith("n0-")]
    starts = {}
    for a in actors:
        starts.update(_times(ray.get(a.log.remote()), "evaluate_start"))
    order = sorted(("first", *(f"n0-{i}" for i in range(4))), key=starts.get)
    assert order.index("first") == 2, order
    for a in actors:
        ray.kill(a)


def test_work_compiled_ahead_is_compiled_again_after_a_deadline_kill(ray_local):
    """The evaluation compiled ahead while another overran its deadline dies with the
    killed process; it is compiled again on the restarted evaluator and runs there."""
    actor = SleepEvaluator.options(max_restarts=-1, max_task_retries=0).remote(
        0.2, jitter=0.0, compile_s=0.3, run_s={"slow": 60.0}
    )
    ray.get(actor.release.remote(_sim_task("warm-up")))
    pool = EvaluatorPool([actor], bounds=Bounds(max_slowdown=2.0, floor_s=0.5), compile_ahead=1)

    async def scenario():
        slow = asyncio.ensure_future(pool.run(_sim_task("slow")))
        await asyncio.sleep(0.05)
        nxt = asyncio.ensure_future(pool.run(_sim_task("next")))  # compiled ahead
        return await slow, await nxt

    slow, nxt = asyncio.run(scenario())
    assert not slow.ok and slow.error_kind == "timeout" and pool.killed == 1
    assert nxt.ok and pool.compiled_ahead == 1
    after = ray.get(actor.log.remote())  # the restarted process's own log
    assert "next" in _times(after, "prepare_end") and "next" in _times(after, "evaluate_end")
    assert _times(after, "prepare_end")["next"] <= _times(after, "evaluate_start")["next"]
    ray.kill(actor, no_restart=True)


@pytest.fixture(scope="module")
def ppo_evaluator(ray_local):
    actor = EvaluatorActor.options(num_cpus=1, runtime_env={"env_vars": actor_env(0, 1)}).remote()
    ray.get(actor.info.remote())  # started: its start-up is no compile
    yield actor
    ray.kill(actor, no_restart=True)


def test_real_ppo_compiles_ahead_beside_a_run_and_gets_the_same_results(ppo_evaluator):
    """Adam trains for a while; two programs new to XLA queue behind it. Compiled ahead,
    the first of them is ready when Adam ends (its compile overlapped Adam's compile and
    run), and their results equal those of the same tasks run one at a time."""
    tiny = dict(num_envs=4, num_steps=16, num_minibatches=2, update_epochs=2)
    long_run = config_for("CartPole-v1", **tiny, total_timesteps=64 * 2500)
    short = config_for("CartPole-v1", **tiny, total_timesteps=64 * 4)

    def programs(tag: str) -> list[EvalTask]:
        return [
            EvalTask(f"{tag}/{name}", resolve(name), short, (0, 1), True, keep=False)
            for name in ("sign_update", "relative_update")
        ]

    def run(ahead: int, tasks: list[EvalTask]):
        pool = EvaluatorPool([ppo_evaluator], bounds=NO_DEADLINE, compile_ahead=ahead)

        async def scenario():
            return await asyncio.gather(*(pool.run(t) for t in tasks))

        return asyncio.run(scenario()), pool

    adam = EvalTask("adam", resolve("adam"), long_run, (0,), True, keep=False)
    # first: nothing of it is in the session's compilation cache
    (trained, *ahead), pool = run(1, [adam, *programs("ahead")])
    serial, _ = run(0, programs("serial"))
    assert pool.compiled_ahead == 2
    assert trained.ok and trained.run_s > 0
    for a, b in zip(ahead, serial, strict=True):
        assert a.ok and b.ok, (a.error, b.error)
        np.testing.assert_allclose(a.final_return, b.final_return, rtol=1e-5)
        np.testing.assert_allclose(a.auc, b.auc, rtol=1e-5)
    first = ahead[0]  # sign_update: compiled while Adam compiled and ran
    timings = [(o.task.key, o.compile_s, o.compile_wait_s, o.run_s) for o in [trained, *ahead]]
    assert first.compile_s > 0 and first.compile_wait_s < first.compile_s / 2, timings
    assert all(o.compile_wait_s >= 0.9 * o.compile_s for o in serial)


def test_an_evaluator_loads_a_program_compiled_before_from_its_compile_cache(ray_local, tmp_path):
    """``evaluator.compile_cache``: the evaluator keeps executables in JAX's persistent
    cache on its node, so the same program compiled again (a full evaluation after its
    speed screen, or on a later run) is loaded, not compiled."""
    cache = tmp_path / "xla"
    env = actor_env(0, 1, str(cache), 1.0)
    env["JAX_COMPILATION_CACHE_DIR"] = ""  # not the test session's cache: the configured one
    actor = EvaluatorActor.options(num_cpus=1, runtime_env={"env_vars": env}).remote()
    try:
        assert ray.get(actor.info.remote())["compile_cache"] == str(cache)
        cfg = config_for("CartPole-v1", num_envs=4, num_steps=16, total_timesteps=128)
        task = EvalTask("t", resolve("sign_update"), cfg, (0,), fast_compile=True, keep=False)
        first = ray.get(actor.evaluate.remote(task))
        assert ray.get(actor.info.remote())["cache_hits"] == 0
        assert len(list(cache.glob("jit_per_device-*-cache"))) == 1  # PPO, once compiled
        again = ray.get(actor.evaluate.remote(task))  # a fresh trainer (keep=False)
        assert ray.get(actor.info.remote())["cache_hits"] == 1
        np.testing.assert_array_equal(first["return_curve"], again["return_curve"])
    finally:
        ray.kill(actor, no_restart=True)
