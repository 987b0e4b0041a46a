"""Mutators as async Ray actors, and the driver-side pool over them.

A mutator actor runs many proposals at once (LLM calls are I/O). After a proposal it
checks the code (validation, literal audit, canonical hash, behavioural fingerprint)
so the driver can deduplicate before paying for PPO; the built-in mutators already
checked their code and carry the result, which is used as it is.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ray

from rayopt.search.mutators.base import (
    CallRecord,
    MutationRequest,
    MutationResult,
    request_key,
)

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
    # model calls an earlier attempt of this very proposal made before its process died
    # (Ray retried it): not in ``result.calls``, but paid for
    lost_calls: tuple[CallRecord, ...] = ()


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


def check_proposal(
    result: MutationResult, parent_code: str, shapes: tuple[tuple[int, ...], ...] = ()
) -> Checked:
    """Validate and fingerprint a proposal's code; count the literals it introduced.

    A candidate is checked once on its way to the driver: when the mutator already
    checked this code with a dry run (``result.check``), that result is used; otherwise
    (no check carried, a static-only one, or one for other code) ``rayopt.program.check``
    runs here. ``shapes``: the networks' real kernel shapes (the largest the config has),
    at which the program is traced too (``rayopt.program.check_shapes``).
    """
    from rayopt.program import check, check_shapes, introduced

    if not result.ok or not result.code:
        return Checked(result)
    c = carried_check(result)
    if c is None:
        c = check(result.code, dry_run=True, timeout=10.0)
    error = c.error
    if c.ok and shapes:  # the probe at the networks' real shapes (sizes, nothing runs)
        error = check_shapes(result.code, list(shapes))
    if error is not None:
        return Checked(
            result,
            ok=False,
            error_kind=error.kind,
            error_line=error.line,
            error=error.message,
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


class CallSpool:
    """Model calls written to disk the moment they are made, one file per proposal, so
    that when the process dies mid-proposal and Ray retries it (``max_task_retries``)
    on the restarted actor, the retry finds what the lost attempt paid for.

    A proposal reads its file when it starts (the lost attempts' calls), appends every
    call it makes, and deletes the file when it returns: a file that outlives its
    proposal is one whose process died.
    """

    def __init__(self, directory: str | os.PathLike):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)

    def path(self, key: str) -> Path:
        return self.dir / (hashlib.sha256(key.encode()).hexdigest()[:24] + ".jsonl")

    def lost(self, key: str) -> tuple[CallRecord, ...]:
        try:
            lines = self.path(key).read_text().splitlines()
        except FileNotFoundError:
            return ()
        out = []
        for line in lines:
            try:
                out.append(CallRecord(**json.loads(line)))
            except (ValueError, TypeError):  # a line cut short by the crash
                continue
        return tuple(out)

    def append(self, key: str, record: CallRecord) -> None:
        with open(self.path(key), "a") as f:
            f.write(json.dumps(dataclasses.asdict(record)) + "\n")

    def done(self, key: str) -> None:
        self.path(key).unlink(missing_ok=True)


def lost_call(record: CallRecord) -> CallRecord:
    """How a call of a crashed attempt is journalled: an error, with what it cost."""
    why = "lost: the mutator process died during this proposal and Ray retried it"
    detail = f" (the call itself: {record.error})" if record.error else ""
    return dataclasses.replace(record, ok=False, error=why + detail)


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=2)
class MutatorActor:
    """Hosts one mutator; ``max_concurrency`` proposals run at once on its event loop.

    Every model call is spooled as it happens (``spool_dir``, default a directory per
    actor under the system's temporary directory; a restarted actor keeps its id, so
    it finds its predecessor's files): a proposal Ray retries after a crash returns the
    lost attempt's calls in ``Checked.lost_calls``, and the driver journals them.
    """

    def __init__(
        self,
        kind: str,
        llm: dict[str, Any] | None = None,
        style: str = "motifs",
        spool_dir: str | None = None,
        probe_shapes: tuple[tuple[int, ...], ...] = (),
    ):
        self.mutator = make_mutator(kind, llm, style)
        self.probe_shapes = tuple(tuple(s) for s in probe_shapes)
        actor_id = ray.get_runtime_context().get_actor_id()
        self.spool = CallSpool(
            spool_dir or Path(tempfile.gettempdir()) / "rayopt-call-spool" / actor_id
        )

    async def propose(self, request: MutationRequest) -> Checked:
        import asyncio

        from rayopt.search.mutators import base  # (a ContextVar does not pickle)

        key = request_key(request)
        lost = tuple(lost_call(r) for r in self.spool.lost(key))
        token = base.CALL_SINK.set(lambda record: self.spool.append(key, record))
        try:
            result = await self.mutator.propose(request)
        finally:
            base.CALL_SINK.reset(token)
        checked = await asyncio.to_thread(
            check_proposal, result, request.current.code, self.probe_shapes
        )
        self.spool.done(key)
        return dataclasses.replace(checked, lost_calls=lost) if lost else checked

    def pid(self) -> int:
        return os.getpid()


class MutatorPool:
    """Round-robin over mutator actors (each limits its own concurrency)."""

    def __init__(self, actors: list[Any]):
        if not actors:
            raise ValueError("need at least one mutator actor")
        self.actors = actors
        self._next = itertools.cycle(actors)

    async def propose(self, request: MutationRequest) -> Checked:
        return await next(self._next).propose.remote(request)
