"""PartStore on small tables, without a model: commit, resume, verification, job commit, fingerprint and lock."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from poolcli.errors import BusyError, ConfigError, InternalError
from poolcli.io.parts import Layout, PartStore
from poolcli.io.records import ErrorRow

SCHEMA = pa.schema([pa.field("id", pa.int64()), pa.field("embedding", pa.list_(pa.float32(), 2))])


def _table(ids: list[int]) -> pa.Table:
    return pa.table({"id": ids, "embedding": [[float(i), 1.0] for i in ids]}, schema=SCHEMA)


def _store(out: Path, kind: str = "dir", fp: str = "fp1") -> PartStore:
    return PartStore(Layout.for_output(str(out), kind), fp, {"task": "embed"})  # type: ignore[arg-type]


def _commit(store: PartStore, k: int, ids: list[int], errors: list[int] = ()) -> None:  # type: ignore[assignment]
    w = store.begin(k, k * 3)
    w.write(_table(ids))
    w.errors.extend(ErrorRow(id=e, source="x", code="EMPTY_TEXT", message="empty", row=e) for e in errors)
    w.rows_in = len(ids) + len(errors)
    w.commit()


def test_parts_commit_resume_and_job_commit(tmp_path: Path) -> None:
    out = tmp_path / "out"
    store = _store(out)
    assert store.open(overwrite=False) is False
    _commit(store, 0, [0, 1], errors=[2])
    store.close()
    # A new run of the same fingerprint finds part 0 done and verified.
    store = _store(out)
    assert store.open(overwrite=False) is False
    assert sorted(store.done) == [0] and store.done[0].rows_ok == 2 and store.done[0].rows_err == 1
    _commit(store, 1, [3, 4, 5])
    manifest = store.finish(2, SCHEMA, out / "_errors.jsonl")
    store.close()
    assert manifest["rows"] == 5 and manifest["errors"] == 1 and manifest["rows_in"] == 6
    assert (out / "_SUCCESS").read_text().strip()
    assert pq.read_table(out / "part-00001.parquet").column("id").to_pylist() == [3, 4, 5]
    assert pq.read_schema(out / "part-00000.parquet").metadata[b"poolcli"]  # the run's identity travels along
    assert [json.loads(line)["row"] for line in (out / "_errors.jsonl").read_text().splitlines()] == [2]
    # Complete: a rerun is a no-op.
    again = _store(out)
    assert again.open(overwrite=False) is True
    again.close()


def test_a_tampered_part_is_not_trusted(tmp_path: Path) -> None:
    out = tmp_path / "out"
    store = _store(out)
    store.open(overwrite=False)
    _commit(store, 0, [0, 1])
    _commit(store, 1, [2])
    store.close()
    (out / "part-00001.parquet").write_bytes(b"PAR1 torn")
    store = _store(out)
    store.open(overwrite=False)
    assert sorted(store.done) == [0]
    with pytest.raises(InternalError, match="no done-marker"):
        store.finish(2, SCHEMA, None)
    store.close()


def test_single_file_output_is_assembled_and_state_removed(tmp_path: Path) -> None:
    out = tmp_path / "out.parquet"
    store = _store(out, "file")
    store.open(overwrite=False)
    _commit(store, 0, [0, 1])
    _commit(store, 1, [2])
    store.finish(2, SCHEMA, None)
    store.close()
    assert pq.read_table(out).column("id").to_pylist() == [0, 1, 2]
    assert not (tmp_path / ".out.parquet.poolcli").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.parquet"]


def test_fingerprint_guard_and_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "out"
    store = _store(out, fp="a")
    store.open(overwrite=False)
    _commit(store, 0, [0])
    store.close()
    with pytest.raises(ConfigError, match="different fingerprint"):
        _store(out, fp="b").open(overwrite=False)
    other = _store(out, fp="b")
    assert other.open(overwrite=True) is False
    assert other.done == {}  # the other run's parts are not trusted
    other.close()


def test_a_run_that_committed_nothing_does_not_block_another(tmp_path: Path) -> None:
    """A run refused or stopped before its first part leaves only its state: a run with another fingerprint (the
    corrected command) starts afresh in its place instead of being refused."""
    out = tmp_path / "out"
    _store(out, fp="a").open(overwrite=False)  # opened, nothing committed, never closed cleanly
    other = _store(out, fp="b")
    assert other.open(overwrite=False) is False and other.done == {}
    _commit(other, 0, [0])
    other.close()
    with pytest.raises(ConfigError, match="committed 1 part"):
        _store(out, fp="c").open(overwrite=False)


def test_a_stale_state_does_not_hide_another_commands_output(tmp_path: Path) -> None:
    """A finished output of one command, then a run of another that committed nothing: a third command is still
    refused (the finished output is not its own), as if that state were not there."""
    out = tmp_path / "out.parquet"
    first = _store(out, fp="a")
    first.open(overwrite=False)
    _commit(first, 0, [0])
    first.finish(1, SCHEMA, None)
    first.close()
    _store(out, fp="b").open(overwrite=True)  # took the output, committed nothing
    with pytest.raises(ConfigError, match="already exists and holds"):
        _store(out, fp="c").open(overwrite=False)


def test_one_run_per_output(tmp_path: Path) -> None:
    out = tmp_path / "out"
    first = _store(out)
    first.open(overwrite=False)
    with pytest.raises(BusyError):
        _store(out).open(overwrite=False)
    first.close()
    second = _store(out)
    second.open(overwrite=False)
    second.close()
