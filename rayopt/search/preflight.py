"""Pre-flight checks: everything that can be known before a run starts, checked before
any actor starts or any money is spent, each reported as one :class:`ConfigError` line
(``rayopt discover: ...``).

The config itself (unknown keys, bad values, missing prompt files, an unreadable OPEN
checkpoint named by ``search.references``) is checked when it is loaded
(``DiscoveryConfig.validate``). On top of that:

- :func:`check_static` (no Ray needed): the API-key variables the LLM roles name are set,
  the output directory can be written (and, for a new run, holds no run yet);
- :func:`check_resume`: a resumed run's PPO config is the one its journal was made with;
- :func:`check_cluster` (Ray initialised, no actor started): at least one evaluator fits
  the cluster as configured (``configs/paper.yaml`` asks for a GPU per evaluator).

``rayopt discover``, ``rayopt evaluate`` (sweeps) and ``rayopt confirm`` call them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from rayopt.config import ConfigError, DiscoveryConfig


def check_llm_keys(cfg: DiscoveryConfig) -> None:
    """The environment variables holding the LLM roles' API keys are set (names only:
    a key's value is never read into a message)."""
    if cfg.mutator.kind != "llm":
        return
    from rayopt.search.mutators.config import LLMConfig

    llm = LLMConfig.from_dict(cfg.mutator.llm, where="mutator.llm")
    missing = llm.missing_keys()
    if missing:
        roles = {
            env: [r for r in ("thinker", "coder") if getattr(llm, r).key_env == env]
            for env in missing
        }
        named = "; ".join(f"{env} (mutator.llm.{'/'.join(rs)})" for env, rs in roles.items())
        raise ConfigError(
            f"API key variable(s) not set: {named}; export it before starting "
            "(keys come from the environment only)"
        )


def check_writable(path: str | os.PathLike, what: str = "output directory") -> Path:
    """``path`` is a directory, or can be made one, that this process can write to."""
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{what} {path} exists and is not a directory")
    probe = path
    while not probe.exists():  # the nearest existing ancestor is where mkdir will write
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise ConfigError(f"{what} {path}: {probe} is a file, not a directory")
    if probe.exists() and not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigError(f"{what} {path}: {probe} is not writable")
    return path


def check_static(cfg: DiscoveryConfig, run_dir: str | os.PathLike | None = None) -> None:
    """Before Ray: API keys, and the output directory (``run_dir``, else ``out_dir``)."""
    check_llm_keys(cfg)
    check_writable(run_dir if run_dir is not None else cfg.out_dir)


def check_resume(cfg: DiscoveryConfig, run_dir: str | os.PathLike) -> None:
    """A resumed run evaluates with the PPO config its journal was made with: the first
    ``full`` evaluation journalled per env must match ``cfg.ppo_config(env)``. (A run
    created before ``truncation: terminate`` became the default, whose config.yaml does
    not name it, was made with ``bootstrap``: resuming it would mix the two.)"""
    import dataclasses
    import json

    import pyarrow.compute as pc

    from rayopt.results.journal import dataset, journal_dir

    if not any(journal_dir(run_dir).glob("*.parquet")):
        return
    want = {env: dataclasses.asdict(cfg.ppo_config(env)) for env in cfg.envs}
    seen: set[str] = set()
    rows = dataset(run_dir).to_batches(
        columns=["env", "ppo_config"],
        filter=(pc.field("row_type") == "evaluation")
        & (pc.field("stage") == "full")
        & pc.field("ppo_config").is_valid(),
    )
    for batch in rows:
        for env, text in zip(
            batch["env"].to_pylist(), batch["ppo_config"].to_pylist(), strict=True
        ):
            if env in seen or env not in want:
                continue
            seen.add(env)
            had = json.loads(text)
            diff = sorted(k for k in want[env] if k in had and had[k] != want[env][k])
            if diff:
                was = ", ".join(f"{k}: {had[k]!r}" for k in diff)
                now = ", ".join(f"{k}: {want[env][k]!r}" for k in diff)
                raise ConfigError(
                    f"{run_dir} was evaluated on {env} with {was}, its config.yaml now gives "
                    f"{now} (a changed default); add {was} to ppo.overrides in its config.yaml "
                    "to resume it as it was run"
                )
        if seen >= set(want):
            return


def check_cluster(cfg: Any) -> int:
    """Ray is initialised and at least one evaluator fits (``cfg`` has an ``evaluator``
    section: a DiscoveryConfig or a SweepConfig); returns how many will start."""
    from rayopt.search.fleet import evaluator_count

    return evaluator_count(cfg)


__all__ = ["check_cluster", "check_llm_keys", "check_resume", "check_static", "check_writable"]
