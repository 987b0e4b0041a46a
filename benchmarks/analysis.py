"""How fast is ``rayopt analyze`` on a large journal?

Writes a synthetic, schema-valid dump of about ``--rows`` rows (default 1M) and times
``rayopt analyze`` on it, as a subprocess, the way a person runs it. The dump is shaped
like a big real one: ``--meta-seeds`` discovery searches (every candidate: created and
evaluated events, two LLM calls, a screening row and full evaluations on 4 MinAtar envs x
8 seeds, each with a 64-point return curve and code), plus the four paper sweeps (Figs.
3-6) at paper scale (16 seeds) for Adam, OPEN and the top 3 of every meta-seed.

    python benchmarks/analysis.py [--rows 1e6] [--files 200] [--dump DIR] [--keep]
                                  [--out benchmarks/results/analysis.json]

Target (issue): well under a minute on a 2-core CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from rayopt.results.journal import journal_dir  # noqa: E402
from rayopt.results.schema import SCHEMA  # noqa: E402

ENVS = ["Asterix-MinAtar", "Breakout-MinAtar", "Freeway-MinAtar", "SpaceInvaders-MinAtar"]
ENV_SCALE = np.array([10.0, 20.0, 60.0, 100.0])
SEEDS, CURVE = 8, 64
CODE = (
    "def update_fn(w, g, var1, var2, t, d, t_p, b_p, l_p, key):\n"
    "    m = 0.9\n    var1 = m * var1 + (1 - m) * g\n"
    "    var2 = m * var2 + (1 - m) * (g - var1) ** 2\n"
    "    lr = 1 / (1 + jnp.sqrt(var2 + 1e-8))\n    lr2 = (1 - t_p) * (1 + l_p)\n"
    "    d_scale = 1 + jnp.log(1 + d) * (1 - t_p) * {k}\n"
    "    update = var1 * lr * d_scale * lr2\n    return update, var1, var2\n"
)


def _table(n: int, cols: dict[str, pa.Array | np.ndarray | list]) -> pa.Table:
    """A table of the journal schema: given columns, nulls elsewhere."""
    arrays = []
    for field in SCHEMA:
        v = cols.get(field.name)
        if v is None:
            arrays.append(pa.nulls(n, field.type))
        elif isinstance(v, pa.Array):
            arrays.append(v.cast(field.type))
        else:
            arrays.append(pa.array(v, type=field.type))
    return pa.Table.from_arrays(arrays, schema=SCHEMA)


def _curves(finals: np.ndarray, rng: np.random.Generator) -> pa.Array:
    """One 64-point float32 return curve per row, rising to its final return."""
    n = len(finals)
    ramp = np.linspace(0.0, 1.0, CURVE, dtype=np.float32)
    values = (
        finals[:, None].astype(np.float32) * ramp[None, :]
        + rng.normal(0, 0.05, (n, CURVE)).astype(np.float32)
    ).ravel()
    offsets = np.arange(0, (n + 1) * CURVE, CURVE, dtype=np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values, pa.float32()))


def discovery(
    meta_seed: int, candidates: int, rng: np.random.Generator, t0: float
) -> list[pa.Table]:
    """One meta-seed: initial, mutated and reference candidates, in evaluation order."""
    run_id = f"bench-ms{meta_seed}"
    init = [
        f"init-{n}" for n in ("sign_update", "relative_update", "gradient_step", "clipped_update")
    ]
    refs = ["ref-adam", "ref-open"]
    ids = init + [f"i{i % 4}-g{i // 32 + 1}-s{i % 8 + 1}-{i}" for i in range(candidates - 4)] + refs
    n = len(ids)
    quality = np.concatenate(
        [
            rng.normal(-1, 0.5, 4),
            np.sort(rng.normal(0, 1, n - 6)) * 0.3 + rng.normal(0, 1, n - 6),
            [0.8, 0.5],
        ]
    )
    parents = [None] * 4 + [ids[int(rng.integers(0, i + 4))] for i in range(n - 6)] + [None] * 2
    mutator = ["library"] * 4 + ["llm"] * (n - 6) + ["reference"] * 2
    times = t0 + np.arange(n, dtype=float) * 10.0
    created = _table(
        n,
        dict(
            run_id=[run_id] * n,
            meta_seed=np.full(n, meta_seed),
            row_type=["event"] * n,
            event=["created"] * n,
            time=times,
            candidate_id=ids,
            parent_id=parents,
            optimizer=ids,
            mutator=mutator,
            code=[CODE.format(k=i) for i in range(n)],
            idea=[f"idea {i}: anneal the dormancy boost with training progress" for i in range(n)],
            island=np.arange(n) % 4,
            generation=np.arange(n) // 32,
            step=np.arange(n) % 8 + 1,
        ),
    )
    # full evaluations: candidate x env x seed
    c = np.repeat(np.arange(n), len(ENVS) * SEEDS)
    e = np.tile(np.repeat(np.arange(len(ENVS)), SEEDS), n)
    s = np.tile(np.arange(SEEDS), n * len(ENVS))
    final = ENV_SCALE[e] * (1.0 + 0.3 * quality[c] + rng.normal(0, 0.1, len(c)))
    m = len(c)
    full = _table(
        m,
        dict(
            run_id=[run_id] * m,
            meta_seed=np.full(m, meta_seed),
            row_type=["evaluation"] * m,
            time=times[c] + 5.0,
            candidate_id=pa.array(ids).take(pa.array(c)),
            env=pa.array(ENVS).take(pa.array(e)),
            seed=s,
            stage=["full"] * m,
            final_return=final,
            auc=final / 2,
            return_curve=_curves(final, rng),
            finite=np.ones(m, bool),
            status=["ok"] * m,
            total_timesteps=np.full(m, 10_000_000),
            hidden_size=np.full(m, 64),
            activation=["relu"] * m,
        ),
    )
    screen = _table(
        n,
        dict(
            run_id=[run_id] * n,
            meta_seed=np.full(n, meta_seed),
            row_type=["evaluation"] * n,
            time=times + 2.0,
            candidate_id=ids,
            env=["CartPole-v1"] * n,
            seed=np.zeros(n),
            stage=["screen"] * n,
            final_return=rng.normal(100, 20, n),
            status=["ok"] * n,
        ),
    )
    k = 2 * n
    calls = _table(
        k,
        dict(
            run_id=[run_id] * k,
            meta_seed=np.full(k, meta_seed),
            row_type=["event"] * k,
            event=["llm_call"] * k,
            time=np.repeat(times, 2) - 1.0,
            role=["thinker", "coder"] * n,
            provider=["openai"] * k,
            model=["gpt-4o"] * k,
            tokens_in=rng.integers(500, 3000, k),
            tokens_out=rng.integers(100, 800, k),
            latency_s=rng.uniform(1, 10, k),
            cost_usd=rng.uniform(0.001, 0.02, k),
        ),
    )
    evaluated = _table(
        n,
        dict(
            run_id=[run_id] * n,
            meta_seed=np.full(n, meta_seed),
            row_type=["event"] * n,
            event=["evaluated"] * n,
            time=times + 9.0,
            candidate_id=ids,
            status=["ok"] * n,
        ),
    )
    return [created, full, screen, calls, evaluated]


def sweeps(optimizers: list[str], rng: np.random.Generator, t0: float) -> list[pa.Table]:
    """The paper's four sweeps at paper scale (16 seeds)."""
    out = []
    lengths = [str(int(v)) for v in (1e6, 3e6, 1e7, 3e7, 1e8)]
    specs = [
        ("fig3-lengths", "total_timesteps", lengths, ENVS),
        ("fig4-sizes", "hidden_size", ["16", "32", "64", "128", "256", "512", "1024"], ENVS),
        ("fig5-activations", "activation", ["relu", "tanh"], ENVS),
        ("fig6-envs", "env", None, ["CartPole-v1", "Craftax-Classic-Symbolic-v1"]),
    ]
    skill = {o: rng.normal(0, 0.3) for o in optimizers}
    for name, axis, values, envs in specs:
        pts = [(e, e) for e in envs] if values is None else [(v, e) for v in values for e in envs]
        rows = [(o, v, e, s) for v, e in pts for o in optimizers for s in range(16)]
        o_, v_, e_, s_ = (list(x) for x in zip(*rows, strict=True))
        m = len(rows)
        base = np.array([skill[o] for o in o_])
        final = 50.0 * (1.0 + base + rng.normal(0, 0.2, m))
        extra = {}
        if axis in ("total_timesteps", "hidden_size"):
            extra[axis] = np.array([int(v) for v in v_])
        if axis == "activation":
            extra["activation"] = v_
        out.append(
            _table(
                m,
                dict(
                    run_id=[name] * m,
                    row_type=["evaluation"] * m,
                    stage=["sweep"] * m,
                    sweep=[name] * m,
                    axis=[axis] * m,
                    axis_value=v_,
                    optimizer=o_,
                    env=e_,
                    seed=s_,
                    time=np.full(m, t0),
                    final_return=final,
                    auc=final / 2,
                    return_curve=_curves(final, rng),
                    status=["ok"] * m,
                    finite=np.ones(m, bool),
                    **extra,
                ),
            )
        )
    return out


def make_dump(path: Path, rows: int, meta_seeds: int, files: int, seed: int = 0) -> dict:
    """Write the dump; returns its shape."""
    rng = np.random.default_rng(seed)
    per_candidate = len(ENVS) * SEEDS + 1 + 2 + 2  # full + screen + 2 calls + 2 events
    optimizers = ["adam", "open"] + [
        f"bench-ms{m}/top{k}" for m in range(meta_seeds) for k in range(3)
    ]
    sweep_rows = 16 * len(optimizers) * (4 * 5 + 4 * 7 + 4 * 2 + 2)
    candidates = max(10, (rows - sweep_rows) // (per_candidate * meta_seeds))
    t0 = 1.7e9
    tables = [t for m in range(meta_seeds) for t in discovery(m, candidates, rng, t0)]
    tables += sweeps(optimizers, rng, t0 + 1e6)
    table = pa.concat_tables(tables)
    jd = journal_dir(path)
    jd.mkdir(parents=True, exist_ok=True)
    step = max(1, -(-table.num_rows // files))
    for i, start in enumerate(range(0, table.num_rows, step)):
        pq.write_table(table.slice(start, step), jd / f"part-{i:06d}.parquet", compression="zstd")
    (path / "config.yaml").write_text(json.dumps({"name": "bench", "envs": ENVS}))
    return dict(
        rows=table.num_rows,
        files=len(list(jd.glob("*.parquet"))),
        bytes=sum(f.stat().st_size for f in jd.glob("*.parquet")),
        meta_seeds=meta_seeds,
        candidates_per_meta_seed=candidates,
        sweep_rows=sweep_rows,
        sweep_optimizers=len(optimizers),
    )


def time_analyze(dump: Path, out: Path, extra: list[str]) -> dict:
    """Run ``rayopt analyze`` as a subprocess; wall seconds and its own phase timings."""
    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    t = time.perf_counter()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "rayopt",
            "analyze",
            str(dump),
            "--out",
            str(out),
            "--quiet",
            *extra,
        ],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise RuntimeError(f"rayopt analyze failed:\n{proc.stdout}\n{proc.stderr}")
    m = re.search(r"timings \(s\): (\{.*\})", proc.stdout)
    return dict(wall_s=round(wall, 2), phases=json.loads(m.group(1)) if m else {})


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=float, default=1e6)
    ap.add_argument("--meta-seeds", type=int, default=8)
    ap.add_argument("--files", type=int, default=200, help="part files in the dump")
    ap.add_argument(
        "--dump",
        help="an empty or new directory to write the dump to (default: a temporary directory)",
    )
    ap.add_argument("--keep", action="store_true", help="keep the dump")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "analysis.json"))
    args = ap.parse_args()

    if args.dump and Path(args.dump).exists() and any(Path(args.dump).iterdir()):
        ap.error(f"--dump {args.dump} is not empty; give an empty or new directory")
    dump = Path(args.dump) if args.dump else Path(tempfile.mkdtemp(prefix="rayopt-bench-"))
    t = time.perf_counter()
    shape = make_dump(dump, int(args.rows), args.meta_seeds, args.files)
    shape["generate_s"] = round(time.perf_counter() - t, 2)
    runs = {
        "full (plots + report)": time_analyze(dump, dump / "analysis", []),
        "tables only (--no-plots)": time_analyze(dump, dump / "analysis-np", ["--no-plots"]),
    }
    print(
        f"dump: {shape['rows']:,} rows in {shape['files']} files, "
        f"{shape['bytes'] / 1e6:.1f} MB ({shape['meta_seeds']} meta-seeds x "
        f"{shape['candidates_per_meta_seed']} candidates + {shape['sweep_rows']:,} sweep rows), "
        f"generated in {shape['generate_s']} s"
    )
    phases = list(next(iter(runs.values()))["phases"])
    head = f"{'rayopt analyze':<26}{'wall s':>8}" + "".join(f"{p:>15}" for p in phases)
    print(head)
    for name, r in runs.items():
        print(
            f"{name:<26}{r['wall_s']:>8.2f}"
            + "".join(f"{r['phases'].get(p, 0.0):>15.2f}" for p in phases)
        )
    result = dict(
        machine=dict(
            platform=platform.platform(), python=platform.python_version(), cpus=os.cpu_count()
        ),
        dump=shape,
        runs=runs,
        target="well under 60 s wall for 1M rows",
    )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    if not args.keep and not args.dump:
        shutil.rmtree(dump, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
