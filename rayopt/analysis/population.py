"""A discovery run's population, read back from its journal: who was evaluated, in what
order, how each ranks, where the references (Adam, OPEN) would rank, and each
candidate's lineage.

Definitions (docs/analysis.md):

- **Population** of a meta-seed (one ``run_id``): every candidate with an ``evaluated``
  event, references (``ref-*``, ``mutator = reference``) excluded. That is the union of
  the run's island archives at the end (duplicates are not members: they share an
  earlier member's scores).
- **Score** of a member on an env: mean over seeds of ``final_return`` of its ``full``
  evaluation rows (status ok or nonfinite; a seed journalled twice counts once, as the
  mean of its rows). NaN returns are left out, as the driver's ``np.nanmean`` leaves
  them out; an env with no finite return scores NaN.
- **Average rank**: :func:`rayopt.search.archive.average_ranks` over the population (1 =
  best), plus the run's literal penalty (``search.rank_penalty`` of its config, the rule
  the driver selects by) per introduced literal. This is the search's own rule (its
  archives hold no reference): :meth:`Population.ranks` and :meth:`Population.top`.
- **Joint rank** (Fig. 2, the references table): the average rank in *one* population
  of every member and every reference (N + R entries; references carry no penalty),
  :meth:`Population.joint_ranks`. A reference's rank is its joint rank, so a reference
  line and a candidate's point answer the same question: ranked together, who is ahead?
  (Ranking the candidates among themselves and each reference in the population with it
  added puts them on different scales: with three envs a candidate can rank 1.0 among
  the candidates and Adam 1.33 with it added, while ranked together Adam is 1.33 and
  the candidate 1.67, Adam ahead on two envs of three.)
- **Meta-training curve** (Fig. 2): members in the order of their ``evaluated`` events;
  point k is the best joint rank among the first k members, ranks taken in the *final*
  joint population, so the curve is monotone and on the references' scale.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from rayopt.analysis.scan import CANDIDATE_COLUMNS, Scan, scans
from rayopt.config import ConfigError, DiscoveryConfig, from_dict, read_yaml
from rayopt.search.archive import average_ranks


@dataclasses.dataclass
class Member:
    """One candidate of a run (evaluated or not) and its scores."""

    id: str
    optimizer: str | None = None
    mutator: str | None = None
    parent_id: str | None = None
    idea: str | None = None
    new_literals: int | None = None
    outcome: str | None = None  # last terminal event: evaluated, duplicate, invalid, ...
    evaluated_at: float | None = None
    scores: dict[str, float] = dataclasses.field(default_factory=dict)

    @property
    def is_reference(self) -> bool:
        return self.mutator == "reference" or self.id.startswith("ref-")

    @property
    def is_initial(self) -> bool:
        return self.mutator == "library" or self.id.startswith("init-")


#: the candidate columns a ``created`` event sets on its Member (same names)
MEMBER_COLUMNS = [c for c in CANDIDATE_COLUMNS if c in {f.name for f in dataclasses.fields(Member)}]


@dataclasses.dataclass
class Population:
    """One meta-seed of one discovery run (see the module docstring for definitions)."""

    scan: Scan
    run_id: str
    meta_seed: int | None
    envs: list[str]
    members: dict[str, Member]  # every created candidate, by id
    literal_penalty: float = 0.0

    @functools.cached_property
    def order(self) -> list[str]:
        """Population members in evaluation order."""
        ms = [
            m
            for m in self.members.values()
            if m.outcome == "evaluated" and not m.is_reference and self._complete(m)
        ]
        ms.sort(key=lambda m: m.evaluated_at if m.evaluated_at is not None else math.inf)
        return [m.id for m in ms]

    @property
    def references(self) -> list[str]:
        return [m.id for m in self.members.values() if m.is_reference and self._complete(m)]

    def _complete(self, m: Member) -> bool:
        return all(e in m.scores for e in self.envs)

    def penalty(self, m: Member) -> float:
        """``m``'s average-rank penalty: the run's penalty per literal it introduced."""
        return self.literal_penalty * float(m.new_literals or 0)

    @functools.cached_property
    def _ranks(self) -> dict[str, float]:
        ids = self.order
        ms = [self.members[i] for i in ids]
        r = average_ranks([m.scores for m in ms], self.envs, [self.penalty(m) for m in ms])
        return dict(zip(ids, (float(x) for x in r), strict=True))

    def ranks(self) -> dict[str, float]:
        """Average rank of every population member (1 = best)."""
        return dict(self._ranks)

    def env_ranks(self) -> dict[str, dict[str, float]]:
        """Per-env rank of every member (1 = best): are the best ones consistently good?"""
        ids = self.order
        ms = [self.members[i] for i in ids]
        out: dict[str, dict[str, float]] = {i: {} for i in ids}
        for env in self.envs:
            r = average_ranks([m.scores for m in ms], [env])
            for i, x in zip(ids, r, strict=True):
                out[i][env] = float(x)
        return out

    @functools.cached_property
    def _joint(self) -> dict[str, float]:
        ids = [*self.order, *self.references]
        ms = [self.members[i] for i in ids]
        penalties = [0.0 if m.is_reference else self.penalty(m) for m in ms]
        r = average_ranks([m.scores for m in ms], self.envs, penalties)
        return dict(zip(ids, (float(x) for x in r), strict=True))

    def joint_ranks(self) -> dict[str, float]:
        """Average rank of every member and every reference, ranked in one population."""
        return dict(self._joint)

    def reference_ranks(self) -> dict[str, float]:
        """Each reference's joint rank (ranked with every member and the other references)."""
        return {rid: self._joint[rid] for rid in self.references}

    def curve(self) -> list[dict[str, Any]]:
        """The Fig. 2 curve: one point per member in evaluation order, joint ranks."""
        ranks = self.joint_ranks()
        best = math.inf
        best_id = None
        points = []
        for k, cid in enumerate(self.order, start=1):
            if ranks[cid] < best:
                best, best_id = ranks[cid], cid
            points.append(
                dict(
                    run_id=self.run_id,
                    meta_seed=self.meta_seed,
                    k=k,
                    candidate_id=cid,
                    avg_rank=ranks[cid],
                    best_rank=best,
                    best_id=best_id,
                )
            )
        return points

    def top(self, k: int, discovered_only: bool = True) -> list[tuple[str, float]]:
        """The ``k`` best members by average rank (ties: earlier evaluated first);
        ``discovered_only`` leaves out the initial (library) optimisers."""
        ranks = self.ranks()
        ranked = [(self, i, ranks[i]) for i in self.order]
        return [(i, r) for _, i, r in _best(ranked, k, discovered_only)]

    def lineage(self, cid: str) -> list[str]:
        """``cid``, its parent, its parent's parent ... back to an initial optimiser (or
        as far as the journal knows)."""
        chain: list[str] = []
        seen: set[str] = set()
        cur: str | None = cid
        while cur is not None and cur not in seen:
            chain.append(cur)
            seen.add(cur)
            m = self.members.get(cur)
            cur = m.parent_id if m is not None else None
        return chain

    def code(self, ids: Iterable[str]) -> dict[str, str]:
        """The ``code`` of candidates ``ids``, read now from the part files holding their
        ``created`` events (the only place code is read)."""
        keys = {
            ("", self.run_id, c, self.members[c].optimizer or ""): c
            for c in ids
            if c in self.members
        }
        return {keys[k]: code for k, code in self.scan.code(keys).items()}


def pooled_top(
    pops: Sequence[Population], k: int, discovered_only: bool = True
) -> list[tuple[Population, str, float]]:
    """The ``k`` best members of ``pops`` (meta-seeds of one run) ranked as one population:
    (population, candidate, average rank in the union). Ties, and ``discovered_only``, as
    in :meth:`Population.top`; for one population this is its ``top``."""
    if not pops:
        return []
    envs = pops[0].envs
    if any(p.envs != envs for p in pops):
        raise ValueError("meta-seeds were evaluated on different envs; pick one with @msN/topK")
    members = [(p, p.members[c]) for p in pops for c in p.order]
    ranks = average_ranks([m.scores for _, m in members], envs, [p.penalty(m) for p, m in members])
    ranked = [(p, m.id, float(r)) for (p, m), r in zip(members, ranks, strict=True)]
    return _best(ranked, k, discovered_only)


def _best(
    ranked: list[tuple[Population, str, float]], k: int, discovered_only: bool
) -> list[tuple[Population, str, float]]:
    """The ``k`` lowest ranks of ``ranked`` (in evaluation order: a stable sort keeps it
    for ties), initial optimisers left out when ``discovered_only``."""
    keep = [x for x in ranked if not (discovered_only and x[0].members[x[1]].is_initial)]
    keep.sort(key=lambda x: x[2])
    return keep[:k]


def _run_config(path: Path) -> tuple[list[str], float]:
    """The run's envs ([] if unknown) and literal rank penalty, from its ``config.yaml``
    built as the run built it (no ``validate``: the run may come from another machine)."""
    f = path / "config.yaml"
    if not f.is_file():
        return [], 0.0
    try:
        cfg = from_dict(DiscoveryConfig, read_yaml(f))
    except ConfigError as err:
        print(f"warning: {err}; ranking {path} without a literal penalty", file=sys.stderr)
        return [], 0.0
    return list(cfg.envs), cfg.search.rank_penalty


def load_populations(
    paths: str | os.PathLike | Sequence[str | os.PathLike] | Sequence[Scan],
) -> list[Population]:
    """Every meta-seed of every discovery run under ``paths`` (a sweep dir yields none)."""
    return [pop for sc in scans(paths) for pop in _load_one(sc)]


def _load_one(sc: Scan) -> list[Population]:
    events = sc.events()
    events = events.filter(
        pc.and_(pc.is_valid(events["candidate_id"]), pc.is_null(events["sweep"]))
    )
    if events.num_rows == 0:
        return []
    scores = _scores(sc.evaluations("full"))
    config_envs, penalty = _run_config(sc.path)
    pops: dict[str, Population] = {}
    events = events.sort_by([("time", "ascending")])
    cols = {name: events[name].to_pylist() for name in ["event", "time", *CANDIDATE_COLUMNS]}
    for i in range(events.num_rows):
        run_id = cols["run_id"][i] or ""
        pop = pops.get(run_id)
        if pop is None:
            pop = pops[run_id] = Population(sc, run_id, cols["meta_seed"][i], [], {}, penalty)
        cid = cols["candidate_id"][i]
        m = pop.members.get(cid)
        if m is None:
            m = pop.members[cid] = Member(cid)
        ev = cols["event"][i]
        if ev == "created":
            for name in MEMBER_COLUMNS:
                setattr(m, name, cols[name][i])
        else:
            m.outcome = ev
            if ev == "evaluated":
                m.evaluated_at = cols["time"][i]
    for (run_id, cid), envs in scores.items():
        pop = pops.get(run_id)
        if pop is not None and cid in pop.members:
            pop.members[cid].scores = envs
    for pop in pops.values():
        if config_envs:
            pop.envs = config_envs
        else:  # no config: the envs every evaluated member has
            seen = [set(m.scores) for m in pop.members.values() if m.outcome == "evaluated"]
            pop.envs = sorted(set.intersection(*seen)) if seen else []
    return sorted(pops.values(), key=lambda p: (p.meta_seed is None, p.meta_seed, p.run_id))


def _scores(t: pa.Table) -> dict[tuple[str, str], dict[str, float]]:
    """(run_id, candidate_id) -> env -> mean over seeds of the full-stage final return,
    NaN returns left out (as null: pyarrow's mean skips nulls but propagates NaN)."""
    if t.num_rows == 0:
        return {}
    fr = t["final_return"]
    t = t.set_column(
        t.schema.get_field_index("final_return"),
        "final_return",
        pc.if_else(pc.is_nan(fr), pa.scalar(None, fr.type), fr),
    )
    per_seed = t.group_by(["run_id", "candidate_id", "env", "seed"], use_threads=True).aggregate(
        [("final_return", "mean")]
    )
    per_env = per_seed.group_by(["run_id", "candidate_id", "env"], use_threads=True).aggregate(
        [("final_return_mean", "mean")]
    )
    runs = per_env["run_id"].to_pylist()
    cids = per_env["candidate_id"].to_pylist()
    envs = per_env["env"].to_pylist()
    vals = per_env["final_return_mean_mean"].to_numpy(zero_copy_only=False)
    out: dict[tuple[str, str], dict[str, float]] = {}
    for r, c, e, v in zip(runs, cids, envs, vals, strict=True):
        out.setdefault((r, c), {})[e] = float(v) if np.isfinite(v) else math.nan
    return out
