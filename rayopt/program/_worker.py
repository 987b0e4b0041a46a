"""The sandbox worker: a separate Python process that dry-runs programs.

Started by :class:`rayopt.program.sandbox.Sandbox` as ``python -m
rayopt.program._worker CAPS_JSON``. It imports JAX once, warms up, caps its own data
segment, then serves jobs until stdin closes. Protocol: one JSON object per line; jobs
on stdin, replies on a private copy of the original stdout (fd 1 itself is pointed at
stderr so nothing the program or XLA prints can corrupt the stream). JSON, not pickle:
the parent must never unpickle what a process running untrusted code sends it.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import threading
import time
from typing import Any, BinaryIO


def _status_bytes(field: str, pid: int | str = "self") -> int:
    """A ``kB`` field of ``/proc/PID/status`` (``VmRSS``, ``VmData``) in bytes; 0 where
    unavailable (not Linux, or the process is gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def rss_bytes(pid: int | str = "self") -> int:
    """Resident memory of a process (Linux ``/proc``; 0 where unavailable)."""
    return _status_bytes("VmRSS", pid)


def _watch_parent(parent: int) -> None:
    """Exit when the parent dies (its pipes may outlive it, e.g. in a fork)."""

    def loop() -> None:
        while True:
            if os.getppid() != parent:
                os._exit(0)
            time.sleep(1.0)

    threading.Thread(target=loop, name="parent-watch", daemon=True).start()


def _limit_memory(extra: int) -> None:
    """Cap the data segment at what JAX uses after warm-up plus ``extra`` bytes.

    RLIMIT_DATA (Linux >= 4.7 counts private anonymous mappings) turns a runaway
    allocation into a clean MemoryError / RESOURCE_EXHAUSTED inside the worker. We do
    not use RLIMIT_AS: JAX/XLA reserve large virtual ranges they never touch.
    """
    if extra <= 0:
        return
    try:
        limit = _status_bytes("VmData") + extra
        soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
        if hard != resource.RLIM_INFINITY:
            limit = min(limit, hard)
        resource.setrlimit(resource.RLIMIT_DATA, (limit, hard))
    except (ValueError, OSError):  # pragma: no cover - platform without RLIMIT_DATA
        pass


def _limit_cpu(timeout: float) -> None:
    """Let the kernel end this job if the parent cannot: SIGXCPU once the job has used
    more CPU time than ``timeout`` seconds on every core, plus slack.

    The parent's wall-clock SIGKILL always comes first (CPU time <= wall time x cores);
    this only matters for an orphan whose parent died mid-job while the program holds
    the GIL in one long C call (where the parent-watch thread cannot run).
    """
    try:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        used = usage.ru_utime + usage.ru_stime
        cores = (
            len(os.sched_getaffinity(0))
            if hasattr(os, "sched_getaffinity")
            else (os.cpu_count() or 1)
        )
        soft = int(used + timeout * cores + 10)
        _, hard = resource.getrlimit(resource.RLIMIT_CPU)
        if hard != resource.RLIM_INFINITY:
            soft = min(soft, hard)
        resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))
    except (ValueError, OSError):  # pragma: no cover
        pass


def _send(out: BinaryIO, message: dict[str, Any]) -> None:
    out.write(json.dumps(message).encode() + b"\n")
    out.flush()


def main(argv: list[str]) -> int:
    caps: dict[str, Any] = json.loads(argv[1]) if len(argv) > 1 else {}
    out = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    _watch_parent(os.getppid())

    import jax

    from rayopt.program import dryrun
    from rayopt.program.errors import ProgramError

    dryrun.warm_up()
    _limit_memory(int(caps.get("data_bytes", 0)))
    _send(out, {"ready": True, "pid": os.getpid()})

    array_cap = int(caps.get("array_cap", dryrun.ARRAY_CAP))
    total_cap = int(caps.get("total_cap", dryrun.TOTAL_CAP))
    for jobs, raw in enumerate(sys.stdin.buffer, start=1):
        job = json.loads(raw)
        _limit_cpu(float(job.get("timeout", 10.0)))
        t0 = time.perf_counter()
        try:
            if job.get("shapes") is not None:  # only the real-shape trace (no run)
                error = dryrun.check_shapes(job["code"], job["shapes"], array_cap=array_cap)
                fp = None
            else:
                error, fp = dryrun.run(
                    job["code"],
                    array_cap=array_cap,
                    total_cap=total_cap,
                    hint_budget=float(job.get("timeout", 10.0)) / 3,
                )
        except MemoryError:
            error, fp = (
                ProgramError(
                    "memory",
                    None,
                    "the program ran out of memory in the sandbox; use smaller arrays.",
                ),
                None,
            )
        except Exception as e:  # noqa: BLE001 - a bug in the dry run, not the program
            error = ProgramError(
                "internal", None, f"dry run failed: {type(e).__name__}: {str(e)[:150]}"
            )
            fp = None
        if jobs % 25 == 0:  # compiled probes pile up in JAX's caches
            jax.clear_caches()
        _send(
            out,
            {
                "id": job.get("id"),
                "error": error.to_dict() if error is not None else None,
                "fingerprint": fp,
                "seconds": time.perf_counter() - t0,
                "rss": rss_bytes(),
            },
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
