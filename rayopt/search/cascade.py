"""The cascade: what a candidate goes through before it has scores (paper §5.3 plus
cheap stages in front of the full evaluation).

    check (validation, dry run, literal audit, hash, fingerprint)
      -> duplicate? share the earlier scores -> literal policy
      -> screen: a short single-env run, then the speed screen (a few PPO updates on every
       env's real network, timed against Adam's) -> full: every env x seeds

Each decision is written to the journal in one part file together with the rows it
rests on, so a crash leaves either both or neither; the verdict goes back to the
lineage, which shows failures to the next mutation.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
from typing import Any

import numpy as np

from rayopt.config import DiscoveryConfig
from rayopt.optim import SYMBOLIC, OptimiserSpec
from rayopt.search.archive import Candidate
from rayopt.search.evaluator import EvalOutcome, EvalTask, EvaluatorPool, outcome_rows
from rayopt.search.mutators.actor import Checked
from rayopt.search.state import RunJournal, Search, Verdict, copy_scores, is_mutated


class Cascade:
    """Assess candidates of every meta-seed on one evaluator pool."""

    def __init__(self, config: DiscoveryConfig, evaluators: EvaluatorPool, journal: RunJournal):
        self.config = config
        self.evaluators = evaluators
        self.journal = journal
        # the random-policy floor per env: one call, shared by concurrent screens
        self._floor: dict[str, asyncio.Future[float]] = {}
        # initial and reference optimisers: one evaluation shared by every meta-seed
        self._memo: dict[tuple, asyncio.Future[EvalOutcome]] = {}

    async def assess(
        self,
        s: Search,
        c: Candidate,
        island: int | None,
        generation: int,
        created: bool,
        checked: Checked | None = None,
        preface: list[dict] | None = None,
    ) -> Verdict:
        """Check, deduplicate, screen and fully evaluate ``c``.

        ``created``: write its ``created`` row (with ``preface``, the model calls that
        produced it); False when the journal has it already (resume).
        """
        cfg = self.config
        if checked is None:
            checked = await asyncio.to_thread(check_code, c)
            c.code_hash, c.fingerprint = checked.code_hash, checked.fingerprint
            c.literal_count = checked.literal_count if checked.ok else c.literal_count
        where = dict(island=island, generation=generation, step=c.step, **c.lineage_row())
        pending = [*(preface or []), *([dict(event="created", **where)] if created else [])]
        s.candidates.setdefault(c.id, c)
        s.see(c)
        if not checked.ok:
            s.dropped += 1
            self.journal.write(
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
            return Verdict("invalid", c, checked.error, checked.error_kind)
        if is_mutated(c):
            if cfg.cascade.dedup:
                orig = s.by_hash.get(c.code_hash or "") or s.by_fingerprint.get(c.fingerprint or "")
                if orig is not None and orig.id != c.id:
                    same = "same hash" if orig.code_hash == c.code_hash else "same fingerprint"
                    s.duplicates += 1
                    self.journal.write(
                        s,
                        [
                            *pending,
                            dict(event="duplicate", **where, ref_candidate_id=orig.id, status=same),
                        ],
                    )
                    return Verdict("duplicate", copy_scores(c, orig), f"{same} as {orig.id}")
            if (
                cfg.search.literal_policy == "reject"
                and c.new_literals > cfg.search.max_new_literals
            ):
                limit = cfg.search.max_new_literals
                why = f"introduces {c.new_literals} tunable literals (max {limit})"
                s.dropped += 1
                self.journal.write(s, [*pending, dict(event="rejected", **where, error=why)])
                return Verdict("rejected", c, why, "literals")
        self.journal.write(s, pending)
        spec = OptimiserSpec(name=c.name or c.id, kind="symbolic", code=c.code)
        near: dict[str, str] = {}
        if cfg.cascade.enabled and is_mutated(c) and c.id not in s.screened:
            why, kind, near = await self.screen(s, c, spec, where)
            if why:
                s.dropped += 1
                return Verdict("screened_out", c, why, kind)
        return await self.evaluate_all(s, c, spec, where, near)

    async def screen(
        self, s: Search, c: Candidate, spec: OptimiserSpec, where: dict
    ) -> tuple[str, str, dict[str, str]]:
        """The cascade's short run, then the speed screen; writes their rows and the
        verdict together. Returns (why ``c`` fell out, its kind: screen, timeout,
        memory, too_slow), or ("", ""), when it passed; then env -> the node its speed
        screen ran on."""
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
        rows = outcome_rows(out, where, stage="screen")
        why, kind = "", "screen"
        if not out.ok:
            why = f"screen run failed: {out.error}"
            kind = out.error_kind if out.error_kind in ("timeout", "memory") else "screen"
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
        near: dict[str, str] = {}
        if not why:
            speed_rows, why, kind, near = await self.speed_screen(c, spec, where)
            rows += speed_rows
        verdict = (
            dict(event="screened_out", **where, error=why, error_kind=kind, status=kind)
            if why
            else dict(event="screened", **where)
        )
        self.journal.write(s, [*rows, verdict])
        s.screened.add(c.id)
        return why, kind, near

    async def speed_screen(
        self, c: Candidate, spec: OptimiserSpec, where: dict
    ) -> tuple[list[dict], str, str, dict[str, str]]:
        """The first ``cascade.speed_updates`` PPO updates of ``c``'s full evaluation on
        every env (its executable, its seeds), timed after compile against the
        reference's (Adam) on the same evaluator: (rows, why it is too slow, kind) or
        (rows, "", ""), then env -> the node it ran on. Only on a bounded pool (it holds
        the reference's times). The full evaluation asks for that node (the pool's
        ``near``), where it loads the executable from the node's compilation cache
        instead of compiling it again."""
        cfg = self.config
        bounds = getattr(self.evaluators, "bounds", None)
        if not cfg.cascade.speed_updates or bounds is None or not bounds.max_slowdown:
            return [], "", "", {}

        def task(env: str) -> EvalTask:
            full = self.full_task(c, spec, env)
            n = min(cfg.cascade.speed_updates, full.config.num_updates)
            return dataclasses.replace(full, key=f"{c.id}/speed/{env}", num_updates=n)

        outs = await asyncio.gather(*(self.evaluators.run(task(env)) for env in cfg.envs))
        near = {o.task.config.env: o.node for o in outs if o.ok and o.node}
        rows: list[dict] = []
        why = kind = ""
        for o in outs:
            r = outcome_rows(o, where, stage="speed")
            slow = (
                o.ok
                and o.reference_s is not None
                and o.run_s > bounds.max_slowdown * o.reference_s + cfg.cascade.speed_floor_s
            )
            if slow:
                for row in r:
                    row.update(status="too_slow", error_kind="too_slow")
            rows += r
            if why:
                continue
            env = o.task.config.env
            if slow:
                why, kind = (
                    f"too slow at real shapes: {o.task.num_updates} PPO updates on "
                    f"{env} took {o.run_s:.2f} s, {o.slowdown:.0f}x the "
                    f"{o.reference_s:.3f} s of {bounds.reference} on this evaluator (limit: "
                    f"evaluator.max_slowdown = {bounds.max_slowdown:g} x + "
                    f"{cfg.cascade.speed_floor_s:g} s); make the update cheaper",
                    "too_slow",
                )
            elif not o.ok:
                why = f"speed screen on {env} failed: {o.error}"
                kind = o.error_kind if o.error_kind in ("timeout", "memory") else "screen"
        return rows, why, kind, near

    async def evaluate_all(
        self,
        s: Search,
        c: Candidate,
        spec: OptimiserSpec,
        where: dict,
        near: dict[str, str] | None = None,
    ) -> Verdict:
        """Every environment not yet journalled for ``c`` (each near the node ``near``
        names for it), then the verdict. An env that failed before a crash (resume)
        fixes the verdict: nothing is trained again."""
        cfg = self.config
        failed_before = c.id in s.failed_envs
        near = near or {}
        outcomes = await asyncio.gather(
            *(
                self.evaluate(s, c, spec, env, where, near=near.get(env))
                for env in cfg.envs
                if env not in c.final_return and not failed_before
            )
        )
        # (env, attempts, kind, error) of the first env that failed: an error, or the
        # screen's rule (non-finite parameters at the end of training ends a candidate)
        failures = [
            (o.task.config.env, o.attempts, o.error_kind, o.error) for o in outcomes if not o.ok
        ]
        failures += [
            (
                o.task.config.env,
                o.attempts,
                "non_finite",
                f"non-finite parameters at the end of training on {o.task.config.env} "
                f"({int(np.sum(~np.asarray(o.finite, bool)))} of {len(o.finite)} seeds)",
            )
            for o in outcomes
            if o.ok and not np.all(o.finite)
        ]
        if failures or failed_before:
            s.failed += 1
            env, attempt, kind, error = (
                failures[0]
                if failures
                else (
                    s.failed_envs[c.id],
                    None,
                    "evaluation",
                    "failed before the crash (see its rows)",
                )
            )
            row = dict(
                event="evaluation_failed",
                **where,
                env=env,
                attempt=attempt,
                error_kind=kind,
                error=error,
                status=kind if kind in ("timeout", "memory") else None,
            )
            self.journal.write(s, [row])
            return Verdict("evaluation_failed", c, error, kind)
        if c.mutator != "reference":
            s.evaluated += 1
            s.index(c)
        mean = float(np.nanmean([c.final_return[e] for e in cfg.envs]))
        self.journal.write(s, [dict(event="evaluated", **where, status="ok", final_return=mean)])
        return Verdict("evaluated", c)

    async def _random_floor(self, env: str) -> float:
        """The untrained policy's return on ``env``, measured once (concurrent screens
        share the one call) on a free slot, ahead of queued evaluations: not beside an
        evaluation, whose run time a deadline judges."""
        if env not in self._floor:
            self._floor[env] = asyncio.ensure_future(self._measure_floor(env))
        return await asyncio.shield(self._floor[env])

    async def _measure_floor(self, env: str) -> float:
        try:
            return await self.evaluators.call("random_return", env)
        except Exception:  # noqa: BLE001 - a simulated evaluator has none; no floor then
            return math.nan

    def full_task(self, c: Candidate, spec: OptimiserSpec, env: str) -> EvalTask:
        """``c``'s full evaluation on ``env``: every seed, the run's PPO config."""
        cfg = self.config
        return EvalTask(
            f"{c.id}/full/{env}",
            spec,
            cfg.ppo_config(env),
            tuple(range(cfg.seeds)),
            fast_compile=cfg.evaluator.fast_compile,
            keep=not is_mutated(c),  # they recur (meta-seeds); not the rest
        )

    async def evaluate(
        self,
        s: Search,
        c: Candidate,
        spec: OptimiserSpec,
        env: str,
        where: dict,
        near: str | None = None,
    ) -> EvalOutcome:
        """``c``'s full evaluation on ``env`` (on node ``near`` when a slot there is
        free), journalled."""
        task = self.full_task(c, spec, env)
        if is_mutated(c):
            out = await self.evaluators.run(task, near=near)
        else:  # the same program, config and seeds in every meta-seed: train it once
            memo = (spec.code, spec.kind, spec.name, task.config, task.seeds, task.fast_compile)
            if memo not in self._memo:
                self._memo[memo] = asyncio.ensure_future(self.evaluators.run(task))
            out = await asyncio.shield(self._memo[memo])
            if not out.ok and out.error_kind not in ("timeout", "memory"):
                self._memo.pop(memo, None)  # a failure is not memoised: it may be bad luck
        self.journal.write(s, outcome_rows(out, where, stage="full"))
        if out.ok:
            record_scores(c, env, out)
        return out


def record_scores(c: Candidate, env: str, out: EvalOutcome | Any) -> None:
    """``c``'s per-env scores from an outcome: means over seeds (NaN seeds skipped)."""
    c.final_return[env] = float(np.nanmean(out.final_return))
    c.auc[env] = float(np.nanmean(out.auc))
    c.curves[env] = np.nanmean(out.return_curve, axis=0).astype(float).tolist()


def check_code(c: Candidate) -> Checked:
    """Check a candidate whose proposal was not checked on the way (initial optimisers,
    resumed candidates)."""
    from rayopt.search.mutators.actor import check_proposal
    from rayopt.search.mutators.base import MutationResult

    parent = SYMBOLIC.get(c.name or "", c.code)
    return check_proposal(MutationResult(ok=True, mutator=c.mutator, code=c.code), parent)
