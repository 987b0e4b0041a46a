"""Bounded evaluations (issue 12): what the bounds cost and whether sane optimisers fit.

1. Slowdown table: run time of Adam, the paper's 7 symbolic optimisers and OPEN over
   Adam's, for the same PPO config and seeds layout, compiled as the evaluator compiles
   them (best of ``--reps`` runs after a first one).
2. Time from a deadline to a free evaluator: a bounded pool (max_slowdown 10, a 5 s
   floor) on a real Ray evaluator runs the issue's 16 chained (512, 512) matmuls; from
   the moment the deadline fires to the restarted evaluator answering (ray.kill, Ray's
   restart, JAX's import), then a sane evaluation on it.
3. The speed screen's cost: compile the candidate's full evaluation and run its first
   few updates, then the full evaluation loading that executable from the compilation
   cache, against the full evaluation alone; at the quickstart's budget and extrapolated
   from the measured per-update time to Table 1's 1e7 steps x 8 seeds.

    python benchmarks/bounded.py                    # prints tables, writes JSON
    python benchmarks/bounded.py --updates 8 --kills 3 --env Breakout-MinAtar

Writes benchmarks/results/bounded.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import time
from pathlib import Path

import rayopt  # noqa: F401  (host devices before JAX starts)

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

OUT = Path(__file__).resolve().parent / "results" / "bounded.json"
OPEN_WEIGHTS = Path(os.environ.get("RAYOPT_OPEN_DIR", "/work/shared/open")) / "multi_OPEN.npy"


def _open_weights(tmp: Path) -> str:
    """The published multi-task checkpoint if present, else random weights of its shape
    (OPEN's cost does not depend on the values)."""
    import numpy as np

    if OPEN_WEIGHTS.is_file():
        return str(OPEN_WEIGHTS)
    path = tmp / "open_random.npy"
    np.save(path, (0.5 * np.random.default_rng(0).standard_normal(3571)).astype(np.float32))
    return str(path)


def slowdown_table(env: str, updates: int, seeds: int, reps: int, fast: bool, tmp: Path):
    from rayopt.optim import SYMBOLIC, build, resolve
    from rayopt.rl.execution import train_seeds
    from rayopt.rl.ppo import config_for, make_train

    base = config_for(env)
    cfg = base.replace(total_timesteps=updates * base.num_envs * base.num_steps)
    weights = _open_weights(tmp)
    rows = []
    for name in ["adam", *SYMBOLIC, "open"]:
        spec = resolve(name, open_weights=weights)
        trainer = make_train(cfg, build(spec, cfg.max_grad_norm))
        r0 = train_seeds(trainer, range(seeds), fast_compile=fast)  # compile + first run
        runs = [train_seeds(trainer, range(seeds), fast_compile=fast).run_s for _ in range(reps)]
        rows.append(
            dict(
                optimiser=name,
                compile_s=r0.compile_s,
                first_run_s=r0.run_s,
                run_s=min(runs),
                runs=runs,
            )
        )
        print(f"  {name:16s} compile {r0.compile_s:6.1f} s  run {min(runs):7.3f} s", flush=True)
    adam = rows[0]["run_s"]
    for r in rows:
        r["slowdown"] = r["run_s"] / adam
    return dict(config=dict(env=env, updates=updates, seeds=seeds, fast_compile=fast), rows=rows)


async def _kills(env: str, n: int, slowdown: float, floor: float):
    import ray
    from slow_programs import MATMUL_CHAIN

    from rayopt.optim import OptimiserSpec
    from rayopt.rl.ppo import config_for
    from rayopt.search.evaluator import (
        Bounds,
        EvalTask,
        EvaluatorActor,
        EvaluatorPool,
        actor_env,
    )

    cpus = os.cpu_count() or 1
    actor = EvaluatorActor.options(
        num_cpus=cpus, runtime_env={"env_vars": actor_env(0, cpus)}
    ).remote()
    pool = EvaluatorPool([actor], bounds=Bounds(max_slowdown=slowdown, floor_s=floor))
    base = config_for(env)
    cfg = base.replace(total_timesteps=8 * base.num_envs * base.num_steps)
    spec = OptimiserSpec("matmul_chain", "symbolic", code=MATMUL_CHAIN)
    out = []
    for i in range(n):
        t0 = time.monotonic()
        o = await pool.run(EvalTask(f"slow{i}", spec, cfg, (0, 1), fast_compile=False))
        total = time.monotonic() - t0
        free = pool.restart_s[-1] if pool.restart_s else None
        out.append(
            dict(
                status=o.status,
                stopped_after_s=o.run_s,
                reference_s=o.reference_s,
                slowdown_at_stop=o.slowdown,
                deadline_s=pool.bounds.deadline(o.reference_s),
                deadline_to_free_evaluator_s=free,
                compile_s=o.compile_s,
                total_s=total,
            )
        )
        print(
            f"  kill {i + 1}: {o.status} after {o.run_s:.1f} s (deadline "
            f"{pool.bounds.deadline(o.reference_s):.1f} s, {o.slowdown:.0f}x adam); "
            f"deadline -> free evaluator {free:.1f} s",
            flush=True,
        )
    # and the evaluator is fine: a sane evaluation right after
    ok = await pool.run(EvalTask("after", OptimiserSpec("adam", "adam"), cfg, (0, 1)))
    ray.kill(actor, no_restart=True)
    return dict(
        config=dict(env=env, updates=8, seeds=2, max_slowdown=slowdown, floor_s=floor),
        kills=out,
        after=dict(ok=ok.ok, slowdown=ok.slowdown),
    )


def speed_screen_cost(updates: int, tmp: Path):
    """The speed screen as the cascade runs it (compile the candidate's full evaluation,
    run its first ``updates`` updates with all seeds), then that full evaluation, which
    loads the executable from the compilation cache; against the full evaluation alone
    (compile + run). At the quickstart's Breakout budget, and at Table 1's (1e7 steps x
    8 seeds, per-update time measured over 20 updates and extrapolated)."""
    from rayopt.config import DiscoveryConfig
    from rayopt.optim import build, resolve
    from rayopt.rl.execution import train_seeds
    from rayopt.rl.ppo import config_for, make_train

    spec = resolve("discovered_1")

    def timed(cfg, seeds, fast: bool, num_updates: int | None = None):
        t0 = time.perf_counter()  # a fresh trainer each time: nothing kept in memory
        trainer = make_train(cfg, build(spec))
        r = train_seeds(trainer, seeds, fast_compile=fast, num_updates=num_updates)
        return r, time.perf_counter() - t0

    def costs(cfg, seeds, fast: bool, measured: int | None) -> dict:
        screen, screen_s = timed(cfg, seeds, fast, updates)
        full, full_s = timed(cfg, seeds, fast, measured)  # loaded from the cache
        n = measured or cfg.num_updates
        full_run_s = full.run_s / n * cfg.num_updates
        # compile + run on both sides (the wall time around the first call also holds
        # the process's one-off JAX start-up)
        alone_s = screen.compile_s + full_run_s  # the full evaluation without a screen
        with_screen_s = screen.compile_s + screen.run_s + full.compile_s + full_run_s
        return dict(
            env=cfg.env,
            seeds=len(seeds),
            updates=cfg.num_updates,
            updates_measured=n,
            speed_s=screen_s,
            speed_compile_s=screen.compile_s,
            speed_run_s=screen.run_s,
            full_load_s=full.compile_s,
            full_run_s=full_run_s,
            full_alone_s=alone_s,
            full_after_screen_s=full.compile_s + full_run_s,
            overhead=with_screen_s / alone_s - 1.0,
        )

    q = DiscoveryConfig()
    quick = costs(q.ppo_config("Breakout-MinAtar"), range(q.seeds), q.evaluator.fast_compile, None)
    table1 = costs(config_for("Breakout-MinAtar"), range(8), False, 20)
    return dict(quickstart=quick, table1=table1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--env", default="Breakout-MinAtar")
    ap.add_argument("--updates", type=int, default=8, help="PPO updates per slowdown run")
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--kills", type=int, default=3)
    ap.add_argument("--speed-updates", type=int, default=2)
    ap.add_argument("--skip", default="", help="comma list of: slowdown,kills,speed")
    args = ap.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    import tempfile

    import jax
    import ray

    from rayopt.rl.execution import use_compile_cache

    tmp = Path(tempfile.mkdtemp(prefix="rayopt-bounded-"))
    # a fresh cache, as an evaluator's on first use (evaluator.compile_cache): every
    # first compile here is a real one
    use_compile_cache(str(tmp / "xla"))
    result: dict = dict(
        machine=dict(
            platform=platform.platform(),
            cpus=os.cpu_count(),
            jax=jax.__version__,
            backend=jax.default_backend(),
            load=os.getloadavg(),
        ),
        command=" ".join(["python", *sys.argv]),
    )
    if "slowdown" not in skip:
        print(f"slowdown table ({args.env}, {args.updates} updates, {args.seeds} seeds):")
        result["slowdown"] = slowdown_table(
            args.env, args.updates, args.seeds, args.reps, False, tmp
        )
    if "speed" not in skip:
        print("speed screen vs full evaluation:")
        result["speed_screen"] = speed_screen_cost(args.speed_updates, tmp)
        print(json.dumps(result["speed_screen"], indent=1))
    if "kills" not in skip:
        print("deadline -> free evaluator:")
        ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False)
        try:
            result["kills"] = asyncio.run(_kills(args.env, args.kills, 10.0, 5.0))
        finally:
            ray.shutdown()
    result["machine"]["load_after"] = os.getloadavg()
    OUT.parent.mkdir(parents=True, exist_ok=True)
    if skip and OUT.is_file():  # keep the sections not measured this time
        old = json.loads(OUT.read_text())
        kept = {k: v for k, v in old.items() if k in ("slowdown", "speed_screen", "kills")}
        for k in kept.keys() - result.keys():
            result[k] = kept[k]
            result.setdefault("kept_from_earlier", {})[k] = old.get("command")
    OUT.write_text(json.dumps(result, indent=1, default=float))
    if "slowdown" in result:
        print("\n| optimiser | compile s | run s | x Adam |\n| --- | --- | --- | --- |")
        for r in result["slowdown"]["rows"]:
            print(
                f"| {r['optimiser']} | {r['compile_s']:.1f} | {r['run_s']:.3f} | "
                f"{r['slowdown']:.2f} |"
            )
    if "kills" in result:
        k = result["kills"]["kills"]
        free = [x["deadline_to_free_evaluator_s"] for x in k]
        print(f"\ndeadline -> free evaluator: {', '.join(f'{x:.1f}' for x in free)} s")
    if "speed_screen" in result and "speed" not in skip:
        print("\n| budget | speed screen s | full after it s (load) | full alone s | overhead |")
        print("| --- | ---: | ---: | ---: | ---: |")
        for name, r in result["speed_screen"].items():
            print(
                f"| {name} | {r['speed_s']:.1f} | {r['full_after_screen_s']:.1f} "
                f"({r['full_load_s']:.1f}) | {r['full_alone_s']:.1f} | {r['overhead']:+.1%} |"
            )
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
