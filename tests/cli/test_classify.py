"""`poolcli classify`: parity with transformers' sequence classifiers and every activation rule, labels, top-k."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from tests import models
from tests.conftest import run_cli, write_jsonl

TEXTS = [
    "hello world",
    "the quick brown fox jumps over the lazy dog",
    "paris is the capital of france",
    "a",
    "what is a vector " * 20,  # over the 64-token limit: truncated
    "red blue green",
]


def _logits(model_dir: Path, texts: list[str]) -> np.ndarray:
    """transformers' own classifier, one text at a time (no padding): the model's pooler layers included."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForSequenceClassification.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    with torch.inference_mode():
        return np.stack(
            [model(**tok(t, return_tensors="pt", truncation=True, max_length=64)).logits[0].numpy() for t in TEXTS]
        ).astype(np.float64)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-x))


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


CASES = [
    # (family, num_labels, problem_type, activation, also check --no-activation)
    ("bert", 3, None, _softmax, True),
    ("bert", 1, None, _sigmoid, False),
    ("bert", 4, "multi_label_classification", _sigmoid, True),
    ("bert", 1, "regression", lambda x: x, False),
    ("qwen3", 3, "single_label_classification", _softmax, True),
    ("qwen3", 1, None, _sigmoid, False),
]


@pytest.mark.parametrize(("family", "num_labels", "problem_type", "act", "check_raw"), CASES)
def test_classify_parity_with_transformers(
    family: str, num_labels: int, problem_type: str | None, act: object, check_raw: bool, tmp_path: Path
) -> None:
    model_dir = models.build_classifier(
        tmp_path / "m", family=family, num_labels=num_labels, problem_type=problem_type, seed=num_labels
    )
    src = write_jsonl(tmp_path / "in.jsonl", [{"id": f"r{i}", "text": t} for i, t in enumerate(TEXTS)])
    out, raw = tmp_path / "out.parquet", tmp_path / "raw.parquet"
    proc = run_cli(
        "classify", "--backend", "torch", src, "-m", model_dir, "-o", out, "--max-batch-tokens", "100", "--top-k", "2"
    )
    assert proc.returncode == 0, proc.stderr
    logits = _logits(model_dir, TEXTS)
    expected = act(logits)  # type: ignore[operator]
    table = pq.read_table(out)
    assert table.column("id").to_pylist() == [f"r{i}" for i in range(len(TEXTS))]
    probs = np.asarray(table.column("probs").to_pylist(), dtype=np.float64)
    assert np.abs(probs - expected).max() < 1e-5
    if check_raw:  # --no-activation: the raw logits of the full model, its pooler layers included
        assert (
            run_cli("classify", "--backend", "torch", src, "-m", model_dir, "-o", raw, "--no-activation").returncode
            == 0
        )
        raw_probs = np.asarray(pq.read_table(raw).column("probs").to_pylist(), dtype=np.float64)
        assert np.abs(raw_probs - logits).max() < 1e-5
    labels = [f"class_{chr(ord('a') + i)}" for i in range(num_labels)]
    best = expected.argmax(axis=1)
    assert table.column("label").to_pylist() == [labels[i] for i in best]
    assert np.abs(np.asarray(table.column("score").to_pylist()) - expected[np.arange(len(TEXTS)), best]).max() < 1e-5
    top = table.column("top_k").to_pylist()
    for row, p in zip(top, expected, strict=True):
        order = sorted(range(num_labels), key=lambda j: -p[j])[:2]
        assert [e["label"] for e in row] == [labels[j] for j in order]
    assert table.column("truncated").to_pylist()[4] is True
    meta = pq.read_schema(out).metadata[b"poolcli"]
    assert b'"task":"classify"' in meta and labels[0].encode() in meta
    if problem_type == "multi_label_classification":
        assert table.column("labels").to_pylist() == [
            [labels[j] for j in range(num_labels) if p[j] >= 0.5] for p in expected
        ]


def test_calibration_and_threshold(tmp_path: Path) -> None:
    model_dir = models.build_classifier(
        tmp_path / "m", family="bert", num_labels=4, problem_type="multi_label_classification"
    )
    src = write_jsonl(tmp_path / "in.jsonl", [{"text": t} for t in TEXTS])
    out = tmp_path / "cal.parquet"
    proc = run_cli(
        "classify", "--backend", "torch", src, "-m", model_dir, "-o", out, "--threshold", "0.3",
        "--pooler-config", '{"logit_mean": 0.25, "logit_sigma": 3.0}',
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    expected = _sigmoid((_logits(model_dir, TEXTS) - 0.25) / 3.0)
    table = pq.read_table(out)
    assert np.abs(np.asarray(table.column("probs").to_pylist()) - expected).max() < 1e-5
    names = [f"class_{c}" for c in "abcd"]
    assert table.column("labels").to_pylist() == [[names[j] for j in range(4) if p[j] >= 0.3] for p in expected]


def test_classify_parameter_and_model_checks(tmp_path: Path, tiny_bert: Path) -> None:
    model_dir = models.build_classifier(tmp_path / "m", family="bert", num_labels=2)
    src = write_jsonl(tmp_path / "in.jsonl", [{"text": "hello"}])
    proc = run_cli(
        "classify", src, "-m", model_dir, "--pooler-config", '{"dimensions": 8}', "-o", tmp_path / "o.parquet"
    )
    assert proc.returncode == 64
    assert "does not take dimensions" in proc.stderr and "valid for classify" in proc.stderr
    # An embedding checkpoint has no classifier weights: refused rather than run with a random head.
    proc = run_cli("classify", src, "-m", tiny_bert, "--convert", "classify", "-o", tmp_path / "o.parquet")
    assert proc.returncode == 78 and "no classifier weights" in proc.stderr
    proc = run_cli("classify", src, "-m", tiny_bert, "-o", tmp_path / "o.parquet")
    assert proc.returncode == 64 and "Traceback" not in proc.stderr


def test_convert_classify_runs_a_score_head_saved_under_a_generative_name(tmp_path: Path) -> None:
    """A decoder checkpoint that carries a trained `score` head but names a *ForCausalLM architecture (as some
    trainers save it): refused as generative without --convert, and with --convert classify equal to
    transformers' sequence classifier on the same weights."""
    import json

    model_dir = models.build_classifier(tmp_path / "m", family="qwen3", num_labels=3, seed=7)
    expected = _logits(model_dir, TEXTS)
    cfg = json.loads((model_dir / "config.json").read_text())
    cfg["architectures"] = ["Qwen3ForCausalLM"]
    (model_dir / "config.json").write_text(json.dumps(cfg))
    src = write_jsonl(tmp_path / "in.jsonl", [{"text": t} for t in TEXTS])
    proc = run_cli("classify", "--backend", "torch", src, "-m", model_dir, "-o", tmp_path / "o.parquet")
    assert proc.returncode == 78 and "--convert" in proc.stderr
    out = tmp_path / "c.parquet"
    proc = run_cli(
        "classify", "--backend", "torch", src, "-m", model_dir, "--convert", "classify", "-o", out, "--no-activation"
    )
    assert proc.returncode == 0, proc.stderr
    assert np.abs(np.asarray(pq.read_table(out).column("probs").to_pylist()) - expected).max() < 1e-5
