"""What a person sees of a discovery: progress lines while it runs, and the end-of-run
summary (best discovered vs best initial vs Adam per env, in search and held out).

The rule that picks "best" is the one selection uses: average per-env rank over the
meta-seed's population (the union of its islands), plus the literal penalty.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from rayopt.config import DiscoveryConfig
from rayopt.search.archive import Archive, Candidate
from rayopt.search.state import Search, is_mutated


def short(env: str) -> str:
    """Breakout-MinAtar -> Breakout (for one-line progress)."""
    return env.removesuffix("-MinAtar").removesuffix("-v1")


def ranked(cfg: DiscoveryConfig, s: Search) -> list[tuple[Candidate, float]]:
    """The meta-seed's population (every evaluated candidate with all envs), best first."""
    pool = Archive(cfg.envs, cfg.search.rank_penalty)
    pool.add(c for c in s.population.values() if set(cfg.envs) <= set(c.final_return))
    return pool.ranked()


def bests(cfg: DiscoveryConfig, s: Search) -> tuple[Candidate | None, Candidate | None]:
    """(best discovered, best initial) of a meta-seed, by average rank."""
    order = ranked(cfg, s)
    found = next((c for c, _ in order if is_mutated(c)), None)
    initial = next((c for c, _ in order if c.mutator == "library"), None)
    return found, initial


def _returns(c: Candidate | None, envs: Sequence[str]) -> str:
    if c is None:
        return "-"
    return " ".join(f"{short(e)} {c.final_return.get(e, math.nan):.3g}" for e in envs)


def progress_line(
    cfg: DiscoveryConfig,
    searches: Sequence[Search],
    elapsed: float,
    util: float,
    cost: float | None,
) -> str:
    parts = []
    for s in searches:
        found, initial = bests(cfg, s)
        gens = f"{sum(s.finished)}/{cfg.search.generations * cfg.islands.count}"
        parts.append(
            f"ms{s.meta_seed}: gens {gens}, {s.evaluated} evaluated, {s.duplicates} dup, "
            f"{s.dropped + s.failed} failed; best discovered {found.id if found else '-'} "
            f"[{_returns(found, cfg.envs)}] vs initial {initial.name if initial else '-'} "
            f"[{_returns(initial, cfg.envs)}]"
        )
    money = f" | llm ${cost:.2f}" if cost is not None else ""
    return f"[{elapsed:7.0f}s] " + " | ".join(parts) + f" | evaluators {util:.0%} busy{money}"


def search_summary(cfg: DiscoveryConfig, s: Search, top: int = 3) -> dict[str, Any]:
    """In-search results of one meta-seed."""
    order = ranked(cfg, s)
    found, initial = bests(cfg, s)
    adam = s.candidates.get("ref-adam")

    def row(c: Candidate | None, r: float | None = None) -> dict[str, Any] | None:
        if c is None:
            return None
        return dict(
            id=c.id,
            name=c.name,
            avg_rank=r,
            final_return=dict(c.final_return),
            idea=c.idea,
        )

    ranks = {c.id: r for c, r in order}
    return dict(
        evaluated=s.evaluated,
        duplicates=s.duplicates,
        failed=s.failed + s.dropped,
        best=[row(c, r) for c, r in order if is_mutated(c)][:top],
        best_discovered=row(found, ranks.get(found.id) if found else None),
        best_initial=row(initial, ranks.get(initial.id) if initial else None),
        adam=row(adam) if adam and adam.final_return else None,
    )


def text(cfg: DiscoveryConfig, summary: dict[str, Any], heldout: str | None) -> str:
    """The end-of-run table: per meta-seed, in-search returns of the best discovered, the
    best initial and Adam per env; then the held-out table when confirmation ran."""
    envs = list(cfg.envs)
    head = ["meta-seed", "", "optimizer", *map(short, envs), "avg rank"]
    rows = []
    for ms, m in summary["meta_seeds"].items():
        for label, key in (
            ("best discovered", "best_discovered"),
            ("best initial", "best_initial"),
            ("adam", "adam"),
        ):
            r = m.get(key)
            if r is None:
                continue
            rank = r.get("avg_rank")
            rows.append(
                [
                    f"ms{ms}",
                    label,
                    r["name"] or r["id"],
                    *(f"{r['final_return'].get(e, math.nan):.3g}" for e in envs),
                    "-" if rank is None else f"{rank:.2f}",
                ]
            )
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows, strict=True)]
    fmt = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=True))  # noqa: E731
    lines = [
        f"in search (final return, mean over seeds 0-{cfg.seeds - 1}; rank over the population)",
        fmt(head),
        *map(fmt, rows),
    ]
    for ms, m in summary["meta_seeds"].items():
        lines.append(
            f"ms{ms}: {m['evaluated']} evaluated, {m['duplicates']} duplicates (no PPO), "
            f"{m['failed']} failed or screened out"
        )
    ahead = ", compiling ahead" if summary["compile_ahead"] else ""
    lines.append(
        f"wall {summary['wall_s']:.0f} s, evaluators {summary['evaluator_utilisation']:.0%} busy "
        f"({summary['compile_wait_share']:.0%} of it waiting for compiles{ahead})"
        + (f", llm ${summary['llm_cost_usd']:.2f}" if cfg.mutator.kind == "llm" else "")
        + f"; run directory {summary['run_dir']}"
    )
    if heldout:
        lines += ["", heldout.rstrip()]
    elif cfg.confirm.enabled:
        lines += ["", "held-out confirmation: nothing to confirm (no discovered candidate)"]
    else:
        lines += [
            "",
            "held-out confirmation is off (confirm.enabled): in-search scores are the ones "
            "that selected the winner, so they flatter it; see `rayopt confirm RUN_DIR`",
        ]
    return "\n".join(lines) + "\n"
