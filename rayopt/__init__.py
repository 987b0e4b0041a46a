"""rayopt: discover hyperparameter-free optimisers for RL by LLM-guided symbolic evolution.

The package reads as the paper does: ``program`` (untrusted code -> update_fn) ->
``optim`` (optimisers as optax transformations) -> ``rl`` (PPO on gymnax) ->
``search`` (islands, mutators, evaluators on Ray) -> ``results`` (the Parquet journal) ->
``analysis`` (rliable statistics, sweeps, plots).
"""

from __future__ import annotations

import os

__version__ = "0.1.0"


def _configure_host_devices() -> None:
    """Expose one XLA host device per CPU core before JAX starts.

    On CPU, one PPO seed per host device (sharded with ``shard_map``) keeps every core
    busy and measured ~1.3x faster than one device with vmapped seeds on 2 cores.
    The flag only takes effect if it is set before JAX initialises its backends, which
    is why it lives here and touches nothing but the environment. Opt out with
    ``RAYOPT_HOST_DEVICES=0`` or by setting the flag in ``XLA_FLAGS`` yourself.
    """
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_force_host_platform_device_count" in flags:
        return
    wanted = os.environ.get("RAYOPT_HOST_DEVICES", "auto")
    if wanted == "auto":
        try:
            n = len(os.sched_getaffinity(0))
        except AttributeError:  # not Linux
            n = os.cpu_count() or 1
    else:
        n = int(wanted)
    if n > 1:
        os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={n}".strip()


_configure_host_devices()
