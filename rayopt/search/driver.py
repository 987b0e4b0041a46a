"""The discovery driver: meta-seeds x islands x generations on Ray, journalled to Parquet.

One asyncio loop in the driver process runs every lineage (a generation of N refinement
steps) of every island of every meta-seed. Lineages share one pool of mutator actors
and one pool of evaluator actors; a lineage waits only on its own work, so evaluators
never wait on an LLM while any lineage has something to evaluate.

A candidate's path (paper §5.3, plus the cascade):
    mutate -> check (validation, dry run, literal audit, hash, fingerprint)
      -> duplicate? reuse the earlier scores -> literal policy
      -> screen: a short single-env run (cascade) -> full: every env x seeds
Every step is a journal row written when it completes; resuming replays the journal
into the archives and re-runs only what has no row yet (docs/journal.md).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import ray

from rayopt.config import DiscoveryConfig, dump, load_discovery
from rayopt.optim import SYMBOLIC, OptimiserSpec, resolve
from rayopt.results.journal import JournalWriter, compact, journal_dir, read
from rayopt.search.archive import Archive, Candidate
from rayopt.search.evaluator import (
    EvalOutcome,
    EvalTask,
    EvaluatorActor,
    EvaluatorPool,
    actor_env,
    outcome_rows,
)
from rayopt.search.island import IslandActor, neighbours, selection_rng
from rayopt.search.mutators.actor import Checked, MutatorActor, MutatorPool
from rayopt.search.mutators.base import MutationRequest, MutationResult

log = logging.getLogger("rayopt.discover")

CONFIG_FILE = "config.yaml"


@dataclasses.dataclass
class Lineage:
    """An unfinished generation: where to pick up (fresh, or from the journal)."""

    island: int
    generation: int
    base: Candidate
    context: list[Candidate]
    history: list[Candidate] = dataclasses.field(default_factory=list)
    evaluated: list[Candidate] = dataclasses.field(default_factory=list)
    next_step: int = 1
    pending: list[Candidate] = dataclasses.field(default_factory=list)  # created, not finished


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
    evaluated: int = 0
    failed: int = 0
    screened: set[str] = dataclasses.field(default_factory=set)  # passed the cascade
    failed_envs: dict[str, str] = dataclasses.field(default_factory=dict)  # from the journal
    resumed: list[Lineage] = dataclasses.field(default_factory=list)
    migrations_due: list[tuple[int, int]] = dataclasses.field(default_factory=list)


class Discovery:
    """Run (or resume) a discovery in ``run_dir`` with ``config``."""

    def __init__(
        self,
        config: DiscoveryConfig,
        run_dir: str | Path,
        resume: bool = False,
        evaluator_pool: EvaluatorPool | None = None,
        mutator_pool: MutatorPool | None = None,
    ):
        self.config = config
        self.run_dir = Path(run_dir)
        self.resume = resume
        self.journal = JournalWriter(self.run_dir)
        self.evaluators = evaluator_pool
        self.mutators = mutator_pool
        self.searches: list[Search] = []
        self.random_floor: dict[str, float] = {}
        self.cost_usd = 0.0
        self._budget = (
            (config.mutator.llm or {}).get("budget_usd") if config.mutator.kind == "llm" else None
        )
        self._t0 = time.monotonic()
        self._ranks: dict[int, list[float]] = {}
        self._owned: list[Any] = []  # actors this discovery started (and stops)
        self._fleet: Evaluators | None = None  # evaluators it started (and their placement)

    # ------------------------------------------------------------ set-up
    @classmethod
    def create(
        cls, config: DiscoveryConfig, run_dir: str | Path | None = None, **pools: Any
    ) -> Discovery:
        if run_dir is None:  # OUT_DIR/NAME, or NAME-1, NAME-2 ... if taken
            base = Path(config.out_dir) / config.name
            run_dir = next(
                p
                for p in (base, *(base.with_name(f"{base.name}-{i}") for i in range(1, 10_000)))
                if not _holds_run(p)
            )
        run_dir = Path(run_dir)
        if _holds_run(run_dir):
            raise FileExistsError(
                f"{run_dir} already holds a run: resume it with --resume {run_dir}"
            )
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / CONFIG_FILE).write_text(dump(config))
        return cls(config, run_dir, **pools)

    @classmethod
    def load(
        cls, run_dir: str | Path, overrides: list[str] | None = None, **pools: Any
    ) -> Discovery:
        """Resume the run in ``run_dir`` with its own config; ``overrides`` (``key=value``)
        may only change where things are (``open_weights`` of a moved checkpoint), not
        what the run does: they are not written to its config file."""
        run_dir = Path(run_dir)
        if not (run_dir / CONFIG_FILE).is_file():
            raise FileNotFoundError(f"{run_dir} has no {CONFIG_FILE}: not a rayopt run directory")
        config = load_discovery(run_dir / CONFIG_FILE, overrides)
        return cls(config, run_dir, resume=True, **pools)

    def _start_actors(self) -> None:
        """Evaluator and mutator actors, unless pools were handed in (tests, benchmarks)."""
        cfg = self.config
        if self.evaluators is None:
            self._fleet = start_evaluators(cfg)
            self.evaluators = EvaluatorPool(
                list(self._fleet), max_attempts=cfg.search.max_eval_attempts
            )
        if self.mutators is None:
            llm = dict(cfg.mutator.llm)
            actors = [
                MutatorActor.options(
                    max_concurrency=cfg.mutator.proposals_per_actor, **control_options()
                ).remote(cfg.mutator.kind, llm)
                for _ in range(cfg.mutator.actors)
            ]
            self._owned += actors
            self.mutators = MutatorPool(actors)

    def _stop_actors(self) -> None:
        for actor in [*self._owned, *(isl for s in self.searches for isl in s.islands)]:
            ray.kill(actor, no_restart=True)
        self._owned = []
        if self._fleet is not None:
            self._fleet.stop()
            self._fleet = None

    def _run_id(self, meta_seed: int) -> str:
        return f"{self.config.name}-ms{meta_seed}"

    # ------------------------------------------------------------ the run
    async def run(self) -> dict[str, Any]:
        """Run every meta-seed's search to its end; returns a summary of the best."""
        cfg = self.config
        self._start_actors()
        assert self.evaluators is not None
        self.evaluators.reset_clock()
        progress = None
        try:
            history = self._read_journal() if self.resume else None
            penalty = cfg.search.rank_penalty
            for ms in cfg.meta_seeds:
                islands = [
                    IslandActor.options(**control_options()).remote(ms, i, cfg.envs, penalty)
                    for i in range(cfg.islands.count)
                ]
                n = cfg.islands.count
                self.searches.append(Search(ms, self._run_id(ms), islands, [0] * n, [0] * n))
            await asyncio.gather(*(self._initialise(s, history) for s in self.searches))
            progress = asyncio.create_task(self._progress_loop())
            await asyncio.gather(  # references feed no archive: the search need not wait
                *(self._search(s) for s in self.searches),
                *(self._references(s, history) for s in self.searches),
            )
            summary = await self.summary()
            self._print_progress(final=True)
            compact(self.run_dir)  # one file instead of thousands: fast to read and resume
            return summary
        finally:
            if progress is not None:
                progress.cancel()
            self._stop_actors()

    async def _search(self, s: Search) -> None:
        """Run every island's lanes; a lane runs one generation after another, starting
        with an unfinished one from the journal when resuming."""
        for island, done in s.migrations_due:
            await self._migrate(s, island, done)
        lanes = self._lineages_per_island()
        tasks = []
        for island in range(self.config.islands.count):
            resumed = [lin for lin in s.resumed if lin.island == island]
            for k in range(max(lanes, len(resumed))):
                tasks.append(self._island_lane(s, island, resumed[k] if k < len(resumed) else None))
        await asyncio.gather(*tasks)

    def _lineages_per_island(self) -> int:
        """``search.lineages_per_island``, or (0) enough lineages to keep every evaluator
        slot busy plus the configured run-ahead, spread over islands and meta-seeds."""
        cfg = self.config
        if cfg.search.lineages_per_island > 0:
            return cfg.search.lineages_per_island
        slots = self.evaluators.size if self.evaluators else 1
        want = slots * (1 + cfg.evaluator.run_ahead) / max(len(cfg.envs), 1)
        return max(1, math.ceil(want / (cfg.islands.count * len(cfg.meta_seeds))))

    async def _island_lane(self, s: Search, island: int, first: Lineage | None) -> None:
        if first is not None:
            await self._continue(s, first)
        while s.started[island] < self.config.search.generations and not self._over_budget():
            s.started[island] += 1
            await self._generation(s, island, s.started[island])

    # ------------------------------------------------------------ initial archive
    async def _initialise(self, s: Search, history: dict[str, Any] | None) -> None:
        """Evaluate the initial optimisers (App. B); on resume, take what the journal has
        (a verdict is final: ``invalid`` or ``evaluation_failed`` stays so), finish the
        rest and rebuild the archives."""
        cfg = self.config
        state = (history or {}).get(s.run_id)
        if state:
            self._restore_flags(s, state)
        created = state["created"] if state else {}
        done = state["evaluated"] if state else {}
        terminal = state["terminal"] if state else {}
        ready: list[Candidate] = []
        todo: list[Candidate] = []
        for name in cfg.search.initial:
            cid = f"init-{name}"
            if cid in done:
                ready.append(done[cid])
            elif cid not in terminal:
                todo.append(
                    created.get(cid)
                    or Candidate(id=cid, code=SYMBOLIC[name], name=name, mutator="library")
                )
        results = await asyncio.gather(
            *(self._assess(s, c, None, 0, created=c.id not in created) for c in todo)
        )
        ready += [c for c in results if c is not None]
        for c in ready:
            self._index(s, c)
        await asyncio.gather(*(isl.add.remote(ready) for isl in s.islands))
        if state:
            await self._restore(s, state)

    async def _references(self, s: Search, history: dict[str, Any] | None) -> None:
        """Evaluate the reference optimisers, alongside the search."""
        state = (history or {}).get(s.run_id)
        names = self.config.search.references
        await asyncio.gather(*(self._reference(s, name, state) for name in names))

    async def _reference(self, s: Search, name: str, state: dict[str, Any] | None) -> None:
        """Evaluate a reference optimiser (Adam, OPEN) like a candidate, so analysis can
        say where it would rank; it never joins an archive."""
        cid = f"ref-{name}"
        if state and cid in state["terminal"]:  # evaluated, or failed for good
            return
        spec = resolve(name, open_weights=self.config.open_weights)
        c = (state or {}).get("created", {}).get(cid) or Candidate(
            id=cid, code=spec.code or "", name=spec.name, mutator="reference"
        )
        where = dict(island=None, generation=0, step=0, **c.lineage_row())
        if not (state and cid in state["created"]):
            self._write(s, [dict(event="created", **where)])
        await self._evaluate_all(s, c, spec, where)

    # ------------------------------------------------------------ one generation
    async def _generation(self, s: Search, island: int, generation: int) -> None:
        cfg = self.config
        base, context = await s.islands[island].select.remote(
            generation, cfg.search.top_k, cfg.search.exploit_p
        )
        self._write(
            s,
            [
                dict(
                    event="generation_start",
                    island=island,
                    generation=generation,
                    base_id=base.id,
                    ref_candidate_id=base.id,
                    context_ids=[c.id for c in context],
                )
            ],
        )
        await self._continue(s, Lineage(island, generation, base, context))

    async def _continue(self, s: Search, lin: Lineage) -> None:
        """Run (the rest of) a generation, then hand its candidates to the island."""
        cfg = self.config
        current = lin.history[-1] if lin.history else lin.base
        steps = [(c.step, c) for c in lin.pending]  # created before a crash: no new mutation
        steps += [(step, None) for step in range(lin.next_step, cfg.search.refinements + 1)]
        for step, pending in steps:
            if pending is not None:
                cand = await self._assess(s, pending, lin.island, lin.generation, created=False)
            elif self._over_budget():
                break
            else:
                cand = await self._refine(s, lin, step, current)
            if cand is not None:
                lin.history.append(cand)
                current = cand
                if cand.duplicate_of is None:
                    lin.evaluated.append(cand)
        await s.islands[lin.island].add.remote(lin.evaluated)
        self._write(
            s,
            [
                dict(
                    event="generation_end",
                    island=lin.island,
                    generation=lin.generation,
                    base_id=lin.base.id,
                    status=f"{len(lin.evaluated)} evaluated",
                )
            ],
        )
        s.finished[lin.island] += 1
        done = s.finished[lin.island]
        if done % cfg.islands.interval == 0:
            await self._migrate(s, lin.island, done)

    async def _refine(
        self, s: Search, lin: Lineage, step: int, current: Candidate
    ) -> Candidate | None:
        """One refinement step: mutate ``current`` and assess the result."""
        request = MutationRequest(
            current=current.scored(),
            context=tuple(c.scored() for c in lin.context),
            history=tuple(c.scored() for c in lin.history),
            seed=s.meta_seed,
            run_id=s.run_id,
            island=lin.island,
            generation=lin.generation,
            step=step,
        )
        assert self.mutators is not None
        try:
            checked: Checked = await self.mutators.propose(request)
        except Exception as err:  # noqa: BLE001 - a crashed mutator never stops a run
            checked = Checked(
                MutationResult(
                    ok=False,
                    mutator=self.config.mutator.kind,
                    error=f"mutator crashed: {type(err).__name__}: {err}"[:500],
                )
            )
        res = checked.result
        where = dict(island=lin.island, generation=lin.generation, step=step)
        calls = [
            dict(
                event="llm_call",
                **where,
                role=c.role,
                provider=c.provider,
                model=c.model,
                attempt=c.attempt,
                status="ok" if c.ok else "error",
                latency_s=c.latency_s,
                tokens_in=c.tokens_in,
                tokens_out=c.tokens_out,
                cost_usd=c.cost_usd,
                error=c.error,
                mutator=res.mutator,
                parent_id=current.id,
            )
            for c in res.calls
        ]
        self.cost_usd += res.cost_usd
        if not res.ok:
            self._write(
                s,
                [
                    *calls,
                    dict(
                        event="mutation_failed",
                        **where,
                        mutator=res.mutator,
                        parent_id=current.id,
                        base_id=lin.base.id,
                        error=res.error,
                    ),
                ],
            )
            return None
        cand = Candidate(
            id=f"i{lin.island}-g{lin.generation}-s{step}",
            code=res.code or "",
            island=lin.island,
            generation=lin.generation,
            step=step,
            parent_id=current.id,
            base_id=lin.base.id,
            mutator=res.mutator,
            idea=res.idea,
            thought=res.thought,
            code_hash=checked.code_hash,
            fingerprint=checked.fingerprint,
            literal_count=checked.literal_count,
            new_literals=checked.new_literals,
        )
        return await self._assess(
            s, cand, lin.island, lin.generation, created=True, checked=checked, preface=calls
        )

    # ------------------------------------------------------------ the cascade
    async def _assess(
        self,
        s: Search,
        c: Candidate,
        island: int | None,
        generation: int,
        created: bool,
        checked: Checked | None = None,
        preface: list[dict] | None = None,
    ) -> Candidate | None:
        """Check, deduplicate, screen and fully evaluate ``c``; None if it fell out.

        Each decision is written in one part file together with the rows it rests on
        (the model calls with ``created``, the screening rows with their verdict), so a
        crash leaves either both or neither.
        """
        cfg = self.config
        if checked is None:
            checked = await asyncio.to_thread(_check_code, c)
            c.code_hash, c.fingerprint = checked.code_hash, checked.fingerprint
            c.literal_count = checked.literal_count if checked.ok else c.literal_count
        where = dict(island=island, generation=generation, step=c.step, **c.lineage_row())
        pending = [*(preface or []), *([dict(event="created", **where)] if created else [])]
        s.candidates.setdefault(c.id, c)
        if not checked.ok:
            self._write(
                s,
                [
                    *pending,
                    dict(
                        event="invalid",
                        **where,
                        error_kind=checked.error_kind,
                        error_line=checked.error_line,
                        error=checked.error,
                    ),
                ],
            )
            return None
        if c.mutator not in ("library", "reference"):
            if cfg.cascade.dedup:
                orig = s.by_hash.get(c.code_hash or "") or s.by_fingerprint.get(c.fingerprint or "")
                if orig is not None and orig.id != c.id:
                    same = "same hash" if orig.code_hash == c.code_hash else "same fingerprint"
                    self._write(
                        s,
                        [
                            *pending,
                            dict(event="duplicate", **where, ref_candidate_id=orig.id, status=same),
                        ],
                    )
                    return _copy_scores(c, orig)
            if (
                cfg.search.literal_policy == "reject"
                and c.new_literals > cfg.search.max_new_literals
            ):
                limit = cfg.search.max_new_literals
                why = f"introduces {c.new_literals} tunable literals (max {limit})"
                self._write(s, [*pending, dict(event="rejected", **where, error=why)])
                return None
        self._write(s, pending)
        spec = OptimiserSpec(name=c.name or c.id, kind="symbolic", code=c.code)
        if (
            cfg.cascade.enabled
            and c.mutator not in ("library", "reference")
            and c.id not in s.screened
            and not await self._screen(s, c, spec, where)
        ):
            return None
        return await self._evaluate_all(s, c, spec, where)

    async def _screen(self, s: Search, c: Candidate, spec: OptimiserSpec, where: dict) -> bool:
        """The cascade's short run; writes its rows and its verdict together."""
        cfg = self.config
        env = cfg.cascade.env
        ppo = cfg.ppo_config(env).replace(total_timesteps=cfg.cascade.total_timesteps)
        task = EvalTask(
            f"{c.id}/screen/{env}",
            spec,
            ppo,
            tuple(range(cfg.cascade.seeds)),
            fast_compile=True,
            keep=False,  # only mutated candidates are screened; each once
        )
        out = await self.evaluators.run(task)
        why = ""
        if not out.ok:
            why = f"screen run failed: {out.error}"
        elif not np.all(out.finite):
            why = "non-finite parameters in the screening run"
        else:
            floor = await self._random_floor(env)
            ret = float(np.nanmean(out.final_return))
            if math.isfinite(floor) and not ret >= cfg.cascade.random_margin * floor:
                why = (
                    f"collapsed: return {ret:.3g} < {cfg.cascade.random_margin} x "
                    f"random policy {floor:.3g}"
                )
        verdict = (
            dict(event="screened_out", **where, error=why)
            if why
            else dict(event="screened", **where)
        )
        self._write(s, [*outcome_rows(out, where, stage="screen"), verdict])
        s.screened.add(c.id)
        return not why

    async def _evaluate_all(
        self, s: Search, c: Candidate, spec: OptimiserSpec, where: dict
    ) -> Candidate | None:
        """Every environment not yet journalled for ``c``, then the verdict. An env that
        failed before a crash (resume) fixes the verdict: nothing is trained again."""
        cfg = self.config
        failed_before = c.id in s.failed_envs
        outcomes = await asyncio.gather(
            *(
                self._evaluate(s, c, spec, env, where)
                for env in cfg.envs
                if env not in c.final_return and not failed_before
            )
        )
        failed = [o for o in outcomes if not o.ok]
        if failed or failed_before:
            s.failed += 1
            f = failed[0] if failed else None
            self._write(
                s,
                [
                    dict(
                        event="evaluation_failed",
                        **where,
                        env=f.task.config.env if f else s.failed_envs[c.id],
                        attempt=f.attempts if f else None,
                        error_kind=f.error_kind if f else "evaluation",
                        error=f.error if f else "failed before the crash (see its rows)",
                    )
                ],
            )
            return None
        if _joins_archive(c):
            s.evaluated += 1
            self._index(s, c)
        mean = float(np.nanmean([c.final_return[e] for e in cfg.envs]))
        self._write(s, [dict(event="evaluated", **where, status="ok", final_return=mean)])
        return c

    async def _random_floor(self, env: str) -> float:
        if env not in self.random_floor:
            actor = self.evaluators.slots[0].actor
            try:
                self.random_floor[env] = await actor.random_return.remote(env)
            except Exception:  # noqa: BLE001 - a simulated evaluator has none; no floor then
                self.random_floor[env] = math.nan
        return self.random_floor[env]

    async def _evaluate(
        self, s: Search, c: Candidate, spec: OptimiserSpec, env: str, where: dict
    ) -> EvalOutcome:
        cfg = self.config
        task = EvalTask(
            f"{c.id}/full/{env}",
            spec,
            cfg.ppo_config(env),
            tuple(range(cfg.seeds)),
            fast_compile=cfg.evaluator.fast_compile,
            keep=c.mutator in ("library", "reference"),  # they recur (meta-seeds); not the rest
        )
        out = await self.evaluators.run(task)
        self._write(s, outcome_rows(out, where, stage="full"))
        if out.ok:
            c.final_return[env] = float(np.nanmean(out.final_return))
            c.auc[env] = float(np.nanmean(out.auc))
            c.curves[env] = np.nanmean(out.return_curve, axis=0).astype(float).tolist()
        return out

    def _index(self, s: Search, c: Candidate) -> None:
        s.candidates[c.id] = c
        if c.code_hash:
            s.by_hash.setdefault(c.code_hash, c)
        if c.fingerprint:
            s.by_fingerprint.setdefault(c.fingerprint, c)

    # ------------------------------------------------------------ migration
    async def _migrate(self, s: Search, island: int, done: int) -> None:
        cfg = self.config
        dests = neighbours(
            cfg.islands.topology,
            island,
            cfg.islands.count,
            selection_rng(s.meta_seed, island, 10_000 + done),
        )
        if not dests or cfg.islands.migrants == 0:
            return
        best: list[Candidate] = await s.islands[island].best.remote(cfg.islands.migrants)
        for d in dests:
            await s.islands[d].add.remote(best)
        self._write(
            s,
            [
                dict(
                    event="migrated",
                    island=island,
                    generation=done,
                    dest_island=d,
                    candidate_id=c.id,
                    ref_candidate_id=c.id,
                    parent_id=c.parent_id,
                )
                for d in dests
                for c in best
            ],
        )

    # ------------------------------------------------------------ journal
    def _write(self, s: Search, rows: list[dict]) -> None:
        if rows:
            self.journal.write(
                [
                    {"row_type": "event", **r, "run_id": s.run_id, "meta_seed": s.meta_seed}
                    if "row_type" not in r
                    else {**r, "run_id": s.run_id, "meta_seed": s.meta_seed}
                    for r in rows
                ]
            )

    def _over_budget(self) -> bool:
        return self._budget is not None and self.cost_usd >= float(self._budget)

    # ------------------------------------------------------------ resume
    def _read_journal(self) -> dict[str, Any]:
        """Per run id: every candidate (with the scores its rows hold), its last verdict,
        and the rows themselves (for generations and migrations)."""
        rows = read(self.run_dir).to_pylist()  # files in write order; rows in file order
        self.cost_usd = sum(r["cost_usd"] or 0.0 for r in rows if r["event"] == "llm_call")
        by_run: dict[str, list[dict]] = defaultdict(list)
        for r in rows:
            by_run[r["run_id"]].append(r)
        out: dict[str, Any] = {}
        verdicts = (
            "invalid",
            "duplicate",
            "rejected",
            "screened_out",
            "evaluation_failed",
            "evaluated",
        )
        for run_id, rs in by_run.items():
            created: dict[str, Candidate] = {}
            full: dict[str, dict[str, dict[int, dict]]] = defaultdict(lambda: defaultdict(dict))
            terminal: dict[str, str] = {}
            screened: set[str] = set()
            failed_envs: dict[str, str] = {}
            for r in rs:
                cid = r["candidate_id"]
                if r["event"] == "created":
                    created[cid] = _candidate_from_row(r)
                elif r["event"] == "screened":
                    screened.add(cid)
                elif r["event"] in verdicts:
                    terminal[cid] = r["event"]
                    if r["event"] == "duplicate" and cid in created:
                        created[cid].duplicate_of = r["ref_candidate_id"]
                elif r["row_type"] == "evaluation" and r["stage"] == "full":
                    if r["status"] == "failed":
                        failed_envs[cid] = r["env"]
                    else:
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
                evaluated=evaluated,
                screened=screened,
                failed_envs=failed_envs,
            )
        return out

    def _restore_flags(self, s: Search, state: dict[str, Any]) -> None:
        """Cascade verdicts that outlive a crash: passed screens and failed envs."""
        s.screened |= state["screened"]
        s.failed_envs.update(state["failed_envs"])

    async def _restore(self, s: Search, state: dict[str, Any]) -> None:
        """Rebuild archives, counters, unfinished generations and due migrations."""
        cfg = self.config
        rs, created, terminal = state["rows"], state["created"], state["terminal"]
        evaluated = {k: c for k, c in state["evaluated"].items() if _joins_archive(c)}
        for c in evaluated.values():
            self._index(s, c)
        starts = {(r["island"], r["generation"]): r for r in rs if r["event"] == "generation_start"}
        ends = [(r["island"], r["generation"]) for r in rs if r["event"] == "generation_end"]
        migrated: dict[tuple[int, int], list[dict]] = defaultdict(list)
        for r in rs:
            if r["event"] == "migrated":
                migrated[(r["island"], r["generation"])].append(r)
        # Replay in journal order: finished generations hand over their candidates, migrants
        # arrive by id. (Archives are sets with a stable order, so ranks come out the same.)
        for r in rs:
            if r["event"] == "generation_end":
                island, gen = r["island"], r["generation"]
                members = [
                    c for c in evaluated.values() if c.island == island and c.generation == gen
                ]
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
            context = [s.candidates[i] for i in (start["context_ids"] or []) if i in s.candidates]
            mine = sorted(
                (c for c in created.values() if c.island == island and c.generation == gen),
                key=lambda c: c.step,
            )
            lin = Lineage(
                island, gen, base, context, next_step=max([c.step for c in mine], default=0) + 1
            )
            for c in mine:
                verdict = terminal.get(c.id)
                if verdict == "evaluated":
                    lin.history.append(evaluated[c.id])
                    lin.evaluated.append(evaluated[c.id])
                elif verdict == "duplicate" and c.duplicate_of in s.candidates:
                    lin.history.append(_copy_scores(c, s.candidates[c.duplicate_of]))
                elif verdict is None:
                    lin.pending.append(c)
            s.resumed.append(lin)
        # Added to what this session's initial evaluations counted (the same rules as live).
        s.evaluated += len(evaluated)
        s.failed += sum(1 for v in terminal.values() if v == "evaluation_failed")

    # ------------------------------------------------------------ progress
    async def _progress_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.progress_s)
            await self._refresh_ranks()
            self._print_progress()

    async def _refresh_ranks(self) -> None:
        self._ranks = {}
        for s in self.searches:
            ranked = await asyncio.gather(*(isl.ranked.remote() for isl in s.islands))
            self._ranks[s.meta_seed] = [r[0][1] if r else math.nan for r in ranked]

    def _print_progress(self, final: bool = False) -> None:
        util = self.evaluators.utilisation() if self.evaluators else 0.0
        parts = []
        for s in self.searches:
            ranks = self._ranks.get(s.meta_seed, [])
            best = " ".join(f"{r:.2f}" for r in ranks)
            parts.append(
                f"ms{s.meta_seed}: {s.evaluated} evaluated, gens {sum(s.finished)}/"
                f"{self.config.search.generations * self.config.islands.count}, "
                f"best avg rank/island [{best}]"
            )
        cost = f" | llm ${self.cost_usd:.2f}" if self.config.mutator.kind == "llm" else ""
        print(
            f"[{time.monotonic() - self._t0:7.0f}s] {'done ' if final else ''}"
            + " | ".join(parts)
            + f" | evaluator utilisation {util:.0%}{cost}",
            flush=True,
        )

    async def summary(self) -> dict[str, Any]:
        """The best candidates of each meta-seed over the union of its islands."""
        await self._refresh_ranks()
        out: dict[str, Any] = {
            "run_dir": str(self.run_dir),
            "evaluator_utilisation": self.evaluators.utilisation(),
            "llm_cost_usd": self.cost_usd,
            "meta_seeds": {},
        }
        for s in self.searches:
            pool = Archive(self.config.envs)
            pool.add(
                c for c in s.candidates.values() if set(self.config.envs) <= set(c.final_return)
            )
            best = pool.ranked()[:3]
            out["meta_seeds"][s.meta_seed] = dict(
                evaluated=s.evaluated,
                failed=s.failed,
                best=[
                    dict(id=c.id, avg_rank=r, final_return=c.final_return, idea=c.idea)
                    for c, r in best
                ],
            )
        return out


def _joins_archive(c: Candidate) -> bool:
    """Whether ``c`` joins an archive (and counts as evaluated): all but references."""
    return c.mutator != "reference"


def _check_code(c: Candidate) -> Checked:
    from rayopt.search.mutators.actor import check_proposal
    from rayopt.search.mutators.base import MutationResult

    parent = SYMBOLIC.get(c.name or "", c.code)
    return check_proposal(MutationResult(ok=True, mutator=c.mutator, code=c.code), parent)


def _holds_run(path: Path) -> bool:
    return (path / CONFIG_FILE).exists() or any(journal_dir(path).glob("*.parquet"))


def _copy_scores(dup: Candidate, orig: Candidate) -> Candidate:
    """A duplicate carries the earlier candidate's scores (and is not re-evaluated)."""
    return dataclasses.replace(
        dup,
        duplicate_of=orig.id,
        final_return=dict(orig.final_return),
        auc=dict(orig.auc),
        curves=dict(orig.curves),
    )


def _candidate_from_row(r: dict) -> Candidate:
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


# ------------------------------------------------------------------ the cluster
def init_ray(address: str | None) -> None:
    """Attach to a Ray cluster, or start a local one.

    ``address``: ``"auto"`` (the cluster this machine is part of: ``RAY_ADDRESS``, else the
    one ``ray start`` made here), ``"host:6379"`` (its GCS), ``"ray://host:10001"`` (Ray
    Client, from outside the cluster); None is Ray's default: ``RAY_ADDRESS`` when set (a
    Ray Job's entrypoint), else a new local instance. Prints what it attached to, since on
    a cluster the evaluator count is sized from it.
    """
    if ray.is_initialized():
        return
    ray.init(address=address, log_to_driver=True, configure_logging=False)
    nodes = [n for n in ray.nodes() if n["Alive"]]
    total = ray.cluster_resources()
    builtin = ("CPU", "GPU", "memory", "object_store_memory")
    custom = {
        k: v
        for k, v in total.items()
        if k not in builtin and not k.startswith(("node:", "accelerator_type:"))
    }
    print(
        f"ray: {len(nodes)} node(s), {total.get('CPU', 0):g} CPU, {total.get('GPU', 0):g} GPU"
        + (f", {custom}" if custom else "")
        + f"; driver on node {_driver_node()[:8]}",
        flush=True,
    )


def _driver_node() -> str:
    return ray.get_runtime_context().get_node_id()


def control_options() -> dict[str, Any]:
    """Scheduling for islands and mutators: on the driver's node.

    They need no CPU or GPU (``num_cpus=0``), so they never take an evaluator's place,
    and they hold state the run cannot lose (an island's archive has no restart): on the
    driver's node they share the fate of the driver, which a worker node's loss (a
    preempted GPU node) does not touch. Hard affinity: soft affinity was seen to spill
    zero-CPU actors to other nodes while the driver's node was starting workers.
    """
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    return {"scheduling_strategy": NodeAffinitySchedulingStrategy(_driver_node(), soft=False)}


class Evaluators(list):
    """The evaluator actors :func:`start_evaluators` made (a plain list to callers), and
    the placement group reserving their resources when one was asked for."""

    placement_group: Any = None

    def stop(self) -> None:
        """Kill the actors (no restart) and hand their reserved resources back."""
        from ray.util.placement_group import remove_placement_group

        for actor in self:
            ray.kill(actor, no_restart=True)
        if self.placement_group is not None:
            remove_placement_group(self.placement_group)
            self.placement_group = None
        self.clear()


def evaluator_demand(cfg: DiscoveryConfig) -> tuple[float, float, dict[str, float]]:
    """(GPUs, CPUs, custom resources) one evaluator asks Ray for. ``num_gpus`` 0 means a
    whole GPU on a cluster that has GPUs now (set it explicitly where GPU nodes come
    later, from an autoscaler). CPUs 0 means the CPU-only default: one evaluator per
    node with all its CPUs."""
    ev = cfg.evaluator
    total_gpus = ray.cluster_resources().get("GPU", 0)
    gpus = ev.num_gpus or (1.0 if total_gpus > 0 else 0.0)
    if gpus or ev.resources:
        return gpus, ev.num_cpus or 1.0, dict(ev.resources)
    return 0.0, ev.num_cpus, {}


def start_evaluators(cfg: DiscoveryConfig) -> Evaluators:
    """Evaluator actors for this cluster.

    - GPUs (``num_gpus``, or a GPU cluster with ``count`` 0): one per GPU, or per
      ``num_gpus`` fraction with JAX's memory fraction to match;
    - ``resources`` (e.g. ``{evaluator: 1}``): only nodes that offer them run evaluators;
      ``count`` 0 means as many as the cluster's total allows;
    - neither, on a CPU-only cluster: ``count`` evaluators spread over the nodes, or with
      ``count`` 0 one per node using its CPUs.

    Without ``placement_group`` each actor is scheduled on its own with Ray's SPREAD
    strategy; with it, one placement group (a bundle per evaluator) is reserved first.
    Either way an evaluator whose node dies is restarted by Ray (``max_restarts=-1``)
    wherever its resources are free, and the pool resubmits the lost evaluation.
    """
    from ray.util.placement_group import placement_group, remove_placement_group
    from ray.util.scheduling_strategies import (
        NodeAffinitySchedulingStrategy,
        PlacementGroupSchedulingStrategy,
    )

    ev = cfg.evaluator
    gpus, cpus, custom = evaluator_demand(cfg)
    out = Evaluators()
    if not gpus and not custom and ev.count == 0:  # CPU-only default: one per node
        for n in (n for n in ray.nodes() if n["Alive"] and n["Resources"].get("CPU", 0) > 0):
            c = cpus or n["Resources"]["CPU"]
            where = NodeAffinitySchedulingStrategy(n["NodeID"], soft=True)
            out.append(
                EvaluatorActor.options(
                    num_cpus=c, runtime_env={"env_vars": actor_env(0, c)}, scheduling_strategy=where
                ).remote()
            )
        return out

    total = ray.cluster_resources()
    per = {"GPU": gpus, **custom} if gpus else dict(custom)
    count = ev.count or min((int(total.get(k, 0) // v) for k, v in per.items()), default=0)
    if count == 0:
        raise RuntimeError(
            f"no evaluator fits: each needs {per}, the cluster has "
            f"{ {k: total.get(k, 0) for k in per} }. Start nodes that offer these resources "
            "(ray start --num-gpus / --resources), or set evaluator.count (an autoscaling "
            "cluster then starts nodes for them)."
        )
    if not cpus:  # CPU-only with a count: split the smallest node's CPUs between them
        nodes = [n for n in ray.nodes() if n["Alive"] and n["Resources"].get("CPU", 0) > 0]
        cpus = max(1, int(min(n["Resources"]["CPU"] for n in nodes) // max(1, count // len(nodes))))
    bundle = {k: v for k, v in {"CPU": cpus, **per}.items() if v}
    strategies: list[Any] = ["SPREAD"] * count
    if ev.placement_group:
        group = placement_group([dict(bundle) for _ in range(count)], strategy=ev.placement_group)
        try:
            ray.get(group.ready(), timeout=ev.placement_timeout_s)
        except ray.exceptions.GetTimeoutError:
            remove_placement_group(group)
            raise RuntimeError(
                f"placement group of {count} x {bundle} ({ev.placement_group}) not placed "
                f"within {ev.placement_timeout_s:g} s; the cluster has "
                f"{ {k: total.get(k, 0) for k in bundle} } over "
                f"{sum(1 for n in ray.nodes() if n['Alive'])} node(s)"
            ) from None
        out.placement_group = group
        strategies = [
            PlacementGroupSchedulingStrategy(group, placement_group_bundle_index=i)
            for i in range(count)
        ]
    for strategy in strategies:
        out.append(
            EvaluatorActor.options(
                num_cpus=cpus,
                num_gpus=gpus,
                resources=custom,
                scheduling_strategy=strategy,
                runtime_env={"env_vars": actor_env(gpus, 0 if gpus else cpus)},
            ).remote()
        )
    return out
