"""What a discovery holds while it runs: one meta-seed's search, its unfinished lineages,
the verdict on each candidate, and the journal every step is written to.

Shared by the driver and the steps of §5.3 it conducts (``lineage``, ``cascade``,
``confirm``, ``replay``); it imports none of them, so they never import each other
through it.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from rayopt.results.journal import JournalWriter
from rayopt.search.archive import Candidate


@dataclasses.dataclass
class Lineage:
    """An unfinished generation: where to pick up (fresh, or from the journal).

    ``history`` holds what each step produced, oldest first: evaluated candidates,
    duplicates (with the scores they share) and failed steps (no scores, an ``error``),
    so the next mutation sees what was tried and why it failed.
    """

    island: int
    generation: int
    base: Candidate
    context: list[Candidate]
    history: list[Candidate] = dataclasses.field(default_factory=list)
    evaluated: list[Candidate] = dataclasses.field(default_factory=list)
    next_step: int = 1
    pending: list[Candidate] = dataclasses.field(default_factory=list)  # created, not finished
    context_notes: list[str] = dataclasses.field(default_factory=list)  # why each was shown

    def notes(self) -> list[str | None]:
        """A note per context optimiser (None where the journal had none)."""
        return [*self.context_notes, *[None] * len(self.context)][: len(self.context)]


@dataclasses.dataclass
class Search:
    """The state of one meta-seed's search, mirrored from the journal."""

    meta_seed: int
    run_id: str
    islands: list[Any]
    started: list[int]  # generations started per island
    finished: list[int]  # generations finished per island
    by_hash: dict[str, Candidate] = dataclasses.field(default_factory=dict)
    by_fingerprint: dict[str, Candidate] = dataclasses.field(default_factory=dict)
    candidates: dict[str, Candidate] = dataclasses.field(default_factory=dict)
    seen: set[str] = dataclasses.field(default_factory=set)  # hashes + fingerprints checked
    population: dict[str, Candidate] = dataclasses.field(default_factory=dict)  # evaluated
    evaluated: int = 0
    failed: int = 0  # full evaluations that failed
    duplicates: int = 0  # candidates that cost no PPO: same hash or fingerprint
    dropped: int = 0  # steps that produced no evaluated candidate (any other reason)
    screened: set[str] = dataclasses.field(default_factory=set)  # passed the cascade
    failed_envs: dict[str, str] = dataclasses.field(default_factory=dict)  # from the journal
    resumed: list[Lineage] = dataclasses.field(default_factory=list)
    migrations_due: list[tuple[int, int]] = dataclasses.field(default_factory=list)

    def see(self, c: Candidate) -> None:
        """Remember that a program was met (whatever its verdict)."""
        self.seen |= {x for x in (c.code_hash, c.fingerprint) if x}

    def index(self, c: Candidate) -> None:
        """Remember an evaluated candidate for deduplication and lookup."""
        self.candidates[c.id] = c
        self.population[c.id] = c
        self.see(c)
        if c.code_hash:
            self.by_hash.setdefault(c.code_hash, c)
        if c.fingerprint:
            self.by_fingerprint.setdefault(c.fingerprint, c)


@dataclasses.dataclass(frozen=True)
class Verdict:
    """How one candidate (or one refinement step) ended.

    ``event`` is the journal's verdict (``evaluated``, ``duplicate``, ``invalid``,
    ``rejected``, ``screened_out``, ``evaluation_failed``; ``mutation_failed`` when no
    code came back). ``candidate`` carries scores when it has them (evaluated, or a
    duplicate sharing the earlier scores); ``error`` says why it fell out.
    """

    event: str
    candidate: Candidate | None = None
    error: str | None = None
    error_kind: str | None = None

    @property
    def scored(self) -> bool:
        return self.event in ("evaluated", "duplicate") and self.candidate is not None


class RunJournal:
    """The run's journal, with the run id and meta-seed stamped on every row."""

    def __init__(self, writer: JournalWriter):
        self.writer = writer

    def write(self, s: Search, rows: list[dict]) -> None:
        if rows:
            self.writer.write(
                [
                    {"row_type": "event", **r, "run_id": s.run_id, "meta_seed": s.meta_seed}
                    if "row_type" not in r
                    else {**r, "run_id": s.run_id, "meta_seed": s.meta_seed}
                    for r in rows
                ]
            )


def joins_archive(c: Candidate) -> bool:
    """Whether ``c`` joins an archive (and counts as evaluated): all but references."""
    return c.mutator != "reference"


def is_mutated(c: Candidate) -> bool:
    """A candidate the search produced (not an initial or reference optimiser)."""
    return c.mutator not in ("library", "reference")


def copy_scores(dup: Candidate, orig: Candidate) -> Candidate:
    """A duplicate carries the earlier candidate's scores (and is not re-evaluated)."""
    return dataclasses.replace(
        dup,
        duplicate_of=orig.id,
        final_return=dict(orig.final_return),
        auc=dict(orig.auc),
        curves=dict(orig.curves),
    )


@dataclasses.dataclass
class Spend:
    """Money spent on model calls (from the journal on resume) against ``budget_usd``."""

    cost_usd: float = 0.0
    limit_usd: float | None = None

    def over(self) -> bool:
        return self.limit_usd is not None and self.cost_usd >= float(self.limit_usd)


def failed_step(verdict: Verdict, lin: Lineage, step: int) -> Candidate:
    """A history entry for a step without scores: its code and idea, and why it failed."""
    why = f"{verdict.event}: {verdict.error or 'no detail'}"
    c = verdict.candidate
    if c is None:
        cid = f"i{lin.island}-g{lin.generation}-s{step}"
        return Candidate(id=cid, code="", step=step, error=why)
    return dataclasses.replace(c, error=why, final_return={}, auc={}, curves={})
