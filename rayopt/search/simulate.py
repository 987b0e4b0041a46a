"""Stand-ins for evaluators and mutators that only take time: they let the real driver
be measured at cluster scale on one machine (benchmarks/orchestration.py,
benchmarks/cluster_scaling.py). Nothing here trains or calls a model."""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

import numpy as np
import ray

from rayopt.search.evaluator import EvalTask
from rayopt.search.mutators.actor import Checked
from rayopt.search.mutators.base import CallRecord, MutationRequest, MutationResult


@ray.remote(num_cpus=0)
class SleepEvaluator:
    """Answers ``evaluate`` like an EvaluatorActor after ``seconds`` (+-``jitter``),
    with random scores; one actor serves many concurrent slots."""

    def __init__(self, seconds: float, jitter: float = 0.1, seed: int = 0):
        self.seconds = seconds
        self.jitter = jitter
        self.rng = np.random.default_rng(seed)

    async def evaluate(self, task: EvalTask) -> dict[str, Any]:
        await asyncio.sleep(self.seconds * (1 + self.jitter * (2 * self.rng.random() - 1)))
        n, updates = len(task.seeds), task.config.num_updates
        final = self.rng.normal(size=n)
        return dict(
            final_return=final,
            auc=final / 2,
            return_curve=np.zeros((n, updates), np.float32),
            finite=np.ones(n, bool),
            compile_s=0.0,
            run_s=self.seconds,
            node="sim",
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
