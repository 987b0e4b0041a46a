"""The Parquet journal: atomic part files, one schema, compaction without double rows."""

from __future__ import annotations

import shutil

import pyarrow.parquet as pq
import pytest

from rayopt.results.journal import JournalWriter, compact, journal_dir, journal_files, read
from rayopt.results.schema import SCHEMA


def _rows(n: int, start: int = 0) -> list[dict]:
    return [
        dict(
            row_type="evaluation",
            run_id="r",
            candidate_id=f"c{i}",
            env="e",
            seed=i,
            final_return=float(i),
            return_curve=[0.0, float(i)],
        )
        for i in range(start, start + n)
    ]


def test_parts_are_schema_files_and_unknown_columns_are_refused(tmp_path):
    w = JournalWriter(tmp_path)
    w.write(_rows(3))
    w.write([dict(row_type="event", run_id="r", event="created", candidate_id="c0", code="x")])
    files = list(journal_dir(tmp_path).iterdir())
    assert len(files) == 2 and not any(f.name.startswith(".tmp") for f in files)
    assert all(pq.read_schema(f).equals(SCHEMA, check_metadata=False) for f in files)
    assert read(tmp_path).num_rows == 4
    with pytest.raises(KeyError, match="not in the journal schema"):
        w.write([dict(run_id="r", colour="blue")])


def test_compaction_merges_and_readers_never_see_a_row_twice(tmp_path):
    w = JournalWriter(tmp_path)
    for k in range(5):
        w.write(_rows(2, start=2 * k))
    before = read(tmp_path).to_pandas().sort_values("seed").reset_index(drop=True)
    parts = journal_files(journal_dir(tmp_path))

    # a compaction that stopped between its rename and its deletions
    backup = tmp_path / "backup"
    shutil.copytree(journal_dir(tmp_path), backup)
    assert compact(tmp_path) == 5
    for p in parts:
        shutil.copy(backup / p.name, p)  # the covered parts are back on disk
    assert len(list(journal_dir(tmp_path).glob("*.parquet"))) == 6
    after = read(tmp_path).to_pandas().sort_values("seed").reset_index(drop=True)
    assert after.equals(before)  # no row twice: the compaction covers those parts

    w.write(_rows(1, start=100))  # a writer may go on: later parts stay visible
    assert read(tmp_path).num_rows == 11
    assert compact(tmp_path) == 7  # the compaction, 5 stale parts, 1 new part
    assert [f.name.split("-")[0] for f in journal_dir(tmp_path).iterdir()] == ["compact"]
    assert sorted(read(tmp_path, columns=["seed"]).column("seed").to_pylist()) == [*range(10), 100]
    assert compact(tmp_path) == 0  # one file: nothing to do


def test_an_older_compaction_finishing_last_keeps_the_newer_one(tmp_path, monkeypatch):
    """Two compactions overlap: the newer one (more parts) finishes first and deletes its
    parts; the older one must then not delete the newer compaction (rows would be lost)."""
    from rayopt.results import journal

    w = JournalWriter(tmp_path)
    for k in range(3):
        w.write(_rows(2, start=2 * k))
    real_write = journal.pq.write_table
    newer: list[int] = []

    def write_table(table, where, **kwargs):
        if not newer:  # the older compaction has listed its 3 parts; the newer one runs now
            newer.append(0)
            for k in range(3, 5):
                w.write(_rows(2, start=2 * k))
            newer[0] = compact(tmp_path)
        real_write(table, where, **kwargs)

    monkeypatch.setattr(journal.pq, "write_table", write_table)
    compact(tmp_path)
    assert newer == [5]  # the newer compaction covered all 5 parts
    names = sorted(f.name for f in journal_dir(tmp_path).glob("*.parquet"))
    assert [n.split("-")[0] for n in names] == ["compact", "compact"]
    assert sorted(read(tmp_path, columns=["seed"]).column("seed").to_pylist()) == [*range(10)]
    monkeypatch.undo()
    w.write(_rows(1, start=100))
    assert compact(tmp_path) == 3  # both compactions and the new part
    assert sorted(read(tmp_path, columns=["seed"]).column("seed").to_pylist()) == [*range(10), 100]
