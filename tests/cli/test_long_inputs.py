"""Long inputs: chunked processing, max_embed_len, and huge texts, on the tiny BERT with a 16-token maximum
(--truncate-prompt-tokens 16) so a chunk holds 14 text tokens between [CLS] and [SEP]."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from tests.conftest import run_cli, run_cli_process, summary_of, write_jsonl

MAX = 16
LIMIT = ("--truncate-prompt-tokens", str(MAX))
WORDS = "the cat dog fox river city paris berlin data row file word long short".split()  # one token each


def _text(n: int, seed: int = 0) -> str:
    """A text of exactly n word tokens (each word is in the tiny vocabulary)."""
    return " ".join(WORDS[(i * 7 + seed) % len(WORDS)] for i in range(n))


class Reference:
    """The tiny BERT through transformers, chunk by chunk: [CLS] + 14 text tokens + [SEP]."""

    def __init__(self, model_dir: Path) -> None:
        from transformers import AutoModel, AutoTokenizer

        self.tok = AutoTokenizer.from_pretrained(str(model_dir))
        self.model = AutoModel.from_pretrained(str(model_dir)).eval()

    def chunks(self, text: str) -> list[list[int]]:
        body = self.tok(text, add_special_tokens=False)["input_ids"]
        room = MAX - 2
        return [[self.tok.cls_token_id, *body[i : i + room], self.tok.sep_token_id] for i in range(0, len(body), room)]

    def states(self, ids: list[int]) -> torch.Tensor:
        with torch.inference_mode():
            return self.model(input_ids=torch.tensor([ids])).last_hidden_state[0]

    def embed(self, text: str, pooling: str) -> np.ndarray:
        chunks = self.chunks(text)
        pooled = [self.states(c)[0] if pooling == "CLS" else self.states(c).mean(0) for c in chunks]
        weights = torch.tensor([len(c) for c in chunks], dtype=torch.float64)
        mean = (torch.stack(pooled).double() * weights[:, None]).sum(0) / weights.sum()
        return torch.nn.functional.normalize(mean.float(), dim=-1).numpy()


@pytest.fixture(scope="module")
def ref(tiny_bert: Path) -> Reference:
    return Reference(tiny_bert)


def _embed(tmp_path: Path, model: Path, texts: list[str], *args: str, name: str = "out") -> dict[str, Any]:
    src = write_jsonl(tmp_path / f"{name}.jsonl", [{"id": i, "text": t} for i, t in enumerate(texts)])
    out = tmp_path / f"{name}.parquet"
    proc = run_cli("embed", src, "-m", model, "-o", out, *LIMIT, *args)
    assert proc.returncode == 0, proc.stderr
    table = pq.read_table(out)
    errs = out.with_name(f"{name}.errors.jsonl")
    return {
        "ids": table.column("id").to_pylist(),
        "vectors": np.array(table.column("embedding").to_pylist(), dtype=np.float32),
        "table": table,
        "errors": [json.loads(line) for line in errs.read_text().splitlines()] if errs.exists() else [],
        "proc": proc,
    }


@pytest.mark.parametrize("pooling", ["MEAN", "CLS"])
def test_chunked_row_is_the_weighted_mean_of_its_chunks(
    pooling: str, tmp_path: Path, tiny_bert: Path, ref: Reference
) -> None:
    texts = [_text(5), _text(14 * 3 + 1, 1), _text(100, 2), _text(14 * 2, 3)]  # short, 3 + a 1-token remainder, ...
    got = _embed(tmp_path, tiny_bert, texts, "--on-too-long", "chunk", "--pooling-type", pooling, "--verbose")
    want = np.stack([ref.embed(t, pooling) for t in texts])
    assert np.abs(got["vectors"] - want).max() < 1e-5
    table = got["table"]
    assert table.column("n_chunks").to_pylist() == [1, 4, 8, 2]
    assert table.column("truncated").to_pylist() == [False] * 4
    assert table.column("n_tokens").to_pylist() == [7, 43 + 4 * 2, 100 + 8 * 2, 28 + 2 * 2]  # what the model saw
    summary = summary_of(got["proc"])
    assert summary["chunked_rows"] == 3 and summary["chunks"] == 14
    assert "Split input of 102 tokens into 8 chunks (max_chunk_size: 16)" in got["proc"].stderr
    if pooling == "CLS":
        assert "chunked processing with CLS pooling" in got["proc"].stderr


def test_mean_of_a_chunked_row_is_the_mean_of_all_its_token_states(
    tmp_path: Path, tiny_bert: Path, ref: Reference
) -> None:
    text = _text(60, 4)
    got = _embed(tmp_path, tiny_bert, [text], "--on-too-long", "chunk", "--pooling-type", "MEAN")
    states = torch.cat([ref.states(c) for c in ref.chunks(text)])
    want = torch.nn.functional.normalize(states.mean(0), dim=-1).numpy()
    assert np.abs(got["vectors"][0] - want).max() < 1e-5


def test_short_texts_unchanged_and_independent_of_neighbours_and_budget(tmp_path: Path, tiny_bert: Path) -> None:
    texts = [_text(3), _text(80, 5), _text(10, 6), _text(33, 7)]
    plain = _embed(tmp_path, tiny_bert, texts, "--pooling-type", "MEAN", name="plain")
    runs = [
        _embed(
            tmp_path,
            tiny_bert,
            texts,
            "--on-too-long",
            "chunk",
            "--pooling-type",
            "MEAN",
            "--max-batch-tokens",
            b,
            name=f"b{b}",
        )
        for b in ("auto", "20", "48")
    ]
    short = [0, 2]
    for run in runs:
        assert np.abs(run["vectors"][short] - plain["vectors"][short]).max() < 1e-6  # the option changes nothing
        assert np.abs(run["vectors"] - runs[0]["vectors"]).max() < 1e-5
    alone = [
        _embed(tmp_path, tiny_bert, [t], "--on-too-long", "chunk", "--pooling-type", "MEAN", name=f"a{i}")
        for i, t in enumerate(texts)
    ]
    for i, one in enumerate(alone):
        assert np.abs(one["vectors"][0] - runs[1]["vectors"][i]).max() < 1e-5


def test_max_embed_len_boundaries_chunked_or_not(tmp_path: Path, tiny_bert: Path) -> None:
    limit = 40  # tokens, special tokens included: n words + [CLS] + [SEP]
    texts = [_text(limit - 3), _text(limit - 2), _text(limit - 1)]  # 39, 40 and 41 tokens
    for mode in (("--on-too-long", "chunk"), ("--on-too-long", "truncate")):
        got = _embed(tmp_path, tiny_bert, texts, *mode, "--max-embed-len", str(limit), name=mode[1])
        assert got["ids"] == [0, 1]
        assert [(e["row"], e["code"]) for e in got["errors"]] == [(2, "TOO_LONG")]
        assert "41 tokens, more than max_embed_len 40" in got["errors"][0]["message"]
    seed = write_jsonl(tmp_path / "seed.jsonl", [{"text": t} for t in texts])
    pooler = '{"pooling_type": "MEAN", "normalize": true, "enable_chunked_processing": true, "max_embed_len": 40}'
    proc = run_cli("embed", seed, "-m", tiny_bert, "-o", tmp_path / "seed.parquet", *LIMIT, "--pooler-config", pooler)
    assert proc.returncode == 0, proc.stderr  # the seed's own JSON, verbatim
    assert summary_of(proc)["errors"] == 1 and summary_of(proc)["chunked_rows"] == 2


def test_max_embed_len_below_the_model_limit_refuses_texts_that_would_fit(tmp_path: Path, tiny_bert: Path) -> None:
    # The model takes 16 tokens; max_embed_len 8 still makes every text over 8 tokens a TOO_LONG row.
    texts = [_text(5), _text(6), _text(7), _text(20)]  # 7, 8, 9 and 22 tokens
    for extra in ((), ("--on-too-long", "chunk")):
        got = _embed(tmp_path, tiny_bert, texts, "--max-embed-len", "8", *extra, name=f"mel{len(extra)}")
        assert got["ids"] == [0, 1]
        assert [(e["row"], e["code"]) for e in got["errors"]] == [(2, "TOO_LONG"), (3, "TOO_LONG")]
        assert "9 tokens, more than max_embed_len 8" in got["errors"][0]["message"]
    src = write_jsonl(tmp_path / "tok.jsonl", [{"text": t} for t in texts])
    proc = run_cli("token-embed", src, "-m", tiny_bert, "-o", tmp_path / "tok.parquet", *LIMIT, "--max-embed-len", "8")
    assert proc.returncode == 0, proc.stderr
    assert summary_of(proc)["errors"] == 2 and summary_of(proc)["rows_out"] == 2


def test_an_explicit_on_too_long_wins_over_a_preset_and_contradicts_the_flag(tmp_path: Path, tiny_bert: Path) -> None:
    texts = [_text(5), _text(50)]
    got = _embed(tmp_path, tiny_bert, texts, "--config", "long-text", "--on-too-long", "error", name="explicit")
    assert got["ids"] == [0] and [e["code"] for e in got["errors"]] == ["TOO_LONG"]
    assert "n_chunks" not in got["table"].column_names  # nothing is chunked
    got = _embed(tmp_path, tiny_bert, texts, "--config", "long-text", "--on-too-long", "truncate", name="trunc")
    assert got["ids"] == [0, 1] and got["table"].column("truncated").to_pylist() == [False, True]
    src = write_jsonl(tmp_path / "c.jsonl", [{"text": t} for t in texts])
    bad = run_cli(
        "embed", src, "-m", tiny_bert, "-o", tmp_path / "c.parquet", "--on-too-long", "error",
        "--enable-chunked-processing",
    )  # fmt: skip
    assert bad.returncode == 64 and "contradicts --enable-chunked-processing" in bad.stderr
    assert not (tmp_path / "c.parquet").exists()


def test_scoring_refuses_chunking_and_max_embed_len_from_a_preset_or_pooler_config(
    tmp_path: Path, tiny_bert: Path
) -> None:
    pairs = write_jsonl(tmp_path / "pairs.jsonl", [{"query": "cat", "document": _text(90)}])
    for cmd, extra in (
        ("score", ("--config", "long-text")),
        ("rerank", ("--config", "long-text")),
        ("score", ("--pooler-config", '{"enable_chunked_processing": true}')),
        ("score", ("--pooler-config", '{"max_embed_len": 20}')),
    ):
        src = pairs
        if cmd == "rerank":
            src = write_jsonl(tmp_path / "rr.jsonl", [{"query": "cat", "documents": [_text(90)]}])
        proc = run_cli(cmd, src, "-m", tiny_bert, "-o", tmp_path / "s.parquet", *extra)
        assert proc.returncode == 64, (extra, proc.stderr)
        assert "not to scoring" in proc.stderr and "Traceback" not in proc.stderr
    # An explicit --on-too-long wins over a pooler config's chunking here too.
    chunking = '{"enable_chunked_processing": true}'
    ok = run_cli("score", pairs, "-m", tiny_bert, "-o", tmp_path / "e.parquet", "--pooler-config", chunking,
                 "--on-too-long", "error", *LIMIT)  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    assert summary_of(ok)["errors"] == 1


def test_long_text_preset_and_score_on_too_long_error(tmp_path: Path, tiny_bert: Path, tiny_ce: Path) -> None:
    got = _embed(tmp_path, tiny_bert, [_text(50)], "--config", "long-text")
    assert got["table"].column("n_chunks").to_pylist() == [4]
    pairs = write_jsonl(
        tmp_path / "pairs.jsonl", [{"query": "cat", "document": _text(5)}, {"query": "cat", "document": _text(90)}]
    )
    out = tmp_path / "scores.parquet"
    proc = run_cli("score", pairs, "-m", tiny_ce, "-o", out, *LIMIT, "--on-too-long", "error")
    assert proc.returncode == 0, proc.stderr
    assert pq.read_table(out).column("id").to_pylist() == [0]
    errors = [json.loads(line) for line in (tmp_path / "scores.errors.jsonl").read_text().splitlines()]
    assert [(e["row"], e["code"]) for e in errors] == [(1, "TOO_LONG")]
    bi = tmp_path / "bi.parquet"
    proc = run_cli("score", pairs, "-m", tiny_bert, "-o", bi, *LIMIT, "--on-too-long", "error")
    assert proc.returncode == 0 and pq.read_table(bi).num_rows == 1
    bad = run_cli("score", pairs, "-m", tiny_ce, "-o", tmp_path / "x.parquet", "--on-too-long", "chunk")
    assert bad.returncode == 64


def test_token_embed_chunks_concatenate_without_repeated_special_tokens(
    tmp_path: Path, tiny_bert: Path, ref: Reference
) -> None:
    text = _text(40, 8)
    src = write_jsonl(tmp_path / "in.jsonl", [{"text": text}])
    out = tmp_path / "tok.parquet"
    proc = run_cli(
        "token-embed", src, "-m", tiny_bert, "-o", out, *LIMIT, "--on-too-long", "chunk", "--output-dtype", "float32"
    )
    assert proc.returncode == 0, proc.stderr
    table = pq.read_table(out)
    ids = table.column("token_ids").to_pylist()[0]
    assert ids == ref.tok(text)["input_ids"]  # [CLS] text [SEP], each token once
    vectors = np.array(table.column("embeddings").to_pylist()[0], dtype=np.float32)
    chunks = ref.chunks(text)
    parts = [ref.states(c) for c in chunks]
    pieces = [p[(0 if k == 0 else 1) : (len(p) if k == len(parts) - 1 else len(p) - 1)] for k, p in enumerate(parts)]
    want = torch.nn.functional.normalize(torch.cat(pieces), dim=-1).numpy()
    assert vectors.shape == want.shape and np.abs(vectors - want).max() < 1e-5


@pytest.mark.slow
def test_chunked_run_resumes_byte_identical_after_a_kill(tmp_path: Path, tiny_bert: Path) -> None:
    texts = [_text(5 + (i * 37) % 90, i) for i in range(24)]
    src = write_jsonl(tmp_path / "in.jsonl", [{"id": i, "text": t} for i, t in enumerate(texts)])
    args = [
        "embed",
        str(src),
        "-m",
        str(tiny_bert),
        *LIMIT,
        "--on-too-long",
        "chunk",
        "--part-rows",
        "6",
        "--window-rows",
        "3",
    ]
    clean, crashed = tmp_path / "clean", tmp_path / "crashed"
    assert run_cli(*args, "-o", f"{clean}/").returncode == 0
    assert run_cli_process(*args, "-o", f"{crashed}/", env={"POOLCLI_CRASHPOINT": "after_marker:2"}).returncode == 137
    resumed = run_cli(*args, "-o", f"{crashed}/")
    assert resumed.returncode == 0 and summary_of(resumed)["parts_skipped"] == 2
    for part in sorted(clean.glob("part-*.parquet")):
        assert (crashed / part.name).read_bytes() == part.read_bytes()


@pytest.mark.slow
def test_a_huge_row_costs_bounded_memory(tmp_path: Path, tiny_bert: Path) -> None:
    """A 20 MB text in the middle of a normal corpus: cut before tokenizing, so the run stays small and quick
    (the peak resident memory of the process is reported in docs/performance.md; here it is bounded)."""
    huge = _text(3_000_000, 9)  # about 20 MB
    rows = [{"id": i, "text": _text(20, i)} for i in range(50)]
    rows.insert(25, {"id": 999, "text": huge})
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    code = (
        # VmHWM, not getrusage's ru_maxrss: that survives exec, so it would report the forking pytest worker's size.
        "import sys; from poolcli.app import run; "
        "rc = run(sys.argv[1:]); "
        "print([l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')][0], file=sys.stderr); "
        "sys.exit(rc)"
    )
    for extra in ([], ["--on-too-long", "chunk", "--max-embed-len", "4096"]):
        out = tmp_path / f"out{len(extra)}.parquet"
        proc = subprocess.run(
            # torch: a compiled backend's one-off conversion would dominate the peak this test bounds
            [
                sys.executable,
                "-c",
                code,
                "embed",
                str(src),
                "-m",
                str(tiny_bert),
                "-o",
                str(out),
                "--backend",
                "torch",
                *extra,
            ],
            capture_output=True,
            text=True,
            env=dict(os.environ, HF_HUB_OFFLINE="1"),
            timeout=300,
        )
        assert proc.returncode == 0, proc.stderr
        peak_mb = int(proc.stderr.strip().splitlines()[-1]) / 1024
        assert peak_mb < 1000, peak_mb  # measured ~490/620 MB  # the 20 MB text is never tokenized whole
        table = pq.read_table(out)
        if extra:
            errors = [
                json.loads(line) for line in out.with_name(f"out{len(extra)}.errors.jsonl").read_text().splitlines()
            ]
            assert [(e["id"], e["code"]) for e in errors] == [(999, "TOO_LONG")] and table.num_rows == 50
        else:
            assert table.num_rows == 51 and table.column("truncated").to_pylist()[25] is True
