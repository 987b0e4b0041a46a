"""OPEN (Goldie et al., 2024), the black-box learned optimiser, run from its published weights.

OPEN is a per-parameter GRU followed by an MLP. For every element of every parameter tensor
it reads 19 features (the parameter, six gradient momenta, the gradient, and OPEN's extra
inputs) and outputs three numbers that form the update (see ``docs/open.md``). rayopt only
runs inference with the published checkpoints; it does not meta-train OPEN and does not
ship its weights.

The definitions follow the public repository AlexGoldie/rl-learned-optimization
(``rl_optimizer/network.py``, ``train.py``, ``eval.py``); this is an independent
implementation of them as an optax transformation.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from rayopt.optim.context import UpdateContext

if TYPE_CHECKING:
    from rayopt.optim import OptimiserSpec

__all__ = [
    "DECAYS",
    "NUM_INPUTS",
    "VARIANTS",
    "OpenState",
    "OpenVariant",
    "check_open_weights",
    "load_open_params",
    "open_networks",
    "open_optimiser",
    "open_transform",
    "param_count",
]

#: Momentum timescales of OPEN's six rolling averages of the gradient.
DECAYS: tuple[float, ...] = (0.1, 0.5, 0.9, 0.99, 0.999, 0.9999)
#: Per-element inputs: 15 normalised (p, 6 signs + 6 logs of momenta, sign + log of g)
#: then t_p, l_p, b_p, dormancy.
NUM_INPUTS = 19
#: OPEN's output scales: update = o0 * STEP * exp(o1 * EXP) + o2 * STEP * noise.
STEP_MULT = 1e-3
EXP_MULT = 1e-3
#: Inside log(|x| + eps) of momenta and gradient.
LOG_EPS = 1e-13
#: In the second-moment normaliser x / sqrt(eps + mean(x^2)).
NORM_EPS = 1e-5


class OpenVariant(NamedTuple):
    """An OPEN network size; the checkpoint's length determines which one it is."""

    name: str
    hidden_size: int
    gru_features: int


#: Published checkpoint length -> network size (eval.py: ``larger`` is hidden 32 / GRU 16).
VARIANTS: dict[int, OpenVariant] = {
    1211: OpenVariant("default", hidden_size=16, gru_features=8),
    3571: OpenVariant("larger", hidden_size=32, gru_features=16),
}


class OpenState(NamedTuple):
    """Per-parameter recurrent state, zero-initialised.

    momenta: like params, each leaf ``p.shape + (6,)`` (one EMA of the gradient per decay,
      no bias correction, as learned_optimization's ``vec_rolling_mom``).
    carry: ``(n, gru_features)``, the GRU hidden state of all ``n`` parameter elements in
      one array (JAX leaf order, each tensor's elements in row-major order): the network
      runs on all elements as one batch, so a flat carry needs no concatenation and split
      per step.
    """

    momenta: Any
    carry: Any


def open_networks(variant: OpenVariant) -> tuple[nn.GRUCell, nn.Sequential]:
    """OPEN's two flax modules; their parameter names define the checkpoint layout."""
    gru = nn.GRUCell(features=variant.gru_features)
    h = variant.hidden_size
    mlp = nn.Sequential(
        [nn.Dense(h), nn.LayerNorm(), nn.relu, nn.Dense(h), nn.LayerNorm(), nn.relu, nn.Dense(3)]
    )
    return gru, mlp


def _checkpoint_layout(variant: OpenVariant) -> list[tuple[tuple[str, ...], tuple[int, ...]]]:
    """Every array of a checkpoint, in the order it is stored.

    The published vectors are ``ravel_pytree({"params": mlp_vars, "gru_params": gru_vars})``
    of the flax modules at publication time, i.e. leaves in sorted-key order. Written out
    here so a future flax renaming is caught (``_template_check``) instead of silently
    permuting weights.
    """
    f, h, n = variant.gru_features, variant.hidden_size, NUM_INPUTS
    gru = [
        (("hn", "bias"), (f,)), (("hn", "kernel"), (f, f)),
        (("hr", "kernel"), (f, f)), (("hz", "kernel"), (f, f)),
        (("in", "bias"), (f,)), (("in", "kernel"), (n, f)),
        (("ir", "bias"), (f,)), (("ir", "kernel"), (n, f)),
        (("iz", "bias"), (f,)), (("iz", "kernel"), (n, f)),
    ]  # fmt: skip
    mlp = [
        (("layers_0", "bias"), (h,)), (("layers_0", "kernel"), (f, h)),
        (("layers_1", "bias"), (h,)), (("layers_1", "scale"), (h,)),
        (("layers_3", "bias"), (h,)), (("layers_3", "kernel"), (h, h)),
        (("layers_4", "bias"), (h,)), (("layers_4", "scale"), (h,)),
        (("layers_6", "bias"), (3,)), (("layers_6", "kernel"), (h, 3)),
    ]  # fmt: skip
    return [(("gru_params", "params", *k), s) for k, s in gru] + [
        (("params", "params", *k), s) for k, s in mlp
    ]


def param_count(variant: OpenVariant) -> int:
    """Length of a checkpoint of this variant."""
    return sum(int(np.prod(s)) for _, s in _checkpoint_layout(variant))


def _template_check(variant: OpenVariant, tree: dict) -> None:
    """Fail loudly if the installed flax names or shapes parameters differently."""
    gru, mlp = open_networks(variant)
    key = jax.random.key(0)
    template = jax.eval_shape(
        lambda: {
            "params": mlp.init(key, jnp.zeros([variant.gru_features])),
            "gru_params": gru.init(key, jnp.zeros([variant.gru_features]), jnp.zeros([NUM_INPUTS])),
        }
    )
    layout = lambda t: [  # noqa: E731
        (jax.tree_util.keystr(p), x.shape) for p, x in jax.tree_util.tree_leaves_with_path(t)
    ]
    published, installed = layout(tree), layout(template)
    if published != installed:
        raise RuntimeError(
            "this flax version lays out OPEN's modules differently from the published "
            f"checkpoints; expected {published}, flax has {installed}"
        )


def load_open_params(path: str | os.PathLike) -> tuple[dict, OpenVariant]:
    """Read a published OPEN checkpoint (flat float32 ``.npy``) into flax parameters.

    Returns ``({"params": <MLP variables>, "gru_params": <GRUCell variables>}, variant)``.
    Raises ``FileNotFoundError`` if ``path`` is not a file and ``ValueError`` if it is not a
    1-D finite float32 array of a known length (1211 or 3571).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"OPEN checkpoint {str(path)!r} is not a file; expected a published .npy such as "
            "multi_OPEN.npy (see docs/open.md)"
        )
    try:
        flat = np.load(path, allow_pickle=False)
    except Exception as err:  # numpy raises ValueError, OSError or UnpicklingError
        raise ValueError(
            f"OPEN checkpoint {str(path)!r} is not a readable .npy array ({err})"
        ) from err
    if not isinstance(flat, np.ndarray):
        raise ValueError(f"OPEN checkpoint {str(path)!r} holds several arrays; expected one .npy")
    sizes = " or ".join(f"{n} ({v.name})" for n, v in VARIANTS.items())
    if flat.dtype != np.float32:
        raise ValueError(f"OPEN checkpoint {str(path)!r} has dtype {flat.dtype}; expected float32")
    if flat.ndim != 1:
        raise ValueError(
            f"OPEN checkpoint {str(path)!r} has shape {flat.shape}; expected a flat vector of "
            f"{sizes} values"
        )
    if flat.size not in VARIANTS:
        raise ValueError(f"OPEN checkpoint {str(path)!r} has {flat.size} values; expected {sizes}")
    if not np.all(np.isfinite(flat)):
        raise ValueError(f"OPEN checkpoint {str(path)!r} contains non-finite values")
    variant = VARIANTS[flat.size]
    tree: dict = {}
    offset = 0
    for keys, shape in _checkpoint_layout(variant):
        n = int(np.prod(shape))
        node = tree
        for k in keys[:-1]:
            node = node.setdefault(k, {})
        node[keys[-1]] = jnp.asarray(flat[offset : offset + n].reshape(shape))
        offset += n
    _template_check(variant, tree)
    return tree, variant


def check_open_weights(spec: OptimiserSpec) -> OptimiserSpec:
    """``spec``, after loading its checkpoint if it is OPEN: a missing or malformed file
    fails now (``FileNotFoundError`` / ``ValueError``), not after hours of other work.
    Any other optimiser passes unchecked."""
    if spec.kind == "open":
        load_open_params(spec.weights or "")
    return spec


def _features(p: jax.Array, g: jax.Array, m: jax.Array, dorm: jax.Array) -> jax.Array:
    """The per-element inputs of one tensor that vary within it, shape ``(p.size, 16)``:
    OPEN's first 15 inputs, each divided by its root-mean-square over the tensor, then the
    dormancy (OPEN's 19th input; ``(out,)`` broadcasts along a kernel's input axis, as
    OPEN tiles it). The other three inputs (``t_p``, ``l_p``, ``b_p``) are constant over a
    tensor and enter the GRU as biases (:func:`_fused_network`).
    """
    x = jnp.concatenate(
        [
            p[..., None],
            jnp.sign(m),
            jnp.log(jnp.abs(m) + LOG_EPS),
            jnp.sign(g)[..., None],
            jnp.log(jnp.abs(g) + LOG_EPS)[..., None],
        ],
        axis=-1,
    )
    axes = tuple(range(p.ndim))
    x = x * jax.lax.rsqrt(NORM_EPS + jnp.mean(jnp.square(x), axis=axes, keepdims=True))
    d = jnp.broadcast_to(jnp.asarray(dorm, x.dtype), p.shape)[..., None]
    return jnp.concatenate([x, d], axis=-1).reshape(-1, _PER_ELEMENT)


#: flax LayerNorm's epsilon (OPEN's MLP uses the default).
LN_EPS = 1e-6
#: Positions of OPEN's inputs that are constant over a tensor, and of dormancy.
_T_P, _L_P, _B_P, _DORM = 15, 16, 17, 18
#: The inputs that vary within a tensor: the 15 normalised ones and dormancy.
_PER_ELEMENT = 16


def _fused_network(theta: dict, variant: OpenVariant):
    """OPEN's GRUCell + MLP as one function of ``(x (n, 16), h (n, F), t_p, b_p, l_p
    (n,))``, restructured for speed with the same arithmetic up to float rounding
    (docs/open.md, "Cost"):

    - the GRU's six gate matmuls are two: ``x @ [W_ir W_iz W_in]`` and
      ``h @ [W_hr W_hz W_hn]`` (one pass over each input, 3F-wide outputs);
    - the inputs constant over a tensor leave the matmul: ``t_p`` and ``b_p`` (the same
      for every element) join the gate bias, ``l_p`` (one per tensor) is a per-row term
      added to the gate pre-activations, so the input matmul has 16 columns (15
      normalised inputs and dormancy), which XLA CPU runs much faster than 19;
    - ``sigmoid(v) = (1 + tanh(v / 2)) / 2`` (one tanh instead of an exp and a division);
    - ``h' = (1 - z) n + z h`` as ``n + z (h - n)``;
    - LayerNorm's mean subtraction is folded into the Dense before it: the columns of
      ``W - rowmean(W)`` and ``b - mean(b)`` give the centred output directly, so each
      LayerNorm is one reduction (the variance) instead of two.
    """
    g, m = theta["gru_params"]["params"], theta["params"]["params"]
    f = variant.gru_features
    cat = lambda part, names: jnp.concatenate([g[n][part] for n in names], -1)  # noqa: E731
    w_in, b_x = cat("kernel", ("ir", "iz", "in")), cat("bias", ("ir", "iz", "in"))
    w_x = jnp.concatenate([w_in[:_T_P], w_in[_DORM:]])  # the 16 per-element inputs
    w_tp, w_lp, w_bp = w_in[_T_P], w_in[_L_P], w_in[_B_P]
    w_h, b_hn = cat("kernel", ("hr", "hz", "hn")), g["hn"]["bias"]

    def centred(layer: str) -> tuple[jax.Array, jax.Array]:
        w, b = m[layer]["kernel"], m[layer]["bias"]
        return w - jnp.mean(w, axis=1, keepdims=True), b - jnp.mean(b)

    (w0, b0), (w3, b3) = centred("layers_0"), centred("layers_3")
    s1, c1, s4, c4 = (m[k][p] for k in ("layers_1", "layers_4") for p in ("scale", "bias"))
    w6, b6 = m["layers_6"]["kernel"], m["layers_6"]["bias"]
    sigmoid = lambda v: 0.5 + 0.5 * jnp.tanh(0.5 * v)  # noqa: E731

    def layer_norm(y: jax.Array, scale: jax.Array, bias: jax.Array) -> jax.Array:
        inv = jax.lax.rsqrt(jnp.mean(y * y, axis=-1, keepdims=True) + LN_EPS)  # y is centred
        return y * (inv * scale) + bias

    def network(
        x: jax.Array, h: jax.Array, t_p: jax.Array, b_p: jax.Array, l_p: jax.Array
    ) -> tuple[jax.Array, jax.Array]:
        a = x @ w_x + (b_x + t_p * w_tp + b_p * w_bp) + l_p[:, None] * w_lp
        c = h @ w_h
        r = sigmoid(a[:, :f] + c[:, :f])
        z = sigmoid(a[:, f : 2 * f] + c[:, f : 2 * f])
        n = jnp.tanh(a[:, 2 * f :] + r * (c[:, 2 * f :] + b_hn))
        h = n + z * (h - n)
        y = jnp.maximum(layer_norm(h @ w0 + b0, s1, c1), 0.0)
        y = jnp.maximum(layer_norm(y @ w3 + b3, s4, c4), 0.0)
        return h, y @ w6 + b6

    return network


def open_transform(theta: dict, variant: OpenVariant) -> optax.GradientTransformationExtraArgs:
    """OPEN with meta-parameters ``theta`` (as returned by :func:`load_open_params`).

    ``update(grads, state, params, ctx=UpdateContext)`` expects already-clipped gradients
    (OPEN clips actor and critic separately before its optimiser; ``rayopt.optim.build``
    chains that clipping in front). It returns optax updates, i.e. ``-(u - mean(u))``:
    the learned update ``u``, zero-meaned over all parameters of actor and critic together.
    """
    network = _fused_network(theta, variant)
    decays = jnp.asarray(DECAYS, jnp.float32)
    width = variant.gru_features

    def init(params: Any) -> OpenState:
        n = sum(p.size for p in jax.tree.leaves(params))
        zeros = lambda p: jnp.zeros(p.shape + (len(DECAYS),), jnp.float32)  # noqa: E731
        return OpenState(
            momenta=jax.tree.map(zeros, params), carry=jnp.zeros((n, width), jnp.float32)
        )

    def noise(key: jax.Array, p: jax.Array, mask: Any) -> jax.Array:
        # A mask known to be 0 at trace time (PPO's critic) needs no draw: 0 * N(0, 1) = 0.
        if isinstance(mask, (int, float)) and mask == 0:
            return jnp.zeros(p.size, jnp.float32)
        return jax.random.normal(key, p.shape, jnp.float32).ravel() * jnp.asarray(mask, jnp.float32)

    def update(
        grads: Any, state: OpenState, params: Any = None, *, ctx: UpdateContext, **_: Any
    ) -> tuple[Any, OpenState]:
        if params is None:
            raise ValueError("OPEN needs the current parameters (its first input feature)")
        leaves, treedef = jax.tree.flatten(params)
        flat = lambda tree: treedef.flatten_up_to(tree)  # noqa: E731
        g = [x.astype(jnp.float32) for x in flat(grads)]
        m = [decays * m0 + (1.0 - decays) * gi[..., None]
             for m0, gi in zip(flat(state.momenta), g, strict=True)]  # fmt: skip
        keys = jax.random.split(ctx.key, len(leaves))

        # All elements of all tensors go through the networks as one batch: the networks
        # act per element, so this equals OPEN's per-tensor calls with fewer kernels.
        x = jnp.concatenate([
            _features(p.astype(jnp.float32), gi, mi, d)
            for p, gi, mi, d in zip(leaves, g, m, flat(ctx.dormancy), strict=True)
        ])  # fmt: skip
        l_p = jnp.concatenate([
            jnp.broadcast_to(jnp.asarray(lp, jnp.float32), (p.size,))
            for p, lp in zip(leaves, flat(ctx.l_p), strict=True)
        ])  # fmt: skip
        t_p, b_p = (jnp.asarray(v, jnp.float32) for v in (ctx.t_p, ctx.b_p))
        h, o = network(x, state.carry, t_p, b_p, l_p)
        # Noise per tensor from its own key (as OPEN draws it), on the actor only.
        eps = jnp.concatenate([
            noise(k, p, mk) for k, p, mk in zip(keys, leaves, flat(ctx.actor_mask), strict=True)
        ])  # fmt: skip
        u = o[:, 0] * STEP_MULT * jnp.exp(o[:, 1] * EXP_MULT) + o[:, 2] * eps * STEP_MULT
        u = u - jnp.mean(u)

        splits = np.cumsum([p.size for p in leaves])[:-1]
        updates = [-ui.reshape(p.shape).astype(p.dtype)
                   for p, ui in zip(leaves, jnp.split(u, splits), strict=True)]  # fmt: skip
        return treedef.unflatten(updates), OpenState(momenta=treedef.unflatten(m), carry=h)

    return optax.GradientTransformationExtraArgs(init, update)


@lru_cache(maxsize=8)
def _load_cached(resolved: str, mtime_ns: int) -> tuple[dict, OpenVariant]:
    return load_open_params(resolved)


def open_optimiser(path: str | os.PathLike) -> optax.GradientTransformationExtraArgs:
    """OPEN from a published checkpoint file; loads are cached by path (and mtime)."""
    p = Path(path)
    if not p.is_file():
        load_open_params(p)  # raises the descriptive error
    resolved = p.resolve()
    theta, variant = _load_cached(str(resolved), resolved.stat().st_mtime_ns)
    return open_transform(theta, variant)
