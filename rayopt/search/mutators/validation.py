"""Checking the coder's code before it costs an evaluation.

The coder loop takes any ``validate(code) -> error | None``. The default,
:class:`DefaultValidator`, runs ``rayopt.program.check`` (syntax, signature, allowed
names, a dry run) and keeps the :class:`~rayopt.program.CheckResult`, so that the
mutator can hand it on with its proposal instead of the code being checked again.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rayopt.program import CheckResult

#: ``validate(code)`` returns an error message to feed back to the coder, or None.
Validator = Callable[[str], "str | None"]


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


class DefaultValidator:
    """``rayopt.program.check`` with the config's dry-run settings. Stateless, so safe
    in the worker threads the mutator runs it in (a dry run can take seconds)."""

    def __init__(self, *, dry_run: bool = True, timeout: float = 10.0) -> None:
        self.dry_run = dry_run
        self.timeout = timeout

    def check(self, code: str) -> CheckResult:
        """The full result, for a caller that passes it on (see ``LLMMutator``)."""
        from rayopt.program import check  # JAX: imported where code is first checked

        return check(code, dry_run=self.dry_run, timeout=self.timeout)

    def __call__(self, code: str) -> str | None:
        return describe_check_result(self.check(code))
