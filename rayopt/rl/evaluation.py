"""One evaluation: an optimiser trains PPO on one environment for several seeds."""

from __future__ import annotations

import dataclasses
import threading
from collections import OrderedDict
from collections.abc import Hashable, Sequence

import numpy as np

from rayopt.optim import OptimiserSpec, build
from rayopt.rl.execution import train_seeds
from rayopt.rl.ppo import PPOConfig, Trainer, make_train


@dataclasses.dataclass(frozen=True)
class EnvResult:
    """Per-seed outcomes of one optimiser on one environment (arrays: leading seed axis)."""

    optimiser: str
    env: str
    seeds: tuple[int, ...]
    final_return: np.ndarray
    auc: np.ndarray
    return_curve: np.ndarray
    finite: np.ndarray
    compile_s: float
    run_s: float
    config: PPOConfig
    num_updates: int  # the updates run: all of the config's, or the first ones

    @property
    def env_steps(self) -> int:
        c = self.config
        return len(self.seeds) * self.num_updates * c.num_envs * c.num_steps


#: Trainers (with their compiled executables) by (optimiser, config), least recent first.
_TRAINERS: OrderedDict[tuple[OptimiserSpec, PPOConfig], Trainer] = OrderedDict()
MAX_TRAINERS = 8
#: An evaluator compiles the next evaluation on one thread while it runs the current one
#: on another (docs/evaluator.md, "Compile ahead"): the caches are shared between them.
_LOCK = threading.Lock()


def trainer_for(spec: OptimiserSpec, config: PPOConfig) -> Trainer:
    """A cached trainer, so a repeated (optimiser, config) reuses its compiled code."""
    key = (spec, config)
    with _LOCK:
        if key in _TRAINERS:
            _TRAINERS.move_to_end(key)
            return _TRAINERS[key]
    trainer = make_train(config, build(spec, config.max_grad_norm))
    with _LOCK:
        trainer = _TRAINERS.setdefault(key, trainer)
        while len(_TRAINERS) > MAX_TRAINERS:
            _TRAINERS.popitem(last=False)
    return trainer


#: Trainers :func:`prepare` compiled for an :func:`evaluate`, with their compile seconds,
#: oldest first: the evaluation about to run and, when its evaluator compiles ahead, the
#: next ones. Keyed by the evaluation's key (an evaluator's task key), not by (optimiser,
#: config): a candidate's speed screen and full evaluation share those, and forgetting
#: one must not drop the other. At most ``MAX_PREPARED``: a forgotten one (its evaluation
#: went elsewhere) cannot pile up executables.
_PREPARED: OrderedDict[Hashable, tuple[Trainer, float]] = OrderedDict()
MAX_PREPARED = 4


def _trainer(spec: OptimiserSpec, config: PPOConfig, keep: bool, key: Hashable) -> Trainer:
    with _LOCK:
        prepared = _PREPARED.get(key)
        cached = _TRAINERS.get((spec, config))
    if prepared is not None:
        return prepared[0]
    if keep:
        return trainer_for(spec, config)
    return cached or make_train(config, build(spec, config.max_grad_norm))


def prepare(
    key: Hashable,
    spec: OptimiserSpec,
    config: PPOConfig,
    seeds: Sequence[int],
    fast_compile: bool = False,
    keep: bool = True,
) -> tuple[float, dict[str, int] | None]:
    """Compile the evaluation :func:`evaluate` is about to run under ``key``, without
    running it: (seconds compiling, XLA's memory analysis of the executable: temp,
    argument, output and total bytes over the devices it uses; None where the backend has
    none). The compiled trainer is kept for that :func:`evaluate` (:func:`release` drops
    it). Safe to call on one thread while another thread runs an :func:`evaluate`."""
    from rayopt.rl.execution import compile_seeds, memory_bytes

    trainer = _trainer(spec, config, keep, key)
    compiled, compile_s, layout = compile_seeds(trainer, len(seeds), fast_compile=fast_compile)
    with _LOCK:
        _PREPARED[key] = (trainer, compile_s)
        _PREPARED.move_to_end(key)
        while len(_PREPARED) > MAX_PREPARED:
            _PREPARED.popitem(last=False)
    return compile_s, memory_bytes(compiled, layout[0])


def release(key: Hashable) -> None:
    """Forget what :func:`prepare` compiled under ``key``, an evaluation that will not
    run here."""
    with _LOCK:
        _PREPARED.pop(key, None)


def evaluate(
    spec: OptimiserSpec,
    config: PPOConfig,
    seeds: Sequence[int],
    fast_compile: bool = False,
    keep: bool = True,
    num_updates: int | None = None,
    key: Hashable | None = None,
) -> EnvResult:
    """Train PPO with ``spec`` on ``config.env`` once per seed.

    ``keep`` caches the compiled trainer for the next evaluation of (``spec``,
    ``config``). ``keep=False`` (a discovery candidate, evaluated once per config) uses a
    cached trainer if there is one but never adds one: its executable would only hold
    memory, and would evict trainers that are reused. A trainer :func:`prepare` compiled
    under this evaluation's ``key`` is used (and its compile time reported).
    ``num_updates``: run only the first updates of ``config`` (the speed screen), with
    the executable the whole run uses.
    """
    trainer = _trainer(spec, config, keep, key)
    with _LOCK:
        prepared_s = _PREPARED.pop(key, (None, 0.0))[1]
    result = train_seeds(trainer, seeds, fast_compile=fast_compile, num_updates=num_updates)
    m = result.metrics
    return EnvResult(
        optimiser=spec.name,
        env=config.env,
        seeds=tuple(int(s) for s in seeds),
        final_return=m.final_return,
        auc=m.auc,
        return_curve=m.return_curve,
        finite=m.finite,
        compile_s=result.compile_s + prepared_s,
        run_s=result.run_s,
        config=config,
        num_updates=config.num_updates if num_updates is None else int(num_updates),
    )


def random_policy_return(
    env: str, num_envs: int = 64, num_steps: int = 2000, seed: int = 0
) -> float:
    """Mean return of the episodes a uniform random policy completes in ``num_steps``
    steps of ``num_envs`` environments (NaN if none completes): the floor below which
    the discovery cascade calls a candidate collapsed."""
    import jax
    import jax.numpy as jnp

    from rayopt.rl.envs import make_env

    e, params = make_env(env)
    n_actions = e.action_space(params).n

    def run(key):
        k_reset, k_run = jax.random.split(key)
        _, state = jax.vmap(e.reset, in_axes=(0, None))(jax.random.split(k_reset, num_envs), params)

        def step(carry, _):
            state, key = carry
            key, k_act, k_step = jax.random.split(key, 3)
            action = jax.random.randint(k_act, (num_envs,), 0, n_actions)
            _, state, _, term, trunc, info = jax.vmap(e.step, in_axes=(0, 0, 0, None))(
                jax.random.split(k_step, num_envs), state, action, params
            )
            done = jnp.logical_or(term, trunc)
            return (state, key), (jnp.sum(info["returned_episode_returns"] * done), jnp.sum(done))

        _, (total, count) = jax.lax.scan(step, (state, k_run), None, num_steps)
        return total.sum(), count.sum()

    total, count = jax.jit(run)(jax.random.PRNGKey(seed))
    return float(total / count) if int(count) > 0 else float("nan")
