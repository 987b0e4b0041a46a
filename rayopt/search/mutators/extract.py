"""Getting the thinker's idea and the coder's code out of what a model actually
returns, which is often not the bare JSON the prompts ask for.

Rules (docs/llm.md, "JSON extraction"):
1. The reply as a whole, then each fenced block (```json ... ```), then each balanced
   ``{ ... }`` span in order of its opening brace, is tried as a JSON object; the first
   that parses to an object wins.
2. Parsing is lenient in two ways models need: raw newlines/tabs inside strings are
   accepted (the coder example in App. C itself puts a multi-line string in JSON) and
   trailing commas before ``}``/``]`` are dropped.
3. Keys are matched case-insensitively. The thinker needs a non-empty "suggestion"
   ("thought" is optional); the coder needs "code" (a string, or a list of lines).
4. Without usable JSON, the thinker falls back to prose labelled ``Suggestion:``; the
   coder to a fenced ```python block, then to the text from ``def update_fn`` on.
5. Code is normalised: markdown fences removed, a JSON-escaped string (literal ``\\n``
   and no real newline) unescaped, dedented, and the imports the program namespace
   already provides (jax, jnp, lax) dropped.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import re
import textwrap
from typing import Any

_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[ \t]*\r?\n(.*?)(?:```|\Z)", re.S)
_TRAILING_COMMA = re.compile(r",(\s*[}\]])")
#: Imports a model likes to add; the program namespace already binds these names.
_PROVIDED_IMPORTS = {
    "import jax",
    "import jax.numpy as jnp",
    "from jax import numpy as jnp",
    "import jax.lax as lax",
    "from jax import lax",
}
_MAX_STARTS = 64


@dataclasses.dataclass(frozen=True)
class Idea:
    """The thinker's output."""

    suggestion: str
    thought: str = ""


def fenced_blocks(text: str) -> list[tuple[str, str]]:
    """(language, body) for each markdown code fence, in order."""
    return [(m.group(1).lower(), m.group(2)) for m in _FENCE.finditer(text)]


def _balanced_end(text: str, start: int) -> int | None:
    """Index just past the ``}`` closing the ``{`` at ``start``, respecting strings."""
    depth = 0
    in_string = False
    escape = False
    for i in range(start, len(text)):
        ch = text[i]
        if in_string:
            if escape:
                escape = False
            elif ch == "\\":
                escape = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return i + 1
    return None


def _strip_trailing_commas(text: str) -> str:
    """Drop ``,`` before ``}``/``]`` outside strings."""
    out: list[str] = []
    i, n = 0, len(text)
    in_string = escape = False
    while i < n:
        ch = text[i]
        if in_string:
            out.append(ch)
            if escape:
                escape = False
            elif ch == "\\":
                escape = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
            out.append(ch)
        elif ch == ",":
            m = _TRAILING_COMMA.match(text, i)
            if not m:
                out.append(ch)
        else:
            out.append(ch)
        i += 1
    return "".join(out)


def _loads_object(text: str) -> dict[str, Any] | None:
    for candidate in (text, _strip_trailing_commas(text)):
        try:
            value = json.loads(candidate, strict=False)
        except (ValueError, RecursionError):
            continue
        if isinstance(value, dict):
            return value
    return None


def extract_json_object(text: str) -> dict[str, Any] | None:
    """The first JSON object in ``text`` by the rules above, or None."""
    stripped = text.strip()
    if not stripped:
        return None
    found = _loads_object(stripped)
    if found is not None:
        return found
    for _, body in fenced_blocks(stripped):
        found = _loads_object(body.strip())
        if found is not None:
            return found
    starts = [i for i, ch in enumerate(stripped) if ch == "{"][:_MAX_STARTS]
    for start in starts:
        end = _balanced_end(stripped, start)
        if end is None:
            continue
        found = _loads_object(stripped[start:end])
        if found is not None:
            return found
    return None


def _get(obj: dict[str, Any], key: str) -> Any:
    for k, v in obj.items():
        if isinstance(k, str) and k.strip().lower() == key:
            return v
    return None


def _as_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return "\n".join(value).strip()
    return json.dumps(value)


_LABEL = re.compile(r"(?im)^[ \t>*#-]*\**\s*(thought|suggestion)\s*\**\s*[:\-]\s*")


def _labelled_prose(text: str) -> dict[str, str]:
    """``Thought: ...`` / ``Suggestion: ...`` sections of a prose reply."""
    marks = list(_LABEL.finditer(text))
    out: dict[str, str] = {}
    for i, m in enumerate(marks):
        end = marks[i + 1].start() if i + 1 < len(marks) else len(text)
        out.setdefault(m.group(1).lower(), text[m.end() : end].strip().lstrip("*").strip())
    return out


def parse_thinker(text: str) -> tuple[Idea | None, str | None]:
    """(idea, None) or (None, why not)."""
    obj = extract_json_object(text)
    if obj is not None:
        suggestion = _as_text(_get(obj, "suggestion"))
        if suggestion:
            return Idea(suggestion, _as_text(_get(obj, "thought"))), None
        keys = ", ".join(map(repr, obj)) or "none"
        return None, f'JSON reply has no non-empty "suggestion" (keys: {keys})'
    prose = _labelled_prose(text)
    if prose.get("suggestion"):
        return Idea(prose["suggestion"], prose.get("thought", "")), None
    if not text.strip():
        return None, "empty reply"
    return None, 'no JSON object with a "suggestion" key in the reply'


def normalise_code(code: str) -> str:
    """Undo the usual wrappings of code inside a reply (see rule 5)."""
    code = code.strip("\n")
    blocks = fenced_blocks(code)
    if blocks and code.lstrip().startswith("```"):
        code = blocks[0][1]
    if "\n" not in code and "\\n" in code:
        try:
            code = json.loads(f'"{code}"', strict=False)
        except ValueError:
            code = code.replace("\\n", "\n").replace("\\t", "\t").replace('\\"', '"')
    code = textwrap.dedent(code).strip()
    lines = [ln for ln in code.splitlines() if ln.strip() not in _PROVIDED_IMPORTS]
    return "\n".join(lines).strip() + "\n"


def _code_from_prose(text: str) -> str | None:
    for lang, body in fenced_blocks(text):
        if lang in ("", "python", "py", "python3") and "def update_fn" in body:
            return body
    start = text.find("def update_fn")
    if start < 0:
        return None
    tail = text[start:]
    fence = tail.find("```")
    if fence >= 0:
        tail = tail[:fence]
    # The tail of a broken JSON wrapper: `..." }`
    return re.sub(r'"\s*}\s*$', "", tail.rstrip())


def parse_coder(text: str) -> tuple[str | None, str | None]:
    """(code, None) or (None, why not). The code is normalised, not yet validated."""
    obj = extract_json_object(text)
    if obj is not None:
        code = _get(obj, "code")
        if isinstance(code, list) and all(isinstance(c, str) for c in code):
            code = "\n".join(code)
        if isinstance(code, str) and code.strip():
            return normalise_code(code), None
    raw = _code_from_prose(text)
    if raw is not None and raw.strip():
        return normalise_code(raw), None
    if obj is not None:
        keys = ", ".join(map(repr, obj)) or "none"
        return None, f'JSON reply has no "code" string (keys: {keys})'
    if not text.strip():
        return None, "empty reply"
    return None, 'no JSON object with a "code" key and no `def update_fn` in the reply'


def same_program(a: str, b: str) -> bool:
    """True if two sources parse to the same AST (comments and layout ignored)."""
    try:
        return ast.dump(ast.parse(a)) == ast.dump(ast.parse(b))
    except (SyntaxError, ValueError):
        return False
