"""The append-only Parquet journal: atomic part files, readable at any moment.

A writer turns each batch of rows into one Parquet file written under a hidden name
(``.tmp-*``, which pyarrow's dataset discovery ignores) and renamed into place, so a
reader or a crash never sees half a file. Readers use ``pyarrow.dataset`` with column
pruning and filters; pandas, polars and duckdb read the same directory.

Many small part files make reading slow (each costs a footer and column chunks), so
:func:`compact` merges them: it writes ``compact-<LAST>.parquet`` holding every row of
the part files up to ``part-<LAST>`` and then deletes those parts. :func:`journal_files`
ignores parts (and older compactions) a compaction covers, so a reader never sees a row
twice, even between the compaction's rename and its deletions; a writer may keep adding
parts meanwhile (their names sort later). Other tools reading the raw directory should
read it when no compaction is under way (the driver compacts when a run ends).
"""

from __future__ import annotations

import itertools
import os
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from rayopt.results.schema import SCHEMA

JOURNAL_DIR = "journal"


def journal_dir(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / JOURNAL_DIR


def to_table(rows: Sequence[Mapping[str, Any]]) -> pa.Table:
    """Rows (dicts with any subset of the schema's columns) as a table of the schema."""
    unknown = {k for r in rows for k in r} - set(SCHEMA.names)
    if unknown:
        raise KeyError(f"columns not in the journal schema: {sorted(unknown)}")
    columns = {name: [r.get(name) for r in rows] for name in SCHEMA.names}
    return pa.Table.from_pydict(columns, schema=SCHEMA)


class JournalWriter:
    """Appends rows to ``RUN_DIR/journal`` as atomic part files; one writer per run
    directory (the driver)."""

    def __init__(self, run_dir: str | os.PathLike):
        self.dir = journal_dir(run_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self._session = uuid.uuid4().hex[:8]
        self._seq = itertools.count()
        self.rows_written = 0

    def write(self, rows: Sequence[Mapping[str, Any]]) -> Path | None:
        """Write ``rows`` as one part file; returns its path (None for no rows)."""
        if not rows:
            return None
        now = time.time()
        table = to_table([{"time": now, **r} for r in rows])
        name = f"part-{int(now * 1000):013d}-{self._session}-{next(self._seq):06d}.parquet"
        tmp = self.dir / f".tmp-{name}"
        pq.write_table(table, tmp, compression="zstd")
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, self.dir / name)
        self.rows_written += len(rows)
        return self.dir / name


def journal_files(directory: str | os.PathLike) -> list[Path]:
    """The files holding a journal directory's rows, each row in exactly one of them:
    the newest compaction and the parts written after the last part it covers."""
    directory = Path(directory)
    if directory.is_file():
        return [directory]
    files = [f for f in directory.rglob("*.parquet") if not f.name.startswith((".", "_"))]
    compactions = sorted(f for f in files if f.name.startswith("compact-"))
    if not compactions:
        return sorted(files)
    newest = compactions[-1]
    covered = "part-" + newest.name[len("compact-") :]  # the last part file it holds
    rest = [f for f in files if f.name.startswith("part-") and f.name > covered]
    others = [f for f in files if not f.name.startswith(("part-", "compact-"))]
    return [newest, *sorted(rest), *sorted(others)]


def dataset(paths: str | os.PathLike | Iterable[str | os.PathLike]) -> ds.Dataset:
    """A pyarrow dataset over one or many run directories (or journal directories)."""
    if isinstance(paths, str | os.PathLike):
        paths = [paths]
    files = []
    for p in paths:
        p = Path(p)
        if (p / JOURNAL_DIR).is_dir():
            p = p / JOURNAL_DIR
        if not p.exists():
            raise FileNotFoundError(f"no journal at {p}")
        files += [str(f) for f in journal_files(p)]
    return ds.dataset(files, schema=SCHEMA, format="parquet")


def compact(run_dir: str | os.PathLike, min_files: int = 2) -> int:
    """Merge a journal's files into one (see the module docstring); returns how many
    files it removed (0 when fewer than ``min_files`` files hold the rows)."""
    directory = journal_dir(run_dir) if (Path(run_dir) / JOURNAL_DIR).is_dir() else Path(run_dir)
    files = journal_files(directory)
    parts = [f for f in files if f.name.startswith("part-")]
    if len(files) < min_files or not parts:
        return 0
    last = max(parts, key=lambda f: f.name)
    table = ds.dataset([str(f) for f in files], schema=SCHEMA, format="parquet").to_table()
    name = "compact-" + last.name[len("part-") :]
    tmp = directory / f".tmp-{name}"
    pq.write_table(table, tmp, compression="zstd", row_group_size=100_000)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, directory / name)
    covered = "part-" + name[len("compact-") :]
    # Invisible to readers now: the parts it covers (also ones an interrupted compaction
    # left behind) and older compactions. Never a newer compaction: one that ran
    # meanwhile and finished first has deleted parts this one does not hold.
    stale = [
        f
        for f in directory.glob("*.parquet")
        if (f.name.startswith("compact-") and f.name < name)
        or (f.name.startswith("part-") and f.name <= covered)
    ]
    for f in stale:
        f.unlink(missing_ok=True)
    return len(stale)


def read(
    paths: str | os.PathLike | Iterable[str | os.PathLike],
    columns: Sequence[str] | None = None,
    filter: ds.Expression | None = None,
) -> pa.Table:
    """Read journal rows (all columns unless ``columns``), optionally filtered."""
    return dataset(paths).to_table(columns=list(columns) if columns else None, filter=filter)
