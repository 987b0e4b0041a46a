"""Mutators as async Ray actors, and the driver-side pool over them.

A mutator actor runs many proposals at once (LLM calls are I/O). After a proposal it
checks the code (validation, literal audit, canonical hash, behavioural fingerprint)
so the driver can deduplicate before paying for PPO; the built-in mutators already
checked their code and carry the result, which is used as it is.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
from typing import TYPE_CHECKING, Any

import ray

from rayopt.search.mutators.base import MutationRequest, MutationResult

if TYPE_CHECKING:
    from rayopt.program.check import CheckResult

log = logging.getLogger(__name__)


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


def make_mutator(kind: str, llm: dict[str, Any] | None = None, style: str = "motifs") -> Any:
    """The mutator a config names: ``offline`` (in ``style``, motifs or edits) or ``llm``
    (settings: docs/llm.md)."""
    if kind == "offline":
        from rayopt.search.mutators.offline import OfflineMutator

        return OfflineMutator(style=style)
    if kind == "llm":
        from rayopt.search.mutators.llm import from_config

        return from_config(llm or {})
    raise ValueError(f"unknown mutator kind {kind!r}")


def check_proposal(result: MutationResult, parent_code: str) -> Checked:
    """Validate and fingerprint a proposal's code; count the literals it introduced.

    A candidate is checked once on its way to the driver: when the mutator already
    checked this code with a dry run (``result.check``), that result is used; otherwise
    (no check carried, a static-only one, or one for other code) ``rayopt.program.check``
    runs here.
    """
    from rayopt.program import check, introduced

    if not result.ok or not result.code:
        return Checked(result)
    c = carried_check(result)
    if c is None:
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


def carried_check(result: MutationResult) -> CheckResult | None:
    """``result.check`` if it can stand for a full check of ``result.code``: it is for
    that code (same canonical hash) and it is final (it failed, or it passed the dry run,
    which gives a fingerprint); else None."""
    from rayopt.program import canonical_hash

    c = result.check
    if c is None or result.code is None or (c.ok and c.fingerprint is None):
        return None
    if c.hash != canonical_hash(result.code):
        log.warning("%s mutator carried a check for other code; checking again", result.mutator)
        return None
    return c


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=2)
class MutatorActor:
    """Hosts one mutator; ``max_concurrency`` proposals run at once on its event loop."""

    def __init__(self, kind: str, llm: dict[str, Any] | None = None, style: str = "motifs"):
        self.mutator = make_mutator(kind, llm, style)

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
