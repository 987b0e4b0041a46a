"""Untrusted optimiser code -> a validated, audited, compiled ``update_fn``.

- :func:`check`: the one entry point (validate, literal audit, canonical hash, and a
  sandboxed dry run giving a behavioural fingerprint) -> :class:`CheckResult`.
- :func:`check_shapes`: the same program traced at the networks' real shapes (sizes
  only, nothing runs): what the small probe cannot see.
- :func:`validate`: static checks only -> :class:`ProgramError` or ``None``.
- :func:`canonical_hash`, :func:`fingerprint`: same code / same behaviour.
- :func:`introduced`: tunable literals a child adds over its parent.
- :func:`load_checked`: validate then load; the one way code becomes a callable (the
  evaluator's path for search code and the library alike).

See docs/program.md for the threat model and the sandbox's limits.
"""

from __future__ import annotations

from rayopt.program.audit import Audit, Literal, audit, introduced, literals
from rayopt.program.canonical import canonical_hash, canonical_source, fingerprint
from rayopt.program.check import CheckResult, check, check_shapes
from rayopt.program.errors import KINDS, InvalidProgram, ProgramError
from rayopt.program.loader import load_checked
from rayopt.program.validate import validate

__all__ = [
    "KINDS",
    "Audit",
    "CheckResult",
    "InvalidProgram",
    "Literal",
    "ProgramError",
    "audit",
    "canonical_hash",
    "canonical_source",
    "check",
    "check_shapes",
    "fingerprint",
    "introduced",
    "literals",
    "load_checked",
    "validate",
]
