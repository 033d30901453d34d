"""`poolcli token-classify`: parity with transformers' token classifiers and the pipeline's entity spans, offsets,
reward models (per token and per sequence), STEP pooling for process reward models and causal LMs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest

from tests import models
from tests.conftest import run_cli, summary_of, write_jsonl

TEXTS = [
    "Hello world, the quick brown fox jumps over the lazy dog in Paris.",
    "Berlin is the capital city of France; a river runs by it",
    "a",
    "what is a vector? " * 20,  # over the 64-token limit: truncated
    "  red   blue green  ",
]


def _rows(path: Path) -> list[dict[str, Any]]:
    return pq.read_table(path).to_pylist()


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def test_ner_parity_offsets_and_entities_match_transformers(ner: Path, tmp_path: Path) -> None:
    import torch
    from transformers import AutoModelForTokenClassification, AutoTokenizer, pipeline

    src = write_jsonl(tmp_path / "in.jsonl", [{"id": f"r{i}", "text": t} for i, t in enumerate(TEXTS)] + [{"id": "e"}])
    out = tmp_path / "out.parquet"
    proc = run_cli("token-classify", src, "--model", ner, "-o", out, "--offsets", "--aggregate", "simple")
    assert proc.returncode == 0, proc.stderr
    summary = summary_of(proc)
    assert (summary["rows_out"], summary["errors"], summary["truncated"]) == (5, 1, 1)
    rows = _rows(out)
    assert [r["id"] for r in rows] == [f"r{i}" for i in range(5)]

    tok = AutoTokenizer.from_pretrained(str(ner))
    model = AutoModelForTokenClassification.from_pretrained(str(ner), dtype=torch.float32).eval()
    pipe = pipeline("token-classification", model=str(ner), aggregation_strategy="simple", device="cpu")
    labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
    assert json.loads(pq.read_schema(out).metadata[b"poolcli"])["plan"]["labels"] == labels
    n_entities = 0
    for text, row in zip(TEXTS, rows, strict=True):
        enc = tok(text, truncation=True, max_length=64, return_offsets_mapping=True)
        assert row["token_ids"] == enc["input_ids"]
        assert row["n_tokens"] == len(enc["input_ids"])
        with torch.inference_mode():
            logits = model(input_ids=torch.tensor([enc["input_ids"]])).logits[0].numpy()
        got = np.array(row["probs"], dtype=np.float64)
        assert got.shape == logits.shape
        assert np.abs(got - _softmax(logits.astype(np.float64))).max() < 1e-5
        # Offsets: transformers' own mapping, and each word piece is that slice of the original text.
        assert [tuple(o) for o in row["offsets"]] == [tuple(o) for o in enc["offset_mapping"]]
        for tid, (s, e) in zip(row["token_ids"], row["offsets"], strict=True):
            piece = tok.convert_ids_to_tokens(tid)
            if piece not in tok.all_special_tokens:
                assert text[s:e].lower() == piece.removeprefix("##")
        # Entity spans: the Hugging Face pipeline's simple aggregation, with the text cut from the original.
        ref = pipe(text) if len(enc["input_ids"]) < 64 else None
        if ref is not None:
            assert [(e["entity_group"], e["start"], e["end"]) for e in ref] == [
                (e["entity"], e["start"], e["end"]) for e in row["entities"]
            ]
            for r, g in zip(ref, row["entities"], strict=True):
                assert abs(float(r["score"]) - g["score"]) < 1e-5
        for ent in row["entities"]:
            assert ent["text"] == text[ent["start"] : ent["end"]]
            n_entities += 1
    assert n_entities > 0  # the random model must exercise the aggregation

    # --no-activation gives the raw logits; a prompt is not part of the offsets; -o - streams JSONL.
    proc = run_cli(
        "token-classify", src, "--model", ner, "-o", "-", "--no-activation", "--offsets", "--prompt", "query: "
    )
    assert proc.returncode == 0, proc.stderr
    streamed = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["id"] for r in streamed] == [f"r{i}" for i in range(5)]
    first = streamed[0]
    enc = tok("query: " + TEXTS[0], truncation=True, max_length=64)
    assert first["token_ids"] == enc["input_ids"]
    with torch.inference_mode():
        raw = model(input_ids=torch.tensor([enc["input_ids"]])).logits[0].numpy()
    # float32 rounding of a differently ordered (compiled) sum: relative to logits of size ~5
    np.testing.assert_allclose(np.array(first["probs"]), raw, rtol=1e-5, atol=1e-5)
    prompt_tokens = len(tok("query: ", add_special_tokens=False)["input_ids"])
    assert all(o == [0, 0] for o in first["offsets"][: 1 + prompt_tokens])
    body = slice(1 + prompt_tokens, -1)
    for tid, (s, e) in zip(first["token_ids"][body], first["offsets"][body], strict=True):
        assert TEXTS[0][s:e].lower() == tok.convert_ids_to_tokens(tid).removeprefix("##")


def test_reward_model_per_token_and_sequence(tmp_path: Path) -> None:
    import torch
    from transformers import AutoTokenizer

    path, reference = models.build_qwen2_reward(tmp_path / "rm", process=False)
    src = write_jsonl(tmp_path / "in.jsonl", [{"text": t} for t in TEXTS[:3]])
    proc = run_cli("token-classify", src, "--model", path, "-o", tmp_path / "tok.parquet")
    assert proc.returncode == 0, proc.stderr
    proc = run_cli("classify", src, "--model", path, "-o", tmp_path / "seq.parquet")
    assert proc.returncode == 0, proc.stderr
    tok = AutoTokenizer.from_pretrained(str(path))
    for text, row, seq in zip(TEXTS, _rows(tmp_path / "tok.parquet"), _rows(tmp_path / "seq.parquet"), strict=False):
        ids = tok(text)["input_ids"]
        assert row["token_ids"] == ids
        with torch.inference_mode():
            ref = reference(torch.tensor([ids]))[0].numpy()  # raw rewards [L, 1]: no activation by default
        assert np.abs(np.array(row["probs"]) - ref).max() < 1e-5
        assert abs(seq["score"] - float(ref[-1, 0])) < 1e-5  # the sequence reward is the last token's
    proc = run_cli("score", src, "--query", "q", "--model", path, "-o", tmp_path / "s.parquet")
    assert proc.returncode == 64 and "reward model" in proc.stderr


def test_process_reward_model_step_pooling(tmp_path: Path) -> None:
    import torch
    from transformers import AutoTokenizer

    path, reference = models.build_qwen2_reward(tmp_path / "prm", process=True)
    proc = run_cli("inspect", path, "--json")
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert (info["token_pooling"], info["step_tag_id"]) == ("STEP", 151651)  # Qwen2-PRM's `<extra_0>`

    tok = AutoTokenizer.from_pretrained(str(path))
    tag = tok.convert_tokens_to_ids(",")  # the tiny vocabulary has no <extra_0>: the flag picks the tag
    texts = ["the cat sat, then the dog ran,", "no step tags here", ","]
    src = write_jsonl(tmp_path / "in.jsonl", [{"text": t} for t in texts])
    out = tmp_path / "out.parquet"
    proc = run_cli("token-classify", "--backend", "torch", src, "--model", path, "-o", out, "--step-tag-id", str(tag))
    assert proc.returncode == 0, proc.stderr
    for text, row in zip(texts, _rows(out), strict=True):
        ids = tok(text)["input_ids"]
        positions = [i for i, t in enumerate(ids) if t == tag]
        assert row["step_positions"] == positions
        assert len(positions) == {0: 2, 1: 0, 2: 1}[texts.index(text)]
        with torch.inference_mode():
            ref = reference(torch.tensor([ids]))[0].softmax(-1).numpy()[positions]
        got = np.array(row["probs"], dtype=np.float64).reshape(-1, 2)
        assert got.shape == (len(positions), 2)
        assert np.abs(got - ref).max(initial=0) < 1e-5
    # returned_token_ids picks columns: one column left, so the activation is a sigmoid.
    proc = run_cli(
        "token-classify",
        "--backend",
        "torch",
        src,
        "--model",
        path,
        "-o",
        "-",
        "--step-tag-id",
        str(tag),
        "--returned-token-ids",
        "1",
    )
    assert proc.returncode == 0, proc.stderr
    first = json.loads(proc.stdout.splitlines()[0])
    ids = tok(texts[0])["input_ids"]
    with torch.inference_mode():
        logits = reference(torch.tensor([ids]))[0][[i for i, t in enumerate(ids) if t == tag]][:, [1]]
    assert np.abs(np.array(first["probs"]) - torch.sigmoid(logits).numpy()).max() < 1e-5


def test_causal_lm_step_pooling_reads_lm_head_rows(tmp_path: Path) -> None:
    """math-shepherd style: a causal LM, STEP at a tag, the softmax over two vocabulary logits."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = models.build_qwen3(tmp_path / "lm", tie=False, append_eos=False)
    tok = AutoTokenizer.from_pretrained(str(path))
    tag, good, bad = tok.convert_tokens_to_ids(["yes", "cat", "dog"])
    texts = ["the cat sat yes then the dog ran yes", "no tags here"]
    src = write_jsonl(tmp_path / "in.jsonl", [{"text": t} for t in texts])
    cfg = json.dumps({"pooling_type": "STEP", "step_tag_id": tag, "returned_token_ids": [good, bad]})
    out = tmp_path / "out.parquet"
    args = ("token-classify", "--backend", "torch", src, "--model", path, "--convert", "classify")
    proc = run_cli(*args, "--pooler-config", cfg, "-o", out)
    assert proc.returncode == 0, proc.stderr
    lm = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()
    rows = _rows(out)
    for text, row in zip(texts, rows, strict=True):
        ids = tok(text)["input_ids"]
        positions = [i for i, t in enumerate(ids) if t == tag]
        with torch.inference_mode():
            ref = lm(torch.tensor([ids])).logits[0][positions][:, [good, bad]].softmax(-1).numpy()
        assert np.abs(np.array(row["probs"]).reshape(-1, 2) - ref).max(initial=0) < 1e-5
    assert len(rows[0]["probs"]) == 2 and rows[1]["probs"] == []
    # Without returned_token_ids there is no classifier to read.
    proc = run_cli(*args, "-o", tmp_path / "x.parquet")
    assert proc.returncode == 64 and "returned_token_ids" in proc.stderr


def test_decoder_sequence_classifier_scores_every_token(tmp_path: Path) -> None:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path = models.build_classifier(tmp_path / "q3", family="qwen3", num_labels=3)
    src = write_jsonl(tmp_path / "in.jsonl", [{"text": t} for t in TEXTS[:2]])
    out = tmp_path / "out.parquet"
    proc = run_cli("token-classify", "--backend", "torch", src, "--model", path, "-o", out)
    assert proc.returncode == 0, proc.stderr
    tok = AutoTokenizer.from_pretrained(str(path))
    model = AutoModelForSequenceClassification.from_pretrained(str(path), dtype=torch.float32).eval()
    for text, row in zip(TEXTS, _rows(out), strict=False):
        ids = torch.tensor([tok(text)["input_ids"]])
        with torch.inference_mode():
            per_token = model.score(model.model(input_ids=ids).last_hidden_state)[0].softmax(-1).numpy()
            last = model(input_ids=ids).logits[0].softmax(-1).numpy()
        got = np.array(row["probs"])
        assert np.abs(got - per_token).max() < 1e-5
        assert np.abs(got[-1] - last).max() < 1e-5  # the last position is what classify reports


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--pooler-config", '{"dimensions": 4}'], "valid for token_classify"),
        (["--pooling-type", "CLS"], "ALL or STEP"),
        (["--step-tag-id", "3"], "STEP"),
        (["--aggregate", "simple", "--no-activation"], "probabilities"),
        (["--pooling-type", "STEP", "--returned-token-ids", "9"], "not columns"),
        (["--returned-token-ids", "a,b"], "integers"),
        (["--pooling-type", "STEP", "--returned-token-ids", ","], "empty"),
        (["--aggregate", "simple", "--pooler-config", '{"logit_sigma": 2.0}'], "uncalibrated"),
    ],
)
def test_token_classify_usage_errors(ner: Path, tmp_path: Path, args: list[str], message: str) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", [{"text": "hello"}])
    proc = run_cli("token-classify", src, "--model", ner, "-o", tmp_path / "o.parquet", *args)
    assert proc.returncode == 64, proc.stderr
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr


def test_token_classify_refuses_models_without_a_token_head(tiny_bert: Path, tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", [{"text": "hello"}])
    bert_cls = models.build_classifier(tmp_path / "bert-cls", family="bert", num_labels=2)
    for model, extra in ((tiny_bert, []), (bert_cls, []), (bert_cls, ["--convert", "classify"])):
        proc = run_cli("token-classify", src, "--model", model, "-o", tmp_path / "o.parquet", *extra)
        assert proc.returncode == 64, proc.stderr
        assert "per-token classifier" in proc.stderr
