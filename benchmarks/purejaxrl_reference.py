"""A plain PureJaxRL-style PPO, the speed reference for benchmarks/ppo_throughput.py.

Written in PureJaxRL's shape (one ``make_train(config)`` returning ``train(rng)``,
``jit(train)`` run once per seed, ``optax.chain(clip_by_global_norm, adam)``), with the
same network sizes as rayopt's PPO (separate actor and critic MLPs, Table 1's MinAtar
column) so both do the same FLOPs per environment step. It has none of rayopt's extras
(dormancy, OPEN inputs, truncation bootstrap, per-network clipping), and like
PureJaxRL it reduces the episode returns to one number per update inside the jit.
"""

from __future__ import annotations

from typing import NamedTuple

import flax.linen as nn
import gymnax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.linen.initializers import constant, orthogonal
from gymnax.wrappers.purerl import FlattenObservationWrapper, LogWrapper


class MLP(nn.Module):
    out: int
    width: int = 64
    scale: float = 1.0

    @nn.compact
    def __call__(self, x):
        for _ in range(2):
            x = nn.relu(
                nn.Dense(self.width, kernel_init=orthogonal(np.sqrt(2)), bias_init=constant(0.0))(x)
            )
        return nn.Dense(self.out, kernel_init=orthogonal(self.scale), bias_init=constant(0.0))(x)


class Transition(NamedTuple):
    done: jnp.ndarray
    action: jnp.ndarray
    value: jnp.ndarray
    reward: jnp.ndarray
    log_prob: jnp.ndarray
    obs: jnp.ndarray
    ret: jnp.ndarray


def make_train(config: dict):
    num_updates = config["TOTAL_TIMESTEPS"] // config["NUM_STEPS"] // config["NUM_ENVS"]
    env, env_params = gymnax.make(config["ENV_NAME"])
    env = LogWrapper(FlattenObservationWrapper(env))
    n_act = env.action_space(env_params).n

    def train(rng):
        actor, critic = MLP(n_act, scale=0.01), MLP(1)
        rng, k1, k2 = jax.random.split(rng, 3)
        obs_dim = env.observation_space(env_params).shape
        params = {"a": actor.init(k1, jnp.zeros(obs_dim)), "c": critic.init(k2, jnp.zeros(obs_dim))}
        tx = optax.chain(
            optax.clip_by_global_norm(config["MAX_GRAD_NORM"]), optax.adam(config["LR"])
        )
        opt_state = tx.init(params)
        rng, k = jax.random.split(rng)
        obsv, env_state = jax.vmap(env.reset, in_axes=(0, None))(
            jax.random.split(k, config["NUM_ENVS"]), env_params
        )

        def _update_step(runner_state, unused):
            def _env_step(runner_state, unused):
                params, opt_state, env_state, last_obs, rng = runner_state
                rng, _rng = jax.random.split(rng)
                logits = actor.apply(params["a"], last_obs)
                value = critic.apply(params["c"], last_obs)[:, 0]
                action = jax.random.categorical(_rng, logits)
                log_prob = jnp.take_along_axis(jax.nn.log_softmax(logits), action[:, None], -1)[
                    :, 0
                ]
                rng, _rng = jax.random.split(rng)
                rng_step = jax.random.split(_rng, config["NUM_ENVS"])
                obsv, env_state, reward, term, trunc, info = jax.vmap(
                    env.step, in_axes=(0, 0, 0, None)
                )(rng_step, env_state, action, env_params)
                done = jnp.logical_or(term, trunc)
                t = Transition(
                    done,
                    action,
                    value,
                    reward,
                    log_prob,
                    last_obs,
                    info["returned_episode_returns"],
                )
                return (params, opt_state, env_state, obsv, rng), t

            runner_state, traj_batch = jax.lax.scan(
                _env_step, runner_state, None, config["NUM_STEPS"]
            )
            params, opt_state, env_state, last_obs, rng = runner_state
            last_val = critic.apply(params["c"], last_obs)[:, 0]

            def _get_advantages(gae_and_next_value, transition):
                gae, next_value = gae_and_next_value
                delta = (
                    transition.reward
                    + config["GAMMA"] * next_value * (1 - transition.done)
                    - transition.value
                )
                gae = delta + config["GAMMA"] * config["GAE_LAMBDA"] * (1 - transition.done) * gae
                return (gae, transition.value), gae

            _, advantages = jax.lax.scan(
                _get_advantages,
                (jnp.zeros_like(last_val), last_val),
                traj_batch,
                reverse=True,
                unroll=16,
            )
            targets = advantages + traj_batch.value

            def _update_epoch(update_state, unused):
                def _update_minbatch(carry, batch_info):
                    params, opt_state = carry
                    traj, adv, targets = batch_info

                    def _loss_fn(params):
                        logits = actor.apply(params["a"], traj.obs)
                        value = critic.apply(params["c"], traj.obs)[:, 0]
                        logp_all = jax.nn.log_softmax(logits)
                        log_prob = jnp.take_along_axis(logp_all, traj.action[:, None], -1)[:, 0]
                        v_clip = traj.value + (value - traj.value).clip(
                            -config["CLIP_EPS"], config["CLIP_EPS"]
                        )
                        v_loss = (
                            0.5
                            * jnp.maximum(
                                jnp.square(value - targets), jnp.square(v_clip - targets)
                            ).mean()
                        )
                        ratio = jnp.exp(log_prob - traj.log_prob)
                        gae = (adv - adv.mean()) / (adv.std() + 1e-8)
                        a_loss = -jnp.minimum(
                            ratio * gae,
                            jnp.clip(ratio, 1 - config["CLIP_EPS"], 1 + config["CLIP_EPS"]) * gae,
                        ).mean()
                        entropy = -(jnp.exp(logp_all) * logp_all).sum(-1).mean()
                        return a_loss + config["VF_COEF"] * v_loss - config["ENT_COEF"] * entropy

                    grads = jax.grad(_loss_fn)(params)
                    updates, opt_state = tx.update(grads, opt_state)
                    return (optax.apply_updates(params, updates), opt_state), None

                params, opt_state, traj_batch, advantages, targets, rng = update_state
                rng, _rng = jax.random.split(rng)
                batch_size = config["NUM_STEPS"] * config["NUM_ENVS"]
                permutation = jax.random.permutation(_rng, batch_size)
                batch = jax.tree.map(
                    lambda x: x.reshape((batch_size,) + x.shape[2:]),
                    (traj_batch, advantages, targets),
                )
                shuffled = jax.tree.map(lambda x: jnp.take(x, permutation, axis=0), batch)
                minibatches = jax.tree.map(
                    lambda x: jnp.reshape(x, [config["NUM_MINIBATCHES"], -1] + list(x.shape[1:])),
                    shuffled,
                )
                (params, opt_state), _ = jax.lax.scan(
                    _update_minbatch, (params, opt_state), minibatches
                )
                return (params, opt_state, traj_batch, advantages, targets, rng), None

            update_state = (params, opt_state, traj_batch, advantages, targets, rng)
            update_state, _ = jax.lax.scan(
                _update_epoch, update_state, None, config["UPDATE_EPOCHS"]
            )
            params, opt_state, _, _, _, rng = update_state
            return (params, opt_state, env_state, last_obs, rng), traj_batch.ret.mean()

        rng, _rng = jax.random.split(rng)
        runner_state = (params, opt_state, env_state, obsv, _rng)
        runner_state, curve = jax.lax.scan(_update_step, runner_state, None, num_updates)
        return curve

    return train


def config(env: str, total_timesteps: int) -> dict:
    """Table 1's MinAtar column in PureJaxRL's config-dict form."""
    return {
        "ENV_NAME": env,
        "TOTAL_TIMESTEPS": total_timesteps,
        "NUM_ENVS": 64,
        "NUM_STEPS": 128,
        "NUM_MINIBATCHES": 8,
        "UPDATE_EPOCHS": 4,
        "GAMMA": 0.99,
        "GAE_LAMBDA": 0.95,
        "CLIP_EPS": 0.2,
        "VF_COEF": 0.5,
        "ENT_COEF": 0.01,
        "MAX_GRAD_NORM": 0.5,
        "LR": 1e-3,
    }
