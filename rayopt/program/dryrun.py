"""The dry run: trace, size-check, compile and run ``update_fn`` on probe inputs.

This module runs *inside the sandbox worker* (:mod:`rayopt.program._worker`); the
parent never imports it on the check path. It executes the program the way PPO does
(:mod:`rayopt.optim.symbolic`): under ``jax.jit``, once per parameter tensor, with
var1/var2 zero-initialised and carried across steps, and ``w`` moved by ``w - update``.

The probe covers the states PPO really produces, including the awkward ones: a
(8, 4) kernel (non-square, so a transpose or a ``d`` broadcast on the wrong axis fails),
a (4,) bias that starts at zero (flax's initialiser), a (64, 64) kernel; t_p and b_p
at 0 and 1; a dead neuron (``d == 0``); an exactly-zero gradient entry; gradients
spanning 1e-8 to 1 in magnitude (so epsilons matter). All inputs are fixed, so the
trajectory of ``w`` (the updates over the steps) doubles as the behavioural fingerprint.

Before anything executes, every intermediate array of the traced program (including
inside ``cond``/``fori_loop`` bodies) is sized from its abstract shape, and XLA's own
memory analysis of the compiled program is checked: an enormous allocation is
rejected as ``memory`` without ever being attempted.
"""

from __future__ import annotations

import dataclasses
import math
import time
import traceback
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from rayopt.program.canonical import digest_outputs
from rayopt.program.errors import InvalidProgram, ProgramError
from rayopt.program.loader import namespace
from rayopt.program.validate import parse_program

FILENAME = "<update_fn>"
#: Largest single intermediate array (bytes).
ARRAY_CAP = 64 << 20
#: Largest total of XLA's temp + argument + output buffers for the whole probe (bytes).
TOTAL_CAP = 256 << 20
STEPS = 3
T_P = (0.0, 0.5, 1.0)
B_P = (0.0, 1.0, 0.5)


@dataclasses.dataclass(frozen=True)
class Case:
    """One parameter tensor of the probe."""

    name: str
    shape: tuple[int, ...]
    l_p: float


CASES: tuple[Case, ...] = (
    Case("(8, 4) kernel", (8, 4), 0.0),
    Case("(4,) bias", (4,), 0.5),
    Case("(64, 64) kernel", (64, 64), 1.0),
)
OUTPUTS = ("update", "var1", "var2")


class Reject(Exception):
    """A structured failure raised while tracing (shape, dtype, signature)."""

    def __init__(self, kind: str, line: int | None, message: str) -> None:
        super().__init__(message)
        self.error = ProgramError(kind, line, message)


def _line_prefix(line: int | None) -> str:
    return f"Line {line}: " if line is not None else ""


# ------------------------------------------------------------------ probe inputs
def _dormancy(n: int, rng: np.random.Generator) -> np.ndarray:
    """Non-negative, mean 1 over the layer, one dead neuron."""
    if n == 4:
        return np.array([0.0, 0.5, 1.5, 2.0], np.float32)
    d = rng.gamma(2.0, size=n)
    d[0] = 0.0
    return (d * n / d.sum()).astype(np.float32)


def _gradient(shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """Random signs, magnitudes log-uniform in [1e-8, 1], one exact zero."""
    g = rng.choice([-1.0, 1.0], size=shape) * 10.0 ** rng.uniform(-8, 0, size=shape)
    g.reshape(-1)[0] = 0.0
    return g.astype(np.float32)


def probe_inputs(seed: int = 0) -> dict[str, Any]:
    """The fixed probe: per case a starting ``w``, ``d``, per-step ``g`` and keys."""
    rng = np.random.default_rng(seed)
    ws, ds, gs, keys = [], [], [], []
    for ci, case in enumerate(CASES):
        if len(case.shape) == 2:
            w = rng.normal(0.0, 1.0 / math.sqrt(case.shape[0]), size=case.shape)
        else:
            w = np.zeros(case.shape)
        ws.append(w.astype(np.float32))
        ds.append(_dormancy(case.shape[-1], rng))
        gs.append(np.stack([_gradient(case.shape, rng) for _ in range(STEPS)]))
        keys.append(np.stack([np.asarray(jax.random.PRNGKey(100 * ci + s)) for s in range(STEPS)]))
    return {
        "w": ws,
        "d": ds,
        "g": gs,
        "key": keys,
        "t": np.arange(1, STEPS + 1, dtype=np.int32),
        "t_p": np.asarray(T_P, np.float32),
        "b_p": np.asarray(B_P, np.float32),
    }


# ------------------------------------------------------------------ helpers
def _frames(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    stack = [exc]
    while stack:
        e = stack.pop()
        if id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        stack.extend(x for x in (e.__cause__, e.__context__) if x is not None)


def user_line(exc: BaseException) -> int | None:
    """The innermost line of the program in the traceback of ``exc`` (or its causes)."""
    for e in _frames(exc):
        lines = [f.lineno for f in traceback.extract_tb(e.__traceback__) if f.filename == FILENAME]
        if lines:
            return lines[-1]
    return None


def _first_line(text: str) -> str:
    for line in str(text).splitlines():
        if line.strip():
            return line.strip()
    return ""


_HINTS = {
    "TracerBoolConversionError": "Python `if`/`and`/`or`/`bool()` on a traced array; use "
    "jnp.where or jax.lax.cond.",
    "ConcretizationTypeError": "a traced value was used where Python needs a concrete "
    "value (float(), int(), a shape or an index); keep it as an array.",
    "TracerIntegerConversionError": "a traced value was used as a Python int; keep it as an array.",
    "TracerArrayConversionError": "a traced value was converted to a NumPy array; use jnp.",
    "UnexpectedTracerError": "a traced value escaped its function.",
}


def runtime_error(exc: BaseException) -> ProgramError:
    """A short ProgramError for an exception raised by the program."""
    name = type(exc).__name__
    line = user_line(exc)
    if isinstance(exc, MemoryError) or "RESOURCE_EXHAUSTED" in str(exc):
        return ProgramError(
            "memory",
            line,
            f"{_line_prefix(line)}the program ran out of "
            "memory in the sandbox; use smaller arrays.",
        )
    detail = _HINTS.get(name) or _first_line(str(exc)) or "no message"
    return ProgramError("runtime", line, f"{_line_prefix(line)}{name}: {detail}")


def _nbytes(aval: Any) -> int:
    shape = getattr(aval, "shape", None)
    if shape is None:
        return 0
    try:
        itemsize = np.dtype(aval.dtype).itemsize
    except TypeError:  # extended dtypes (PRNG keys)
        itemsize = 8
    return math.prod(int(s) for s in shape) * itemsize


def _jaxprs(jaxpr: Any) -> Iterator[Any]:
    """A jaxpr and every jaxpr nested in its equations (cond branches, loop bodies)."""
    stack = [jaxpr]
    while stack:
        j = stack.pop()
        inner = getattr(j, "jaxpr", j)
        yield inner
        for eqn in inner.eqns:
            for p in eqn.params.values():
                for q in p if isinstance(p, (tuple, list)) else (p,):
                    if hasattr(q, "eqns") or hasattr(q, "consts"):
                        stack.append(q)


def _eqn_line(eqn: Any) -> int | None:
    tb = getattr(eqn.source_info, "traceback", None)
    if tb is None:
        return None
    lines = [f.line_num for f in tb.frames if f.file_name == FILENAME]
    return lines[0] if lines else None


def _fmt_bytes(n: int) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def check_array_sizes(closed_jaxpr: Any, cap: int) -> ProgramError | None:
    """Reject the first intermediate (or constant) larger than ``cap`` bytes."""
    for const in getattr(closed_jaxpr, "consts", ()):
        n = int(getattr(const, "nbytes", 0))
        if n > cap:
            return ProgramError(
                "memory",
                None,
                f"the program embeds a {_fmt_bytes(n)} "
                f"constant; the limit per array is {_fmt_bytes(cap)}.",
            )
    for j in _jaxprs(closed_jaxpr):
        for eqn in j.eqns:
            for var in eqn.outvars:
                n = _nbytes(var.aval)
                if n > cap:
                    line = _eqn_line(eqn)
                    shape = tuple(var.aval.shape)
                    return ProgramError(
                        "memory",
                        line,
                        f"{_line_prefix(line)}creates an array of shape {shape} "
                        f"{var.aval.dtype} ({_fmt_bytes(n)}); the limit per array is "
                        f"{_fmt_bytes(cap)}.",
                    )
    return None


def _returns_line(code_tree: Any) -> int | None:
    import ast

    lines = [n.lineno for n in ast.walk(code_tree) if isinstance(n, ast.Return)]
    return lines[0] if len(lines) == 1 else None


# ------------------------------------------------------------------ the dry run
def load(code: str) -> tuple[Callable, int | None]:
    """Validate (again: defence in depth), compile the stripped tree, return
    ``(update_fn, line of its return)``."""
    tree = parse_program(code)
    env = namespace()
    exec(compile(tree, FILENAME, "exec"), env)  # noqa: S102 - validated, JAX-only namespace
    return env["update_fn"], _returns_line(tree)


def _check_outputs(result: Any, w: Any, case: Case, ret: int | None) -> tuple:
    """Shapes and dtypes are static: checked while tracing, before anything runs."""
    where = f"on the {case.name}"
    if not isinstance(result, (tuple, list)) or len(result) != 3:
        raise Reject(
            "signature",
            ret,
            f"{_line_prefix(ret)}update_fn returned "
            f"{type(result).__name__}; it must return (update, var1, var2).",
        )
    for name, out in zip(OUTPUTS, result, strict=True):
        if out is None:
            raise Reject("dtype", ret, f"{_line_prefix(ret)}{name} is None, not an array.")
        try:
            shape, dtype = jnp.shape(out), jnp.result_type(out)
        except Exception:
            raise Reject(
                "dtype", ret, f"{_line_prefix(ret)}{name} is {type(out).__name__}, not an array."
            ) from None
        if tuple(shape) != tuple(w.shape):
            raise Reject(
                "shape",
                ret,
                f"{_line_prefix(ret)}{name} has shape {tuple(shape)} {where} (shape "
                f"{tuple(w.shape)}); every output must have its input's shape.",
            )
        if not jnp.issubdtype(dtype, jnp.floating):
            raise Reject(
                "dtype",
                ret,
                f"{_line_prefix(ret)}{name} has dtype {dtype} {where}; outputs must be "
                "floating point (keep float arithmetic or use .astype(jnp.float32)).",
            )
    # PPO casts every output to the parameter's dtype (rayopt.optim.symbolic).
    return tuple(jnp.asarray(out, w.dtype) for out in result)


def make_probe(fn: Callable, ret: int | None) -> Callable:
    """The jittable probe: per case, ``lax.scan`` over STEPS steps (one copy of the
    program per case keeps XLA's compile time down); returns, per case, the stacked
    (update, var1, var2)."""

    def probe(inputs: dict[str, Any]) -> list[tuple[jax.Array, jax.Array, jax.Array]]:
        outs = []
        for ci, case in enumerate(CASES):
            d = inputs["d"][ci]

            def step(carry: tuple, x: tuple, case: Case = case, d: jax.Array = d) -> tuple:
                w, var1, var2 = carry
                g, t, t_p, b_p, key = x
                result = fn(w, g, var1, var2, t, d, t_p, b_p, case.l_p, key)
                update, var1, var2 = _check_outputs(result, w, case, ret)
                return (w - update, var1, var2), (update, var1, var2)

            w = inputs["w"][ci]
            xs = (inputs["g"][ci], inputs["t"], inputs["t_p"], inputs["b_p"], inputs["key"][ci])
            _, ys = jax.lax.scan(step, (w, jnp.zeros_like(w), jnp.zeros_like(w)), xs)
            outs.append(ys)
        return outs

    return probe


def _locate_non_finite(
    fn: Callable, inputs: dict[str, Any], outs: list, ci: int, step: int, nan: bool
) -> tuple[int | None, str]:
    """Best effort: replay the failing call eagerly with JAX's NaN/inf checks on, so the
    first operation producing one raises with the program's line."""
    case = CASES[ci]
    updates, var1s, var2s = (np.asarray(o) for o in outs[ci])
    w = np.asarray(inputs["w"][ci])
    for s in range(step):
        w = w - updates[s]
    var1 = var1s[step - 1] if step else np.zeros_like(w)
    var2 = var2s[step - 1] if step else np.zeros_like(w)
    flag = jax.debug_nans if nan else jax.debug_infs
    try:
        with jax.disable_jit(), flag(True):
            fn(
                jnp.asarray(w),
                inputs["g"][ci][step],
                jnp.asarray(var1),
                jnp.asarray(var2),
                inputs["t"][step],
                inputs["d"][ci],
                inputs["t_p"][step],
                inputs["b_p"][step],
                case.l_p,
                inputs["key"][ci][step],
            )
    except FloatingPointError as e:
        line = user_line(e)
        text = _first_line(str(e))
        op = text.rsplit(" in ", 1)[-1] if " in " in text else "an operation"
        if line is not None:
            return line, (f" The first {'nan' if nan else 'inf'} comes from `{op}` at line {line}.")
    except Exception:  # noqa: BLE001 - only a hint
        pass
    return None, ""


#: XLA options for the probe: its code runs once, so optimising it is wasted time
#: (measured: 1.5-3x faster compiles, up to seconds for jax.random users).
COMPILER_OPTIONS = {"xla_backend_optimization_level": 0}


def run(
    code: str,
    *,
    array_cap: int = ARRAY_CAP,
    total_cap: int = TOTAL_CAP,
    hint_budget: float = 2.0,
) -> tuple[ProgramError | None, str | None]:
    """Dry-run ``code``: ``(None, fingerprint)`` or ``(error, None)``. Never raises for
    anything the program does (MemoryError included). ``hint_budget``: seconds already
    spent after which a failing program gets no NaN-location hint (the replay must not
    push a ``non_finite`` result past the caller's timeout)."""
    t0 = time.perf_counter()
    try:
        fn, ret = load(code)
    except InvalidProgram as e:
        return e.error, None
    inputs = jax.tree.map(jnp.asarray, probe_inputs())
    try:
        traced = jax.jit(make_probe(fn, ret)).trace(inputs)
    except Reject as e:
        return e.error, None
    except BaseException as e:  # noqa: BLE001 - anything the program raises
        if isinstance(e, (KeyboardInterrupt, SystemExit)):
            raise
        return runtime_error(e), None
    error = check_array_sizes(traced.jaxpr, array_cap)
    if error is not None:
        return error, None
    try:
        compiled = traced.lower().compile(COMPILER_OPTIONS)
    except Exception as e:  # noqa: BLE001
        return runtime_error(e), None
    stats = compiled.memory_analysis()
    if stats is not None:
        total = stats.temp_size_in_bytes + stats.argument_size_in_bytes + stats.output_size_in_bytes
        if total > total_cap:
            return ProgramError(
                "memory",
                None,
                f"the compiled program needs "
                f"{_fmt_bytes(total)} of buffers; the limit is "
                f"{_fmt_bytes(total_cap)}.",
            ), None
    try:
        outs = jax.tree.map(np.asarray, jax.block_until_ready(compiled(inputs)))
    except Exception as e:  # noqa: BLE001
        return runtime_error(e), None
    for step in range(STEPS):
        for ci, case in enumerate(CASES):
            for name, stacked in zip(OUTPUTS, outs[ci], strict=True):
                value = stacked[step]
                if np.isfinite(value).all():
                    continue
                nan = bool(np.isnan(value).any())
                line, hint = None, ""
                if time.perf_counter() - t0 < hint_budget:
                    line, hint = _locate_non_finite(fn, inputs, outs, ci, step, nan)
                line = line if line is not None else ret
                return ProgramError(
                    "non_finite",
                    line,
                    f"{_line_prefix(line)}{name} contains {'nan' if nan else 'inf'} at step "
                    f"{step + 1} on the {case.name} (var1/var2 start at zero, t_p and b_p "
                    f"reach 0 and 1, d has a dead neuron, g an exact zero).{hint}",
                ), None
    # The fingerprint is the parameter trajectory: the updates applied to w, step by step
    # (w's start is fixed). State the update never reads cannot change it, so a program
    # that only adds dead state is the optimiser it came from.
    return None, digest_outputs(case_outs[0][step] for step in range(STEPS) for case_outs in outs)


def check_shapes(
    code: str, shapes: list[tuple[int, ...]], *, array_cap: int = ARRAY_CAP
) -> ProgramError | None:
    """Trace ``code`` at each of ``shapes`` (the networks' real kernels; nothing runs or
    compiles) and size every intermediate, so a program that is cheap on the probe but
    builds an enormous array at a real shape (an outer product of a flattened
    (700, 64) kernel is 44,800^2 floats) is ``memory`` here. The cap at a shape is the
    probe's, or 16 x the tensor's own size if that is more."""
    try:
        fn, ret = load(code)
    except InvalidProgram as e:
        return e.error
    for shape in shapes:
        shape = tuple(int(n) for n in shape)
        f32 = jax.ShapeDtypeStruct(shape, jnp.float32)
        scalar = jax.ShapeDtypeStruct((), jnp.float32)
        args = (
            f32,
            f32,
            f32,
            f32,
            jax.ShapeDtypeStruct((), jnp.int32),
            jax.ShapeDtypeStruct(shape[-1:], jnp.float32),
            scalar,
            scalar,
            scalar,
            jax.ShapeDtypeStruct((2,), jnp.uint32),
        )
        case = Case(f"{shape} kernel (a real shape)", shape, 1.0)

        def one(w, g, var1, var2, t, d, t_p, b_p, l_p, key, case=case):
            return _check_outputs(fn(w, g, var1, var2, t, d, t_p, b_p, l_p, key), w, case, ret)

        try:
            traced = jax.jit(one).trace(*args)
        except Reject as e:
            return e.error
        except BaseException as e:  # noqa: BLE001 - anything the program raises
            if isinstance(e, (KeyboardInterrupt, SystemExit)):
                raise
            return runtime_error(e)
        cap = max(array_cap, 16 * 4 * math.prod(shape))
        error = check_array_sizes(traced.jaxpr, cap)
        if error is not None:
            return ProgramError(
                error.kind,
                error.line,
                f"At the networks' real shape {shape} (the probe's are smaller): {error.message}"[
                    :300
                ],
            )
    return None


def warm_up() -> None:
    """Compile something once so the first real job does not pay JAX's start-up."""
    from rayopt.optim.library import GRADIENT_STEP

    error, _ = run(GRADIENT_STEP)
    if error is not None:  # pragma: no cover - would mean the probe itself is broken
        raise RuntimeError(f"sandbox warm-up failed: {error}")
