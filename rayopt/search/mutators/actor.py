"""Mutators as async Ray actors, and the driver-side pool over them.

A mutator actor runs many proposals at once (LLM calls are I/O). After a proposal it
checks the code (validation, literal audit, canonical hash, behavioural fingerprint)
so the driver can deduplicate before paying for PPO.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any

import ray

from rayopt.search.mutators.base import MutationRequest, MutationResult


@dataclasses.dataclass(frozen=True)
class Checked:
    """A proposal with what ``rayopt.program.check`` found in its code."""

    result: MutationResult
    ok: bool = False
    error_kind: str | None = None
    error_line: int | None = None
    error: str | None = None
    code_hash: str | None = None
    fingerprint: str | None = None
    literal_count: int = 0
    new_literals: int = 0


def make_mutator(kind: str, llm: dict[str, Any] | None = None) -> Any:
    """The mutator a config names: ``offline`` or ``llm`` (settings: docs/llm.md)."""
    if kind == "offline":
        from rayopt.search.mutators.offline import OfflineMutator

        return OfflineMutator()
    if kind == "llm":
        from rayopt.search.mutators.llm import from_config

        return from_config(llm or {})
    raise ValueError(f"unknown mutator kind {kind!r}")


def check_proposal(result: MutationResult, parent_code: str) -> Checked:
    """Validate and fingerprint a proposal's code; count the literals it introduced."""
    from rayopt.program import check, introduced

    if not result.ok or not result.code:
        return Checked(result)
    c = check(result.code, dry_run=True, timeout=10.0)
    if not c.ok:
        return Checked(
            result,
            ok=False,
            error_kind=c.error.kind,
            error_line=c.error.line,
            error=c.error.message,
            code_hash=c.hash,
        )
    return Checked(
        result,
        ok=True,
        code_hash=c.hash,
        fingerprint=c.fingerprint,
        literal_count=c.tunable_count,
        new_literals=len(introduced(result.code, parent_code)),
    )


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=2)
class MutatorActor:
    """Hosts one mutator; ``max_concurrency`` proposals run at once on its event loop."""

    def __init__(self, kind: str, llm: dict[str, Any] | None = None):
        self.mutator = make_mutator(kind, llm)

    async def propose(self, request: MutationRequest) -> Checked:
        import asyncio

        result = await self.mutator.propose(request)
        return await asyncio.to_thread(check_proposal, result, request.current.code)


class MutatorPool:
    """Round-robin over mutator actors (each limits its own concurrency)."""

    def __init__(self, actors: list[Any]):
        if not actors:
            raise ValueError("need at least one mutator actor")
        self.actors = actors
        self._next = itertools.cycle(actors)

    async def propose(self, request: MutationRequest) -> Checked:
        return await next(self._next).propose.remote(request)
