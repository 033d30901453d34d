"""The compiled CPU backend (OpenVINO) on every architecture family the tests build: equal to torch and to the
reference libraries in float32, its cache reused, rebuilt when damaged, and the fallbacks and refusals."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest

from tests import models
from tests.conftest import cosine_rows, run_cli, shared_model, summary_of, write_jsonl

TEXTS = [
    "the quick brown fox jumps over the lazy dog",
    "paris is the capital of france",
    "a",
    "what is the capital of berlin? the river runs through the city and the city has one river",
    "data rows batch vector query",
]


@pytest.fixture(scope="session")
def tiny_roberta(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return shared_model(tmp_path_factory, "tiny-roberta", lambda p: models.build_encoder(p, family="roberta"))


@pytest.fixture(scope="session")
def tiny_xlmr(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return shared_model(tmp_path_factory, "tiny-xlmr", lambda p: models.build_encoder(p, family="xlm-roberta"))


@pytest.fixture(scope="session")
def tiny_distilbert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return shared_model(tmp_path_factory, "tiny-distilbert", lambda p: models.build_encoder(p, family="distilbert"))


@pytest.fixture(scope="session")
def qwen3_classifier(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return shared_model(
        tmp_path_factory, "qwen3-classifier", lambda p: models.build_classifier(p, family="qwen3", num_labels=2)
    )


def _values(path: Path, column: str) -> np.ndarray:
    values = [np.asarray(v, dtype=np.float64).ravel() for v in pq.read_table(path).column(column).to_pylist()]
    if len({v.shape for v in values}) > 1:  # ragged (per-token values): an object array of rows
        ragged = np.empty(len(values), dtype=object)
        ragged[:] = values
        return ragged
    return np.asarray(values)


def _run(tmp_path: Path, name: str, task: str, src: Path, model: Path, *args: str) -> tuple[Path, dict[str, Any]]:
    out = tmp_path / f"{name}.parquet"
    proc = run_cli(task, src, "-m", model, "-o", out, "--max-batch-tokens", "64", *args)
    assert proc.returncode == 0, proc.stderr
    return out, summary_of(proc)


CASES = {
    "bert-embed": ("embed", "tiny_bert", "embedding", []),
    "roberta-embed": ("embed", "tiny_roberta", "embedding", []),
    "xlmr-embed": ("embed", "tiny_xlmr", "embedding", []),
    "qwen3-embed": ("embed", "tiny_qwen3", "embedding", ["--convert", "embed"]),
    "bert-classify": ("classify", "tiny_classifier", "probs", []),
    "qwen3-classify": ("classify", "qwen3_classifier", "probs", []),
    "bert-token-classify": ("token-classify", "ner", "probs", []),
    "cross-encoder-score": ("score", "tiny_ce", "score", []),
}


@pytest.mark.parametrize("case", list(CASES))
def test_openvino_equals_torch(case: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    task, fixture, column, extra = CASES[case]
    model: Path = request.getfixturevalue(fixture)
    if task == "score":
        rows = [{"id": i, "query": t, "document": TEXTS[-1 - i]} for i, t in enumerate(TEXTS)]
    else:
        rows = [{"id": i, "text": t} for i, t in enumerate(TEXTS)]
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    torch_out, torch_summary = _run(tmp_path, "torch", task, src, model, "--backend", "torch", *extra)
    ov_out, ov_summary = _run(tmp_path, "ov", task, src, model, "--backend", "openvino", *extra)
    auto_out, auto_summary = _run(tmp_path, "auto", task, src, model, *extra)
    assert (torch_summary["backend"], ov_summary["backend"], auto_summary["backend"]) == (
        "torch",
        "openvino",
        "openvino",
    )
    if task == "token-classify":  # one list of per-label probabilities per token: compare them all, flattened
        ref, got, auto = (np.concatenate(_values(p, column).tolist()) for p in (torch_out, ov_out, auto_out))
    else:
        ref, got, auto = (_values(p, column) for p in (torch_out, ov_out, auto_out))
    assert ref.shape == got.shape and np.ptp(ref) > 1e-3
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=2e-6)
    if task == "embed":
        assert cosine_rows(got, ref).min() >= 0.99999
    np.testing.assert_array_equal(auto, got)
    meta = json.loads(pq.read_metadata(ov_out).metadata[b"poolcli"])
    assert meta["backend"] == "openvino" and meta["dtype"] == "float32"
    assert "backend" not in json.loads(pq.read_metadata(torch_out).metadata[b"poolcli"])


def test_minilm_openvino_equals_sentence_transformers_and_is_batch_invariant(minilm_path: Path, tmp_path: Path) -> None:
    from sentence_transformers import SentenceTransformer

    long = "An extremely long neighbouring row that forces padding onto the short ones. " * 20
    texts = [*TEXTS, long, TEXTS[1]]
    src = write_jsonl(tmp_path / "in.jsonl", [{"text": t} for t in texts])
    out, summary = _run(tmp_path, "ov", "embed", src, minilm_path, "--backend", "openvino")
    assert summary["backend"] == "openvino"
    got = _values(out, "embedding")
    ref = SentenceTransformer(str(minilm_path), device="cpu").encode(texts, batch_size=3, convert_to_numpy=True)
    assert cosine_rows(got, ref).min() >= 0.99999
    alone_src = write_jsonl(tmp_path / "alone.jsonl", [{"text": TEXTS[1]}])
    alone, _ = _run(tmp_path, "alone", "embed", alone_src, minilm_path, "--backend", "openvino")
    # The same row alone, in a batch of seven, and beside a long row (index 6 shares the long row's batch).
    for row in (1, 6):
        assert np.abs(got[row] - _values(alone, "embedding")[0]).max() <= 1e-6


def test_auto_keeps_torch_for_an_architecture_it_does_not_know(tiny_distilbert: Path, tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", [{"text": t} for t in TEXTS])
    out = tmp_path / "auto.parquet"
    proc = run_cli("embed", src, "-m", tiny_distilbert, "-o", out, "-v")
    assert proc.returncode == 0, proc.stderr
    assert summary_of(proc)["backend"] == "torch"
    assert "OpenVINO not used because its conversion of 'distilbert' models is not checked" in proc.stderr
    # Asked for explicitly, it is tried (and, for this family, converts and agrees).
    explicit, summary = _run(tmp_path, "ov", "embed", src, tiny_distilbert, "--backend", "openvino")
    assert summary["backend"] == "openvino"
    assert cosine_rows(_values(explicit, "embedding"), _values(out, "embedding")).min() >= 0.99999


def test_a_model_that_does_not_convert(tiny_bert: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A conversion failure stops the run with one line (78), before anything is written."""
    import poolcli.model.compiled as compiled

    def refuse(*args: object, **kwargs: object) -> None:
        raise RuntimeError("Model wasn't fully converted. Failed operations: aten::frobnicate")

    monkeypatch.setattr(compiled, "convert", refuse)
    monkeypatch.setenv("POOLCLI_CACHE_DIR", str(tmp_path / "cache"))
    src = write_jsonl(tmp_path / "in.jsonl", [{"text": t} for t in TEXTS])
    proc = run_cli("embed", src, "-m", tiny_bert, "-o", tmp_path / "x.parquet", "--backend", "openvino")
    assert proc.returncode == 78
    assert "OpenVINO cannot convert this model: Model wasn't fully converted" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "x.parquet").exists()
    # Under auto too: the run's identity says OpenVINO, so it stops rather than quietly computing with torch.
    proc = run_cli("embed", src, "-m", tiny_bert, "-o", tmp_path / "auto.parquet")
    assert proc.returncode == 78 and "--backend torch runs it without OpenVINO" in proc.stderr
    assert not (tmp_path / "auto.parquet").exists()


def test_the_cache_is_reused_and_a_damaged_entry_rebuilt(
    tiny_bert: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    monkeypatch.setenv("POOLCLI_CACHE_DIR", str(cache))
    src = write_jsonl(tmp_path / "in.jsonl", [{"text": t} for t in TEXTS])

    def run(name: str) -> tuple[np.ndarray, dict[str, Any]]:
        out, summary = _run(tmp_path, name, "embed", src, tiny_bert, "--backend", "openvino", "-v")
        return _values(out, "embedding"), summary

    first, summary = run("first")
    assert summary["convert_seconds"] > 0
    entries = list((cache / "openvino").iterdir())
    assert len(entries) == 1 and (entries[0] / "model.xml").is_file() and (entries[0] / "entry.json").is_file()
    again, summary = run("again")
    assert "convert_seconds" not in summary  # nothing converted: the entry was read
    np.testing.assert_array_equal(again, first)

    weights = entries[0] / "model.bin"
    blob = bytearray(weights.read_bytes())
    blob[len(blob) // 2] ^= 0xFF  # one flipped byte in the middle of the weights
    weights.write_bytes(bytes(blob))
    rebuilt, summary = run("damaged")
    assert summary["convert_seconds"] > 0
    np.testing.assert_array_equal(rebuilt, first)
    assert sorted(p.name for p in (cache / "openvino").iterdir()) == [entries[0].name]  # no leftovers
    # A partial entry (a file missing) is refused the same way: tests/unit/test_backend_choice.py.


def test_an_unwritable_cache(tiny_bert: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Explicit OpenVINO without a writable cache: exit 73 naming the variable to set, before converting; auto
    decides for torch up front (so the identity says what runs) and says why under --verbose."""
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    monkeypatch.setenv("POOLCLI_CACHE_DIR", str(blocker / "cache"))
    src = write_jsonl(tmp_path / "in.jsonl", [{"text": t} for t in TEXTS])
    proc = run_cli("embed", src, "-m", tiny_bert, "-o", tmp_path / "x.parquet", "--backend", "openvino")
    assert proc.returncode == 73 and "POOLCLI_CACHE_DIR" in proc.stderr and "Traceback" not in proc.stderr
    proc = run_cli("embed", src, "-m", tiny_bert, "-o", tmp_path / "auto.parquet", "-v")
    assert proc.returncode == 0 and summary_of(proc)["backend"] == "torch"
    assert "cache directory is not writable" in proc.stderr


@pytest.mark.parametrize("native", [True, False], ids=["avx512_bf16", "avx2-only"])
def test_bfloat16_follows_the_cpu_flags(native: bool, tiny_bert: Path, tmp_path: Path) -> None:
    """The flags decide: with native bf16 OpenVINO is compiled for bf16 (identity says bfloat16); without it,
    OpenVINO computes float32 and says so, and torch's emulated bf16 is warned about."""
    flags = "avx2 avx512f avx512_bf16 avx512_vnni" if native else "avx avx2 fma"
    env = {"POOLCLI_CPU_FLAGS": flags}
    src = write_jsonl(tmp_path / "in.jsonl", [{"text": t} for t in TEXTS])
    reference, _ = _run(tmp_path, "fp32", "embed", src, tiny_bert, "--backend", "torch")
    out = tmp_path / "bf16.parquet"
    proc = run_cli("embed", src, "-m", tiny_bert, "-o", out, "--dtype", "bfloat16", env=env)
    assert proc.returncode == 0, proc.stderr
    identity = json.loads(pq.read_metadata(out).metadata[b"poolcli"])
    assert identity["backend"] == "openvino"
    assert identity["dtype"] == ("bfloat16" if native else "float32")
    assert ("no native bf16" in proc.stderr) is not native
    assert cosine_rows(_values(out, "embedding"), _values(reference, "embedding")).min() >= 0.9999
    proc = run_cli(
        "embed", src, "-m", tiny_bert, "-o", tmp_path / "t.parquet", "--dtype", "bfloat16", "--backend", "torch",
        env=env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert ("emulated by torch" in proc.stderr) is not native


def test_refusals(tiny_bert: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", [{"text": "x"}])
    proc = run_cli("embed", src, "-m", tiny_bert, "-o", tmp_path / "o.parquet", "--backend", "openvino", "--dtype",
                   "float16")  # fmt: skip
    assert proc.returncode == 64 and "float32 or bfloat16, not float16" in proc.stderr
    proc = run_cli("embed", src, "-m", tiny_bert, "-o", tmp_path / "o.parquet", "--backend", "tensorrt")
    assert proc.returncode == 64
    import poolcli.model.backend as backend

    monkeypatch.setattr(backend, "openvino_installed", lambda: False)
    proc = run_cli("embed", src, "-m", tiny_bert, "-o", tmp_path / "o.parquet", "--backend", "openvino")
    assert proc.returncode == 64 and "pip install 'poolcli[openvino]'" in proc.stderr
    out = tmp_path / "fallback.parquet"
    proc = run_cli("embed", src, "-m", tiny_bert, "-o", out, "-v")
    assert proc.returncode == 0 and summary_of(proc)["backend"] == "torch"
    assert "OpenVINO is not installed" in proc.stderr


def test_python_api_takes_the_backend(tiny_bert: Path) -> None:
    import poolcli

    ov = poolcli.load(str(tiny_bert), backend="openvino")
    reference = poolcli.load(str(tiny_bert), backend="torch")
    assert "backend=openvino" in repr(ov)
    assert cosine_rows(ov.embed(TEXTS), reference.embed(TEXTS)).min() >= 0.99999
