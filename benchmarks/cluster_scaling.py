"""Cluster scaling: candidates/hour and evaluator utilisation of the real driver on a
multi-node Ray cluster of 1, 2, 4 ... worker raylets, with the work simulated.

A ``ray.cluster_utils.Cluster`` is made on this machine: a head raylet with no CPUs (the
driver, islands and mutators, pinned there as in a real run) and worker raylets that
each offer ``--slots`` units of the custom resource ``evaluator`` (the stand-in for a
GPU node's GPUs). Evaluators are ``SleepEvaluator`` actors (``rayopt.search.simulate``),
one per worker serving its ``--slots`` concurrently, placed by the ``evaluator``
resource with the SPREAD strategy as ``start_evaluators`` does; an evaluation (one
candidate on one env, all seeds) takes ``--eval-s`` and a mutation ``--mutate-s``
(unscaled seconds), both multiplied by ``--scale``. The driver, islands, journal and
pools are rayopt's own.

The discovery config and the measurement are benchmarks/orchestration.py's (``config``,
``steady_state``): ``lineages_per_island: 0`` (the driver sizes the lineages to the
slots and ``--run-ahead``), a window of ``--window`` seconds that opens after the
initial archive and a ramp-up of 2 x (mutate + eval) scaled seconds, utilisation as the
mean number of busy slots sampled every 20 ms (evaluations running across the window's
edges count for their part inside it). Candidates/hour is in unscaled time, next to the
ideal ``slots x 3600 / (envs x eval_s)``. A busy slot is the pool's view: from dispatch
until the driver's event loop has taken the result, so Ray's call latency and the
driver's show up as ``work_done`` (evaluations completed x eval_s over slots x window,
i.e. candidates/hour over ideal) below a utilisation near 1, and as
``overhead_ms_per_eval`` (the mean slot-held time per evaluation minus eval_s).
Scaling time by ``--scale`` multiplies the driver's event rate by 1/scale: a run with S
slots loads the driver like S / scale evaluators working in real time
(``real_time_equivalent_slots``), while the overhead per evaluation, in absolute time,
stays what it is, so its share of an unscaled evaluation is ``scale`` times smaller.

    python benchmarks/cluster_scaling.py [--workers 1,2,4,8] [--slots 8] [--scale 0.1] [--window 60]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import sys
import tempfile
from pathlib import Path

import ray

from rayopt.search.evaluator import EvaluatorPool
from rayopt.search.fleet import control_options
from rayopt.search.mutators.actor import MutatorPool
from rayopt.search.simulate import SleepEvaluator, SleepMutator

sys.path.insert(0, str(Path(__file__).parent))
import orchestration  # noqa: E402  (the sibling benchmark: config and measurement)

MiB = 2**20


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
    cfg = orchestration.config(islands, name="cluster-scaling", run_ahead=run_ahead)
    r = await orchestration.steady_state(cfg, evaluators, mutators, eval_s, mutate_s, window_s)
    for actor in (*actors, *mutators.actors):
        ray.kill(actor)
    r["nodes_used"] = len(nodes)
    r["evaluations_per_s"] = round(r["evaluations"] / r["window_s"], 2)
    # completed work: evaluations finished in the window x their mean duration, over
    # slots x window (the throughput's share of ideal; each window edge moves it by at
    # most eval_s / window per slot, and in steady state the two edges balance)
    r["work_done"] = round(r["evaluations"] * eval_s / (r["slots"] * r["window_s"]), 4)
    # per evaluation, the slot was held this much longer than the simulated work (the
    # jitter averages out: +-10 % uniform, a few hundred evaluations)
    r["overhead_ms_per_eval"] = round((r["held_per_eval_s"] - eval_s) * 1000, 1)
    return r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workers", default="1,2,4,8", help="worker raylets per measurement")
    ap.add_argument("--slots", type=int, default=8, help="evaluator slots (GPUs) per worker")
    ap.add_argument("--eval-s", type=float, default=60.0, help="unscaled seconds per evaluation")
    ap.add_argument("--mutate-s", type=float, default=30.0, help="unscaled seconds per mutation")
    ap.add_argument("--scale", type=float, default=0.1, help="time scale of the simulation")
    ap.add_argument(
        "--window", type=float, default=60.0, help="seconds of steady state measured per size"
    )
    ap.add_argument("--islands", type=int, default=8)
    ap.add_argument("--run-ahead", type=float, default=1.0)
    ap.add_argument("--out", default="benchmarks/results/cluster_scaling.json")
    args = ap.parse_args()
    sizes = [int(w) for w in args.workers.split(",")]
    envs = len(orchestration.ENVS)
    load_start = round(os.getloadavg()[0], 2)

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
            r["utilisation"] = round(r["utilisation"], 4)
            r["candidates_per_hour"] = round(
                r["candidates"] / (r["window_s"] / args.scale) * 3600, 1
            )
            r["ideal_per_hour"] = round(r["slots"] * 3600 / (envs * args.eval_s), 1)
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
        "work_done",
        "overhead_ms_per_eval",
        "evaluations",
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
                envs=envs,
                slots_per_worker=args.slots,
                islands=args.islands,
                run_ahead=args.run_ahead,
                window_s=args.window,
                ramp_up_s=2 * (args.eval_s + args.mutate_s) * args.scale,
                machine=dict(
                    cpus=os.cpu_count(),
                    platform=platform.platform(),
                    # other jobs shared this machine: 1-minute load at the start and end
                    load_avg_1m_start=load_start,
                    load_avg_1m_end=round(os.getloadavg()[0], 2),
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
