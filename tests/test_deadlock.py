"""Guard against the jaxlib 0.10 CPU deadlock: flax's orthogonal initialiser under vmap
with more than one seed runs a batched LAPACK QR that blocks the 2-thread pool.

rayopt initialises agents with ``lax.map`` (``rayopt.rl.execution.init_many``). This
test runs exactly that path for many batches of seeds in a child process with a
deadline; with ``jax.vmap(trainer.init)`` in its place the same script hangs within
seconds on jax 0.10.2 (checked when this test was written: 0 of 100 iterations done
in 60 s, versus all 100 in ~10 s).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent(
    """
    import rayopt, jax
    from rayopt.optim import build, resolve
    from rayopt.rl.execution import init_many, seed_keys
    from rayopt.rl.ppo import config_for, make_train

    cfg = config_for("Breakout-MinAtar", num_envs=4, num_steps=8, num_minibatches=2,
                     total_timesteps=64)
    trainer = make_train(cfg, build(resolve("adam")))
    init = jax.jit(lambda keys: init_many(trainer, keys))
    for i in range(25):
        jax.block_until_ready(init(seed_keys(range(4 * i, 4 * i + 4))))
    print("done")
    """
)


def test_multi_seed_init_does_not_hang():
    try:
        proc = subprocess.run(
            [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=180
        )
    except subprocess.TimeoutExpired:
        pytest.fail("multi-seed init hung: the batched-QR deadlock is back (see module doc)")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "done" in proc.stdout
