"""Cluster scaling: candidates/hour and evaluator utilisation of the real driver on a
multi-node Ray cluster of 1, 2, 4 ... worker raylets, with the work simulated.

A ``ray.cluster_utils.Cluster`` is made on this machine: a head raylet with no CPUs (the
driver, islands and mutators, pinned there as in a real run) and worker raylets that
each offer ``--slots`` units of the custom resource ``evaluator`` (the stand-in for a
GPU node's GPUs). Evaluators are ``SleepEvaluator`` actors (``rayopt.search.simulate``),
one per worker serving its ``--slots`` concurrently, placed by the ``evaluator``
resource with the SPREAD strategy as ``start_evaluators`` does; an evaluation (one
candidate on one env, all seeds) takes ``--eval-s`` and a mutation ``--mutate-s``
(unscaled seconds), both multiplied by ``--scale``. The driver,
islands, journal and pools are rayopt's own. Measured after the initial archive, over
``--window`` seconds; candidates/hour is in unscaled time, next to the ideal
``slots x 3600 / (envs x eval_s)``.

    python benchmarks/cluster_scaling.py [--workers 1,2,4,8] [--slots 8] [--scale 0.1] [--window 60]

Utilisation is useful work: evaluations completed in the window x their (scaled)
duration, over slots x window (each edge of the window can be off by at most one
evaluation per slot: eval_s x scale / window). ``slot_held`` is the pool's own busy
time, which also counts the time a finished result waits for the driver's event loop:
the gap between the two is driver overhead. Scaling time by ``--scale`` multiplies the
driver's event rate by 1/scale: a run with S slots loads the driver like S / scale
evaluators working in real time (``real_time_equivalent_slots``), so the point where
utilisation drops is where this machine's driver saturates.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import ray

from rayopt.config import DiscoveryConfig, from_dict
from rayopt.search.driver import Discovery, control_options
from rayopt.search.evaluator import EvaluatorPool
from rayopt.search.mutators.actor import MutatorPool
from rayopt.search.simulate import SleepEvaluator, SleepMutator

ENVS = ["Asterix-MinAtar", "Breakout-MinAtar", "Freeway-MinAtar", "SpaceInvaders-MinAtar"]
MiB = 2**20


def config(slots: int, islands: int, run_ahead: float) -> DiscoveryConfig:
    """The paper's shape (4 envs x 8 seeds, 8 refinements), with enough lineages in flight
    to keep ``slots`` evaluators busy plus ``run_ahead`` (the driver's own rule)."""
    lineages = max(1, math.ceil(slots * (1 + run_ahead) / len(ENVS) / islands))
    return from_dict(
        DiscoveryConfig,
        {
            "name": "cluster-scaling",
            "envs": ENVS,
            "seeds": 8,
            "progress_s": 3600.0,
            "ppo": {"overrides": {"total_timesteps": 64 * 128 * 4}, "per_env": {}},
            "search": {
                "generations": 100_000,
                "refinements": 8,
                "references": [],
                "lineages_per_island": lineages,
            },
            "islands": {"count": islands, "interval": 2, "migrants": 2},
            "cascade": {"enabled": False},
            "evaluator": {"run_ahead": run_ahead},
        },
    ).validate()


async def measure(
    cluster,
    workers: int,
    per_worker: int,
    eval_s: float,
    mutate_s: float,
    window_s: float,
    islands: int,
    run_ahead: float,
) -> dict:
    # One simulated evaluator per worker node serving all its slots concurrently (one
    # process per slot would be 64 processes on this 2-core machine, measuring it, not
    # the driver); it takes all the node's `evaluator` units, so it lands one per node.
    slots = workers * per_worker
    actors = [
        SleepEvaluator.options(
            resources={"evaluator": per_worker}, scheduling_strategy="SPREAD"
        ).remote(eval_s, seed=i)
        for i in range(workers)
    ]
    await asyncio.gather(*(a.__ray_ready__.remote() for a in actors))
    me = ray.get_runtime_context().get_job_id()
    nodes = {
        a["Address"]["NodeID"]
        for a in cluster.global_state.actor_table(None).values()
        if a["ActorClassName"] == "SleepEvaluator" and a["State"] == "ALIVE" and a["JobID"] == me
    }
    evaluators = EvaluatorPool(actors, slots_per_actor=per_worker)
    mutators = MutatorPool(
        [SleepMutator.options(max_concurrency=10_000, **control_options()).remote(mutate_s)]
    )
    cfg = config(slots, islands, run_ahead)
    with tempfile.TemporaryDirectory() as tmp:
        d = Discovery.create(
            cfg, Path(tmp) / "run", evaluator_pool=evaluators, mutator_pool=mutators
        )
        run = asyncio.create_task(d.run())
        while not d.searches or sum(d.searches[0].started) == 0:  # initial archive first
            await asyncio.sleep(0.05)
        t0, done0, evals0 = time.monotonic(), d.searches[0].evaluated, evaluators.done
        busy0 = sum(s.busy_s for s in evaluators.slots)
        await asyncio.sleep(window_s)
        wall = time.monotonic() - t0
        done = d.searches[0].evaluated - done0
        evals = evaluators.done - evals0
        busy = sum(s.busy_s for s in evaluators.slots) - busy0
        run.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await run
        rows = d.journal.rows_written
    for actor in (*actors, *mutators.actors):
        ray.kill(actor)
    per_hour = done / wall * 3600
    return dict(
        slots=slots,
        nodes_used=len(nodes),
        lineages=cfg.search.lineages_per_island * islands,
        candidates=done,
        evaluations=evals,
        evaluations_per_s=round(evals / wall, 2),
        utilisation=round(evals * eval_s / (slots * wall), 3),
        slot_held=round(busy / (slots * wall), 3),
        window_s=round(wall, 1),
        journal_rows=rows,
        candidates_per_hour_scaled=round(per_hour, 1),
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workers", default="1,2,4,8", help="worker raylets per measurement")
    ap.add_argument("--slots", type=int, default=8, help="evaluator slots (GPUs) per worker")
    ap.add_argument("--eval-s", type=float, default=60.0, help="unscaled seconds per evaluation")
    ap.add_argument("--mutate-s", type=float, default=30.0, help="unscaled seconds per mutation")
    ap.add_argument("--scale", type=float, default=0.1, help="time scale of the simulation")
    ap.add_argument("--window", type=float, default=60.0, help="seconds measured per size")
    ap.add_argument("--islands", type=int, default=4)
    ap.add_argument("--run-ahead", type=float, default=1.0)
    ap.add_argument("--out", default="benchmarks/results/cluster_scaling.json")
    args = ap.parse_args()
    sizes = [int(w) for w in args.workers.split(",")]

    from ray.cluster_utils import Cluster

    # A private temp dir: a plain ray.init() elsewhere on this machine never joins it.
    tmp = tempfile.mkdtemp(prefix="rcs-", dir="/tmp")
    os.environ.update(RAY_TMPDIR=tmp, RAY_AUTH_MODE=os.environ.get("RAY_AUTH_MODE", "disabled"))
    cluster = Cluster(
        initialize_head=True,
        head_node_args=dict(num_cpus=0, include_dashboard=False, object_store_memory=100 * MiB),
    )
    rows = []
    try:
        ray.init(address=cluster.address, log_to_driver=False, configure_logging=False)
        for n in sizes:
            while len(cluster.worker_nodes) < n:
                cluster.add_node(
                    num_cpus=1, resources={"evaluator": args.slots}, object_store_memory=100 * MiB
                )
            r = asyncio.run(
                measure(
                    cluster,
                    n,
                    args.slots,
                    args.eval_s * args.scale,
                    args.mutate_s * args.scale,
                    args.window,
                    args.islands,
                    args.run_ahead,
                )
            )
            r["workers"] = n
            r["candidates_per_hour"] = round(r.pop("candidates_per_hour_scaled") * args.scale, 1)
            r["ideal_per_hour"] = round(r["slots"] * 3600 / (len(ENVS) * args.eval_s), 1)
            # the driver's event rate equals that of this many real-time evaluators
            r["real_time_equivalent_slots"] = round(r["slots"] / args.scale)
            rows.append(r)
            print(f"{n} worker(s): {r}", flush=True)
    finally:
        ray.shutdown()
        cluster.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)

    head = (
        "workers",
        "slots",
        "nodes_used",
        "lineages",
        "candidates",
        "candidates_per_hour",
        "ideal_per_hour",
        "utilisation",
        "slot_held",
        "evaluations_per_s",
        "real_time_equivalent_slots",
    )
    print("\n" + " | ".join(head))
    for r in rows:
        print(" | ".join(str(r[k]) for k in head))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            dict(
                command="python " + " ".join(sys.argv),
                eval_s=args.eval_s,
                mutate_s=args.mutate_s,
                scale=args.scale,
                envs=len(ENVS),
                slots_per_worker=args.slots,
                machine=dict(
                    cpus=os.cpu_count(),
                    platform=platform.platform(),
                    load_avg_1m=round(os.getloadavg()[0], 2),
                ),
                ray=ray.__version__,
                results=rows,
            ),
            indent=2,
        )
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
