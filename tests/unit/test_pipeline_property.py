"""Property: through the whole engine (real tiny model, real files), every input row ends exactly once in the
output or the error file, and good rows keep their order, whatever mix of bad rows and part sizes."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from poolcli.drivers.run import run_file_request
from poolcli.request import Request

WORDS = st.lists(
    st.sampled_from("the cat dog river city paris hello world data row".split()), min_size=1, max_size=30
).map(" ".join)
JSONL_ROW = st.one_of(
    WORDS.map(lambda t: ("ok", json.dumps({"text": t}).encode())),
    st.sampled_from([b'{"text": ', b"[]", b'{"text": 3}', b'{"text": " "}', b'{"x": 1}', b'{"text": "\xff"}']).map(
        lambda line: ("bad", line)
    ),
)
SETTINGS = settings(max_examples=6, deadline=None, suppress_health_check=list(HealthCheck))


def _run(tmp: Path, model: Path, src: Path, out: str, part_rows: int, window_rows: int) -> tuple[list, list]:  # type: ignore[type-arg]
    errors = tmp / "errors.jsonl"
    errors.unlink(missing_ok=True)
    req = Request(
        task="embed",
        input=str(src),
        output=out,
        errors=str(errors),
        model=str(model),
        part_rows=part_rows,
        window_rows=window_rows,
        max_batch_tokens=64,
        overwrite=True,
        quiet=True,
    )
    assert run_file_request(req).error is None
    table = pq.read_table(out)
    errs = [json.loads(line) for line in errors.read_text().splitlines()]
    return table.column("id").to_pylist(), errs


@SETTINGS
@given(rows=st.lists(JSONL_ROW, min_size=1, max_size=30), window=st.integers(1, 4), parts=st.integers(1, 3))
def test_jsonl_exactly_once_through_the_engine(tmp_path_factory, tiny_bert: Path, rows, window, parts) -> None:  # type: ignore[no-untyped-def]
    tmp = tmp_path_factory.mktemp("prop")
    src = tmp / "in.jsonl"
    src.write_bytes(b"\n".join(line for _, line in rows))
    ids, errs = _run(tmp, tiny_bert, src, str(tmp / "out.parquet"), window * parts, window)
    good = [i for i, (kind, _) in enumerate(rows) if kind == "ok"]
    assert ids == good  # in input order
    assert sorted(e["row"] for e in errs) == [i for i, (kind, _) in enumerate(rows) if kind == "bad"]


@SETTINGS
@given(values=st.lists(st.one_of(WORDS, st.just(""), st.none()), min_size=1, max_size=30), window=st.integers(1, 4))
def test_parquet_exactly_once_through_the_engine(tmp_path_factory, tiny_bert: Path, values, window) -> None:  # type: ignore[no-untyped-def]
    tmp = tmp_path_factory.mktemp("prop")
    src = tmp / "in.parquet"
    keys = [f"k{i}" for i in range(len(values))]
    pq.write_table(pa.table({"id": keys, "text": pa.array(values, pa.large_string())}), src, row_group_size=5)
    ids, errs = _run(tmp, tiny_bert, src, f"{tmp}/out/", window * 2, window)
    assert ids == [k for k, v in zip(keys, values, strict=True) if v]
    assert sorted(e["id"] for e in errs) == sorted(k for k, v in zip(keys, values, strict=True) if not v)
