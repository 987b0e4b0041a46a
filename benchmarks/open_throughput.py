"""OPEN's cost: its update alone and PPO's env-step rate with it, before and after issue 14.

"before" is the pre-issue-14 implementation frozen in ``tests/open_frozen.py``; "after" is
``rayopt.optim.open``. Both run the published multi-OPEN (``--weights``) on Breakout-MinAtar
PPO shapes (Table 1). Two measurements:

- update: one OPEN step over the agent's ~60k parameters, inside a 32-step ``lax.scan``
  (one PPO update's worth of minibatches), ms per step (wall and process CPU);
- ppo: rayopt's PPO with Adam, OPEN before and OPEN after, ``--seeds`` seeds, compiled
  first and then run in ``--reps`` interleaved rounds (this VM's speed drifts by +-10 %
  between minutes): env steps/s of the fastest run, OPEN / Adam of the fastest runs and
  the median over rounds of each round's OPEN / Adam.

    python benchmarks/open_throughput.py [--updates 10] [--seeds 8] [--reps 5]

and, to see where a step's time goes (XLA's per-op times, each fused op with its contents):

    taskset -c 0 python benchmarks/open_throughput.py --profile [--reps 5]

Target (issue 14): OPEN >= 0.33x Adam's env-step rate (Breakout, 8 seeds) on the 2-core CPU.
``cpu_s`` (process CPU seconds) is reported beside wall time: on a loaded machine it is the
fairer measure of work; quote wall figures only from an idle machine. PPO runs with
``truncation: bootstrap``, as ``benchmarks/ppo_throughput.py`` does (comparable figures).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
import time
from collections import Counter
from pathlib import Path

import jax
import jax.numpy as jnp
import optax

import rayopt  # noqa: F401  (host devices before JAX starts)

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))
from open_frozen import frozen_open_transform  # noqa: E402
from ppo_throughput import rayopt_trainer, timed_run  # noqa: E402

from rayopt.optim import UpdateContext, clip_by_global_norm_per_network  # noqa: E402
from rayopt.optim.open import load_open_params, open_transform  # noqa: E402
from rayopt.rl.networks import layer_proportions  # noqa: E402
from rayopt.rl.ppo import config_for, make_train  # noqa: E402


def update_scan(tx, env: str):
    """One PPO update's worth of OPEN steps (32, in one ``lax.scan``) on ``env``'s PPO
    parameters, compiled: ``(run, args, n_params)``; ``run(*args)`` executes it."""
    params = make_train(config_for(env), optax_identity()).init(jax.random.PRNGKey(0)).params
    ctx = UpdateContext(
        jax.random.PRNGKey(1),
        jnp.float32(0.3),
        jnp.float32(0.0),
        jax.tree.map(lambda p: jnp.ones(p.shape[-1:]), params),
        {k: layer_proportions(params[k]) for k in params},
        {
            k: jax.tree.map(lambda _, v=v: v, params[k])
            for k, v in (("actor", 1.0), ("critic", 0.0))
        },
    )
    grads = jax.tree.map(lambda p: 0.01 * jnp.tanh(p + 0.1), params)

    @jax.jit
    def run(params, state):
        def body(carry, i):
            p, s = carry
            u, s = tx.update(grads, s, p, ctx=ctx._replace(key=jax.random.fold_in(ctx.key, i)))
            return (jax.tree.map(jnp.add, p, u), s), None

        return jax.lax.scan(body, (params, state), jnp.arange(32))[0]

    args = (params, tx.init(params))
    jax.block_until_ready(run(*args))
    return run, args, sum(p.size for p in jax.tree.leaves(params))


def update_ms(tx, env: str, reps: int) -> dict:
    """ms per OPEN step on ``env``'s PPO parameters, 32 steps in one scan."""
    run, args, n = update_scan(tx, env)
    wall, cpu = [], []
    for _ in range(reps):
        t0, c0 = time.perf_counter(), time.process_time()
        jax.block_until_ready(run(*args))
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return dict(
        params=n, wall_ms=round(min(wall) / 32 * 1e3, 2), cpu_ms=round(min(cpu) / 32 * 1e3, 2)
    )


def _fusion_ops(hlo_text: str) -> dict[str, str]:
    """Each fused op of a compiled module -> the ops inside it, e.g. ``dot x3, tanh x3``:
    what a profile's ``ynn_fusion.1`` is, without reading the HLO."""
    bodies = {
        m.group(1): m.group(2)
        for m in re.finditer(r"^%?([\w.\-]+) \(.*?\) -> .*? \{\n(.*?)\n\}", hlo_text, re.M | re.S)
    }
    ops = {}
    for m in re.finditer(r"%([\w.\-]+) = (\S+) fusion\(.*?calls=%([\w.\-]+)", hlo_text):
        counts = Counter(re.findall(r"= \S+ (\w[\w-]*)\(", bodies.get(m.group(3), "")))
        for trivial in ("parameter", "constant", "broadcast", "bitcast"):
            counts.pop(trivial, None)
        ops[m.group(1)] = f"{m.group(2).split('{')[0]}: " + ", ".join(
            f"{op} x{c}" for op, c in counts.most_common()
        )
    return ops


def profile_update(tx, env: str, reps: int, top: int = 12) -> list[dict]:
    """Where an OPEN step's time goes: XLA's per-op times from a ``jax.profiler`` trace of
    the 32-step scan, ms per step, largest first. Run it pinned to one core
    (``taskset -c 0``) to see the cost of a step on a core of its own, as in PPO on CPU."""
    import gzip
    import tempfile

    run, args, _ = update_scan(tx, env)
    ops = _fusion_ops(run.lower(*args).compile().as_text())
    with tempfile.TemporaryDirectory() as d:
        with jax.profiler.trace(d, create_perfetto_trace=True):
            for _ in range(reps):
                jax.block_until_ready(run(*args))
        with gzip.open(next(Path(d).rglob("*.json.gz"))) as f:
            trace = json.load(f)
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    per_op: Counter = Counter()
    for e in events:
        # XLA's ops only: the executor's and Python's spans enclose them
        if e.get("ph") == "X" and not e["name"].startswith(("$", "ThunkExecutor", "Pjit")):
            per_op[e["name"]] += e.get("dur", 0)
    # the scan's own span encloses the ops of its body (a loop inside a step, such as the
    # noise draws', is a small share): not an op of its own
    for name in [k for k in per_op if k.startswith("while")]:
        if per_op[name] > 0.5 * (sum(per_op.values()) - per_op[name]):
            per_op.pop(name)
    total = sum(per_op.values())
    return [
        dict(
            kind="profile",
            env=env,
            op=name,
            ms_per_step=round(us / 1e3 / (32 * reps), 3),
            share=round(us / total, 3),
            contents=ops.get(name, ""),
        )
        for name, us in per_op.most_common(top)
    ]


def ppo_interleaved(env: str, txs: dict, seeds: int, updates: int, reps: int) -> list[dict]:
    """rayopt's PPO with each transformation (``None``: Adam), compiled first, then run
    in ``reps`` rounds of one run each, interleaved so that a noisy machine disturbs all
    alike. ``steps_per_s`` is from the fastest run, ``x_adam`` its ratio to Adam's, and
    ``x_adam_median`` the median over rounds of the per-round ratio."""
    from rayopt.optim import build, resolve
    from rayopt.rl.execution import train_seeds

    trainers, compile_s = {}, {}
    for name, tx in txs.items():
        cfg, trainers[name] = rayopt_trainer(
            env, updates, tx if tx is not None else build(resolve("adam"))
        )
        compile_s[name] = train_seeds(trainers[name], range(seeds)).compile_s
    runs: dict[str, list[tuple[float, float]]] = {name: [] for name in txs}
    for _ in range(reps):
        for name, trainer in trainers.items():
            r, cpu_s = timed_run(trainer, seeds)
            runs[name].append((r.run_s, cpu_s))
    steps = seeds * cfg.num_updates * cfg.num_envs * cfg.num_steps
    adam = runs["adam"]
    rows = []
    for name, rs in runs.items():
        run_s, cpu_s = min(w for w, _ in rs), min(c for _, c in rs)
        ratios = sorted(a[0] / r[0] for a, r in zip(adam, rs, strict=True))
        rows.append(
            dict(
                kind="ppo",
                impl=name,
                env=env,
                seeds=seeds,
                updates=updates,
                compile_s=round(compile_s[name], 2),
                run_s=round(run_s, 3),
                steps_per_s=round(steps / run_s),
                cpu_s=round(cpu_s, 3),
                x_adam=round(min(w for w, _ in adam) / run_s, 3),
                x_adam_cpu=round(min(c for _, c in adam) / cpu_s, 3),
                x_adam_median=round(ratios[len(ratios) // 2], 3),
                x_adam_rounds=[round(x, 3) for x in ratios],
            )
        )
    return rows


def optax_identity():
    return optax.with_extra_args_support(optax.identity())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--env", default="Breakout-MinAtar")
    ap.add_argument("--seeds", type=int, default=8)
    ap.add_argument("--updates", type=int, default=10, help="PPO updates per seed (x8192 steps)")
    ap.add_argument("--reps", type=int, default=5, help="interleaved PPO rounds")
    ap.add_argument(
        "--weights",
        default=os.environ.get("RAYOPT_OPEN_WEIGHTS", "/work/shared/open/multi_OPEN.npy"),
    )
    ap.add_argument("--skip-ppo", action="store_true")
    ap.add_argument(
        "--profile",
        action="store_true",
        help="only profile the current OPEN step (XLA's per-op times); pin it to one core",
    )
    ap.add_argument("--out", default=None, help="JSON (default benchmarks/results/open_*.json)")
    args = ap.parse_args()
    stem = "open_profile" if args.profile else "open_throughput"
    args.out = args.out or f"benchmarks/results/{stem}.json"
    theta, variant = load_open_params(args.weights)
    impls = {
        "before": frozen_open_transform(theta, variant),
        "after": open_transform(theta, variant),
    }
    load0 = os.getloadavg()[0]
    rows: list[dict] = []
    if args.profile:
        rows = profile_update(impls["after"], args.env, args.reps)
        print(f"{'op':<30}{'ms/step':>8}{'share':>7}  contents")
        for r in rows:
            print(f"{r['op']:<30}{r['ms_per_step']:>8.3f}{r['share']:>7.1%}  {r['contents']}")
        impls = {}
        args.skip_ppo = True
    for name, core in impls.items():
        r = dict(kind="update", impl=name, env=args.env, **update_ms(core, args.env, 3 * args.reps))
        rows.append(r)
        print(
            f"update  {name:<7} {r['wall_ms']:8.2f} ms/step wall {r['cpu_ms']:8.2f} ms CPU",
            flush=True,
        )
    if not args.skip_ppo:
        txs = {"adam": None} | {
            f"open-{name}": optax.chain(clip_by_global_norm_per_network(0.5), core)
            for name, core in impls.items()
        }
        rows += ppo_interleaved(args.env, txs, args.seeds, args.updates, args.reps)
        print(
            f"{'ppo':<14}{'seeds':>6}{'compile_s':>10}{'steps/s':>10}{'cpu_s':>8}{'x adam':>8}"
            f"{'median x adam':>15}"
        )
        for r in rows:
            if r["kind"] == "ppo":
                print(
                    f"{r['impl']:<14}{r['seeds']:>6}{r['compile_s']:>10.1f}{r['steps_per_s']:>10}"
                    f"{r['cpu_s']:>8.2f}{r['x_adam']:>8.3f}{r['x_adam_median']:>15.3f}"
                )
    meta = dict(
        machine=platform.machine(),
        devices=str(jax.local_devices()),
        jax=jax.__version__,
        weights=Path(args.weights).name,
        updates=args.updates,
        seeds=args.seeds,
        load_1min_start=round(load0, 2),
        load_1min_end=round(os.getloadavg()[0], 2),
        command="python benchmarks/open_throughput.py " + " ".join(sys.argv[1:]),
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(dict(meta=meta, rows=rows), indent=2))
    print(f"wrote {out} (load {meta['load_1min_start']} -> {meta['load_1min_end']})")


if __name__ == "__main__":
    main()
