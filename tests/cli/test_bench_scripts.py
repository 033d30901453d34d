"""The prepared GPU check runs its every step on the CPU (no GPU is lent to most sessions): corpus of distinct rows,
Sentence-Transformers beside poolcli, the out-of-memory back-off (injected), the varlen probe."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_gpu_check_runs_on_cpu(st_model_factory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    sys.path.insert(0, str(ROOT / "bench"))
    import gpu_bench

    model = st_model_factory("mean-normalized")

    monkeypatch.setattr(
        sys,
        "argv",
        ["gpu_bench.py", "--device", "cpu", "--rows", "40", "--model", str(model), "--st-batch-sizes", "8,16",
         "--out-dir", str(tmp_path)],
    )  # fmt: skip
    gpu_bench.main()
    report = json.loads((tmp_path / "gpu.json").read_text())
    assert report["poolcli"]["summary"]["rows_out"] == 40
    assert report["poolcli"]["min_cosine_vs_st"] >= 0.99999  # float32 on a CPU: the same vectors
    assert set(report["sentence_transformers"]["runs"]) == {"8", "16"}
    assert report["oom_backoff"]["injected"] and report["oom_backoff"]["oom_splits"] > 0
    assert report["oom_backoff"]["min_cosine_vs_default_budget"] >= 0.99999
    texts = [json.loads(line)["text"] for line in (tmp_path / "corpus-40.jsonl").open()]
    assert len(set(texts)) == 40


def test_gpu_script_parses() -> None:
    assert subprocess.run(["bash", "-n", str(ROOT / "bench" / "gpu.sh")]).returncode == 0


def test_gpu_corpus_rows_are_distinct(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sys.path.insert(0, str(ROOT / "bench"))
    import corpus
    import gpu_bench

    monkeypatch.setattr(corpus, "paragraphs", lambda: ["first paragraph", "second paragraph"])
    path = gpu_bench.write_distinct_corpus(tmp_path / "c.jsonl", 5)
    texts = [json.loads(line)["text"] for line in path.open()]
    assert len(set(texts)) == 5 and texts[:2] == ["first paragraph", "second paragraph"]
