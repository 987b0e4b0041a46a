"""Shared fixtures: compiled trainers and Ray instances are expensive, so tests share them."""

from __future__ import annotations

import pytest  # noqa: E402

import rayopt  # noqa: F401  (first: sets the XLA host-device flag before JAX starts)


@pytest.fixture(scope="session")
def tiny_cartpole():
    """A tiny CartPole PPO config (a few updates) for plumbing tests."""
    from rayopt.rl.ppo import config_for

    return config_for("CartPole-v1", num_envs=4, num_steps=16, num_minibatches=2,
                      update_epochs=2, total_timesteps=4 * 16 * 3)


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray instance (2 CPUs) for the whole test session."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
                 configure_logging=False)
    yield ray
