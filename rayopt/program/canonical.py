"""Two identities for a program: a canonical hash (same code) and a behavioural
fingerprint (same outputs).

The search meets the same optimiser many times: the LLM reformats, re-comments,
renames variables, or rewrites ``g * 2`` as ``g + g``. Each PPO evaluation costs
minutes, so duplicates are worth catching before paying for one.

- :func:`canonical_hash` is syntactic: ``ast.unparse`` of the tree without comments,
  docstrings and annotations, with the parameters renamed positionally (``p0`` ...
  ``p9``), every other variable renamed in order of first appearance (``v0``, ``v1``
  ...), and ``jax.numpy``/``lax`` spelled ``jnp``/``jax.lax``; then sha256. Equal hash
  means the same program up to formatting and names.
- :func:`fingerprint` is semantic: the program runs in the sandbox on fixed
  pseudo-random inputs (a (8, 4) kernel, a (4,) bias and a (64, 64) kernel, three steps
  each, var1/var2 carried), and the outputs, rounded to 4 significant digits, are
  hashed. Equal fingerprint means "indistinguishable on the probe", a strong hint of a
  semantic duplicate, never a proof.
"""

from __future__ import annotations

import ast
import hashlib
from collections.abc import Iterable

import numpy as np

from rayopt.program.validate import BUILTINS, MODULE_ROOTS, PARAMS, parse_any

#: Hex characters kept from sha256 (64 bits: collisions are not a concern at archive
#: sizes of thousands).
HASH_CHARS = 16
#: Significant digits kept when fingerprinting outputs.
FINGERPRINT_DIGITS = 4


class _Canonicalise(ast.NodeTransformer):
    def __init__(self) -> None:
        self.names: dict[str, str] = {}
        self.locals = 0

    def rename(self, name: str) -> str:
        if name in BUILTINS or name in MODULE_ROOTS or name == "update_fn":
            return name
        if name not in self.names:
            self.names[name] = f"v{self.locals}"
            self.locals += 1
        return self.names[name]

    def visit_FunctionDef(self, node: ast.FunctionDef) -> ast.AST:
        if node.name == "update_fn":
            for i, arg in enumerate(node.args.args):
                self.names.setdefault(arg.arg, f"p{i}")
        return self.generic_visit(node)

    def visit_arg(self, node: ast.arg) -> ast.AST:
        node.arg = self.rename(node.arg)
        return node

    def visit_Name(self, node: ast.Name) -> ast.AST:
        if node.id == "lax" and node.id not in self.names:
            return ast.copy_location(
                ast.Attribute(value=ast.Name("jax", ast.Load()), attr="lax", ctx=node.ctx),
                node,
            )
        node.id = self.rename(node.id)
        return node

    def visit_Attribute(self, node: ast.Attribute) -> ast.AST:
        if node.attr == "numpy" and isinstance(node.value, ast.Name) and node.value.id == "jax":
            return ast.copy_location(ast.Name("jnp", node.ctx), node)
        return self.generic_visit(node)


def canonical_source(code: str) -> str | None:
    """The canonical form of ``code`` as source text; ``None`` if it does not parse."""
    tree = parse_any(code)
    if tree is None:
        return None
    try:
        tree = ast.fix_missing_locations(_Canonicalise().visit(tree))
        return ast.unparse(tree)
    except RecursionError:  # absurdly deep code: validation rejects it as too_large
        return None


def canonical_hash(code: str) -> str:
    """Short sha256 of :func:`canonical_source`. Code that does not parse hashes its raw
    text, so the result is always a string and still identifies the submission."""
    text = canonical_source(code)
    payload = ("canonical:" + text) if text is not None else ("raw:" + code)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:HASH_CHARS]


def digest_outputs(arrays: Iterable[np.ndarray], digits: int = FINGERPRINT_DIGITS) -> str:
    """Hash arrays rounded to ``digits`` significant digits.

    Deterministic for NaN (one code), +inf, -inf and signed zeros (0.0 == -0.0). Values
    a hair apart across a rounding boundary can still hash differently, so equal
    programs almost always, not always, share a fingerprint.
    """
    h = hashlib.sha256()
    for arr in arrays:
        a = np.asarray(arr, dtype=np.float64)
        h.update(repr(a.shape).encode())
        finite = np.isfinite(a)
        x = np.where(finite, a, 0.0)
        nonzero = x != 0
        mag = np.zeros(a.shape, np.float64)
        mant = np.zeros(a.shape, np.float64)
        mag[nonzero] = np.floor(np.log10(np.abs(x[nonzero])))
        mant[nonzero] = np.round(x[nonzero] / 10.0 ** (mag[nonzero] - (digits - 1)))
        over = np.abs(mant) >= 10**digits  # 9.9995 rounds up to 10.00
        mant[over] = np.round(mant[over] / 10)
        mag[over] += 1
        special = np.select([np.isnan(a), np.isposinf(a), np.isneginf(a)], [1, 2, 3], 0)
        for part in (mant.astype(np.int64), mag.astype(np.int64), special.astype(np.int8)):
            h.update(np.ascontiguousarray(part).tobytes())
    return h.hexdigest()[:HASH_CHARS]


def fingerprint(code: str, *, timeout: float = 10.0) -> str | None:
    """Behavioural fingerprint of ``code`` from a sandboxed dry run; ``None`` if the
    program is invalid or fails the dry run (use :func:`rayopt.program.check` to learn
    why)."""
    from rayopt.program.sandbox import dry_run
    from rayopt.program.validate import validate

    if validate(code) is not None:
        return None
    return dry_run(code, timeout=timeout).fingerprint


__all__ = [
    "PARAMS",
    "canonical_hash",
    "canonical_source",
    "digest_outputs",
    "fingerprint",
]
