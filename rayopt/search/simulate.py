"""Stand-ins for evaluators and mutators that only take time: they let the real driver
be measured at cluster scale on one machine (benchmarks/orchestration.py,
benchmarks/cluster_scaling.py). Nothing here trains or calls a model."""

from __future__ import annotations

import asyncio
import hashlib
import time
from typing import Any

import numpy as np
import ray

from rayopt.search.evaluator import EvalTask
from rayopt.search.mutators.actor import Checked
from rayopt.search.mutators.base import CallRecord, MutationRequest, MutationResult


@ray.remote(num_cpus=0)
class SleepEvaluator:
    """Answers ``evaluate`` like an EvaluatorActor after ``seconds`` (+-``jitter``),
    with random scores; one actor serves many concurrent slots.

    ``compile_s`` > 0 simulates compiling too: ``prepare`` takes that long (and can run
    while an evaluation runs, as on an accelerator whose host compiles), and an
    ``evaluate`` of a task that was not prepared first spends it before running.
    ``run_s`` gives some tasks (by key) a run time of their own. ``log()`` tells what
    ran when (for tests of the pool's compile-ahead); ``node`` is the node its results
    name (for tests of the pool's node preference)."""

    def __init__(
        self,
        seconds: float,
        jitter: float = 0.1,
        seed: int = 0,
        compile_s: float = 0.0,
        run_s: dict[str, float] | None = None,
        node: str = "sim",
    ):
        self.seconds = seconds
        self.node = node
        self.run_s = run_s or {}
        self.jitter = jitter
        self.compile_s = compile_s
        self.rng = np.random.default_rng(seed)
        self.prepared: set[str] = set()
        self.events: list[tuple[str, str, float]] = []  # (what, task key, monotonic time)

    def _note(self, what: str, task: EvalTask) -> None:
        self.events.append((what, task.key, time.monotonic()))

    async def prepare(self, task: EvalTask, budget_mb: float = 0.0) -> dict[str, Any]:
        self._note("prepare_start", task)
        await asyncio.sleep(self.compile_s)
        self.prepared.add(task.key)
        self._note("prepare_end", task)
        return dict(compile_s=self.compile_s, memory=None, budget=0)

    def release(self, task: EvalTask) -> None:
        self._note("release", task)
        self.prepared.discard(task.key)

    def log(self) -> list[tuple[str, str, float]]:
        return list(self.events)

    async def evaluate(self, task: EvalTask) -> dict[str, Any]:
        self._note("evaluate_start", task)
        if task.key not in self.prepared:  # else compiled by prepare, like an evaluator
            await asyncio.sleep(self.compile_s)
        self.prepared.discard(task.key)
        seconds = self.run_s.get(task.key, self.seconds)
        await asyncio.sleep(seconds * (1 + self.jitter * (2 * self.rng.random() - 1)))
        self._note("evaluate_end", task)
        n, updates = len(task.seeds), task.num_updates or task.config.num_updates
        final = self.rng.normal(size=n)
        return dict(
            final_return=final,
            auc=final / 2,
            return_curve=np.zeros((n, updates), np.float32),
            finite=np.ones(n, bool),
            compile_s=self.compile_s,
            run_s=seconds,
            node=self.node,
            evaluator="sleep",
        )


@ray.remote(num_cpus=0)
class SleepMutator:
    """Answers ``propose`` after ``seconds`` with the current code under a fresh hash, so
    nothing is deduplicated."""

    def __init__(self, seconds: float):
        self.seconds = seconds

    async def propose(self, request: MutationRequest) -> Checked:
        await asyncio.sleep(self.seconds)
        key = f"{request.run_id}/{request.island}/{request.generation}/{request.step}"
        digest = hashlib.sha256(key.encode()).hexdigest()[:16]
        result = MutationResult(
            ok=True,
            mutator="sleep",
            code=request.current.code,
            idea=f"simulated {key}",
            calls=(
                CallRecord(
                    role="offline",
                    provider="sleep",
                    model="sleep",
                    attempt=1,
                    ok=True,
                    latency_s=self.seconds,
                ),
            ),
        )
        return Checked(result, ok=True, code_hash=digest, fingerprint=digest)
