"""Optimisers as optax transformations over the PPO agent's parameters.

Every optimiser here is an ``optax.GradientTransformationExtraArgs`` whose ``update``
accepts ``ctx=UpdateContext`` (OPEN's extra inputs). ``resolve`` turns a name, a file or
code into an :class:`OptimiserSpec`, a small picklable value that crosses process and
machine boundaries; ``build`` turns a spec into the transformation PPO runs.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import optax

from rayopt.optim.context import UpdateContext
from rayopt.optim.library import DISCOVERED, INITIAL, SYMBOLIC
from rayopt.optim.symbolic import SymbolicState, UpdateShapeError, symbolic

__all__ = [
    "DISCOVERED",
    "INITIAL",
    "SYMBOLIC",
    "LIBRARY",
    "OptimiserSpec",
    "SymbolicState",
    "UpdateContext",
    "UpdateShapeError",
    "build",
    "clip_by_global_norm_per_network",
    "resolve",
    "symbolic",
]

#: Adam's untuned learning rate in the paper (§6, §7).
ADAM_LR = 1e-3

#: Every named optimiser ``resolve`` knows.
LIBRARY: tuple[str, ...] = ("adam", *SYMBOLIC, "open")


@dataclasses.dataclass(frozen=True)
class OptimiserSpec:
    """What to optimise with, as plain data (goes into Ray calls and Parquet rows).

    kind: ``adam`` (``learning_rate``), ``symbolic`` (``code`` is an update_fn source) or
    ``open`` (``weights`` is the path of a published OPEN checkpoint).
    """

    name: str
    kind: str
    code: str | None = None
    learning_rate: float | None = None
    weights: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("adam", "symbolic", "open"):
            raise ValueError(f"unknown optimiser kind {self.kind!r}")
        if self.kind == "symbolic" and not self.code:
            raise ValueError(f"symbolic optimiser {self.name!r} needs code")
        if self.kind == "open" and not self.weights:
            raise ValueError(
                "OPEN needs its checkpoint: pass --open-weights PATH or set RAYOPT_OPEN_WEIGHTS"
                " (see docs/open.md for where to get multi_OPEN.npy)"
            )


def resolve(name: str, *, open_weights: str | os.PathLike | None = None) -> OptimiserSpec:
    """A library name (``adam``, ``adam:3e-4``, ``sign_update`` ... ``discovered_3``,
    ``open``), or the path of a ``.py`` file holding an update_fn."""
    if name == "adam" or name.startswith("adam:"):
        lr = float(name.split(":", 1)[1]) if ":" in name else ADAM_LR
        return OptimiserSpec(name=name, kind="adam", learning_rate=lr)
    if name in SYMBOLIC:
        return OptimiserSpec(name=name, kind="symbolic", code=SYMBOLIC[name])
    if name == "open" or name.startswith("open:"):
        weights = name.split(":", 1)[1] if ":" in name else None
        weights = weights or open_weights or os.environ.get("RAYOPT_OPEN_WEIGHTS")
        return OptimiserSpec(name="open", kind="open", weights=str(weights) if weights else None)
    path = Path(name)
    if path.suffix == ".py":
        if not path.is_file():
            raise FileNotFoundError(f"optimiser file {name} does not exist")
        return OptimiserSpec(name=path.stem, kind="symbolic", code=path.read_text())
    raise ValueError(
        f"unknown optimiser {name!r}: use one of {', '.join(LIBRARY)} or a path to a .py file"
    )


def clip_by_global_norm_per_network(max_norm: float) -> optax.GradientTransformation:
    """Clip each top-level subtree (``actor``, ``critic``) to global norm ``max_norm``.

    OPEN clips the actor's and the critic's gradients separately before its optimiser
    runs; every rayopt optimiser gets the same inputs.
    """
    inner = optax.clip_by_global_norm(max_norm)

    def init(params: Any) -> optax.EmptyState:
        return optax.EmptyState()

    def update(updates: Any, state: Any, params: Any = None) -> tuple[Any, Any]:
        return {k: inner.update(v, inner.init(v))[0] for k, v in updates.items()}, state

    return optax.GradientTransformation(init, update)


def build(spec: OptimiserSpec, max_grad_norm: float = 0.5) -> optax.GradientTransformationExtraArgs:
    """The transformation PPO runs: per-network gradient clipping, then the optimiser."""
    if spec.kind == "adam":
        core = optax.adam(spec.learning_rate or ADAM_LR)
    elif spec.kind == "symbolic":
        from rayopt.program import (
            load_checked,  # every program is validated: search code is untrusted
        )

        core = symbolic(load_checked(spec.code or ""))
    else:
        from rayopt.optim.open import open_optimiser

        core = open_optimiser(spec.weights or "")
    return optax.chain(clip_by_global_norm_per_network(max_grad_norm), core)
