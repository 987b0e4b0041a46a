"""Bounded evaluations (issue 12): a program cheap on the sandbox's probe but slow or
huge at the networks' real shapes is stopped (``timeout``: its evaluator killed and
restarted; ``too_slow``: the speed screen; ``memory``: XLA's compiled memory analysis),
journalled, never retried, and the run goes on. Real PPO, real Ray, real Parquet; the
LLM is the fake server at the wire.

Deadlines here are small (``max_slowdown`` 3, a floor of 2 s) so that a program 50x
slower than Adam trips in seconds; the default limit is tested on the library.
"""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path

import numpy as np
import pytest
import ray
from conftest import E2E_KEY_ENV, check_exactly_once, tiny_discovery
from fake_llm import FakeLLMServer, Seen, openai_completion
from slow_programs import matmul_chain, repeat

from rayopt.analysis.sweep import load_sweep, sweep
from rayopt.optim import SYMBOLIC, OptimiserSpec, resolve
from rayopt.program import check
from rayopt.results.journal import read
from rayopt.rl.ppo import config_for
from rayopt.search.driver import Discovery
from rayopt.search.evaluator import Bounds, EvalTask, EvaluatorActor, EvaluatorPool, actor_env

TINY = dict(num_envs=4, num_steps=16, num_minibatches=2, update_epochs=2, total_timesteps=256)
# 16 updates: the slow program runs ~25 s, 10x its deadline even when a loaded machine
# slows Adam's reference run (4 updates left only ~2x, and it once finished in time)
LONGER = dict(TINY, total_timesteps=1024)
SMALL = {"evaluator.max_slowdown": 3.0, "evaluator.deadline_floor_s": 2.0}
SLACK_S = 5.0  # how late the pool may notice a deadline on a loaded 2-core machine
# 16 chained (256, 256) matmuls per tensor per update: half a second on the probe, about
# 50-100x Adam's run time in the tiny PPO below (the (512, 512) chain is 8x more
# work, past the sandbox's 10 s on a loaded 2-core machine)
SLOW = matmul_chain(256)


def _file(tmp_path: Path, name: str, code: str) -> Path:
    path = tmp_path / f"{name}.py"
    path.write_text(code)
    return path


def _within_deadline(rows, max_slowdown: float = 3.0, floor_s: float = 2.0) -> None:
    """Timeout rows: stopped after the deadline (slowdown past the limit) and not much
    later (the measured reference run time is run_s / slowdown)."""
    for r in rows.itertuples():
        ref = r.run_s / r.slowdown
        assert r.slowdown >= max_slowdown, r
        assert r.run_s <= max_slowdown * ref + floor_s + SLACK_S, r


def test_probe_passes_what_real_shapes_cannot_afford():
    """The premise: each of these passes ``rayopt check`` (small probe tensors)."""
    for code in (SLOW, repeat(500)):
        result = check(code)
        assert result.ok, result.error


def test_sweep_stops_a_slow_program_at_its_deadline_and_never_retries_it(ray_local, tmp_path):
    slow = _file(tmp_path, "matmul_chain", SLOW)
    overrides = [
        "ppo.overrides=" + json.dumps(LONGER),
        f"optimizers=[{slow}, adam, discovered_1]",
        "envs=[cartpole]",
        "seeds=1",
        "fast_compile=true",
        "evaluator.count=1",
        "evaluator.num_cpus=1",
        # the next evaluation compiles while the slow one runs: killed with it, it is
        # compiled again on the restarted evaluator (test_compile_ahead.py has the rest)
        "evaluator.compile_ahead=1",
        *(f"{k}={v}" for k, v in SMALL.items()),
    ]
    cfg = load_sweep(None, overrides)
    logs: list[str] = []
    out = sweep(cfg, tmp_path / "sweep", log=logs.append)
    assert out["evaluated"] == 2 and out["timeout"] == 1 and out["failed"] == 1, logs
    assert out["compiled_ahead"] >= 1, out
    ev = read(tmp_path / "sweep").to_pandas()
    ev = ev[ev.row_type == "evaluation"]
    by = ev.set_index("optimizer")
    assert by.status.to_dict() == {"matmul_chain": "timeout", "adam": "ok", "discovered_1": "ok"}
    assert by.error_kind["matmul_chain"] == "timeout"
    assert "max_slowdown" in by.error["matmul_chain"]
    _within_deadline(ev[ev.status == "timeout"])
    # the others ran to the end with their slowdown journalled (its size is timing: the
    # benchmark measures it, no test asserts it)
    assert np.isfinite(by.slowdown["adam"]) and np.isfinite(by.slowdown["discovered_1"])
    # the slow program went first: the evaluator that was killed trained the others
    results = [line for line in logs if "/3 " in line]
    assert "FAILED (timeout)" in results[0] and len(results) == 3, logs
    again = sweep(cfg, tmp_path / "sweep", log=logs.append)
    assert again["skipped"] == 3 and again["evaluated"] == 0  # a timeout is decided


def test_offline_discovery_seeded_with_a_slow_program_stops_it(ray_local, tmp_path):
    slow = _file(tmp_path, "matmul_chain", SLOW)
    config = tiny_discovery(
        **{
            "search.initial": ["sign_update", "relative_update", str(slow)],
            "islands.count": 1,
            "ppo.overrides": LONGER,
            **SMALL,
        }
    )
    d = Discovery.create(config, tmp_path / "run")  # its own evaluator, bounded by config
    asyncio.run(d.run())
    df = read(tmp_path / "run").to_pandas()
    check_exactly_once(df, config)
    verdicts = df[df.event == "evaluation_failed"].set_index("candidate_id")
    assert verdicts.status.get("init-matmul_chain") == "timeout", verdicts
    assert "max_slowdown" in verdicts.error["init-matmul_chain"]
    full = df[(df.row_type == "evaluation") & (df.stage == "full")]
    stopped = full[full.candidate_id == "init-matmul_chain"]
    assert list(stopped.status) == ["timeout"] and stopped.attempt.iloc[0] == 1  # no retry
    _within_deadline(stopped)
    assert d.evaluators.killed == 1 and len(d.evaluators.restart_s) == 1
    # the run went on: everything else was evaluated on the restarted evaluator
    evaluated = set(df[df.event == "evaluated"].candidate_id)
    assert {"init-sign_update", "init-relative_update", "ref-adam"} <= evaluated
    assert set(full[full.candidate_id != "init-matmul_chain"].status) == {"ok"}


GOOD_IDEA = "Anneal the update with (1 - t_p)."
GOOD_CODE = """def update_fn(w, g, var1, var2, t, d, t_p, b_p, l_p, key):
    update = 0.01 * jnp.sign(g) * (1 - t_p)
    return update, var1, var2
"""


class SlowCoder:
    """Thinker: one idea. Coder: a matmul chain (valid, cheap on the probe, far slower
    than Adam in PPO); asked to repair it, the good code."""

    def __init__(self, slow: str):
        self.slow, self.lock, self.repairs = slow, threading.Lock(), 0

    def __call__(self, seen: Seen) -> object:
        body = seen.json
        if "propose iterative refinements" in body["messages"][0]["content"]:
            return openai_completion(json.dumps({"thought": "t", "suggestion": GOOD_IDEA}))
        if "failed when PPO ran it" in body["messages"][-1]["content"]:
            with self.lock:
                self.repairs += 1
            return openai_completion(json.dumps({"code": GOOD_CODE}))
        return openai_completion(json.dumps({"code": self.slow}))


def test_llm_discovery_whose_coder_writes_a_slow_program(ray_local, tmp_path):
    coder = SlowCoder(SLOW)
    with FakeLLMServer(responder=coder) as server:
        role = server.role(E2E_KEY_ENV)
        config = tiny_discovery(
            **{
                "islands.count": 1,
                "mutator.kind": "llm",
                "mutator.llm": dict(thinker=role, coder=role, max_retries=0),
                # the screening run completes (a generous floor), the speed screen judges
                "evaluator.max_slowdown": 3.0,
                "evaluator.deadline_floor_s": 30.0,
                "cascade.speed_updates": 2,
                "cascade.speed_floor_s": 0.1,
                "cascade.random_margin": 0.0,
            }
        )
        d = Discovery.create(config, tmp_path / "run")
        asyncio.run(d.run())
    df = read(tmp_path / "run").to_pandas()
    check_exactly_once(df, config)
    out = df[df.event == "screened_out"].set_index("candidate_id")
    assert out.status.get("i0-g1-s1") == "too_slow", out
    assert "too slow at real shapes" in out.error["i0-g1-s1"]
    speed = df[(df.stage == "speed") & (df.candidate_id == "i0-g1-s1")]
    assert list(speed.status) == ["too_slow"] and speed.slowdown.iloc[0] > 3.0
    assert not ((df.stage == "full") & (df.candidate_id == "i0-g1-s1")).any()  # no full run
    # fed back: the coder repaired it, and the repair was evaluated
    assert coder.repairs == 1
    assert "i0-g1-s1r1" in set(df[df.event == "evaluated"].candidate_id)
    # its speed screen ran the first 2 updates of its full evaluation, with the same
    # executable (config, seeds), so the same first points of the return curve
    rows = df[df.candidate_id == "i0-g1-s1r1"].set_index(["stage", "seed"])
    speed, full = rows.loc["speed"], rows.loc["full"]
    assert list(speed.index) == list(full.index) == list(range(config.seeds))
    assert (speed.ppo_config == full.ppo_config).all()
    ppo = config.ppo_config("CartPole-v1")
    assert (speed.total_timesteps == 2 * ppo.num_envs * ppo.num_steps).all()
    for seed in speed.index:
        curve = np.asarray(full.return_curve[seed])
        assert len(speed.return_curve[seed]) == 2 and len(curve) == ppo.num_updates
        np.testing.assert_array_equal(speed.return_curve[seed], curve[:2])


@pytest.fixture(scope="module")
def bounded_pool(ray_local):
    actor = EvaluatorActor.options(num_cpus=1, runtime_env={"env_vars": actor_env(0, 1)}).remote()
    yield EvaluatorPool([actor], bounds=Bounds(3.0, 2.0, memory_budget_mb=1000))
    ray.kill(actor, no_restart=True)


def test_memory_hungry_at_real_shapes_is_rejected_before_it_runs(bounded_pool):
    wide = config_for("CartPole-v1", **TINY, hidden_size=1024)
    code = repeat(500)  # 2 GB of sorted copies of a (1024, 1024) kernel; 8 MB on the probe
    assert check(code).ok
    pid = ray.get(bounded_pool.slots[0].actor.pid.remote())

    async def scenario():
        spec = OptimiserSpec("repeat", "symbolic", code=code)
        hungry = await bounded_pool.run(EvalTask("hungry", spec, wide, (0,), True, keep=False))
        sane = await bounded_pool.run(EvalTask("sane", resolve("adam"), wide, (0,), True))
        return hungry, sane

    hungry, sane = asyncio.run(scenario())
    assert not hungry.ok and hungry.error_kind == "memory" and hungry.status == "memory"
    assert "over the budget of 1.05 GB" in hungry.error and "1024" in hungry.error
    assert sane.ok and 0.2 < sane.slowdown < 3.0
    assert ray.get(bounded_pool.slots[0].actor.pid.remote()) == pid  # nothing was killed


@pytest.mark.slow
def test_library_and_open_never_trip_the_default_limit(bounded_pool, tmp_path):
    """The paper's 7 symbolic optimisers and OPEN at a small budget (Table 1's batch, 2
    updates) under the default bounds: none is stopped, and the symbolic ones run well
    inside max_slowdown x Adam even without the floor. (OPEN's ratio grows as PPO's
    batch shrinks, its cost being per parameter: 6.8x at Table 1's batch in
    benchmarks/bounded.py, 10x at 16 envs x 32 steps on a loaded machine; the floor is
    what keeps tiny budgets safe.)"""
    from rayopt.config import EvaluatorSection

    weights = tmp_path / "open.npy"
    np.save(weights, (0.5 * np.random.default_rng(0).standard_normal(3571)).astype(np.float32))
    default = Bounds.from_config(EvaluatorSection())
    assert (default.max_slowdown, default.floor_s) == (10.0, 60.0)
    pool = EvaluatorPool([s.actor for s in bounded_pool.slots], bounds=default)
    cfg = config_for("Breakout-MinAtar", total_timesteps=64 * 128 * 2)
    names = [*SYMBOLIC, "open"]
    assert len(names) == 8

    async def scenario():
        outs = []
        for name in names:
            spec = resolve(name, open_weights=str(weights))
            outs.append(await pool.run(EvalTask(name, spec, cfg, (0,), True, keep=False)))
        return outs

    outs = asyncio.run(scenario())
    slow = {o.task.key: (o.error_kind, o.slowdown) for o in outs if not o.ok}
    assert not slow
    symbolic = {o.task.key: o.slowdown for o in outs if o.task.key != "open"}
    assert all(x < default.max_slowdown for x in symbolic.values()), symbolic


def test_calls_of_a_proposal_whose_mutator_died_are_accounted(ray_local):
    """The mutator's process dies after the thinker's reply (SIGKILL while the coder
    waits): Ray restarts the actor and retries the proposal, and the retry returns the
    lost attempt's call with its cost; seeds make the retry ask the same questions."""
    import os
    import signal

    from rayopt.search.mutators.actor import MutatorActor
    from rayopt.search.mutators.base import MutationRequest, Scored

    state = {"pid": None, "coder": 0}
    lock = threading.Lock()

    def responder(seen: Seen) -> object:
        if "propose iterative refinements" in seen.json["messages"][0]["content"]:
            return openai_completion(json.dumps({"thought": "t", "suggestion": GOOD_IDEA}))
        with lock:
            state["coder"] += 1
            first = state["coder"] == 1
        if first:  # the mutator dies while it waits for this reply
            os.kill(state["pid"], signal.SIGKILL)
        return openai_completion(json.dumps({"code": GOOD_CODE}))

    with FakeLLMServer(responder=responder) as server:
        role = server.role(E2E_KEY_ENV)
        llm = dict(
            thinker=role,
            coder=role,
            max_retries=0,
            price_table={"fake-model": {"input": 1.0, "output": 2.0}},
        )
        actor = MutatorActor.options(max_concurrency=4).remote("llm", llm)
        state["pid"] = ray.get(actor.pid.remote())
        current = Scored("cur", SYMBOLIC["sign_update"], {"CartPole-v1": 10.0}, {})
        request = MutationRequest(current, (), (), seed=0, run_id="r", generation=1, step=1)
        checked = ray.get(actor.propose.remote(request), timeout=120)
        requests = list(server.requests)
        ray.kill(actor, no_restart=True)

    assert checked.ok and checked.result.code.strip() == GOOD_CODE.strip()
    (lost,) = checked.lost_calls
    assert lost.role == "thinker" and not lost.ok and lost.cost_usd > 0
    assert lost.error.startswith("lost: the mutator process died")
    assert [c.role for c in checked.result.calls] == ["thinker", "coder"]
    thinker = [r.json for r in requests if "propose iterative" in r.json["messages"][0]["content"]]
    assert len(thinker) == 2 and thinker[0]["seed"] == thinker[1]["seed"]  # asked the same
    coder = [r.json for r in requests if r.json not in thinker]
    assert all(isinstance(r.get("seed"), int) for r in coder)


def test_dry_run_probe_at_the_largest_real_kernel():
    """Traced (not run) at Freeway's (700, 64) kernel, Table 1's largest: the outer
    product is 44,800^2 floats, rejected as ``memory`` before any evaluator sees it;
    the paper's optimisers pass."""
    from slow_programs import OUTER

    from rayopt.program import check_shapes
    from rayopt.rl.ppo import largest_kernel

    minatar = ["Asterix-MinAtar", "Breakout-MinAtar", "Freeway-MinAtar", "SpaceInvaders-MinAtar"]
    shape = largest_kernel([config_for(e) for e in minatar])
    assert shape == (700, 64)
    assert check(OUTER).ok  # the small probe cannot tell
    error = check_shapes(OUTER, [shape])
    assert error.kind == "memory" and "(44800, 44800)" in error.message
    assert "real shape (700, 64)" in error.message
    for name, code in SYMBOLIC.items():
        assert check_shapes(code, [shape, (1024, 1024)]) is None, name
