"""Orchestration overhead: evaluator utilisation and candidates/hour of the real driver
with evaluation and mutation replaced by timed sleeps.

The driver, islands, journal and pools are rayopt's own; only the work is simulated
(``rayopt.search.simulate``): an evaluation (one candidate on one env, all seeds)
takes ``--eval-s`` and a mutation ``--mutate-s`` (paper-like 60 s and 30 s by default),
both multiplied by ``--scale`` so the run fits in minutes. Utilisation is measured in
steady state (after the initial archive is evaluated and the lineages' first
mutations are in) by sampling how many evaluator slots are busy. Candidates/hour is
reported in unscaled time. ``config`` and ``steady_state`` are also what
benchmarks/cluster_scaling.py measures a multi-node cluster with.

    python benchmarks/orchestration.py [--slots 1,8,64,256] [--scale 0.1] [--window 20]

Target (issue 4): >= 95 % utilisation at 256 simulated evaluators.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import tempfile
import time
from pathlib import Path

import ray

from rayopt.config import DiscoveryConfig, from_dict
from rayopt.search.driver import Discovery
from rayopt.search.evaluator import Bounds, EvaluatorPool
from rayopt.search.mutators.actor import MutatorPool
from rayopt.search.simulate import SleepEvaluator, SleepMutator

ENVS = ["Asterix-MinAtar", "Breakout-MinAtar", "Freeway-MinAtar", "SpaceInvaders-MinAtar"]


def config(islands: int, name: str = "orchestration", run_ahead: float = 1.0) -> DiscoveryConfig:
    """The paper's shape (4 envs x 8 seeds, 8 refinements) with the tiny PPO budget the
    sleeps ignore; ``lineages_per_island: 0``, so the driver itself sizes the lineages
    in flight to the evaluator slots plus ``run_ahead`` (``Discovery._lineages_per_island``)."""
    return from_dict(
        DiscoveryConfig,
        {
            "name": name,
            "envs": ENVS,
            "seeds": 8,
            "progress_s": 3600.0,
            "ppo": {"overrides": {"total_timesteps": 64 * 128 * 4}, "per_env": {}},
            "search": {
                "generations": 100_000,
                "refinements": 8,
                "references": [],
                "lineages_per_island": 0,
            },
            "islands": {"count": islands, "interval": 2, "migrants": 2},
            "cascade": {"enabled": False},
            "confirm": {"enabled": False},  # the steady state of the search is measured
            "evaluator": {"run_ahead": run_ahead},
        },
    ).validate()


async def steady_state(
    cfg: DiscoveryConfig,
    evaluators: EvaluatorPool,
    mutators: MutatorPool,
    eval_s: float,
    mutate_s: float,
    window_s: float,
) -> dict:
    """Run the real driver with ``cfg`` on these pools and measure it in steady state.

    The window opens after the initial archive is evaluated and a ramp-up of
    2 x (mutate_s + eval_s) in which the lineages' first mutations come in. Utilisation
    is the mean number of busy evaluator slots (sampled every 20 ms, so evaluations
    still running at either edge of the window count for the part inside it) over the
    slots; candidates and evaluations are those completed inside the window, and
    ``held_per_eval_s`` is the mean time a slot was held per completed evaluation."""
    slots = evaluators.size
    with tempfile.TemporaryDirectory() as tmp:
        d = Discovery.create(
            cfg, Path(tmp) / "run", evaluator_pool=evaluators, mutator_pool=mutators
        )
        run = asyncio.create_task(d.run())
        while not d.searches or sum(d.searches[0].started) == 0:  # initial archive first
            await asyncio.sleep(0.05)
        await asyncio.sleep(2 * (mutate_s + eval_s))  # lineages' first mutations: ramp-up
        t0, done0, evals0, samples = time.monotonic(), d.searches[0].evaluated, evaluators.done, []
        held0 = sum(s.busy_s for s in evaluators.slots)
        while time.monotonic() - t0 < window_s:
            samples.append(evaluators.busy)
            await asyncio.sleep(0.02)
        wall = time.monotonic() - t0
        done, evals = d.searches[0].evaluated - done0, evaluators.done - evals0
        # a slot's busy time is added when its evaluation returns: over the window, the
        # whole slot-held time of the evaluations that completed in it
        held = sum(s.busy_s for s in evaluators.slots) - held0
        lineages = d._lineages_per_island() * cfg.islands.count * len(cfg.meta_seeds)
        run.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await run
        rows = d.journal.writer.rows_written
    return dict(
        slots=slots,
        lineages=lineages,
        utilisation=sum(samples) / (len(samples) * slots),
        candidates=done,
        evaluations=evals,
        # mean time a slot was held per evaluation (dispatch to result taken by the
        # driver): eval_s plus Ray's round trip and the driver's event-loop latency
        held_per_eval_s=round(held / max(evals, 1), 4),
        window_s=round(wall, 2),
        journal_rows=rows,
    )


async def measure(
    slots: int,
    eval_s: float,
    mutate_s: float,
    window_s: float,
    islands: int,
    compile_s: float = 0.0,
    compile_ahead: int = 0,
) -> dict:
    """``compile_s`` > 0: every evaluation also compiles that long first (the pool then
    compiles through ``prepare``, as the bounded pools of discovery do; no deadline), and
    ``compile_ahead`` says how many queued evaluations a busy evaluator compiles ahead."""
    actor = SleepEvaluator.remote(eval_s, compile_s=compile_s)
    bounds = Bounds(max_slowdown=0.0) if compile_s else None
    evaluators = EvaluatorPool(
        [actor], slots_per_actor=slots, bounds=bounds, compile_ahead=compile_ahead
    )
    mutators = MutatorPool([SleepMutator.options(max_concurrency=10_000).remote(mutate_s)])
    r = await steady_state(
        config(islands), evaluators, mutators, eval_s + compile_s, mutate_s, window_s
    )
    r["compile_wait_share"] = round(evaluators.compile_wait_share(), 4)
    for actor in (*{s.actor for s in evaluators.slots}, *mutators.actors):
        ray.kill(actor)
    return r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--slots", default="1,8,64,256")
    ap.add_argument("--eval-s", type=float, default=60.0, help="unscaled seconds per evaluation")
    ap.add_argument("--mutate-s", type=float, default=30.0, help="unscaled seconds per mutation")
    ap.add_argument(
        "--compile-s", type=float, default=0.0, help="unscaled seconds compiling per evaluation"
    )
    ap.add_argument("--compile-ahead", type=int, default=0, help="evaluator.compile_ahead")
    ap.add_argument("--scale", type=float, default=0.1, help="time scale of the simulation")
    ap.add_argument("--window", type=float, default=20.0, help="seconds of steady state measured")
    ap.add_argument("--islands", type=int, default=8)
    ap.add_argument("--out", default="benchmarks/results/orchestration.json")
    args = ap.parse_args()

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    rows = []
    print(
        f"evaluation {args.eval_s:g} s + compile {args.compile_s:g} s (compile ahead "
        f"{args.compile_ahead}), mutation {args.mutate_s:g} s (x{args.scale:g}), "
        f"{len(ENVS)} envs per candidate, {args.islands} islands"
    )
    print(
        f"{'evaluators':>10}{'lineages':>10}{'utilisation':>13}{'cand/hour':>11}{'ideal':>9}"
        f"{'compile wait':>14}"
    )
    for slots in (int(s) for s in args.slots.split(",")):
        r = asyncio.run(
            measure(
                slots,
                args.eval_s * args.scale,
                args.mutate_s * args.scale,
                args.window,
                args.islands,
                args.compile_s * args.scale,
                args.compile_ahead,
            )
        )
        r["candidates_per_hour"] = round(r["candidates"] / (r["window_s"] / args.scale) * 3600, 1)
        # every evaluation's compile on the device's time, as without compile-ahead
        per_eval = args.eval_s + args.compile_s
        r["ideal_candidates_per_hour"] = round(slots * 3600 / (per_eval * len(ENVS)), 1)
        rows.append(r)
        print(
            f"{slots:>10}{r['lineages']:>10}{r['utilisation']:>12.1%}{r['candidates_per_hour']:>11}"
            f"{r['ideal_candidates_per_hour']:>9}{r['compile_wait_share']:>14.1%}",
            flush=True,
        )
    ray.shutdown()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(dict(args=vars(args), rows=rows), indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
