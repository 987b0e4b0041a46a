"""Held-out confirmation: the search's best, its starting points and the references,
trained again on seeds the search never used (beyond the paper; ``confirm:``).

Selection and evaluation on the same noisy scores rewards luck (the winner's curse): a
candidate ranked first over 2 seeds is partly the best draw. So when a discovery ends,
the ``top_k`` discovered candidates of each meta-seed (by in-search average rank, the
rule selection uses), every initial optimiser and every reference are trained at the
full discovery budget, on every training env, on ``seeds`` fresh seeds starting at
``seed_offset``. It is a sweep (:mod:`rayopt.analysis.sweep`) whose rows land in the
run's own journal as stage ``confirm`` (run id ``NAME-confirm``), so it resumes like
everything else and :mod:`rayopt.analysis.heldout` reads it back.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from rayopt.analysis.sweep import (
    SweepConfig,
    SweepPPO,
    plan,
    resolve_optimizers,
    run_sweep,
    write_manifest,
)
from rayopt.config import ConfirmSection, DiscoveryConfig


def confirm_name(cfg: DiscoveryConfig) -> str:
    return f"{cfg.name}-confirm"


def confirm_config(
    cfg: DiscoveryConfig, run_dir: str | Path, section: ConfirmSection
) -> SweepConfig:
    """The sweep that confirms run ``run_dir`` (whose config is ``cfg``)."""
    run_dir = Path(run_dir).resolve()
    optimizers = [f"run:{run_dir}@ms{ms}/top{section.top_k}" for ms in cfg.meta_seeds]
    if section.initial:
        optimizers += list(cfg.search.initial)
    if section.references:
        optimizers += [r for r in cfg.search.references if r not in optimizers]
    return SweepConfig(
        name=confirm_name(cfg),
        optimizers=optimizers,
        envs=list(cfg.envs),
        seeds=section.seeds,
        seed_offset=section.seed_offset,
        axis="none",
        ppo=SweepPPO(overrides=dict(cfg.ppo.overrides), per_env=dict(cfg.ppo.per_env)),
        fast_compile=cfg.evaluator.fast_compile,
        open_weights=cfg.open_weights,
        skip_missing_envs=False,
        max_eval_attempts=cfg.search.max_eval_attempts,
        evaluator=cfg.evaluator,
        stage="confirm",
    ).validate()


def search_seeds(cfg: DiscoveryConfig) -> set[int]:
    """Every PPO seed the search trained with (full evaluations and the screen)."""
    return set(range(cfg.seeds)) | (set(range(cfg.cascade.seeds)) if cfg.cascade.enabled else set())


async def confirm(
    cfg: DiscoveryConfig,
    run_dir: str | Path,
    pool: Any,
    section: ConfirmSection | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Evaluate what confirmation has not journalled yet, on ``pool``."""
    section = section or cfg.confirm
    scfg = confirm_config(cfg, run_dir, section)
    overlap = set(scfg.seed_list) & search_seeds(cfg)
    if overlap:
        raise ValueError(
            f"confirmation seeds {sorted(overlap)} were used by the search; "
            f"raise confirm.seed_offset above {max(search_seeds(cfg))}"
        )
    optimizers = resolve_optimizers(scfg.optimizers, scfg.open_weights)
    todo, skipped, created = plan(scfg, optimizers, run_dir)
    write_manifest(scfg, optimizers, Path(run_dir))  # who is who, for the held-out tables
    n = sum(len(w.seeds) for w in todo)
    log(
        f"confirmation: {len(optimizers)} optimisers x {len(scfg.envs)} envs on held-out seeds "
        f"{scfg.seed_list[0]}-{scfg.seed_list[-1]}; {skipped} journalled, {n} to run"
    )
    summary = dict(name=scfg.name, optimizers=len(optimizers), skipped=skipped, evaluated=0)
    if todo:
        summary |= await run_sweep(scfg, optimizers, Path(run_dir), todo, pool, log, created)
    return summary


def confirm_finished(
    run_dir: str | Path,
    overrides: list[str] | None = None,
    address: str | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """``rayopt confirm RUN_DIR``: confirm a finished (or interrupted) discovery with its
    own config, ``confirm.*`` overrides applied (``confirm.seeds=16``); starts evaluators
    as the run did, on ``address`` or the run's cluster."""
    import asyncio
    import dataclasses

    from rayopt.config import ConfigError, from_dict, load_discovery
    from rayopt.results.journal import compact
    from rayopt.search.fleet import init_ray, pool_for, start_evaluators

    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise FileNotFoundError(f"{run_dir} has no config.yaml: not a rayopt run directory")
    cfg = load_discovery(run_dir / "config.yaml")
    section = cfg.confirm
    for item in overrides or []:
        if not item.partition("=")[0].strip().startswith("confirm."):
            raise ConfigError(f"{item!r}: only confirm.* settings may change here")
    if overrides:
        from rayopt.config import apply_overrides

        data = apply_overrides({"confirm": dataclasses.asdict(section)}, overrides)
        section = from_dict(ConfirmSection, data["confirm"], where="confirm")
    from rayopt.search.preflight import check_cluster, check_writable

    confirm_config(cfg, run_dir, section)  # a bad selection fails before Ray starts
    check_writable(run_dir, "run directory")
    init_ray(address or cfg.address)
    check_cluster(cfg)  # one evaluator fits, or a one-line error before any actor starts
    actors = start_evaluators(cfg)
    try:
        pool = pool_for(actors, cfg.evaluator, cfg.search.max_eval_attempts)
        out = asyncio.run(confirm(cfg, run_dir, pool, section, log))
    finally:
        actors.stop()
    compact(run_dir)
    return out
