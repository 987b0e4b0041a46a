"""Islands as Ray actors, and who migrates to whom.

Each island hosts its own archive; the driver asks it for a base and context optimisers
at the start of a generation and hands it the generation's candidates at the end.
Every ``interval`` finished generations an island's best ``migrants`` are copied to its
neighbours; a migrated copy keeps its id and lineage and is not re-evaluated.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import ray

from rayopt.search.archive import Archive, Candidate


def neighbours(topology: str, island: int, count: int, rng: np.random.Generator) -> list[int]:
    """Destinations of ``island``'s migrants: the next island on a ring, every other
    island (full), or one other island drawn uniformly (random)."""
    if count <= 1:
        return []
    if topology == "ring":
        return [(island + 1) % count]
    if topology == "full":
        return [i for i in range(count) if i != island]
    if topology == "random":
        others = [i for i in range(count) if i != island]
        return [others[int(rng.integers(len(others)))]]
    raise ValueError(f"unknown topology {topology!r}")


def selection_rng(meta_seed: int, island: int, generation: int) -> np.random.Generator:
    """Selection randomness derived from where it is used, not from a stream: a resumed
    run draws exactly what the original would have."""
    return np.random.default_rng([meta_seed, island, generation, 0x5E1EC7])


@ray.remote(num_cpus=0)
class IslandActor:
    """One island's archive (runs anywhere: it holds only small Python objects)."""

    def __init__(
        self, meta_seed: int, island: int, envs: Sequence[str], literal_penalty: float = 0.0
    ):
        self.meta_seed = meta_seed
        self.island = island
        self.archive = Archive(envs, literal_penalty)

    def add(self, candidates: list[Candidate]) -> int:
        return self.archive.add(candidates)

    def select(
        self, generation: int, top_k: int, exploit_p: float, context_top: int = 1
    ) -> tuple[Candidate, list[tuple[Candidate, str]]]:
        """The generation's base and its context optimisers with why each was chosen
        (``context_top`` 1: the best per env; more: a random pick among that many)."""
        rng = selection_rng(self.meta_seed, self.island, generation)
        base = self.archive.select(rng, top_k, exploit_p)
        return base, self.archive.context(
            exclude=base.id, rng=rng if context_top > 1 else None, top=context_top
        )

    def best(self, m: int) -> list[Candidate]:
        return self.archive.best(m)

    def ranked(self) -> list[tuple[str, float]]:
        return [(c.id, r) for c, r in self.archive.ranked()]

    def size(self) -> int:
        return len(self.archive)

    def node(self) -> str:
        return ray.get_runtime_context().get_node_id()
