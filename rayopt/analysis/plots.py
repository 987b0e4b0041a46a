"""Figures like the paper's, each saved as PNG and SVG.

- Fig. 2 :func:`meta_training`: best average rank so far against candidates evaluated,
  per meta-seed, with each candidate's rank as a dot and the references' ranks as
  dashed lines (rank 1 = best, drawn at the top); candidates and references are ranked
  in one population (:meth:`rayopt.analysis.population.Population.joint_ranks`).
- Figs. 3-4 :func:`sweep_figure` on a numeric axis (training length, hidden size): IQM
  per optimiser against the axis with the 95 % CI as a band, one panel per env, the
  in-distribution value as a dashed red line.
- Figs. 5-6 :func:`sweep_figure` on a categorical axis (activation, env, none): IQM
  bars with CI whiskers, one panel per env.
- Few seeds (``stats.MIN_SEEDS_CI``, ``stats.FEW_SEEDS``): a point with fewer than 3
  seeds has no band or whisker and a hollow marker (hatched bar); the figure says so
  under the panels, and that intervals over 3-4 seeds cover less than 95 %.
- :func:`profile_figure`: rliable performance profiles of a sweep.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.patches
import matplotlib.ticker

matplotlib.use("Agg")  # files only; no display on a cluster or in CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from rayopt.analysis.stats import (  # noqa: E402
    FEW_SEEDS,
    MIN_SEEDS_CI,
    axis_sort_key,
    env_order,
    optimizer_order,
)

AXIS_LABEL = {
    "total_timesteps": "total timesteps",
    "hidden_size": "hidden size",
    "activation": "activation",
    "env": "environment",
    "none": "",
}
NUMERIC_AXES = ("total_timesteps", "hidden_size")


def slug(text: str) -> str:
    """A file-name-safe version of ``text``."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-") or "x"


def colours(names: Sequence[str]) -> dict[str, Any]:
    """One colour per optimiser, stable across figures (tab10, then tab20)."""
    cmap = plt.get_cmap("tab10" if len(names) <= 10 else "tab20")
    return {n: cmap(i % cmap.N) for i, n in enumerate(names)}


def save(fig: Any, path_stem: Path) -> list[Path]:
    """``fig`` as ``STEM.png`` and ``STEM.svg``; returns both paths."""
    path_stem.parent.mkdir(parents=True, exist_ok=True)
    out = []
    for ext in ("png", "svg"):
        p = path_stem.with_suffix(f".{ext}")
        fig.savefig(p, dpi=110 if ext == "png" else None)
        out.append(p)
    plt.close(fig)
    return out


def _grid(
    n: int, legend_entries: int, width: float = 3.6, height: float = 3.0
) -> tuple[Any, list[Any]]:
    cols = min(n, 4)
    rows = math.ceil(n / cols)
    legend_h = 0.3 + 0.2 * math.ceil(legend_entries / 4)  # the legend goes below the panels
    fig, axes = plt.subplots(
        rows,
        cols,
        figsize=(width * cols, height * rows + legend_h),
        squeeze=False,
        layout="constrained",
    )
    flat = list(axes.ravel())
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


def _legend(fig: Any, handles: list[Any], labels: list[str], note: str = "") -> None:
    """The legend below the panels (constrained layout makes room), ``note`` as its title."""
    if handles:
        legend = fig.legend(
            handles,
            labels,
            loc="outside lower center",
            ncol=min(len(labels), 4),
            frameon=False,
            fontsize=8,
        )
        if note:  # as the legend's title: inside the layout, never over the entries
            legend.set_title(note, prop={"size": 7})
            legend.get_title().set_color("#a00")


# ------------------------------------------------------------------ Fig. 2
def meta_training(
    curves: pd.DataFrame, references: pd.DataFrame, path_stem: Path, title: str = "Meta-training"
) -> list[Path]:
    """Fig. 2 from ``curves`` (run_id, k, avg_rank, best_rank) and ``references``
    (run_id, reference, avg_rank)."""
    fig, ax = plt.subplots(figsize=(6.4, 4.0), layout="constrained")
    runs = list(dict.fromkeys(curves["run_id"])) if not curves.empty else []
    cmap = plt.get_cmap("tab10")
    ref_styles = ["--", ":", "-.", (0, (5, 1))]
    for i, run in enumerate(runs):
        c = curves[curves["run_id"] == run]
        colour = cmap(i % 10)
        ax.scatter(
            c["k"],
            c["avg_rank"],
            s=9,
            color=colour,
            alpha=0.4,
            linewidths=0,
            label="each candidate" if i == 0 else None,
            rasterized=len(c) > 500,
        )  # a big population stays a small SVG
        k = c["k"].to_numpy()  # candidate k's value holds on [k, k + 1)
        ax.step(
            np.append(k, k[-1] + 1),
            np.append(c["best_rank"], c["best_rank"].iat[-1]),
            where="post",
            color=colour,
            lw=2,
            label=f"{run}: best so far" if len(runs) > 1 else "best candidate so far",
        )
        refs = references[references["run_id"] == run] if not references.empty else references
        for j, r in enumerate(refs.itertuples(index=False)):
            ax.axhline(
                r.avg_rank,
                color=colour if len(runs) > 1 else "black",
                ls=ref_styles[j % len(ref_styles)],
                lw=1.2,
                label=f"{r.reference}"
                + (f" ({run})" if len(runs) > 1 else "")
                + f": rank {r.avg_rank:.2f}",
            )
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.invert_yaxis()  # rank 1 (best) at the top, as the paper's "max" curve rises
    ax.set_xlabel("candidates evaluated")
    ax.set_ylabel("average rank over envs (1 = best)\ncandidates and references ranked together")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if runs:
        ax.legend(fontsize=7, loc="lower right")
    return save(fig, path_stem)


# ------------------------------------------------------------------ Figs. 3-6
def sweep_figure(
    table: pd.DataFrame,
    axis: str,
    path_stem: Path,
    title: str = "",
    in_distribution: Mapping[str, Any] | None = None,
    optimizers: Sequence[str] = (),
) -> list[Path]:
    """One panel per env of a sweep's IQM table (columns of ``stats.iqm_table``)."""
    envs = env_order(table["env"])
    names = optimizer_order(table["optimizer"], optimizers)
    colour = colours(names)
    fig, axes = _grid(len(envs), len(names))
    handles: dict[str, Any] = {}
    numeric = axis in NUMERIC_AXES
    for ax, env in zip(axes, envs, strict=True):
        t = table[table["env"] == env]
        if numeric:
            _lines(ax, t, names, colour, handles)
            ax.set_xscale("log", base=2 if axis == "hidden_size" else 10)
            if axis == "hidden_size":  # 16, 64, 1024 rather than 2^4, 2^6, 2^10
                ticks = sorted(set(t["axis_value"].astype(float)))
                ax.set_xticks(ticks, [f"{v:g}" for v in ticks])
                ax.minorticks_off()
            ax.set_xlabel(AXIS_LABEL.get(axis, axis))
            marker = (in_distribution or {}).get(env)
            xs = t["axis_value"].astype(float)
            if marker is not None and len(xs) and xs.min() <= float(marker) <= xs.max():
                ax.axvline(float(marker), color="red", ls="--", lw=1.2)
        else:
            _bars(ax, t, names, colour, handles, axis)
        ax.set_title(env, fontsize=10)
        ax.set_ylabel("IQM final return" if ax is axes[0] else "")
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    labels = [n for n in names if n in handles]
    _legend(fig, [handles[n] for n in labels], labels, small_n_note(table))
    return save(fig, path_stem)


def small_n_note(table: pd.DataFrame) -> str:
    """What a sweep figure says about its points with few seeds ("" if none)."""
    if "n" not in table or table.empty:
        return ""
    n = table["n"].to_numpy(int)
    parts = []
    if (n < MIN_SEEDS_CI).any():
        parts.append(
            f"hollow/hatched: fewer than {MIN_SEEDS_CI} seeds, no interval (it would be degenerate)"
        )
    if ((n >= MIN_SEEDS_CI) & (n <= FEW_SEEDS)).any():
        parts.append(f"{MIN_SEEDS_CI}-{FEW_SEEDS} seeds: the intervals cover less than 95 %")
    return "; ".join(parts)


def _lines(
    ax: Any,
    t: pd.DataFrame,
    names: Sequence[str],
    colour: Mapping[str, Any],
    handles: dict[str, Any],
) -> None:
    for n in names:
        d = t[t["optimizer"] == n]
        if d.empty:
            continue
        d = d.assign(x=d["axis_value"].astype(float)).sort_values("x")
        (line,) = ax.plot(d["x"], d["iqm"], marker="o", ms=3.5, color=colour[n], lw=1.6)
        ax.fill_between(d["x"], d["ci_low"], d["ci_high"], color=colour[n], alpha=0.18, lw=0)
        if "n" in d:  # no interval below MIN_SEEDS_CI seeds: a hollow marker says so
            few = d[d["n"].to_numpy(int) < MIN_SEEDS_CI]
            ax.plot(few["x"], few["iqm"], "o", ms=6, mfc="white", mec=colour[n], mew=1.4)
        handles.setdefault(n, line)


def _bars(
    ax: Any,
    t: pd.DataFrame,
    names: Sequence[str],
    colour: Mapping[str, Any],
    handles: dict[str, Any],
    axis: str,
) -> None:
    values = sorted(dict.fromkeys(t["axis_value"]), key=axis_sort_key)
    present = [n for n in names if n in set(t["optimizer"])]
    width = 0.8 / max(len(present), 1)
    for j, n in enumerate(present):
        d = t[t["optimizer"] == n].set_index("axis_value").reindex(values)
        x = np.arange(len(values)) + (j - (len(present) - 1) / 2) * width
        iqm = d["iqm"].to_numpy(float)
        lo, hi = d["ci_low"].to_numpy(float), d["ci_high"].to_numpy(float)
        bars = ax.bar(x, iqm, width=width, color=colour[n])
        has_ci = np.isfinite(lo) & np.isfinite(hi)  # whiskers only where there is an interval
        if has_ci.any():
            m = iqm[has_ci]
            err = np.vstack([m - lo[has_ci], hi[has_ci] - m])
            ax.errorbar(x[has_ci], m, yerr=err, fmt="none", ecolor="black", lw=0.8, capsize=2)
        if "n" in d:  # no interval below MIN_SEEDS_CI seeds: a hatched bar says so
            for bar, k in zip(bars, d["n"].fillna(0).to_numpy(int), strict=True):
                if k < MIN_SEEDS_CI:
                    bar.set_hatch("///")
                    bar.set_edgecolor("white")
        handles.setdefault(n, matplotlib.patches.Patch(color=colour[n]))
    show_ticks = axis in ("activation",)
    ax.set_xticks(np.arange(len(values)))
    ax.set_xticklabels(values if show_ticks else ["" for _ in values])
    if axis == "activation" and "relu" in values:
        ax.set_xlabel("activation (relu: in distribution)")


def profile_figure(
    profile: Mapping[str, Any], path_stem: Path, title: str = "", optimizers: Sequence[str] = ()
) -> list[Path]:
    """Performance profiles (``stats.performance_profiles`` of one sweep) with CI bands."""
    taus = profile["taus"]
    names = optimizer_order(profile["profile"], optimizers)
    legend_cols = math.ceil(len(names) / 18)
    fig, ax = plt.subplots(
        figsize=(5.2 + 2.2 * legend_cols, max(3.6, 0.16 * len(names) + 1)), layout="constrained"
    )
    colour = colours(names)
    for n in names:
        ax.plot(taus, profile["profile"][n], color=colour[n], lw=1.8, label=n)
        lo, hi = profile["ci"][n]
        ax.fill_between(taus, lo, hi, color=colour[n], alpha=0.18, lw=0)
    ax.set_xlabel(r"normalised score $\tau$ (min-max per env x axis value)")
    ax.set_ylabel(r"fraction of runs with score > $\tau$")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(title or "performance profile")
    ax.grid(alpha=0.3)
    fig.legend(loc="outside right upper", fontsize=7, ncol=legend_cols, frameon=False)
    return save(fig, path_stem)
