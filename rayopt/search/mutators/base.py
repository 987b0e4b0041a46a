"""The mutator interface: given a base optimiser, context optimisers and this
generation's history, propose new code (paper §5.3.2-5.3.3).

Two implementations: the offline AST mutator (no network; the default and an ablation
baseline) and the LLM thinker/coder. Both are async so a mutator actor can run many
proposals at once.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import hashlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from rayopt.program.check import CheckResult


@dataclasses.dataclass(frozen=True)
class Scored:
    """An evaluated optimiser as a mutator sees it.

    final_return / auc: per environment, the mean over seeds. curves: per environment,
    the mean return curve downsampled (only filled when the config asks for it).
    error: set for a refinement step that failed (no scores): what went wrong, so the
    next step knows what was tried. duplicate_of: the earlier candidate whose scores a
    duplicate shares.
    """

    candidate_id: str
    code: str
    final_return: dict[str, float]
    auc: dict[str, float]
    idea: str | None = None
    curves: dict[str, list[float]] | None = None
    error: str | None = None
    duplicate_of: str | None = None
    note: str | None = None  # why it is shown (context optimisers: its place in an env)


@dataclasses.dataclass(frozen=True)
class MutationRequest:
    """One refinement step. ``current`` is the optimiser to change (the base at step 1,
    then the latest refinement that has scores); ``base`` the generation's base
    optimiser; ``context`` optimisers that do well in individual environments;
    ``history`` this generation's earlier steps, oldest first, failed ones included
    (``Scored.error``). ``repair``: the previous attempt of this very step, whose code
    failed when it was run (an evaluation error): the mutator may fix that code instead
    of starting afresh. ``known``: canonical hashes and fingerprints of every program
    the meta-seed has checked, so a mutator can avoid proposing one again."""

    current: Scored
    context: tuple[Scored, ...]
    history: tuple[Scored, ...]
    seed: int
    run_id: str = ""
    island: int = 0
    generation: int = 0
    step: int = 0
    base: Scored | None = None
    repair: Scored | None = None
    known: frozenset[str] = frozenset()  # hashes and fingerprints the search has met


@dataclasses.dataclass(frozen=True)
class CallRecord:
    """Accounting for one model call (or one offline mutation attempt).

    For LLM calls there is one record per HTTP request: ``attempt`` is the role's
    attempt (1..max attempts, a new reply asked for), ``retry`` the transport retry
    within it (0 first, then after 429/5xx/timeouts). ``ok`` is True only for the
    request whose reply was used. ``priced`` is False when the model had no entry in
    the price table, so ``cost_usd`` is 0 for want of a price, not because it was free.
    """

    role: str  # thinker | coder | offline
    provider: str
    model: str
    attempt: int
    ok: bool
    latency_s: float
    tokens_in: int = 0
    tokens_out: int = 0
    cost_usd: float = 0.0
    error: str | None = None
    retry: int = 0
    priced: bool = True


@dataclasses.dataclass(frozen=True)
class MutationResult:
    """A proposal, or a structured failure (``ok`` False, ``error`` says why).

    ``check``: what ``rayopt.program.check`` found in exactly ``code``, when the mutator
    already ran it (validation and dry run); the actor reuses it instead of checking
    the same code a second time (see ``actor.check_proposal``).
    """

    ok: bool
    mutator: str
    code: str | None = None
    idea: str | None = None
    thought: str | None = None
    calls: tuple[CallRecord, ...] = ()
    error: str | None = None
    check: CheckResult | None = None

    @property
    def cost_usd(self) -> float:
        return sum(c.cost_usd for c in self.calls)


@runtime_checkable
class Mutator(Protocol):
    """Anything with a name and an async ``propose``; it must never raise for a bad
    model reply or bad code: it returns ``MutationResult(ok=False, error=...)``."""

    name: str

    async def propose(self, request: MutationRequest) -> MutationResult: ...


#: Where a model call's record goes the moment it is made, before the proposal that made
#: it returns (the mutator actor spools them, so a proposal that crashes and is retried
#: by Ray does not lose their cost). Set per proposal: asyncio tasks copy the context.
CALL_SINK: contextvars.ContextVar[Callable[[CallRecord], None] | None] = contextvars.ContextVar(
    "rayopt_call_sink", default=None
)


def emit_call(record: CallRecord) -> None:
    """Hand ``record`` to the current proposal's sink, if any (never raises)."""
    sink = CALL_SINK.get()
    if sink is not None:
        with contextlib.suppress(Exception):  # accounting must never break a proposal
            sink(record)


def request_key(request: MutationRequest) -> str:
    """One proposal's identity: the same for Ray's retry of the same request."""
    repair = request.repair.candidate_id if request.repair is not None else ""
    return f"{request.run_id}/{request.island}/{request.generation}/{request.step}/{repair}"


def call_seed(request: MutationRequest, role: str, attempt: int) -> int:
    """A sampling seed per (proposal, role, attempt) for providers that take one: each
    attempt is a fresh sample, and a proposal retried after a crash asks the same."""
    text = f"{request_key(request)}/{request.seed}/{role}/{attempt}"
    return int(hashlib.sha256(text.encode()).hexdigest()[:8], 16) % (2**31 - 1)
