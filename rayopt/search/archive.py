"""Candidates and the archive of one island: average per-environment rank, and the
paper's selection of a base optimiser (§5.3.1) and of context optimisers (§5.3.3)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from scipy.stats import rankdata

from rayopt.search.mutators.base import Scored


@dataclasses.dataclass
class Candidate:
    """An optimiser program with its lineage and, once evaluated, its scores.

    ``final_return`` / ``auc`` map each environment to the mean over seeds; ``curves``
    to the mean return curve. ``new_literals`` counts tunable constants the candidate
    introduced over its parent (the hyperparameter policy acts on it).
    """

    id: str
    code: str
    island: int = 0
    generation: int = 0
    step: int = 0
    parent_id: str | None = None
    base_id: str | None = None
    mutator: str = "library"
    name: str | None = None
    idea: str | None = None
    thought: str | None = None
    code_hash: str | None = None
    fingerprint: str | None = None
    literal_count: int = 0
    new_literals: int = 0
    duplicate_of: str | None = None  # same code (hash or fingerprint) as this candidate
    error: str | None = None  # a failed refinement step: why it produced no scores
    final_return: dict[str, float] = dataclasses.field(default_factory=dict)
    auc: dict[str, float] = dataclasses.field(default_factory=dict)
    curves: dict[str, list[float]] = dataclasses.field(default_factory=dict)

    def scored(self) -> Scored:
        return Scored(
            candidate_id=self.id,
            code=self.code,
            final_return=dict(self.final_return),
            auc=dict(self.auc),
            idea=self.idea,
            curves={k: list(v) for k, v in self.curves.items()} or None,
            error=self.error,
            duplicate_of=self.duplicate_of,
        )

    def lineage_row(self) -> dict[str, Any]:
        """The journal columns that describe this candidate."""
        return dict(
            candidate_id=self.id,
            parent_id=self.parent_id,
            base_id=self.base_id,
            optimizer=self.name or self.id,
            code=self.code,
            idea=self.idea,
            thought=self.thought,
            mutator=self.mutator,
            code_hash=self.code_hash,
            fingerprint=self.fingerprint,
            literal_count=self.literal_count,
            new_literals=self.new_literals,
        )


def average_ranks(
    scores: Sequence[dict[str, float]],
    envs: Sequence[str],
    penalties: Sequence[float] | None = None,
) -> np.ndarray:
    """Mean over environments of each member's rank by final return (1 = best).

    Ties share the average rank; a missing or NaN score ranks last. Rank is scale
    invariant across environments (the paper's reason for it). ``penalties`` are added
    (the hyperparameter policy's ``penalise``).
    """
    n = len(scores)
    if n == 0:
        return np.zeros(0)
    total = np.zeros(n)
    for env in envs:
        values = np.array([s.get(env, math.nan) for s in scores], dtype=float)
        values = np.where(np.isfinite(values), values, -np.inf)
        total += rankdata(-values, method="average")
    ranks = total / max(len(envs), 1)
    if penalties is not None:
        ranks = ranks + np.asarray(penalties, dtype=float)
    return ranks


class Archive:
    """The population of one island; grows over meta-training (every evaluated
    candidate joins it at the end of its generation)."""

    def __init__(self, envs: Sequence[str], literal_penalty: float = 0.0):
        self.envs = list(envs)
        self.literal_penalty = literal_penalty
        self.members: dict[str, Candidate] = {}

    def __len__(self) -> int:
        return len(self.members)

    def add(self, candidates: Iterable[Candidate]) -> int:
        """Add evaluated candidates (a known id is kept once); returns how many were new."""
        new = 0
        for c in candidates:
            if c.id not in self.members:
                self.members[c.id] = c
                new += 1
        return new

    def ranked(self) -> list[tuple[Candidate, float]]:
        """Members with their average rank, best first (ties: earlier member first)."""
        members = list(self.members.values())
        penalties = [self.literal_penalty * c.new_literals for c in members]
        ranks = average_ranks([c.final_return for c in members], self.envs, penalties)
        order = np.argsort(ranks, kind="stable")
        return [(members[i], float(ranks[i])) for i in order]

    def select(self, rng: np.random.Generator, top_k: int, exploit_p: float) -> Candidate:
        """With probability ``exploit_p`` a uniform pick among the ``top_k`` best by
        average rank, else a uniform pick among all members."""
        ranked = self.ranked()
        if not ranked:
            raise LookupError("the archive is empty")
        pool = ranked[:top_k] if rng.random() < exploit_p else ranked
        return pool[int(rng.integers(len(pool)))][0]

    def context(
        self,
        exclude: str | None = None,
        rng: np.random.Generator | None = None,
        top: int = 1,
    ) -> list[tuple[Candidate, str]]:
        """The thinker's context optimisers (§5.3.3: "randomly sampled context optimisers,
        which perform well in individual environments"), one per environment in env
        order, distinct, ``exclude`` (the base) skipped: with ``rng``, a uniform pick among
        the ``top`` best by final return in that env; without, the best. Each comes with
        a truthful note of why it was shown (its place in that env)."""
        out: list[tuple[Candidate, str]] = []
        chosen: set[str] = set()
        for env in self.envs:
            ranked = sorted(
                (
                    c
                    for c in self.members.values()
                    if c.id != exclude and math.isfinite(c.final_return.get(env, math.nan))
                ),
                key=lambda c: -c.final_return[env],
            )
            pool = [c for c in ranked[: max(top, 1)] if c.id not in chosen]
            if not pool:
                continue
            pick = pool[int(rng.integers(len(pool)))] if rng is not None else pool[0]
            place = ranked.index(pick) + 1
            rank = "best" if place == 1 else f"{_ordinal(place)} best"
            note = f"{rank} of {len(ranked)} in {env} by final return"
            out.append((pick, note))
            chosen.add(pick.id)
        return out

    def best(self, m: int) -> list[Candidate]:
        return [c for c, _ in self.ranked()[:m]]


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"
