"""Structured errors for untrusted optimiser code.

Every way a candidate ``update_fn`` can fail is a :class:`ProgramError` with a ``kind``
from :data:`KINDS`, the offending line (1-based, ``None`` when no line is to blame) and
a message of one or two sentences. The message is written to be pasted verbatim into
the coder LLM's next prompt, so it names the construct and says what to do instead.
"""

from __future__ import annotations

import dataclasses
from typing import Any

#: Every error kind, in the order a program meets the checks.
KINDS: tuple[str, ...] = (
    "too_large",  # source, statement, node, nesting or loop-size cap exceeded
    "syntax",  # does not parse
    "signature",  # not exactly ``def update_fn(w, g, var1, var2, t, d, t_p, b_p, l_p, key)``
    #                returning a 3-tuple
    "forbidden",  # a construct outside the allowlist (imports, dunders, while, exec ...)
    "shape",  # an output's shape differs from its input's
    "dtype",  # an output is not a floating-point array
    "non_finite",  # an output holds NaN or inf on the probe inputs
    "timeout",  # tracing, compiling or running took longer than allowed
    "memory",  # an array or the worker's memory exceeded its cap
    "runtime",  # the program raised while tracing or running, or crashed the worker
    "internal",  # the sandbox itself failed (not the program's fault)
)

#: Messages longer than this are cut: they go into an LLM prompt.
MAX_MESSAGE = 300


@dataclasses.dataclass(frozen=True)
class ProgramError:
    """Why a program was rejected: ``kind`` (one of :data:`KINDS`), ``line`` and
    ``message``."""

    kind: str
    line: int | None
    message: str

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown ProgramError kind {self.kind!r}")
        if len(self.message) > MAX_MESSAGE:
            object.__setattr__(self, "message", self.message[: MAX_MESSAGE - 3] + "...")

    def __str__(self) -> str:
        return f"{self.kind}: {self.message}"

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "line": self.line, "message": self.message}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ProgramError:
        return cls(kind=data["kind"], line=data.get("line"), message=data["message"])


class InvalidProgram(ValueError):
    """Raised by :func:`rayopt.program.load_checked`; carries the :class:`ProgramError`."""

    def __init__(self, error: ProgramError) -> None:
        super().__init__(str(error))
        self.error = error
