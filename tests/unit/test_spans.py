"""Spans: an input read span by span (as Ray workers read it) gives exactly the rows, ids, error rows and line
numbers of one read from the start, for every format and whatever the span size."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from poolcli.errors import UsageError
from poolcli.io.readers import InputSpec, Source, open_source
from poolcli.io.spans import plan_spans

JSONL_LINES = st.sampled_from(
    [
        b'{"id": 1, "text": "a"}',
        b'{"id": 2, "text": "b c"}',
        b'{"id": "s", "text": "string id"}',
        b'{"text": "no id"}',
        b'{"id": 3, "text": ""}',
        b'{"id": 4, "text": 5}',
        b"[1, 2]",
        b'{"id": 5, "text": "unterminated',
        b'{"id": 6, "text": "\xc3\x28"}',
        b"",
        b"   ",
        b'{"id": 7, "text": "x", "extra": "kept"}',
    ]
)


def _read(source: Source, window: int) -> list[tuple[Any, ...]]:
    out: list[tuple[Any, ...]] = []
    for block in source.blocks(window):
        assert block.n_rows == len(block.texts) + len(block.errors)
        out += [("ok", r, i, t, s, ln, tuple(block.keep[c][k] for c in block.keep))
                for k, (r, i, t, s, ln) in enumerate(zip(block.rows, block.ids, block.texts, block.sources,
                                                         block.lines, strict=True))]  # fmt: skip
        out += [("err", e.row, e.id, e.code, e.message, e.source, e.line) for e in block.errors]
    return sorted(out, key=lambda r: r[1])


def _by_spans(source: Source, size: int, window: int) -> list[tuple[Any, ...]]:
    settled, _ = source.settle(window)
    spans = plan_spans(source, size)
    assert [s.index for s in spans] == list(range(len(spans)))
    out: list[tuple[Any, ...]] = []
    for span in spans:
        got = _read(source.for_span(span, settled), window)
        assert len(got) == span.n_rows and [r[1] for r in got] == list(
            range(span.first_row, span.first_row + span.n_rows)
        )
        out += got
    return out


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    lines=st.lists(JSONL_LINES, max_size=30),
    size=st.integers(1, 8),
    window=st.integers(1, 5),
    bom=st.booleans(),
    crlf=st.booleans(),
)
def test_jsonl_spans_read_like_the_whole(
    tmp_path: Path, lines: list[bytes], size: int, window: int, bom: bool, crlf: bool
) -> None:
    path = tmp_path / "in.jsonl"
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + (b"\r\n" if crlf else b"\n").join(lines))
    source = open_source(InputSpec(str(path), keep_columns=("extra",)))
    assert _by_spans(source, size, window) == _read(source, window)


def test_every_format_and_several_files(tmp_path: Path) -> None:
    texts = [f"text {i}" if i % 5 else "" for i in range(23)]
    d = tmp_path / "pq"
    d.mkdir()
    for k in range(3):
        chunk = list(range(k * 8, min(23, k * 8 + 8)))
        pq.write_table(
            pa.table({"id": [f"r{i}" for i in chunk], "text": [texts[i] for i in chunk]}),
            d / f"f{k}.parquet",
            row_group_size=3,
        )
    (tmp_path / "a.txt").write_text("\n".join(t or " " for t in texts) + "\n")
    rows = ["id,text", *[f'{i},"{t}\nsecond line"' for i, t in enumerate(texts)], "x,y,too many"]
    (tmp_path / "a.csv").write_text("\n".join(rows) + "\n")
    (tmp_path / "b.jsonl.gz").write_bytes(gzip.compress(b"\n".join(json.dumps({"text": t}).encode() for t in texts)))
    cases = [
        (str(d), {"id_field": "id"}),
        (str(tmp_path / "a.txt"), {}),
        (str(tmp_path / "a.csv"), {"id_field": "id"}),
        (str(tmp_path / "b.jsonl.gz"), {}),
    ]
    for path, spec in cases:
        source = open_source(InputSpec(path, **spec))  # type: ignore[arg-type]
        whole = _read(source, 4)
        assert len(whole) == 23 + (1 if path.endswith(".csv") else 0), path
        for size in (1, 4, 5, 100):
            assert _by_spans(source, size, 4) == whole, (path, size)
    parquet = open_source(InputSpec(str(d), id_field="id"))
    assert [(s.path.rsplit("/", 1)[-1], s.offset, s.n_rows) for s in plan_spans(parquet, 5)] == [
        ("f0.parquet", 0, 5), ("f0.parquet", 5, 3), ("f1.parquet", 0, 5), ("f1.parquet", 5, 3), ("f2.parquet", 0, 5),
        ("f2.parquet", 5, 2),
    ]  # fmt: skip
    # Compressed and CSV files are one span each: a record boundary is only found by a full parse.
    assert len(plan_spans(open_source(InputSpec(str(tmp_path / "b.jsonl.gz"))), 2)) == 1


def test_ids_typed_by_the_first_valid_id_of_the_whole_input(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    lines = ['{"id": [1], "text": "bad id"}', '{"id": 7, "text": "a"}', '{"id": "x", "text": "b"}',
             '{"id": 8, "text": "c"}']  # fmt: skip
    path.write_text("\n".join(lines) + "\n")
    source = open_source(InputSpec(str(path)))
    settled, first = source.settle(2)
    assert (settled.id_field, settled.id_type, settled.type_row) == ("id", "int", 1)
    assert first is not None and first.ids == [7]
    got = _by_spans(source, 1, 1)
    assert got == _read(source, 1)
    assert [r[3] for r in got if r[0] == "err"] == ["WRONG_TYPE", "WRONG_TYPE"]  # [1], then "x" after an int


def test_standard_input_cannot_be_cut(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="standard input"):
        plan_spans(open_source(InputSpec("-")), 10)
