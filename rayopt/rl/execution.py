"""Run one PPO trainer for many seeds, as fast as the machine allows.

One code path for every backend: the seeds are split over the local devices of the
default backend with ``shard_map``; on each device the agents are initialised one after
another (``lax.map``) and then trained by the strategy that suits the device:

- GPU/TPU (``vmap``): one device, one big vmap over all seeds.
- CPU (``map``): rayopt exposes one XLA host device per core (see
  ``rayopt/__init__.py``), so seeds spread over cores, and a device trains its seeds
  one after another. On 2 cores, vmapped seeds add no throughput, and vmap doubles the
  compile time (measured: ~7 s plain vs ~12 s vmapped for Breakout-MinAtar).

Initialising outside the vmap is not optional on CPU: with jaxlib 0.10, flax's
orthogonal initialiser under ``vmap`` runs a batched LAPACK QR that deadlocks the
2-thread pool (``ParallelBatchMap``). tests/test_deadlock.py guards against its return.
"""

from __future__ import annotations

import dataclasses
import math
import os
import threading
import time
import weakref
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, PartitionSpec

from rayopt.rl.ppo import Metrics, Trainer


def seed_keys(seeds: Sequence[int]) -> jax.Array:
    """One PRNG key per seed; a seed gives the same run alone or in a batch."""
    return jnp.stack([jax.random.PRNGKey(int(s)) for s in seeds])


def plan(num_seeds: int, devices: Sequence[jax.Device] | None = None) -> tuple[int, int]:
    """(devices used, seeds per device): never more devices than seeds."""
    devices = list(devices if devices is not None else jax.local_devices())
    used = max(1, min(len(devices), num_seeds))
    return used, math.ceil(num_seeds / used)


@dataclasses.dataclass(frozen=True)
class TrainResult:
    """Metrics with a leading seed axis (numpy), and where the time went."""

    metrics: Metrics
    compile_s: float
    run_s: float


def init_many(trainer: Trainer, keys: jax.Array):
    """Initialise one agent per key, one after another.

    Never ``vmap(trainer.init)``: on CPU with jaxlib 0.10 the batched QR of the
    orthogonal initialiser deadlocks. Sequential init costs microseconds.
    """
    return jax.lax.map(trainer.init, keys)


def default_strategy() -> str:
    """``map`` on CPU, ``vmap`` on accelerators."""
    return "map" if jax.default_backend() == "cpu" else "vmap"


def _per_device_fn(trainer: Trainer, strategy: str):
    def per_device(keys: jax.Array, num_updates: jax.Array) -> Metrics:
        if strategy == "vmap":
            states = init_many(trainer, keys)
            return jax.vmap(trainer.run, in_axes=(0, None))(states, num_updates)
        return jax.lax.map(lambda k: trainer.train(k, num_updates), keys)

    return per_device


#: XLA options for ``fast_compile`` on CPU: LLVM without optimisation compiles PPO in
#: about half the time and runs it about half as fast (measured, CartPole: 6.5 s -> 3.7 s
#: compile, 0.10 s -> 0.21 s run), the right trade for short runs (tests, screening).
FAST_COMPILE = {"xla_backend_optimization_level": 0}


def _compile(trainer: Trainer, n_devices: int, per_device: int, strategy: str, fast_compile: bool):
    """AOT-compiled training for this layout, ``(keys, num_updates) -> Metrics``, and the
    seconds compiling took."""
    mesh = Mesh(np.asarray(jax.local_devices()[:n_devices]), ("seeds",))
    sharded = jax.shard_map(
        _per_device_fn(trainer, strategy),
        mesh=mesh,
        in_specs=(PartitionSpec("seeds"), PartitionSpec()),
        out_specs=PartitionSpec("seeds"),
        check_vma=False,
    )
    t0 = time.perf_counter()
    example = seed_keys(range(n_devices * per_device))
    options = FAST_COMPILE if fast_compile and jax.default_backend() == "cpu" else None
    updates = jax.ShapeDtypeStruct((), jnp.int32)
    compiled = jax.jit(sharded).lower(example, updates).compile(compiler_options=options)
    return compiled, time.perf_counter() - t0


def compile_seeds(
    trainer: Trainer, num_seeds: int, strategy: str = "auto", fast_compile: bool = False
) -> tuple[jax.stages.Compiled, float, tuple]:
    """The executable training ``num_seeds`` seeds (compiled now, or kept from before on
    the trainer), the seconds compiling took (0 when kept) and its layout."""
    if num_seeds < 1:
        raise ValueError("need at least one seed")
    if strategy == "auto":
        strategy = default_strategy()
    if strategy not in ("vmap", "map"):
        raise ValueError(f"strategy must be auto, vmap or map, not {strategy!r}")
    n_devices, per_device = plan(num_seeds)
    layout = (n_devices, per_device, strategy, fast_compile)
    with _compile_lock(trainer, layout):  # two threads never compile the same thing
        if layout in trainer.compiled:
            return trainer.compiled[layout], 0.0, layout
        compiled, compile_s = _compile(trainer, *layout)
        trainer.compiled[layout] = compiled
    return compiled, compile_s, layout


_LOCKS: weakref.WeakKeyDictionary[Trainer, dict[tuple, threading.Lock]] = (
    weakref.WeakKeyDictionary()
)
_LOCKS_LOCK = threading.Lock()


def _compile_lock(trainer: Trainer, layout: tuple) -> threading.Lock:
    """One lock per (trainer, layout): an evaluator may compile its next evaluation on
    one thread while running another, and the two may share a trainer (Adam's reference
    run and an Adam evaluation)."""
    with _LOCKS_LOCK:
        return _LOCKS.setdefault(trainer, {}).setdefault(layout, threading.Lock())


def use_compile_cache(path: str, max_gb: float = 0.0) -> str | None:
    """Keep this process's compiled executables in JAX's persistent compilation cache at
    ``path`` (``~`` expanded on this node; least recently used entries evicted past
    ``max_gb``, 0: unbounded), so a program compiled once on a node loads in about a
    second instead of compiling again: a candidate's full evaluation after its speed
    screen, references and initial optimisers across runs, evaluations redone after a
    crash. JAX keys entries by the program, compile options, backend and versions. A
    cache the process already has (``JAX_COMPILATION_CACHE_DIR``, or set before) is
    kept. Compiles over 0.1 s are kept (JAX's default, 1 s, would skip a tiny PPO on a
    fast host; eager ops take milliseconds). Call before the first compile. Returns the
    directory in use (None: off)."""
    current = jax.config.jax_compilation_cache_dir
    if current or not path:
        return current or None
    directory = os.path.expanduser(path)
    jax.config.update("jax_compilation_cache_dir", directory)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.1)
    if max_gb > 0:  # JAX reads a size of 0 as "no cache"
        jax.config.update("jax_compilation_cache_max_size", max(1, int(max_gb * 1e9)))
    return directory


def memory_bytes(compiled: jax.stages.Compiled, n_devices: int = 1) -> dict[str, int] | None:
    """XLA's memory analysis of a compiled executable: temp, argument and output buffer
    bytes per device and their total over the ``n_devices`` it runs on (None when the
    backend reports none)."""
    try:
        stats = compiled.memory_analysis()
    except Exception:  # noqa: BLE001 - not every backend implements it
        return None
    if stats is None:
        return None
    parts = {
        "temp": int(stats.temp_size_in_bytes),
        "argument": int(stats.argument_size_in_bytes),
        "output": int(stats.output_size_in_bytes),
    }
    return {**parts, "total": sum(parts.values()) * max(1, n_devices)}


def train_seeds(
    trainer: Trainer,
    seeds: Sequence[int],
    strategy: str = "auto",
    fast_compile: bool = False,
    num_updates: int | None = None,
) -> TrainResult:
    """Train ``trainer`` once per seed (``strategy``: auto, vmap or map).

    ``fast_compile`` trades run speed for compile speed on CPU (see ``FAST_COMPILE``).
    The compiled executable is kept on the trainer per layout: reuse the trainer object
    to skip recompiling (``compile_s`` is then 0). ``num_updates`` (default: all of the
    config's) runs only the first updates, with the same executable; the return curve
    then has that many points.
    """
    seeds = list(seeds)
    total = trainer.config.num_updates
    n = total if num_updates is None else int(num_updates)
    if not 1 <= n <= total:
        raise ValueError(f"num_updates must be within 1..{total} (the config's), not {n}")
    compiled, compile_s, layout = compile_seeds(trainer, len(seeds), strategy, fast_compile)
    n_devices, per_device = layout[0], layout[1]
    padded = seeds + [seeds[-1]] * (n_devices * per_device - len(seeds))
    t0 = time.perf_counter()
    out = jax.device_get(compiled(seed_keys(padded), np.int32(n)))
    run_s = time.perf_counter() - t0
    metrics = Metrics(*(np.asarray(x)[: len(seeds)] for x in out))
    metrics = metrics._replace(return_curve=metrics.return_curve[:, :n])
    return TrainResult(metrics, compile_s, run_s)
