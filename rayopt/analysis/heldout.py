"""Held-out confirmation read back: did the search find something better than what it
started from, on seeds it never saw?

From a discovery run directory (its journal's ``confirm`` rows, its confirmation
manifest and its search rows):

- per env, the held-out IQM with a 95 % stratified bootstrap CI (rliable) of every
  confirmed optimiser, next to its in-search score (the mean over the search's seeds),
  so the winner's curse is visible;
- the **best discovered** candidate of each meta-seed: the confirmed discovered one with
  the best *in-search* average rank (chosen without looking at held-out seeds);
- the **best initial** optimiser: the initial optimiser with the best *held-out* average
  rank over the envs (the strongest starting point in hindsight: the comparison is
  conservative);
- P(best discovered > best initial) and P(best discovered > Adam), pooled over the
  training envs (rliable's probability of improvement, averaged over envs), with
  bootstrap CIs.

Fewer than 3 seeds give no interval, and 3-4 seeds a marked one (``stats.iqm_cell``): the
tables say so (``stats.small_n_legend``).
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from rayopt.analysis import stats
from rayopt.analysis.scan import Scan, scans
from rayopt.analysis.sweep import read_manifests


@dataclasses.dataclass
class HeldOut:
    """The confirmation of one run."""

    run_dir: Path
    name: str
    envs: list[str]
    seeds: list[int]
    table: (
        pd.DataFrame
    )  # optimizer, role, meta_seed, env, n, n_nan, iqm, ci_low, ci_high, in_search
    best: dict[int, str]  # meta-seed -> its best discovered (by in-search rank)
    best_initial: str | None
    comparisons: pd.DataFrame  # meta_seed, x, y, poi, ci_low, ci_high, per-env poi

    @property
    def empty(self) -> bool:
        return self.table.empty

    def scores(self, name: str) -> dict[str, dict[str, Any]]:
        """env -> held-out IQM, CI, seeds and in-search score of optimiser ``name``."""
        rows = self.table[self.table.optimizer == name]
        return {
            r.env: dict(
                iqm=_f(r.iqm),
                ci=[_f(r.ci_low), _f(r.ci_high)],
                n=int(r.n),
                in_search=_f(r.in_search),
            )
            for r in rows.itertuples()
        }

    def summary(self) -> dict[str, Any]:
        """JSON-ready: per meta-seed its best with held-out scores and P(X > Y); the
        initial and reference optimisers' held-out scores."""
        out: dict[str, Any] = dict(seeds=self.seeds, best_initial=self.best_initial)
        out["meta_seeds"] = {
            ms: dict(
                best=name,
                heldout=self.scores(name),
                poi={
                    r.y: dict(poi=_f(r.poi), ci=[_f(r.ci_low), _f(r.ci_high)])
                    for r in self.comparisons[self.comparisons.meta_seed == ms].itertuples()
                },
            )
            for ms, name in self.best.items()
        }
        for role in ("initial", "reference"):
            names = dict.fromkeys(self.table[self.table.role == role].optimizer)
            out[role] = {n: self.scores(n) for n in names}
        return out


def _f(x: Any) -> float | None:
    return None if x is None or not math.isfinite(float(x)) else round(float(x), 4)


def load(
    run: str | os.PathLike | Scan,
    reps: int = 2000,
    poi_reps: int = 1000,
    seed: int = 0,
) -> HeldOut | None:
    """The confirmation of discovery run ``run`` (None if it has none)."""
    (sc,) = scans([run])
    run_dir = sc.path
    manifest = next(
        (m for name, m in read_manifests(run_dir).items() if name.endswith("-confirm")), None
    )
    if manifest is None:
        return None
    name = manifest["config"]["name"]
    scores = stats.load_scores([sc], stage="confirm", sweeps=[name])
    if scores.empty:
        return None
    envs = list(manifest["config"]["envs"])
    seeds = sorted(set(int(s) for s in scores["seed"]))
    roles = _roles(manifest, run_dir)
    table = stats.iqm_table(scores, reps=reps, seed=seed)
    table["role"] = table["optimizer"].map(lambda o: roles.get(o, {}).get("role", "reference"))
    table["meta_seed"] = table["optimizer"].map(lambda o: roles.get(o, {}).get("meta_seed"))
    in_search = _in_search(sc, roles)
    table["in_search"] = [
        in_search.get((o, e), math.nan) for o, e in zip(table.optimizer, table.env, strict=True)
    ]
    best: dict[int, str] = {}
    for o, r in roles.items():
        if r["role"] != "discovered" or o not in set(table.optimizer):
            continue
        ms = r["meta_seed"]
        if ms not in best or r["avg_rank"] < roles[best[ms]]["avg_rank"]:
            best[ms] = o
    initial = [o for o, r in roles.items() if r["role"] == "initial" and o in set(table.optimizer)]
    best_initial = _best_by_heldout_rank(table, initial, envs)
    pairs = [
        (x, y) for x in best.values() for y in (best_initial, "adam") if y in set(table.optimizer)
    ]
    poi = stats.poi_table(scores, pairs, reps=poi_reps, seed=seed)
    rows = []
    for ms, x in sorted(best.items()):
        for y in (best_initial, "adam"):
            p = poi[(poi.x == x) & (poi.y == y)]
            if p.empty:
                continue
            pooled = p[p.env == stats.ALL_ENVS].iloc[0]
            rows.append(
                dict(
                    meta_seed=ms,
                    x=x,
                    y=y,
                    poi=pooled.poi,
                    ci_low=pooled.ci_low,
                    ci_high=pooled.ci_high,
                    **{f"poi {r.env}": r.poi for r in p[p.env != stats.ALL_ENVS].itertuples()},
                )
            )
    comparisons = pd.DataFrame(rows, columns=None if rows else ["meta_seed", "x", "y", "poi"])
    return HeldOut(run_dir, name, envs, seeds, table, best, best_initial, comparisons)


def _roles(manifest: dict[str, Any], run_dir: Path) -> dict[str, dict[str, Any]]:
    """optimizer -> role (discovered | initial | reference), meta-seed, in-search rank."""
    from rayopt.config import DiscoveryConfig, from_dict, read_yaml

    initial: set[str] = set()
    f = run_dir / "config.yaml"
    if f.is_file():
        initial = set(from_dict(DiscoveryConfig, read_yaml(f)).search.initial)
    out: dict[str, dict[str, Any]] = {}
    for o in manifest.get("optimizers", []):
        if o.get("source") == "run":
            out[o["name"]] = dict(
                role="discovered",
                meta_seed=o.get("meta_seed"),
                run_id=o.get("run_id"),
                candidate_id=o.get("candidate_id"),
                avg_rank=float(o.get("avg_rank", math.inf)),
            )
        else:
            out[o["name"]] = dict(role="initial" if o["name"] in initial else "reference")
    return out


def _in_search(sc: Scan, roles: dict[str, dict[str, Any]]) -> dict[tuple[str, str], float]:
    """(optimizer, env) -> mean final return over the search's seeds (an initial or
    reference optimiser: over every meta-seed's evaluation of it)."""
    t = sc.evaluations("full").select(["run_id", "candidate_id", "env", "final_return"])
    df = t.to_pandas()
    df = df[np.isfinite(df.final_return.to_numpy(float))]
    means: dict[tuple[str, str], dict[str, float]] = {}
    for (run_id, cid, env), v in df.groupby(["run_id", "candidate_id", "env"]).final_return:
        means.setdefault((run_id, cid), {})[env] = float(v.mean())
    shared: dict[str, dict[str, float]] = {}
    for (cid, env), v in df.groupby(["candidate_id", "env"]).final_return:
        shared.setdefault(cid, {})[env] = float(v.mean())
    out: dict[tuple[str, str], float] = {}
    for name, r in roles.items():
        if r["role"] == "discovered":
            envs = means.get((r["run_id"], r["candidate_id"]), {})
        else:
            envs = shared.get(("init-" if r["role"] == "initial" else "ref-") + name, {})
        out |= {(name, env): v for env, v in envs.items()}
    return out


def _best_by_heldout_rank(
    table: pd.DataFrame, names: Sequence[str], envs: Sequence[str]
) -> str | None:
    if not names:
        return None
    from rayopt.search.archive import average_ranks

    scores = [{r.env: r.iqm for r in table[table.optimizer == n].itertuples()} for n in names]
    ranks = average_ranks(scores, envs)
    return names[int(np.argmin(ranks))]


# ------------------------------------------------------------------ for people
def display(h: HeldOut) -> pd.DataFrame:
    """One row per confirmed optimiser (discovered, initial, reference), per env the
    held-out ``IQM [95% CI]`` and the in-search score, then P(X > Y) for the bests."""
    names = list(dict.fromkeys(h.table.optimizer))
    role = dict(zip(h.table.optimizer, h.table.role, strict=True))
    order = [*h.best.values()]
    for kind in ("discovered", "initial", "reference"):
        order += [o for o in names if role[o] == kind and o not in order]
    rows = []
    for o in order:
        d = h.table[h.table.optimizer == o]
        ms = d.meta_seed.iat[0]
        ms = int(ms) if ms is not None and math.isfinite(float(ms)) else None
        label = d.role.iat[0]
        if label == "discovered":
            label = f"ms{ms} best" if h.best.get(ms) == o else f"ms{ms}"
        elif o == h.best_initial:
            label = "best initial"
        row: dict[str, Any] = {"optimizer": o, "role": label}
        for env in h.envs:
            r = d[d.env == env]
            if r.empty:
                row[env] = "-"
                continue
            r = r.iloc[0]
            row[env] = stats.iqm_cell(r.iqm, r.ci_low, r.ci_high, int(r.n))
            row[f"{env} (in search)"] = stats._fmt(r.in_search)
        for y in (h.best_initial, "adam"):
            c = (
                h.comparisons[(h.comparisons.x == o) & (h.comparisons.y == y)]
                if not h.comparisons.empty
                else []
            )
            if len(c):
                c = c.iloc[0]
                row[f"P(> {y})"] = f"{c.poi:.2f} [{stats._fmt(c.ci_low)}, {stats._fmt(c.ci_high)}]"
        rows.append(row)
    return pd.DataFrame(rows).fillna("")


def seed_range(h: HeldOut) -> str:
    """``seeds 100-103``, or ``seed 100`` for one."""
    return f"seed {h.seeds[0]}" if len(h.seeds) == 1 else f"seeds {h.seeds[0]}-{h.seeds[-1]}"


def text(h: HeldOut) -> str:
    n = len(h.seeds)
    head = (
        f"held-out confirmation: {seed_range(h)} ({n} per env), "
        "IQM [95% bootstrap CI]; in search: mean over the search's seeds"
    )
    legend = "".join(f"{x}\n" for x in stats.small_n_legend(h.table["n"]))
    return head + "\n" + stats.to_text(display(h)) + legend
