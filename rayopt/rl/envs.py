"""Environment registry: one interface (gymnax 1.x: ``step`` returns obs, state, reward,
terminated, truncated, info) over MinAtar, CartPole and, optionally, Craftax-Classic."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class EnvSpec:
    """A registered environment: its gymnax-style factory and its Table 1 column."""

    name: str
    preset: str  # which Table 1 column of PPO hyperparameters applies: minatar|cartpole|craftax
    factory: Callable[[], tuple[Any, Any]]


def _gymnax(env_id: str) -> Callable[[], tuple[Any, Any]]:
    def make() -> tuple[Any, Any]:
        import gymnax

        return gymnax.make(env_id)

    return make


class _AutoReset:
    """Adapt a no-auto-reset environment with the old 5-value ``step`` (Craftax) to the
    gymnax 1.x interface; episode ends are terminations (Craftax folds its time limit
    into ``done``)."""

    def __init__(self, env: Any):
        self._env = env

    def __getattr__(self, name: str) -> Any:
        return getattr(self._env, name)

    @partial(jax.jit, static_argnums=0)
    def reset(self, key: jax.Array, params: Any = None) -> tuple[jax.Array, Any]:
        return self._env.reset(key, params)

    @partial(jax.jit, static_argnums=0)
    def step(self, key: jax.Array, state: Any, action: Any, params: Any = None):
        k_step, k_reset = jax.random.split(key)
        obs_st, state_st, reward, done, info = self._env.step(k_step, state, action, params)
        obs_re, state_re = self._env.reset(k_reset, params)
        state = jax.tree.map(lambda r, s: jax.lax.select(done, r, s), state_re, state_st)
        obs = jax.lax.select(done, obs_re, obs_st)
        info = {"final_observation": obs_st}
        return obs, state, reward, done, jnp.zeros_like(done), info


def _craftax_classic() -> tuple[Any, Any]:
    try:
        from craftax.craftax_env import make_craftax_env_from_name
    except ImportError as err:  # optional extra
        raise ImportError(
            "Craftax-Classic needs the optional extra: pip install 'rayopt[craftax]'"
        ) from err
    env = make_craftax_env_from_name("Craftax-Classic-Symbolic-v1", auto_reset=False)
    return _AutoReset(env), env.default_params


MINATAR = ("Asterix-MinAtar", "Breakout-MinAtar", "Freeway-MinAtar", "SpaceInvaders-MinAtar")

REGISTRY: dict[str, EnvSpec] = {
    **{name: EnvSpec(name, "minatar", _gymnax(name)) for name in MINATAR},
    "CartPole-v1": EnvSpec("CartPole-v1", "cartpole", _gymnax("CartPole-v1")),
    "Craftax-Classic-Symbolic-v1": EnvSpec(
        "Craftax-Classic-Symbolic-v1", "craftax", _craftax_classic
    ),
}

ALIASES = {
    "asterix": "Asterix-MinAtar",
    "breakout": "Breakout-MinAtar",
    "freeway": "Freeway-MinAtar",
    "spaceinvaders": "SpaceInvaders-MinAtar",
    "space_invaders": "SpaceInvaders-MinAtar",
    "cartpole": "CartPole-v1",
    "craftax": "Craftax-Classic-Symbolic-v1",
    "craftax-classic": "Craftax-Classic-Symbolic-v1",
    "minatar": ",".join(MINATAR),
}


def canonical(name: str) -> str:
    """The registered id of ``name`` (ids and short aliases, case-insensitive)."""
    if name in REGISTRY:
        return name
    lowered = {k.lower(): k for k in REGISTRY}
    if name.lower() in lowered:
        return lowered[name.lower()]
    if name.lower() in ALIASES and "," not in ALIASES[name.lower()]:
        return ALIASES[name.lower()]
    raise ValueError(f"unknown environment {name!r}; known: {', '.join(REGISTRY)}")


def parse_envs(text: str | list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """``"minatar,cartpole"`` -> registered ids, in order, without repeats."""
    items = text.split(",") if isinstance(text, str) else list(text)
    out: list[str] = []
    for item in items:
        item = item.strip()
        if not item:
            continue
        expanded = ALIASES.get(item.lower(), item)
        for name in expanded.split(","):
            env_id = canonical(name)
            if env_id not in out:
                out.append(env_id)
    return tuple(out)


def make_env(name: str) -> tuple[Any, Any]:
    """The environment with flat observations and episode logging, and its params."""
    from gymnax.wrappers.purerl import FlattenObservationWrapper, LogWrapper

    env, params = REGISTRY[canonical(name)].factory()
    return LogWrapper(FlattenObservationWrapper(env)), params
