"""Bad rows cost only themselves; bad flags and configs give one-line messages and the design's exit codes."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import read_vectors, run_cli, summary_of, write_jsonl


def test_bad_input_table(tmp_path: Path) -> None:
    lines = [
        b'{"id": "a", "text": "first good row"}',
        b'{"id": "b", "text": "broken json',
        b'["not", "an", "object"]',
        b'{"id": "c"}',
        b'{"id": "d", "text": 42}',
        b'{"id": "e", "text": "   "}',
        b'{"id": "f", "text": "bad \xff\xfe utf8"}',
        b"",
        b'{"id": "g", "text": null}',
        b'{"id": "h", "text": "second good row"}',
        b'{"id": 7, "text": "id of another type"}',
        b'{"id": "i", "text": "last good row, no newline"}',
    ]
    src = tmp_path / "bad.jsonl"
    src.write_bytes(b"\n".join(lines))  # no final newline
    out, errs = tmp_path / "out.parquet", tmp_path / "errors.jsonl"
    proc = run_cli("embed", src, "-o", out, "--errors", errs)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    ids, vectors = read_vectors(out)
    assert ids == ["a", "h", "i"]
    assert vectors.shape == (3, 384)
    errors = [json.loads(line) for line in errs.read_text().splitlines()]
    got = [(e["line"], e["code"]) for e in errors]
    assert got == [
        (2, "INVALID_JSON"),
        (3, "NOT_OBJECT"),
        (4, "MISSING_FIELD"),
        (5, "WRONG_TYPE"),
        (6, "EMPTY_TEXT"),
        (7, "INVALID_UTF8"),
        (9, "MISSING_FIELD"),
        (11, "WRONG_TYPE"),
    ]
    assert [e["id"] for e in errors] == [None, None, "c", "d", "e", None, "g", 7]
    assert all(e["source"] == str(src) and e["message"] for e in errors)
    rows = sorted([e["row"] for e in errors])
    assert rows == [1, 2, 3, 4, 5, 6, 7, 9]  # the blank line is not a row
    summary = summary_of(proc)
    assert summary["rows_in"] == 11 and summary["rows_out"] == 3 and summary["errors"] == 8


def _one_line_error(proc, code: int) -> str:  # type: ignore[no-untyped-def]
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    return lines[0]


@pytest.fixture(scope="module")
def one_row(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("in") / "one.jsonl"
    path.write_text('{"text": "hello"}\n')
    return path


def test_dimensions_on_non_matryoshka_model(one_row: Path, tmp_path: Path) -> None:
    line = _one_line_error(run_cli("embed", one_row, "-o", tmp_path / "o.parquet", "--dimensions", "128"), 64)
    assert "matryoshka" in line
    assert not (tmp_path / "o.parquet").exists()


def test_invalid_parameter_for_task(one_row: Path, tmp_path: Path) -> None:
    line = _one_line_error(
        run_cli("embed", one_row, "-o", tmp_path / "o.parquet", "--pooler-config", '{"logit_mean": 0.5}'), 64
    )
    assert "logit_mean" in line and "dimensions" in line


def test_unknown_pooling_type(one_row: Path, tmp_path: Path) -> None:
    line = _one_line_error(run_cli("embed", one_row, "-o", tmp_path / "o.parquet", "--pooling-type", "MAXX"), 64)
    assert "MAXX" in line and "CLS" in line


def test_unknown_pooler_config_field(one_row: Path, tmp_path: Path) -> None:
    line = _one_line_error(
        run_cli("embed", one_row, "-o", tmp_path / "o.parquet", "--pooler-config", '{"pooling": "MEAN"}'), 64
    )
    assert "pooling" in line


def test_dimensions_larger_than_vector(one_row: Path, tmp_path: Path) -> None:
    line = _one_line_error(
        run_cli(
            "embed",
            one_row,
            "-o",
            tmp_path / "o.parquet",
            "--dimensions",
            "1000",
            "--hf-overrides",
            '{"is_matryoshka": true}',
        ),
        64,
    )
    assert "384" in line


def test_unknown_option_is_usage_error(one_row: Path) -> None:
    proc = run_cli("embed", one_row, "--no-such-flag")
    assert proc.returncode == 64


def test_missing_input(tmp_path: Path) -> None:
    line = _one_line_error(run_cli("embed", tmp_path / "nope.jsonl"), 66)
    assert "nope.jsonl" in line


def test_missing_model(one_row: Path, tmp_path: Path) -> None:
    line = _one_line_error(run_cli("embed", one_row, "--model", "no-such-org/no-such-model"), 66)
    assert "local Hugging Face cache" in line


def test_missing_text_column_in_parquet(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"body": ["x"]}), tmp_path / "in.parquet")
    line = _one_line_error(run_cli("embed", tmp_path / "in.parquet"), 65)
    assert "'text'" in line and "body" in line


def test_unknown_preset(one_row: Path) -> None:
    """An unknown preset is a configuration that cannot be resolved: 78 (docs/exit-codes.md), naming --config."""
    line = _one_line_error(run_cli("embed", one_row, "--config", "nonexistent"), 78)
    assert "--config nonexistent: no such preset" in line
    assert "e5" in line  # the known presets are listed


def test_bad_truncate_prompt_tokens(one_row: Path) -> None:
    line = _one_line_error(run_cli("embed", one_row, "--truncate-prompt-tokens", "100000"), 64)
    assert "256" in line


def test_output_in_unwritable_place(one_row: Path, tmp_path: Path) -> None:
    line = _one_line_error(run_cli("embed", one_row, "-o", "/proc/poolcli/out.parquet"), 73)
    assert "/proc/poolcli" in line
    # An error file that cannot be created: refused before any row is computed, dry or real, nothing written.
    for extra in ((), ("--dry-run",)):
        out = tmp_path / "out.parquet"
        args = ("embed", one_row, "-o", out, "--errors", "/proc/poolcli/errors.jsonl", *extra)
        line = _one_line_error(run_cli(*args), 73)
        assert "--errors /proc/poolcli/errors.jsonl" in line and not list(tmp_path.iterdir())


def test_stop_with_stdin_still_open_exits_cleanly(tmp_path: Path) -> None:
    """--strict stops at a bad first row while the producer is still blocked reading an open stdin: the process
    must exit 65 promptly (not hang, not abort with 134), and the streamed run's error row is published."""
    import subprocess
    import sys
    import time

    errs = tmp_path / "errs.jsonl"
    proc = subprocess.Popen(
        [sys.executable, "-m", "poolcli", "embed", "-", "-o", "-", "--strict", "--window-rows", "1", "--errors", errs],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdin is not None
    proc.stdin.write(b'{"text": ""}\n')
    proc.stdin.flush()  # and the pipe stays open
    started = time.monotonic()
    try:
        code = proc.wait(timeout=120)
    finally:
        proc.kill()
        proc.stdin.close()
    stderr = proc.stderr.read().decode() if proc.stderr else ""
    assert code == 65, stderr
    assert "Traceback" not in stderr and "Fatal Python error" not in stderr
    assert time.monotonic() - started < 120
    rows = [json.loads(line) for line in errs.read_text().splitlines()]
    assert [(r["row"], r["code"]) for r in rows] == [(0, "EMPTY_TEXT")]


@pytest.mark.parametrize(
    ("command", "column", "extra"),
    [
        ("embed", "embedding", ()),
        ("embed", "n_chunks", ("--on-too-long", "chunk")),
        ("token-embed", "token_ids", ()),
        ("classify", "probs", ()),
        ("token-classify", "offsets", ("--offsets",)),
        ("score", "score", ()),
    ],
)
def test_keep_columns_cannot_take_an_output_columns_name(
    tmp_path: Path, tiny_bert: Path, tiny_classifier: Path, ner: Path, command: str, column: str, extra: tuple[str, ...]
) -> None:
    model = {"classify": tiny_classifier, "token-classify": ner}.get(command, tiny_bert)
    row = {"text": "a cat", column: "from the input"}
    if command == "score":
        row = {"text_1": "a cat", "text_2": "a dog", column: 1}
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps(row) + "\n")
    for out in (tmp_path / "o.parquet", "-"):
        proc = run_cli(command, src, "-m", model, "-o", out, "--keep-columns", column, *extra)
        assert proc.returncode == 64, proc.stderr
        assert f"--keep-columns cannot include this command's output column names: {column}" in proc.stderr
        assert proc.stdout == ""
    assert not (tmp_path / "o.parquet").exists()


def test_ray_options_are_checked_before_ray_is_needed(
    one_row: Path, tmp_path: Path, tiny_bert: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "o.parquet"
    line = _one_line_error(run_cli("embed", one_row, "-m", tiny_bert, "-o", out, "--num-workers", "2"), 64)
    assert "--num-workers" in line and "--engine ray" in line
    line = _one_line_error(run_cli("embed", one_row, "-m", tiny_bert, "-o", "-", "--engine", "ray"), 64)
    assert "-o -" in line
    line = _one_line_error(
        run_cli(
            "embed",
            one_row,
            "-m",
            tiny_bert,
            "-o",
            out,
            "--engine",
            "ray",
            "--batch-rows",
            "100",
            "--window-rows",
            "64",
        ),
        64,
    )
    assert "multiple" in line
    # Without Ray installed: the install command, before anything is written.
    monkeypatch.setitem(__import__("sys").modules, "ray", None)
    line = _one_line_error(run_cli("embed", one_row, "-m", tiny_bert, "-o", out, "--engine", "ray"), 64)
    assert "pip install 'poolcli[ray]'" in line
    assert not out.exists()


def test_the_seeds_spellings(tiny_bert: Path, tmp_path: Path) -> None:
    """vLLM's flag names work as poolcli's (and stay out of --help); a --task that contradicts the command is 64."""
    src = write_jsonl(tmp_path / "in.jsonl", [{"text": "hello world"}, {"text": "the quick brown fox"}])
    ours = tmp_path / "ours.parquet"
    assert (
        run_cli("embed", src, "-m", tiny_bert, "-o", ours, "--pooler-config", '{"pooling_type": "CLS"}').returncode == 0
    )
    seeds = tmp_path / "seeds.parquet"
    proc = run_cli(
        "embed", src, "-m", tiny_bert, "-o", seeds, "--override-pooler-config", '{"pooling_type": "CLS"}',
        "--hf_overrides", "{}", "--max_model_len=64", "--task", "embed", "--runner", "pooling",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert read_vectors(seeds)[1].tolist() == read_vectors(ours)[1].tolist()
    proc = run_cli("embed", src, "-m", tiny_bert, "-o", tmp_path / "x.parquet", "--task", "classify")
    assert proc.returncode == 64 and "contradicts the subcommand embed" in proc.stderr
    help_text = run_cli("embed", "--help").stdout
    assert "--pooler-config" in help_text and "override-pooler" not in help_text and "hf_overrides" not in help_text


@pytest.mark.parametrize(
    ("name", "damage"),
    [
        ("model.safetensors", lambda data: b"not a safetensors file" * 100),
        ("model.safetensors", lambda data: data[: len(data) // 2]),
        ("pytorch_model.bin", lambda data: b"junk" * 100),
    ],
    ids=["garbage-safetensors", "truncated-safetensors", "garbage-bin"],
)
def test_damaged_weights_exit_78_naming_the_file(
    name: str, damage: Callable[[bytes], bytes], one_row: Path, tmp_path: Path, tiny_bert: Path
) -> None:
    """A weight file that does not read as weights is a model that cannot be loaded (78, not an internal error):
    the message names the file and what to do."""
    model = tmp_path / "model"
    shutil.copytree(tiny_bert, model)
    weights = model / "model.safetensors"
    data = weights.read_bytes()
    weights.unlink()
    (model / name).write_bytes(damage(data))
    out = tmp_path / "o.parquet"
    line = _one_line_error(run_cli("embed", one_row, "-m", model, "-o", out, "--backend", "torch"), 78)
    assert f"the weight file {model / name} is damaged or not a weights file" in line, line
    assert "internal error" not in line and line.endswith("(re-download the model, or re-save its weights)")
    assert not out.exists()


def test_a_limit_without_room_names_the_flags_that_set_it(one_row: Path, tiny_bert: Path, tmp_path: Path) -> None:
    limit = ("--truncate-prompt-tokens", "2", "-o", tmp_path / "a.parquet")
    line = _one_line_error(run_cli("embed", one_row, "-m", tiny_bert, *limit), 64)
    assert "a limit of 2 tokens leaves no room for text" in line
    assert "--truncate-prompt-tokens sets the limit, else --max-model-len" in line
    prompt = ("--prompt", "one two three four five six ", "--truncation-side", "left", "--truncate-prompt-tokens", "6")
    line = _one_line_error(run_cli("embed", one_row, "-m", tiny_bert, "-o", tmp_path / "b.parquet", *prompt), 64)
    assert "the prompt alone (6 tokens) fills the 6-token limit" in line
    assert "shorten --prompt or pick another --prompt-name" in line and "--truncate-prompt-tokens" in line


def test_ray_only_options_agree_in_number(one_row: Path, tiny_bert: Path, tmp_path: Path) -> None:
    args = ("embed", one_row, "-m", tiny_bert, "-o", tmp_path / "o.parquet")
    line = _one_line_error(run_cli(*args, "--num-workers", "2"), 64)
    assert line.endswith("--num-workers applies to --engine ray"), line
    line = _one_line_error(run_cli(*args, "--num-workers", "2", "--cpus-per-worker", "2"), 64)
    assert line.endswith("--num-workers, --cpus-per-worker apply to --engine ray"), line
