"""token-embed: per-token vectors equal Sentence-Transformers' token embeddings, whatever the batch neighbours."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest

from tests.conftest import run_cli, write_jsonl

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Paris is the capital of France.",
    "hi",
    "Offline batch embeddings for millions of rows, streamed through a length-bucketed engine. " * 3,
]


def _token_vectors(out: Path) -> tuple[list[Any], list[list[int]], list[np.ndarray]]:
    table = pq.read_table(out)
    dim = table.schema.field("embeddings").type.value_type.list_size
    vectors = []
    for row in table.column("embeddings").to_pylist():
        vectors.append(np.array(row, dtype=np.float32).reshape(-1, dim))
    return table.column("id").to_pylist(), table.column("token_ids").to_pylist(), vectors


@pytest.fixture(scope="module")
def st_tokens(minilm_path: Path) -> tuple[list[list[int]], list[np.ndarray]]:
    """Sentence-Transformers' own per-token output (the Transformer module's token embeddings, padding removed)."""
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(minilm_path), device="cpu")
    out = model.encode(TEXTS, output_value="token_embeddings", convert_to_numpy=False)
    ids = [model.tokenizer(t, truncation=True, max_length=model.max_seq_length)["input_ids"] for t in TEXTS]
    return ids, [o.float().numpy() for o in out]


def _normalized(a: np.ndarray) -> np.ndarray:
    return a / np.linalg.norm(a, axis=1, keepdims=True)


def test_minilm_matches_sentence_transformers_token_embeddings(
    tmp_path: Path, minilm_path: Path, st_tokens: tuple[list[list[int]], list[np.ndarray]]
) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", [{"text": t} for t in TEXTS])
    ref_ids, ref = st_tokens
    for extra, transform in (([], _normalized), (["--no-normalize"], lambda a: a)):
        out = tmp_path / f"out{len(extra)}.parquet"
        proc = run_cli("token-embed", src, "-o", out, "--output-dtype", "float32", *extra)
        assert proc.returncode == 0, proc.stderr
        ids, token_ids, vectors = _token_vectors(out)
        assert ids == list(range(len(TEXTS)))
        assert token_ids == ref_ids  # special tokens kept, as vLLM's token_embed keeps them
        for got, want in zip(vectors, ref, strict=True):
            want = transform(want)
            assert got.shape == want.shape
            cos = (got * want).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(want, axis=1))
            assert cos.min() >= 0.99999
            assert np.abs(got - want).max() < 1e-4


def test_float16_by_default_and_special_tokens_skipped(
    tmp_path: Path, st_tokens: tuple[list[list[int]], list[np.ndarray]]
) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", [{"id": f"r{i}", "text": t} for i, t in enumerate(TEXTS)])
    out = tmp_path / "out.parquet"
    proc = run_cli("token-embed", src, "-o", out, "--skip-special-tokens")
    assert proc.returncode == 0, proc.stderr
    assert str(pq.read_schema(out).field("embeddings").type.value_type.value_type) == "halffloat"
    ids, token_ids, vectors = _token_vectors(out)
    ref_ids, ref = st_tokens
    assert ids == [f"r{i}" for i in range(len(TEXTS))]
    assert token_ids == [r[1:-1] for r in ref_ids]  # [CLS] and [SEP] left out
    for got, want in zip(vectors, ref, strict=True):
        assert np.abs(got - _normalized(want)[1:-1]).max() < 2e-3  # float16
    assert pq.read_table(out).column("n_tokens").to_pylist() == [len(r) for r in ref_ids]  # what the model saw


def test_token_vectors_do_not_depend_on_batch_neighbours(tmp_path: Path, tiny_bert: Path) -> None:
    texts = ["cat dog", "the quick brown fox jumps over the lazy dog " * 4, "river", "paris berlin city data"]
    src = write_jsonl(tmp_path / "in.jsonl", [{"text": t} for t in texts])
    outs = []
    for i, budget in enumerate(("auto", "16", "48")):
        out = tmp_path / f"b{i}.parquet"
        assert run_cli("token-embed", src, "-m", tiny_bert, "-o", out, "--max-batch-tokens", budget).returncode == 0
        outs.append(_token_vectors(out)[2])
    alone = []
    for i, t in enumerate(texts):
        out = tmp_path / f"alone{i}.parquet"
        one = write_jsonl(tmp_path / f"one{i}.jsonl", [{"text": t}])
        assert run_cli("token-embed", one, "-m", tiny_bert, "-o", out, "--output-dtype", "float32").returncode == 0
        alone.append(_token_vectors(out)[2][0])
    for run in outs:
        for got, want in zip(run, alone, strict=True):
            assert np.abs(got - want).max() < 1e-3  # float16 storage of the same float32 numbers


def test_dimensions_errors_parts_and_summary(tmp_path: Path, tiny_bert: Path) -> None:
    rows = [{"id": i, "text": f"row {i} says hello"} for i in range(7)] + [{"id": 7, "text": " "}]
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out"
    proc = run_cli(
        "token-embed",
        src,
        "-m",
        tiny_bert,
        "-o",
        f"{out}/",
        "--dimensions",
        "8",
        "--hf-overrides",
        '{"is_matryoshka": true}',
        "--part-rows",
        "4",
        "--window-rows",
        "2",
    )
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in out.glob("part-*.parquet")) == ["part-00000.parquet", "part-00001.parquet"]
    ids, _, vectors = _token_vectors(out)
    assert ids == list(range(7)) and all(v.shape[1] == 8 for v in vectors)
    assert np.allclose([np.linalg.norm(v, axis=1) for v in vectors], 1.0, atol=2e-3)  # normalized after the slice
    errors = [json.loads(line) for line in (out / "_errors.jsonl").read_text().splitlines()]
    assert [(e["id"], e["code"]) for e in errors] == [(7, "EMPTY_TEXT")]
    bad = run_cli(
        "token-embed", src, "-m", tiny_bert, "-o", tmp_path / "x.parquet", "--pooler-config", '{"pooling_type": "CLS"}'
    )
    assert bad.returncode == 64 and "ALL pooling" in bad.stderr


def test_values_past_float16_are_their_own_error_not_a_nan(tmp_path: Path, tiny_bert: Path) -> None:
    import shutil

    import torch
    from transformers import AutoModel

    big = tmp_path / "big"
    shutil.copytree(tiny_bert, big)
    model = AutoModel.from_pretrained(str(big))
    with torch.no_grad():
        model.encoder.layer[-1].output.LayerNorm.weight.mul_(1e5)  # finite float32 outputs far past 65504
    model.save_pretrained(str(big))
    src = write_jsonl(tmp_path / "in.jsonl", [{"text": "a cat"}, {"text": "the dog"}])
    out = tmp_path / "half.parquet"
    proc = run_cli("token-embed", "--backend", "torch", src, "-m", big, "--no-normalize", "-o", out)
    assert proc.returncode == 0, proc.stderr
    assert "RuntimeWarning" not in proc.stderr
    errors = [json.loads(line) for line in (tmp_path / "half.errors.jsonl").read_text().splitlines()]
    assert [e["code"] for e in errors] == ["NONFINITE_OUTPUT"] * 2
    assert "past the range of float16; --output-dtype float32 keeps them" in errors[0]["message"]
    wide = tmp_path / "wide.parquet"
    proc = run_cli(
        "token-embed", "--backend", "torch", src, "-m", big, "--no-normalize", "--output-dtype", "float32", "-o", wide
    )
    assert proc.returncode == 0 and pq.read_table(wide).num_rows == 2
    vectors = np.concatenate(
        [np.asarray(v, dtype=np.float32) for v in pq.read_table(wide).column("embeddings").to_pylist()]
    )
    assert np.isfinite(vectors).all() and np.abs(vectors).max() > 65504
