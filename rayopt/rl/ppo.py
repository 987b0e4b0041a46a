"""PPO (Schulman et al., 2017) in one jittable function, PureJaxRL/OPEN style, with a
pluggable optimiser that sees OPEN's inputs (dormancy, t_p, b_p, l_p, a key).

``make_train(config, optimiser)`` returns a :class:`Trainer` whose ``init(key)`` builds
the agent and whose ``run(state, num_updates)`` trains it and returns per-update metrics
reduced inside the jit, so memory stays flat in the total timesteps. ``init`` and ``run``
are separate because on CPU the orthogonal initialiser must not run under ``vmap``
(jaxlib 0.10 deadlock; see ``rayopt.rl.execution``).

``num_updates`` is an argument of the compiled function, not part of it: the first
``num_updates`` updates of the configured run (its schedules, ``t_p`` included, stay
those of ``config.num_updates``). One executable thus serves the discovery cascade's
speed screen (a few updates, timed) and the full evaluation of the same candidate.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from rayopt.optim.context import UpdateContext
from rayopt.rl.envs import REGISTRY, canonical, make_env
from rayopt.rl.networks import MLP, dormancy, layer_proportions, layer_tree


@dataclasses.dataclass(frozen=True)
class PPOConfig:
    """PPO hyperparameters; defaults are Table 1's MinAtar column.

    ``truncation``: ``terminate`` (default, the paper's semantics) treats a time-limit
    end as a terminal state, as OPEN and PureJaxRL did on the old gymnax API (and as the
    published OPEN checkpoints were meta-trained); ``bootstrap`` treats it as
    non-terminal and bootstraps from ``V(final_observation)`` (Pardo et al., 2018).
    See docs/evaluator.md ("Truncation") for where they differ, measured.
    """

    env: str = "Breakout-MinAtar"
    total_timesteps: int = 10_000_000
    num_envs: int = 64
    num_steps: int = 128
    num_minibatches: int = 8
    update_epochs: int = 4
    gamma: float = 0.99
    gae_lambda: float = 0.95
    clip_eps: float = 0.2
    vf_coef: float = 0.5
    ent_coef: float = 0.01
    max_grad_norm: float = 0.5
    hidden_size: int = 64
    num_hidden_layers: int = 2
    activation: str = "relu"
    truncation: str = "terminate"

    def __post_init__(self) -> None:
        if self.activation not in ("relu", "tanh"):
            raise ValueError(f"activation must be relu or tanh, not {self.activation!r}")
        if self.truncation not in ("bootstrap", "terminate"):
            raise ValueError(f"truncation must be bootstrap or terminate, not {self.truncation!r}")
        if self.num_updates < 1:
            raise ValueError(
                f"total_timesteps={self.total_timesteps} is less than one rollout "
                f"(num_envs * num_steps = {self.num_envs * self.num_steps})"
            )
        if (self.num_envs * self.num_steps) % self.num_minibatches:
            raise ValueError("num_envs * num_steps must be divisible by num_minibatches")

    @property
    def num_updates(self) -> int:
        return self.total_timesteps // (self.num_envs * self.num_steps)

    @property
    def minibatch_size(self) -> int:
        return self.num_envs * self.num_steps // self.num_minibatches

    def replace(self, **changes: Any) -> PPOConfig:
        return dataclasses.replace(self, **changes)


#: Table 1 of the paper, one column per environment family.
PRESETS: dict[str, dict[str, Any]] = {
    "minatar": {},
    "cartpole": dict(num_envs=4, num_steps=128, total_timesteps=500_000, num_minibatches=4),
    "craftax": dict(num_envs=256, num_steps=16, gae_lambda=0.8),
}


def config_for(env: str, **overrides: Any) -> PPOConfig:
    """Table 1's column for ``env``, with ``overrides`` (the generalisation axes) applied."""
    env_id = canonical(env)
    fields = {**PRESETS[REGISTRY[env_id].preset], **overrides, "env": env_id}
    return PPOConfig(**fields)


class Metrics(NamedTuple):
    """What one training run returns (leading seed axis when batched).

    return_curve: per update, the mean over the rollout's steps and envs of each env's
      most recent completed-episode return (PureJaxRL/OPEN's ``returned_episode_returns``);
      NaN until the first episode ends, and for updates not run (``num_updates`` below
      the config's).
    final_return: the curve's point at the last update run.
    auc: area under the return curve normalised by its length: the mean of the curve
      over the updates where it is defined.
    finite: whether every parameter is finite at the end.
    """

    return_curve: jax.Array
    final_return: jax.Array
    auc: jax.Array
    finite: jax.Array


class RunnerState(NamedTuple):
    params: Any
    opt_state: Any
    env_state: Any
    obs: jax.Array
    key: jax.Array


class Transition(NamedTuple):
    obs: jax.Array
    action: jax.Array
    reward: jax.Array
    terminated: jax.Array
    done: jax.Array
    value: jax.Array
    log_prob: jax.Array
    final_value: jax.Array
    episode_return: jax.Array
    episode_valid: jax.Array


@dataclasses.dataclass(frozen=True, eq=False)
class Trainer:
    """``init(key) -> RunnerState`` and ``run(RunnerState, num_updates) -> Metrics`` for
    one seed (``num_updates``: how many of ``config.num_updates`` to run, clipped to
    1..``config.num_updates``; may be traced).

    ``compiled`` holds this trainer's executables by layout (see rayopt.rl.execution):
    they live and die with the trainer.
    """

    config: PPOConfig
    init: Any
    run: Any
    compiled: dict = dataclasses.field(default_factory=dict, repr=False)

    def train(self, key: jax.Array, num_updates: int | jax.Array | None = None) -> Metrics:
        n = self.config.num_updates if num_updates is None else num_updates
        return self.run(self.init(key), n)


def kernel_shapes(config: PPOConfig) -> list[tuple[int, int]]:
    """The (in, out) shapes of every kernel of the actor and critic ``config`` builds
    (flattened observations in, actions / a value out)."""
    env, env_params = make_env(config.env)
    obs = jax.eval_shape(lambda k: env.reset(k, env_params)[0], jax.random.key(0)).shape
    n_in = int(np.prod(obs)) if obs else 1
    h, n_actions = config.hidden_size, int(env.action_space(env_params).n)
    hidden = [(n_in, h)] + [(h, h)] * (config.num_hidden_layers - 1)
    return [*hidden, (h, n_actions), *hidden, (h, 1)]


def largest_kernel(configs: list[PPOConfig]) -> tuple[int, int]:
    """The largest kernel of the networks of ``configs`` (by size): where a program is
    most expensive, and the real shape the dry run probes (Freeway's (700, 64) for
    Table 1's MinAtar networks)."""
    return max((s for c in configs for s in kernel_shapes(c)), key=lambda s: (s[0] * s[1], s))


def make_train(config: PPOConfig, optimiser: optax.GradientTransformationExtraArgs) -> Trainer:
    """Build PPO for ``config`` with ``optimiser`` (see ``rayopt.optim.build``)."""
    cfg = config
    env, env_params = make_env(cfg.env)
    num_actions = env.action_space(env_params).n
    obs_shape = jax.eval_shape(lambda k: env.reset(k, env_params)[0], jax.random.key(0)).shape
    actor = MLP(cfg.hidden_size, cfg.num_hidden_layers, num_actions, cfg.activation, 0.01)
    critic = MLP(cfg.hidden_size, cfg.num_hidden_layers, 1, cfg.activation, 1.0)
    reset = jax.vmap(env.reset, in_axes=(0, None))
    step = jax.vmap(env.step, in_axes=(0, 0, 0, None))

    def value_of(params: Any, obs: jax.Array) -> tuple[jax.Array, Any]:
        v, acts = critic.apply(params["critic"], obs)
        return v[..., 0], acts

    def init(key: jax.Array) -> RunnerState:
        k_actor, k_critic, k_env, k_run = jax.random.split(key, 4)
        dummy = jnp.zeros(obs_shape)
        params = {"actor": actor.init(k_actor, dummy), "critic": critic.init(k_critic, dummy)}
        obs, env_state = reset(jax.random.split(k_env, cfg.num_envs), env_params)
        return RunnerState(params, optimiser.init(params), env_state, obs, k_run)

    def loss_fn(params: Any, batch: Transition, advantages: jax.Array, targets: jax.Array):
        logits, actor_acts = actor.apply(params["actor"], batch.obs)
        value, critic_acts = value_of(params, batch.obs)
        log_probs = jax.nn.log_softmax(logits)
        log_prob = jnp.take_along_axis(log_probs, batch.action[:, None], axis=-1)[:, 0]
        value_clipped = batch.value + jnp.clip(value - batch.value, -cfg.clip_eps, cfg.clip_eps)
        value_loss = (
            0.5
            * jnp.maximum(jnp.square(value - targets), jnp.square(value_clipped - targets)).mean()
        )
        ratio = jnp.exp(log_prob - batch.log_prob)
        adv = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
        clipped = jnp.clip(ratio, 1.0 - cfg.clip_eps, 1.0 + cfg.clip_eps)
        policy_loss = -jnp.minimum(ratio * adv, clipped * adv).mean()
        entropy = -jnp.sum(jnp.exp(log_probs) * log_probs, axis=-1).mean()
        total = policy_loss + cfg.vf_coef * value_loss - cfg.ent_coef * entropy
        return total, (actor_acts, critic_acts)

    grad_fn = jax.grad(loss_fn, has_aux=True)

    def run(state: RunnerState, num_updates: int | jax.Array) -> Metrics:
        static = {
            "l_p": {k: layer_proportions(state.params[k]) for k in ("actor", "critic")},
            "actor_mask": {
                k: jax.tree.map(lambda _, m=m: m, state.params[k])
                for k, m in (("actor", 1.0), ("critic", 0.0))
            },
        }

        def env_step(carry, _):
            params, env_state, obs, key = carry
            key, k_act, k_step = jax.random.split(key, 3)
            logits, _ = actor.apply(params["actor"], obs)
            value, _ = value_of(params, obs)
            action = jax.random.categorical(k_act, logits)
            log_prob = jnp.take_along_axis(jax.nn.log_softmax(logits), action[:, None], -1)[:, 0]
            next_obs, env_state, reward, term, trunc, info = step(
                jax.random.split(k_step, cfg.num_envs), env_state, action, env_params
            )
            done = jnp.logical_or(term, trunc)
            if cfg.truncation == "bootstrap":
                # Only the value of a truncated episode's last observation is kept:
                # the observation itself never leaves this step.
                final_value, _ = value_of(params, info["final_observation"])
                final_value = jnp.where(trunc & ~term, final_value, 0.0)
            else:
                final_value = jnp.zeros_like(value)
                term = done
            t = Transition(
                obs,
                action,
                reward,
                term,
                done,
                value,
                log_prob,
                final_value,
                info["returned_episode_returns"],
                info["returned_episode_valid"],
            )
            return (params, env_state, next_obs, key), t

        def gae(traj: Transition, last_value: jax.Array) -> tuple[jax.Array, jax.Array]:
            def back(carry, t: Transition):
                advantage, next_value = carry
                # After a done, the next stored value belongs to a new episode: use the
                # truncated episode's own bootstrap value (0 when it terminated).
                next_v = jnp.where(t.done, t.final_value, next_value)
                delta = t.reward + cfg.gamma * next_v * (1.0 - t.terminated) - t.value
                advantage = delta + cfg.gamma * cfg.gae_lambda * (1.0 - t.done) * advantage
                return (advantage, t.value), advantage

            _, adv = jax.lax.scan(
                back, (jnp.zeros_like(last_value), last_value), traj, reverse=True, unroll=16
            )
            return adv, adv + traj.value

        def update_step(carry: RunnerState, update_idx: jax.Array):
            params, opt_state, env_state, obs, key = carry
            (params, env_state, obs, key), traj = jax.lax.scan(
                env_step, (params, env_state, obs, key), None, cfg.num_steps
            )
            traj = traj._replace(
                terminated=traj.terminated.astype(jnp.float32), done=traj.done.astype(jnp.float32)
            )
            last_value, _ = value_of(params, obs)
            advantages, targets = gae(traj, last_value)
            # Clipped: XLA may turn the division into a multiplication by the reciprocal,
            # and t_p = 1.0000001 would make sqrt(1 - t_p) NaN in Discovered Optimiser 1.
            t_p = jnp.clip(update_idx / max(cfg.num_updates - 1, 1), 0.0, 1.0)

            def epoch(carry, epoch_idx):
                params, opt_state, key = carry
                key, k_perm = jax.random.split(key)
                batch_size = cfg.num_envs * cfg.num_steps
                perm = jax.random.permutation(k_perm, batch_size)
                data = (traj, advantages, targets)
                data = jax.tree.map(lambda x: x.reshape((batch_size,) + x.shape[2:])[perm], data)
                data = jax.tree.map(
                    lambda x: x.reshape((cfg.num_minibatches, -1) + x.shape[1:]), data
                )
                b_p = jnp.clip(epoch_idx / max(cfg.update_epochs - 1, 1), 0.0, 1.0)

                def minibatch(carry, mb):
                    params, opt_state, key = carry
                    key, k_opt = jax.random.split(key)
                    grads, (actor_acts, critic_acts) = grad_fn(params, *mb)
                    ctx = UpdateContext(
                        key=k_opt,
                        t_p=jnp.asarray(t_p, jnp.float32),
                        b_p=jnp.asarray(b_p, jnp.float32),
                        dormancy={
                            "actor": layer_tree(params["actor"], [dormancy(a) for a in actor_acts]),
                            "critic": layer_tree(
                                params["critic"], [dormancy(a) for a in critic_acts]
                            ),
                        },
                        l_p=static["l_p"],
                        actor_mask=static["actor_mask"],
                    )
                    updates, opt_state = optimiser.update(grads, opt_state, params, ctx=ctx)
                    return (optax.apply_updates(params, updates), opt_state, key), None

                (params, opt_state, key), _ = jax.lax.scan(
                    minibatch, (params, opt_state, key), data
                )
                return (params, opt_state, key), None

            (params, opt_state, key), _ = jax.lax.scan(
                epoch, (params, opt_state, key), jnp.arange(cfg.update_epochs)
            )
            valid = traj.episode_valid
            n_valid = valid.sum()
            mean_return = jnp.where(
                n_valid > 0, (traj.episode_return * valid).sum() / jnp.maximum(n_valid, 1), jnp.nan
            )
            return RunnerState(params, opt_state, env_state, obs, key), mean_return

        def one_update(i: jax.Array, carry: tuple[RunnerState, jax.Array]):
            state, curve = carry
            state, mean_return = update_step(state, i)
            return state, curve.at[i].set(mean_return)

        # the updates not run stay NaN: "undefined", as before a first episode ends
        stop = jnp.clip(jnp.asarray(num_updates, jnp.int32), 1, cfg.num_updates)
        curve = jnp.full((cfg.num_updates,), jnp.nan, jnp.float32)
        final, curve = jax.lax.fori_loop(0, stop, one_update, (state, curve))
        finite = jnp.all(
            jnp.asarray([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(final.params)])
        )
        defined = jnp.isfinite(curve)
        auc = jnp.where(
            defined.any(),
            jnp.where(defined, curve, 0.0).sum() / jnp.maximum(defined.sum(), 1),
            jnp.nan,
        )
        return Metrics(curve, curve[stop - 1], auc, finite)

    return Trainer(config=cfg, init=init, run=run)
