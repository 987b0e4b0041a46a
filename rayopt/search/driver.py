"""The discovery driver: meta-seeds x islands x generations on Ray, journalled to Parquet.

The driver is the conductor. One asyncio loop in this process runs every lineage (a
generation of N refinement steps, :mod:`rayopt.search.lineage`) of every island of
every meta-seed; lineages share one pool of mutator actors and one pool of evaluator
actors, and a lineage waits only on its own work, so evaluators never wait on an LLM
while any lineage has something to evaluate. What a candidate goes through before it
has scores is the cascade (:mod:`rayopt.search.cascade`); when the search ends, the
best are confirmed on held-out seeds (:mod:`rayopt.search.confirm`).

Every step is a journal row written when it completes; resuming replays the journal
(:mod:`rayopt.search.replay`) and re-runs only what has no row yet (docs/journal.md).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from pathlib import Path
from typing import Any

import ray

from rayopt.analysis import heldout
from rayopt.config import DiscoveryConfig, dump, load_discovery
from rayopt.optim import resolve
from rayopt.results.journal import JournalWriter, compact, journal_dir
from rayopt.search import summary as console
from rayopt.search.archive import Candidate
from rayopt.search.cascade import Cascade
from rayopt.search.confirm import confirm
from rayopt.search.evaluator import EvaluatorPool
from rayopt.search.fleet import Evaluators, control_options, pool_for, start_evaluators
from rayopt.search.island import IslandActor
from rayopt.search.lineage import LineageRunner
from rayopt.search.mutators.actor import MutatorActor, MutatorPool
from rayopt.search.replay import read_journal, restore, restore_flags
from rayopt.search.state import RunJournal, Search, Spend

log = logging.getLogger("rayopt.discover")

CONFIG_FILE = "config.yaml"


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
        self.journal = RunJournal(JournalWriter(self.run_dir))
        self.evaluators = evaluator_pool
        self.mutators = mutator_pool
        self.searches: list[Search] = []
        self.spend = Spend(
            limit_usd=(config.mutator.llm or {}).get("budget_usd")
            if config.mutator.kind == "llm"
            else None
        )
        self.cascade: Cascade | None = None
        self.lineages: LineageRunner | None = None
        self._t0 = time.monotonic()
        self.heldout_text: str | None = None  # the held-out table, once confirmation ran
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

    @staticmethod
    def holds_run(run_dir: str | Path) -> bool:
        """Whether ``run_dir`` already holds a run (its config or journal files)."""
        return _holds_run(Path(run_dir))

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
            self.evaluators = pool_for(self._fleet, cfg.evaluator, cfg.search.max_eval_attempts)
        if self.mutators is None:
            llm = dict(cfg.mutator.llm)
            from rayopt.rl.ppo import largest_kernel

            # the dry run probes small tensors; proposals are also traced at the largest
            # real kernel of the configured networks (sizes only: docs/program.md)
            shape = largest_kernel([cfg.ppo_config(e) for e in cfg.envs])
            actors = [
                MutatorActor.options(
                    max_concurrency=cfg.mutator.proposals_per_actor, **control_options()
                ).remote(cfg.mutator.kind, llm, cfg.mutator.offline_style, probe_shapes=(shape,))
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
        assert self.evaluators is not None and self.mutators is not None
        self.evaluators.reset_clock()
        self.cascade = Cascade(cfg, self.evaluators, self.journal)
        self.lineages = LineageRunner(cfg, self.mutators, self.cascade, self.journal, self.spend)
        progress = None
        try:
            history = None
            if self.resume:
                self.spend.cost_usd, history = read_journal(self.run_dir)
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
            progress.cancel()
            self._print_progress()
            out = self.summary()
            if cfg.confirm.enabled:
                out["confirmation"] = await confirm(cfg, self.run_dir, self.evaluators)
                held = heldout.load(self.run_dir)
                out["heldout"] = held.summary() if held else None
                self.heldout_text = heldout.text(held) if held else None
            out["wall_s"] = round(time.monotonic() - self._t0, 1)
            compact(self.run_dir)  # one file instead of thousands: fast to read and resume
            return out
        finally:
            if progress is not None:
                progress.cancel()
            self._stop_actors()

    async def _search(self, s: Search) -> None:
        """Run every island's lanes; a lane runs one generation after another, starting
        with an unfinished one from the journal when resuming."""
        assert self.lineages is not None
        for island, done in s.migrations_due:
            await self.lineages.migrate(s, island, done)
        lanes = self._lineages_per_island()
        tasks = []
        for island in range(self.config.islands.count):
            resumed = [lin for lin in s.resumed if lin.island == island]
            for k in range(max(lanes, len(resumed))):
                first = resumed[k] if k < len(resumed) else None
                tasks.append(self.lineages.island_lane(s, island, first))
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

    # ------------------------------------------------------------ initial archive
    async def _initialise(self, s: Search, history: dict[str, Any] | None) -> None:
        """Evaluate the initial optimisers (App. B); on resume, take what the journal has
        (a verdict is final: ``invalid`` or ``evaluation_failed`` stays so), finish the
        rest and rebuild the archives."""
        cfg = self.config
        state = (history or {}).get(s.run_id)
        if state:
            restore_flags(s, state)
        created = state["created"] if state else {}
        done = state["evaluated"] if state else {}
        terminal = state["terminal"] if state else {}
        ready: list[Candidate] = []
        todo: list[Candidate] = []
        for name in cfg.search.initial:
            spec = resolve(name)  # a library name or a .py file
            cid = f"init-{spec.name}"
            if cid in done:
                ready.append(done[cid])
            elif cid not in terminal:
                todo.append(
                    created.get(cid)
                    or Candidate(id=cid, code=spec.code or "", name=spec.name, mutator="library")
                )
        assert self.cascade is not None
        verdicts = await asyncio.gather(
            *(self.cascade.assess(s, c, None, 0, created=c.id not in created) for c in todo)
        )
        ready += [v.candidate for v in verdicts if v.event == "evaluated"]
        for c in ready:
            s.index(c)
        await asyncio.gather(*(isl.add.remote(ready) for isl in s.islands))
        if state:
            await restore(s, state, cfg)

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
            self.journal.write(s, [dict(event="created", **where)])
        assert self.cascade is not None
        await self.cascade.evaluate_all(s, c, spec, where)

    # ------------------------------------------------------------ progress
    async def _progress_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.progress_s)
            self._print_progress()

    def _print_progress(self) -> None:
        util = self.evaluators.utilisation() if self.evaluators else 0.0
        cost = self.spend.cost_usd if self.config.mutator.kind == "llm" else None
        elapsed = time.monotonic() - self._t0
        print(console.progress_line(self.config, self.searches, elapsed, util, cost), flush=True)

    def summary(self) -> dict[str, Any]:
        """In-search results per meta-seed: the best discovered, the best initial, Adam."""
        return {
            "run_dir": str(self.run_dir),
            "wall_s": round(time.monotonic() - self._t0, 1),
            "evaluator_utilisation": self.evaluators.utilisation() if self.evaluators else 0.0,
            # of the evaluators' busy time, the share spent waiting for a compile
            "compile_wait_share": (
                self.evaluators.compile_wait_share() if self.evaluators else 0.0
            ),
            "compile_ahead": self.evaluators.compile_ahead if self.evaluators else 0,
            "llm_cost_usd": self.spend.cost_usd,
            "meta_seeds": {
                s.meta_seed: console.search_summary(self.config, s) for s in self.searches
            },
        }


def _holds_run(path: Path) -> bool:
    return (path / CONFIG_FILE).exists() or any(journal_dir(path).glob("*.parquet"))
