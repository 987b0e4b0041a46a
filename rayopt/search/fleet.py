"""The cluster a discovery runs on: attaching to Ray, where control actors live, and the
evaluator fleet (one actor per GPU, per resource slot, or per CPU node).

Kept apart from the driver so sweeps and benchmarks start evaluators the same way without
importing the search loop.
"""

from __future__ import annotations

from typing import Any

import ray

from rayopt.config import ConfigError, DiscoveryConfig, EvaluatorSection
from rayopt.search.evaluator import Bounds, EvaluatorActor, EvaluatorPool, actor_env


class NoEvaluatorFits(ConfigError, RuntimeError):
    """The cluster cannot hold one evaluator as configured (a config error the CLIs
    report in one line; a RuntimeError to callers that start evaluators directly)."""


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
    num_gpus: float = 0.0  # each evaluator's share of a GPU (0: CPU evaluators)

    def stop(self) -> None:
        """Kill the actors (no restart) and hand their reserved resources back."""
        from ray.util.placement_group import remove_placement_group

        for actor in self:
            ray.kill(actor, no_restart=True)
        if self.placement_group is not None:
            remove_placement_group(self.placement_group)
            self.placement_group = None
        self.clear()


def pool_for(fleet: Evaluators, ev: EvaluatorSection, max_attempts: int = 3) -> EvaluatorPool:
    """The pool that feeds ``fleet``: bounded by ``ev`` (deadlines, memory), compiling
    ahead where ``ev`` says so for the fleet's device kind."""
    return EvaluatorPool(
        list(fleet),
        max_attempts=max_attempts,
        bounds=Bounds.from_config(ev),
        compile_ahead=ev.compile_ahead_for(fleet.num_gpus),
    )


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


def evaluator_count(cfg: DiscoveryConfig) -> int:
    """How many evaluators :func:`start_evaluators` will start on this cluster (Ray must
    be initialised); raises :class:`NoEvaluatorFits` when not one fits, before any actor
    is started. ``evaluator.count`` set: that many (an autoscaling cluster starts nodes
    for them). CPU-only default: one per node with CPUs."""
    ev = cfg.evaluator
    gpus, cpus, custom = evaluator_demand(cfg)
    nodes = [n for n in ray.nodes() if n["Alive"] and n["Resources"].get("CPU", 0) > 0]
    if not gpus and not custom and ev.count == 0:
        if not nodes:
            raise NoEvaluatorFits("no evaluator fits: the Ray cluster has no node with CPUs")
        return len(nodes)
    total = ray.cluster_resources()
    per = {"GPU": gpus, **custom} if gpus else dict(custom)
    count = ev.count or min((int(total.get(k, 0) // v) for k, v in per.items()), default=0)
    if count == 0:
        have = ", ".join(f"{k} {total.get(k, 0):g}" for k in per)
        need = ", ".join(f"{k} {v:g}" for k, v in per.items())
        hint = (
            " (this machine has no GPU: evaluator.num_gpus=0 runs on CPUs)"
            if "GPU" in per and not total.get("GPU")
            else ""
        )
        raise NoEvaluatorFits(
            f"no evaluator fits: each needs {need}, the cluster has {have}{hint}; start nodes "
            "that offer them (ray start --num-gpus / --resources) or set evaluator.count "
            "(an autoscaling cluster then starts nodes for them)"
        )
    return count


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
    count = evaluator_count(cfg)
    cache = (ev.compile_cache, ev.compile_cache_gb)
    out = Evaluators()
    if not gpus and not custom and ev.count == 0:  # CPU-only default: one per node
        for n in (n for n in ray.nodes() if n["Alive"] and n["Resources"].get("CPU", 0) > 0):
            c = cpus or n["Resources"]["CPU"]
            where = NodeAffinitySchedulingStrategy(n["NodeID"], soft=True)
            out.append(
                EvaluatorActor.options(
                    num_cpus=c,
                    runtime_env={"env_vars": actor_env(0, c, *cache)},
                    scheduling_strategy=where,
                ).remote()
            )
        return out

    total = ray.cluster_resources()
    per = {"GPU": gpus, **custom} if gpus else dict(custom)
    if not cpus:  # CPU-only with a count: split the smallest node's CPUs between them
        nodes = [n for n in ray.nodes() if n["Alive"] and n["Resources"].get("CPU", 0) > 0]
        cpus = max(1, int(min(n["Resources"]["CPU"] for n in nodes) // max(1, count // len(nodes))))
    out.num_gpus = gpus
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
                runtime_env={"env_vars": actor_env(gpus, 0 if gpus else cpus, *cache)},
            ).remote()
        )
    return out
