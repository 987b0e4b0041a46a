"""The prepared device check (issue 14): every figure docs/cluster.md's GPU estimate needs,
measured in one run, written as JSON and a Markdown table.

    python benchmarks/device_check.py --out DIR            # on a GPU: <= ~8 min on one H200
    python benchmarks/device_check.py --out DIR --smoke    # CPU, tiny sizes, same code paths

Sections (``--sections``, comma-separated; all by default):

- ``throughput``: PPO (Table 1) on Breakout and SpaceInvaders with Adam, Discovered 1 and
  OPEN (``--open-weights``), 8 / 64 / 512 seeds in one vmapped call each: env steps/s and
  compile seconds (``--updates`` PPO updates per seed; one compile per row).
- ``full``: one candidate (Discovered 1, new code to XLA) at the paper's scale, 4 MinAtar
  games x 8 seeds x 1e7 steps: wall seconds per env and the share spent compiling.
- ``ahead``: compile-ahead off, then on (``evaluator.compile_ahead``): a new candidate's 4
  MinAtar games x ``--full-seeds`` seeds x ``--ahead-steps`` steps through one Ray
  evaluator on the device, all queued at once: wall seconds and the share of the
  evaluator's busy time spent waiting for a compile, before and after.
- ``discovery``: a short offline discovery (offline mutator, one evaluator on the device,
  ``--discovery-steps`` PPO steps per evaluation, compile-ahead as configured by default):
  candidates/hour, utilisation and the compile-wait share.
- ``estimate``: docs/cluster.md's formula fed with the above: t_eval, C (GPU-s per
  candidate), candidates/hour at 8 / 64 / 256 GPUs and GPU-days for 640 candidates; and
  C with compile-ahead (a compile hidden behind the previous evaluation's run).

Never needs the network: OPEN's checkpoint is read from ``--open-weights`` (the repo's
``shared/open/multi_OPEN.npy`` or /work/shared/open/); OPEN rows are skipped, and say so,
if it is absent. Each section has a wall budget; rows past it are recorded as skipped.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import tempfile
import time
import traceback
from pathlib import Path

import rayopt  # noqa: F401  (host devices before JAX starts)

ENVS = ("Breakout-MinAtar", "SpaceInvaders-MinAtar")
MINATAR = ("Asterix-MinAtar", "Breakout-MinAtar", "Freeway-MinAtar", "SpaceInvaders-MinAtar")
OPTIMISERS = ("adam", "discovered_1", "open")
WEIGHTS = ("shared/open/multi_OPEN.npy", "/work/shared/open/multi_OPEN.npy")

#: Tiny PPO for --smoke: same code paths (MinAtar, jitted seeds), seconds per compile.
SMOKE_PPO = dict(num_envs=8, num_steps=16, num_minibatches=2, update_epochs=2)


def _spec(name: str, weights: str | None):
    from rayopt.optim import resolve

    return resolve(name, open_weights=weights)


def throughput(args, out: dict) -> None:
    from rayopt.optim import build
    from rayopt.rl.execution import train_seeds
    from rayopt.rl.ppo import config_for, make_train

    rows = out.setdefault("throughput", [])
    deadline = time.monotonic() + args.budget_throughput_s
    for env in args.envs:
        for opt in args.optimizers:
            for seeds in args.seeds:
                row = dict(env=env, optimizer=opt, seeds=seeds)
                rows.append(row)
                if opt == "open" and not args.open_weights:
                    row["skipped"] = "no OPEN checkpoint (--open-weights)"
                    continue
                if time.monotonic() > deadline:
                    row["skipped"] = "section budget spent"
                    continue
                extra = SMOKE_PPO if args.smoke else {}
                base = config_for(env, **extra)
                steps_per_update = base.num_envs * base.num_steps
                cfg = base.replace(total_timesteps=args.updates * steps_per_update)
                trainer = make_train(cfg, build(_spec(opt, args.open_weights)))
                # --smoke: XLA's fast CPU compile (half the compile, half the speed)
                kw = dict(strategy=args.strategy, fast_compile=args.smoke)
                first = train_seeds(trainer, range(seeds), **kw)
                again = train_seeds(trainer, range(seeds), **kw)
                steps = seeds * cfg.num_updates * steps_per_update
                row.update(
                    compile_s=round(first.compile_s, 2),
                    run_s=round(again.run_s, 3),
                    steps_per_s=round(steps / again.run_s),
                    finite=bool(again.metrics.finite.all()),
                )
                print(f"throughput {row}", flush=True)


def full(args, out: dict) -> None:
    from rayopt.rl.evaluation import evaluate
    from rayopt.rl.ppo import config_for

    extra = SMOKE_PPO if args.smoke else {}
    spec = _spec("discovered_1", None)
    rows, t0 = [], time.perf_counter()
    for env in MINATAR:
        cfg = config_for(env, total_timesteps=int(args.full_steps), **extra)
        # keep=False: compiled afresh, as a new candidate's code always is
        r = evaluate(spec, cfg, range(args.full_seeds), fast_compile=args.smoke, keep=False)
        rows.append(
            dict(
                env=env,
                seeds=args.full_seeds,
                total_timesteps=cfg.num_updates * cfg.num_envs * cfg.num_steps,
                compile_s=round(r.compile_s, 2),
                run_s=round(r.run_s, 2),
                steps_per_s=round(r.env_steps / max(r.run_s, 1e-9)),
                final_return_mean=float(r.final_return.mean()),
            )
        )
        print(f"full {rows[-1]}", flush=True)
    wall = time.perf_counter() - t0
    compile_s = sum(r["compile_s"] for r in rows)
    out["full"] = dict(
        rows=rows,
        wall_s=round(wall, 1),
        compile_s=round(compile_s, 1),
        compile_share=round(compile_s / wall, 3),
    )


def ahead(args, out: dict) -> None:
    """One candidate's envs queued on one evaluator, compile-ahead off then on. Each pass
    compiles afresh: the second pass trains one PPO update more (its programs differ from
    the first's, so not even a persistent compilation cache holds them)."""
    import jax
    import ray

    from rayopt.optim import SYMBOLIC, OptimiserSpec
    from rayopt.rl.ppo import config_for
    from rayopt.search.evaluator import Bounds, EvalTask, EvaluatorActor, EvaluatorPool, actor_env
    from rayopt.search.fleet import init_ray

    gpu = jax.default_backend() != "cpu"
    init_ray(None)
    actor = EvaluatorActor.options(
        num_gpus=1 if gpu else 0,
        num_cpus=1 if gpu else args.ahead_cpus,
        runtime_env={"env_vars": actor_env(1 if gpu else 0, 0 if gpu else args.ahead_cpus)},
    ).remote()
    ray.get(actor.info.remote())  # started (its start-up is not a compile)
    extra = SMOKE_PPO if args.smoke else {}
    envs = MINATAR[: args.ahead_envs]
    rows = []
    try:
        for depth in (0, 1):
            spec = OptimiserSpec(f"do1-ahead{depth}", "symbolic", code=SYMBOLIC["discovered_1"])

            def config(env: str, depth: int = depth):
                base = config_for(env, total_timesteps=int(args.ahead_steps), **extra)
                return base.replace(
                    total_timesteps=(base.num_updates + depth) * base.num_envs * base.num_steps
                )

            tasks = [
                EvalTask(
                    f"ahead{depth}/{env}",
                    spec,
                    config(env),
                    tuple(range(args.full_seeds)),
                    fast_compile=args.smoke,
                    keep=False,
                )
                for env in envs
            ]
            pool = EvaluatorPool([actor], bounds=Bounds(max_slowdown=0), compile_ahead=depth)

            async def run_all(pool=pool, tasks=tasks):
                return await asyncio.gather(*(pool.run(t) for t in tasks))

            t0 = time.perf_counter()
            outs = asyncio.run(run_all())
            wall = time.perf_counter() - t0
            failed = [f"{o.task.key}: {o.error}" for o in outs if not o.ok]
            if failed:
                raise RuntimeError("; ".join(failed))
            rows.append(
                dict(
                    compile_ahead=depth,
                    envs=len(envs),
                    seeds=args.full_seeds,
                    total_timesteps=tasks[0].config.total_timesteps,
                    wall_s=round(wall, 2),
                    compile_s=round(sum(o.compile_s for o in outs), 2),
                    compile_wait_s=round(sum(o.compile_wait_s or 0.0 for o in outs), 2),
                    run_s=round(sum(o.run_s for o in outs), 2),
                    compile_wait_share=round(pool.compile_wait_share(), 4),
                )
            )
            print(f"ahead {rows[-1]}", flush=True)
    finally:
        ray.kill(actor, no_restart=True)
    out["ahead"] = dict(rows=rows, speedup=round(rows[0]["wall_s"] / rows[1]["wall_s"], 3))


def discovery(args, out: dict) -> None:
    import jax

    from rayopt.config import DiscoveryConfig, from_dict
    from rayopt.results.journal import read
    from rayopt.search.driver import Discovery
    from rayopt.search.fleet import init_ray

    gpu = jax.default_backend() != "cpu"
    # Not under --out: the device tool returns at most 8 files from $OUT, and a run
    # directory holds many (journal parts, state); the figures go into the JSON.
    tmp = Path(tempfile.mkdtemp(prefix="rayopt-device-check-"))
    overrides = dict(SMOKE_PPO) if args.smoke else {}
    overrides["total_timesteps"] = int(args.discovery_steps)
    base = {
        "name": "device-check",
        "envs": ["Breakout-MinAtar"],
        "seeds": 2 if args.smoke else 8,
        "progress_s": 30.0,
        "ppo": {"overrides": overrides, "per_env": {}},
        "search": {
            "generations": args.discovery_generations,
            "refinements": 1 if args.smoke else 2,
            "references": [],
        },
        "islands": {"count": 1 if args.smoke else 2, "interval": 1, "migrants": 1},
        "cascade": {"total_timesteps": max(int(args.discovery_steps) // 4, 256)},
        "confirm": {"enabled": False},
        # a fresh compilation cache: a first run's compiles, whatever ran here before
        "evaluator": {"count": 1, "num_gpus": 1 if gpu else 0, "num_cpus": 1,
                      "fast_compile": not gpu, "compile_cache": str(tmp / "xla")},
    }  # fmt: skip
    cfg = from_dict(DiscoveryConfig, base).validate()
    run_dir = tmp / "run"
    init_ray(None)
    d = Discovery.create(cfg, run_dir)
    summary = asyncio.run(d.run())
    df = read(run_dir).to_pandas()
    events = df[df.row_type == "event"]
    evaluated = int((events.event == "evaluated").sum())
    judged = int(events.event.isin(["evaluated", "rejected", "screened_out", "duplicate",
                                    "invalid", "evaluation_failed"]).sum())  # fmt: skip
    evals = df[(df.row_type == "evaluation") & (df.status == "ok")]
    out["discovery"] = dict(
        wall_s=summary["wall_s"],
        utilisation=round(float(summary["evaluator_utilisation"]), 4),
        compile_wait_share=round(float(summary["compile_wait_share"]), 4),
        compile_ahead=summary["compile_ahead"],
        candidates_evaluated=evaluated,
        candidates_judged=judged,
        candidates_per_hour=round(evaluated / max(summary["wall_s"], 1e-9) * 3600, 1),
        compile_s_mean=round(float(evals.compile_s.mean()), 2) if len(evals) else None,
        run_s_mean=round(float(evals.run_s.mean()), 2) if len(evals) else None,
        ppo_total_timesteps=int(args.discovery_steps),
        run_dir=str(run_dir),
    )
    print(f"discovery {out['discovery']}", flush=True)


def estimate(out: dict, paper_steps: float = 1e7, seeds: int = 8) -> None:
    """docs/cluster.md: t_eval(env) = t_compile(env) + S T / R(env, S); C = sum over the 4
    envs; candidates/hour = u G 3600 / C; GPU-days for 640 = 640 C / 86400."""
    full_rows = (out.get("full") or {}).get("rows") or []
    if not full_rows:
        out["estimate"] = dict(skipped="needs the full section")
        return
    t_eval = {r["env"]: r["compile_s"] + seeds * paper_steps / r["steps_per_s"] for r in full_rows}
    c = sum(t_eval.values()) * len(MINATAR) / len(t_eval)
    # compile-ahead: an evaluation's compile runs on host threads while the previous one
    # trains, so in a full queue the device waits only for what the run does not cover
    t_ahead = {
        r["env"]: max(r["compile_s"], seeds * paper_steps / r["steps_per_s"]) for r in full_rows
    }
    c_ahead = sum(t_ahead.values()) * len(MINATAR) / len(t_ahead)
    u = (out.get("discovery") or {}).get("utilisation") or 0.99
    out["estimate"] = dict(
        t_compile_s={r["env"]: r["compile_s"] for r in full_rows},
        r_steps_per_s={r["env"]: r["steps_per_s"] for r in full_rows},
        t_eval_s={k: round(v, 1) for k, v in t_eval.items()},
        candidate_gpu_s=round(c, 1),
        utilisation=u,
        candidates_per_hour={g: round(u * g * 3600 / c, 1) for g in (8, 64, 256)},
        gpu_days_640=round(640 * c / 86400 / u, 3),
        candidate_gpu_s_compile_ahead=round(c_ahead, 1),
        gpu_days_640_compile_ahead=round(640 * c_ahead / 86400 / u, 3),
        note=(
            "from the full section's measured rows (extrapolated to 1e7 steps x 8 seeds "
            "when --full-steps/--full-seeds are smaller)"
        ),
    )


def _table(header: list[str], rows: list[list]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    return out + ["| " + " | ".join(str(c) for c in r) + " |" for r in rows] + [""]


def markdown(out: dict) -> str:
    meta = out["meta"]
    lines = [f"# Device check ({meta['backend']}, {meta['devices']})", ""]
    if out.get("throughput"):
        rows = [
            [r["env"], r["optimizer"], r["seeds"], r.get("compile_s", ""),
             f"{r['steps_per_s']:,}" if "steps_per_s" in r else r.get("skipped", "")]
            for r in out["throughput"]
        ]  # fmt: skip
        lines += _table(["env", "optimiser", "seeds", "compile s", "env steps/s"], rows)
    if out.get("full"):
        f = out["full"]
        lines += [
            f"Full candidate evaluation: wall {f['wall_s']} s, compile {f['compile_s']} s "
            f"({f['compile_share']:.0%}).",
            "",
        ]
        rows = [
            [r["env"], r["seeds"], f"{r['total_timesteps']:,}", r["compile_s"], r["run_s"],
             f"{r['steps_per_s']:,}"]
            for r in f["rows"]
        ]  # fmt: skip
        lines += _table(["env", "seeds", "steps", "compile s", "run s", "env steps/s"], rows)
    if out.get("ahead"):
        a = out["ahead"]
        lines += [f"Compile ahead: wall {a['rows'][0]['wall_s']} s off, {a['rows'][1]['wall_s']} s "
                  f"on ({a['speedup']}x).", ""]  # fmt: skip
        rows = [
            [r["compile_ahead"], r["envs"], r["seeds"], f"{r['total_timesteps']:,}", r["wall_s"],
             r["compile_s"], r["compile_wait_s"], r["run_s"], f"{r['compile_wait_share']:.0%}"]
            for r in a["rows"]
        ]  # fmt: skip
        lines += _table(
            ["compile ahead", "envs", "seeds", "steps", "wall s", "compile s", "compile wait s",
             "run s", "compile wait share"],
            rows,
        )  # fmt: skip
    if out.get("discovery"):
        d = out["discovery"]
        lines += [
            f"Discovery: {d['candidates_evaluated']} candidates evaluated in {d['wall_s']} s "
            f"= {d['candidates_per_hour']} candidates/hour, evaluator utilisation "
            f"{d['utilisation']:.1%}, {d['compile_wait_share']:.0%} of it waiting for compiles "
            f"(compile_ahead {d['compile_ahead']}).",
            "",
        ]
    e = out.get("estimate") or {}
    if "candidate_gpu_s" in e:
        lines += [
            f"Estimate (docs/cluster.md): C = {e['candidate_gpu_s']} GPU-s per candidate; "
            f"candidates/hour {e['candidates_per_hour']} at 8/64/256 GPUs; 640 candidates = "
            f"{e['gpu_days_640']} GPU-days; with compile-ahead C = "
            f"{e['candidate_gpu_s_compile_ahead']} GPU-s, {e['gpu_days_640_compile_ahead']} "
            "GPU-days.",
            "",
        ]
    for name, err in out.get("errors", {}).items():
        lines += [f"Section {name} failed: `{err}`", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=os.environ.get("OUT") or "benchmarks/results/device_check")
    ap.add_argument("--smoke", action="store_true", help="CPU, tiny sizes (< 3 min)")
    ap.add_argument("--sections", default="throughput,full,ahead,discovery,estimate")
    ap.add_argument("--envs", default=",".join(ENVS))
    ap.add_argument("--optimizers", default=",".join(OPTIMISERS))
    ap.add_argument("--seeds", default=None, help="default 8,64,512 (smoke: 2)")
    ap.add_argument("--updates", type=int, default=None, help="default 20 (smoke: 1)")
    ap.add_argument("--strategy", default="auto")
    ap.add_argument("--full-steps", type=float, default=None, help="default 1e7 (smoke: 256)")
    ap.add_argument("--full-seeds", type=int, default=None, help="default 8 (smoke: 2)")
    ap.add_argument("--ahead-steps", type=float, default=None, help="default 1e6 (smoke: 512)")
    ap.add_argument("--ahead-envs", type=int, default=None, help="default 4 (smoke: 2)")
    ap.add_argument("--ahead-cpus", type=int, default=None, help="CPU evaluator's devices")
    ap.add_argument("--discovery-steps", type=float, default=None, help="default 1e6 (smoke 128)")
    ap.add_argument("--discovery-generations", type=int, default=None)
    ap.add_argument("--budget-throughput-s", type=float, default=240.0)
    ap.add_argument("--open-weights", default=None)
    args = ap.parse_args(argv)
    s = args.smoke
    args.envs = args.envs.split(",")
    args.optimizers = args.optimizers.split(",")
    args.seeds = [int(x) for x in (args.seeds or ("2" if s else "8,64,512")).split(",")]
    args.updates = args.updates or (1 if s else 20)
    args.full_steps = args.full_steps or (256 if s else 1e7)
    args.full_seeds = args.full_seeds or (2 if s else 8)
    args.ahead_steps = args.ahead_steps or (512 if s else 1e6)
    args.ahead_envs = args.ahead_envs or (2 if s else len(MINATAR))
    args.ahead_cpus = args.ahead_cpus or max(1, len(os.sched_getaffinity(0)))
    args.discovery_steps = args.discovery_steps or (128 if s else 1e6)
    args.discovery_generations = args.discovery_generations or (1 if s else 3)
    if args.open_weights is None:
        here = Path(__file__).resolve().parent.parent
        found = [p for p in (here / WEIGHTS[0], Path(WEIGHTS[1])) if p.is_file()]
        args.open_weights = str(found[0]) if found else os.environ.get("RAYOPT_OPEN_WEIGHTS")
    if s:
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
    # This process trains on the device before Ray evaluators do (ahead, discovery): it
    # must not take 75 % of the accelerator's memory up front (JAX's default), or they
    # could not start there. Evaluators inherit it and allocate as they go.
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    import jax

    outdir = Path(args.out)
    outdir.mkdir(parents=True, exist_ok=True)
    out: dict = dict(
        meta=dict(
            backend=jax.default_backend(),
            devices=str(jax.devices()),
            jax=jax.__version__,
            machine=platform.machine(),
            smoke=s,
            argv=sys.argv[1:] if argv is None else argv,
            open_weights=args.open_weights,
        )
    )
    t0 = time.perf_counter()
    sections = dict(throughput=throughput, full=full, ahead=ahead, discovery=discovery)
    for name in args.sections.split(","):
        t1 = time.perf_counter()
        try:
            if name == "estimate":
                estimate(out)
            else:
                sections[name](args, out)
        except Exception as err:  # a failed section must not lose the others' figures
            out.setdefault("errors", {})[name] = f"{type(err).__name__}: {err}"
            traceback.print_exc()
        out.setdefault("section_s", {})[name] = round(time.perf_counter() - t1, 1)
        (outdir / "device_check.json").write_text(json.dumps(out, indent=2, default=str))
    out["meta"]["wall_s"] = round(time.perf_counter() - t0, 1)
    (outdir / "device_check.json").write_text(json.dumps(out, indent=2, default=str))
    (outdir / "device_check.md").write_text(markdown(out))
    print(markdown(out))
    return 1 if out.get("errors") else 0


if __name__ == "__main__":
    sys.exit(main())
