"""The bundled all-MiniLM-L6-v2 through the real `poolcli embed` equals Sentence-Transformers `encode`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import cosine_rows, read_vectors, run_cli, summary_of, write_jsonl

LONG = " ".join(["The committee debated the budget for the new library building at great length."] * 40)
TEXTS = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The new movie is awesome",
    "A man is eating food.",  # duplicate
    "Résumé naïve café — ünïcödé façade",
    "東京は日本の首都です。",
    "Emoji 🙂🚀 and symbols ∑ ∫ √",
    "x",
    LONG,  # longer than the model's 256 tokens
    "Short one",
    " ".join(["word"] * 120),
    "Ελληνικά κείμενα και العربية",
    LONG[:600],
]


@pytest.fixture(scope="module")
def st_reference(minilm_path: Path) -> np.ndarray:
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(minilm_path), device="cpu")
    return model.encode(TEXTS, convert_to_numpy=True, batch_size=4)


def test_embed_equals_sentence_transformers(tmp_path: Path, st_reference: np.ndarray) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", [{"id": f"r{i}", "text": t} for i, t in enumerate(TEXTS)])
    out = tmp_path / "out.parquet"
    proc = run_cli("embed", src, "-o", out, "--max-batch-tokens", "700")
    assert proc.returncode == 0, proc.stderr
    ids, vectors = read_vectors(out)
    assert ids == [f"r{i}" for i in range(len(TEXTS))]
    assert vectors.shape == (len(TEXTS), 384)
    cos = cosine_rows(vectors, st_reference)
    assert cos.min() >= 0.99999, cos
    assert np.abs(vectors - st_reference).max() < 1e-5
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)

    import pyarrow.parquet as pq

    table = pq.read_table(out)
    truncated = table.column("truncated").to_pylist()
    n_tokens = table.column("n_tokens").to_pylist()
    assert truncated[TEXTS.index(LONG)] is True
    assert n_tokens[TEXTS.index(LONG)] == 256
    assert sum(truncated) == 1
    meta = json.loads(table.schema.metadata[b"poolcli"])
    assert meta["task"] == "embed"
    assert meta["plan"]["pooling"] == "MEAN"
    assert len(meta["model_weights_sha256"]) == 64
    summary = summary_of(proc)
    assert summary["rows_out"] == len(TEXTS) and summary["truncated"] == 1 and summary["errors"] == 0


def test_default_output_name_and_row_number_ids(tmp_path: Path, st_reference: np.ndarray) -> None:
    src = write_jsonl(tmp_path / "corpus.jsonl", [{"text": t} for t in TEXTS])
    proc = run_cli("embed", src, "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    ids, vectors = read_vectors(tmp_path / "corpus.embed.parquet")
    assert ids == list(range(len(TEXTS)))
    assert cosine_rows(vectors, st_reference).min() >= 0.99999


def test_on_too_long_error_makes_error_rows(tmp_path: Path, st_reference: np.ndarray) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", [{"id": i, "text": t} for i, t in enumerate(TEXTS)])
    out, errs = tmp_path / "out.parquet", tmp_path / "errors.jsonl"
    proc = run_cli("embed", src, "-o", out, "--errors", errs, "--on-too-long", "error")
    assert proc.returncode == 0, proc.stderr
    ids, vectors = read_vectors(out)
    long_id = TEXTS.index(LONG)
    assert ids == [i for i in range(len(TEXTS)) if i != long_id]
    assert cosine_rows(vectors, np.delete(st_reference, long_id, axis=0)).min() >= 0.99999
    errors = [json.loads(line) for line in errs.read_text().splitlines()]
    assert [(e["id"], e["code"]) for e in errors] == [(long_id, "TOO_LONG")]


def test_truncate_prompt_tokens_left_and_right(tmp_path: Path, minilm_path: Path) -> None:
    from sentence_transformers import SentenceTransformer

    text = LONG[:400]
    src = write_jsonl(tmp_path / "in.jsonl", [{"text": text}])
    model = SentenceTransformer(str(minilm_path), device="cpu")
    tok = model.tokenizer
    for side in ("right", "left"):
        out = tmp_path / f"{side}.parquet"
        proc = run_cli("embed", src, "-o", out, "--truncate-prompt-tokens", "16", "--truncation-side", side)
        assert proc.returncode == 0, proc.stderr
        _, got = read_vectors(out)
        tok.truncation_side = side
        model.max_seq_length = 16
        ref = model.encode([text])
        assert cosine_rows(got, ref).min() >= 0.99999, side
