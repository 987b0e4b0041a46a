"""The append-only Parquet journal: atomic part files, readable at any moment.

A writer turns each batch of rows into one Parquet file written under a hidden name
(``.tmp-*``, which pyarrow's dataset discovery ignores) and renamed into place, so a
reader or a crash never sees half a file. Readers use ``pyarrow.dataset`` with column
pruning and filters; pandas, polars and duckdb read the same directory.
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


def dataset(paths: str | os.PathLike | Iterable[str | os.PathLike]) -> ds.Dataset:
    """A pyarrow dataset over one or many run directories (or journal directories)."""
    if isinstance(paths, str | os.PathLike):
        paths = [paths]
    dirs = []
    for p in paths:
        p = Path(p)
        if (p / JOURNAL_DIR).is_dir():
            p = p / JOURNAL_DIR
        if not p.exists():
            raise FileNotFoundError(f"no journal at {p}")
        dirs.append(str(p))
    files = sorted(
        str(f) for d in dirs for f in (Path(d).rglob("*.parquet") if Path(d).is_dir() else [Path(d)])
        if not f.name.startswith((".", "_"))
    )
    return ds.dataset(files, schema=SCHEMA, format="parquet")


def read(
    paths: str | os.PathLike | Iterable[str | os.PathLike],
    columns: Sequence[str] | None = None,
    filter: ds.Expression | None = None,
) -> pa.Table:
    """Read journal rows (all columns unless ``columns``), optionally filtered."""
    return dataset(paths).to_table(columns=list(columns) if columns else None, filter=filter)
