"""Tiny random-weight models built by the tests, through the real CLI, against references computed here."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.conftest import cosine_rows, hf_reference, read_vectors, run_cli, write_jsonl
from tests.models import build_bert

TEXTS = [
    "the quick brown fox jumps over the lazy dog",
    "hello world",
    "paris is the capital of france",
    "a",
    "what is the capital of berlin? " * 6,
    "cat dog cat dog",
    "the river",
]


def _embed(tmp_path: Path, model: Path, *extra: str, texts: list[str] = TEXTS) -> np.ndarray:
    src = write_jsonl(tmp_path / "in.jsonl", [{"id": i, "text": t} for i, t in enumerate(texts)])
    out = tmp_path / "out.parquet"
    # torch: these tests are about pooling and heads; tests/cli/test_backends.py checks OpenVINO's bodies
    proc = run_cli("embed", src, "-o", out, "--model", model, "--max-batch-tokens", "64", "--backend", "torch", *extra)
    assert proc.returncode == 0, proc.stderr
    ids, vectors = read_vectors(out)
    assert ids == list(range(len(texts)))
    return vectors


def test_bert_defaults_to_cls_and_normalizes(tmp_path: Path, tiny_bert: Path) -> None:
    got = _embed(tmp_path, tiny_bert)
    ref = hf_reference(tiny_bert, TEXTS, pooling="CLS")
    assert cosine_rows(got, ref).min() >= 0.99999
    assert np.abs(got - ref).max() < 1e-5


def test_bert_mean_without_normalize(tmp_path: Path, tiny_bert: Path) -> None:
    got = _embed(tmp_path, tiny_bert, "--pooling-type", "mean", "--no-normalize")
    ref = hf_reference(tiny_bert, TEXTS, pooling="MEAN", normalize=False)
    assert np.abs(got - ref).max() < 1e-5


def test_qwen3_decoder_last_token(tmp_path: Path, tiny_qwen3: Path) -> None:
    got = _embed(tmp_path, tiny_qwen3, "--convert", "embed")
    ref = hf_reference(tiny_qwen3, TEXTS, pooling="LAST")
    assert cosine_rows(got, ref).min() >= 0.99999
    assert np.abs(got - ref).max() < 1e-5


def test_decoder_preset_and_prompt(tmp_path: Path, tiny_qwen3: Path) -> None:
    got = _embed(tmp_path, tiny_qwen3, "--convert", "embed", "--config", "decoder-last", "--prompt", "query: ")
    ref = hf_reference(tiny_qwen3, ["query: " + t for t in TEXTS], pooling="LAST")
    assert cosine_rows(got, ref).min() >= 0.99999


def test_generative_model_needs_convert(tmp_path: Path, tiny_qwen3: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", [{"text": "hello"}])
    proc = run_cli("embed", src, "--model", tiny_qwen3)
    assert proc.returncode == 78
    assert "--convert embed" in proc.stderr and "Traceback" not in proc.stderr


def _st_encode(model_dir: Path, texts: list[str], **kwargs: Any) -> np.ndarray:
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(model_dir), device="cpu").encode(texts, convert_to_numpy=True, **kwargs)


@pytest.mark.parametrize(
    "mode",
    ["mean", "cls", "max", "mean_sqrt_len_tokens", "weightedmean", "lasttoken", ["cls", "max", "mean"]],
)
def test_every_sentence_transformers_pooling_mode(tmp_path: Path, st_model_factory: Any, mode: Any) -> None:
    name = "st-" + ("-".join(mode) if isinstance(mode, list) else mode)
    model = st_model_factory(name, pooling_mode=mode)
    got = _embed(tmp_path, model)
    ref = _st_encode(model, TEXTS)
    assert got.shape == ref.shape
    assert cosine_rows(got, ref).min() >= 0.99999
    assert np.abs(got - ref).max() < 1e-5


def test_dense_projector_equals_sentence_transformers(tmp_path: Path, st_model_factory: Any) -> None:
    model = st_model_factory("st-dense", pooling_mode="mean", dense=[(24, "tanh"), (16, "identity")])
    got = _embed(tmp_path, model)
    ref = _st_encode(model, TEXTS)
    assert got.shape == (len(TEXTS), 16)
    assert np.abs(got - ref).max() < 1e-5
    inspect = json.loads(run_cli("inspect", model, "--json").stdout)
    assert inspect["projector"] == ["Dense(32->24, tanh)", "Dense(24->16, identity)"]
    assert inspect["embedding_size"] == 16


def test_st_without_normalize_module_is_not_normalized(tmp_path: Path, st_model_factory: Any) -> None:
    model = st_model_factory("st-nonorm", pooling_mode="mean", normalize=False)
    got = _embed(tmp_path, model)
    ref = _st_encode(model, TEXTS)
    assert np.abs(got - ref).max() < 1e-5
    assert not np.allclose(np.linalg.norm(got, axis=1), 1.0)


def test_prompt_excluded_from_pooling(tmp_path: Path, st_model_factory: Any) -> None:
    model = st_model_factory(
        "st-noprompt",
        pooling_mode="mean",
        include_prompt=False,
        prompts={"query": "query: ", "doc": "passage: "},
    )
    got = _embed(tmp_path, model, "--prompt-name", "query")
    ref = _st_encode(model, TEXTS, prompt_name="query")
    assert cosine_rows(got, ref).min() >= 0.99999
    plain = _st_encode(model, ["query: " + t for t in TEXTS])
    assert cosine_rows(got, plain).min() < 0.9999  # the prompt really was left out


def test_matryoshka_from_config(tmp_path: Path) -> None:
    model = build_bert(tmp_path / "mrl", seed=3, extra_config={"matryoshka_dimensions": [8, 16, 32]})
    got = _embed(tmp_path, model, "--dimensions", "16")
    ref = hf_reference(model, TEXTS, pooling="CLS", dims=16)
    assert got.shape == (len(TEXTS), 16)
    assert np.abs(got - ref).max() < 1e-5
    src = write_jsonl(tmp_path / "one.jsonl", [{"text": "hello"}])
    proc = run_cli("embed", "--backend", "torch", src, "--model", model, "--dimensions", "12")
    assert proc.returncode == 64
    assert "[8, 16, 32]" in proc.stderr


def test_matryoshka_via_hf_overrides(tmp_path: Path, tiny_bert: Path) -> None:
    got = _embed(
        tmp_path,
        tiny_bert,
        "--dimensions",
        "10",
        "--hf-overrides",
        '{"is_matryoshka": true}',
        "--pooling-type",
        "MEAN",
    )
    ref = hf_reference(tiny_bert, TEXTS, pooling="MEAN", dims=10)
    assert np.abs(got - ref).max() < 1e-5


def test_matryoshka_with_dense_projector_slices_after_projection(tmp_path: Path, st_model_factory: Any) -> None:
    model = st_model_factory("st-dense-mrl", pooling_mode="cls", dense=[(20, "tanh")], normalize=True)
    got = _embed(tmp_path, model, "--dimensions", "8", "--hf-overrides", '{"is_matryoshka": true}')
    full = _st_encode(model, TEXTS, normalize_embeddings=False)
    # ST normalises before truncating; vLLM order is project -> slice -> normalise, so compare with that.
    ref = full[:, :8] / np.linalg.norm(full[:, :8], axis=1, keepdims=True)
    assert np.abs(got - ref).max() < 1e-5


def test_left_truncation_keeps_the_prompt(tmp_path: Path, tiny_bert: Path) -> None:
    import torch
    import torch.nn.functional as F
    from transformers import AutoModel, AutoTokenizer

    text = "one two three four five six seven cat dog fox"
    got = _embed(
        tmp_path,
        tiny_bert,
        "--prompt",
        "query: ",
        "--truncate-prompt-tokens",
        "8",
        "--truncation-side",
        "left",
        texts=[text],
    )
    tok = AutoTokenizer.from_pretrained(str(tiny_bert))
    prompt_ids = tok("query: ", add_special_tokens=False)["input_ids"]
    body = tok("query: " + text, add_special_tokens=False)["input_ids"][len(prompt_ids) :]
    room = 8 - 2 - len(prompt_ids)
    ids = [tok.cls_token_id, *prompt_ids, *body[-room:], tok.sep_token_id]
    model = AutoModel.from_pretrained(str(tiny_bert)).eval()
    with torch.inference_mode():
        h = model(input_ids=torch.tensor([ids])).last_hidden_state[0, 0]
    ref = F.normalize(h, dim=-1).numpy()[None]
    assert np.abs(got - ref).max() < 1e-5


def test_truncation_limit_below_special_tokens_is_a_usage_error(tmp_path: Path, tiny_bert: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", [{"text": "hello world"}])
    proc = run_cli("embed", src, "--model", tiny_bert, "--truncate-prompt-tokens", "2")
    assert proc.returncode == 64, proc.stderr
    assert "special tokens" in proc.stderr
