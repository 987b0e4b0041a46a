"""Checking the coder's code before it costs an evaluation.

The coder loop takes any ``validate(code) -> error | None``. The default defers to
``rayopt.program.check`` (syntax, signature, allowed names, a dry run), imported on
first use so this module works before that package lands; without it, a static check
of syntax and the update_fn signature stands in.
"""

from __future__ import annotations

import ast
import logging
import threading
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

#: ``validate(code)`` returns an error message to feed back to the coder, or None.
Validator = Callable[[str], "str | None"]

#: App. C's signature, parameter names in order.
PARAMS = ("w", "g", "var1", "var2", "t", "d", "t_p", "b_p", "l_p", "key")


def describe_check_result(result: Any) -> str | None:
    """A ``rayopt.program.CheckResult`` as the message the coder sees (None if ok)."""
    if getattr(result, "ok", False):
        return None
    err = getattr(result, "error", None)
    if err is None:
        return "invalid code"
    kind = getattr(err, "kind", None) or "invalid"
    line = getattr(err, "line", None)
    message = getattr(err, "message", None) or str(err)
    where = f" at line {line}" if line is not None else ""
    return f"{kind} error{where}: {message}"


def static_check(code: str) -> str | None:
    """Syntax and signature only: the fallback when rayopt.program.check is absent."""
    try:
        tree = ast.parse(code)
    except SyntaxError as e:
        return f"syntax error at line {e.lineno}: {e.msg}"
    fns = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "update_fn"]
    if not fns:
        return "signature error: the code defines no top-level function `def update_fn(...)`"
    fn = fns[-1]
    a = fn.args
    names = tuple(p.arg for p in [*a.posonlyargs, *a.args])
    if names != PARAMS or a.vararg or a.kwarg or a.kwonlyargs:
        return (
            f"signature error at line {fn.lineno}: update_fn must take exactly "
            f"({', '.join(PARAMS)}); it takes ({', '.join(names)})"
        )
    returns = [n for n in ast.walk(fn) if isinstance(n, ast.Return)]
    if not returns or any(r.value is None for r in returns):
        return f"return error at line {fn.lineno}: update_fn must return (update, var1, var2)"
    for r in returns:
        if isinstance(r.value, ast.Tuple) and len(r.value.elts) != 3:
            return (
                f"return error at line {r.lineno}: update_fn must return 3 values "
                f"(update, var1, var2), not {len(r.value.elts)}"
            )
    return None


class DefaultValidator:
    """``rayopt.program.check`` if importable, else ``static_check``. Thread-safe, as
    the mutator runs it in a worker thread (a dry run can take seconds)."""

    def __init__(self, *, dry_run: bool = True, timeout: float = 10.0) -> None:
        self.dry_run = dry_run
        self.timeout = timeout
        self._check: Callable[..., Any] | None = None
        self._resolved = False
        self._lock = threading.Lock()

    def _resolve(self) -> Callable[..., Any] | None:
        with self._lock:
            if not self._resolved:
                try:
                    from rayopt.program import check  # type: ignore[attr-defined]
                except ImportError:
                    log.info(
                        "rayopt.program.check is unavailable; validating coder output "
                        "with the static syntax/signature check only"
                    )
                    check = None
                self._check, self._resolved = check, True
        return self._check

    def __call__(self, code: str) -> str | None:
        check = self._resolve()
        if check is None:
            return static_check(code)
        return describe_check_result(check(code, dry_run=self.dry_run, timeout=self.timeout))
