"""Static validation of untrusted ``update_fn`` source, before anything runs.

The coder LLM writes Python that we later execute; validation is the first of two
walls (the second is the sandboxed dry run, :mod:`rayopt.program.sandbox`). It parses
the source and walks the whole AST against an explicit allowlist: any node type, name,
attribute or call not listed here is rejected (deny by default). The allowlist is the
subset of Python an optimiser needs: arithmetic on arrays, ``jnp``/``jax.lax``/
``jax.random``/``jax.nn`` calls, ``if``, bounded ``for`` loops and lambdas as arguments
of ``jax.lax.cond``-style calls. See docs/program.md for the full policy.

Annotations are never evaluated: :func:`parse_program` strips them (and docstrings)
from the tree that gets compiled, so the paper's coder prompt style
``def update_fn(w: jnp.ndarray, ..., key: jax.ndarray) -> tuple[...]`` is accepted even
though ``jax.ndarray`` does not exist.
"""

from __future__ import annotations

import ast
import copy
import functools
import importlib
import types

from rayopt.program.errors import InvalidProgram, ProgramError

#: The paper's signature (App. C), in order.
PARAMS: tuple[str, ...] = ("w", "g", "var1", "var2", "t", "d", "t_p", "b_p", "l_p", "key")
SIGNATURE = f"def update_fn({', '.join(PARAMS)})"

MAX_SOURCE_BYTES = 8192
MAX_STATEMENTS = 200
MAX_NODES = 4000
MAX_DEPTH = 60
#: Iterations of one ``for i in range(N)`` or ``jax.lax.fori_loop`` with literal bounds.
MAX_LOOP = 16
#: Iterations of nested loops, multiplied together.
MAX_UNROLL = 64

#: Builtins a program may use (``range`` only as the iterable of a bounded ``for``).
BUILTINS: frozenset[str] = frozenset({"abs", "min", "max", "float", "int", "bool", "len", "range"})

#: Names a program may not bind, and builtins that get a pointed message.
MODULE_ROOTS: dict[str, str] = {"jnp": "jax.numpy", "lax": "jax.lax", "jax": "jax"}
_JAX_SUBMODULES = frozenset({"numpy", "lax", "random", "nn"})
_DANGEROUS = frozenset(
    {
        "exec",
        "eval",
        "open",
        "compile",
        "__import__",
        "getattr",
        "setattr",
        "delattr",
        "hasattr",
        "globals",
        "locals",
        "vars",
        "dir",
        "breakpoint",
        "input",
        "print",
        "type",
        "object",
        "super",
        "help",
        "exit",
        "quit",
        "memoryview",
        "id",
        "iter",
        "next",
        "callable",
        "classmethod",
        "staticmethod",
        "property",
        "isinstance",
        "issubclass",
        "__builtins__",
        "sum",
        "pow",
        "round",
        "tuple",
        "list",
        "map",
        "filter",
        "zip",
        "enumerate",
        "sorted",
        "reversed",
        "chr",
        "ord",
        "str",
        "bytes",
    }
)

#: Module functions that are callable but must not be: file I/O, Python callbacks,
#: unbounded or data-length loops.
_DENIED: dict[str, dict[str, str]] = {
    "jax.numpy": {
        **dict.fromkeys(
            ("load", "save", "savez", "fromfile", "frombuffer", "fromstring", "fromiter"),
            "it reads or writes files or raw buffers",
        ),
        **dict.fromkeys(
            (
                "fromfunction",
                "frompyfunc",
                "vectorize",
                "piecewise",
                "apply_along_axis",
                "apply_over_axes",
            ),
            "it calls Python functions; write the vector expression directly",
        ),
        **dict.fromkeys(
            ("printoptions", "set_printoptions", "get_printoptions"), "it has no use here"
        ),
    },
    "jax.lax": {
        "while_loop": "it may never end; use jax.lax.fori_loop with literal bounds",
        "scan": "loops are limited to jax.lax.fori_loop with literal bounds",
        "map": "loops are limited to jax.lax.fori_loop with literal bounds",
        "associative_scan": "loops are limited to jax.lax.fori_loop with literal bounds",
        "custom_root": "it runs an unbounded solver",
        "custom_linear_solve": "it runs an unbounded solver",
    },
}
#: Non-callable module members a program may read.
_CONSTANTS = frozenset({"e", "pi", "inf", "nan", "newaxis", "euler_gamma"})

#: Attributes and methods a program may use on arrays (and on values it computed).
ARRAY_ATTRS: frozenset[str] = frozenset(
    {
        "shape",
        "ndim",
        "size",
        "dtype",
        "T",
        "astype",
        "at",
        "set",
        "add",
        "multiply",
        "divide",
        "get",
        "min",
        "max",
        "sum",
        "mean",
        "std",
        "var",
        "prod",
        "reshape",
        "ravel",
        "flatten",
        "squeeze",
        "clip",
        "transpose",
        "round",
        "any",
        "all",
        "argmax",
        "argmin",
        "dot",
        "real",
        "cumsum",
        "sort",
        "eps",
        "tiny",  # jnp.finfo(jnp.float32).eps: the usual way to write an epsilon
    }
)

_BINOPS = (
    ast.Add,
    ast.Sub,
    ast.Mult,
    ast.Div,
    ast.FloorDiv,
    ast.Mod,
    ast.Pow,
    ast.MatMult,
    ast.BitAnd,
    ast.BitOr,
    ast.BitXor,
    ast.LShift,
    ast.RShift,
)
_CMPOPS = (ast.Eq, ast.NotEq, ast.Lt, ast.LtE, ast.Gt, ast.GtE)

_NODE_MESSAGES: dict[type, str] = {
    ast.While: "`while` loops are not allowed (they may never end); use "
    "`for i in range(N)` with a literal N <= 16.",
    ast.Import: "imports are not allowed; jnp, jax and lax are already available.",
    ast.ImportFrom: "imports are not allowed; jnp, jax and lax are already available.",
    ast.Try: "`try` blocks are not allowed.",
    ast.With: "`with` blocks are not allowed.",
    ast.AsyncWith: "`async with` blocks are not allowed.",
    ast.ClassDef: "class definitions are not allowed.",
    ast.Global: "`global` statements are not allowed.",
    ast.Nonlocal: "`nonlocal` statements are not allowed.",
    ast.Delete: "`del` statements are not allowed.",
    ast.Raise: "`raise` statements are not allowed.",
    ast.Assert: "`assert` statements are not allowed.",
    ast.AsyncFor: "`async for` loops are not allowed.",
    ast.FunctionDef: "nested function definitions are not allowed; inline the code, or "
    "pass a lambda to a jax.lax call.",
    ast.AsyncFunctionDef: "nested function definitions are not allowed.",
    ast.ListComp: "comprehensions are not allowed; use jnp vector operations.",
    ast.SetComp: "comprehensions are not allowed; use jnp vector operations.",
    ast.DictComp: "comprehensions are not allowed; use jnp vector operations.",
    ast.GeneratorExp: "generator expressions are not allowed; use jnp vector operations.",
    ast.Dict: "dict literals are not allowed.",
    ast.Set: "set literals are not allowed.",
    ast.JoinedStr: "f-strings are not allowed.",
    ast.NamedExpr: "`:=` assignments are not allowed.",
    ast.Starred: "`*` unpacking is not allowed.",
    ast.Await: "`await` is not allowed.",
    ast.Yield: "`yield` is not allowed.",
    ast.YieldFrom: "`yield from` is not allowed.",
}
if hasattr(ast, "TryStar"):
    _NODE_MESSAGES[ast.TryStar] = "`try` blocks are not allowed."
if hasattr(ast, "Match"):
    _NODE_MESSAGES[ast.Match] = "`match` statements are not allowed."


def _err(kind: str, node: ast.AST | None, text: str) -> InvalidProgram:
    line = getattr(node, "lineno", None) if node is not None else None
    prefix = f"Line {line}: " if line is not None else ""
    return InvalidProgram(ProgramError(kind, line, prefix + text))


def _forbid(node: ast.AST, text: str) -> InvalidProgram:
    return _err("forbidden", node, text)


@functools.cache
def module_members(path: str) -> frozenset[str]:
    """Public callables (and a few constants) of an allowed module, minus the denylist.

    Computed from the installed JAX, so ``jnp.foo`` that does not exist is rejected
    statically with a clear message instead of failing in the dry run.
    """
    mod = importlib.import_module(path)
    denied = _DENIED.get(path, {})
    out = set()
    for name in dir(mod):
        if name.startswith("_") or name in denied:
            continue
        value = getattr(mod, name, None)
        if isinstance(value, types.ModuleType):
            continue
        if callable(value) or name in _CONSTANTS:
            out.add(name)
    return frozenset(out)


def _dotted(node: ast.AST) -> list[str] | None:
    """``a.b.c`` -> ``['a', 'b', 'c']``; ``None`` when the chain does not end in a name."""
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    parts.append(node.id)
    return parts[::-1]


def resolve_module_path(parts: list[str], node: ast.AST) -> tuple[str, str, list[str]]:
    """``['jnp', 'linalg', 'norm']`` -> ``('jax.numpy.linalg', 'norm', [])``.

    Returns (module, member, trailing attributes); raises ``forbidden`` for anything
    outside jnp, jnp.linalg, jax.numpy, jax.lax, jax.random, jax.nn and lax.
    """
    text = ".".join(parts)
    root, rest = parts[0], parts[1:]
    module = MODULE_ROOTS[root]
    if root == "jax":
        if not rest or rest[0] not in _JAX_SUBMODULES:
            raise _forbid(
                node,
                f"`{text}` is not allowed; only jnp/jax.numpy, jax.lax, jax.random and "
                "jax.nn functions may be used.",
            )
        module, rest = f"jax.{rest[0]}", rest[1:]
    if module == "jax.numpy" and rest and rest[0] == "linalg":
        module, rest = "jax.numpy.linalg", rest[1:]
    if not rest:
        raise _forbid(node, f"`{text}` may only be used as `{text}.<function>(...)`.")
    member, trailing = rest[0], rest[1:]
    if member.startswith("_"):
        raise _forbid(node, f"`{text}`: private or dunder attributes are not allowed.")
    denied = _DENIED.get(module, {})
    if member in denied:
        raise _forbid(node, f"`{text}` is not allowed: {denied[member]}.")
    if member not in module_members(module):
        raise _forbid(node, f"`{text}` is not available ({module} has no function `{member}`).")
    for attr in trailing:
        if attr not in ARRAY_ATTRS:
            raise _forbid(node, f"attribute `.{attr}` in `{text}` is not allowed.")
    return module, member, trailing


def _int_literal(node: ast.AST) -> int | None:
    if isinstance(node, ast.Constant) and type(node.value) is int:
        return node.value
    if (
        isinstance(node, ast.UnaryOp)
        and isinstance(node.op, ast.USub)
        and isinstance(node.operand, ast.Constant)
        and type(node.operand.value) is int
    ):
        return -node.operand.value
    return None


def _is_docstring(stmt: ast.stmt) -> bool:
    return (
        isinstance(stmt, ast.Expr)
        and isinstance(stmt.value, ast.Constant)
        and isinstance(stmt.value.value, str)
    )


def _stored_names(fn: ast.FunctionDef) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(fn):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
    return names


# ------------------------------------------------------------------ size and shape
def _check_size(code: str) -> None:
    size = len(code.encode("utf-8", "replace"))
    if size > MAX_SOURCE_BYTES:
        raise _err(
            "too_large", None, f"the source is {size} bytes; the limit is {MAX_SOURCE_BYTES}."
        )


def _parse(code: str) -> ast.Module:
    try:
        return ast.parse(code, filename="<update_fn>", mode="exec")
    except SyntaxError as e:
        line = e.lineno
        text = (e.msg or "invalid syntax").split("\n")[0]
        prefix = f"Line {line}: " if line is not None else ""
        raise InvalidProgram(
            ProgramError("syntax", line, f"{prefix}SyntaxError: {text}.")
        ) from None
    except (RecursionError, MemoryError):  # e.g. `g+g+...+g` thousands of terms long
        raise _err(
            "too_large",
            None,
            "the program is nested too deeply to parse; split "
            "long expressions into named intermediate steps.",
        ) from None
    except ValueError as e:  # null bytes on older Pythons
        raise InvalidProgram(
            ProgramError("syntax", None, f"the source cannot be parsed: {e}.")
        ) from None


def _check_tree_size(tree: ast.Module) -> None:
    nodes = statements = 0
    stack: list[tuple[ast.AST, int]] = [(tree, 0)]
    while stack:  # iterative: a deep tree must not blow the Python stack
        node, depth = stack.pop()
        nodes += 1
        statements += isinstance(node, ast.stmt)
        if depth > MAX_DEPTH:
            raise _err(
                "too_large",
                node,
                f"expressions are nested more than {MAX_DEPTH} deep; "
                "split them into named intermediate steps.",
            )
        stack.extend((child, depth + 1) for child in ast.iter_child_nodes(node))
    if nodes > MAX_NODES:
        raise _err(
            "too_large", None, f"the program has {nodes} syntax nodes; the limit is {MAX_NODES}."
        )
    if statements > MAX_STATEMENTS:
        raise _err(
            "too_large",
            None,
            f"the program has {statements} statements; the limit is {MAX_STATEMENTS}.",
        )


# ------------------------------------------------------------------ structure
def _check_module(tree: ast.Module) -> ast.FunctionDef:
    """Exactly one top-level ``update_fn`` (plus an optional docstring)."""
    functions: list[ast.FunctionDef] = []
    for i, stmt in enumerate(tree.body):
        if isinstance(stmt, (ast.Import, ast.ImportFrom, ast.ClassDef)):
            raise _forbid(stmt, _NODE_MESSAGES[type(stmt)])
        if i == 0 and _is_docstring(stmt):
            continue
        if isinstance(stmt, ast.FunctionDef):
            functions.append(stmt)
            continue
        if isinstance(stmt, ast.AsyncFunctionDef):
            raise _err("signature", stmt, "update_fn must be a plain `def`, not `async def`.")
        raise _err(
            "signature",
            stmt,
            "the module may contain only the update_fn definition (and a docstring); "
            "move this statement inside update_fn.",
        )
    if not functions:
        raise _err("signature", None, f"no function defined; expected `{SIGNATURE}:`.")
    names = [f.name for f in functions]
    if "update_fn" not in names:
        raise _err(
            "signature",
            functions[0],
            f"the function must be named update_fn, not `{functions[0].name}`.",
        )
    if len(functions) > 1:
        others = [f for f in functions if f.name != "update_fn"] or functions[1:]
        other = others[0]
        raise _err(
            "signature",
            other,
            "define exactly one top-level function, update_fn; helper functions are "
            "not allowed (inline them).",
        )
    return functions[0]


def _check_signature(fn: ast.FunctionDef) -> None:
    if fn.decorator_list:
        raise _forbid(fn.decorator_list[0], "decorators are not allowed on update_fn.")
    a = fn.args
    if a.posonlyargs or a.vararg or a.kwonlyargs or a.kwarg:
        raise _err(
            "signature",
            fn,
            f"update_fn must take exactly ({', '.join(PARAMS)}) "
            "with no `/`, `*args`, keyword-only or `**kwargs` parameters.",
        )
    got = tuple(arg.arg for arg in a.args)
    if got != PARAMS:
        raise _err(
            "signature",
            fn,
            f"update_fn must take exactly ({', '.join(PARAMS)}) "
            f"in this order; got ({', '.join(got)}).",
        )
    if a.defaults or a.kw_defaults:
        raise _err("signature", fn, "update_fn parameters must not have default values.")


def _ends_with_return(body: list[ast.stmt]) -> bool:
    last = body[-1]
    if isinstance(last, ast.Return):
        return True
    if isinstance(last, ast.If) and last.orelse:
        return _ends_with_return(last.body) and _ends_with_return(last.orelse)
    return False


def _own_nodes(fn: ast.FunctionDef) -> list[ast.AST]:
    """Nodes of ``fn`` itself, not of functions or classes nested in it."""
    out: list[ast.AST] = []
    stack: list[ast.AST] = list(fn.body)
    while stack:
        node = stack.pop()
        out.append(node)
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
            stack.extend(ast.iter_child_nodes(node))
    return out


def _check_returns(fn: ast.FunctionDef) -> None:
    for node in sorted(_own_nodes(fn), key=lambda n: getattr(n, "lineno", 0)):
        if isinstance(node, ast.Return):
            v = node.value
            if not (
                isinstance(v, ast.Tuple)
                and len(v.elts) == 3
                and not any(isinstance(e, ast.Starred) for e in v.elts)
            ):
                n = len(v.elts) if isinstance(v, ast.Tuple) else (0 if v is None else 1)
                raise _err(
                    "signature",
                    node,
                    f"update_fn must return a 3-tuple `return update, var1, var2`; this "
                    f"return gives {n} value{'s' if n != 1 else ''}.",
                )
    if not _ends_with_return(fn.body):
        raise _err("signature", fn.body[-1], "update_fn must end with `return update, var1, var2`.")


# ------------------------------------------------------------------ the allowlist walk
class _Checker:
    """Deny-by-default walk of update_fn's body: every node type needs a ``visit_``."""

    def __init__(self, fn: ast.FunctionDef) -> None:
        self.locals = set(PARAMS) | _stored_names(fn)
        self.lambda_scopes: list[set[str]] = []
        self.loops: list[int] = []

    # -- dispatch
    def visit(self, node: ast.AST) -> None:
        method = getattr(self, "visit_" + type(node).__name__, None)
        if method is None:
            raise _forbid(
                node,
                _NODE_MESSAGES.get(type(node), f"`{type(node).__name__}` syntax is not allowed."),
            )
        method(node)

    def body(self, stmts: list[ast.stmt]) -> None:
        for s in stmts:
            self.visit(s)

    def in_scope(self, name: str) -> bool:
        return name in self.locals or any(name in s for s in self.lambda_scopes)

    # -- statements
    def visit_Assign(self, node: ast.Assign) -> None:
        for target in node.targets:
            self.target(target)
        self.visit(node.value)

    def visit_AugAssign(self, node: ast.AugAssign) -> None:
        self.target(node.target)
        self.binop(node.op, node)
        self.visit(node.value)

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        self.target(node.target)  # the annotation is stripped, never evaluated
        if node.value is not None:
            self.visit(node.value)

    def visit_Expr(self, node: ast.Expr) -> None:
        if _is_docstring(node):
            return  # a bare string is a comment; stripped before compiling
        self.visit(node.value)

    def visit_If(self, node: ast.If) -> None:
        self.visit(node.test)
        self.body(node.body)
        self.body(node.orelse)

    def visit_For(self, node: ast.For) -> None:
        if not isinstance(node.target, ast.Name):
            raise _forbid(node, "a `for` loop variable must be a single name.")
        self.name_store(node.target)
        if node.orelse:
            raise _forbid(node, "`for ... else` is not allowed.")
        it = node.iter
        if not (
            isinstance(it, ast.Call)
            and isinstance(it.func, ast.Name)
            and it.func.id == "range"
            and not it.keywords
            and 1 <= len(it.args) <= 3
        ):
            raise _forbid(
                node, f"`for` loops must be `for i in range(N)` with a literal N <= {MAX_LOOP}."
            )
        bounds = [_int_literal(a) for a in it.args]
        if any(b is None for b in bounds):
            raise _forbid(
                node,
                f"range() bounds must be integer literals (at most "
                f"{MAX_LOOP} iterations), not expressions.",
            )
        if len(bounds) == 3 and bounds[2] == 0:
            raise _forbid(node, "range() step must not be zero.")
        self.loop(len(range(*bounds)), node, lambda: self.body(node.body))

    def visit_Return(self, node: ast.Return) -> None:
        if node.value is not None:
            self.visit(node.value)

    def visit_Pass(self, node: ast.Pass) -> None:
        pass

    def visit_Break(self, node: ast.Break) -> None:
        if not self.loops:
            raise _forbid(node, "`break` outside a loop.")

    visit_Continue = visit_Break

    def loop(self, n: int, node: ast.AST, inner) -> None:
        if n > MAX_LOOP:
            raise _err(
                "too_large",
                node,
                f"this loop runs {n} iterations; the limit is "
                f"{MAX_LOOP}. Use a vectorised jnp expression instead.",
            )
        total = n
        for m in self.loops:
            total *= max(m, 1)
        if total > MAX_UNROLL:
            raise _err(
                "too_large",
                node,
                f"nested loops run {total} iterations in total; the limit is {MAX_UNROLL}.",
            )
        self.loops.append(n)
        try:
            inner()
        finally:
            self.loops.pop()

    # -- binding targets
    def target(self, node: ast.AST) -> None:
        if isinstance(node, ast.Name):
            self.name_store(node)
        elif isinstance(node, (ast.Tuple, ast.List)):
            for e in node.elts:
                self.target(e)
        elif isinstance(node, ast.Subscript):
            raise _forbid(
                node,
                "item assignment `x[i] = v` does not work on JAX arrays; use `x = x.at[i].set(v)`.",
            )
        elif isinstance(node, ast.Starred):
            raise _forbid(node, "`*` unpacking in assignments is not allowed.")
        else:
            raise _forbid(node, "only names (or tuples of names) may be assigned to.")

    def name_store(self, node: ast.Name) -> None:
        name = node.id
        if "__" in name:
            raise _forbid(node, f"names with double underscores (`{name}`) are not allowed.")
        if name in MODULE_ROOTS or name in BUILTINS or name in _DANGEROUS or name == "update_fn":
            raise _forbid(
                node, f"`{name}` is reserved and cannot be assigned; pick another variable name."
            )

    # -- expressions
    def visit_Name(self, node: ast.Name) -> None:
        name = node.id
        if "__" in name:
            raise _forbid(node, f"names with double underscores (`{name}`) are not allowed.")
        if isinstance(node.ctx, ast.Store):
            self.name_store(node)
            return
        if self.in_scope(name):
            return
        if name == "range":
            raise _forbid(node, f"range() is only allowed as `for i in range(N)`, N <= {MAX_LOOP}.")
        if name in BUILTINS:
            return
        if name in MODULE_ROOTS:
            raise _forbid(node, f"`{name}` may only be used as `{name}.<function>(...)`.")
        if name == "update_fn":
            raise _forbid(node, "update_fn may not refer to itself (no recursion).")
        if name in _DANGEROUS:
            raise _forbid(
                node,
                f"`{name}` is not allowed; only jnp/jax.lax/jax.random/"
                "jax.nn functions and abs, min, max, float, int, bool, len.",
            )
        if name in ("np", "numpy", "math", "scipy", "torch"):
            raise _forbid(node, f"`{name}` is not available; use jnp (jax.numpy) functions.")
        raise _forbid(
            node,
            f"name `{name}` is not defined; only the parameters, your own "
            "variables, jnp, jax, lax and abs/min/max/float/int/bool/len exist.",
        )

    def visit_Constant(self, node: ast.Constant) -> None:
        v = node.value
        if v is None or v is Ellipsis or isinstance(v, (bool, int, float)):
            return
        if isinstance(v, complex):
            raise _forbid(node, "complex literals are not allowed; updates must be real.")
        raise _forbid(
            node,
            "string and bytes constants are not allowed (a string is only "
            "allowed as a docstring or a comment statement).",
        )

    def binop(self, op: ast.operator, node: ast.AST) -> None:
        if not isinstance(op, _BINOPS):
            raise _forbid(node, f"operator `{type(op).__name__}` is not allowed.")

    def visit_BinOp(self, node: ast.BinOp) -> None:
        self.binop(node.op, node)
        if isinstance(node.op, ast.Mult) and (
            isinstance(node.left, (ast.Tuple, ast.List))
            or isinstance(node.right, (ast.Tuple, ast.List))
        ):
            raise _forbid(
                node, "repeating a tuple or list with `*` is not allowed; use jnp.full or jnp.tile."
            )
        self.visit(node.left)
        self.visit(node.right)

    def visit_UnaryOp(self, node: ast.UnaryOp) -> None:
        self.visit(node.operand)

    def visit_BoolOp(self, node: ast.BoolOp) -> None:
        for v in node.values:
            self.visit(v)

    def visit_Compare(self, node: ast.Compare) -> None:
        for op in node.ops:
            if not isinstance(op, _CMPOPS):
                raise _forbid(
                    node,
                    f"comparison `{type(op).__name__}` is not allowed; use ==, !=, <, <=, >, >=.",
                )
        self.visit(node.left)
        for c in node.comparators:
            self.visit(c)

    def visit_IfExp(self, node: ast.IfExp) -> None:
        self.visit(node.test)
        self.visit(node.body)
        self.visit(node.orelse)

    def visit_Tuple(self, node: ast.Tuple) -> None:
        for e in node.elts:
            self.visit(e)

    visit_List = visit_Tuple

    def visit_Subscript(self, node: ast.Subscript) -> None:
        self.visit(node.value)
        self.visit(node.slice)

    def visit_Slice(self, node: ast.Slice) -> None:
        for part in (node.lower, node.upper, node.step):
            if part is not None:
                self.visit(part)

    def visit_Attribute(self, node: ast.Attribute) -> None:
        parts = _dotted(node)
        if parts and parts[0] in MODULE_ROOTS and not self.in_scope(parts[0]):
            resolve_module_path(parts, node)
            return
        if node.attr.startswith("_"):
            raise _forbid(
                node, f"attribute `.{node.attr}` is not allowed (no private or dunder attributes)."
            )
        self.visit(node.value)  # an undefined root (`np.sign`) is the clearer error
        if node.attr not in ARRAY_ATTRS:
            raise _forbid(
                node,
                f"attribute `.{node.attr}` is not allowed; arrays allow "
                f"{', '.join(sorted(ARRAY_ATTRS))}.",
            )

    def visit_Lambda(self, node: ast.Lambda) -> None:
        raise _forbid(
            node,
            "lambdas are only allowed as arguments of jax/jnp calls, e.g. "
            "`jax.lax.cond(p, lambda: a, lambda: b)`.",
        )

    def lambda_arg(self, node: ast.Lambda) -> None:
        a = node.args
        if a.posonlyargs or a.vararg or a.kwonlyargs or a.kwarg or a.defaults:
            raise _forbid(node, "lambdas may only take plain positional parameters.")
        names = {arg.arg for arg in a.args}
        for name in names:
            if "__" in name or name in MODULE_ROOTS or name in BUILTINS:
                raise _forbid(node, f"lambda parameter `{name}` is not allowed.")
        self.lambda_scopes.append(names)
        try:
            self.visit(node.body)
        finally:
            self.lambda_scopes.pop()

    def visit_Call(self, node: ast.Call) -> None:
        for a in node.args:
            if isinstance(a, ast.Starred):
                raise _forbid(a, "`*args` in calls is not allowed.")
        for k in node.keywords:
            if k.arg is None:
                raise _forbid(k.value, "`**kwargs` in calls is not allowed.")
        func = node.func
        module_call = False
        if isinstance(func, ast.Name):
            name = func.id
            if name == "update_fn":
                raise _forbid(node, "update_fn may not call itself (no recursion).")
            if self.in_scope(name):
                raise _forbid(
                    node,
                    f"calling `{name}` is not allowed: only jnp/jax.lax/"
                    "jax.random/jax.nn functions and abs, min, max, float, int, "
                    "bool, len may be called; inline the expression.",
                )
            self.visit(func)  # builtins pass, everything else is rejected with a reason
        elif isinstance(func, ast.Attribute):
            parts = _dotted(func)
            if parts and parts[0] in MODULE_ROOTS and not self.in_scope(parts[0]):
                module, member, trailing = resolve_module_path(parts, func)
                module_call = not trailing
                if module == "jax.lax" and member == "fori_loop" and not trailing:
                    self.fori_loop(node)
                    return
            else:
                self.visit(func)
        else:
            raise _forbid(
                node,
                "only jnp/jax.lax/jax.random/jax.nn functions and abs, min, "
                "max, float, int, bool, len may be called.",
            )
        for value in [*node.args, *(k.value for k in node.keywords)]:
            if isinstance(value, ast.Lambda) and module_call:
                self.lambda_arg(value)
            else:
                self.visit(value)

    def fori_loop(self, node: ast.Call) -> None:
        if len(node.args) < 2:
            raise _forbid(
                node, "jax.lax.fori_loop(lower, upper, body, init) needs literal integer bounds."
            )
        lo, hi = _int_literal(node.args[0]), _int_literal(node.args[1])
        if lo is None or hi is None:
            raise _forbid(
                node,
                f"jax.lax.fori_loop bounds must be integer literals (at "
                f"most {MAX_LOOP} iterations), not expressions.",
            )

        def inner() -> None:
            for value in [*node.args[2:], *(k.value for k in node.keywords)]:
                if isinstance(value, ast.Lambda):
                    self.lambda_arg(value)
                else:
                    self.visit(value)

        self.loop(max(hi - lo, 0), node, inner)


def _check_tree(tree: ast.Module) -> ast.FunctionDef:
    _check_tree_size(tree)
    fn = _check_module(tree)
    _check_signature(fn)
    _check_returns(fn)
    _Checker(fn).body(fn.body)
    return fn


# ------------------------------------------------------------------ stripping
class _Strip(ast.NodeTransformer):
    """Drop annotations, docstrings and bare-string statements: never executed."""

    def visit_FunctionDef(self, node: ast.FunctionDef) -> ast.FunctionDef:
        node.returns = None
        for arg in [*node.args.posonlyargs, *node.args.args, *node.args.kwonlyargs]:
            arg.annotation = None
        for arg in (node.args.vararg, node.args.kwarg):
            if arg is not None:
                arg.annotation = None
        self.generic_visit(node)
        return node

    def visit_AnnAssign(self, node: ast.AnnAssign) -> ast.AST | None:
        if node.value is None:
            return None
        return ast.copy_location(
            ast.Assign(targets=[node.target], value=self.visit(node.value)), node
        )

    def visit_Expr(self, node: ast.Expr) -> ast.AST | None:
        if _is_docstring(node):
            return None
        return self.generic_visit(node)

    def generic_visit(self, node: ast.AST) -> ast.AST:
        super().generic_visit(node)
        for field in ("body", "orelse"):
            block = getattr(node, field, None)
            if isinstance(block, list) and not block and field == "body":
                block.append(ast.copy_location(ast.Pass(), node))
        return node


def strip(tree: ast.Module) -> ast.Module:
    """A copy of ``tree`` without annotations, docstrings or comment strings."""
    out = _Strip().visit(copy.deepcopy(tree))
    return ast.fix_missing_locations(out)


# ------------------------------------------------------------------ public
def parse_program(code: str) -> ast.Module:
    """Validate ``code`` and return its stripped tree, ready to compile.

    Raises :class:`InvalidProgram` (with a :class:`ProgramError`) on the first problem.
    """
    _check_size(code)
    tree = _parse(code)
    try:
        _check_tree(tree)
    except RecursionError:  # defensive: depth is capped above
        raise _err("too_large", None, "the program is nested too deeply.") from None
    return strip(tree)


def parse_any(code: str) -> ast.Module | None:
    """The stripped tree of any parseable code (valid or not), for hashing and auditing."""
    try:
        return strip(ast.parse(code, filename="<update_fn>", mode="exec"))
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None


def validate(code: str) -> ProgramError | None:
    """``None`` if ``code`` passes every static check, else the first :class:`ProgramError`."""
    try:
        parse_program(code)
    except InvalidProgram as e:
        return e.error
    return None
