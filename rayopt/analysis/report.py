"""``rayopt analyze``: tables, plots and one HTML report from discovery runs and sweeps.

Everything lands in one output directory::

    OUT/report.html            open this
    OUT/tables/*.csv, *.md     iqm, poi, profiles, meta_training, references, top_candidates
    OUT/plots/*.png, *.svg     fig2-meta-training, sweep-<name>, profile-<name>

The report references its images by relative paths, so the directory can be copied or
zipped as a whole. Definitions: docs/analysis.md and the docstrings of
:mod:`rayopt.analysis.population` (Fig. 2, ranks) and :mod:`rayopt.analysis.stats`.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import html
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.compute as pc

from rayopt.analysis import stats
from rayopt.analysis.population import Population, load_populations
from rayopt.analysis.scan import Scan, created_key, scans
from rayopt.analysis.sweep import in_distribution, read_manifests


@dataclasses.dataclass
class AnalysisOptions:
    """Knobs of ``rayopt analyze`` (the CLI flags)."""

    metric: str = "final_return"
    reps: int = 2000  # IQM CI bootstrap replicates
    poi_reps: int = 0  # P(X > Y) CI replicates (0: point estimates only; ~1 ms x envs each)
    profile_reps: int = 100  # performance profile band replicates
    seed: int = 0
    top: int = 3  # best candidates per meta-seed in the report
    plots: bool = True
    pairs: str | Sequence[str] | None = None
    jobs: int = dataclasses.field(default_factory=lambda: min(2, os.cpu_count() or 1))


@dataclasses.dataclass
class AnalysisResult:
    """What ``analyze`` produced (tables as DataFrames, files as paths)."""

    out: Path
    report: Path
    timings: dict[str, float]
    iqm: pd.DataFrame
    poi: pd.DataFrame
    curves: pd.DataFrame
    references: pd.DataFrame
    top: pd.DataFrame
    files: list[Path]


class _Clock:
    def __init__(self) -> None:
        self.t = time.perf_counter()
        self.timings: dict[str, float] = {}

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.timings[name] = round(self.timings.get(name, 0.0) + now - self.t, 3)
        self.t = now


def analyze(
    paths: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    options: AnalysisOptions | None = None,
    echo: bool = True,
    log: Callable[[str], None] = print,
) -> AnalysisResult:
    """Read ``paths`` (runs and/or sweeps), write tables, plots and report.html to ``out``."""
    opts = options or AnalysisOptions()
    clock = _Clock()
    paths = [Path(p) for p in paths]
    for p in paths:
        if not p.exists():
            raise FileNotFoundError(f"no such run or sweep directory: {p}")
    out = Path(out)
    (out / "tables").mkdir(parents=True, exist_ok=True)
    files: list[Path] = []

    # one pass over each directory; discovery runs: Fig. 2, references, best candidates
    scanned = scans(paths)
    clock.lap("scan")
    pops = load_populations(scanned)
    curves, refs, top = _discovery_tables(pops, opts.top)
    clock.lap("read_discovery")
    plotter = _Plotter(out / "plots", opts.jobs if opts.plots else 0)
    try:
        plotter.fig2(curves, refs)

        # sweeps
        scores = stats.load_scores(scanned, metric=opts.metric)
        manifests: dict[str, dict[str, Any]] = {}
        for p in paths:
            manifests.update(read_manifests(p))
        clock.lap("read_sweeps")
        iqm = stats.iqm_table(scores, reps=opts.reps, seed=opts.seed)
        plotter.sweeps(iqm, manifests)  # drawn in a worker process while the statistics go on
        clock.lap("iqm")
        names = list(dict.fromkeys(scores["optimizer"])) if not scores.empty else []
        pairs = stats.parse_pairs(opts.pairs, names) if opts.pairs else stats.default_pairs(names)
        poi = stats.poi_table(scores, pairs, reps=opts.poi_reps, seed=opts.seed)
        clock.lap("poi")
        profiles = stats.performance_profiles(scores, reps=opts.profile_reps, seed=opts.seed)
        plotter.profiles(profiles, manifests)
        clock.lap("profiles")

        files += _write_tables(out / "tables", iqm, poi, profiles, curves, refs, top)
        clock.lap("tables")
        figures = plotter.wait()
        files += [p for ps in figures.values() for p in ps]
        clock.lap("plots")  # what is left of the plotting once the statistics are done
    finally:
        plotter.close()

    report = out / "report.html"
    report.write_text(
        _html(
            paths,
            scanned,
            opts,
            pops,
            curves,
            refs,
            top,
            iqm,
            poi,
            profiles,
            manifests,
            figures,
            out,
        )
    )
    files.append(report)
    clock.lap("report")
    if echo:
        _echo(log, iqm, poi, refs, top)
    return AnalysisResult(out, report, clock.timings, iqm, poi, curves, refs, top, files)


# ------------------------------------------------------------------ discovery tables
def _discovery_tables(
    pops: Sequence[Population], k: int
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    curves = pd.DataFrame(
        [p for pop in pops for p in pop.curve()],
        columns=["run_id", "meta_seed", "k", "candidate_id", "avg_rank", "best_rank", "best_id"],
    )
    refs = pd.DataFrame(
        [
            dict(
                run_id=pop.run_id,
                meta_seed=pop.meta_seed,
                reference=rid,
                avg_rank=r,
                population=len(pop.order),
                **{f"return[{e}]": pop.members[rid].scores.get(e) for e in pop.envs},
            )
            for pop in pops
            for rid, r in pop.reference_ranks().items()
        ],
    )
    if refs.empty:
        refs = pd.DataFrame(columns=["run_id", "meta_seed", "reference", "avg_rank", "population"])
    rows = []
    for pop in pops:
        env_ranks = pop.env_ranks()
        joint = pop.joint_ranks()
        for place, (cid, rank) in enumerate(pop.top(k), start=1):
            m = pop.members[cid]
            rows.append(
                dict(
                    run_id=pop.run_id,
                    meta_seed=pop.meta_seed,
                    place=place,
                    candidate_id=cid,
                    avg_rank=rank,
                    rank_with_refs=joint[cid],
                    population=len(pop.order),
                    mutator=m.mutator,
                    lineage=" <- ".join(pop.lineage(cid)),
                    **{f"rank[{e}]": env_ranks[cid].get(e) for e in pop.envs},
                    **{f"return[{e}]": m.scores.get(e) for e in pop.envs},
                )
            )
    top = (
        pd.DataFrame(rows)
        if rows
        else pd.DataFrame(
            columns=["run_id", "meta_seed", "place", "candidate_id", "avg_rank", "population"]
        )
    )
    return curves, refs, top


def _write_tables(
    d: Path,
    iqm: pd.DataFrame,
    poi: pd.DataFrame,
    profiles: dict[str, Any],
    curves: pd.DataFrame,
    refs: pd.DataFrame,
    top: pd.DataFrame,
) -> list[Path]:
    prof_rows = [
        dict(
            sweep=s,
            optimizer=o,
            tau=float(t),
            profile=float(v),
            ci_low=float(lo),
            ci_high=float(hi),
        )
        for s, p in profiles.items()
        for o in p["profile"]
        for t, v, lo, hi in zip(
            p["taus"], p["profile"][o], p["ci"][o][0], p["ci"][o][1], strict=True
        )
    ]
    tables = {
        "iqm": (iqm, stats.iqm_display(iqm)),
        "poi": (poi, poi),
        "profiles": (pd.DataFrame(prof_rows), None),
        "meta_training": (curves, None),
        "references": (refs, refs),
        "top_candidates": (top, top),
    }
    files = []
    for name, (raw, shown) in tables.items():
        p = d / f"{name}.csv"
        raw.to_csv(p, index=False)
        files.append(p)
        if shown is not None:
            p = d / f"{name}.md"
            legend = stats.small_n_legend(raw["n"]) if name == "iqm" and not raw.empty else []
            p.write_text(stats.to_markdown(shown) + "".join(f"\n{x}\n" for x in legend))
            files.append(p)
    return files


# ------------------------------------------------------------------ plots
class _Plotter:
    """Draws the figures, in a worker process when ``jobs`` > 1 (matplotlib is
    single-threaded and a big sweep has seconds of drawing, which then overlaps the
    bootstraps), inline when ``jobs`` is 1, not at all when 0."""

    def __init__(self, d: Path, jobs: int) -> None:
        self.d = d
        self.jobs = jobs
        self.pending: dict[str, Any] = {}
        self.pool: Any = None
        if jobs > 1:
            import concurrent.futures
            import multiprocessing

            self.pool = concurrent.futures.ProcessPoolExecutor(
                max_workers=jobs - 1, mp_context=multiprocessing.get_context("spawn")
            )

    def _submit(self, key: str, fn: str, *args: Any, **kwargs: Any) -> None:
        from rayopt.analysis import plots

        if self.jobs == 0:
            return
        if self.pool is None:
            self.pending[key] = getattr(plots, fn)(*args, **kwargs)
        else:
            self.pending[key] = self.pool.submit(getattr(plots, fn), *args, **kwargs)

    def fig2(self, curves: pd.DataFrame, refs: pd.DataFrame) -> None:
        if not curves.empty:
            self._submit(
                "fig2",
                "meta_training",
                curves,
                refs,
                self.d / "fig2-meta-training",
                "Meta-training curve (Fig. 2)",
            )

    def sweeps(self, iqm: pd.DataFrame, manifests: dict[str, dict[str, Any]]) -> None:
        from rayopt.analysis.plots import AXIS_LABEL, slug

        for sweep, t in iqm.groupby("sweep", sort=False):
            axis = str(t["axis"].iat[0])
            man = manifests.get(str(sweep), {})
            configured = (man.get("config") or {}).get("in_distribution")
            marks = {env: in_distribution(axis, env, configured) for env in dict.fromkeys(t["env"])}
            marks = {**marks, **(man.get("in_distribution") or {})}
            vs = f" vs {AXIS_LABEL.get(axis, axis)}" if axis not in ("none", "env") else ""
            self._submit(
                f"sweep:{sweep}",
                "sweep_figure",
                t,
                axis,
                self.d / f"sweep-{slug(str(sweep))}",
                title=f"{sweep}: IQM final return, 95% CI{vs}",
                in_distribution=marks,
                optimizers=_order(man),
            )

    def profiles(self, profiles: dict[str, Any], manifests: dict[str, dict[str, Any]]) -> None:
        from rayopt.analysis.plots import slug

        for sweep, prof in profiles.items():
            self._submit(
                f"profile:{sweep}",
                "profile_figure",
                prof,
                self.d / f"profile-{slug(str(sweep))}",
                title=f"{sweep}: performance profile",
                optimizers=_order(manifests.get(str(sweep), {})),
            )

    def wait(self) -> dict[str, list[Path]]:
        """Every figure's files (waiting for the worker)."""
        return {k: (v.result() if self.pool is not None else v) for k, v in self.pending.items()}

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(cancel_futures=True)
            self.pool = None


def _order(manifest: dict[str, Any]) -> list[str]:
    return [o["name"] for o in manifest.get("optimizers", [])]


# ------------------------------------------------------------------ console
def _echo(
    log: Callable[[str], None],
    iqm: pd.DataFrame,
    poi: pd.DataFrame,
    refs: pd.DataFrame,
    top: pd.DataFrame,
) -> None:
    if not top.empty:
        cols = [c for c in top.columns if c not in ("lineage", "population", "mutator")]
        log("Best discovered candidates (average rank over envs, 1 = best):")
        log(stats.to_text(top[cols]))
    if not refs.empty:
        log("References ranked in each population:")
        log(stats.to_text(refs))
    if not iqm.empty:
        log(f"IQM with 95% stratified bootstrap CIs ({stats.KEY[-2]} x env x axis value):")
        log(stats.to_text(stats.iqm_display(iqm)))
        for line in stats.small_n_legend(iqm["n"]):
            log(line)
    if not poi.empty:
        log("Probability of improvement P(X > Y), over envs:")
        log(stats.to_text(poi[poi["env"] == stats.ALL_ENVS].drop(columns=["env"])))


# ------------------------------------------------------------------ HTML
_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:2em auto;max-width:1200px;
     padding:0 1em;color:#222}
h1,h2,h3{font-weight:600} h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;font-size:13px;margin:.6em 0}
td,th{border:1px solid #ddd;padding:3px 7px;text-align:left;vertical-align:top}
th{background:#f4f4f4} img{max-width:100%;border:1px solid #eee}
pre{background:#f7f7f7;border:1px solid #e4e4e4;padding:.7em;overflow-x:auto;font-size:12px}
.card{border:1px solid #ddd;border-radius:6px;padding:.6em 1em;margin:1em 0}
.muted{color:#666;font-size:13px} details{margin:.4em 0}
"""


def _table(df: pd.DataFrame, max_rows: int = 400) -> str:
    if df.empty:
        return "<p class='muted'>(no rows)</p>"
    shown = df.head(max_rows).map(lambda v: stats._fmt(v) if isinstance(v, float) else v)
    more = (
        f"<p class='muted'>{len(df) - max_rows} more rows in the CSV.</p>"
        if len(df) > max_rows
        else ""
    )
    return shown.to_html(index=False, escape=True, border=0) + more


def _figure(files: list[Path] | None, out: Path, alt: str) -> str:
    if not files:
        return ""
    png = next((f for f in files if f.suffix == ".png"), None)
    svg = next((f for f in files if f.suffix == ".svg"), None)
    rel = lambda f: html.escape(f.relative_to(out).as_posix())  # noqa: E731
    link = f" <a href='{rel(svg)}'>SVG</a>" if svg else ""
    return (
        f"<figure><img src='{rel(png)}' alt='{html.escape(alt)}'>"
        f"<figcaption class='muted'>{html.escape(alt)}{link}</figcaption></figure>"
    )


def _code(code: str | None) -> str:
    return f"<pre><code>{html.escape(code)}</code></pre>" if code else ""


def _lineage_html(pop: Population, cid: str, ranks: dict[str, float]) -> str:
    chain = pop.lineage(cid)
    rows = []
    for i in chain:
        m = pop.members.get(i)
        rows.append(
            dict(
                candidate=i,
                outcome=m.outcome if m else None,
                mutator=m.mutator if m else None,
                avg_rank=ranks.get(i),
                idea=(m.idea if m else None) or "",
            )
        )
    root = chain[-1]
    note = (
        ""
        if pop.members.get(root) and pop.members[root].is_initial
        else "<p class='muted'>The chain ends before an initial optimiser "
        "(the journal has no earlier parent).</p>"
    )
    return _table(pd.DataFrame(rows)) + note


def _html(
    paths: Sequence[Path],
    scanned: Sequence[Scan],
    opts: AnalysisOptions,
    pops: Sequence[Population],
    curves: pd.DataFrame,
    refs: pd.DataFrame,
    top: pd.DataFrame,
    iqm: pd.DataFrame,
    poi: pd.DataFrame,
    profiles: dict[str, Any],
    manifests: dict[str, dict[str, Any]],
    figures: dict[str, list[Path]],
    out: Path,
) -> str:
    e = html.escape
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>rayopt analysis</title>"
        f"<style>{_CSS}</style></head><body>",
        "<h1>rayopt analysis</h1>",
        f"<p class='muted'>Generated {e(_dt.datetime.now().isoformat(timespec='seconds'))} "
        f"from {', '.join(e(str(p)) for p in paths)}. Metric: {e(opts.metric)}; IQM CIs: "
        f"95% stratified bootstrap (rliable, {opts.reps} replicates, seed {opts.seed}). "
        "Definitions: docs/analysis.md.</p>",
    ]
    toc = []
    if pops:
        toc.append("<li><a href='#discovery'>Discovery: meta-training and best candidates</a></li>")
    for sweep in dict.fromkeys(iqm["sweep"]) if not iqm.empty else []:
        toc.append(f"<li><a href='#sweep-{e(str(sweep))}'>Sweep {e(str(sweep))}</a></li>")
    parts.append(f"<ul>{''.join(toc)}</ul>" if toc else "<p>No discovery or sweep rows found.</p>")

    if pops:
        parts.append("<h2 id='discovery'>Discovery</h2>")
        parts.append(
            "<p>Population: every evaluated candidate of a meta-seed (references "
            "excluded). Average rank: mean over the meta-training envs of the rank by "
            "mean final return (1 = best), among the candidates (the search's rule, "
            "<i>avg_rank</i>). The curve and the references' lines use joint ranks: "
            "every candidate and every reference ranked in one population "
            "(<i>rank_with_refs</i> in the table of best candidates), so a point below a "
            "reference's line is a candidate ranked ahead of it. The curve is the best "
            "joint rank among the first k candidates in evaluation order, ranks taken in "
            "the final population.</p>"
        )
        parts.append(_figure(figures.get("fig2"), out, "Meta-training curve (Fig. 2)"))
        parts.append("<h3>References in the population</h3>" + _table(refs))
        parts.append(
            "<h3>Best discovered candidates</h3>"
            + _table(top.drop(columns=["lineage"], errors="ignore"))
        )
        # per population, never by run_id: two runs of one config share their run_ids
        for pop in pops:
            ranks = pop.ranks()
            chosen = pop.top(opts.top)
            code = pop.code(cid for cid, _ in chosen)
            for place, (cid, rank) in enumerate(chosen, start=1):
                m = pop.members[cid]
                parts.append(
                    f"<div class='card'><h3>{e(pop.run_id)} #{place}: {e(cid)} "
                    f"<span class='muted'>(average rank {rank:.2f} of {len(pop.order)})</span></h3>"
                    f"<p><b>Idea:</b> {e(m.idea or '-')}</p>{_code(code.get(cid))}"
                    f"<details><summary>Lineage back to an initial optimiser "
                    f"({len(pop.lineage(cid))} candidates)</summary>"
                    f"{_lineage_html(pop, cid, ranks)}</details></div>"
                )

    parts.append(_heldout_html(scanned, opts))
    created = _sweep_created(scanned) if not iqm.empty else {}
    # discovery runs a sweep's optimisers came from, by resolved path: each read once
    runs: dict[Path, list[Population]] = {sc.path.resolve(): [] for sc in scanned}
    for pop in pops:
        runs[pop.scan.path.resolve()].append(pop)
    for sweep, t in iqm.groupby("sweep", sort=False) if not iqm.empty else []:
        man = manifests.get(str(sweep), {})
        axis = str(t["axis"].iat[0])
        parts.append(f"<h2 id='sweep-{e(str(sweep))}'>Sweep {e(str(sweep))}</h2>")
        parts.append(
            f"<p class='muted'>Axis: {e(axis)}; environments: "
            f"{e(', '.join(dict.fromkeys(t['env'])))}; seeds per point: "
            f"{e(str(sorted(set(t['n']))))}.</p>"
        )
        parts.append(_figure(figures.get(f"sweep:{sweep}"), out, f"{sweep}: IQM with 95% CIs"))
        parts.append(
            "<h3>IQM with 95% CIs</h3>"
            + _table(stats.iqm_display(t))
            + "".join(f"<p><b>{e(x)}</b></p>" for x in stats.small_n_legend(t["n"]))
        )
        p = poi[poi["sweep"] == sweep] if not poi.empty else poi
        if not p.empty:
            parts.append("<h3>Probability of improvement P(X &gt; Y)</h3>" + _table(p))
        if f"profile:{sweep}" in figures:
            caption = f"{sweep}: performance profile"
            parts.append(
                "<h3>Performance profile</h3>" + _figure(figures[f"profile:{sweep}"], out, caption)
            )
        parts.append(_sweep_optimizers(created.get(str(sweep), []), man, runs))
    parts.append("</body></html>")
    return "\n".join(x for x in parts if x)


def _heldout_html(scanned: Sequence[Scan], opts: AnalysisOptions) -> str:
    """Each discovery run's held-out confirmation (rayopt.analysis.heldout)."""
    from rayopt.analysis import heldout

    parts = []
    for sc in scanned:
        h = heldout.load(sc, reps=opts.reps, seed=opts.seed)
        if h is None:
            continue
        n = len(h.seeds)
        warn = "".join(
            f"<p><b>{html.escape(x)}</b></p>" for x in stats.small_n_legend(h.table["n"])
        )
        parts.append(
            f"<h2 id='heldout-{html.escape(h.name)}'>Held-out confirmation: "
            f"{html.escape(str(sc.path))}</h2>"
            f"<p>Trained again at the full budget on {heldout.seed_range(h)} ({n} per "
            "env), which the search never used. Per env: held-out IQM [95% stratified "
            "bootstrap CI] and, beside it, the in-search score (mean over the search's "
            "seeds) that selected it: the gap is the winner's curse. <i>Best</i> discovered: "
            "each meta-seed's confirmed candidate with the best in-search rank; best initial: "
            "the initial optimiser with the best held-out rank. P(X &gt; Y): rliable's "
            "probability of improvement pooled over the envs.</p>"
            + warn
            + _table(heldout.display(h))
        )
    return "".join(parts)


def _sweep_created(scanned: Sequence[Scan]) -> dict[str, list[dict[str, Any]]]:
    """Sweep name -> its optimisers' ``created`` rows with their code."""
    out: dict[str, list[dict[str, Any]]] = {}
    for sc in scanned:
        ev = sc.events()
        ev = ev.filter(pc.and_(pc.equal(ev["event"], "created"), pc.is_valid(ev["sweep"])))
        rows = ev.select(["sweep", "run_id", "optimizer", "idea", "candidate_id"]).to_pylist()
        code = sc.code(created_key(r) for r in rows)
        for r in rows:
            out.setdefault(r["sweep"], []).append(dict(r, code=code.get(created_key(r))))
    return out


def _sweep_optimizers(
    rows: list[dict[str, Any]], manifest: dict[str, Any], runs: dict[Path, list[Population]]
) -> str:
    """The sweep's symbolic optimisers: code (from the sweep journal), provenance and,
    when the source run is readable, lineage. ``runs``: populations by resolved run
    directory, shared by every sweep of the report (a run missing from it is read and
    added)."""
    sources = {o.get("name"): o for o in manifest.get("optimizers", [])}
    cards = []
    for row in rows:
        if not row["code"]:
            continue
        src = sources.get(row["optimizer"], {})
        lineage = ""
        run_dir = src.get("run_dir")
        if run_dir and Path(run_dir).exists() and row["candidate_id"]:
            key = Path(run_dir).resolve()
            if key not in runs:
                try:
                    runs[key] = load_populations(run_dir)
                except (FileNotFoundError, ValueError):
                    runs[key] = []
            for pop in runs[key]:
                if pop.run_id == src.get("run_id") and row["candidate_id"] in pop.members:
                    lineage = (
                        "<details><summary>Lineage</summary>"
                        + _lineage_html(pop, row["candidate_id"], pop.ranks())
                        + "</details>"
                    )
        origin = f" from {html.escape(str(src.get('ref')))}" if src.get("ref") else ""
        cards.append(
            f"<div class='card'><b>{html.escape(row['optimizer'])}</b>{origin}"
            f"<p><b>Idea:</b> {html.escape(row['idea'] or '-')}</p>"
            f"<details><summary>Code</summary>{_code(row['code'])}</details>"
            f"{lineage}</div>"
        )
    return ("<h3>Optimisers</h3>" + "".join(cards)) if cards else ""


__all__ = ["AnalysisOptions", "AnalysisResult", "analyze"]
