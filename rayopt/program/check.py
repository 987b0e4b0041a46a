"""One entry point for untrusted code: validate, audit, hash, dry-run."""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from rayopt.program.audit import audit
from rayopt.program.canonical import canonical_hash
from rayopt.program.errors import ProgramError
from rayopt.program.validate import MAX_SOURCE_BYTES, validate


@dataclasses.dataclass(frozen=True)
class CheckResult:
    """Everything the search needs to know about a candidate before paying for PPO.

    ok: passed validation (and the dry run, when asked for). error: why not.
    literals: every numeric literal as (value, line); tunable_count: how many of them
    are tunable (see rayopt.program.audit); hash: the canonical hash (computed even
    for rejected code, so failures can be deduplicated too); fingerprint: the
    behavioural fingerprint, only when the dry run ran and passed.
    """

    ok: bool
    error: ProgramError | None
    literals: list[tuple[int | float, int]]
    tunable_count: int
    hash: str
    fingerprint: str | None = None
    tunable: list[tuple[int | float, int]] = dataclasses.field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: ``ok``, ``kind``, ``line``, ``message`` plus the audit and hashes."""
        err = self.error
        return {
            "ok": self.ok,
            "kind": err.kind if err else None,
            "line": err.line if err else None,
            "message": err.message if err else None,
            "literals": [[v, line] for v, line in self.literals],
            "tunable": [[v, line] for v, line in self.tunable],
            "tunable_count": self.tunable_count,
            "hash": self.hash,
            "fingerprint": self.fingerprint,
            "seconds": round(self.seconds, 3),
        }


def check(code: str, *, dry_run: bool = True, timeout: float = 10.0) -> CheckResult:
    """Check untrusted ``update_fn`` source. Never raises for anything in ``code``.

    Static validation first (cheap, in this process, nothing executed); then, if
    ``dry_run``, a sandboxed run on probe inputs in the warm worker process, bounded by
    ``timeout`` seconds (see rayopt.program.sandbox). Nothing is cached: every call
    with ``dry_run`` runs the program again, so a caller that already holds a
    :class:`CheckResult` for the same code passes it on instead (the mutators put
    theirs on ``MutationResult.check``).
    """
    t0 = time.perf_counter()
    oversized = len(code.encode("utf-8", "replace")) > MAX_SOURCE_BYTES
    report = audit("" if oversized else code)  # never parse megabytes of junk
    digest = canonical_hash("\0" + code if oversized else code)  # "\0": raw-text hash
    lits = [tuple(lit) for lit in report.literals]
    tunable = [tuple(lit) for lit in report.tunable]

    def result(error: ProgramError | None, fp: str | None = None) -> CheckResult:
        return CheckResult(
            ok=error is None,
            error=error,
            literals=lits,
            tunable_count=len(tunable),
            hash=digest,
            fingerprint=fp,
            tunable=tunable,
            seconds=time.perf_counter() - t0,
        )

    error = validate(code)
    if error is not None or not dry_run:
        return result(error)
    from rayopt.program.sandbox import dry_run as run

    outcome = run(code, timeout=timeout)
    return result(outcome.error, outcome.fingerprint)


def check_shapes(
    code: str, shapes: list[tuple[int, ...]], *, timeout: float = 10.0
) -> ProgramError | None:
    """The dry run's probe at the networks' real shapes (e.g. the largest kernel of the
    configured networks): trace ``code`` there, sandboxed, and size its intermediates;
    a ``memory`` error for an array no real network can afford, None if it fits (or
    for no shapes). Run after :func:`check` passed."""
    if not shapes:
        return None
    from rayopt.program.sandbox import shape_check

    return shape_check(code, shapes, timeout=timeout).error
