"""How often a nominal 95 % percentile-bootstrap interval of the IQM covers the true IQM,
by number of seeds: why rayopt reports no interval below 3 seeds and marks those over
3-4 (docs/analysis.md, "Few seeds").

The bootstrap is rliable's for one stratum (resample the seeds with replacement, IQM =
25 % trimmed mean, percentiles 2.5 / 97.5), written with NumPy so 2000 trials run in
about a minute. Seeds are drawn from a normal and a log-normal distribution (skewed,
like returns); the true IQM is the distribution's (0 for the normal; from 2e6 draws for
the log-normal).

    python benchmarks/small_n_coverage.py [--trials 2000] [--reps 1000]
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import scipy.stats


def coverage(dist: str, n: int, trials: int, reps: int, rng: np.random.Generator) -> float:
    draw = (lambda size: rng.normal(size=size)) if dist == "normal" else rng.lognormal
    truth = 0.0 if dist == "normal" else scipy.stats.trim_mean(rng.lognormal(size=2_000_000), 0.25)
    hits = 0
    for _ in range(trials):
        x = draw(size=n)
        boot = scipy.stats.trim_mean(x[rng.integers(0, n, size=(reps, n))], 0.25, axis=1)
        lo, hi = np.percentile(boot, [2.5, 97.5])
        hits += lo <= truth <= hi
    return hits / trials


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=2000)
    p.add_argument("--reps", type=int, default=1000)
    p.add_argument("--seeds", default="2,3,4,5,8,16")
    args = p.parse_args()
    rng = np.random.default_rng(0)
    out = {
        dist: {
            n: round(coverage(dist, n, args.trials, args.reps, rng), 3)
            for n in map(int, args.seeds.split(","))
        }
        for dist in ("normal", "lognormal")
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
