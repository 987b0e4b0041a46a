"""The offline search's edits: whole motifs of the paper's optimisers, crossover between
archive members, and simplification.

The paper's discovered optimisers (§6) are built from a handful of motifs on top of
App. B's simple functions: a momentum of ``g`` in ``var1``, a second-moment estimate
in ``var2`` with a division by (1 + its root), annealing by ``1 - t_p``, a dormancy
boost ``1 + log(1 + d)`` or ``where(d < 1, 2, 1)``, layer and batch scaling
``(1 + l_p)``, ``(1 + b_p)``. Each edit here inserts, replaces or removes one such
motif, or carries one over from another program (crossover, FunSearch/ShinkaEvolve
style), with the structural constants those optimisers use (0, 1, 2, 0.5, 0.9, 0.99,
1e-8, 0.1, 0.001); the literal audit still counts them. Every edit returns a
description that reads like an LLM's idea, which the journal keeps in ``idea``.

Programs are edited as ASTs of ``update_fn``: ``Program`` keeps the function and the
names its ``return update, var1, var2`` gives, and knows which state slot is free
(never read, returned as it came in) and which statements are dead (nothing the update
depends on reads them, state across steps included).
"""

from __future__ import annotations

import ast
import copy
import dataclasses
import random
from collections.abc import Callable, Sequence

STATE = ("var1", "var2")
INPUTS = ("w", "g", "var1", "var2", "t", "d", "t_p", "b_p", "l_p", "key")


def expr(text: str) -> ast.expr:
    return ast.parse(text, mode="eval").body


def stmt(text: str) -> ast.stmt:
    return ast.parse(text).body[0]


@dataclasses.dataclass
class Program:
    """An ``update_fn`` being edited."""

    tree: ast.Module
    fn: ast.FunctionDef

    @classmethod
    def parse(cls, code: str) -> Program:
        tree = ast.parse(code)
        fn = next(n for n in tree.body if isinstance(n, ast.FunctionDef))
        p = cls(tree, fn)
        p._name_returns()
        return p

    def code(self) -> str:
        ast.fix_missing_locations(self.tree)
        return ast.unparse(self.tree) + "\n"

    def copy(self) -> Program:
        tree = copy.deepcopy(self.tree)
        return Program(tree, next(n for n in tree.body if isinstance(n, ast.FunctionDef)))

    # -- structure
    @property
    def ret_index(self) -> int:
        for i, node in enumerate(self.fn.body):
            if isinstance(node, ast.Return):
                return i
        raise ValueError("update_fn has no top-level return")

    @property
    def returned(self) -> list[str]:
        """The names returned as (update, var1, var2)."""
        value = self.fn.body[self.ret_index].value
        return [e.id for e in value.elts]  # type: ignore[union-attr]

    def _name_returns(self) -> None:
        """``return u_expr, v1_expr, v2_expr`` becomes assignments and ``return a, b, c``
        of names, so motifs can refer to the update and the state by name."""
        ret = self.fn.body[self.ret_index]
        if not isinstance(ret.value, ast.Tuple) or len(ret.value.elts) != 3:
            raise ValueError("update_fn does not return a 3-tuple")
        names, pre = [], []
        for default, e in zip(("update", "var1", "var2"), ret.value.elts, strict=True):
            if isinstance(e, ast.Name):
                names.append(e.id)
            else:
                pre.append(ast.Assign([ast.Name(default, ast.Store())], e))
                names.append(default)
        i = self.ret_index
        self.fn.body[i:i] = pre
        self.fn.body[self.ret_index] = ast.Return(
            ast.Tuple([ast.Name(n, ast.Load()) for n in names], ast.Load())
        )

    @property
    def update(self) -> str:
        return self.returned[0]

    def body(self) -> list[ast.stmt]:
        """Statements before the return."""
        return self.fn.body[: self.ret_index]

    def assigned(self) -> set[str]:
        return {t for s in self.body() for t in targets(s)}

    def loads(self, name: str) -> list[ast.Name]:
        return [
            n
            for s in self.body()
            for n in ast.walk(s)
            if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load) and n.id == name
        ]

    def free_slots(self) -> list[str]:
        """State slots the program does not use: never read or written, and returned
        as they came in."""
        out = []
        for k, slot in enumerate(STATE, start=1):
            if self.returned[k] == slot and slot not in self.assigned() and not self.loads(slot):
                out.append(slot)
        return out

    def insert_top(self, stmts: Sequence[ast.stmt]) -> None:
        start = 1 if _is_docstring(self.fn.body[0]) else 0
        self.fn.body[start:start] = list(stmts)

    def insert_before_return(self, stmts: Sequence[ast.stmt]) -> None:
        i = self.ret_index
        self.fn.body[i:i] = list(stmts)

    def local_names(self) -> set[str]:
        return self.assigned() - set(INPUTS)

    def fresh(self, name: str, taken: set[str] | None = None) -> str:
        """``name``, or ``name2``, ``name3`` ... if this program (or ``taken``) has it."""
        taken = self.assigned() | set(INPUTS) | {"jnp", "jax"} | (taken or set())
        if name not in taken:
            return name
        k = 2
        while f"{name}{k}" in taken:
            k += 1
        return f"{name}{k}"

    def eliminate_dead(self) -> int:
        """Remove statements nothing the update depends on reads (state across steps
        included: a state slot the update never reads is dead with its updates).
        Returns how many were removed; the returned state keeps its name."""
        body = self.body()
        live: set[str] = {self.update}
        keep = [False] * len(body)
        changed = True
        while changed:
            changed = False
            for i in range(len(body) - 1, -1, -1):
                s = body[i]
                ts = targets(s)
                if keep[i] or not (ts is None or ts & live):
                    continue
                keep[i] = True
                changed = True
                live |= reads(s)
                for slot in STATE:  # a live state slot keeps every statement writing it
                    if slot in live:
                        live.add(self.returned[1 + STATE.index(slot)])
        removed = [s for s, k in zip(body, keep, strict=True) if not k]
        if not removed:
            return 0
        # A dead state slot is returned unchanged: its output name may have gone.
        for k, slot in enumerate(STATE, start=1):
            name = self.returned[k]
            if name != slot and not any(
                name in (targets(s) or ()) for s, kk in zip(body, keep, strict=True) if kk
            ):
                self._set_return(k, slot)
        self.fn.body = [s for s, k in zip(body, keep, strict=True) if k] + self.fn.body[
            self.ret_index :
        ]
        return len(removed)

    def _set_return(self, k: int, name: str) -> None:
        ret = self.fn.body[self.ret_index]
        ret.value.elts[k] = ast.Name(name, ast.Load())  # type: ignore[union-attr]


def _is_docstring(s: ast.stmt) -> bool:
    return isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant)


def targets(s: ast.stmt) -> set[str] | None:
    """Names a simple assignment writes; None for anything else (kept as is)."""
    if isinstance(s, ast.Assign) and all(isinstance(t, ast.Name) for t in s.targets):
        return {t.id for t in s.targets}  # type: ignore[attr-defined]
    if isinstance(s, ast.AugAssign | ast.AnnAssign) and isinstance(s.target, ast.Name):
        return {s.target.id}
    if _is_docstring(s):
        return set()
    return None


def reads(s: ast.stmt) -> set[str]:
    out = {n.id for n in ast.walk(s) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
    if isinstance(s, ast.AugAssign) and isinstance(s.target, ast.Name):
        out.add(s.target.id)
    return out


# ------------------------------------------------------------------ motifs
Edit = Callable[[Program, random.Random], str | None]


def _scale(p: Program, factor: str, what: str) -> str:
    p.insert_before_return([stmt(f"{p.update} = {p.update} * {factor}")])
    return what


def momentum(p: Program, rng: random.Random) -> str | None:
    """An exponential moving average of ``g`` in a free state slot, used in place of g."""
    free = p.free_slots()
    if not free or not p.loads("g"):
        return None
    slot = free[0]
    beta = rng.choice(("0.9", "0.9", "0.99"))
    for n in p.loads("g"):
        n.id = slot
    p.insert_top([stmt(f"{slot} = {beta} * {slot} + (1 - {beta}) * g")])
    return f"use a momentum of the gradient ({slot} = EMA of g with decay {beta}) instead of g"


def update_momentum(p: Program, rng: random.Random) -> str | None:
    """A moving average of the whole update, which then becomes the update."""
    free = p.free_slots()
    if not free:
        return None
    slot = free[0]
    beta = rng.choice(("0.9", "0.99"))
    u = p.update
    p.insert_before_return(
        [stmt(f"{slot} = {beta} * {slot} + (1 - {beta}) * {u}"), stmt(f"{u} = {slot}")]
    )
    return f"smooth the update with a momentum ({slot} = EMA of the update, decay {beta})"


def second_moment(p: Program, rng: random.Random) -> str | None:
    """A second-moment estimate of g in a free slot, and a division by its root."""
    free = p.free_slots()
    if not free:
        return None
    slot = free[-1]
    beta = rng.choice(("0.9", "0.99"))
    form, why = rng.choice(
        (
            (f"1 / (1 + jnp.sqrt({slot} + 1e-08))", "divide by 1 + its root (Discovered 3)"),
            (f"1 / (1 + {slot})", "divide by 1 + it (Discovered 1)"),
            (f"1 / (jnp.sqrt({slot}) + 1e-08)", "normalise by its root, as RMSprop/Adam do"),
        )
    )
    p.insert_top([stmt(f"{slot} = {beta} * {slot} + (1 - {beta}) * g ** 2")])
    _scale(p, f"({form})", "")
    return f"track the gradient's second moment in {slot} (decay {beta}) and {why}"


def anneal(p: Program, rng: random.Random) -> str | None:
    factor, why = rng.choice(
        (("(1 - t_p)", "linearly"), ("jnp.sqrt(1 - t_p)", "with the square root of"))
    )
    what = "1 - t_p" if why == "linearly" else "sqrt(1 - t_p)"
    return _scale(p, factor, f"anneal the update over training ({why} the remaining time, {what})")


def dormancy(p: Program, rng: random.Random) -> str | None:
    if rng.random() < 0.6:
        return _scale(
            p,
            "(1 + jnp.log(1 + d))",
            "boost updates of dormant-prone neurons by 1 + log(1 + d) (Discovered 1-3)",
        )
    return _scale(
        p,
        "jnp.where(d < 1, 2.0, 1.0)",
        "double the update of neurons less active than their layer's average (d < 1)",
    )


def layer_scale(p: Program, rng: random.Random) -> str | None:
    return _scale(p, "(1 + l_p)", "scale the update by the layer's depth (1 + l_p)")


def batch_scale(p: Program, rng: random.Random) -> str | None:
    return _scale(p, "(1 + b_p)", "scale the update by the batch proportion (1 + b_p)")


def sign(p: Program, rng: random.Random) -> str | None:
    u = p.update
    if rng.random() < 0.5:
        p.insert_before_return([stmt(f"{u} = 0.001 * jnp.abs(w) * jnp.sign({u})")])
        return "use the sign of the update, as a relative step of 0.001 |w|"
    p.insert_before_return([stmt(f"{u} = jnp.sign({u}) * jnp.mean(jnp.abs({u}))")])
    return "use the sign of the update scaled by its mean magnitude"


def clip(p: Program, rng: random.Random) -> str | None:
    bound = rng.choice(("0.1", "1.0"))
    u = p.update
    p.insert_before_return([stmt(f"{u} = jnp.clip({u}, -{bound}, {bound})")])
    return f"clip each element of the update to [-{bound}, {bound}]"


def relative(p: Program, rng: random.Random) -> str | None:
    if rng.random() < 0.5:
        return _scale(
            p,
            "(1 + jnp.sqrt(jnp.sum(w ** 2)))",
            "scale the update by 1 + the weight norm (a weight-relative step)",
        )
    return _scale(p, "(1 + jnp.abs(w))", "scale the update by 1 + |w| (a weight-relative step)")


def step_size(p: Program, rng: random.Random) -> str | None:
    factor = rng.choice(("0.5", "2", "0.1"))
    return _scale(p, factor, f"scale the update by {factor}")


# ------------------------------------------------------------------ replacements
def swap_decay(p: Program, rng: random.Random) -> str | None:
    consts = [
        n
        for n in ast.walk(p.fn)
        if isinstance(n, ast.Constant) and isinstance(n.value, float) and n.value in (0.9, 0.99)
    ]
    if not consts:
        return None
    values = sorted({n.value for n in consts})
    old = rng.choice(values)
    new = 0.99 if old == 0.9 else 0.9
    for n in consts:
        if n.value == old:
            n.value = new
    return f"change the decay {old} to {new}"


def swap_anneal(p: Program, rng: random.Random) -> str | None:
    """(1 - t_p) <-> sqrt(1 - t_p)."""
    sqrt_calls = [
        n
        for n in ast.walk(p.fn)
        if isinstance(n, ast.Call)
        and ast.unparse(n.func) == "jnp.sqrt"
        and n.args
        and ast.unparse(n.args[0]) == "1 - t_p"
    ]
    plain = [n for n in ast.walk(p.fn) if isinstance(n, ast.BinOp) and ast.unparse(n) == "1 - t_p"]
    if sqrt_calls and (not plain or rng.random() < 0.5):
        node = rng.choice(sqrt_calls)
        _replace(p.fn, node, node.args[0])
        return "anneal linearly (1 - t_p) instead of with its square root"
    inner = [n for n in plain if not any(n is c.args[0] for c in sqrt_calls)]
    if not inner:
        return None
    node = rng.choice(inner)
    _replace(p.fn, node, ast.Call(expr("jnp.sqrt"), [copy.deepcopy(node)], []))
    return "anneal with the square root of the remaining time, sqrt(1 - t_p)"


def _replace(root: ast.AST, old: ast.AST, new: ast.AST) -> bool:
    for parent in ast.walk(root):
        for field, value in ast.iter_fields(parent):
            if value is old:
                setattr(parent, field, new)
                return True
            if isinstance(value, list):
                for i, item in enumerate(value):
                    if item is old:
                        value[i] = new
                        return True
    return False


# ------------------------------------------------------------------ simplification
def drop_factor(p: Program, rng: random.Random) -> str | None:
    """Remove one scaling of the update (a ``u = u * x`` line, or one factor of a
    product), then what became dead."""
    options: list[tuple[str, Callable[[], None]]] = []
    body = p.body()
    for s in body:
        ts = targets(s)
        if not ts or not isinstance(s, ast.Assign):
            continue
        factors = _product(s.value)
        if len(factors) < 2:
            continue
        for f in factors:
            rest = [x for x in factors if x is not f]

            def apply(s: ast.Assign = s, rest: list[ast.expr] = rest) -> None:
                s.value = _multiply(rest)

            options.append((f"`{ast.unparse(f)}` from `{ast.unparse(s)}`", apply))
    if not options:
        return None
    what, apply = rng.choice(options)
    apply()
    p.eliminate_dead()
    return f"simplify: remove the factor {what}"


def unwrap(p: Program, rng: random.Random) -> str | None:
    calls = [
        n
        for s in p.body()
        for n in ast.walk(s)
        if isinstance(n, ast.Call)
        and ast.unparse(n.func) in ("jnp.sign", "jnp.clip", "jnp.tanh")
        and n.args
    ]
    if not calls:
        return None
    node = rng.choice(calls)
    _replace(p.fn, node, node.args[0])
    return f"simplify: drop {ast.unparse(node.func)} around `{ast.unparse(node.args[0])}`"


def dead_code(p: Program, rng: random.Random) -> str | None:
    n = p.eliminate_dead()
    return f"simplify: remove {n} statement(s) the update never depends on" if n else None


def _product(e: ast.expr) -> list[ast.expr]:
    if isinstance(e, ast.BinOp) and isinstance(e.op, ast.Mult):
        return _product(e.left) + _product(e.right)
    return [e]


def _multiply(factors: list[ast.expr]) -> ast.expr:
    out = factors[0]
    for f in factors[1:]:
        out = ast.BinOp(out, ast.Mult(), f)
    return out


# ------------------------------------------------------------------ crossover
def crossover(p: Program, donor: Program, rng: random.Random, name: str) -> str | None:
    """Take one scaling factor of the donor's update (with the statements it needs) and
    apply it to this program's update; or replace one of this program's statements
    by the donor's statement for the same name."""
    if rng.random() < 0.7:
        return _take_factor(p, donor, rng, name)
    return _take_statement(p, donor, rng, name) or _take_factor(p, donor, rng, name)


def _definitions(prog: Program) -> dict[str, list[ast.stmt]]:
    out: dict[str, list[ast.stmt]] = {}
    for s in prog.body():
        for t in targets(s) or ():
            out.setdefault(t, []).append(s)
    return out


def _closure(prog: Program, names: set[str]) -> list[ast.stmt] | None:
    """The donor statements that compute ``names`` from the inputs, in order; None if
    they read or write the donor's state (which would not carry over)."""
    defs = _definitions(prog)
    need = set(names)
    chosen: list[ast.stmt] = []
    frontier = list(need)
    while frontier:
        n = frontier.pop()
        if n in INPUTS or n in ("jnp", "jax"):
            if n in STATE:
                return None
            continue
        for s in defs.get(n, []):
            if s in chosen:
                continue
            if (targets(s) or set()) & set(STATE):
                return None
            chosen.append(s)
            frontier += list(reads(s) - need)
            need |= reads(s)
    order = {id(s): i for i, s in enumerate(prog.body())}
    return sorted(chosen, key=lambda s: order[id(s)])


def _take_factor(p: Program, donor: Program, rng: random.Random, name: str) -> str | None:
    upd = [s for s in donor.body() if donor.update in (targets(s) or ())]
    factors = [f for s in upd if isinstance(s, ast.Assign) for f in _product(s.value)]
    factors = [f for f in factors if not (isinstance(f, ast.Name) and f.id == donor.update)]
    rng.shuffle(factors)
    for f in factors:
        used = {n.id for n in ast.walk(f) if isinstance(n, ast.Name)}
        if used & {"g", "var1", "var2", donor.update}:
            continue  # the donor's direction, not a scaling
        stmts = _closure(donor, used)
        if stmts is None:
            continue
        stmts = [copy.deepcopy(s) for s in stmts]
        factor = copy.deepcopy(f)
        renames: dict[str, str] = {}
        for t in dict.fromkeys(t for s in stmts for t in targets(s) or ()):
            renames[t] = p.fresh(t, set(renames.values()))
        for node in [*stmts, factor]:
            for n in ast.walk(node):
                if isinstance(n, ast.Name) and n.id in renames:
                    n.id = renames[n.id]
        text = ast.unparse(f)
        p.insert_before_return([*stmts, stmt(f"{p.update} = {p.update} * ({ast.unparse(factor)})")])
        return f"crossover: scale the update by `{text}` taken from {name}"
    return None


def _take_statement(p: Program, donor: Program, rng: random.Random, name: str) -> str | None:
    mine = _definitions(p)
    theirs = _definitions(donor)
    shared = [
        n
        for n in mine
        if n in theirs and len(mine[n]) == 1 and len(theirs[n]) == 1 and n != p.update
    ]
    rng.shuffle(shared)
    for n in shared:
        old, new = mine[n][0], theirs[n][0]
        if ast.unparse(old) == ast.unparse(new):
            continue
        available = set(INPUTS) | {"jnp", "jax"}
        for s in p.body():
            if s is old:
                break
            available |= targets(s) or set()
        if not reads(new) <= available:
            continue
        i = p.fn.body.index(old)
        p.fn.body[i] = copy.deepcopy(new)
        return f"crossover: compute `{n}` as {name} does: `{ast.unparse(new)}`"
    return None


#: The motif edits and how often each is drawn.
MOTIFS: dict[str, tuple[Edit, float]] = {
    "momentum": (momentum, 3.0),
    "update_momentum": (update_momentum, 0.5),
    "second_moment": (second_moment, 2.0),
    "anneal": (anneal, 2.0),
    "dormancy": (dormancy, 1.5),
    "layer_scale": (layer_scale, 0.75),
    "batch_scale": (batch_scale, 0.75),
    "sign": (sign, 0.5),
    "clip": (clip, 0.5),
    "relative": (relative, 0.5),
    "step_size": (step_size, 1.0),
    "swap_decay": (swap_decay, 0.75),
    "swap_anneal": (swap_anneal, 0.5),
    "drop_factor": (drop_factor, 1.5),
    "unwrap": (unwrap, 0.5),
    "dead_code": (dead_code, 0.5),
}
#: Share of proposals that are crossovers (when another program is at hand).
CROSSOVER_P = 0.25


def mutate(
    code: str,
    rng: random.Random,
    donors: Sequence[tuple[str, str]] = (),
    only: str | None = None,
) -> tuple[str, str]:
    """One edit of ``code``: (new code, description). ``donors``: (name, code) of other
    programs for crossover; ``only``: one edit by name ("crossover" or a MOTIFS key),
    for tests. Raises ValueError when no edit applies."""
    base = Program.parse(code)
    original = base.code()
    donors = [(n, c) for n, c in donors if c.strip() and c != code]
    for _ in range(12):
        p = base.copy()
        if only == "crossover" or (only is None and donors and rng.random() < CROSSOVER_P):
            if not donors:
                raise ValueError("crossover needs another program")
            name, donor_code = rng.choice(donors)
            try:
                donor = Program.parse(donor_code)
            except (SyntaxError, ValueError, StopIteration):
                continue
            idea = crossover(p, donor, rng, name)
        else:
            names = [only] if only else list(MOTIFS)
            weights = [MOTIFS[n][1] for n in names]
            edit = MOTIFS[rng.choices(names, weights)[0]][0]
            idea = edit(p, rng)
        if idea is not None:
            new = p.code()
            if new != original:
                return new, idea
    raise ValueError("no applicable edit")
