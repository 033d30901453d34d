"""--output-dtype int8/uint8: vectors bucketed in per-dimension ranges calibrated on a sample, exactly as
Sentence-Transformers' `quantize_embeddings` buckets them, with the ranges in the file's metadata and reused by a
resumed run; binary/ubinary for token-embed."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import msgspec
import numpy as np
import pyarrow.parquet as pq
import pytest

from tests.conftest import read_vectors, run_cli, summary_of, write_jsonl

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    from sentence_transformers.quantization import quantize_embeddings

WORDS = "the quick brown fox jumps over lazy dog paris capital france city river model vector query".split()


def _texts(n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(2, 12)))) for _ in range(n)]


def _ranges(path: Path) -> dict:
    return json.loads(pq.read_schema(path).metadata[b"poolcli_output_ranges"])


def _stored(path: Path, column: str = "embedding") -> np.ndarray:
    return np.asarray(pq.read_table(path).column(column).to_pylist())


def test_scalar_outputs_equal_sentence_transformers(tiny_bert: Path, tmp_path: Path) -> None:
    """Default calibration (the input's first rows): the stored buckets equal quantize_embeddings of the float32
    run's vectors calibrated on the same vectors; the ranges round-trip through the metadata and dequantize."""
    texts = _texts(40, seed=1)
    src = write_jsonl(tmp_path / "in.jsonl", [{"id": f"r{i}", "text": t} for i, t in enumerate(texts)])
    floats = tmp_path / "f.parquet"
    assert run_cli("embed", src, "-m", tiny_bert, "-o", floats).returncode == 0
    _, vectors = read_vectors(floats)
    for precision in ("int8", "uint8"):
        out = tmp_path / f"{precision}.parquet"
        proc = run_cli("embed", src, "-m", tiny_bert, "-o", out, "--output-dtype", precision)
        assert proc.returncode == 0, proc.stderr
        assert "calibrated on 40 rows" in proc.stderr  # fewer than 100: the run says so, as ST does
        summary = summary_of(proc)["output_ranges"]
        assert summary == {"precision": precision, "rows": 40, "vectors": 40, "source": "input"}
        field = pq.read_schema(out).field("embedding")
        assert str(field.type) == f"fixed_size_list<element: {precision}>[32]"
        expected = quantize_embeddings(vectors, precision=precision, calibration_embeddings=vectors)
        got = _stored(out).astype(expected.dtype)
        np.testing.assert_array_equal(got, expected)
        recorded = _ranges(out)
        ranges = np.asarray([recorded["min"], recorded["max"]], dtype=np.float32)
        np.testing.assert_array_equal(ranges, np.vstack([vectors.min(0), vectors.max(0)]))
        np.testing.assert_array_equal(quantize_embeddings(vectors, precision=precision, ranges=ranges), expected)
        # A reader dequantizes from the metadata alone: within one bucket of the float32 vector.
        step = (ranges[1] - ranges[0]) / 255
        buckets = got.astype(np.float32) + (128 if precision == "int8" else 0)
        assert np.all(np.abs(ranges[0] + (buckets + 0.5) * step - vectors) <= step * 0.5 + 1e-6)
    # JSONL on stdout: the same buckets, row by row.
    proc = run_cli("embed", src, "-m", tiny_bert, "-o", "-", "--output-dtype", "int8")
    assert proc.returncode == 0, proc.stderr
    streamed = [json.loads(line)["embedding"] for line in proc.stdout.splitlines()]
    np.testing.assert_array_equal(np.asarray(streamed), _stored(tmp_path / "int8.parquet"))


def test_calibration_from_vectors_or_texts(tiny_bert: Path, tmp_path: Path) -> None:
    """--calibration with an earlier float32 output uses its vectors; with texts, the run embeds them; values
    outside the calibrated range land in the end buckets, as quantize_embeddings puts them."""
    cal_texts = _texts(30, seed=2)
    cal = write_jsonl(tmp_path / "cal.jsonl", [{"text": t} for t in cal_texts])
    src = write_jsonl(tmp_path / "in.jsonl", [{"text": t} for t in _texts(25, seed=3)])
    cal_floats, floats = tmp_path / "cal.parquet", tmp_path / "f.parquet"
    assert run_cli("embed", cal, "-m", tiny_bert, "-o", cal_floats).returncode == 0
    assert run_cli("embed", src, "-m", tiny_bert, "-o", floats).returncode == 0
    _, cal_vectors = read_vectors(cal_floats)
    _, vectors = read_vectors(floats)
    expected = quantize_embeddings(vectors, precision="int8", calibration_embeddings=cal_vectors)
    for calibration, kind in ((cal_floats, "vectors"), (cal, "texts")):
        out = tmp_path / f"q-{kind}.parquet"
        proc = run_cli("embed", src, "-m", tiny_bert, "-o", out, "--output-dtype", "int8", "--calibration", calibration)
        assert proc.returncode == 0, proc.stderr
        np.testing.assert_array_equal(_stored(out).astype(np.int8), expected)
        recorded = _ranges(out)
        assert recorded["source"] == str(calibration) and recorded["rows"] == 30
        np.testing.assert_array_equal(np.asarray(recorded["min"], dtype=np.float32), cal_vectors.min(0))
    outside = (vectors < cal_vectors.min(0)) | (vectors > cal_vectors.max(0))
    assert outside.any()  # the clipping case is exercised


def test_resumed_run_reuses_the_recorded_ranges(tiny_bert: Path, tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """A run stopped after its first part resumes without calibrating again (the ranges come from the committed
    part's metadata) and ends with the bytes of an uninterrupted run."""
    rows = [{"id": i, "text": t} for i, t in enumerate(_texts(24, seed=4))]
    rows[12] = {"id": 12}  # no text: an error row in the second part, which --max-errors 0 stops at
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    args = ["-m", tiny_bert, "--output-dtype", "uint8", "--part-rows", "8", "--window-rows", "8"]
    whole = tmp_path / "whole.parquet"
    assert run_cli("embed", src, "-o", whole, *args).returncode == 0
    out = tmp_path / "out.parquet"
    stopped = run_cli("embed", src, "-o", out, *args, "--max-errors", "0")
    assert stopped.returncode == 65 and not out.exists(), stopped.stderr
    import poolcli.engine.ranges as ranges_module

    def no_calibration(*a, **k):  # type: ignore[no-untyped-def]
        raise AssertionError("a resumed run calibrated its ranges again")

    monkeypatch.setattr(ranges_module, "calibrate", no_calibration)
    resumed = run_cli("embed", src, "-o", out, *args)
    assert resumed.returncode == 0, resumed.stderr
    assert summary_of(resumed)["parts_skipped"] == 2 and summary_of(resumed)["errors"] == 1
    assert pq.read_table(out).equals(pq.read_table(whole))
    assert _ranges(out) == _ranges(whole)


def test_token_embed_compact_dtypes(tiny_bert: Path, tmp_path: Path) -> None:
    """token-embed: int8 buckets with ranges over every token vector of the calibration rows, and packed bits,
    equal quantize_embeddings on the float32 run's per-token vectors."""
    src = write_jsonl(tmp_path / "in.jsonl", [{"text": t} for t in _texts(12, seed=5)])
    floats = tmp_path / "f.parquet"
    assert run_cli("token-embed", src, "-m", tiny_bert, "-o", floats, "--output-dtype", "float32").returncode == 0
    docs = [np.asarray(d, dtype=np.float32) for d in pq.read_table(floats).column("embeddings").to_pylist()]
    stacked = np.concatenate(docs)
    for precision in ("int8", "uint8", "binary", "ubinary"):
        out = tmp_path / f"{precision}.parquet"
        proc = run_cli("token-embed", src, "-m", tiny_bert, "-o", out, "--output-dtype", precision)
        assert proc.returncode == 0, proc.stderr
        got = pq.read_table(out).column("embeddings").to_pylist()
        if precision.endswith("int8"):
            expected = quantize_embeddings(docs, precision=precision, calibration_embeddings=stacked)
            assert _ranges(out)["vectors"] == len(stacked)
        else:
            expected = quantize_embeddings(docs, precision=precision)
            assert pq.read_schema(out).field("embeddings").metadata[b"poolcli.dim"] == b"32"
        assert len(got) == len(expected)
        for g, e in zip(got, expected, strict=True):
            np.testing.assert_array_equal(np.asarray(g, dtype=e.dtype), e)


def test_scalar_output_refusals(tiny_bert: Path, tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", [{"text": t} for t in _texts(5, seed=6)])
    proc = run_cli("embed", "-", "-m", tiny_bert, "-o", tmp_path / "o.parquet", "--output-dtype", "int8", stdin=b"")
    assert proc.returncode == 64 and "--calibration FILE" in proc.stderr
    wrong = tmp_path / "wrong.jsonl"
    wrong.write_text(json.dumps({"embedding": [0.5] * 7}) + "\n")
    proc = run_cli(
        "embed", src, "-m", tiny_bert, "-o", tmp_path / "w.parquet", "--output-dtype", "int8", "--calibration", wrong
    )
    assert proc.returncode == 64 and "7 dimensions" in proc.stderr and "Traceback" not in proc.stderr
    planned = run_cli(
        "embed", src, "-m", tiny_bert, "-o", tmp_path / "d.parquet", "--output-dtype", "uint8", "--dry-run"
    )
    assert planned.returncode == 0, planned.stderr
    assert json.loads(planned.stdout)["output"]["schema"][1]["type"] == "fixed_size_list<element: uint8>[32]"
    assert not (tmp_path / "d.parquet").exists()
    quantized = tmp_path / "q.parquet"
    assert run_cli("embed", src, "-m", tiny_bert, "-o", quantized, "--output-dtype", "uint8").returncode == 0
    proc = run_cli(
        "embed",
        src,
        "-m",
        tiny_bert,
        "-o",
        tmp_path / "x.parquet",
        "--output-dtype",
        "int8",
        "--calibration",
        quantized,
    )
    assert proc.returncode == 64 and "float vectors" in proc.stderr
    decoded = msgspec.json.decode(pq.read_schema(quantized).metadata[b"poolcli_output_ranges"])
    assert decoded["precision"] == "uint8" and len(decoded["min"]) == 32


def test_in_memory_calls_refuse_scalar_outputs(tiny_bert: Path) -> None:
    """The Python API has no sample to calibrate on: a clear refusal, while packed bits work (a Path is a model)."""
    import poolcli
    from poolcli.errors import UsageError

    model = poolcli.load(tiny_bert)
    assert model.embed(["the quick fox"], output_dtype="ubinary").shape == (1, 4)
    with pytest.raises(UsageError, match="in-memory calls"):
        model.embed(["the quick fox"], output_dtype="int8")


def test_calibration_files_that_cannot_calibrate(tiny_bert: Path, tmp_path: Path) -> None:
    """Each refused before the model is loaded, the same in a dry run, on one line naming --calibration; a directory
    output (and a glob of its parts) calibrates like the single file."""
    src = write_jsonl(tmp_path / "in.jsonl", [{"text": t} for t in _texts(6, seed=7)])
    args = ("embed", src, "-m", tiny_bert, "--output-dtype", "int8")
    junk = tmp_path / "junk.parquet"
    junk.write_bytes(b"not parquet")
    scalar = tmp_path / "scalar.jsonl"
    scalar.write_text(json.dumps({"embedding": 1.5}) + "\n")
    nan = tmp_path / "nan.jsonl"
    nan.write_text(json.dumps({"embedding": [float("nan")] * 32}).replace("NaN", "NaN") + "\n")
    empty = write_jsonl(tmp_path / "empty.jsonl", [{"text": ""}])
    cases = [("-", 64, "needs a file"), (junk, 65, "not a readable Parquet"), (scalar, 65, "not a list of numbers")]
    cases += [(tmp_path / "missing.jsonl", 66, "--calibration"), (empty, 64, "no usable rows")]
    for calibration, code, message in cases:
        for extra in ((), ("--dry-run",)):
            proc = run_cli(*args, "-o", tmp_path / "o.parquet", "--calibration", calibration, *extra)
            assert proc.returncode == code and message in proc.stderr, (calibration, extra, proc.stderr)
            assert "Traceback" not in proc.stderr and not (tmp_path / "o.parquet").exists()
    floats = tmp_path / "f32"
    assert (
        run_cli("embed", src, "-m", tiny_bert, "-o", f"{floats}/", "--part-rows", "2", "--window-rows", "2").returncode
        == 0
    )
    outs = []
    for calibration in (floats, f"{floats}/part-*.parquet"):
        out = tmp_path / f"q{len(outs)}.parquet"
        proc = run_cli(*args, "-o", out, "--calibration", calibration)
        assert proc.returncode == 0, proc.stderr
        assert _ranges(out)["rows"] == 6
        outs.append(pq.read_table(out).column("embedding").to_pylist())
    assert outs[0] == outs[1]


def test_an_input_without_a_good_row_needs_no_ranges(tiny_bert: Path, tmp_path: Path) -> None:
    """As with float32, an input whose rows are all bad gives an empty output (exit 0), not a calibration error."""
    src = write_jsonl(tmp_path / "in.jsonl", [{"text": ""}, {"id": 3}])
    out = tmp_path / "o.parquet"
    proc = run_cli("embed", src, "-m", tiny_bert, "-o", out, "--output-dtype", "uint8")
    assert proc.returncode == 0, proc.stderr
    assert pq.read_table(out).num_rows == 0 and summary_of(proc)["errors"] == 2
