"""The offline mutator: no network, no key; the default mutator and the LLM's ablation.

Two styles (``mutator.offline_style``):

- ``motifs`` (default): whole motifs of the paper's optimisers inserted, replaced or
  removed, and crossover with other archive members (:mod:`rayopt.search.mutators.motifs`):
  what the paper's LLM built its discovered optimisers from, so the offline search can
  find the same kind of optimiser.
- ``edits``: random typed AST edits in the spirit of Lion's search (Chen et al., 2023),
  which never introduce numeric literals: the ablation, and the mutator of rayopt 0.1.

A proposal is re-drawn until the program passes validation and the dry run
(``rayopt.program.check``) and is not a program the search has already met (same
canonical hash or behavioural fingerprint as anything in ``MutationRequest.known``), so
the search never pays for an invalid candidate or a duplicate it could have avoided.
"""

from __future__ import annotations

import ast
import asyncio
import copy
import random
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from rayopt.search.mutators import motifs
from rayopt.search.mutators.base import CallRecord, MutationRequest, MutationResult

if TYPE_CHECKING:
    from rayopt.program.check import CheckResult

TENSORS = ("g", "w", "var1", "var2")
SCALARS = ("t_p", "b_p", "l_p")
UNARY = ("sign", "abs", "sqrt", "tanh", "log1p", "square", "exp")
BINOPS = (ast.Add, ast.Sub, ast.Mult, ast.Div)
OP_TEXT = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/"}
STYLES = ("motifs", "edits")

Checker = Callable[[str], str | None]


class OfflineMutator:
    """Motif edits and crossover (``style="motifs"``) or random typed AST edits
    (``style="edits"``).

    ``check`` (an error string or None) replaces the default, ``rayopt.program.check``
    with a dry run, whose result the proposal carries on so the code is not checked
    again (see ``MutationResult.check``).
    """

    name = "offline"

    def __init__(self, check: Checker | None = None, max_attempts: int = 32, style: str = "motifs"):
        if style not in STYLES:
            raise ValueError(f"offline style must be one of {STYLES}, not {style!r}")
        self.check = check
        self.max_attempts = max_attempts
        self.style = style

    def _check(self, code: str) -> tuple[str | None, CheckResult | None]:
        if self.check is not None:
            return self.check(code), None
        from rayopt.program import check

        result = check(code, dry_run=True, timeout=10.0)
        return (None if result.ok else f"{result.error.kind}: {result.error.message}"), result

    async def propose(self, request: MutationRequest) -> MutationResult:
        return await asyncio.to_thread(self.propose_sync, request)

    def _mutate(self, request: MutationRequest, rng: random.Random) -> tuple[str, str]:
        code = request.current.code
        if self.style == "edits":
            code, idea = mutate(code, rng)
            return code, f"offline: {idea}"
        donors = [
            (s.candidate_id, s.code)
            for s in (request.base, *request.context, *request.history)
            if s is not None and s.error is None and s.code != code
        ]
        code, idea = motifs.mutate(code, rng, donors)
        return code, f"offline: {idea}"

    def propose_sync(self, request: MutationRequest) -> MutationResult:
        from rayopt.program import canonical_hash

        rng = random.Random(
            f"{request.run_id}/{request.island}/{request.generation}/{request.step}/{request.seed}"
        )
        known = set(request.known) | {
            canonical_hash(s.code)
            for s in (request.current, request.base, *request.context, *request.history)
            if s is not None and s.code
        }
        calls = []
        error = "no mutation applied"
        for attempt in range(1, self.max_attempts + 1):
            t0 = time.perf_counter()
            checked = None
            try:
                code, idea = self._mutate(request, rng)
            except (SyntaxError, ValueError, IndexError) as err:  # a mutation that does not apply
                code, idea, error = None, None, f"{type(err).__name__}: {err}"
            else:
                if canonical_hash(code) in known:
                    error = "the search has this program already (same canonical hash)"
                else:
                    error, checked = self._check(code)
                    if error is None and checked is not None and checked.fingerprint in known:
                        error = "the search has an optimiser that behaves the same (fingerprint)"
            ok = error is None
            calls.append(
                CallRecord(
                    role="offline",
                    provider="offline",
                    model=self.style,
                    attempt=attempt,
                    ok=ok,
                    latency_s=time.perf_counter() - t0,
                    error=error,
                )
            )
            if ok:
                return MutationResult(
                    ok=True,
                    mutator=self.name,
                    code=code,
                    idea=idea,
                    calls=tuple(calls[-1:]),
                    check=checked,
                )
        return MutationResult(
            ok=False,
            mutator=self.name,
            calls=tuple(calls[-1:]),
            error=f"no valid mutation in {self.max_attempts} attempts; last: {error}",
        )


# ------------------------------------------------------------------ mutations
def mutate(code: str, rng: random.Random) -> tuple[str, str]:
    """Apply one random typed edit (the ``edits`` style); returns (new code, description)."""
    tree = ast.parse(code)
    fn = next(n for n in tree.body if isinstance(n, ast.FunctionDef))
    ops = [_insert, _delete, _swap_input, _change_op, _change_fn, _scale_constant]
    weights = [3, 1, 2, 2, 1, 1]
    for _ in range(10):
        op = rng.choices(ops, weights)[0]
        new_fn = copy.deepcopy(fn)
        idea = op(new_fn, rng)
        if idea is not None:
            tree.body = [new_fn if n is fn else n for n in tree.body]
            ast.fix_missing_locations(tree)
            new = ast.unparse(tree) + "\n"
            if new != ast.unparse(ast.parse(code)) + "\n":
                return new, idea
    raise ValueError("no applicable mutation")


def _tensor_locals(fn: ast.FunctionDef) -> list[str]:
    """Locals assigned from expressions that involve a tensor input (so tensor-shaped
    for elementwise code); plus the tensor inputs themselves."""
    names = list(TENSORS)
    for node in fn.body:
        if (
            isinstance(node, ast.Assign)
            and len(node.targets) == 1
            and isinstance(node.targets[0], ast.Name)
        ):
            used = {n.id for n in ast.walk(node.value) if isinstance(n, ast.Name)}
            if used & set(names) and node.targets[0].id not in names:
                names.append(node.targets[0].id)
    return names


def _returned(fn: ast.FunctionDef) -> list[str]:
    for node in ast.walk(fn):
        if isinstance(node, ast.Return) and isinstance(node.value, ast.Tuple):
            return [e.id for e in node.value.elts if isinstance(e, ast.Name)]
    return []


def _expr(rng: random.Random, tensors: list[str], depth: int = 0) -> ast.expr:
    """A tensor-shaped expression from inputs and structural constants only."""
    r = rng.random()
    if depth >= 2 or r < 0.3:
        return ast.Name(rng.choice(tensors), ast.Load())
    if r < 0.5:  # x * (1 -/+ s)
        op = rng.choice((ast.Sub(), ast.Add()))
        scale = ast.BinOp(ast.Constant(1), op, ast.Name(rng.choice(SCALARS), ast.Load()))
        return ast.BinOp(_expr(rng, tensors, depth + 1), ast.Mult(), scale)
    if r < 0.65:  # x * (1 + log(1 + d)): the dormancy boost of the discovered optimisers
        boost = ast.parse("(1 + jnp.log(1 + d))", mode="eval").body
        return ast.BinOp(_expr(rng, tensors, depth + 1), ast.Mult(), boost)
    if r < 0.8:
        call = ast.parse(f"jnp.{rng.choice(UNARY)}(x)", mode="eval").body
        call.args = [_expr(rng, tensors, depth + 1)]
        return call
    op = rng.choice(BINOPS)()
    right = _expr(rng, tensors, depth + 1)
    if isinstance(op, ast.Div):  # keep divisions well defined
        right = ast.parse("(1 + jnp.abs(x))", mode="eval").body
        right.right.args = [_expr(rng, tensors, depth + 1)]
    return ast.BinOp(_expr(rng, tensors, depth + 1), op, right)


def _return_index(fn: ast.FunctionDef) -> int:
    for i, node in enumerate(fn.body):
        if isinstance(node, ast.Return):
            return i
    return len(fn.body)


def _insert(fn: ast.FunctionDef, rng: random.Random) -> str | None:
    tensors = _tensor_locals(fn)
    targets = [n for n in _returned(fn) if n in tensors] + [n for n in tensors if n not in TENSORS]
    if not targets:
        return None
    target = rng.choice(targets)
    op = rng.choice(BINOPS)()
    value = _expr(rng, tensors)
    if isinstance(op, ast.Div):
        value = ast.BinOp(
            ast.Constant(1),
            ast.Add(),
            ast.Call(ast.parse("jnp.abs", mode="eval").body, [value], []),
        )
    stmt = ast.parse(f"{target} = {target} {OP_TEXT[type(op)]} ({ast.unparse(value)})").body[0]
    fn.body.insert(_return_index(fn), stmt)
    return f"inserted `{ast.unparse(stmt)}`"


def _delete(fn: ast.FunctionDef, rng: random.Random) -> str | None:
    assigns = [i for i, n in enumerate(fn.body) if isinstance(n, ast.Assign | ast.AugAssign)]
    if len(assigns) < 2:
        return None
    i = rng.choice(assigns)
    text = ast.unparse(fn.body[i])
    del fn.body[i]
    return f"deleted `{text}`"


def _loads(fn: ast.FunctionDef, names: tuple[str, ...]) -> list[ast.Name]:
    return [
        n
        for n in ast.walk(fn)
        if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load) and n.id in names
    ]


def _swap_input(fn: ast.FunctionDef, rng: random.Random) -> str | None:
    group = rng.choice((TENSORS, SCALARS))
    uses = _loads(fn, group)
    if not uses:
        return None
    node = rng.choice(uses)
    old, node.id = node.id, rng.choice([x for x in group if x != node.id])
    return f"replaced input {old} with {node.id} on line {node.lineno}"


def _change_op(fn: ast.FunctionDef, rng: random.Random) -> str | None:
    binops = [n for n in ast.walk(fn) if isinstance(n, ast.BinOp) and type(n.op) in OP_TEXT]
    if not binops:
        return None
    node = rng.choice(binops)
    old = type(node.op)
    node.op = rng.choice([op for op in BINOPS if op is not old])()
    return f"changed `{OP_TEXT[old]}` to `{OP_TEXT[type(node.op)]}` on line {node.lineno}"


def _change_fn(fn: ast.FunctionDef, rng: random.Random) -> str | None:
    calls = [
        n
        for n in ast.walk(fn)
        if isinstance(n, ast.Call)
        and isinstance(n.func, ast.Attribute)
        and n.func.attr in UNARY
        and isinstance(n.func.value, ast.Name)
        and n.func.value.id == "jnp"
        and len(n.args) == 1
    ]
    if not calls:
        return None
    node = rng.choice(calls)
    old = node.func.attr
    node.func.attr = rng.choice([f for f in UNARY if f != old])
    return f"changed jnp.{old} to jnp.{node.func.attr} on line {node.lineno}"


def _scale_constant(fn: ast.FunctionDef, rng: random.Random) -> str | None:
    consts = [
        n
        for n in ast.walk(fn)
        if isinstance(n, ast.Constant)
        and isinstance(n.value, int | float)
        and not isinstance(n.value, bool)
        and n.value not in (0, 1, 2)
    ]
    if not consts:
        return None
    node = rng.choice(consts)
    old = node.value
    if 0.5 < old < 1 and rng.random() < 0.5:  # a decay: halve or double its horizon
        new = 1 - (1 - old) * rng.choice((0.5, 2.0))
    else:
        new = old * rng.choice((0.5, 2.0, 0.1, 10.0))
    node.value = float(f"{new:.6g}")
    return f"scaled constant {old} to {node.value} on line {node.lineno}"
