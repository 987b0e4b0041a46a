"""The ``rayopt`` command. Each subcommand parses its arguments here and hands over to
the module that owns the concept; imports are lazy so ``rayopt --help`` is instant."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence


def _float_int(text: str) -> int:
    """Accept ``5e5`` and ``500000`` for integer budgets."""
    value = float(text)
    if value != int(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {text}")
    return int(value)


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


# ---------------------------------------------------------------- evaluate
def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="train PPO with named optimisers on named environments and tabulate returns",
        description="Run each optimiser on each environment for S seeds (Table 1 PPO "
        "config of the environment, with the overrides given) and print final return and "
        "AUC, mean and IQM over seeds.",
    )
    p.add_argument("--optimizers", "--optimisers", type=_csv, default=["adam"],
                   help="comma-separated: adam, sign_update, relative_update, gradient_step, "
                   "clipped_update, discovered_1..3, open, or paths to .py files")
    p.add_argument("--envs", default="CartPole-v1",
                   help="comma-separated env ids or aliases (minatar = the four MinAtar games)")
    p.add_argument("--seeds", type=int, default=4, help="number of seeds (0..S-1)")
    p.add_argument("--total-timesteps", type=_float_int, default=None)
    p.add_argument("--hidden-size", type=int, default=None)
    p.add_argument("--activation", choices=["relu", "tanh"], default=None)
    p.add_argument("--num-envs", type=int, default=None)
    p.add_argument("--truncation", choices=["bootstrap", "terminate"], default=None)
    p.add_argument("--open-weights", default=None,
                   help="path to an OPEN checkpoint, e.g. multi_OPEN.npy (default: "
                   "$RAYOPT_OPEN_WEIGHTS; see docs/open.md)")
    p.add_argument("--fast-compile", action="store_true",
                   help="CPU: unoptimised XLA (compiles ~2x faster, runs ~2x slower)")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")
    p.set_defaults(func=_evaluate)


def _evaluate(args: argparse.Namespace) -> int:
    import numpy as np
    from rliable import metrics as rly

    from rayopt.optim import resolve
    from rayopt.rl.envs import parse_envs
    from rayopt.rl.evaluation import evaluate
    from rayopt.rl.ppo import config_for

    overrides = {
        k: v
        for k, v in dict(
            total_timesteps=args.total_timesteps,
            hidden_size=args.hidden_size,
            activation=args.activation,
            num_envs=args.num_envs,
            truncation=args.truncation,
        ).items()
        if v is not None
    }
    try:
        specs = [resolve(o, open_weights=args.open_weights) for o in args.optimizers]
        for spec in specs:
            if spec.kind == "open":  # a bad checkpoint fails now, not after the other runs
                from rayopt.optim.open import load_open_params

                load_open_params(spec.weights or "")
    except (ValueError, FileNotFoundError) as err:
        print(f"rayopt evaluate: error: {err}", file=sys.stderr)
        return 2
    envs = parse_envs(args.envs)
    rows = []
    for spec in specs:
        for env in envs:
            r = evaluate(spec, config_for(env, **overrides), range(args.seeds),
                         fast_compile=args.fast_compile)
            fr, auc = np.asarray(r.final_return, float), np.asarray(r.auc, float)
            rows.append(
                dict(
                    optimizer=spec.name,
                    env=env,
                    seeds=args.seeds,
                    final_mean=float(np.nanmean(fr)),
                    final_iqm=float(rly.aggregate_iqm(fr[:, None])),
                    auc_mean=float(np.nanmean(auc)),
                    auc_iqm=float(rly.aggregate_iqm(auc[:, None])),
                    finite=bool(np.all(r.finite)),
                    final_return=fr.tolist(),
                    compile_s=round(r.compile_s, 2),
                    run_s=round(r.run_s, 2),
                    steps_per_s=round(r.env_steps / r.run_s),
                )
            )
            if not args.json:
                print(_row(rows[-1], header=len(rows) == 1), flush=True)
    if args.json:
        print(json.dumps(rows, indent=2))
    return 0


def _row(r: dict, header: bool) -> str:
    cols = ("optimizer", "env", "final_mean", "final_iqm", "auc_mean", "auc_iqm", "finite",
            "compile_s", "run_s")
    widths = (16, 24, 11, 10, 9, 8, 7, 10, 8)
    fmt = lambda v: f"{v:.2f}" if isinstance(v, float) else str(v)  # noqa: E731
    line = "".join(f"{fmt(r[c]):>{w}}" if i > 1 else f"{fmt(r[c]):<{w}}"
                   for i, (c, w) in enumerate(zip(cols, widths)))
    if not header:
        return line
    head = "".join(f"{c:>{w}}" if i > 1 else f"{c:<{w}}" for i, (c, w) in enumerate(zip(cols, widths)))
    return f"{head}\n{line}"


# ---------------------------------------------------------------- discover
def _add_discover(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "discover",
        help="run an LLM-guided (or offline) optimiser discovery on Ray",
        description="Discover optimisers: islands of archives on Ray, mutators proposing code, "
        "evaluators training PPO, every evaluation a Parquet row. Without --config, runs the "
        "embedded quickstart (local Ray, offline mutator, tiny budgets).",
    )
    p.add_argument("--config", help="YAML config (see configs/); defaults are the quickstart")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its journal")
    p.add_argument("--run-dir", help="where to write the run (default: OUT_DIR/NAME)")
    p.add_argument("--meta-seeds", type=lambda t: [int(x) for x in _csv(t)],
                   help="independent searches side by side, e.g. 0,1,2")
    p.add_argument("--address", help="Ray cluster to attach to: auto (this machine's "
                   "cluster), host:6379, ray://host:10001; default: the config's, else "
                   "RAY_ADDRESS or a local instance. Allowed with --resume (a resumed run "
                   "may be on a new cluster)")
    p.add_argument("--open-weights", help="OPEN checkpoint, for OPEN's reference rank in reports")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="config overrides, e.g. search.generations=5 islands.count=4")
    p.set_defaults(func=_discover)


def _discover(args: argparse.Namespace) -> int:
    import asyncio

    from rayopt.config import ConfigError, load_discovery
    from rayopt.search.driver import Discovery, init_ray

    try:
        if args.resume:
            if args.config or args.overrides or args.meta_seeds:
                raise ConfigError("--resume takes the run's own config; drop --config and overrides")
            discovery = Discovery.load(args.resume)
        else:
            overrides = list(args.overrides)
            if args.meta_seeds:
                overrides.append(f"meta_seeds={args.meta_seeds}")
            if args.address:
                overrides.append(f"address={args.address}")
            config = load_discovery(args.config, overrides)
            discovery = Discovery.create(config, args.run_dir)
    except (ConfigError, FileExistsError, FileNotFoundError) as err:
        print(f"rayopt discover: {err}", file=sys.stderr)
        return 2
    init_ray(args.address or discovery.config.address)
    print(f"run directory: {discovery.run_dir}", flush=True)
    summary = asyncio.run(discovery.run())
    print(json.dumps(summary, indent=2, default=str))
    return 0


# ---------------------------------------------------------------- check
def _add_check(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "check",
        help="validate an untrusted update_fn file: static checks, literal audit, hash, "
        "sandboxed dry run",
        description="Check FILE.py as the search checks LLM-written optimisers: static "
        "allowlist validation, the literal audit and canonical hash, then (unless "
        "--no-dry-run) a dry run in a sandboxed worker process. Exit status 0 if the "
        "program is valid, 1 if not.",
    )
    p.add_argument("file", help="a .py file defining update_fn")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--no-dry-run", dest="dry_run", action="store_false",
                   help="static checks only (nothing is executed)")
    p.add_argument("--timeout", type=float, default=10.0,
                   help="seconds allowed for tracing, compiling and running (default 10)")
    p.set_defaults(func=_check)


def _check(args: argparse.Namespace) -> int:
    from pathlib import Path

    from rayopt.program import check

    result = check(Path(args.file).read_text(), dry_run=args.dry_run, timeout=args.timeout)
    if args.json:
        out = result.to_dict()
        if not result.ok:  # the audit of a rejected program is not part of the contract
            out = {k: out[k] for k in ("ok", "kind", "line", "message", "hash")}
        print(json.dumps(out))
    elif result.ok:
        print(f"ok  hash {result.hash}  fingerprint {result.fingerprint or '-'}")
        tunable = set(result.tunable)
        for value, line in result.literals:
            mark = "tunable" if (value, line) in tunable else ""
            print(f"  line {line:>3}  {value!r:<12} {mark}")
        print(f"{len(result.literals)} literals, {result.tunable_count} tunable")
    else:
        print(f"error: {result.error}")
    return 0 if result.ok else 1


# ---------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    from rayopt import __version__

    parser = argparse.ArgumentParser(
        prog="rayopt",
        description="Discover hyperparameter-free optimisers for RL, on Ray.",
    )
    parser.add_argument("--version", action="version", version=f"rayopt {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_discover(sub)
    _add_evaluate(sub)
    _add_check(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
