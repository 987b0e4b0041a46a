"""Journal replay: rebuild a discovery's state from its Parquet journal to resume it.

The journal is the only record (docs/journal.md): every candidate with the scores its
rows hold, its last verdict, unfinished generations with their history (failed steps
included), migrations due, and the money spent. A verdict is final: a resumed run never
trains a decided candidate again.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from rayopt.config import DiscoveryConfig
from rayopt.results.journal import read
from rayopt.search.archive import Candidate
from rayopt.search.state import (
    Lineage,
    Search,
    Verdict,
    copy_scores,
    failed_step,
    joins_archive,
)

#: Events that decide a candidate (exactly one per created candidate). A bounded
#: evaluation's end (``timeout``, ``too_slow``, ``memory``) is one of these events with
#: that ``status``: decided, never trained again.
VERDICTS = ("invalid", "duplicate", "rejected", "screened_out", "evaluation_failed", "evaluated")
#: Statuses of full-evaluation rows that fail their candidate, and those without scores.
FAILED = ("failed", "nonfinite", "timeout", "memory")
UNSCORED = ("failed", "timeout", "memory")


def read_journal(run_dir: str | Path) -> tuple[float, dict[str, dict[str, Any]]]:
    """(money spent on model calls, per run id: every candidate with the scores its
    rows hold, its last verdict and error, and the rows themselves)."""
    rows = read(run_dir).to_pylist()  # files in write order; rows in file order
    cost = sum(r["cost_usd"] or 0.0 for r in rows if r["event"] == "llm_call")
    by_run: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        by_run[r["run_id"]].append(r)
    out: dict[str, Any] = {}
    for run_id, rs in by_run.items():
        created: dict[str, Candidate] = {}
        full: dict[str, dict[str, dict[int, dict]]] = defaultdict(lambda: defaultdict(dict))
        terminal: dict[str, str] = {}
        errors: dict[str, str] = {}
        screened: set[str] = set()
        failed_envs: dict[str, str] = {}
        for r in rs:
            cid = r["candidate_id"]
            if r["event"] == "created":
                created[cid] = candidate_from_row(r)
            elif r["event"] == "screened":
                screened.add(cid)
            elif r["event"] in VERDICTS:
                terminal[cid] = r["event"]
                errors[cid] = r["error"] or ""
                if r["event"] == "duplicate" and cid in created:
                    created[cid].duplicate_of = r["ref_candidate_id"]
            elif r["row_type"] == "evaluation" and r["stage"] == "full":
                if r["status"] in FAILED:  # any of them fails the candidate
                    failed_envs[cid] = r["env"]
                if r["status"] not in UNSCORED:
                    full[cid][r["env"]][r["seed"]] = r
        for cid, envs in full.items():
            c = created.get(cid)
            for env, by_seed in envs.items() if c is not None else ():
                erows = list(by_seed.values())
                c.final_return[env] = float(np.nanmean([e["final_return"] for e in erows]))
                c.auc[env] = float(np.nanmean([e["auc"] for e in erows]))
                c.curves[env] = np.nanmean([e["return_curve"] for e in erows], axis=0).tolist()
        evaluated = {cid: c for cid, c in created.items() if terminal.get(cid) == "evaluated"}
        out[run_id] = dict(
            rows=rs,
            created=created,
            terminal=terminal,
            errors=errors,
            evaluated=evaluated,
            screened=screened,
            failed_envs=failed_envs,
        )
    return cost, out


def restore_flags(s: Search, state: dict[str, Any]) -> None:
    """Cascade verdicts that outlive a crash: passed screens and failed envs."""
    s.screened |= state["screened"]
    s.failed_envs.update(state["failed_envs"])


async def restore(s: Search, state: dict[str, Any], cfg: DiscoveryConfig) -> None:
    """Rebuild archives, counters, unfinished generations and due migrations."""
    rs, created, terminal = state["rows"], state["created"], state["terminal"]
    evaluated = {k: c for k, c in state["evaluated"].items() if joins_archive(c)}
    for c in evaluated.values():
        s.index(c)
    for c in created.values():
        s.see(c)
    starts = {(r["island"], r["generation"]): r for r in rs if r["event"] == "generation_start"}
    ends = [(r["island"], r["generation"]) for r in rs if r["event"] == "generation_end"]
    migrated: dict[tuple[int, int], list[dict]] = defaultdict(list)
    failed_mutations: dict[tuple[int, int], list[dict]] = defaultdict(list)
    for r in rs:
        if r["event"] == "migrated":
            migrated[(r["island"], r["generation"])].append(r)
        elif r["event"] == "mutation_failed":
            failed_mutations[(r["island"], r["generation"])].append(r)
    # Replay in journal order: finished generations hand over their candidates, migrants
    # arrive by id. (Archives are sets with a stable order, so ranks come out the same.)
    for r in rs:
        if r["event"] == "generation_end":
            island, gen = r["island"], r["generation"]
            members = [c for c in evaluated.values() if c.island == island and c.generation == gen]
            await s.islands[island].add.remote(members)
        elif r["event"] == "migrated" and r["candidate_id"] in s.candidates:
            await s.islands[r["dest_island"]].add.remote([s.candidates[r["candidate_id"]]])
    for island in range(cfg.islands.count):
        s.started[island] = max([g for (i, g) in starts if i == island], default=0)
        s.finished[island] = sum(1 for (i, _) in ends if i == island)
        if cfg.islands.count > 1 and cfg.islands.migrants > 0:
            for k in range(cfg.islands.interval, s.finished[island] + 1, cfg.islands.interval):
                if (island, k) not in migrated:
                    s.migrations_due.append((island, k))
    for (island, gen), start in sorted(starts.items()):
        if (island, gen) in ends:
            continue
        base = s.candidates[start["base_id"]]
        ids = start["context_ids"] or []
        notes = start.get("context_notes") or []
        pairs = [
            (s.candidates[i], notes[k] if k < len(notes) else None)
            for k, i in enumerate(ids)
            if i in s.candidates
        ]
        mine = sorted(
            (c for c in created.values() if c.island == island and c.generation == gen),
            key=lambda c: c.step,
        )
        no_code = failed_mutations.get((island, gen), [])
        last = max([c.step for c in mine] + [r["step"] for r in no_code], default=0)
        lin = Lineage(
            island,
            gen,
            base,
            [c for c, _ in pairs],
            next_step=last + 1,
            context_notes=[n or "" for _, n in pairs],
        )
        steps: list[tuple[int, int, Any]] = [(c.step, 1, c) for c in mine]
        steps += [(r["step"], 0, r) for r in no_code]
        for _, kind, item in sorted(steps, key=lambda x: (x[0], x[1])):
            if kind == 0:  # a step whose mutation gave no code
                lost = Candidate(
                    id=f"i{island}-g{gen}-s{item['step']}",
                    code="",
                    step=item["step"],
                    idea=item["idea"],
                )
                why = Verdict("mutation_failed", lost, item["error"])
                lin.history.append(failed_step(why, lin, item["step"]))
                continue
            c = item
            verdict = terminal.get(c.id)
            if verdict == "evaluated":
                lin.history.append(evaluated[c.id])
                lin.evaluated.append(evaluated[c.id])
            elif verdict == "duplicate" and c.duplicate_of in s.candidates:
                lin.history.append(copy_scores(c, s.candidates[c.duplicate_of]))
            elif verdict is None:
                lin.pending.append(c)
            else:
                why = Verdict(verdict, c, state["errors"].get(c.id))
                lin.history.append(failed_step(why, lin, c.step))
        s.resumed.append(lin)
    # Added to what this session's initial evaluations counted (the same rules as live).
    s.evaluated += len(evaluated)
    s.failed += sum(1 for v in terminal.values() if v == "evaluation_failed")
    s.duplicates += sum(1 for v in terminal.values() if v == "duplicate")
    s.dropped += sum(
        1 for v in terminal.values() if v in ("invalid", "rejected", "screened_out")
    ) + sum(len(v) for v in failed_mutations.values())


def candidate_from_row(r: dict) -> Candidate:
    return Candidate(
        id=r["candidate_id"],
        code=r["code"],
        island=r["island"] if r["island"] is not None else 0,
        generation=r["generation"] or 0,
        step=r["step"] or 0,
        parent_id=r["parent_id"],
        base_id=r["base_id"],
        mutator=r["mutator"] or "library",
        name=r["optimizer"] if r["mutator"] in ("library", "reference") else None,
        idea=r["idea"],
        thought=r["thought"],
        code_hash=r["code_hash"],
        fingerprint=r["fingerprint"],
        literal_count=r["literal_count"] or 0,
        new_literals=r["new_literals"] or 0,
    )
