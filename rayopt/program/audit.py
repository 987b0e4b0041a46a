"""Literal audit: the numbers a program hard-codes, and which of them are tunable.

The paper's goal is *hyperparameter-free* optimisers (§5.2, App. C: "you should not
introduce numerical values which need to be tuned"). A numeric literal is the only
place a hyperparameter can hide in an ``update_fn``, so the search counts them and can
penalise or reject a child that adds new ones (:func:`introduced`).

Policy (docs/program.md, "Literal policy"):

- Every ``int``/``float`` constant is listed with its line; ``-x`` on a constant is one
  literal (``-1e-8``, not ``1e-8``). Booleans, ``None`` and ``...`` are not numbers.
- *Structural* (not tunable): values whose magnitude is 0, 1, 2 or 0.5 -- they express
  the form of an expression (``1 - t_p``, ``x ** 2``, ``/ 2``, ``x ** 0.5``, ``-1``),
  not a scale anyone would tune; and any literal inside an index (``w[:, 0]``) or given
  as ``axis=``/``axes=``/``keepdims=``/``ord=``.
- Everything else is *tunable*: 0.9 (a momentum), 1e-8 (an epsilon), 0.001 (a step
  size), 3 (a loop count or power).

The policy is by value, so a ``2.0`` used as a boost factor counts as structural and a
``3`` used as ``x ** 3`` counts as tunable; it is a cheap, predictable proxy, not a
semantic analysis.
"""

from __future__ import annotations

import ast
import dataclasses
from collections import Counter
from typing import NamedTuple

from rayopt.program.validate import parse_any

#: Magnitudes that are structure, not hyperparameters.
STRUCTURAL_MAGNITUDES: frozenset[float] = frozenset({0, 1, 2, 0.5})
#: Keyword arguments whose values are structure (which axis), never tuning.
STRUCTURAL_KEYWORDS: frozenset[str] = frozenset({"axis", "axes", "keepdims", "ord"})


class Literal(NamedTuple):
    """One numeric constant: unpacks as ``(value, line)``."""

    value: int | float
    line: int


@dataclasses.dataclass(frozen=True)
class Audit:
    """Every numeric literal in source order, and the tunable subset."""

    literals: tuple[Literal, ...]
    tunable: tuple[Literal, ...]

    @property
    def tunable_count(self) -> int:
        return len(self.tunable)


def _number(node: ast.AST) -> int | float | None:
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return node.value
    if (
        isinstance(node, ast.UnaryOp)
        and isinstance(node.op, (ast.USub, ast.UAdd))
        and isinstance(node.operand, ast.Constant)
        and type(node.operand.value) in (int, float)
    ):
        v = node.operand.value
        return -v if isinstance(node.op, ast.USub) else v
    return None


def is_structural_value(value: int | float) -> bool:
    """Whether a literal is structural by value alone (magnitude 0, 1, 2 or 0.5)."""
    return abs(value) in STRUCTURAL_MAGNITUDES


class _Collector(ast.NodeVisitor):
    def __init__(self) -> None:
        self.found: list[tuple[int, int, Literal, bool]] = []  # (line, col, lit, tunable)
        self.structural_context = 0

    def visit(self, node: ast.AST) -> None:
        value = _number(node)
        if value is not None:
            lit = Literal(value, node.lineno)
            tunable = not self.structural_context and not is_structural_value(value)
            self.found.append((node.lineno, node.col_offset, lit, tunable))
            return
        super().visit(node)

    def visit_Subscript(self, node: ast.Subscript) -> None:
        self.visit(node.value)
        self.structural_context += 1
        self.visit(node.slice)
        self.structural_context -= 1

    def visit_keyword(self, node: ast.keyword) -> None:
        structural = node.arg in STRUCTURAL_KEYWORDS
        self.structural_context += structural
        self.visit(node.value)
        self.structural_context -= structural


def audit(code: str) -> Audit:
    """Literal audit of ``code`` (docstrings and annotations excluded). Unparseable code
    has no literals."""
    tree = parse_any(code)
    if tree is None:
        return Audit((), ())
    c = _Collector()
    try:
        c.visit(tree)
    except RecursionError:  # absurdly deep code: validation rejects it as too_large
        return Audit((), ())
    c.found.sort(key=lambda item: (item[0], item[1]))
    return Audit(
        literals=tuple(item[2] for item in c.found),
        tunable=tuple(item[2] for item in c.found if item[3]),
    )


def literals(code: str) -> list[Literal]:
    """Every numeric literal of ``code`` as ``(value, line)``, in source order."""
    return list(audit(code).literals)


def introduced(child_code: str, parent_code: str) -> list[Literal]:
    """Tunable literals of the child that the parent does not have (multiset difference
    by value), as ``(value, line)`` in the child.

    A changed value (0.9 -> 0.95) shows up as introduced; the paper's prompt allows
    changing existing values, so a caller that wants only *new* hyperparameters can use
    ``len(introduced(c, p)) - len(introduced(p, c))``.
    """
    available = Counter(lit.value for lit in audit(parent_code).tunable)
    out: list[Literal] = []
    for lit in audit(child_code).tunable:
        if available[lit.value] > 0:
            available[lit.value] -= 1
        else:
            out.append(lit)
    return out
