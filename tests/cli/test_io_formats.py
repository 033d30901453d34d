"""Every input format and output form through the real CLI; the vectors never change with the container."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.conftest import cosine_rows, read_vectors, run_cli, summary_of, write_jsonl

TEXTS = [
    "alpha beta gamma",
    "the quick brown fox",
    "σ ∑ unicode",
    "a much longer sentence about rivers and cities",
    "short",
    "the quick brown fox",
]


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> np.ndarray:
    d = tmp_path_factory.mktemp("ref")
    src = write_jsonl(d / "ref.jsonl", [{"text": t} for t in TEXTS])
    proc = run_cli("embed", src, "-o", d / "ref.parquet")
    assert proc.returncode == 0, proc.stderr
    return read_vectors(d / "ref.parquet")[1]


def test_parquet_dir_glob_keep_columns_float16(tmp_path: Path, reference: np.ndarray) -> None:
    data = tmp_path / "data"
    data.mkdir()
    pq.write_table(
        pa.table({"doc_id": [10, 11, 12], "body": TEXTS[:3], "lang": ["en", "en", "xx"]}),
        data / "part-0.parquet",
    )
    pq.write_table(
        pa.table({"doc_id": [13, 14, 15], "body": TEXTS[3:], "lang": ["en", "de", "en"]}),
        data / "part-1.parquet",
    )
    for i, arg in enumerate([str(data), str(data / "part-*.parquet")]):
        out = tmp_path / f"out{i}.parquet"
        proc = run_cli(
            "embed",
            arg,
            "-o",
            out,
            "--text-field",
            "body",
            "--id-field",
            "doc_id",
            "--keep-columns",
            "lang",
            "--output-dtype",
            "float16",
        )
        assert proc.returncode == 0, proc.stderr
        table = pq.read_table(out)
        assert table.column_names == ["id", "embedding", "n_tokens", "truncated", "lang"]
        assert table.schema.field("embedding").type == pa.list_(pa.float16(), 384)
        assert table.column("id").to_pylist() == [10, 11, 12, 13, 14, 15]
        assert table.column("lang").to_pylist() == ["en", "en", "xx", "en", "de", "en"]
        ids, vectors = read_vectors(out)
        assert cosine_rows(vectors, reference).min() > 0.9999  # float16 storage


def test_csv_tsv_txt_gz_zst_stdin(tmp_path: Path, reference: np.ndarray) -> None:
    import zstandard

    csv = tmp_path / "in.csv"
    csv.write_text("id,text\n" + "".join(f'{i},"{t}"\n' for i, t in enumerate(TEXTS)), encoding="utf-8")
    tsv = tmp_path / "in.tsv"
    tsv.write_text("text\tother\n" + "".join(f"{t}\tx\n" for t in TEXTS), encoding="utf-8")
    txt = tmp_path / "in.txt"
    txt.write_text("\n".join(TEXTS) + "\n", encoding="utf-8")
    rows = "".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in enumerate(TEXTS)).encode()
    gz = tmp_path / "in.jsonl.gz"
    gz.write_bytes(gzip.compress(rows))
    zst = tmp_path / "in.ndjson.zst"
    zst.write_bytes(zstandard.ZstdCompressor().compress(rows))
    expected_ids = {
        csv: ["0", "1", "2", "3", "4", "5"],
        tsv: list(range(6)),
        txt: list(range(6)),
        gz: list(range(6)),
        zst: list(range(6)),
    }
    for src, ids_expected in expected_ids.items():
        out = tmp_path / (src.name + ".parquet")
        proc = run_cli("embed", src, "-o", out)
        assert proc.returncode == 0, (src, proc.stderr)
        ids, vectors = read_vectors(out)
        assert ids == ids_expected, src
        assert cosine_rows(vectors, reference).min() >= 0.99999, src
    proc = run_cli("embed", "-", "-o", tmp_path / "stdin.parquet", stdin=rows)
    assert proc.returncode == 0, proc.stderr
    assert cosine_rows(read_vectors(tmp_path / "stdin.parquet")[1], reference).min() >= 0.99999


def test_jsonl_on_stdout_and_dataset_directory(tmp_path: Path, reference: np.ndarray) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", [{"id": f"d{i}", "text": t} for i, t in enumerate(TEXTS)])
    proc = run_cli("embed", src, "-o", "-", "--quiet")
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["id"] for r in rows] == [f"d{i}" for i in range(6)]
    got = np.array([r["embedding"] for r in rows], dtype=np.float32)
    assert cosine_rows(got, reference).min() >= 0.99999

    outdir = tmp_path / "ds"
    proc = run_cli("embed", src, "-o", f"{outdir}/", "--window-rows", "2")
    assert proc.returncode == 0, proc.stderr
    assert (outdir / "_SUCCESS").exists()
    manifest = json.loads((outdir / "_MANIFEST.json").read_text())
    assert manifest["rows"] == 6 and manifest["errors"] == 0
    table = pq.read_table(outdir)
    assert table.column("id").to_pylist() == [f"d{i}" for i in range(6)]
    assert [p.name for p in outdir.iterdir() if p.name.startswith(".")] == [".poolcli"]  # resume state
    assert summary_of(proc)["rows_out"] == 6


def test_no_staging_files_left_and_output_replaced_atomically(tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", [{"text": t} for t in TEXTS])
    out = tmp_path / "out.parquet"
    out.write_bytes(b"old content")
    proc = run_cli("embed", src, "-o", out)
    assert proc.returncode == 78, proc.stderr  # not ours: refused without --overwrite
    assert out.read_bytes() == b"old content"
    proc = run_cli("embed", src, "-o", out, "--overwrite", "--part-rows", "2", "--window-rows", "2")
    assert proc.returncode == 0, proc.stderr
    assert pq.read_table(out).num_rows == 6
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl", "out.parquet"]


def test_failed_run_leaves_previous_output_untouched(tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", [{"text": "fine", "lang": "en"}, {"text": "x", "lang": 5}])
    out = tmp_path / "out.parquet"
    out.write_bytes(b"previous")
    proc = run_cli("embed", src, "-o", out, "--keep-columns", "lang", "--window-rows", "1", "--overwrite")
    assert proc.returncode == 65, proc.stderr
    assert out.read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == ["in.jsonl", "out.parquet"]


def test_packed_bit_vectors_equal_sentence_transformers(minilm_path: Path, tmp_path: Path) -> None:
    """--output-dtype binary/ubinary store exactly what Sentence-Transformers' quantize_embeddings makes of the same
    float32 vectors, with the dimension in the field's metadata."""
    from sentence_transformers.quantization import quantize_embeddings

    texts = ["the quick brown fox", "paris is the capital of france", "a", "vectors in a database"]
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in enumerate(texts)))
    floats = tmp_path / "f.parquet"
    assert run_cli("embed", src, "-m", minilm_path, "-o", floats).returncode == 0
    vectors = np.asarray(pq.read_table(floats).column("embedding").to_pylist(), dtype=np.float32)
    for precision in ("binary", "ubinary"):
        packed = tmp_path / f"{precision}.parquet"
        proc = run_cli("embed", src, "-m", minilm_path, "-o", packed, "--output-dtype", precision)
        assert proc.returncode == 0, proc.stderr
        expected = quantize_embeddings(vectors, precision=precision)
        table = pq.read_table(packed)
        field = table.schema.field("embedding")
        assert field.type.list_size == 48 and field.metadata[b"poolcli.dim"] == b"384"
        assert field.type.value_type == ("int8" if precision == "binary" else "uint8")
        got = np.asarray(table.column("embedding").to_pylist(), dtype=expected.dtype)
        np.testing.assert_array_equal(got, expected)
    proc = run_cli("embed", src, "-m", minilm_path, "-o", "-", "--output-dtype", "binary")
    assert proc.returncode == 0 and len(proc.stdout.splitlines()) == len(texts)
