"""ColBERT (Stanford and PyLate layouts) and BGE-M3 against reference implementations written here from the
published algorithms, on tiny checkpoints the tests build in each layout.

References:
- ColBERT encoding: PyLate 1.6, `pylate/models/colbert.py` (`ColBERT.tokenize`: text stripped, tokenized with
  special tokens to length-1, the marker id inserted at index 1; queries padded with [MASK] to query_length, the
  expansion tokens unattended unless attend_to_expansion_tokens; `ColBERT.encode`: Transformer -> Dense ->
  per-token L2 normalization, documents keep attention==1 and id not in the skiplist), and for the Stanford layout
  `Dense.from_stanford_weights` (bias-free `linear.weight`) with `artifact.metadata` mapped to the settings;
  colbert-ai 0.2.22 `QueryTokenizer`/`DocTokenizer` do the same insertion.
- MaxSim: `pylate.scores.colbert_scores_pairwise`: sum over query tokens of the max dot product.
- BGE-M3: FlagEmbedding 1.4 `inference/embedder/encoder_only/m3.py` and `finetune/.../m3/modeling.py`: dense =
  normalize(h[:, 0]); sparse = relu(sparse_linear(h)), per token id the max weight, ids of cls/eos/pad/unk and
  weights <= 0 dropped; colbert = normalize(colbert_linear(h[:, 1:])) over the real tokens.
By hand, the same checkpoints gave bit-identical vectors with PyLate 1.6.0 and FlagEmbedding 1.4.2 (see the
session note); those libraries pull their own torch and are not dependencies here.
"""

from __future__ import annotations

import json
import string
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from tests import models
from tests.conftest import run_cli, shared_model, write_jsonl

TEXTS = [
    "What is the capital of France?",
    "Paris is the capital, and largest city, of France!",
    "hello world",
    "the quick brown fox jumps over the lazy dog and runs to the river city " * 3,
    "cat",
]
STANFORD_META = {
    "query_token_id": "[unused0]",
    "doc_token_id": "[unused1]",
    "query_maxlen": 10,
    "doc_maxlen": 16,
    "attend_to_mask_tokens": False,
    "mask_punctuation": True,
    "dim": 16,
}


@pytest.fixture(scope="session")
def stanford(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return shared_model(
        tmp_path_factory, "colbert-stanford", lambda p: models.build_colbert_stanford(p, metadata=STANFORD_META)
    )


@pytest.fixture(scope="session")
def pylate(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return shared_model(tmp_path_factory, "colbert-pylate", models.build_colbert_pylate)


@pytest.fixture(scope="session")
def bge_m3(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return shared_model(tmp_path_factory, "bge-m3", models.build_bge_m3)


class PyLateReference:
    """PyLate 1.6's ColBERT.encode, re-implemented from its source (see the module docstring)."""

    def __init__(self, model_dir: Path, *, projection: torch.Tensor, settings: dict[str, Any]) -> None:
        from transformers import AutoModel, AutoTokenizer

        self.tok = AutoTokenizer.from_pretrained(str(model_dir))
        self.body = AutoModel.from_pretrained(str(model_dir)).eval()
        self.w = projection.float()
        self.s = settings

    def encode(self, text: str, *, query: bool) -> tuple[list[int], np.ndarray]:
        s = self.s
        length = s["query_length"] if query else s["document_length"]
        prefix_id = self.tok.convert_tokens_to_ids(s["query_prefix"] if query else s["document_prefix"])
        ids = self.tok(text.strip(), truncation=True, max_length=length - 1)["input_ids"]
        ids = [ids[0], prefix_id, *ids[1:]]
        attention = [1] * len(ids)
        if query and s.get("do_query_expansion", True):
            extra = length - len(ids)
            ids += [self.tok.mask_token_id] * extra
            attention += [1 if s.get("attend_to_expansion_tokens") else 0] * extra
        with torch.inference_mode():
            h = self.body(input_ids=torch.tensor([ids]), attention_mask=torch.tensor([attention])).last_hidden_state[0]
            v = torch.nn.functional.normalize(h @ self.w.T, p=2, dim=-1).numpy()
        if query:
            return ids, v
        skip = {self.tok.convert_tokens_to_ids(c) for c in s.get("skiplist_words", string.punctuation)}
        keep = [i for i, t in enumerate(ids) if t not in skip]
        return [ids[i] for i in keep], v[keep]


def _projection(model_dir: Path) -> torch.Tensor:
    from safetensors.torch import load_file

    single = model_dir / "model.safetensors"
    dense = model_dir / "1_Dense" / "model.safetensors"
    return load_file(str(dense))["linear.weight"] if dense.is_file() else load_file(str(single))["linear.weight"]


def _settings(model_dir: Path) -> dict[str, Any]:
    meta = model_dir / "artifact.metadata"
    if meta.is_file():
        m = json.loads(meta.read_text())
        return {
            "query_prefix": m["query_token_id"],
            "document_prefix": m["doc_token_id"],
            "query_length": m["query_maxlen"],
            "document_length": m["doc_maxlen"],
            "attend_to_expansion_tokens": m["attend_to_mask_tokens"],
        }
    return dict(json.loads((model_dir / "config_sentence_transformers.json").read_text()))


def _token_embed(tmp_path: Path, model: Path, *args: str, texts: list[str] = TEXTS) -> tuple[list, list]:
    src = write_jsonl(tmp_path / "in.jsonl", [{"text": t} for t in texts])
    out = tmp_path / f"out{len(list(tmp_path.glob('out*.parquet')))}.parquet"
    proc = run_cli("token-embed", src, "-m", model, "-o", out, "--output-dtype", "float32", *args)
    assert proc.returncode == 0, proc.stderr
    table = pq.read_table(out)
    dim = table.schema.field("embeddings").type.value_type.list_size
    vectors = [np.array(r, dtype=np.float32).reshape(-1, dim) for r in table.column("embeddings").to_pylist()]
    return table.column("token_ids").to_pylist(), vectors


@pytest.mark.parametrize("layout", ["stanford", "pylate"])
def test_colbert_roles_equal_pylate_encode(layout: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    model: Path = request.getfixturevalue(layout)
    ref = PyLateReference(model, projection=_projection(model), settings=_settings(model))
    for role in ("query", "document"):
        ids, vectors = _token_embed(tmp_path, model, "--colbert-role", role)
        for text, got_ids, got in zip(TEXTS, ids, vectors, strict=True):
            want_ids, want = ref.encode(text, query=role == "query")
            assert got_ids == want_ids, (role, text)
            assert got.shape == want.shape
            assert np.abs(got - want).max() < 1e-5
    # The marker sits after [CLS]; a query is padded with [MASK] to its length; a document loses its punctuation.
    q_ids, _ = _token_embed(tmp_path, model, "--colbert-role", "query", texts=["cat"])
    s = _settings(model)
    assert len(q_ids[0]) == s["query_length"] and q_ids[0][1] == ref.tok.convert_tokens_to_ids(s["query_prefix"])
    d_ids, _ = _token_embed(tmp_path, model, "--colbert-role", "document", texts=["cat, dog!"])
    assert ref.tok.convert_tokens_to_ids(",") not in d_ids[0] and ref.tok.convert_tokens_to_ids("!") not in d_ids[0]


def test_colbert_without_a_role_is_plain_per_token_vectors(tmp_path: Path, stanford: Path) -> None:
    """vLLM's token_embed on HF_ColBERT: tokenizer(text) with special tokens, the projection, L2 per token."""
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(stanford))
    body = AutoModel.from_pretrained(str(stanford)).eval()
    w = _projection(stanford)
    ids, vectors = _token_embed(tmp_path, stanford, texts=TEXTS[:3])
    for text, got_ids, got in zip(TEXTS[:3], ids, vectors, strict=True):
        enc = tok(text, return_tensors="pt")
        with torch.inference_mode():
            want = torch.nn.functional.normalize(body(**enc).last_hidden_state[0] @ w.T, dim=-1).numpy()
        assert got_ids == enc["input_ids"][0].tolist()
        assert np.abs(got - want).max() < 1e-5


def test_colbert_scores_are_maxsim_of_query_and_document_encodings(
    tmp_path: Path, stanford: Path, pylate: Path
) -> None:
    for model in (stanford, pylate):
        ref = PyLateReference(model, projection=_projection(model), settings=_settings(model))
        pairs = [(TEXTS[0], d) for d in TEXTS[1:]] + [(TEXTS[2], TEXTS[4])]
        src = write_jsonl(tmp_path / "pairs.jsonl", [{"query": q, "document": d} for q, d in pairs])
        out = tmp_path / f"{model.name}.parquet"
        proc = run_cli("score", src, "-m", model, "-o", out)  # auto: late interaction for a ColBERT checkpoint
        assert proc.returncode == 0, proc.stderr
        got = pq.read_table(out).column("score").to_numpy()
        want = [float((ref.encode(q, query=True)[1] @ ref.encode(d, query=False)[1].T).max(1).sum()) for q, d in pairs]
        assert np.abs(got - np.array(want)).max() < 1e-4
        meta = json.loads(pq.read_schema(out).metadata[b"poolcli"])
        assert meta["plan"]["score_type"] == "late-interaction"
    run = write_jsonl(tmp_path / "run.jsonl", [{"id": "q", "query": TEXTS[0], "documents": TEXTS[1:]}])
    ranked = tmp_path / "ranked.parquet"
    assert run_cli("rerank", run, "-m", stanford, "-o", ranked).returncode == 0
    scores = pq.read_table(ranked).column("relevance_score").to_numpy()
    assert list(scores) == sorted(scores, reverse=True)


def test_colbert_too_long_names_the_roles_length_and_roles_refuse_chunking(tmp_path: Path, pylate: Path) -> None:
    long = " ".join(["hello world"] * 12)
    src = write_jsonl(tmp_path / "p.jsonl", [{"query": long, "document": "hello"}, {"query": "hi", "document": long}])
    out = tmp_path / "s.parquet"
    proc = run_cli("score", src, "-m", pylate, "-o", out, "--on-too-long", "error")
    assert proc.returncode == 0, proc.stderr
    errors = [json.loads(line) for line in (tmp_path / "s.errors.jsonl").read_text().splitlines()]
    assert [e["message"] for e in errors] == [
        "the query is longer than 12 tokens",  # the checkpoint's query_length, not the model's 127
        "the document is longer than 20 tokens",
    ]
    texts = write_jsonl(tmp_path / "t.jsonl", [{"text": long}])
    proc = run_cli("token-embed", texts, "-m", pylate, "--colbert-role", "document", "--on-too-long", "error",
                   "-o", tmp_path / "t.parquet")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    (error,) = [json.loads(line) for line in (tmp_path / "t.errors.jsonl").read_text().splitlines()]
    assert error["message"] == "text is longer than 20 tokens (--on-too-long error)"
    for extra in (("--on-too-long", "chunk"), ("--max-embed-len", "50")):
        proc = run_cli(
            "token-embed", texts, "-m", pylate, "--colbert-role", "query", *extra, "-o", tmp_path / "c.parquet"
        )
        assert proc.returncode == 64 and "fixed length" in proc.stderr, proc.stderr


def test_colbert_checkpoint_without_its_projection_is_refused(tmp_path: Path) -> None:
    """The regression: an HF_ColBERT checkpoint used to load without its `linear` and score CLS cosines."""
    broken = models.build_colbert_stanford(tmp_path / "no-linear", metadata=STANFORD_META, with_projection=False)
    src = write_jsonl(tmp_path / "pairs.jsonl", [{"query": "a", "document": "b"}])
    for command in (["score", src], ["token-embed", src], ["rerank", src, "--query", "a"]):
        proc = run_cli(*command, "-m", broken, "-o", tmp_path / "x.parquet")
        assert proc.returncode == 78, proc.stderr
        assert "projection" in proc.stderr and "Traceback" not in proc.stderr
    proc = run_cli("embed", src, "-m", models.build_colbert_stanford(tmp_path / "ok", metadata=STANFORD_META))
    assert proc.returncode == 64 and "token_embed" in proc.stderr  # no pooled embedding from a ColBERT checkpoint


class M3Reference:
    """FlagEmbedding 1.4's BGE-M3 encode, re-implemented from its source (see the module docstring)."""

    def __init__(self, model_dir: Path) -> None:
        from transformers import AutoModel, AutoTokenizer

        self.tok = AutoTokenizer.from_pretrained(str(model_dir))
        self.body = AutoModel.from_pretrained(str(model_dir)).eval()
        colbert, sparse = torch.nn.Linear(32, 32), torch.nn.Linear(32, 1)
        colbert.load_state_dict(torch.load(model_dir / "colbert_linear.pt", weights_only=True))
        sparse.load_state_dict(torch.load(model_dir / "sparse_linear.pt", weights_only=True))
        self.colbert, self.sparse = colbert, sparse
        t = self.tok
        self.unused = {t.cls_token_id, t.eos_token_id, t.pad_token_id, t.unk_token_id}

    def encode(self, text: str) -> tuple[np.ndarray, dict[int, float], np.ndarray]:
        enc = self.tok(text, truncation=True, max_length=512, return_tensors="pt")
        with torch.inference_mode():
            h = self.body(**enc).last_hidden_state
            dense = torch.nn.functional.normalize(h[:, 0], dim=-1)[0].numpy()
            weights = torch.relu(self.sparse(h)).squeeze(-1)[0].tolist()
            colbert = torch.nn.functional.normalize(self.colbert(h[:, 1:]), dim=-1)[0].numpy()
        lexical: dict[int, float] = {}
        for tid, w in zip(enc["input_ids"][0].tolist(), weights, strict=True):
            if tid not in self.unused and w > 0 and w > lexical.get(tid, 0.0):
                lexical[tid] = w
        return dense, lexical, colbert


M3 = ("--hf-overrides", '{"architectures": ["BgeM3EmbeddingModel"]}')


def test_bge_m3_dense_sparse_and_colbert_equal_flagembedding(tmp_path: Path, bge_m3: Path) -> None:
    ref = M3Reference(bge_m3)
    want = [ref.encode(t) for t in TEXTS]
    src = write_jsonl(tmp_path / "in.jsonl", [{"text": t} for t in TEXTS])
    # One task at a time: embed (dense), token-classify (lexical weights), token-embed (colbert vectors).
    assert run_cli("embed", src, "-m", bge_m3, "-o", tmp_path / "dense.parquet", *M3).returncode == 0
    assert run_cli("token-classify", src, "-m", bge_m3, "-o", tmp_path / "sparse.parquet", *M3).returncode == 0
    _, colbert = _token_embed(tmp_path, bge_m3, *M3)
    dense = np.array(pq.read_table(tmp_path / "dense.parquet").column("embedding").to_pylist(), dtype=np.float32)
    sparse = pq.read_table(tmp_path / "sparse.parquet").column("lexical_weights").to_pylist()
    for i, (d, lex, col) in enumerate(want):
        assert np.abs(dense[i] - d).max() < 1e-5
        got = dict(sparse[i])
        assert list(got) == list(lex) and all(abs(got[k] - lex[k]) < 1e-6 for k in lex)
        assert colbert[i].shape == col.shape and np.abs(colbert[i] - col).max() < 1e-5
    assert any(len(s) for s in sparse)  # the weights are not all cut away
    # All three from one forward pass, with the preset.
    out = tmp_path / "all.parquet"
    proc = run_cli("embed", src, "-m", bge_m3, "-o", out, "--config", "bge-m3", "--outputs", "dense,sparse,colbert")
    assert proc.returncode == 0, proc.stderr
    table = pq.read_table(out)
    assert table.column_names == ["id", "embedding", "lexical_weights", "colbert_embeddings", "n_tokens", "truncated"]
    assert np.array_equal(np.array(table.column("embedding").to_pylist(), dtype=np.float32), dense)
    assert table.column("lexical_weights").to_pylist() == sparse
    for got, want_col in zip(table.column("colbert_embeddings").to_pylist(), colbert, strict=True):
        assert np.array_equal(np.array(got, dtype=np.float32).reshape(want_col.shape), want_col)


def test_bge_m3_needs_both_heads_and_outputs_need_bge_m3(tmp_path: Path, tiny_bert: Path) -> None:
    headless = models.build_bge_m3(tmp_path / "headless", heads=False)
    src = write_jsonl(tmp_path / "in.jsonl", [{"text": "hello"}])
    proc = run_cli("embed", src, "-m", headless, "-o", tmp_path / "x.parquet", *M3)
    assert proc.returncode == 78 and "sparse_linear.pt" in proc.stderr
    proc = run_cli("embed", src, "-m", tiny_bert, "-o", tmp_path / "y.parquet", "--outputs", "dense,sparse")
    assert proc.returncode == 64 and "BGE-M3" in proc.stderr


def test_inspect_shows_the_token_heads(stanford: Path, pylate: Path, bge_m3: Path) -> None:
    proc = run_cli("inspect", stanford, "--json")
    info = json.loads(proc.stdout)
    assert info["tasks"] == ["token_embed"] and info["score_type"] == "late-interaction"
    assert info["colbert"]["dim"] == 16 and info["colbert"]["query_prefix"] == "[unused0]"
    assert info["colbert"]["query_length"] == 10 and info["colbert"]["document_length"] == 16
    info = json.loads(run_cli("inspect", pylate, "--json").stdout)
    assert info["colbert"]["query_prefix"] == "[Q] " and info["colbert"]["layout"] == "pylate"
    info = json.loads(run_cli("inspect", bge_m3, "--json", "--config", "bge-m3").stdout)
    assert info["tasks"] == ["embed", "token_embed", "token_classify"]
    assert "colbert_linear" in info["bge_m3"]["colbert"] and "sparse_linear" in info["bge_m3"]["sparse"]
