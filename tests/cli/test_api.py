"""The Python API: the same numbers as the command line, bit for bit, for every task; the same checks and messages;
bad rows raised or returned; nothing on disk unless asked; run_file is the command line's file run."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

import poolcli
from poolcli.errors import ConfigError, DataError, PoolcliError, RowError, UsageError
from tests.conftest import run_cli, write_jsonl

TEXTS = [
    "the quick brown fox jumps over the lazy dog",
    "paris is the capital of france",
    "a cat",
    "data rows in a file, " * 6,
    "hello world",
]


def _cli_table(tmp_path: Path, *args: str | Path) -> object:
    out = tmp_path / f"cli-{len(list(tmp_path.glob('cli-*.parquet')))}.parquet"
    proc = run_cli(*args, "-o", out)
    assert proc.returncode == 0, proc.stderr
    return pq.read_table(out)


def _rows_file(tmp_path: Path) -> Path:
    return write_jsonl(tmp_path / "in.jsonl", [{"text": t} for t in TEXTS])


def test_embed_is_bit_identical_to_the_cli(tmp_path: Path, tiny_bert: Path) -> None:
    cli = _cli_table(tmp_path, "embed", _rows_file(tmp_path), "-m", tiny_bert, "--pooling-type", "MEAN")
    vectors = poolcli.embed(TEXTS, model=str(tiny_bert), pooling_type="MEAN")
    assert vectors.dtype == np.float32 and vectors.shape == (len(TEXTS), 32)
    expected = np.array(cli.column("embedding").to_pylist(), dtype=np.float32)  # type: ignore[attr-defined]
    assert np.array_equal(vectors, expected)
    table = poolcli.embed(TEXTS, model=str(tiny_bert), pooling_type="MEAN", as_table=True)
    assert table.equals(cli.replace_schema_metadata(None))  # type: ignore[attr-defined]


def test_default_model_matches_the_cli(tmp_path: Path) -> None:
    cli = _cli_table(tmp_path, "embed", _rows_file(tmp_path))
    expected = np.array(cli.column("embedding").to_pylist(), dtype=np.float32)  # type: ignore[attr-defined]
    assert np.array_equal(poolcli.embed(TEXTS), expected)


def test_classify_is_bit_identical_to_the_cli(tmp_path: Path, tiny_classifier: Path) -> None:
    cli = _cli_table(tmp_path, "classify", _rows_file(tmp_path), "-m", tiny_classifier, "--top-k", "2")
    m = poolcli.load(str(tiny_classifier))
    probs = m.classify(TEXTS, top_k=2)
    assert np.array_equal(probs, np.array(cli.column("probs").to_pylist(), dtype=np.float32))  # type: ignore[attr-defined]
    assert m.classify(TEXTS, top_k=2, as_table=True).equals(cli.replace_schema_metadata(None))  # type: ignore[attr-defined]


def test_token_classify_is_bit_identical_to_the_cli(tmp_path: Path, ner: Path) -> None:
    cli = _cli_table(tmp_path, "token-classify", _rows_file(tmp_path), "-m", ner, "--offsets", "--aggregate", "simple")
    m = poolcli.load(str(ner))
    per_row = m.token_classify(TEXTS)
    expected = cli.column("probs").to_pylist()  # type: ignore[attr-defined]
    assert len(per_row) == len(TEXTS)
    for got, want in zip(per_row, expected, strict=True):
        assert np.array_equal(got, np.array(want, dtype=np.float32))
    table = m.token_classify(TEXTS, offsets=True, aggregate="simple", as_table=True)
    assert table.equals(cli.replace_schema_metadata(None))  # type: ignore[attr-defined]


def test_score_and_rerank_are_bit_identical_to_the_cli(tmp_path: Path, tiny_ce: Path, tiny_bert: Path) -> None:
    pairs = [(TEXTS[i], TEXTS[(i + 2) % len(TEXTS)]) for i in range(len(TEXTS))]
    src = write_jsonl(tmp_path / "pairs.jsonl", [{"text_1": a, "text_2": b} for a, b in pairs])
    cli = _cli_table(tmp_path, "score", src, "-m", tiny_ce)
    scores = poolcli.score(pairs, model=str(tiny_ce))
    assert np.array_equal(scores, cli.column("score").to_numpy())  # type: ignore[attr-defined]
    # Two lists, bi-encoder, every pair: an [N, M] matrix equal to the CLI's --cross rows.
    q = write_jsonl(tmp_path / "q.jsonl", [{"text": t} for t in TEXTS[:2]])
    d = write_jsonl(tmp_path / "d.jsonl", [{"text": t} for t in TEXTS])
    cross = _cli_table(tmp_path, "score", q, d, "--cross", "-m", tiny_bert)
    matrix = poolcli.score(TEXTS[:2], TEXTS, cross=True, model=str(tiny_bert))
    assert matrix.shape == (2, len(TEXTS))
    assert np.array_equal(matrix.reshape(-1), cross.column("score").to_numpy())  # type: ignore[attr-defined]
    # Rerank: one query against documents, best first.
    run = write_jsonl(tmp_path / "run.jsonl", [{"id": 0, "query": "a cat", "documents": TEXTS}])
    ranked_cli = _cli_table(tmp_path, "rerank", run, "-m", tiny_ce, "--top-n", "3")
    ranked = poolcli.rerank("a cat", TEXTS, model=str(tiny_ce), top_n=3, return_documents=True)
    assert [r["index"] for r in ranked] == ranked_cli.column("index").to_pylist()  # type: ignore[attr-defined]
    assert [np.float32(r["relevance_score"]) for r in ranked] == list(
        ranked_cli.column("relevance_score").to_numpy()  # type: ignore[attr-defined]
    )
    assert [r["document"] for r in ranked] == [TEXTS[i] for i in ranked_cli.column("index").to_pylist()]  # type: ignore[attr-defined]


def test_model_loads_once_and_serves_many_calls(tiny_bert: Path) -> None:
    m = poolcli.load(str(tiny_bert))
    first = m.embed(TEXTS[:2])
    body = m.loader.hidden_state_model()
    again = m.embed(TEXTS[:2], normalize=False)
    assert m.loader.hidden_state_model() is body  # the same weights served both calls
    assert np.allclose(first, again / np.linalg.norm(again, axis=1, keepdims=True), atol=1e-6)
    assert m.score([(TEXTS[0], TEXTS[1])]).shape == (1,)  # a bi-encoder score on the same body
    assert m.loader.hidden_state_model() is body


def test_bad_rows_raise_or_come_back(tiny_bert: Path) -> None:
    m = poolcli.load(str(tiny_bert))
    texts = ["good", "", "also good", 7]
    with pytest.raises(RowError) as info:
        m.embed(texts)  # type: ignore[arg-type]
    assert "row 1: EMPTY_TEXT" in str(info.value) and [e.row for e in info.value.errors] == [1, 3]
    assert isinstance(info.value, DataError)
    result = m.embed(texts, on_error="return")  # type: ignore[arg-type]
    assert result.ids == [0, 2] and [(e.row, e.code) for e in result.errors] == [(1, "EMPTY_TEXT"), (3, "WRONG_TYPE")]
    assert np.array_equal(result.table.column("embedding").to_pylist(), m.embed(["good", "also good"]).tolist())
    with_ids = m.embed(["x", " "], ids=["a", "b"], on_error="return")
    assert with_ids.ids == ["a"] and with_ids.errors[0].id == "b"
    too_long = m.embed(["word " * 500], on_too_long="error", on_error="return")
    assert [e.code for e in too_long.errors] == ["TOO_LONG"]


def test_same_checks_and_messages_as_the_cli(tmp_path: Path, tiny_bert: Path) -> None:
    src = _rows_file(tmp_path)
    cases: list[tuple[list[str], dict[str, object], type[PoolcliError]]] = [
        (["--dimensions", "8"], {"dimensions": 8}, UsageError),
        (["--config", "nonexistent"], {"config": "nonexistent"}, ConfigError),
        (["--pooler-config", '{"logit_mean": 1}'], {"pooler_config": {"logit_mean": 1}}, UsageError),
        (["--truncate-prompt-tokens", "100000"], {"truncate_prompt_tokens": 100000}, UsageError),
        (["--prompt-name", "nope"], {"prompt_name": "nope"}, UsageError),
    ]
    for flags, kwargs, error in cases:
        proc = run_cli("embed", src, "-m", tiny_bert, "-o", tmp_path / "x.parquet", *flags)
        assert proc.returncode == error.exit_code, proc.stderr
        with pytest.raises(error) as info:
            poolcli.embed(["x"], model=str(tiny_bert), **kwargs)  # type: ignore[arg-type]
        assert proc.stderr.strip() == f"poolcli: error: {info.value}", flags
    with pytest.raises(UsageError, match="no option bogus"):
        poolcli.load(str(tiny_bert)).embed(["x"], bogus=1)
    with pytest.raises(UsageError, match="poolcli.load"):
        poolcli.load(str(tiny_bert)).embed(["x"], device="cpu")
    with pytest.raises(UsageError, match="a list of strings"):
        poolcli.embed("not a list", model=str(tiny_bert))


def test_options_that_do_not_apply_to_the_task_are_refused(tiny_bert: Path, tiny_ce: Path) -> None:
    m = poolcli.load(str(tiny_bert))
    for option in ({"skip_special_tokens": True}, {"top_k": 3}, {"colbert_role": "query"}, {"overwrite": True}):
        with pytest.raises(
            UsageError, match=f"embed takes no option {next(iter(option))} \\(not an option of embed\\)"
        ):
            m.embed(["x"], **option)
    with pytest.raises(UsageError, match="score takes no option truncation_side"):
        poolcli.load(str(tiny_ce)).score([("a", "b")], truncation_side="left")
    with pytest.raises(UsageError, match="takes no option top_k"):
        poolcli.run_file("embed", "in.jsonl", model=str(tiny_bert), top_k=3)
    assert m.embed(["x"], quiet=True, prompt="q: ").shape == (1, 32)


def test_each_tasks_options_are_its_commands_flags() -> None:
    import importlib
    import inspect

    from poolcli.request import TASK_FIELDS, Request

    for task, allowed in TASK_FIELDS.items():
        command = getattr(importlib.import_module(f"poolcli.commands.{task}"), task)
        flags = set(inspect.signature(command).parameters) & set(Request.__struct_fields__)
        assert flags == allowed, task


def test_nothing_is_written_to_disk(tmp_path: Path, tiny_bert: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    before = sorted(os.listdir(tmp_path))
    poolcli.embed(["a", ""], model=str(tiny_bert), on_error="return")
    poolcli.score([("a", "b")], model=str(tiny_bert))
    assert sorted(os.listdir(tmp_path)) == before


def test_run_file_is_the_cli_run(tmp_path: Path, tiny_bert: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", [{"id": f"r{i}", "text": t} for i, t in enumerate([*TEXTS, ""])])
    by_cli, by_api = tmp_path / "cli.parquet", tmp_path / "api.parquet"
    assert (
        run_cli("embed", src, "-m", tiny_bert, "-o", by_cli, "--part-rows", "2", "--window-rows", "2").returncode == 0
    )
    summary = poolcli.run_file("embed", str(src), str(by_api), model=str(tiny_bert), part_rows=2, window_rows=2)
    assert summary["rows_out"] == len(TEXTS) and summary["errors"] == 1 and summary["status"] == "ok"
    assert pq.read_table(by_api).equals(pq.read_table(by_cli))
    assert (
        json.loads(pq.read_schema(by_api).metadata[b"poolcli"])["fingerprint"]
        == json.loads(pq.read_schema(by_cli).metadata[b"poolcli"])["fingerprint"]
    )
    errors = [json.loads(line) for line in (tmp_path / "api.errors.jsonl").read_text().splitlines()]
    assert [(e["id"], e["code"]) for e in errors] == [("r5", "EMPTY_TEXT")]
    again = poolcli.run_file("embed", str(src), str(by_api), model=str(tiny_bert), part_rows=2, window_rows=2)
    assert again["status"] == "already complete"
    # A no-op rerun still reports the run's error rows and their file (cron jobs check `errors`).
    assert again["rows_out"] == len(TEXTS) and again["errors"] == 1
    assert again["errors_file"] == str(tmp_path / "api.errors.jsonl")
    with pytest.raises(ConfigError):  # a different command on the same output: the fingerprint guard
        poolcli.run_file("embed", str(src), str(by_api), model=str(tiny_bert), normalize=False)
    with pytest.raises(DataError) as stopped:
        poolcli.run_file("embed", str(src), str(tmp_path / "strict.parquet"), model=str(tiny_bert), strict=True)
    assert stopped.value.summary is not None and stopped.value.summary["errors"] == 1


def test_token_embed_is_bit_identical_to_the_cli(tmp_path: Path, tiny_bert: Path) -> None:
    cli = _cli_table(tmp_path, "token-embed", _rows_file(tmp_path), "-m", tiny_bert, "--skip-special-tokens")
    m = poolcli.load(str(tiny_bert))
    per_row = m.token_embed(TEXTS, skip_special_tokens=True)
    assert all(v.dtype == np.float16 for v in per_row)
    for got, want in zip(per_row, cli.column("embeddings").to_pylist(), strict=True):  # type: ignore[attr-defined]
        assert np.array_equal(got, np.array(want, dtype=np.float16))
    table = m.token_embed(TEXTS, skip_special_tokens=True, as_table=True)
    assert table.equals(cli.replace_schema_metadata(None))  # type: ignore[attr-defined]


def test_a_bad_option_value_names_the_option_as_passed(tmp_path: Path, tiny_bert: Path) -> None:
    """A value of the wrong kind or out of range is named as the caller wrote it (not as msgspec's `$.field`)."""
    with pytest.raises(UsageError) as info:
        poolcli.load(str(tiny_bert), window_rows=0)
    assert str(info.value) == "window_rows=0: expected an int >= 1"
    with pytest.raises(UsageError, match=r"^dtype='f8': expected one of auto, bfloat16, float16, float32$"):
        poolcli.load(str(tiny_bert), dtype="f8")
    with pytest.raises(UsageError, match=r"^max_batch_size='x': expected an int, got str$"):
        poolcli.load(str(tiny_bert), max_batch_size="x")
    with pytest.raises(UsageError, match=r"^output_dtype='int9': expected one of binary, float16, float32, "):
        poolcli.load(str(tiny_bert)).embed(["x"], output_dtype="int9")
    out = tmp_path / "o.parquet"
    with pytest.raises(UsageError, match=r"^part_rows=0: expected an int >= 1$"):  # was a ZeroDivisionError
        poolcli.run_file("embed", str(_rows_file(tmp_path)), str(out), model=str(tiny_bert), part_rows=0)
    with pytest.raises(UsageError, match=r"^max_error_rate=1.5: expected a float <= 1.0$"):
        poolcli.run_file("embed", str(_rows_file(tmp_path)), str(out), model=str(tiny_bert), max_error_rate=1.5)
    assert not out.exists()


def test_the_default_models_recorded_name_loads_the_bundled_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An output of the default model records its Hub name; that name, given back (to poolcli.load or --model: the
    same resolution), embeds queries with the bundled copy when the Hugging Face cache lacks it (offline), with the
    output's own numbers."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hub-cache"))
    out = tmp_path / "o.parquet"
    assert run_cli("embed", _rows_file(tmp_path), "-o", out, "--backend", "torch").returncode == 0
    name = json.loads((pq.read_schema(out).metadata or {})[b"poolcli"])["model"]
    assert name == "sentence-transformers/all-MiniLM-L6-v2"
    m = poolcli.load(name, backend="torch")
    assert m.name == name and m.resolved.source == "bundled"
    recorded = np.array(pq.read_table(out).column("embedding").to_pylist(), dtype=np.float32)
    assert np.array_equal(m.embed(TEXTS), recorded)
