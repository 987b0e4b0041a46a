"""Untrusted optimiser code: validation, literal audit, hashes, sandboxed dry run.

Every program runs through the real pipeline (static checks in this process, dry run in
the shared warm worker process); nothing is mocked. The test process itself must
survive the whole corpus, which includes hangs, huge allocations and a crash.
"""

from __future__ import annotations

import ast
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import rayopt.program as program
from rayopt.optim.library import DISCOVERED_1, DISCOVERED_3, SYMBOLIC
from rayopt.program import (
    CheckResult,
    InvalidProgram,
    ProgramError,
    canonical_hash,
    check,
    fingerprint,
    introduced,
    load_checked,
    validate,
)
from rayopt.program.errors import KINDS
from rayopt.program.sandbox import Sandbox, default_sandbox

PROGRAMS = Path(__file__).parent / "programs"
BAD = sorted((PROGRAMS / "bad").glob("*.py"))
GOOD = sorted((PROGRAMS / "good").glob("*.py"))
REPO = Path(__file__).resolve().parents[1]
#: Dry-run timeout for the corpus (a file may lower it with a `# timeout: S` header).
TIMEOUT = 5.0
HEADER = "def update_fn(w, g, var1, var2, t, d, t_p, b_p, l_p, key):\n"
HANG = HEADER + "    big = 10 ** 10 ** 9\n    return g, var1, var2\n"


def _header(path: Path, key: str) -> str | None:
    for line in path.read_text().splitlines()[:3]:
        m = re.match(rf"#\s*{key}:\s*(\S+)", line)
        if m:
            return m.group(1)
    return None


@pytest.fixture(scope="module")
def sandbox() -> Sandbox:
    """The process-wide sandbox that check() uses, warmed once for the whole module."""
    sb = default_sandbox()
    sb.start()
    assert check(SYMBOLIC["gradient_step"], timeout=60).ok  # waits for the warm-up
    return sb


# ------------------------------------------------------------------ the corpus
def test_corpus_covers_every_program_kind():
    kinds = [_header(p, "expect") for p in BAD]
    assert len(BAD) >= 40
    assert None not in kinds, "every bad program declares `# expect: KIND`"
    assert set(kinds) == set(KINDS) - {"internal"}
    assert len(GOOD) >= 5


@pytest.mark.parametrize("path", BAD, ids=[p.stem for p in BAD])
def test_bad_program_gets_its_kind(path: Path, sandbox: Sandbox):
    expected = _header(path, "expect")
    timeout = float(_header(path, "timeout") or TIMEOUT)
    code = path.read_text()
    t0 = time.monotonic()
    result = check(code, timeout=timeout)
    elapsed = time.monotonic() - t0
    assert isinstance(result, CheckResult)
    assert not result.ok
    assert result.error is not None and result.error.kind == expected, result.error
    assert result.fingerprint is None
    # A respawned worker's warm-up (after an earlier kill) is not part of the timeout,
    # but everything together still returns in a few seconds.
    assert elapsed < timeout + 15, elapsed
    err = result.error
    assert 0 < len(err.message) <= 300
    if err.line is not None:
        assert f"Line {err.line}" in err.message
        assert 1 <= err.line <= len(code.splitlines())


@pytest.mark.parametrize("path", GOOD, ids=[p.stem for p in GOOD])
def test_good_program_passes(path: Path, sandbox: Sandbox):
    result = check(path.read_text(), timeout=30)
    assert result.ok, result.error
    assert result.error is None
    assert re.fullmatch(r"[0-9a-f]{16}", result.fingerprint or "")


@pytest.fixture(scope="module")
def library(sandbox: Sandbox) -> dict[str, CheckResult]:
    """check() of the seven paper optimisers, computed once."""
    return {name: check(code, timeout=30) for name, code in SYMBOLIC.items()}


@pytest.mark.parametrize("name", list(SYMBOLIC))
def test_paper_optimisers_pass(name: str, library: dict[str, CheckResult]):
    result = library[name]
    assert result.ok, result.error
    assert result.fingerprint is not None
    assert re.fullmatch(r"[0-9a-f]{16}", result.hash)


def test_paper_optimisers_are_all_distinct(library: dict[str, CheckResult]):
    assert len({r.hash for r in library.values()}) == len(SYMBOLIC)
    assert len({r.fingerprint for r in library.values()}) == len(SYMBOLIC)


# ------------------------------------------------------------------ hashes
def _variants_of_discovered_3() -> dict[str, str]:
    reformatted = (
        ast.unparse(ast.parse(DISCOVERED_3)).replace(" * ", "*").replace("\n    ", "\n        ")
    )
    commented = '"""Discovered Optimiser 3."""\n' + DISCOVERED_3.replace(
        "    m = 0.9\n",
        '    """Momentum with a dormancy boost."""\n    # momentum\n    m = 0.9  # fixed\n',
    )
    renamed = DISCOVERED_3
    for old, new in (
        ("d_scale", "boost_factor"),
        ("lr2", "progress"),
        ("lr", "step"),
        ("m", "beta"),
        ("update", "delta"),
        ("boost", "extra"),
    ):
        renamed = re.sub(rf"\b{old}\b", new, renamed)
    renamed = renamed.replace("def delta_fn", "def update_fn")
    annotated = DISCOVERED_3.replace(
        "def update_fn(w, g, var1, var2, t, d, t_p, b_p, l_p, key):",
        "def update_fn(w: jnp.ndarray, g: jnp.ndarray, var1: jnp.ndarray, var2: jnp.ndarray,"
        " t: int, d: jnp.ndarray, t_p: float, b_p: float, l_p: float, key: jax.ndarray)"
        " -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:",
    ).replace("    m = 0.9\n", "    m: float = 0.9\n")
    spelled = DISCOVERED_3.replace("jnp.", "jax.numpy.")
    return {
        "reformatted": reformatted,
        "commented": commented,
        "renamed": renamed,
        "annotated": annotated,
        "spelled": spelled,
    }


@pytest.mark.parametrize("variant", list(_variants_of_discovered_3()))
def test_hash_ignores_format_comments_names_annotations(variant: str):
    code = _variants_of_discovered_3()[variant]
    assert code != DISCOVERED_3
    assert validate(code) is None
    assert canonical_hash(code) == canonical_hash(DISCOVERED_3)


def test_hash_sees_semantic_changes():
    base = canonical_hash(DISCOVERED_3)
    assert canonical_hash(DISCOVERED_3.replace("m = 0.9", "m = 0.95")) != base
    assert canonical_hash(DISCOVERED_3.replace("(g - var1) ** 2", "(g - var2) ** 2")) != base
    assert canonical_hash(DISCOVERED_3.replace("d < 1.0", "d > 1.0")) != base
    assert canonical_hash(DISCOVERED_1) != base


def test_fingerprint_catches_semantic_duplicates(library: dict[str, CheckResult]):
    times_two = check(HEADER + "    update = g * 2\n    return update, var1, var2\n")
    plus_self = check(HEADER + "    update = g + g\n    return update, var1, var2\n")
    assert times_two.ok and plus_self.ok
    assert times_two.hash != plus_self.hash
    assert times_two.fingerprint == plus_self.fingerprint
    # ... and it is not blind: an epsilon change that matters for tiny gradients shows.
    eps = check(DISCOVERED_3.replace("1e-8", "1e-4"))
    assert eps.ok and eps.fingerprint != library["discovered_3"].fingerprint
    assert fingerprint(DISCOVERED_3) == library["discovered_3"].fingerprint  # deterministic
    assert fingerprint(HEADER + "    return jnp.log(-1.0 - abs(w)), var1, var2\n") is None


# ------------------------------------------------------------------ literal audit
def test_literal_audit_of_discovered_3():
    result = check(DISCOVERED_3, dry_run=False)
    assert result.ok and result.fingerprint is None
    lits = result.literals
    for expected in [(0.9, 2), (1e-8, 5), (0.1, 8), (1.0, 9), (2.0, 9), (2, 4), (1, 3)]:
        assert expected in lits
    assert len(lits) == 17
    assert result.tunable == [(0.9, 2), (1e-8, 5), (0.1, 8)]
    assert result.tunable_count == 3


def test_literal_audit_rules():
    code = HEADER + (
        "    eps = -1e-8\n"  # unary minus: one literal, -1e-8
        "    x = jnp.sum(g, axis=1) * w[:, 3]\n"  # axis= and indices are structural
        "    y = g ** 0.5 + 2 * w - 1\n"  # 0.5, 2, 1 are structural
        "    return x * 0.001 + y + eps, var1, var2\n"
    )
    result = check(code, dry_run=False)
    assert (-1e-8, 2) in result.literals and (1e-8, 2) not in result.literals
    assert result.tunable == [(-1e-8, 2), (0.001, 5)]
    assert (3, 3) in result.literals and (1, 3) in result.literals


def test_introduced_hyperparameters():
    assert [tuple(x) for x in introduced(DISCOVERED_3, DISCOVERED_1)] == [(0.1, 8)]
    assert introduced(DISCOVERED_1, DISCOVERED_3) == []
    assert introduced(DISCOVERED_3, DISCOVERED_3) == []
    # a second copy of an existing value is a new literal (multiset difference)
    twice = DISCOVERED_3.replace("d_scale *= boost", "d_scale *= boost * 0.9")
    assert [tuple(x) for x in introduced(twice, DISCOVERED_3)] == [(0.9, 10)]
    # structural constants never count
    assert (
        introduced(DISCOVERED_3.replace("lr2 = (1 - t_p)", "lr2 = (2 - t_p)"), DISCOVERED_3) == []
    )


# ------------------------------------------------------------------ validation details
def test_static_check_is_cheap_and_runs_nothing():
    t0 = time.monotonic()
    result = check(HANG, dry_run=False)  # would hang if executed
    assert result.ok and result.fingerprint is None
    assert time.monotonic() - t0 < 1.0


def test_validate_messages_name_construct_and_line():
    err = validate(
        HEADER + "    update = g\n    while True:\n        pass\n    return update, var1, var2\n"
    )
    assert err == ProgramError(err.kind, 3, err.message)
    assert err.kind == "forbidden" and "while" in err.message and "Line 3" in err.message
    err = validate(HEADER + "    return np.sign(g), var1, var2\n")
    assert err.kind == "forbidden" and "`np`" in err.message and "jnp" in err.message
    with pytest.raises(ValueError):
        ProgramError("bogus", None, "x")


def test_pathological_sources_are_structured_errors():
    deep = HEADER + "    update = g" + "+g" * 3000 + "\n    return update, var1, var2\n"
    assert check(deep).error.kind == "too_large"  # Python's own parser recurses out
    huge = check("x" * 5_000_000)
    assert huge.error.kind == "too_large" and huge.literals == [] and huge.hash
    assert check("\0").error.kind == "syntax"
    assert check("").error.kind == "signature"


def test_load_checked_is_the_validated_path():
    code = (PROGRAMS / "good" / "coder_prompt_style.py").read_text()
    fn = load_checked(code)
    fn_def = ast.parse(code).body[-1]
    assert isinstance(fn_def, ast.FunctionDef) and fn_def.args.args[0].annotation is not None
    assert fn.__annotations__ == {}  # stripped: `jax.ndarray` is never evaluated
    import jax.numpy as jnp

    w = jnp.ones((3, 2))
    out = fn(w, w, w * 0, w * 0, 1, jnp.ones(2), 0.5, 0.5, 0.0, None)
    assert out[0].shape == (3, 2)
    with pytest.raises(InvalidProgram) as info:
        load_checked("import os\n" + SYMBOLIC["gradient_step"])
    assert info.value.error.kind == "forbidden"


def test_public_names():
    for name in (
        "check",
        "CheckResult",
        "ProgramError",
        "validate",
        "canonical_hash",
        "fingerprint",
        "introduced",
        "load_checked",
    ):
        assert name in program.__all__ and hasattr(program, name)
    assert not hasattr(program, "load_update_fn")  # one loader: load_checked validates


# ------------------------------------------------------------------ the sandbox
def test_timeout_kills_a_hung_tracer_and_respawns(sandbox: Sandbox):
    assert check(SYMBOLIC["gradient_step"], timeout=30).ok  # worker warm and idle
    before = sandbox.pid
    t0 = time.monotonic()
    result = check(HANG, timeout=3.0)
    elapsed = time.monotonic() - t0
    assert result.error is not None and result.error.kind == "timeout", result.error
    assert elapsed < 3.0 + 3.0, elapsed
    with pytest.raises(ProcessLookupError):
        os.kill(before, 0)  # really gone, not left spinning
    after = check(SYMBOLIC["discovered_3"], timeout=30)
    assert after.ok, after.error
    assert sandbox.pid is not None and sandbox.pid != before


def test_worker_crash_is_reported_and_survived(sandbox: Sandbox):
    assert check(SYMBOLIC["gradient_step"], timeout=30).ok
    victim = sandbox.pid
    timer = threading.Timer(1.0, os.kill, (victim, signal.SIGSEGV))
    timer.start()
    try:
        result = check(HANG, timeout=30)
    finally:
        timer.cancel()
    assert result.error is not None and result.error.kind == "runtime", result.error
    assert "crashed" in result.error.message and "SIGSEGV" in result.error.message
    assert check(SYMBOLIC["sign_update"], timeout=30).ok


def test_crash_verdict_is_not_remembered(sandbox: Sandbox):
    """A worker killed from outside mid-job (as by the OOM killer) fails that one check;
    checking the same good code again runs it again and passes."""
    code = SYMBOLIC["discovered_2"]
    assert check(SYMBOLIC["gradient_step"], timeout=30).ok  # worker warm and idle
    victim = sandbox.pid
    os.kill(victim, signal.SIGSTOP)  # the job is sent but never starts ...
    timer = threading.Timer(0.5, os.kill, (victim, signal.SIGKILL))  # ... then it dies
    timer.start()
    try:
        killed = check(code, timeout=30)
    finally:
        timer.cancel()
    assert killed.error is not None and killed.error.kind == "runtime", killed.error
    assert "SIGKILL" in killed.error.message
    again = check(code, timeout=30)
    assert again.ok, again.error
    assert again.fingerprint is not None and again.fingerprint == check(code).fingerprint
    # and a crash on code that hangs is not remembered either: it times out next time
    hang = check(HANG, timeout=3.0)
    assert hang.error is not None and hang.error.kind == "timeout", hang.error


def test_worker_killed_while_idle_is_transparent(sandbox: Sandbox):
    assert check(SYMBOLIC["gradient_step"], timeout=30).ok
    os.kill(sandbox.pid, signal.SIGKILL)
    time.sleep(0.2)
    assert check(SYMBOLIC["relative_update"], timeout=30).ok


def test_rss_watchdog_kills_a_runaway_worker():
    # Without the data-segment limit, only the RSS watchdog stands in the way.
    sb = Sandbox(max_rss_bytes=900 << 20, limit_data=False)
    try:
        code = HEADER + "    cell = (0.0,)\n    big = cell * 300000000\n    return g, var1, var2\n"
        result = sb.run(code, timeout=60)
        assert result.error is not None and result.error.kind == "memory", result.error
        assert "MiB" in result.error.message
        assert sb.run(SYMBOLIC["gradient_step"], timeout=60).ok
    finally:
        sb.close()


# ------------------------------------------------------------------ CLI
def _cli(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run(
        [sys.executable, "-m", "rayopt", "check", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )


def test_cli_good_file(tmp_path: Path, library: dict[str, CheckResult]):
    path = tmp_path / "d3.py"
    path.write_text(DISCOVERED_3)
    proc = _cli(str(path), "--json", "--timeout", "60")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert {"ok", "kind", "line", "message", "literals", "tunable_count", "hash"} <= set(out)
    assert out["ok"] is True and out["kind"] is None
    assert out["tunable_count"] == 3 and [0.9, 2] in out["literals"]
    assert out["hash"] == canonical_hash(DISCOVERED_3)
    assert out["fingerprint"] == library["discovered_3"].fingerprint  # another process


def test_cli_bad_file():
    path = PROGRAMS / "bad" / "forbidden__subclasses_escape.py"
    proc = _cli(str(path), "--json")
    assert proc.returncode == 1, proc.stderr
    out = json.loads(proc.stdout)
    assert out["ok"] is False and out["kind"] == "forbidden" and out["line"] == 4
    assert "__" in out["message"]
    text = _cli(str(path), "--no-dry-run")
    assert text.returncode == 1 and text.stdout.startswith("error: forbidden")
