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


def _seeds(text: str) -> tuple[int, int | None]:
    """``--seeds``: (count, first seed or None for the default)."""
    from rayopt.analysis.sweep import parse_seeds

    try:
        return parse_seeds(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


# ---------------------------------------------------------------- evaluate
def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="train PPO with named optimisers on named environments: a quick local table, "
        "or a resumable generalisation sweep on Ray",
        description="Run each optimiser on each environment for S seeds (Table 1 PPO "
        "config of the environment, with the overrides given). With only flags, trains "
        "locally and prints final return and AUC, mean and IQM over seeds. With --config, "
        "--out, --axis or key=value overrides, runs a sweep on Ray evaluators, journals "
        "every seed to OUT/journal (stage=sweep; re-running skips what is done) and prints "
        "IQM with 95%% bootstrap CIs (see docs/analysis.md).",
    )
    p.add_argument("--config", help="sweep YAML (see configs/sweeps/)")
    p.add_argument("--out", help="sweep output directory (default runs/NAME)")
    p.add_argument("--name", help="sweep name (default: the config's, else 'sweep')")
    p.add_argument("--address", help="Ray cluster address; default: a local Ray instance")
    p.add_argument(
        "--axis",
        choices=["none", "total_timesteps", "hidden_size", "activation", "env"],
        help="sweep one PPO setting (values from --values)",
    )
    p.add_argument("--values", type=_csv, help="axis values, e.g. 16,64,256 or 1e6,1e7")
    p.add_argument(
        "--optimizers",
        "--optimisers",
        type=_csv,
        default=None,
        help="comma-separated: adam, sign_update, relative_update, gradient_step, "
        "clipped_update, discovered_1..3, open, paths to .py files, or candidates "
        "of a discovery run: run:DIR@top3, run:DIR@ms0/top3, run:DIR@CANDIDATE "
        "(default adam)",
    )
    p.add_argument(
        "--envs",
        default=None,
        help="comma-separated env ids or aliases (minatar = the four MinAtar games; "
        "default CartPole-v1)",
    )
    p.add_argument(
        "--seeds",
        type=_seeds,
        default=None,
        help="seeds: a count S (seeds 0..S-1; default 4) or a range LOW-HIGH, e.g. 100-115 "
        "(held-out seeds for candidates of a finished discovery)",
    )
    p.add_argument("--total-timesteps", type=_float_int, default=None)
    p.add_argument("--hidden-size", type=int, default=None)
    p.add_argument("--activation", choices=["relu", "tanh"], default=None)
    p.add_argument("--num-envs", type=int, default=None)
    p.add_argument("--truncation", choices=["bootstrap", "terminate"], default=None)
    p.add_argument(
        "--open-weights",
        default=None,
        help="path to an OPEN checkpoint, e.g. multi_OPEN.npy (default: "
        "$RAYOPT_OPEN_WEIGHTS; see docs/open.md)",
    )
    p.add_argument(
        "--fast-compile",
        action="store_true",
        default=None,
        help="CPU: unoptimised XLA (compiles ~2x faster, runs ~2x slower)",
    )
    p.add_argument("--reps", type=int, default=2000, help="bootstrap replicates for sweep CIs")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="sweep config overrides, e.g. seeds=16 values=[16,64,256] "
        "ppo.overrides.total_timesteps=1e6",
    )
    p.set_defaults(func=_evaluate)


def _ppo_flags(args: argparse.Namespace) -> dict:
    return {
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


def _evaluate(args: argparse.Namespace) -> int:
    if args.config or args.out or args.axis or args.overrides or args.name or args.address:
        return _sweep(args)
    return _evaluate_local(args)


def _sweep(args: argparse.Namespace) -> int:
    from rayopt.analysis import stats
    from rayopt.analysis.sweep import load_sweep, sweep
    from rayopt.config import ConfigError

    flags = []
    for key, value in [
        ("name", args.name),
        ("optimizers", args.optimizers),
        ("envs", _csv(args.envs) if args.envs else None),
        ("seeds", args.seeds[0] if args.seeds else None),
        ("seed_offset", args.seeds[1] if args.seeds else None),  # None: not given
        ("axis", args.axis),
        ("values", args.values),
        ("open_weights", args.open_weights),
        ("address", args.address),
        ("fast_compile", args.fast_compile),
    ]:
        if value is not None:
            flags.append(f"{key}={json.dumps(value)}")
    flags += [f"ppo.overrides.{k}={json.dumps(v)}" for k, v in _ppo_flags(args).items()]
    try:
        cfg = load_sweep(args.config, [*flags, *args.overrides])
        out = args.out or f"runs/{cfg.name}"
        stream = sys.stderr if args.json else sys.stdout  # --json: stdout is the JSON
        summary = sweep(cfg, out, log=lambda m: print(m, file=stream, flush=True))
    except (ConfigError, ValueError, FileNotFoundError, ConnectionError) as err:
        print(f"rayopt evaluate: error: {err}", file=sys.stderr)
        return 2
    table = stats.iqm_table(stats.load_scores(out, sweeps=[cfg.name]), reps=args.reps)
    if args.json:
        print(
            json.dumps(
                dict(summary=summary, iqm=table.to_dict(orient="records")), indent=2, default=str
            )
        )
    else:
        print(stats.to_text(stats.iqm_display(table)), end="")
        for line in stats.small_n_legend(table["n"]):
            print(line)
        print(json.dumps(summary))
    return 0 if summary.get("failed", 0) == 0 else 1


def _evaluate_local(args: argparse.Namespace) -> int:
    from rayopt.optim import resolve
    from rayopt.optim.open import check_open_weights
    from rayopt.rl.envs import parse_envs
    from rayopt.rl.evaluation import evaluate
    from rayopt.rl.ppo import config_for

    optimizers = args.optimizers or ["adam"]
    count, offset = args.seeds or (4, None)
    seeds = list(range(offset or 0, (offset or 0) + count))
    overrides = _ppo_flags(args)
    try:  # a bad OPEN checkpoint fails now, not after the other runs
        specs = [check_open_weights(resolve(o, open_weights=args.open_weights)) for o in optimizers]
        envs = parse_envs(args.envs or "CartPole-v1")
        configs = {env: config_for(env, **overrides) for env in envs}
    except (ValueError, FileNotFoundError) as err:
        print(f"rayopt evaluate: error: {err}", file=sys.stderr)
        return 2
    table = QuickTable([s.name for s in specs], envs)
    rows = []
    for spec in specs:
        for env in envs:
            r = evaluate(spec, configs[env], seeds, fast_compile=bool(args.fast_compile))
            rows.append(
                dict(
                    optimizer=spec.name,
                    env=env,
                    seeds=f"{seeds[0]}-{seeds[-1]}" if len(seeds) > 1 else str(seeds[0]),
                    **quick_scores(r.final_return, r.auc),
                    finite=bool(all(r.finite)),
                    compile_s=round(r.compile_s, 2),
                    run_s=round(r.run_s, 2),
                    steps_per_s=round(r.env_steps / r.run_s),
                )
            )
            if not args.json:
                print(table.line(rows[-1], header=len(rows) == 1), flush=True)
    if args.json:
        print(json.dumps(rows, indent=2))
    elif len(seeds) < 4:
        print(f"note: {len(seeds)} seeds: the IQM trims nothing below 4 seeds (it is the mean)")
    return 0


def quick_scores(final_return: Sequence[float], auc: Sequence[float]) -> dict:
    """Mean and IQM of the seeds' final return and AUC for the quick table: NaN seeds (no
    finished episode, or diverged) are left out of both and counted in ``nan``, as the
    analysis does (``stats.iqm_table``'s ``n_nan``)."""
    import math

    import numpy as np

    from rayopt.analysis.stats import iqm_per_column

    out: dict = {}
    fr = np.asarray(final_return, float)
    out["nan"] = int((~np.isfinite(fr)).sum())
    for name, v in (("final", fr), ("auc", np.asarray(auc, float))):
        v = v[np.isfinite(v)]
        out[f"{name}_mean"] = float(v.mean()) if v.size else math.nan
        out[f"{name}_iqm"] = float(iqm_per_column(v[:, None])[0]) if v.size else math.nan
    out["final_return"] = [float(x) for x in fr]
    return out


class QuickTable:
    """The quick table of ``rayopt evaluate``, printed a row at a time: the name columns
    are as wide as the longest name to come, every column is as wide as its header or
    its values, and columns are always two spaces apart."""

    COLUMNS = (
        "optimizer",
        "env",
        "seeds",
        "nan",
        "final_mean",
        "final_iqm",
        "auc_mean",
        "auc_iqm",
        "finite",
        "compile_s",
        "run_s",
    )
    LEFT = ("optimizer", "env", "seeds")

    def __init__(self, optimizers: Sequence[str], envs: Sequence[str]) -> None:
        self.widths = {c: max(len(c), 8) for c in self.COLUMNS}
        self.widths["optimizer"] = max([len("optimizer"), *map(len, optimizers)])
        self.widths["env"] = max([len("env"), *map(len, envs)])
        self.widths["nan"] = len("nan")

    @staticmethod
    def _fmt(v: object) -> str:
        return f"{v:.2f}" if isinstance(v, float) else str(v)

    def _join(self, cells: dict) -> str:
        out = []
        for c in self.COLUMNS:
            w = self.widths[c] = max(self.widths[c], len(cells[c]))
            out.append(cells[c].ljust(w) if c in self.LEFT else cells[c].rjust(w))
        return "  ".join(out).rstrip()

    def line(self, row: dict, header: bool = False) -> str:
        cells = {c: self._fmt(row[c]) for c in self.COLUMNS}
        line = self._join(cells)
        return f"{self._join({c: c for c in self.COLUMNS})}\n{line}" if header else line


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
    p.add_argument(
        "--meta-seeds",
        type=lambda t: [int(x) for x in _csv(t)],
        help="independent searches side by side, e.g. 0,1,2",
    )
    p.add_argument(
        "--address",
        help="Ray cluster to attach to: auto (this machine's "
        "cluster), host:6379, ray://host:10001; default: the config's, else "
        "RAY_ADDRESS or a local instance. Allowed with --resume (a resumed run "
        "may be on a new cluster)",
    )
    p.add_argument(
        "--open-weights",
        help="OPEN checkpoint (multi_OPEN.npy): needed when search.references has open. "
        "Allowed with --resume (the checkpoint may have moved)",
    )
    p.add_argument("--json", action="store_true", help="print the summary as JSON at the end")
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="config overrides, e.g. search.generations=5 islands.count=4",
    )
    p.set_defaults(func=_discover)


def _discover(args: argparse.Namespace) -> int:
    import asyncio

    from rayopt.config import ConfigError, load_discovery
    from rayopt.search import preflight
    from rayopt.search.driver import Discovery
    from rayopt.search.fleet import init_ray

    # JSON is YAML: a path stays a string whatever it looks like ("null", "~", "1e3")
    weights = [f"open_weights={json.dumps(args.open_weights)}"] if args.open_weights else []
    try:  # everything that can be known before Ray starts: the config, keys, directories
        if args.resume:
            if args.config or args.overrides or args.meta_seeds:
                raise ConfigError(
                    "--resume takes the run's own config; drop --config and overrides"
                )
            discovery = Discovery.load(args.resume, overrides=weights)
            config = discovery.config
            preflight.check_static(config, args.resume)
            preflight.check_resume(config, args.resume)
        else:
            overrides = list(args.overrides)
            if args.meta_seeds:
                overrides.append(f"meta_seeds={args.meta_seeds}")
            if args.address:
                overrides.append(f"address={args.address}")
            overrides += weights
            config = load_discovery(args.config, overrides)
            preflight.check_static(config, args.run_dir)
            if args.run_dir is not None and Discovery.holds_run(args.run_dir):
                raise FileExistsError(
                    f"{args.run_dir} already holds a run: resume it with --resume {args.run_dir}"
                )
        # then Ray, and whether an evaluator fits, before any actor starts
        init_ray(args.address or config.address)
        preflight.check_cluster(config)
        if not args.resume:
            discovery = Discovery.create(config, args.run_dir)
    except (ConfigError, FileExistsError, FileNotFoundError, ConnectionError) as err:
        print(f"rayopt discover: {err}", file=sys.stderr)
        return 2
    from rayopt.search.summary import text

    print(f"run directory: {discovery.run_dir}", flush=True)
    summary = asyncio.run(discovery.run())
    if args.json:
        print(json.dumps(summary, indent=2, default=str))
    else:
        print("\n" + text(discovery.config, summary, discovery.heldout_text), end="")
    return 0


# ---------------------------------------------------------------- confirm
def _add_confirm(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "confirm",
        help="re-evaluate a finished discovery's best candidates, its initial optimisers and "
        "the references on held-out seeds",
        description="Held-out confirmation of a discovery run (what `rayopt discover` does at "
        "the end when confirm.enabled): the confirm.top_k best discovered candidates of each "
        "meta-seed, every initial optimiser and the references, trained at the run's full "
        "budget on every env, on confirm.seeds fresh seeds from confirm.seed_offset. Rows go "
        "to the run's journal (stage confirm; re-running skips what is done); prints held-out "
        "IQM with 95%% CIs and P(best discovered > best initial / Adam).",
    )
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--top", type=int, help="discovered candidates per meta-seed (confirm.top_k)")
    p.add_argument("--seeds", type=_seeds, help="held-out seeds: a count, or LOW-HIGH (1000-1015)")
    p.add_argument("--address", help="Ray cluster address (default: the run's, else local)")
    p.add_argument("--json", action="store_true", help="print the held-out summary as JSON")
    p.add_argument("overrides", nargs="*", metavar="confirm.key=value")
    p.set_defaults(func=_confirm)


def _confirm(args: argparse.Namespace) -> int:
    from rayopt.analysis import heldout
    from rayopt.config import ConfigError
    from rayopt.search.confirm import confirm_finished

    overrides = list(args.overrides)
    if args.top is not None:
        overrides.append(f"confirm.top_k={args.top}")
    if args.seeds is not None:
        n, offset = args.seeds
        overrides.append(f"confirm.seeds={n}")
        if offset is not None:
            overrides.append(f"confirm.seed_offset={offset}")
    stream = sys.stderr if args.json else sys.stdout
    try:
        confirm_finished(
            args.run_dir, overrides, args.address, log=lambda m: print(m, file=stream, flush=True)
        )
    except (ConfigError, ValueError, FileNotFoundError, ConnectionError) as err:
        print(f"rayopt confirm: {err}", file=sys.stderr)
        return 2
    held = heldout.load(args.run_dir)
    if held is None:
        print("rayopt confirm: nothing was confirmed", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(held.summary(), indent=2, default=str))
    else:
        print(heldout.text(held), end="")
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
    p.add_argument(
        "--no-dry-run",
        dest="dry_run",
        action="store_false",
        help="static checks only (nothing is executed)",
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=10.0,
        help="seconds allowed for tracing, compiling and running (default 10)",
    )
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


# ---------------------------------------------------------------- analyze
def _add_analyze(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "analyze",
        aliases=["analyse"],
        help="statistics, plots and an HTML report from discovery runs and sweeps",
        description="Read the journals of discovery runs and/or sweeps (any number, "
        "meta-seeds pooled where they meet) and write: IQM with 95%% stratified bootstrap "
        "CIs per optimiser x env x axis value, probability of improvement for pairs, "
        "performance profiles, the meta-training curve (Fig. 2), plots like Figs. 2-6 "
        "(PNG and SVG), CSV and Markdown tables and report.html. See docs/analysis.md.",
    )
    p.add_argument("paths", nargs="+", metavar="PATH", help="run or sweep directories")
    p.add_argument(
        "--out", help="output directory (default: PATH/analysis for one PATH, else ./analysis)"
    )
    p.add_argument(
        "--pairs",
        help="P(X > Y) pairs, e.g. discovered_1:adam,discovered_2:adam "
        "(default: every optimiser against adam)",
    )
    p.add_argument("--metric", choices=["final_return", "auc"], default="final_return")
    p.add_argument("--reps", type=int, default=2000, help="bootstrap replicates for IQM CIs")
    p.add_argument(
        "--poi-reps",
        type=int,
        default=0,
        help="bootstrap replicates for P(X > Y) CIs (default 0: point estimates "
        "only; each replicate costs ~1 ms per env and pair)",
    )
    p.add_argument(
        "--profile-reps",
        type=int,
        default=100,
        help="bootstrap replicates for performance-profile bands",
    )
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    p.add_argument("--top", type=int, default=3, help="best candidates shown per meta-seed")
    p.add_argument("--no-plots", dest="plots", action="store_false", help="tables only")
    p.add_argument(
        "--jobs",
        type=int,
        default=None,
        help="processes (default 2 if there are 2 CPUs: figures are drawn in a "
        "second process while the statistics run; 1: all in this process)",
    )
    p.add_argument("--quiet", action="store_true", help="no tables on the console")
    p.set_defaults(func=_analyze)


def _analyze(args: argparse.Namespace) -> int:
    from rayopt.analysis.report import AnalysisOptions, analyze

    opts = AnalysisOptions(
        metric=args.metric,
        reps=args.reps,
        poi_reps=args.poi_reps,
        profile_reps=args.profile_reps,
        seed=args.seed,
        top=args.top,
        plots=args.plots,
        pairs=args.pairs,
    )
    if args.jobs is not None:
        opts.jobs = max(1, args.jobs)
    out = args.out or (
        f"{args.paths[0].rstrip('/')}/analysis" if len(args.paths) == 1 else "analysis"
    )
    try:
        result = analyze(args.paths, out, opts, echo=not args.quiet)
    except (FileNotFoundError, ValueError) as err:
        print(f"rayopt analyze: error: {err}", file=sys.stderr)
        return 2
    print(f"report: {result.report}")
    print("timings (s): " + json.dumps(result.timings))
    return 0


# ---------------------------------------------------------------- compact
def _add_compact(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compact",
        help="merge a run's journal part files into one (safe while it runs)",
        description="Merge the Parquet part files of each run's journal into one file; readers "
        "never see a row twice meanwhile. Discovery and sweeps do this when they end.",
    )
    p.add_argument("runs", nargs="+", metavar="RUN_DIR")
    p.set_defaults(func=_compact)


def _compact(args: argparse.Namespace) -> int:
    from rayopt.results.journal import compact

    for run in args.runs:
        print(f"{run}: merged {compact(run)} files")
    return 0


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
    _add_confirm(sub)
    _add_analyze(sub)
    _add_check(sub)
    _add_compact(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
