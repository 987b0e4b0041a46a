"""Sweep statistics with rliable (Agarwal et al., 2021), as the paper reports them.

- **IQM with 95 % stratified bootstrap CIs** per (sweep, axis value, optimiser, env):
  ``rliable.library.get_interval_estimates`` with ``rliable.metrics.aggregate_iqm``
  semantics over the seeds of that point (one stratum: the env). Points with the same
  number of seeds go through *one* rliable bootstrap as the columns (strata) of one
  matrix: rliable resamples the runs of every column independently, so each column's
  interval is the one it would get alone, and a sweep of hundreds of points costs one
  bootstrap loop instead of hundreds (arch's Python loop is ~0.2 ms a replicate).
- **Probability of improvement** ``P(X > Y)`` (``metrics.probability_of_improvement``)
  for chosen pairs, over the envs of a sweep point (and per env); optional bootstrap CIs.
- **Performance profiles** (``rly.create_performance_profile``) per sweep: the tasks are
  its (env, axis value) points, scores min-max normalised per task over every run of
  every optimiser at that task.

A seed whose final return is NaN (training diverged) is left out of the statistics and
counted in ``n_nan``. A seed journalled twice (two runs, two dirs) counts once (mean).

**Few seeds.** A percentile bootstrap over n seeds is no 95 % interval when n is small:
n = 1 gives [x, x], and the nominal 95 % interval of the IQM covers the truth about 50 %
of the time at n = 2, 74-76 % at n = 3 and 88 % at n = 4 (simulated for normal and
log-normal seeds, ``benchmarks/small_n_coverage.py``). So below :data:`MIN_SEEDS_CI` seeds
no interval is reported (``ci_low``/``ci_high`` NaN, the cell says why), and up to
:data:`FEW_SEEDS` an interval is marked (``*``); :func:`small_n_legend` says so under a
table, as rliable's authors advise.
Randomness: rliable draws from NumPy's global generator, so each bootstrap is preceded
by ``np.random.seed(seed)``; the same data and seed give the same intervals.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import scipy.stats

from rayopt.analysis.scan import Scan, scans

KEY = ["sweep", "axis", "axis_value", "optimizer", "env"]
ALL_ENVS = "(all)"
#: fewer seeds than this: no interval (degenerate, or far below its nominal coverage)
MIN_SEEDS_CI = 3
#: up to this many seeds an interval is shown but marked: it covers less than 95 %
FEW_SEEDS = 4


# ------------------------------------------------------------------ loading
def load_scores(
    paths: str | os.PathLike | Sequence[str | os.PathLike] | Sequence[Scan],
    metric: str = "final_return",
    sweeps: Iterable[str] | None = None,
    stage: str = "sweep",
) -> pd.DataFrame:
    """One row per (sweep, axis value, optimiser, env, seed) of sweep evaluations (or of
    ``stage`` confirm: a discovery's held-out confirmation), the score in ``value``. Only
    the columns it needs, of the rows it needs (one scan per directory,
    :mod:`rayopt.analysis.scan`)."""
    if metric not in ("final_return", "auc"):
        raise ValueError(f"metric must be final_return or auc, not {metric!r}")
    parts = [sc.evaluations(stage).select([*KEY, "seed", metric]) for sc in scans(paths)]
    t = pa.concat_tables(parts)
    if sweeps is not None:
        t = t.filter(pc.is_in(t["sweep"], pa.array(list(sweeps), pa.string())))
    df = t.to_pandas()
    df = df.rename(columns={metric: "value"})
    if df.empty:
        return df
    df["axis"] = df["axis"].fillna("none")
    df["axis_value"] = df["axis_value"].fillna("")
    return (
        df.groupby([*KEY, "seed"], sort=False, dropna=False)
        .agg(value=("value", "mean"))
        .reset_index()
    )


def axis_sort_key(value: str) -> tuple[int, float, str]:
    """Numeric axes in numeric order; relu before tanh; otherwise as text."""
    try:
        return (0, float(value), "")
    except (TypeError, ValueError):
        return (1, {"relu": 0.0, "tanh": 1.0}.get(value, 2.0), str(value))


def optimizer_order(names: Iterable[str], preferred: Sequence[str] = ()) -> list[str]:
    """``preferred`` first (e.g. a sweep's config order), then adam, open, the rest A-Z."""
    names = list(dict.fromkeys(names))
    first = [n for n in preferred if n in names]

    def key(n: str) -> tuple[int, str]:
        return (0 if n.startswith("adam") else 1 if n.startswith("open") else 2, n)

    rest = sorted((n for n in names if n not in first), key=key)
    return first + rest


def env_order(envs: Iterable[str]) -> list[str]:
    """Registered envs in registry order (MinAtar, CartPole, Craftax), then the rest A-Z."""
    from rayopt.rl.envs import REGISTRY

    known = list(REGISTRY)
    return sorted(
        dict.fromkeys(envs), key=lambda e: (known.index(e) if e in known else len(known), e)
    )


# ------------------------------------------------------------------ IQM + CIs
def iqm_per_column(scores: np.ndarray) -> np.ndarray:
    """``rliable.metrics.aggregate_iqm`` of each column: aggregate_iqm is
    ``scipy.stats.trim_mean(x, 0.25, axis=None)``; this is the same cut per column."""
    return np.atleast_1d(scipy.stats.trim_mean(scores, proportiontocut=0.25, axis=0))


def interval_estimates(
    columns: Sequence[np.ndarray], reps: int = 2000, seed: int = 0, confidence: float = 0.95
) -> tuple[np.ndarray, np.ndarray]:
    """IQM and (2 x G) CIs of G score vectors (NaNs dropped), with rliable.

    Vectors of equal length form one matrix (runs x G) bootstrapped by one
    ``get_interval_estimates`` call; each length group starts from ``seed``."""
    from rayopt.analysis._rliable import rly

    g = len(columns)
    point = np.full(g, np.nan)
    ci = np.full((2, g), np.nan)
    clean = [np.asarray(c, float)[np.isfinite(np.asarray(c, float))] for c in columns]
    by_len: dict[int, list[int]] = {}
    for i, c in enumerate(clean):
        if c.size:
            by_len.setdefault(c.size, []).append(i)
    for _, idx in sorted(by_len.items()):
        matrix = np.stack([clean[i] for i in idx], axis=1)  # runs x points
        np.random.seed(seed)
        p, iv = rly.get_interval_estimates(
            {"m": matrix}, iqm_per_column, reps=reps, confidence_interval_size=confidence
        )
        point[idx] = p["m"]
        ci[:, idx] = np.asarray(iv["m"]).reshape(2, len(idx))
    return point, ci


def iqm_table(
    scores: pd.DataFrame, reps: int = 2000, seed: int = 0, confidence: float = 0.95
) -> pd.DataFrame:
    """Per (sweep, axis, axis value, optimiser, env): seeds, NaN seeds, IQM, CI, mean."""
    cols = [*KEY, "n", "n_nan", "iqm", "ci_low", "ci_high", "mean"]
    if scores.empty:
        return pd.DataFrame(columns=cols)
    groups = scores.groupby(KEY, sort=False, dropna=False)["value"]
    keys, vectors = [], []
    for key, v in groups:
        keys.append(key)
        vectors.append(v.to_numpy(float))
    point, ci = interval_estimates(vectors, reps=reps, seed=seed, confidence=confidence)
    out = pd.DataFrame(keys, columns=KEY)
    out["n"] = [int(np.isfinite(v).sum()) for v in vectors]
    out["n_nan"] = [int((~np.isfinite(v)).sum()) for v in vectors]
    few = out["n"].to_numpy() < MIN_SEEDS_CI  # no interval worth the name (module docstring)
    ci[:, few] = np.nan
    out["iqm"], out["ci_low"], out["ci_high"] = point, ci[0], ci[1]
    out["mean"] = [float(np.nanmean(v)) if np.isfinite(v).any() else math.nan for v in vectors]
    return sort_table(out)


def sort_table(df: pd.DataFrame) -> pd.DataFrame:
    """Rows by sweep, axis value (numeric order), env, optimiser (``optimizer_order``)."""
    if df.empty:
        return df
    opt_rank = {n: i for i, n in enumerate(optimizer_order(df["optimizer"]))}
    env_rank = {e: i for i, e in enumerate(env_order(df["env"]))}
    order = sorted(
        range(len(df)),
        key=lambda i: (
            df["sweep"].iat[i],
            axis_sort_key(df["axis_value"].iat[i]),
            env_rank[df["env"].iat[i]],
            opt_rank[df["optimizer"].iat[i]],
        ),
    )
    return df.iloc[order].reset_index(drop=True)


# ------------------------------------------------------------------ P(X > Y)
def parse_pairs(text: str | Sequence[str] | None, names: Iterable[str]) -> list[tuple[str, str]]:
    """``"a:b,c:d"`` -> [(a, b), (c, d)]; a name may itself hold ':' (``adam:3e-4``): the
    split is the one where both sides are optimisers of the data."""
    names = set(names)
    items = text.split(",") if isinstance(text, str) else list(text or [])
    out = []
    for item in (i.strip() for i in items):
        if not item:
            continue
        splits = [(item[:k], item[k + 1 :]) for k, ch in enumerate(item) if ch == ":"]
        match = [s for s in splits if s[0] in names and s[1] in names]
        if not match:
            raise ValueError(f"pair {item!r}: expected X:Y with X, Y among {sorted(names)}")
        out.append(match[0])
    return out


def default_pairs(names: Iterable[str]) -> list[tuple[str, str]]:
    """Every optimiser against Adam (when Adam is in the data)."""
    names = optimizer_order(names)
    base = "adam" if "adam" in names else None
    return [(n, base) for n in names if base and n != base]


def _wide(df: pd.DataFrame, column: str, value: str = "value") -> tuple[list[Any], np.ndarray]:
    """(columns, seeds x columns matrix; NaN where a seed lacks that column) of one
    optimiser's rows, without pandas' slow pivot."""
    cols = list(dict.fromkeys(df[column]))
    seeds = sorted(set(df["seed"]))
    ci = {c: i for i, c in enumerate(cols)}
    si = {s: i for i, s in enumerate(seeds)}
    m = np.full((len(seeds), len(cols)), np.nan)
    m[[si[s] for s in df["seed"]], [ci[c] for c in df[column]]] = df[value].to_numpy(float)
    return cols, m


def _complete(cols: list[Any], m: np.ndarray, wanted: Sequence[Any]) -> np.ndarray:
    """The ``wanted`` columns of ``m``, keeping only rows finite in all of them."""
    idx = [cols.index(w) for w in wanted]
    sub = m[:, idx]
    return sub[np.isfinite(sub).all(axis=1)]


def poi_table(
    scores: pd.DataFrame,
    pairs: Sequence[tuple[str, str]],
    reps: int = 0,
    seed: int = 0,
    confidence: float = 0.95,
) -> pd.DataFrame:
    """P(X > Y) per (sweep, axis value, pair): over the envs both have (``env`` =
    "(all)", with bootstrap CIs when ``reps`` > 0), and per env."""
    from rayopt.analysis._rliable import metrics, rly

    cols = [
        "sweep",
        "axis",
        "axis_value",
        "x",
        "y",
        "env",
        "n_x",
        "n_y",
        "poi",
        "ci_low",
        "ci_high",
    ]
    rows: list[dict[str, Any]] = []
    if scores.empty or not pairs:
        return pd.DataFrame(columns=cols)
    for (sweep, axis, value), g in scores.groupby(["sweep", "axis", "axis_value"], sort=False):
        wide = {o: _wide(d, "env") for o, d in g.groupby("optimizer", sort=False)}
        for x, y in pairs:
            if x not in wide or y not in wide:
                continue
            envs = [e for e in wide[x][0] if e in set(wide[y][0])]
            for env_set, label in [(envs, ALL_ENVS), *(([e], e) for e in envs if len(envs) > 1)]:
                mx, my = _complete(*wide[x], env_set), _complete(*wide[y], env_set)
                row = dict(
                    sweep=sweep,
                    axis=axis,
                    axis_value=value,
                    x=x,
                    y=y,
                    env=label,
                    n_x=len(mx),
                    n_y=len(my),
                    poi=math.nan,
                    ci_low=math.nan,
                    ci_high=math.nan,
                )
                if len(mx) and len(my):
                    row["poi"] = float(metrics.probability_of_improvement(mx, my))
                    if reps > 0 and label == ALL_ENVS:
                        np.random.seed(seed)
                        _, iv = rly.get_interval_estimates(
                            {"p": [mx, my]},
                            lambda a, b: np.array([metrics.probability_of_improvement(a, b)]),
                            reps=reps,
                            confidence_interval_size=confidence,
                        )
                        row["ci_low"], row["ci_high"] = (float(v) for v in np.ravel(iv["p"]))
                rows.append(row)
    out = pd.DataFrame(rows, columns=cols)
    if out.empty:
        return out
    env_rank = {e: i for i, e in enumerate(env_order(out["env"]))}
    order = sorted(
        range(len(out)),
        key=lambda i: (
            out["sweep"].iat[i],
            axis_sort_key(out["axis_value"].iat[i]),
            out["x"].iat[i],
            out["y"].iat[i],
            out["env"].iat[i] != ALL_ENVS,
            env_rank[out["env"].iat[i]],
        ),
    )
    return out.iloc[order].reset_index(drop=True)


# ------------------------------------------------------------------ profiles
def performance_profiles(
    scores: pd.DataFrame, taus: np.ndarray | None = None, reps: int = 100, seed: int = 0
) -> dict[str, dict[str, Any]]:
    """Per sweep: ``taus``, and per optimiser the fraction of runs with normalised score
    above each tau (``profile``) and its bootstrap CI (``ci``), from rliable.

    Tasks are the sweep's (env, axis value) points; a task's scores are min-max
    normalised over every run of every optimiser there; an optimiser contributes the
    seeds it has at every task."""
    from rayopt.analysis._rliable import rly

    taus = np.linspace(0.0, 1.0, 26) if taus is None else np.asarray(taus, float)
    out: dict[str, dict[str, Any]] = {}
    if scores.empty:
        return out
    for sweep, g in scores.groupby("sweep", sort=False):
        g = g[np.isfinite(g["value"].to_numpy(float))].copy()
        if g.empty:
            continue
        g["task"] = g["env"].astype(str) + "|" + g["axis_value"].astype(str)
        lo = g.groupby("task")["value"].transform("min")
        hi = g.groupby("task")["value"].transform("max")
        span = (hi - lo).where(hi > lo, 1.0)
        g["norm"] = ((g["value"] - lo) / span).where(hi > lo, 1.0)
        tasks = list(dict.fromkeys(g["task"]))
        score_dict = {}
        for opt, d in g.groupby("optimizer", sort=False):
            cols, m = _wide(d, "task", "norm")
            if set(cols) == set(tasks):
                m = _complete(cols, m, tasks)
                if len(m):
                    score_dict[opt] = m
        if not score_dict:
            continue
        np.random.seed(seed)
        profiles, cis = rly.create_performance_profile(score_dict, taus, reps=reps)
        out[sweep] = dict(
            taus=taus,
            tasks=tasks,
            profile=profiles,
            ci=cis,
            runs={k: v.shape[0] for k, v in score_dict.items()},
        )
    return out


# ------------------------------------------------------------------ formatting
def _fmt(v: Any) -> str:
    if isinstance(v, float | np.floating):
        if not math.isfinite(v):
            return "-"
        return f"{v:.3f}" if abs(v) < 10 else f"{v:.1f}"
    return "" if v is None else str(v)


def iqm_cell(iqm: float, low: float, high: float, n: int) -> str:
    """``IQM [low, high]``; ``IQM (n=2: no CI)`` below MIN_SEEDS_CI seeds; a trailing
    ``*`` up to FEW_SEEDS (the interval covers less than 95 %)."""
    if n < MIN_SEEDS_CI:
        return f"{_fmt(iqm)} (n={n}: no CI)"
    mark = "*" if n <= FEW_SEEDS else ""
    return f"{_fmt(iqm)} [{_fmt(low)}, {_fmt(high)}]{mark}"


def small_n_legend(ns: Iterable[int]) -> list[str]:
    """Lines to print under a table whose points have ``ns`` seeds (none if all have
    more than FEW_SEEDS)."""
    ns = [int(n) for n in ns]
    out = []
    low = sorted({n for n in ns if n < MIN_SEEDS_CI})
    if low:
        out.append(
            f"warning: {sum(n < MIN_SEEDS_CI for n in ns)} point(s) with "
            f"{' or '.join(map(str, low))} seed(s): no interval shown (a bootstrap over fewer "
            f"than {MIN_SEEDS_CI} seeds is degenerate or covers ~50 %); run more seeds"
        )
    few = sorted({n for n in ns if MIN_SEEDS_CI <= n <= FEW_SEEDS})
    if few:
        out.append(
            f"note: * {' or '.join(map(str, few))} seeds: the nominal 95 % interval covers "
            "less (~75 % at 3, ~88 % at 4 seeds); rliable's authors advise more runs"
        )
    return out


def iqm_display(table: pd.DataFrame) -> pd.DataFrame:
    """The IQM table for people: ``IQM [low, high]`` in one column (no interval below
    MIN_SEEDS_CI seeds, ``*`` up to FEW_SEEDS: :func:`iqm_cell`), seeds as ``n``."""
    if table.empty:
        return pd.DataFrame(
            columns=["sweep", "axis", "axis value", "env", "optimizer", "IQM [95% CI]", "n"]
        )
    d = pd.DataFrame(
        {
            "sweep": table["sweep"],
            "axis": table["axis"],
            "axis value": table["axis_value"],
            "env": table["env"],
            "optimizer": table["optimizer"],
            "IQM [95% CI]": [
                iqm_cell(a, b, c, int(n))
                for a, b, c, n in zip(
                    table["iqm"], table["ci_low"], table["ci_high"], table["n"], strict=True
                )
            ],
            "n": [
                f"{n}" + (f" ({k} NaN)" if k else "")
                for n, k in zip(table["n"], table["n_nan"], strict=True)
            ],
        }
    )
    return d


def to_markdown(df: pd.DataFrame) -> str:
    """A GitHub-flavoured Markdown table (no extra dependency)."""
    cols = [str(c) for c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "| " + " | ".join("---" for _ in cols) + " |"]
    for row in df.itertuples(index=False):
        lines.append("| " + " | ".join(_fmt(v).replace("|", "\\|") for v in row) + " |")
    return "\n".join(lines) + "\n"


def to_text(df: pd.DataFrame) -> str:
    """A plain aligned table for the console."""
    cols = [str(c) for c in df.columns]
    cells = [[_fmt(v) for v in row] for row in df.itertuples(index=False)]
    widths = [max([len(c), *(len(r[i]) for r in cells)]) for i, c in enumerate(cols)]
    out = ["  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True))]
    out += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join(out) + "\n"
