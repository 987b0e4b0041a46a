"""Turn validated update_fn source into a callable, in a namespace that holds only JAX."""

from __future__ import annotations

import builtins
from collections.abc import Callable

import jax
import jax.numpy as jnp

#: The builtins a program may call; everything else (open, exec, __import__ ...) is absent.
SAFE_BUILTINS = {
    name: getattr(builtins, name)
    for name in (
        "abs",
        "min",
        "max",
        "float",
        "int",
        "bool",
        "range",
        "len",
        "round",
        "sum",
        "pow",
        "tuple",
        "list",
        "True",
        "False",
        "None",
        "isinstance",
    )
}


def namespace() -> dict:
    """Fresh globals for one program: jnp, jax (lax, random, nn reachable through it)."""
    return {"__builtins__": dict(SAFE_BUILTINS), "jnp": jnp, "jax": jax, "lax": jax.lax}


def load_checked(code: str, name: str = "update_fn") -> Callable:
    """Validate ``code`` (raising :class:`rayopt.program.errors.InvalidProgram`), then
    compile the validated tree (annotations and docstrings stripped, so they are never
    evaluated) and return its ``update_fn``. For the evaluator: untrusted code that
    already passed :func:`rayopt.program.check` goes through here, never through exec
    of the raw text."""
    from rayopt.program.validate import parse_program

    tree = parse_program(code)
    env = namespace()
    exec(compile(tree, "<update_fn>", "exec"), env)  # noqa: S102 - validated, JAX-only
    return env[name]
