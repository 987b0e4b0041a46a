"""One pass over a journal for everything analysis needs.

A journal is many small part files (one per write: a real 1M-row discovery has tens of
thousands), and with pyarrow every scan pays each file's footer (~0.5 ms). So analysis
scans each directory once: the rows it can use (evaluations of stage ``full``,
``sweep`` or ``confirm`` that finished, and candidate events), the columns it uses
(never ``code`` or ``return_curve``), and, for every ``created`` event, the file it is
in, so that code is later read from those few files only.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from rayopt.results.journal import dataset

#: candidate columns of ``created`` events (never ``code``: it is read per request)
CANDIDATE_COLUMNS = [
    "run_id",
    "meta_seed",
    "candidate_id",
    "parent_id",
    "optimizer",
    "mutator",
    "idea",
    "new_literals",
]
#: every column analysis reads: the candidate columns, then evaluation and sweep columns
COLUMNS = [
    *CANDIDATE_COLUMNS,
    "row_type",
    "event",
    "time",
    "env",
    "seed",
    "stage",
    "status",
    "final_return",
    "auc",
    "sweep",
    "axis",
    "axis_value",
]
EVENTS = [
    "created",
    "evaluated",
    "duplicate",
    "invalid",
    "rejected",
    "screened_out",
    "evaluation_failed",
]
FILTER = (
    (pc.field("row_type") == "evaluation")
    & pc.field("stage").isin(["full", "sweep", "confirm"])
    & pc.field("status").isin(["ok", "nonfinite"])
) | ((pc.field("row_type") == "event") & pc.field("event").isin(EVENTS))

#: (sweep or "", run_id or "", candidate_id or "", optimizer or "") of a created event
CreatedKey = tuple[str, str, str, str]


@dataclasses.dataclass
class Scan:
    """The analysis rows of one run or sweep directory."""

    path: Path
    table: pa.Table
    created_in: dict[CreatedKey, str]  # -> the part file holding that created event

    def evaluations(self, stage: str) -> pa.Table:
        t = self.table
        return t.filter(pc.and_(pc.equal(t["row_type"], "evaluation"), pc.equal(t["stage"], stage)))

    def events(self) -> pa.Table:
        return self.table.filter(pc.equal(self.table["row_type"], "event"))

    def code(self, keys: Iterable[CreatedKey]) -> dict[CreatedKey, str]:
        """The ``code`` of created events ``keys``, read from their files only."""
        by_file: dict[str, set[CreatedKey]] = {}
        for k in keys:
            f = self.created_in.get(k)
            if f is not None:
                by_file.setdefault(f, set()).add(k)
        out: dict[CreatedKey, str] = {}
        for f, wanted in by_file.items():
            t = pq.read_table(
                f, columns=["event", "sweep", "run_id", "candidate_id", "optimizer", "code"]
            )
            for row in t.to_pylist():
                k = created_key(row)
                if row["event"] == "created" and k in wanted and row["code"] is not None:
                    out[k] = row["code"]
        return out


def created_key(row: dict) -> CreatedKey:
    return (
        row.get("sweep") or "",
        row.get("run_id") or "",
        row.get("candidate_id") or "",
        row.get("optimizer") or "",
    )


def scan(path: str | os.PathLike) -> Scan:
    """Read the analysis rows of one run or sweep directory in one pass."""
    d = dataset(path)
    batches = []
    created_in: dict[CreatedKey, str] = {}
    for tagged in d.scanner(columns=COLUMNS, filter=FILTER).scan_batches():
        b = tagged.record_batch
        if b.num_rows == 0:
            continue
        batches.append(b)
        created = pc.equal(b.column("event"), "created")
        if pc.any(created).as_py():
            rows = (
                pa.Table.from_batches([b])
                .filter(created)
                .select(["sweep", "run_id", "candidate_id", "optimizer"])
                .to_pylist()
            )
            for row in rows:
                created_in[created_key(row)] = tagged.fragment.path
    schema = d.schema
    # one chunk per column: compute on a table of 20k tiny chunks is many times slower
    table = (
        pa.Table.from_batches(batches).combine_chunks()
        if batches
        else pa.table({c: pa.array([], schema.field(c).type) for c in COLUMNS})
    )
    return Scan(Path(path), table, created_in)


def scans(paths: str | os.PathLike | Sequence[str | os.PathLike] | Sequence[Scan]) -> list[Scan]:
    """``paths`` scanned (already scanned ones are passed through)."""
    if isinstance(paths, str | os.PathLike | Scan):
        paths = [paths]  # type: ignore[list-item]
    return [p if isinstance(p, Scan) else scan(p) for p in paths]
