"""Generalisation sweeps (paper §7-8): optimisers x environments x one swept PPO setting
x seeds, trained on Ray evaluators and journalled like discovery (stage ``sweep``).

A sweep is resumable: an (optimizer, env, axis value, seed) that already has an ``ok``,
``nonfinite``, ``timeout`` or ``memory`` row for this sweep in the output directory is not
trained again (failed ones are retried; a timeout never is). Evaluations are bounded as in
discovery (``evaluator.max_slowdown``, docs/program.md). Rows carry ``sweep``, ``axis``,
``axis_value`` and the axis columns (``total_timesteps``, ``hidden_size``,
``activation``, ``env``), so analysis needs nothing but the journal. See docs/analysis.md.

Optimisers are named as ``rayopt evaluate`` always named them (``adam``, ``open``,
``discovered_1``, a ``.py`` file), or taken from a discovery run:

- ``run:DIR@top3``: the 3 best discovered candidates of the run by average rank, all
  meta-seeds pooled (candidates of every meta-seed ranked together: same envs, same
  budget, so their scores are comparable);
- ``run:DIR@ms1/top3``: the 3 best of meta-seed 1 (ranked in that meta-seed's population);
- ``run:DIR@CANDIDATE`` or ``run:DIR@ms1/CANDIDATE``: one candidate (``ref-adam`` too).

A run candidate is named ``<run_id>/<candidate_id>`` (e.g. ``quickstart-ms0/i1-g3-s1``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib.util
import json
import math
import os
import re
import time
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

import numpy as np
import pyarrow.compute as pc
import yaml

from rayopt.config import ConfigError, EvaluatorSection, evaluator_checks, load, to_dict
from rayopt.optim import OptimiserSpec, resolve
from rayopt.rl.envs import REGISTRY, parse_envs
from rayopt.rl.ppo import PPOConfig, config_for

if TYPE_CHECKING:
    from rayopt.analysis.population import Population

AXES = ("none", "total_timesteps", "hidden_size", "activation", "env")
#: Row statuses a resumed sweep never trains again: results, and the bounded ends (an
#: evaluation stopped at its deadline or over the memory budget would end so again).
DECIDED = ("ok", "nonfinite", "timeout", "memory")
#: the in-distribution value of each PPO axis when neither the config nor Table 1 says
IN_DISTRIBUTION = {"total_timesteps": 10_000_000, "hidden_size": 64, "activation": "relu"}


# ------------------------------------------------------------------ config
@dataclasses.dataclass
class SweepPPO:
    """PPO settings on top of each env's Table 1 column: ``overrides`` for every env,
    ``per_env`` for one. The swept axis is applied last."""

    overrides: dict[str, Any] = dataclasses.field(default_factory=dict)
    per_env: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class SweepConfig:
    """One sweep: ``optimizers`` x ``envs`` x ``values`` of ``axis`` x ``seeds``.

    ``axis``: ``total_timesteps`` | ``hidden_size`` | ``activation`` (``values`` lists
    the settings), ``env`` (the envs are the axis; no ``values``) or ``none`` (one point).
    ``in_distribution``: where plots draw the dashed line (default: Table 1's value).
    """

    name: str = "sweep"
    optimizers: list[str] = dataclasses.field(default_factory=lambda: ["adam"])
    envs: list[str] = dataclasses.field(default_factory=lambda: ["CartPole-v1"])
    seeds: int = 4
    seed_offset: int = 0  # seeds are seed_offset .. seed_offset + seeds - 1 (held-out seeds)
    axis: Literal["none", "total_timesteps", "hidden_size", "activation", "env"] = "none"
    values: list[Any] = dataclasses.field(default_factory=list)
    in_distribution: Any = None
    ppo: SweepPPO = dataclasses.field(default_factory=SweepPPO)
    fast_compile: bool = False  # CPU: unoptimised XLA; only for tiny budgets
    open_weights: str | None = None
    address: str | None = None  # Ray address; None starts a local instance
    skip_missing_envs: bool = True  # drop Craftax (with a note) when its extra is absent
    seeds_per_task: int = 0  # 0: all seeds of a point in one evaluation
    max_eval_attempts: int = 3
    evaluator: EvaluatorSection = dataclasses.field(default_factory=EvaluatorSection)
    # the journal stage of its rows: sweep, or confirm (a discovery's held-out check)
    stage: Literal["sweep", "confirm"] = "sweep"

    @property
    def seed_list(self) -> list[int]:
        return list(range(self.seed_offset, self.seed_offset + self.seeds))

    def validate(self) -> SweepConfig:
        """Names exist, values fit the axis, every PPO config builds."""
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", self.name):
            raise ConfigError(f"name: {self.name!r} must be letters, digits, '_', '.', '-'")
        if not self.optimizers:
            raise ConfigError("optimizers must not be empty")
        if self.seeds < 1:
            raise ConfigError("seeds must be >= 1")
        if self.seed_offset < 0:
            raise ConfigError("seed_offset must be >= 0")
        if self.seeds_per_task < 0 or self.max_eval_attempts < 1:
            raise ConfigError("seeds_per_task must be >= 0 and max_eval_attempts >= 1")
        for ok, message in evaluator_checks(self.evaluator):
            if not ok:
                raise ConfigError(message)
        try:
            envs = list(parse_envs(self.envs))
        except ValueError as err:
            raise ConfigError(f"envs: {err}") from None
        self.envs = [e for e in envs if self._available(e)]
        if not self.envs:
            raise ConfigError("envs: none of the environments is available")
        self.values = normalise_values(self.axis, self.values)
        if self.in_distribution is not None and self.axis in IN_DISTRIBUTION:
            self.in_distribution = normalise_values(self.axis, [self.in_distribution])[0]
        fields = {f.name for f in dataclasses.fields(PPOConfig)} - {"env"}
        for where, d in [
            ("ppo.overrides", self.ppo.overrides),
            *((f"ppo.per_env.{k}", v) for k, v in self.ppo.per_env.items()),
        ]:
            unknown = set(d) - fields
            if unknown:
                raise ConfigError(f"{where}: unknown PPO setting(s) {sorted(unknown)}")
            if self.axis in d:
                raise ConfigError(f"{where}: {self.axis} is the swept axis; set it in values")
        for value, env in self.points():
            try:
                self.ppo_config(env, value)
            except (TypeError, ValueError) as err:
                raise ConfigError(f"PPO config for {env} at {self.axis}={value}: {err}") from None
        return self

    def _available(self, env: str) -> bool:
        if REGISTRY[env].preset != "craftax" or importlib.util.find_spec("craftax") is not None:
            return True
        if not self.skip_missing_envs:
            raise ConfigError(f"envs: {env} needs an optional extra: pip install 'rayopt[craftax]'")
        print(f"note: skipping {env} (not installed: pip install 'rayopt[craftax]')", flush=True)
        return False

    def points(self) -> list[tuple[str | None, str]]:
        """(axis value as journalled, env) for every point of the sweep."""
        if self.axis == "none":
            return [(None, env) for env in self.envs]
        if self.axis == "env":
            return [(env, env) for env in self.envs]
        return [(str(v), env) for v in self.values for env in self.envs]

    def ppo_config(self, env: str, value: str | None) -> PPOConfig:
        """Table 1 for ``env``, then ``ppo.overrides``, ``ppo.per_env``, the axis value."""
        overrides = {**self.ppo.overrides, **self.ppo.per_env.get(env, {})}
        if self.axis in IN_DISTRIBUTION and value is not None:
            overrides[self.axis] = value if self.axis == "activation" else int(value)
        return config_for(env, **overrides)

    def in_distribution_for(self, env: str) -> Any:
        """The in-distribution value of the axis for ``env`` (for the dashed line)."""
        return in_distribution(self.axis, env, self.in_distribution)


def in_distribution(axis: str | None, env: str, configured: Any = None) -> Any:
    """``configured`` if set, else Table 1's value for ``env`` (64, relu, 1e7 MinAtar)."""
    if configured is not None or axis not in IN_DISTRIBUTION:
        return configured
    try:
        return getattr(config_for(env), axis)
    except (KeyError, ValueError):  # not a registered env (synthetic data)
        return IN_DISTRIBUTION[axis]


def seed_range(seeds: Sequence[int]) -> str:
    """``0-7`` for a contiguous range, else the list."""
    seeds = list(seeds)
    if seeds and seeds == list(range(seeds[0], seeds[0] + len(seeds))):
        return f"seed {seeds[0]}" if len(seeds) == 1 else f"seeds {seeds[0]}-{seeds[-1]}"
    return "seeds " + ",".join(map(str, seeds))


def parse_seeds(text: str) -> tuple[int, int | None]:
    """``--seeds`` text as (count, first seed or None): ``8`` is 8 seeds (0-7 unless an
    offset is set elsewhere), ``100-115`` seeds 100 to 115 (held-out seeds)."""
    text = str(text).strip()
    if "-" in text.lstrip("-"):
        lo, hi = (int(x) for x in text.split("-", 1))
        if lo < 0 or hi < lo:
            raise ValueError(f"seed range {text!r}: expected LOW-HIGH with 0 <= LOW <= HIGH")
        return hi - lo + 1, lo
    n = int(text)
    if n < 1:
        raise ValueError(f"--seeds {text!r}: need at least one seed")
    return n, None


def normalise_values(axis: str, values: Sequence[Any]) -> list[Any]:
    """Axis values as the types PPOConfig wants (``1e6`` -> 1000000), checked."""
    if axis in ("none", "env"):
        if values:
            raise ConfigError(f"values: axis {axis!r} takes no values (envs are the axis)")
        return []
    if not values:
        raise ConfigError(f"values: axis {axis!r} needs a list of values")
    out: list[Any] = []
    for v in values:
        if axis == "activation":
            if v not in ("relu", "tanh"):
                raise ConfigError(f"values: activation must be relu or tanh, not {v!r}")
            out.append(v)
            continue
        try:
            f = float(v)
        except (TypeError, ValueError):
            raise ConfigError(f"values: {axis} needs numbers, got {v!r}") from None
        if f != int(f) or f <= 0:
            raise ConfigError(f"values: {axis} needs positive whole numbers, got {v!r}")
        out.append(int(f))
    if len(set(out)) != len(out):
        raise ConfigError(f"values: repeated value in {out}")
    return out


def load_sweep(path: str | os.PathLike | None = None, overrides: Sequence[str] = ()) -> SweepConfig:
    """Defaults, then the YAML at ``path`` (``extends:`` as for discovery configs), then
    ``key=value`` overrides; validated."""
    return load(SweepConfig, path, list(overrides)).validate()


# ------------------------------------------------------------------ optimisers
@dataclasses.dataclass(frozen=True)
class SweepOptimizer:
    """An optimiser of a sweep: its journal name, its spec, and where it came from."""

    name: str
    spec: OptimiserSpec
    source: dict[str, Any] = dataclasses.field(default_factory=dict, hash=False, compare=False)


_RUN = re.compile(r"^run:(?P<dir>.+)@(?:ms(?P<ms>-?\d+)/)?(?P<sel>[^/@]+)$")


def resolve_optimizers(
    names: Sequence[str], open_weights: str | None = None
) -> list[SweepOptimizer]:
    """Library names, ``.py`` files and ``run:DIR@...`` selections -> optimisers."""
    out: list[SweepOptimizer] = []
    runs: dict[Path, list[Population]] = {}  # a run directory is read once for all its names
    for name in names:
        if name.startswith("run:"):
            out.extend(_from_run(name, open_weights, runs))
            continue
        spec = resolve(name, open_weights=open_weights)
        kind = "file" if name.endswith(".py") else "library"
        out.append(SweepOptimizer(spec.name, spec, {"source": kind, "ref": name}))
    from rayopt.optim.open import check_open_weights  # flax: only when resolving

    for o in out:  # a bad OPEN checkpoint fails now, not hours into the sweep
        check_open_weights(o.spec)
    seen: set[str] = set()
    for o in out:
        if o.name in seen:
            raise ValueError(f"optimiser {o.name!r} is named twice")
        seen.add(o.name)
    return out


def _from_run(
    ref: str, open_weights: str | None, runs: dict[Path, list[Population]]
) -> list[SweepOptimizer]:
    """The optimisers ``ref`` selects; ``runs`` caches populations by resolved directory."""
    from rayopt.analysis.population import load_populations, pooled_top

    m = _RUN.match(ref)
    if not m:
        raise ValueError(
            f"{ref!r}: expected run:DIR@topK, run:DIR@msN/topK, "
            "run:DIR@CANDIDATE or run:DIR@msN/CANDIDATE"
        )
    run_dir, sel = m["dir"], m["sel"]
    key = Path(run_dir).resolve()
    if key not in runs:
        runs[key] = load_populations(run_dir)
    pops = runs[key]
    if m["ms"] is not None:
        pops = [p for p in pops if p.meta_seed == int(m["ms"])]
    if not pops:
        raise ValueError(
            f"{ref!r}: no discovery population in {run_dir}"
            + (f" for meta-seed {m['ms']}" if m["ms"] is not None else "")
        )
    top = re.fullmatch(r"top(\d+)", sel)
    if top:
        k = int(top[1])
        chosen = pooled_top(pops, k)
        if len(chosen) < k:
            print(f"note: {ref} has only {len(chosen)} discovered candidates", flush=True)
    else:
        chosen = [(p, sel, p.ranks().get(sel, math.nan)) for p in pops if sel in p.members]
        if not chosen:
            raise ValueError(f"{ref!r}: no candidate {sel!r} in {run_dir}")
        if len(chosen) > 1:
            raise ValueError(
                f"{ref!r}: {sel!r} exists in several meta-seeds; "
                f"say which: run:{run_dir}@ms<N>/{sel}"
            )
    out = []
    for pop, cid, rank in chosen:
        member = pop.members[cid]
        name = f"{pop.run_id}/{cid}"
        if member.is_reference:
            spec = dataclasses.replace(
                resolve(member.optimizer or cid.removeprefix("ref-"), open_weights=open_weights),
                name=name,
            )
        else:
            code = pop.code([cid]).get(cid)
            if not code:
                raise ValueError(f"{ref!r}: {cid} has no code in the journal")
            spec = OptimiserSpec(name=name, kind="symbolic", code=code)
        source = dict(
            source="run",
            ref=ref,
            run_dir=str(run_dir),
            run_id=pop.run_id,
            meta_seed=pop.meta_seed,
            candidate_id=cid,
            avg_rank=rank,
            parent_id=member.parent_id,
            mutator=member.mutator,
            idea=member.idea,
        )
        out.append(SweepOptimizer(name, spec, source))
    return out


# ------------------------------------------------------------------ the plan
@dataclasses.dataclass(frozen=True)
class Work:
    """One evaluation of the sweep: an optimiser on a point, for some seeds."""

    optimizer: SweepOptimizer
    env: str
    axis_value: str | None
    config: PPOConfig
    seeds: tuple[int, ...]


class Plan(NamedTuple):
    """What :func:`plan` found: the evaluations left, how many (optimizer, point, seed)
    are already done, and the optimisers that already have this sweep's ``created``
    event."""

    todo: list[Work]
    skipped: int
    created: frozenset[str]


def _existing(
    out_dir: Path, sweep: str, stage: str = "sweep"
) -> tuple[dict[tuple[str, str, str | None, int], str], frozenset[str]]:
    """One read of ``out_dir``: (optimizer, env, axis value, seed) -> ppo_config of rows
    of ``sweep`` already journalled ok, and the optimisers with its ``created`` event."""
    from rayopt.results.journal import journal_dir, read

    if not journal_dir(out_dir).is_dir() or not any(journal_dir(out_dir).glob("*.parquet")):
        return {}, frozenset()
    names = ["row_type", "optimizer", "env", "axis_value", "seed", "ppo_config"]
    t = read(
        out_dir,
        columns=names,
        filter=(pc.field("sweep") == sweep)
        & (
            (
                (pc.field("row_type") == "evaluation")
                & (pc.field("stage") == stage)
                & pc.field("status").isin(list(DECIDED))
            )
            | ((pc.field("row_type") == "event") & (pc.field("event") == "created"))
        ),
    )
    kind, opt, env, value, seed, ppo = (t[c].to_pylist() for c in names)
    done = {
        (o, e, v, s): p
        for k, o, e, v, s, p in zip(kind, opt, env, value, seed, ppo, strict=True)
        if k == "evaluation"
    }
    return done, frozenset(o for k, o in zip(kind, opt, strict=True) if k == "event")


def plan(
    cfg: SweepConfig, optimizers: Sequence[SweepOptimizer], out_dir: str | os.PathLike
) -> Plan:
    """What is left to evaluate, how many (optimizer, point, seed) are already done, and
    which optimisers are already journalled (one read of ``out_dir``).

    Raises ConfigError if a done combination was run with a different PPO config: the
    output directory belongs to another sweep of that name.
    """
    done, created = _existing(Path(out_dir), cfg.name, cfg.stage)
    todo: list[Work] = []
    skipped = 0
    per_task = cfg.seeds_per_task or cfg.seeds
    # points outermost: an interrupted sweep has every optimiser at the points it reached
    for value, env in cfg.points():
        ppo = cfg.ppo_config(env, value)
        ppo_json = json.dumps(dataclasses.asdict(ppo))
        for opt in optimizers:
            missing = []
            for seed in cfg.seed_list:
                prior = done.get((opt.name, env, value, seed))
                if prior is None:
                    missing.append(seed)
                    continue
                if prior != ppo_json:
                    raise ConfigError(
                        f"{out_dir} already holds sweep {cfg.name!r} results for {opt.name} on "
                        f"{env} ({cfg.axis}={value}, seed {seed}) with a different PPO config; "
                        "use another --out or another sweep name"
                    )
                skipped += 1
            for i in range(0, len(missing), per_task):
                todo.append(Work(opt, env, value, ppo, tuple(missing[i : i + per_task])))
    return Plan(todo, skipped, created)


# ------------------------------------------------------------------ running
SWEEP_FILE = "sweep-{name}.yaml"


def write_manifest(cfg: SweepConfig, optimizers: Sequence[SweepOptimizer], out_dir: Path) -> Path:
    """``sweep-NAME.yaml``: the config and where each optimiser came from (for plots'
    in-distribution lines and the report's lineage)."""
    data = {
        "config": to_dict(cfg),
        "optimizers": [
            dict(
                name=o.name,
                spec=o.spec.kind,
                **{k: v for k, v in o.source.items() if v is not None},
            )
            for o in optimizers
        ],
        "in_distribution": {env: cfg.in_distribution_for(env) for env in cfg.envs},
    }
    path = out_dir / SWEEP_FILE.format(name=cfg.name)
    path.write_text(yaml.safe_dump(json.loads(json.dumps(data, default=str)), sort_keys=False))
    return path


def read_manifests(path: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """Every ``sweep-*.yaml`` of a sweep directory, by sweep name."""
    out = {}
    for f in sorted(Path(path).glob("sweep-*.yaml")):
        try:
            data = yaml.safe_load(f.read_text()) or {}
        except yaml.YAMLError:
            continue
        name = (data.get("config") or {}).get("name")
        if name:
            out[name] = data
    return out


def _created_rows(
    cfg: SweepConfig, optimizers: Sequence[SweepOptimizer], known: Collection[str]
) -> list[dict[str, Any]]:
    """A ``created`` event per optimiser not ``known`` to this sweep's journal (``known``:
    :attr:`Plan.created`): its code and provenance travel with the results."""
    rows = []
    for o in optimizers:
        if o.name in known:
            continue
        s = o.source
        rows.append(
            dict(
                row_type="event",
                event="created",
                run_id=cfg.name,
                sweep=cfg.name,
                axis=cfg.axis,
                optimizer=o.name,
                code=o.spec.code,
                candidate_id=s.get("candidate_id"),
                parent_id=s.get("parent_id"),
                idea=s.get("idea"),
                mutator=s.get("mutator") or s.get("source"),
                ref_candidate_id=s.get("run_id"),
            )
        )
    return rows


async def run_sweep(
    cfg: SweepConfig,
    optimizers: Sequence[SweepOptimizer],
    out_dir: Path,
    todo: Sequence[Work],
    pool: Any,
    log: Callable[[str], None] = print,
    created: Collection[str] = (),
) -> dict[str, Any]:
    """Evaluate ``todo`` on ``pool`` (an EvaluatorPool), journalling each as it lands;
    ``created``: optimisers whose ``created`` event is already journalled (``plan``'s)."""
    from rayopt.analysis._rliable import metrics
    from rayopt.results.journal import JournalWriter
    from rayopt.search.evaluator import EvalTask, outcome_rows

    journal = JournalWriter(out_dir)
    journal.write(_created_rows(cfg, optimizers, created))
    t0 = time.monotonic()
    done = failed = 0
    stopped = {"timeout": 0, "memory": 0}
    axis = None if cfg.axis == "none" else cfg.axis

    async def one(w: Work) -> None:
        nonlocal done, failed
        key = f"{cfg.name}/{w.optimizer.name}/{w.env}/{w.axis_value}/{w.seeds[0]}"
        out = await pool.run(EvalTask(key, w.optimizer.spec, w.config, w.seeds, cfg.fast_compile))
        where = dict(
            run_id=cfg.name,
            sweep=cfg.name,
            axis=axis,
            axis_value=w.axis_value,
            optimizer=w.optimizer.name,
            candidate_id=w.optimizer.source.get("candidate_id"),
        )
        journal.write(outcome_rows(out, where, stage=cfg.stage))
        done += 1
        point = f"{w.optimizer.name} {w.env}"
        if axis and axis != "env":
            point += f" {axis}={w.axis_value}"
        head = f"[{time.monotonic() - t0:6.0f}s] {done}/{len(todo)} {point}"
        if out.ok:
            fr = np.asarray(out.final_return, float)
            nan = int((~np.isfinite(fr)).sum())
            fr = fr[np.isfinite(fr)]
            iqm = float(metrics.aggregate_iqm(fr[:, None])) if fr.size else math.nan
            log(
                f"{head}: final return IQM {iqm:.2f} over {fr.size} seeds"
                + (f" ({nan} NaN left out)" if nan else "")
                + f" (compile {out.compile_s:.0f}s, run {out.run_s:.0f}s)"
            )
        else:
            failed += 1
            if out.error_kind in ("timeout", "memory"):
                stopped[out.error_kind] += 1
            log(f"{head}: FAILED ({out.error_kind}) {out.error}")

    await asyncio.gather(*(one(w) for w in todo))
    return dict(
        evaluated=done - failed,
        failed=failed,
        **stopped,
        rows=journal.rows_written,
        wall_s=round(time.monotonic() - t0, 1),
        utilisation=round(pool.utilisation(), 4),
        compile_wait_share=round(pool.compile_wait_share(), 4),
        compiled_ahead=pool.compiled_ahead,
    )


def sweep(
    cfg: SweepConfig, out_dir: str | os.PathLike, log: Callable[[str], None] = print
) -> dict[str, Any]:
    """Plan, then (if anything is left) start Ray evaluators and run the sweep."""

    from rayopt.results.journal import compact
    from rayopt.search.fleet import init_ray, pool_for, start_evaluators
    from rayopt.search.preflight import check_cluster, check_writable

    out = check_writable(out_dir)
    optimizers = resolve_optimizers(cfg.optimizers, cfg.open_weights)
    todo, skipped, created = plan(cfg, optimizers, out)
    if todo:  # Ray, and an evaluator that fits, before anything is written
        init_ray(cfg.address)
        check_cluster(cfg)  # else one line (a ConfigError), before any actor starts
    out.mkdir(parents=True, exist_ok=True)
    write_manifest(cfg, optimizers, out)
    seeds_left = sum(len(w.seeds) for w in todo)
    log(
        f"sweep {cfg.name}: {len(optimizers)} optimisers x {len(cfg.points())} points x "
        f"{cfg.seeds} seeds ({seed_range(cfg.seed_list)}); {skipped} already journalled in "
        f"{out}, {seeds_left} to run in {len(todo)} evaluations"
    )
    summary = dict(out=str(out), sweep=cfg.name, skipped=skipped, evaluated=0, failed=0, rows=0)
    if not todo:
        return summary
    actors = start_evaluators(cfg)  # reads only cfg.evaluator
    try:
        pool = pool_for(actors, cfg.evaluator, cfg.max_eval_attempts)
        summary.update(asyncio.run(run_sweep(cfg, optimizers, out, todo, pool, log, created)))
        compact(out)  # one file instead of one per evaluation: fast to analyse
    finally:
        actors.stop()  # hand the CPUs/GPUs (and any placement group) back
    return summary
