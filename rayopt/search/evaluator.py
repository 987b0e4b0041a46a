"""Evaluator actors (one per accelerator, or fractions of one) and the pool that feeds
them.

An evaluator trains PPO for one (optimiser, environment) with all seeds vmapped. Ray
restarts a dead evaluator (``max_restarts=-1``); the pool resubmits the evaluation that
was running, up to ``max_attempts`` times, and reports a failure after that. An error
raised by the evaluation itself (bad code) is not retried: it would fail again.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import ray
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError, RayTaskError

from rayopt.optim import OptimiserSpec
from rayopt.rl.ppo import PPOConfig


@dataclasses.dataclass(frozen=True)
class EvalTask:
    """One unit of evaluator work: ``spec`` trains PPO ``config`` for ``seeds``."""

    key: str  # unique: candidate id / stage / env
    spec: OptimiserSpec
    config: PPOConfig
    seeds: tuple[int, ...]
    fast_compile: bool = False  # CPU: compile ~2x faster, run ~2x slower (short runs)
    # Keep the compiled trainer on the evaluator for the next task with the same (spec,
    # config): library optimisers, references and sweep chunks recur; a discovery
    # candidate is evaluated once per config (False: its executable is freed at once).
    keep: bool = True


@dataclasses.dataclass
class EvalOutcome:
    """What came back for a task: per-seed arrays, or an error after ``attempts``."""

    task: EvalTask
    ok: bool
    attempts: int
    final_return: np.ndarray | None = None
    auc: np.ndarray | None = None
    return_curve: np.ndarray | None = None
    finite: np.ndarray | None = None
    compile_s: float = 0.0
    run_s: float = 0.0
    node: str | None = None
    evaluator: str | None = None
    error: str | None = None
    error_kind: str | None = None


def actor_env(num_gpus: float, num_cpus: float) -> dict[str, str]:
    """Environment for an evaluator process, set before it imports JAX.

    A fractional GPU gets a matching JAX memory fraction (with 10 % headroom); a CPU
    evaluator gets one XLA host device per CPU it was given.
    """
    env: dict[str, str] = {}
    if 0 < num_gpus < 1:
        env["XLA_PYTHON_CLIENT_MEM_FRACTION"] = f"{0.9 * num_gpus:.3f}"
    if num_gpus == 0 and num_cpus >= 1:
        env["RAYOPT_HOST_DEVICES"] = str(int(num_cpus))
    return env


@ray.remote(max_restarts=-1, max_task_retries=0)
class EvaluatorActor:
    """Runs PPO evaluations on the accelerator Ray pinned it to (or on CPU)."""

    def __init__(self) -> None:
        import jax

        import rayopt  # noqa: F401  (host-device flags before JAX's backend starts)

        self._jax = jax
        self.id = ray.get_runtime_context().get_actor_id()
        self.node = ray.get_runtime_context().get_node_id()

    def info(self) -> dict[str, Any]:
        jax = self._jax
        return dict(
            id=self.id,
            node=self.node,
            pid=os.getpid(),
            backend=jax.default_backend(),
            devices=[str(d) for d in jax.local_devices()],
            gpu_ids=ray.get_runtime_context().get_accelerator_ids().get("GPU", []),
            env={
                k: os.environ.get(k)
                for k in (
                    "CUDA_VISIBLE_DEVICES",
                    "XLA_PYTHON_CLIENT_MEM_FRACTION",
                    "RAYOPT_HOST_DEVICES",
                )
            },
        )

    def evaluate(self, task: EvalTask) -> dict[str, Any]:
        # Symbolic code is validated again by build(): the evaluator trusts no caller.
        from rayopt.rl.evaluation import evaluate

        r = evaluate(
            task.spec, task.config, task.seeds, fast_compile=task.fast_compile, keep=task.keep
        )
        return dict(
            final_return=r.final_return,
            auc=r.auc,
            return_curve=r.return_curve,
            finite=r.finite,
            compile_s=r.compile_s,
            run_s=r.run_s,
            node=self.node,
            evaluator=self.id,
        )

    def random_return(
        self, env: str, num_envs: int = 64, num_steps: int = 2000, seed: int = 0
    ) -> float:
        """Mean episodic return of a uniform random policy (the cascade's floor)."""
        from rayopt.rl.evaluation import random_policy_return

        return random_policy_return(env, num_envs=num_envs, num_steps=num_steps, seed=seed)

    def pid(self) -> int:
        return os.getpid()


@dataclasses.dataclass
class _Slot:
    actor: Any
    index: int
    busy_s: float = 0.0  # finished work
    since: float | None = None  # when the task it is running started


class EvaluatorPool:
    """Dispatch evaluation tasks to free evaluator slots, retrying on evaluator death.

    A slot is one evaluation at a time on one actor; an actor may offer several slots
    (the orchestration benchmark's simulated evaluators do). Utilisation is busy time
    over slots x wall time since the pool started.
    """

    def __init__(self, actors: Sequence[Any], slots_per_actor: int = 1, max_attempts: int = 3):
        self.max_attempts = max_attempts
        self.slots = [_Slot(a, i) for a in actors for i in range(slots_per_actor)]
        self._free: asyncio.Queue[_Slot] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.started = time.monotonic()
        self.pending = 0  # tasks waiting for or holding a slot
        self.busy = 0  # slots running a task right now
        self.done = 0

    @property
    def size(self) -> int:
        return len(self.slots)

    def _queue(self) -> asyncio.Queue[_Slot]:
        """The free-slot queue of the running event loop (a pool outlives ``asyncio.run``)."""
        loop = asyncio.get_running_loop()
        if self._free is None or self._loop is not loop:
            self._loop = loop
            self._free = asyncio.Queue()
            for s in self.slots:
                self._free.put_nowait(s)
        return self._free

    def utilisation(self) -> float:
        """Busy time over slots x wall time, work in flight included (a long evaluation
        counts while it runs, not only once it ends)."""
        now = time.monotonic()
        wall = now - self.started
        busy = sum(
            s.busy_s + (now - max(s.since, self.started) if s.since else 0.0) for s in self.slots
        )
        return busy / max(wall * len(self.slots), 1e-9)

    def reset_clock(self) -> None:
        self.started = time.monotonic()
        for s in self.slots:
            s.busy_s = 0.0
            s.since = None if s.since is None else self.started

    async def run(self, task: EvalTask) -> EvalOutcome:
        """Evaluate ``task`` on the next free slot; never raises for evaluation errors."""
        free = self._queue()
        self.pending += 1
        try:
            error = "no attempt made"
            for attempt in range(1, self.max_attempts + 1):
                slot = await free.get()
                try:  # the slot goes back whatever happens: other Ray errors, cancellation
                    t0 = slot.since = time.monotonic()
                    self.busy += 1
                    try:
                        out = await slot.actor.evaluate.remote(task)
                    finally:  # busy while the actor runs the task, not while it restarts
                        self.busy -= 1
                        slot.busy_s += time.monotonic() - max(t0, self.started)
                        slot.since = None
                except RayTaskError as err:  # the evaluation raised: bad code, not bad luck
                    return EvalOutcome(
                        task, ok=False, attempts=attempt, error=_short(err), error_kind="evaluation"
                    )
                except (ActorDiedError, ActorUnavailableError, RayActorError) as err:
                    error = f"evaluator died: {type(err).__name__}"
                    await _until_alive(slot.actor)  # Ray restarts it; don't spend attempts
                    continue
                finally:
                    free.put_nowait(slot)
                self.done += 1
                return EvalOutcome(task, ok=True, attempts=attempt, **out)
            return EvalOutcome(
                task, ok=False, attempts=self.max_attempts, error=error, error_kind="evaluator_died"
            )
        finally:
            self.pending -= 1


async def _until_alive(actor: Any, timeout_s: float = 300.0) -> None:
    """Wait while Ray restarts ``actor``: calls made meanwhile fail at once and would
    spend attempts. After ``timeout_s`` (a node gone for good) the next attempt runs
    anyway and reports what it finds."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            await actor.__ray_ready__.remote()
            return
        except (ActorUnavailableError, RayActorError):  # ActorDiedError included
            await asyncio.sleep(0.5)


def _short(err: BaseException, limit: int = 500) -> str:
    """The last line of a remote traceback: the part a person (or an LLM) needs."""
    text = str(getattr(err, "cause", None) or err).strip()
    lines = [ln for ln in text.splitlines() if ln.strip()]
    return (lines[-1] if lines else text)[:limit]


def outcome_rows(out: EvalOutcome, where: dict[str, Any], stage: str) -> list[dict[str, Any]]:
    """Journal rows for one outcome: one evaluation row per seed (``status`` ok or
    nonfinite with its scores, or failed with the error), ``where`` columns on each.

    Shared by discovery (stages screen and full) and sweeps (stage sweep), so every
    evaluation in every journal has the same columns with the same meaning.
    """
    t = out.task
    common = dict(
        where,
        env=t.config.env,
        stage=stage,
        total_timesteps=t.config.total_timesteps,
        hidden_size=t.config.hidden_size,
        activation=t.config.activation,
        ppo_config=json.dumps(dataclasses.asdict(t.config)),
        attempt=out.attempts,
        node=out.node,
        evaluator=out.evaluator,
    )
    if not out.ok:
        return [
            dict(
                common,
                row_type="evaluation",
                seed=seed,
                status="failed",
                error_kind=out.error_kind,
                error=out.error,
            )
            for seed in t.seeds
        ]
    assert out.final_return is not None and out.auc is not None
    assert out.return_curve is not None and out.finite is not None
    return [
        dict(
            common,
            row_type="evaluation",
            seed=seed,
            final_return=float(out.final_return[i]),
            auc=float(out.auc[i]),
            return_curve=np.asarray(out.return_curve[i], np.float32).tolist(),
            finite=bool(out.finite[i]),
            status="ok" if out.finite[i] else "nonfinite",
            compile_s=out.compile_s,
            run_s=out.run_s,
        )
        for i, seed in enumerate(t.seeds)
    ]
