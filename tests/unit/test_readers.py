"""Readers: every input row lands exactly once, valid rows in order, whatever mix of bad rows surrounds them."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from poolcli.io.readers import InputSpec, open_source

GOOD = st.text(min_size=1, max_size=20).filter(lambda s: s.strip() != "")
BAD_LINES = {
    "INVALID_JSON": st.just(b'{"text": "unterminated'),
    "NOT_OBJECT": st.sampled_from([b"[1, 2]", b'"just a string"', b"3", b"null"]),
    "MISSING_FIELD": st.just(b'{"other": "x"}'),
    "WRONG_TYPE": st.sampled_from([b'{"text": 5}', b'{"text": ["a"]}', b'{"text": {"a": 1}}']),
    "EMPTY_TEXT": st.sampled_from([b'{"text": ""}', b'{"text": "  \\t "}']),
    "INVALID_UTF8": st.just(b'{"text": "\xc3\x28 broken"}'),
}
ROW = st.one_of(
    GOOD.map(lambda t: ("OK", t)),
    *[s.map(lambda line, c=code: (c, line)) for code, s in BAD_LINES.items()],
)


def _collect(path: Path, window: int, **spec: object) -> tuple[list, list]:  # type: ignore[type-arg]
    source = open_source(InputSpec(str(path), **spec))  # type: ignore[arg-type]
    good, bad = [], []
    for block in source.blocks(window):
        assert block.n_rows == len(block.texts) + len(block.errors)
        good.extend(zip(block.rows, block.ids, block.texts, strict=True))
        bad.extend(block.errors)
    return good, bad


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(ROW, max_size=40), window=st.integers(1, 7), final_newline=st.booleans())
def test_jsonl_exactly_once(tmp_path: Path, rows: list, window: int, final_newline: bool) -> None:  # type: ignore[type-arg]
    lines = [json.dumps({"text": v}).encode() if code == "OK" else v for code, v in rows]
    path = tmp_path / "in.jsonl"
    path.write_bytes(b"\n".join(lines) + (b"\n" if final_newline and lines else b""))
    good, bad = _collect(path, window)
    assert sorted([r for r, _, _ in good] + [e.row for e in bad]) == list(range(len(rows)))
    assert [t for _, _, t in good] == [v for code, v in rows if code == "OK"]
    assert [r for r, _, _ in good] == sorted(r for r, _, _ in good)
    assert [e.code for e in sorted(bad, key=lambda e: e.row)] == [code for code, _ in rows if code != "OK"]
    assert all(e.line == e.row + 1 for e in bad)  # no blank lines here, so line = row + 1
    assert [i for _, i, _ in good] == [r for r, _, _ in good]  # no id field: ids are row numbers


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(values=st.lists(st.one_of(GOOD, st.just(""), st.none()), max_size=50), window=st.integers(1, 9))
def test_parquet_exactly_once(tmp_path: Path, values: list, window: int) -> None:  # type: ignore[type-arg]
    path = tmp_path / "in.parquet"
    ids = [f"k{i}" for i in range(len(values))]
    pq.write_table(
        pa.table({"id": pa.array(ids, pa.string()), "text": pa.array(values, pa.string())}), path, row_group_size=7
    )
    good, bad = _collect(path, window)
    assert [i for _, i, _ in good] == [ids[n] for n, v in enumerate(values) if v]
    assert {e.id: e.code for e in bad} == {
        ids[n]: ("MISSING_FIELD" if v is None else "EMPTY_TEXT") for n, v in enumerate(values) if not v
    }


def test_id_field_rules(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_text('{"id": 1, "text": "a"}\n{"id": true, "text": "b"}\n{"text": "c"}\n{"id": 4, "text": "d"}\n')
    good, bad = _collect(path, 10)
    assert [i for _, i, _ in good] == [1, 4]
    assert [(e.row, e.code) for e in bad] == [(1, "WRONG_TYPE"), (2, "MISSING_FIELD")]
    good, bad = _collect(path, 10, id_field=None, text_field="text")
    assert len(good) == 2  # 'id' is present in the first row, so it is the id field


def test_keep_columns_and_csv_strings(tmp_path: Path) -> None:
    path = tmp_path / "in.csv"
    path.write_bytes(b'id,text,lang\n1,"hello, world",en\n2,\xff\xfe,de\n3,"multi\nline",fr\n')
    source = open_source(InputSpec(str(path), keep_columns=("lang",)))
    blocks = list(source.blocks(100))
    assert blocks[0].ids == ["1", "3"]
    assert blocks[0].texts == ["hello, world", "multi\nline"]
    assert blocks[0].keep == {"lang": ["en", "fr"]}
    assert [(e.id, e.code) for e in blocks[0].errors] == [("2", "INVALID_UTF8")]


def test_tsv_has_no_quoting_and_csv_bad_rows_are_error_rows(tmp_path: Path) -> None:
    tsv = tmp_path / "in.tsv"
    tsv.write_text('id\ttext\n1\t"quoted start only\n2\tsecond row\n3\t"x" y\n')
    block = next(open_source(InputSpec(str(tsv))).blocks(100))
    assert block.ids == ["1", "2", "3"]
    assert block.texts == ['"quoted start only', "second row", '"x" y']
    csv = tmp_path / "in.csv"
    csv.write_text("id,text\n1,good\n2,a,b\n3,fine\n")
    blocks = list(open_source(InputSpec(str(csv))).blocks(100))
    assert [i for b in blocks for i in b.ids] == ["1", "3"]
    errors = [e for b in blocks for e in b.errors]
    assert [(e.row, e.line, e.code) for e in errors] == [(1, 3, "MALFORMED_ROW")]
    assert sum(b.n_rows for b in blocks) == 3


def test_bom_big_ids_and_corrupt_gzip(tmp_path: Path) -> None:
    import gzip

    import pytest

    from poolcli.errors import DataError

    path = tmp_path / "in.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"id": 1, "text": "first"}\n{"id": 18446744073709551616, "text": "big"}\n')
    good, bad = _collect(path, 10)
    assert [t for _, _, t in good] == ["first"]
    assert [(e.row, e.code) for e in bad] == [(1, "WRONG_TYPE")]
    gz = tmp_path / "in.jsonl.gz"
    gz.write_bytes(gzip.compress(b'{"text": "a"}\n' * 1000)[:-20])
    with pytest.raises(DataError, match="in.jsonl.gz"):
        _collect(gz, 10)


def test_parquet_dictionary_text_column(tmp_path: Path) -> None:
    path = tmp_path / "in.parquet"
    text = pa.array(["a b", "c d", "a b"]).dictionary_encode()
    pq.write_table(pa.table({"text": text}), path)
    good, bad = _collect(path, 10)
    assert [t for _, _, t in good] == ["a b", "c d", "a b"] and not bad


def test_rows_carry_source_and_line(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_text('{"text": "a"}\n\n{"text": "b"}\n')
    block = next(open_source(InputSpec(str(path))).blocks(10))
    assert block.lines == [1, 3] and block.sources == [str(path)] * 2
