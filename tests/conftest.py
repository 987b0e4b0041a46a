"""Shared fixtures: compiled trainers and Ray instances are expensive, so tests share them."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections import Counter

import pytest

import rayopt  # noqa: F401  (before JAX: sets the XLA host-device flag)

# Set before any Ray worker starts: workers inherit the environment of the raylet, which
# ray.init starts from this process. A fake key, for the fake LLM server on 127.0.0.1.
E2E_KEY_ENV = "RAYOPT_E2E_LLM_KEY"
E2E_KEY = "sk-e2e-SECRET-4b1d9e"
os.environ.setdefault(E2E_KEY_ENV, E2E_KEY)
os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")
# One Ray auth mode for every cluster the session starts (the shared local instance,
# test_cluster's multi-node ones, child drivers): Ray caches the mode per process, and a
# driver in token mode (on once ~/.ray/auth_token exists) loses its actors on a cluster
# started without it ("all references to the actor were removed"). Local clusters on
# 127.0.0.1 only, so no token.
os.environ["RAY_AUTH_MODE"] = "disabled"

# One JAX compilation cache for the session, shared with every Ray worker and child
# driver: tests evaluate the same library optimisers at the same tiny PPO configs in
# several processes, and each PPO compile costs seconds. Made when pytest starts (before
# any test module imports JAX, which reads the variable at import; Ray workers and child
# processes inherit it) and removed when it ends; a directory given by the caller's
# JAX_COMPILATION_CACHE_DIR is used as is and kept.
_JAX_CACHE = pytest.StashKey[str]()


def pytest_collection_modifyitems(config, items):
    """test_cluster's fixture shuts the session's shared Ray instance down to start
    clusters of its own (a process joins one cluster at a time): run it last, so every
    test that shares ``ray_local``/``evaluator_pool`` runs before that, in any order of
    the other modules (sorted is stable)."""
    items.sort(key=lambda item: item.module.__name__ == "test_cluster")


def pytest_configure(config):
    if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        return
    path = tempfile.mkdtemp(prefix="rayopt-jax-cache-")
    config.stash[_JAX_CACHE] = path
    os.environ["JAX_COMPILATION_CACHE_DIR"] = path
    if "jax" in sys.modules:  # imported already (a plugin): tell it directly
        sys.modules["jax"].config.update("jax_compilation_cache_dir", path)


def pytest_unconfigure(config):
    path = config.stash.get(_JAX_CACHE, None)
    if path is not None:
        os.environ.pop("JAX_COMPILATION_CACHE_DIR", None)
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def tiny_cartpole():
    """A tiny CartPole PPO config (a few updates) for plumbing tests."""
    from rayopt.rl.ppo import config_for

    return config_for(
        "CartPole-v1",
        num_envs=4,
        num_steps=16,
        num_minibatches=2,
        update_epochs=2,
        total_timesteps=4 * 16 * 3,
    )


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray instance for the session. Logical CPUs are oversubscribed (4 on a
    2-core machine) so a test's evaluator (1 CPU) and a child driver's can coexist.
    Yields the GCS address, which child processes use to join."""
    import ray

    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture(scope="session")
def evaluator_pool(ray_local):
    """A CPU evaluator shared by tests, so its compiled trainers are reused."""
    from rayopt.search.evaluator import EvaluatorActor, EvaluatorPool, actor_env

    actor = EvaluatorActor.options(num_cpus=1, runtime_env={"env_vars": actor_env(0, 1)}).remote()
    return EvaluatorPool([actor], max_attempts=3)


def tiny_discovery(**changes):
    """A discovery that finishes in about a minute on 2 CPU cores (CartPole, tiny PPO)."""
    from rayopt.config import DiscoveryConfig, from_dict

    base = {
        "name": "tiny",
        "envs": ["CartPole-v1"],
        "seeds": 1,
        "progress_s": 5.0,
        "ppo": {
            "overrides": {
                "num_envs": 4,
                "num_steps": 16,
                "num_minibatches": 2,
                "update_epochs": 2,
                "total_timesteps": 256,
            },
            "per_env": {},
        },
        "search": {"generations": 1, "refinements": 1, "references": ["adam"]},
        "islands": {"count": 2, "interval": 1, "migrants": 1},
        # The screen at the full budget: the same executable as the full evaluation
        # (CartPole, one seed, fast compile), which then loads it from the session's
        # compilation cache instead of compiling again. The speed screen is on in
        # test_bounded.py.
        "cascade": {"total_timesteps": 256, "speed_updates": 0},
        "confirm": {"enabled": False},  # on in test_confirm.py
        "evaluator": {"num_cpus": 1, "fast_compile": True},
    }
    for key, value in changes.items():
        node = base
        *path, last = key.split(".")
        for p in path:
            node = node.setdefault(p, {})
        node[last] = value
    return from_dict(DiscoveryConfig, base).validate()


# The events that judge a candidate: exactly one per created candidate.
VERDICTS = {"invalid", "duplicate", "rejected", "screened_out", "evaluation_failed", "evaluated"}


def check_exactly_once(df, config) -> None:
    """Every candidate created once with one verdict; one row per evaluation; every
    generation started and ended once."""
    events = df[df.row_type == "event"]
    for run_id, run in events.groupby("run_id"):
        created = Counter(run[run.event == "created"].candidate_id)
        assert created and max(created.values()) == 1, f"{run_id}: a candidate created twice"
        verdicts = Counter(run[run.event.isin(VERDICTS)].candidate_id)
        assert set(verdicts) == set(created), f"{run_id}: candidates without a verdict"
        assert max(verdicts.values()) == 1, f"{run_id}: a candidate judged twice"
        for event in ("generation_start", "generation_end"):
            gens = Counter(
                zip(run[run.event == event].island, run[run.event == event].generation, strict=True)
            )
            expected = {
                (i, g)
                for i in range(config.islands.count)
                for g in range(1, config.search.generations + 1)
            }
            assert set(gens) == expected and set(gens.values()) == {1}, f"{run_id}: {event} {gens}"
        evaluated = set(run[run.event == "evaluated"].candidate_id)
        full = df[(df.run_id == run_id) & (df.row_type == "evaluation") & (df.stage == "full")]
        per = Counter(zip(full.candidate_id, full.env, full.seed, strict=True))
        assert max(per.values()) == 1, f"{run_id}: an evaluation row written twice"
        for cid in evaluated:
            rows = full[full.candidate_id == cid]
            assert len(rows) == len(config.envs) * config.seeds, cid
        screens = df[(df.run_id == run_id) & (df.stage == "screen")]
        assert (
            max(Counter(zip(screens.candidate_id, screens.seed, strict=True)).values(), default=1)
            == 1
        )
