"""Discovery gain: does a fixed-budget discovery find an optimiser better than the ones
it started from, on seeds it never saw?

Runs a discovery (any discovery config; default configs/bench/discovery-gain.yaml: the
offline mutator, Breakout + SpaceInvaders at 2.5e5 steps, 2 meta-seeds, held-out
confirmation on 8 fresh seeds) and prints, per env, the held-out IQM [95 % CI] of the
best discovered candidate of each meta-seed (picked by in-search rank), the best initial
optimiser, Discovered Optimiser 1 and Adam; P(best discovered > best initial) and
P(> Adam) pooled over the envs; the winner's curse (each winner's in-search score
against its held-out one); candidates evaluated, duplicates avoided, failed, wall time.
Writes the same as JSON.

    python benchmarks/discovery_gain.py [--config FILE] [--out DIR] [--resume DIR] [key=value ...]

Target (issue 11): in every meta-seed the best discovered beats the best initial on
held-out seeds, with P(X > best initial) >= 0.75 pooled over the envs; stretch: it
matches Discovered Optimiser 1.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import math
import os
import subprocess
import time
from pathlib import Path

import pandas as pd

from rayopt.analysis import heldout, stats
from rayopt.config import load_discovery
from rayopt.search.driver import Discovery
from rayopt.search.fleet import init_ray

HERE = Path(__file__).resolve().parent
DEFAULT_CONFIG = HERE.parent / "configs" / "bench" / "discovery-gain.yaml"


def run(args: argparse.Namespace) -> tuple[Discovery, dict]:
    if args.resume:
        d = Discovery.load(args.resume)
    else:
        cfg = load_discovery(args.config, args.overrides)
        out = Path(args.out or f"runs/{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}")
        d = Discovery.create(cfg, out)
    init_ray(d.config.address)
    summary = asyncio.run(d.run())
    return d, summary


def table(h: heldout.HeldOut, summary: dict) -> tuple[list[dict], list[dict]]:
    """(rows: one per optimiser shown, winners: in-search vs held-out per winner)."""
    shown = [*h.best.values()]
    if h.best_initial:
        shown.append(h.best_initial)
    shown += [o for o in ("discovered_1", "adam") if o in set(h.table.optimizer)]
    rows = []
    for o in shown:
        d = h.table[h.table.optimizer == o]
        role = next((f"ms{ms} best discovered" for ms, b in h.best.items() if b == o), None)
        role = role or ("best initial" if o == h.best_initial else "reference")
        row = {"optimizer": o, "role": role}
        for r in d.itertuples():
            row[r.env] = dict(
                iqm=r.iqm, ci=[r.ci_low, r.ci_high], n=int(r.n), in_search=r.in_search
            )
        rows.append(row)
    winners = []
    for ms, o in h.best.items():
        d = h.table[h.table.optimizer == o]
        winners.append(
            dict(
                meta_seed=ms,
                optimizer=o,
                **{f"{r.env} in search": r.in_search for r in d.itertuples()},
                **{f"{r.env} held out": r.iqm for r in d.itertuples()},
            )
        )
    return rows, winners


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=str(DEFAULT_CONFIG))
    p.add_argument("--out", help="run directory (default runs/NAME-DATE)")
    p.add_argument("--resume", help="finish an interrupted benchmark run")
    p.add_argument("--json", default=str(HERE / "results" / "discovery_gain.json"))
    p.add_argument("overrides", nargs="*", metavar="key=value")
    args = p.parse_args()
    t0 = time.monotonic()
    load = os.getloadavg()
    d, summary = run(args)
    wall = time.monotonic() - t0
    h = heldout.load(d.run_dir)
    if h is None:
        print("no held-out confirmation (confirm.enabled is off?)")
        return 1
    rows, winners = table(h, summary)
    comps = h.comparisons
    ms = summary["meta_seeds"]
    counts = dict(
        evaluated=sum(m["evaluated"] for m in ms.values()),
        duplicates_avoided=sum(m["duplicates"] for m in ms.values()),
        failed_or_screened=sum(m["failed"] for m in ms.values()),
    )
    poi_init = comps[comps.y == h.best_initial] if h.best_initial else comps.iloc[0:0]
    beats = {
        int(r.meta_seed): bool(
            all(
                h.table[(h.table.optimizer == r.x) & (h.table.env == e)].iqm.iat[0]
                > h.table[(h.table.optimizer == h.best_initial) & (h.table.env == e)].iqm.iat[0]
                for e in h.envs
            )
        )
        for r in poi_init.itertuples()
    }
    target = bool(beats) and all(beats.values()) and bool((poi_init.poi >= 0.75).all())

    print()
    print(heldout.text(h))
    print("winner's curse (final return: in search over the search's seeds vs held out, IQM):")
    print(stats.to_text(pd.DataFrame(winners)))
    print(
        f"candidates evaluated {counts['evaluated']}, duplicates avoided "
        f"{counts['duplicates_avoided']}, failed or screened out {counts['failed_or_screened']}; "
        f"wall {wall / 60:.1f} min (load average at start {load[0]:.2f})"
    )
    for r in poi_init.itertuples():
        print(
            f"ms{r.meta_seed}: P({r.x} > {h.best_initial}) = {r.poi:.2f} "
            f"[{r.ci_low:.2f}, {r.ci_high:.2f}]; beats it on every env: {beats[int(r.meta_seed)]}"
        )
    print(
        "target (every meta-seed beats the best initial, P >= 0.75): "
        + ("met" if target else "missed")
    )

    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=HERE
    ).stdout.strip()
    out = dict(
        command="python benchmarks/discovery_gain.py "
        + " ".join(f"{k} {v}" for k, v in (("--config", args.config),) if v)
        + (" " + " ".join(args.overrides) if args.overrides else ""),
        commit=commit,
        run_dir=str(d.run_dir),
        config=json.loads(json.dumps(dataclasses.asdict(d.config), default=str)),
        wall_s=round(wall, 1),
        load_at_start=load[0],
        heldout_seeds=h.seeds,
        rows=rows,
        winners=winners,
        comparisons=json.loads(comps.to_json(orient="records")),
        best_initial=h.best_initial,
        beats_best_initial_every_env=beats,
        target_met=target,
        **counts,
    )
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=2, default=_num) + "\n")
    print(f"wrote {args.json}")
    return 0


def _num(x: object) -> object:
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return float(x) if hasattr(x, "__float__") else str(x)


if __name__ == "__main__":
    raise SystemExit(main())
