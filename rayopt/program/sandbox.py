"""Run untrusted programs in a warm worker process that can really be stopped.

Why a process: tracing and compiling happen in Python and C++ that cannot be
interrupted from a thread (a ``10 ** 10 ** 9`` in the program holds the GIL inside one
C call). The only timeout that always works is SIGKILL on a separate process.

Design (docs/program.md, "Sandbox"):

- One worker per :class:`Sandbox`, started with ``subprocess`` (a fresh interpreter,
  never a fork of the caller), ``JAX_PLATFORMS=cpu`` so it never touches an
  accelerator, in its own session. It imports JAX once and serves jobs over pipes
  (JSON lines), so a corpus of programs pays JAX's start-up once.
- Timeout: the caller waits on the pipe with ``select``; past the deadline it
  SIGKILLs the worker and reports ``timeout``.
- Memory: three layers. The dry run sizes every intermediate from its abstract shape
  and reads XLA's memory analysis before executing (``memory`` without allocating);
  the worker caps its own data segment (RLIMIT_DATA) so a runaway Python allocation is
  a MemoryError; and the caller polls the worker's RSS every ``poll`` seconds and
  SIGKILLs it past ``max_rss_bytes``.
- Crash: a worker that dies (segfault, abort) is reported as ``runtime``.
- After any kill or crash a new worker is started at once, in the background, so the
  next check only waits for whatever warm-up is left. A worker whose RSS has grown
  past half the cap is recycled between jobs.

The caller always gets a :class:`DryRun`; nothing here raises for what a program does.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import itertools
import json
import os
import re
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from rayopt.program._worker import rss_bytes
from rayopt.program.errors import ProgramError

#: Default RSS cap of the worker (bytes): JAX itself uses ~250 MB.
MAX_RSS_BYTES = 2 << 30
#: Seconds a fresh worker may take to import JAX and warm up.
START_TIMEOUT = 120.0


@dataclasses.dataclass(frozen=True)
class DryRun:
    """Outcome of one dry run: an error, or the behavioural fingerprint."""

    error: ProgramError | None
    fingerprint: str | None
    seconds: float

    @property
    def ok(self) -> bool:
        return self.error is None


class _WorkerGone(Exception):
    pass


class _Deadline(Exception):
    pass


class _OverMemory(Exception):
    def __init__(self, rss: int) -> None:
        super().__init__(rss)
        self.rss = rss


def _worker_env() -> dict[str, str]:
    env = dict(os.environ)
    env["JAX_PLATFORMS"] = "cpu"
    env["JAX_ENABLE_X64"] = "0"
    env["RAYOPT_HOST_DEVICES"] = "1"
    flags = re.sub(r"--xla_force_host_platform_device_count=\S+", "", env.get("XLA_FLAGS", ""))
    env["XLA_FLAGS"] = flags.strip()
    root = str(Path(__file__).resolve().parents[2])  # the directory holding `rayopt`
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    return env


class Sandbox:
    """A warm worker process for dry runs; thread-safe (jobs are serialised)."""

    def __init__(
        self,
        *,
        max_rss_bytes: int = MAX_RSS_BYTES,
        array_cap: int | None = None,
        total_cap: int | None = None,
        start_timeout: float = START_TIMEOUT,
        poll: float = 0.05,
        limit_data: bool = True,
    ) -> None:
        """``max_rss_bytes``: the RSS at which the worker is killed, and (if
        ``limit_data``) the data-segment headroom it gets after warm-up.
        ``array_cap``/``total_cap``: the dry run's static memory caps (bytes)."""
        self.max_rss_bytes = max_rss_bytes
        self.start_timeout = start_timeout
        self.poll = poll
        self._caps: dict[str, int] = {"data_bytes": max_rss_bytes if limit_data else 0}
        if array_cap is not None:
            self._caps["array_cap"] = array_cap
        if total_cap is not None:
            self._caps["total_cap"] = total_cap
        self._lock = threading.Lock()
        self._owner = os.getpid()
        self._proc: subprocess.Popen | None = None
        self._stderr: Any = None
        self._buf = b""
        self._ready = False
        self._ids = itertools.count(1)
        #: Workers started so far (a test can see a respawn).
        self.starts = 0

    # ------------------------------------------------------------ lifecycle
    @property
    def pid(self) -> int | None:
        """The current worker's pid, if one is running."""
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    def start(self) -> None:
        """Start a worker if none is running (returns at once; warm-up continues)."""
        with self._lock:
            self._adopt()
            if self._proc is None:
                self._spawn()

    def close(self) -> None:
        """Kill the worker."""
        with self._lock:
            if os.getpid() == self._owner:
                self._kill()

    def _adopt(self) -> None:
        """After a fork, the worker belongs to the parent: forget it, start our own."""
        if os.getpid() != self._owner:
            self._owner = os.getpid()
            self._proc, self._stderr, self._buf, self._ready = None, None, b"", False

    def _spawn(self) -> None:
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the worker
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "rayopt.program._worker", json.dumps(self._caps)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            env=_worker_env(),
            close_fds=True,
            start_new_session=True,  # a Ctrl-C meant for the caller does not hit it
        )
        self._buf, self._ready = b"", False
        self.starts += 1

    def _kill(self) -> None:
        proc, self._proc, self._ready = self._proc, None, False
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        for pipe in (proc.stdin, proc.stdout):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()
        if self._stderr is not None:
            with contextlib.suppress(OSError):
                self._stderr.close()

    def _stderr_tail(self) -> str:
        f = self._stderr
        if f is None:
            return ""
        try:
            f.flush()
            size = f.seek(0, os.SEEK_END)
            f.seek(max(0, size - 4000))
            lines = [ln.strip() for ln in f.read().decode("utf-8", "replace").splitlines()]
        except (OSError, ValueError):
            return ""
        lines = [ln for ln in lines if ln]
        return lines[-1][:160] if lines else ""

    # ------------------------------------------------------------ pipe
    def _read(self, deadline: float, watch: bool) -> dict[str, Any]:
        proc = self._proc
        assert proc is not None and proc.stdout is not None
        fd = proc.stdout.fileno()
        while b"\n" not in self._buf:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise _Deadline
            ready, _, _ = select.select([fd], [], [], min(self.poll, remaining))
            if ready:
                chunk = os.read(fd, 1 << 16)
                if not chunk:
                    raise _WorkerGone
                self._buf += chunk
            elif proc.poll() is not None:
                raise _WorkerGone
            if watch:
                rss = rss_bytes(proc.pid)
                if rss > self.max_rss_bytes:
                    raise _OverMemory(rss)
        line, self._buf = self._buf.split(b"\n", 1)
        return json.loads(line)

    def _ensure_ready(self) -> ProgramError | None:
        error = ProgramError("internal", None, "the sandbox worker did not report ready.")
        for _ in range(2):
            if self._proc is None or self._proc.poll() is not None:
                self._kill()
                try:
                    self._spawn()
                except OSError as e:
                    error = ProgramError("internal", None, f"cannot start the sandbox worker: {e}")
                    continue
            if self._ready:
                return None
            try:
                msg = self._read(time.monotonic() + self.start_timeout, watch=False)
            except (_WorkerGone, _Deadline):
                tail = self._stderr_tail()
                self._kill()
                error = ProgramError(
                    "internal",
                    None,
                    "the sandbox worker failed to start" + (f": {tail}" if tail else "."),
                )
                continue
            if msg.get("ready"):
                self._ready = True
                return None
        return error

    # ------------------------------------------------------------ public
    def run(
        self, code: str, timeout: float = 10.0, shapes: list[tuple[int, ...]] | None = None
    ) -> DryRun:
        """Dry-run ``code`` in the worker; ``timeout`` bounds tracing, compiling and
        running (seconds of wall time, not counting the worker's own start-up). With
        ``shapes``, only trace it at those (real) shapes and size its arrays
        (``dryrun.check_shapes``)."""
        with self._lock:
            self._adopt()
            t0 = time.monotonic()
            error = self._ensure_ready()
            if error is not None:
                return DryRun(error, None, time.monotonic() - t0)
            job = {"id": next(self._ids), "code": code, "timeout": timeout}
            if shapes is not None:
                job["shapes"] = [list(map(int, sh)) for sh in shapes]
            try:
                self._send(job)
            except OSError:  # died while idle: not this program's fault, start over
                self._kill()
                error = self._ensure_ready()
                if error is not None:
                    return DryRun(error, None, time.monotonic() - t0)
                self._send(job)
            t_job = time.monotonic()
            try:
                reply = self._read(t_job + timeout, watch=True)
            except _Deadline:
                self._restart()
                return DryRun(
                    ProgramError(
                        "timeout",
                        None,
                        f"tracing, compiling and running update_fn took longer than {timeout:g} s "
                        "and was stopped; remove whatever makes it slow (huge Python integer "
                        "arithmetic, very large or repeated computations).",
                    ),
                    None,
                    time.monotonic() - t_job,
                )
            except _OverMemory as e:
                self._restart()
                return DryRun(
                    ProgramError(
                        "memory",
                        None,
                        f"the program made the sandbox use {e.rss / 2**20:.0f} MiB (limit "
                        f"{self.max_rss_bytes / 2**20:.0f} MiB) and was stopped; use smaller "
                        "arrays and Python values.",
                    ),
                    None,
                    time.monotonic() - t_job,
                )
            except _WorkerGone:
                rc = self._proc.wait() if self._proc is not None else None
                tail = self._stderr_tail()
                self._restart()
                if rc == -signal.SIGXCPU:  # the worker's own CPU-time backstop
                    return DryRun(
                        ProgramError(
                            "timeout",
                            None,
                            "update_fn used more CPU time than allowed and was "
                            "stopped; remove whatever makes it slow.",
                        ),
                        None,
                        time.monotonic() - t_job,
                    )
                how = (
                    f"signal {signal.Signals(-rc).name}"
                    if rc is not None and rc < 0
                    else f"exit status {rc}"
                )
                return DryRun(
                    ProgramError(
                        "runtime",
                        None,
                        f"the program crashed the sandbox worker ({how})"
                        + (f": {tail}" if tail else "."),
                    ),
                    None,
                    time.monotonic() - t_job,
                )
            if reply.get("id") != job["id"]:  # cannot happen with one job in flight
                self._restart()
                return DryRun(
                    ProgramError("internal", None, "the sandbox worker answered out of turn."),
                    None,
                    time.monotonic() - t_job,
                )
            if reply.get("rss", 0) > self.max_rss_bytes // 2:
                self._restart()  # recycle a bloated worker between jobs
            err = reply.get("error")
            return DryRun(
                ProgramError.from_dict(err) if err else None,
                reply.get("fingerprint"),
                time.monotonic() - t_job,
            )

    def _send(self, job: dict[str, Any]) -> None:
        assert self._proc is not None and self._proc.stdin is not None
        self._proc.stdin.write(json.dumps(job).encode() + b"\n")
        self._proc.stdin.flush()

    def _restart(self) -> None:
        self._kill()
        try:
            self._spawn()  # warms up while the caller does something else
        except OSError:
            self._proc = None  # the next run tries again and reports `internal`


_default: Sandbox | None = None
_default_lock = threading.Lock()


def default_sandbox() -> Sandbox:
    """The process-wide sandbox used by :func:`rayopt.program.check`."""
    global _default
    with _default_lock:
        if _default is None:
            _default = Sandbox()
            atexit.register(_default.close)
        return _default


def shape_check(code: str, shapes: list[tuple[int, ...]], *, timeout: float = 10.0) -> DryRun:
    """Trace ``code`` at real ``shapes`` in the process-wide sandbox (no run)."""
    return default_sandbox().run(code, timeout=timeout, shapes=list(shapes))


def dry_run(code: str, *, timeout: float = 10.0) -> DryRun:
    """Dry-run ``code`` in the process-wide sandbox."""
    return default_sandbox().run(code, timeout=timeout)
