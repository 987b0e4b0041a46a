"""One lineage: a generation's N refinement steps from its base (paper §5.3).

Each step asks a mutator for new code given the current optimiser, the generation's
base, the context optimisers and this generation's history, then sends the candidate
through the cascade. A step that produces scores (evaluated, or a duplicate sharing an
earlier candidate's) moves the lineage on; a step that fails (no code, invalid code,
rejected, screened out, an evaluation error or non-finite parameters) stays in the
history with its error, so the next step sees what was tried and why it failed.
Code that raised when PPO ran it, or that was stopped for its cost at real shapes
(``timeout``, ``too_slow``, ``memory``), goes back to the mutator once more to be
repaired (``search.repair_attempts``), as a check failure would.
"""

from __future__ import annotations

import dataclasses

from rayopt.config import DiscoveryConfig
from rayopt.search.archive import Candidate
from rayopt.search.cascade import Cascade
from rayopt.search.island import neighbours, selection_rng
from rayopt.search.mutators.actor import Checked, MutatorPool
from rayopt.search.mutators.base import MutationRequest, MutationResult
from rayopt.search.state import Lineage, RunJournal, Search, Spend, Verdict, failed_step

#: Verdict kinds whose code goes back to the coder to be fixed: it raised under PPO, or
#: it was stopped for its cost at real shapes (a deadline, the speed screen, memory).
REPAIRABLE = ("evaluation", "timeout", "too_slow", "memory")


class LineageRunner:
    """Runs generations of every island of every meta-seed on shared pools."""

    def __init__(
        self,
        config: DiscoveryConfig,
        mutators: MutatorPool,
        cascade: Cascade,
        journal: RunJournal,
        spend: Spend,
    ):
        self.config = config
        self.mutators = mutators
        self.cascade = cascade
        self.journal = journal
        self.spend = spend

    async def island_lane(self, s: Search, island: int, first: Lineage | None) -> None:
        """Generations of one island one after another (after a resumed one, if any)."""
        if first is not None:
            await self.finish(s, first)
        while s.started[island] < self.config.search.generations and not self.spend.over():
            s.started[island] += 1
            await self.generation(s, island, s.started[island])

    async def generation(self, s: Search, island: int, generation: int) -> None:
        cfg = self.config
        base, picks = await s.islands[island].select.remote(
            generation, cfg.search.top_k, cfg.search.exploit_p, cfg.search.context_top
        )
        context = [c for c, _ in picks]
        notes = [note for _, note in picks]
        self.journal.write(
            s,
            [
                dict(
                    event="generation_start",
                    island=island,
                    generation=generation,
                    base_id=base.id,
                    ref_candidate_id=base.id,
                    context_ids=[c.id for c in context],
                    context_notes=notes,
                )
            ],
        )
        await self.finish(s, Lineage(island, generation, base, context, context_notes=notes))

    async def finish(self, s: Search, lin: Lineage) -> None:
        """Run (the rest of) a generation, then hand its candidates to the island."""
        cfg = self.config
        current = next((c for c in reversed(lin.history) if c.error is None), lin.base)
        steps = [(c.step, c) for c in lin.pending]  # created before a crash: no new mutation
        steps += [(step, None) for step in range(lin.next_step, cfg.search.refinements + 1)]
        for step, pending in steps:
            if pending is not None:
                verdict = await self.cascade.assess(
                    s, pending, lin.island, lin.generation, created=False
                )
            elif self.spend.over():
                break
            else:
                *tries, verdict = await self.refine(s, lin, step, current)
                for tried in tries:  # code repaired after an evaluation error
                    self._record(lin, tried, step)
            self._record(lin, verdict, step)
            if verdict.scored:
                current = verdict.candidate
        await s.islands[lin.island].add.remote(lin.evaluated)
        self.journal.write(
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
            await self.migrate(s, lin.island, done)

    @staticmethod
    def _record(lin: Lineage, verdict: Verdict, step: int) -> None:
        if verdict.scored:
            lin.history.append(verdict.candidate)
            if verdict.event == "evaluated":
                lin.evaluated.append(verdict.candidate)
        else:
            lin.history.append(failed_step(verdict, lin, step))

    async def refine(self, s: Search, lin: Lineage, step: int, current: Candidate) -> list[Verdict]:
        """One refinement step: mutate ``current`` and assess the result; code that
        raised under PPO goes back to the mutator to be repaired. Returns each
        attempt's verdict, the last one deciding the step."""
        cfg = self.config
        request = MutationRequest(
            current=current.scored(),
            base=lin.base.scored(),
            context=tuple(
                dataclasses.replace(c.scored(), note=note)
                for c, note in zip(lin.context, lin.notes(), strict=True)
            ),
            history=tuple(c.scored() for c in lin.history),
            seed=s.meta_seed,
            run_id=s.run_id,
            island=lin.island,
            generation=lin.generation,
            step=step,
            known=frozenset(s.seen),
        )
        repairs = cfg.search.repair_attempts if cfg.mutator.kind == "llm" else 0
        verdicts = [await self._attempt(s, lin, step, current, request, suffix="")]
        for k in range(1, repairs + 1):
            last = verdicts[-1]
            if last.error_kind not in REPAIRABLE:
                break
            failed = dataclasses.replace(last.candidate, error=last.error).scored()
            request = dataclasses.replace(request, repair=failed)
            verdicts.append(await self._attempt(s, lin, step, current, request, suffix=f"r{k}"))
        return verdicts

    async def _attempt(
        self,
        s: Search,
        lin: Lineage,
        step: int,
        current: Candidate,
        request: MutationRequest,
        suffix: str,
    ) -> Verdict:
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
            for c in (*checked.lost_calls, *res.calls)
        ]
        self.spend.cost_usd += res.cost_usd + sum(c.cost_usd for c in checked.lost_calls)
        made = dict(  # what a step's candidate is, whether or not its mutation worked
            id=f"i{lin.island}-g{lin.generation}-s{step}{suffix}",
            code=res.code or "",
            island=lin.island,
            generation=lin.generation,
            step=step,
            parent_id=current.id,
            base_id=lin.base.id,
            mutator=res.mutator,
            idea=res.idea,
        )
        if not res.ok:
            s.dropped += 1
            self.journal.write(
                s,
                [
                    *calls,
                    dict(
                        event="mutation_failed",
                        **where,
                        mutator=res.mutator,
                        parent_id=current.id,
                        base_id=lin.base.id,
                        idea=res.idea,
                        error=res.error,
                    ),
                ],
            )
            return Verdict("mutation_failed", Candidate(**made), res.error, "mutation")
        cand = Candidate(
            **made,
            thought=res.thought,
            code_hash=checked.code_hash,
            fingerprint=checked.fingerprint,
            literal_count=checked.literal_count,
            new_literals=checked.new_literals,
        )
        return await self.cascade.assess(
            s, cand, lin.island, lin.generation, created=True, checked=checked, preface=calls
        )

    async def migrate(self, s: Search, island: int, done: int) -> None:
        """Copy the island's best to its neighbours (every ``islands.interval`` gens)."""
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
        self.journal.write(
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
