"""What a run can refuse without the model's weights it refuses before loading or converting them: the tokenizers'
limits (a prompt that fills the limit, a ColBERT role with no room), --quantize int8 on a body that runs with torch.

Shown with weights that do not load (the refusal is still the tokenizer's 64, not the weights' error) and with a
compiled-model cache that stays empty (no body was converted); the dry run refuses the same, with the same code.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests import models
from tests.conftest import run_cli, shared_model, write_jsonl

PROMPT = ("--prompt", "one two three four five six ", "--truncation-side", "left", "--truncate-prompt-tokens", "6")


def _garbage_weights(model: Path, tmp_path: Path) -> Path:
    """A copy of `model` whose weight file is not weights."""
    copy = tmp_path / f"{model.name}-garbage"
    shutil.copytree(model, copy)
    (copy / "model.safetensors").write_bytes(b"not a safetensors file" * 100)
    return copy


def _refused(args: tuple[str | Path, ...], message: str, env: dict[str, str] | None = None) -> None:
    for extra in ((), ("--dry-run",)):
        proc = run_cli(*args, *extra, env=env)
        assert proc.returncode == 64, (extra, proc.stderr)
        assert message in proc.stderr and "Traceback" not in proc.stderr, (extra, proc.stderr)


@pytest.fixture(scope="module")
def one_row(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("in") / "one.jsonl", [{"text": "hello world"}])


def test_a_prompt_that_fills_the_limit_is_refused_before_the_body(
    one_row: Path, tiny_bert: Path, tmp_path: Path
) -> None:
    """--backend auto picks OpenVINO for this BERT where it is installed: the refusal comes before the body is
    converted (the cache stays empty), and with weights that cannot load it is still the tokenizer's."""
    cache = tmp_path / "cache"
    message = "the prompt alone (6 tokens) fills the 6-token limit"
    args = ("embed", one_row, "-m", tiny_bert, "-o", tmp_path / "a.parquet", *PROMPT)
    _refused(args, message, env={"POOLCLI_CACHE_DIR": str(cache)})
    assert not [p for p in cache.rglob("*") if p.is_file()]
    garbage = _garbage_weights(tiny_bert, tmp_path)
    _refused(("embed", one_row, "-m", garbage, "-o", tmp_path / "b.parquet", *PROMPT), message)
    assert not (tmp_path / "a.parquet").exists() and not (tmp_path / "b.parquet").exists()


def test_the_corrected_command_runs_where_a_refused_one_did_not(one_row: Path, tiny_bert: Path, tmp_path: Path) -> None:
    """A run refused after taking its output (nothing committed) leaves nothing that refuses the corrected
    command: it runs (not 78, "another fingerprint"), and its output is the only one there."""
    out = tmp_path / "out.parquet"
    refused = run_cli("embed", one_row, "-m", tiny_bert, "-o", out, "--backend", "torch", *PROMPT)
    assert refused.returncode == 64, refused.stderr
    fixed = run_cli("embed", one_row, "-m", tiny_bert, "-o", out, "--backend", "torch")
    assert fixed.returncode == 0, fixed.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.parquet"]


def test_a_colbert_role_without_room_is_refused_before_the_body(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    """A late-interaction scorer's ColBERT encoders are built before its body is loaded."""
    pylate = shared_model(tmp_path_factory, "colbert-pylate", models.build_colbert_pylate)
    pairs = write_jsonl(tmp_path / "pairs.jsonl", [{"query": "a query", "document": "a document"}])
    args = ("score", pairs, "-m", _garbage_weights(pylate, tmp_path), "-o", tmp_path / "s.parquet")
    _refused((*args, "--max-model-len", "3"), "a ColBERT query length of 3 tokens leaves no room for text")


def test_quantize_on_a_torch_body_is_refused_before_loading(one_row: Path, tiny_bert: Path, tmp_path: Path) -> None:
    """With no writable cache, --backend auto runs this BERT with torch, which --quantize int8 cannot quantize:
    refused as the loader would refuse it, without loading the weights first."""
    blocked = tmp_path / "not-a-dir"
    blocked.write_text("")
    garbage = _garbage_weights(tiny_bert, tmp_path)
    _refused(
        ("embed", one_row, "-m", garbage, "-o", tmp_path / "o.parquet", "--quantize", "int8"),
        "--quantize int8 needs the OpenVINO backend, and this model runs with torch",
        env={"POOLCLI_CACHE_DIR": str(blocked / "cache")},
    )
