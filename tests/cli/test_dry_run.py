"""--dry-run: the real run's checks and plan, with no weights loaded and nothing written; the same exit codes."""

from __future__ import annotations

import fcntl
import importlib.util
import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import run_cli, summary_of, write_jsonl

DOCS = ["Paris is the capital of France.", "The quick brown fox.", "Numbers: 1 2 3.", "A dog sleeps."]


def _listing(*roots: Path) -> dict[str, tuple[int, int]]:
    """Every path under `roots` (hidden ones included) with its size and mtime: what 'nothing written' compares."""
    out: dict[str, tuple[int, int]] = {}
    for root in roots:
        if not root.exists():
            continue
        for p in sorted(root.rglob("*")):
            st = p.lstat()
            out[str(p)] = (st.st_size if p.is_file() else 0, st.st_mtime_ns if p.is_file() else 0)
    return out


def _plan(proc: Any) -> dict[str, Any]:
    assert proc.returncode == 0, proc.stderr
    plan: dict[str, Any] = json.loads(proc.stdout)
    assert plan["poolcli"] == "plan"
    return plan


def _schema(path: Path) -> list[dict[str, Any]]:
    import pyarrow.parquet as pq

    from poolcli.drivers.dry_run import schema_fields

    return schema_fields(pq.read_schema(path))


def _recorded(path: Path) -> dict[str, Any]:
    """The run's identity as the output's metadata records it."""
    import pyarrow.parquet as pq

    meta = pq.read_schema(path).metadata or {}
    recorded: dict[str, Any] = json.loads(meta[b"poolcli"])
    return recorded


@pytest.fixture
def inputs(tmp_path: Path) -> dict[str, Path]:
    """One input per command, under tmp_path/in (so outputs and cache can live beside it)."""
    d = tmp_path / "in"
    d.mkdir()
    texts = [{"id": f"r{i}", "text": f"row {i}: {DOCS[i % 4]}", "lang": "en" if i % 2 else None} for i in range(7)]
    texts.insert(3, {"id": "bad"})  # a row the reader rejects (MISSING_FIELD)
    pairs = [{"text_1": DOCS[i], "text_2": DOCS[(i + 1) % 4], "n": i} for i in range(4)]
    rerank = [{"id": "q1", "query": "capital", "documents": DOCS}, {"id": "q2", "query": "fox", "documents": DOCS[:2]}]
    return {
        "texts": write_jsonl(d / "texts.jsonl", texts),
        "pairs": write_jsonl(d / "pairs.jsonl", pairs),
        "rerank": write_jsonl(d / "rerank.jsonl", rerank),
    }


CASES = [
    ("embed", "texts", "tiny_bert", ("--keep-columns", "lang", "--output-dtype", "binary")),
    ("classify", "texts", "tiny_classifier", ()),
    ("token-classify", "texts", "ner", ("--offsets",)),
    ("token-embed", "texts", "tiny_bert", ()),
    ("score", "pairs", "tiny_ce", ("--keep-columns", "n")),
    ("rerank", "rerank", "tiny_ce", ("--top-n", "2", "--return-documents")),
]


@pytest.mark.parametrize(("command", "source", "model_fixture", "extra"), CASES, ids=[c[0] for c in CASES])
def test_the_plan_is_the_run_s(
    command: str,
    source: str,
    model_fixture: str,
    extra: tuple[str, ...],
    inputs: dict[str, Path],
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    """The dry run writes nothing (no output, state, lock or compiled-model cache entry; the backend `auto` picks
    is decided by probing the cache), and its schema, row count and fingerprint are those of the real run, which
    then turns the dry run's answer into 'complete'."""
    model = request.getfixturevalue(model_fixture)
    src = inputs[source]
    out = tmp_path / "out" / "result.parquet"
    cache = tmp_path / "cache" / "poolcli"  # does not exist: a dry run that made it would show here
    before = _listing(tmp_path, model)
    plan = _plan(
        run_cli(command, src, "-m", model, "-o", out, *extra, "--dry-run", env={"POOLCLI_CACHE_DIR": str(cache)})
    )
    assert _listing(tmp_path, model) == before
    from poolcli.model.backend import openvino_installed

    if command != "token-classify":  # a BERT body: auto converts it when OpenVINO is installed and the cache could be
        assert plan["backend"] == ("openvino" if openvino_installed() else "torch")
    assert plan["state"]["status"] == "new" and plan["output"]["path"] == str(out)
    assert plan["output"]["state_folder"] == str(tmp_path / "out" / ".result.parquet.poolcli")

    dry = _plan(run_cli(command, src, "-m", model, "-o", out, *extra, "--backend", "torch", "--dry-run"))
    assert _listing(tmp_path, model) == before
    proc = run_cli(command, src, "-m", model, "-o", out, *extra, "--backend", "torch")
    assert proc.returncode == 0, proc.stderr
    summary = summary_of(proc)
    assert dry["output"]["schema"] == _schema(out)
    assert dry["input"]["rows"] == summary["rows_in"] and dry["input"]["rows_exact"]
    recorded = _recorded(out)
    assert dry["state"]["fingerprint"] == recorded["fingerprint"]  # the identity a resume compares is the run's
    assert dry["plan"] == recorded["plan"] and dry["model"]["weights_sha256"] == recorded["model_weights_sha256"]
    if source == "texts":
        assert dry["input"]["error_rows"] == 1 == summary["errors"]
    again = _plan(run_cli(command, src, "-m", model, "-o", out, *extra, "--backend", "torch", "--dry-run"))
    assert again["state"] | {"fingerprint": None} == {
        "status": "complete",
        "parts_committed": 0,
        "rows_committed": summary["rows_out"],
        "errors_committed": summary["errors"],
        "fingerprint": None,
    }


def test_weights_are_not_loaded(tiny_bert: Path, tmp_path: Path) -> None:
    """A model whose weight file is garbage: the dry run plans it (it reads config, tokenizer and hashes the
    bytes, loads nothing); the real run cannot load it (78, naming the file). The dry run's loader refuses to load
    anything at all."""
    model = tmp_path / "model"
    shutil.copytree(tiny_bert, model)
    weights = next(model.glob("*.safetensors"))
    weights.write_bytes(b"not a safetensors file" * 100)
    src = write_jsonl(tmp_path / "in.jsonl", [{"text": "hello"}])
    args = ("embed", src, "-m", model, "-o", tmp_path / "o.parquet", "--backend", "torch")
    plan = _plan(run_cli(*args, "--dry-run"))
    assert plan["model"]["path"] == str(model)
    real = run_cli(*args)
    assert real.returncode == 78 and "Error while deserializing header" in real.stderr, real.stderr
    assert f"the weight file {weights} is damaged" in real.stderr and "internal error" not in real.stderr

    from poolcli.errors import InternalError
    from poolcli.model.load import Loader
    from poolcli.model.resolve import resolve_model

    loader = Loader(resolve_model(str(tiny_bert)), device="cpu", dtype="auto", trust_remote_code=False, dry_run=True)
    with pytest.raises(InternalError):
        loader.hidden_state_model()


def _foreign(tmp_path: Path) -> list[str]:
    (tmp_path / "taken.parquet").write_text("not ours")
    return ["-o", str(tmp_path / "taken.parquet")]


def _unwritable(tmp_path: Path) -> list[str]:
    return ["-o", "/proc/poolcli/out.parquet"]


def _output_is_input(tmp_path: Path) -> list[str]:
    return ["-o", str(tmp_path / "in.jsonl")]


MISTAKES: list[tuple[str, str, Any]] = [
    ("bad-option-value", "embed", ["--pooling-type", "MAXX"]),
    ("unknown-preset", "embed", ["--config", "nonexistent"]),
    ("bad-pooler-config-field", "embed", ["--pooler-config", '{"pooling": "MEAN"}']),
    ("pooler-config-not-json", "embed", ["--pooler-config", "{not json"]),
    ("dimensions-not-matryoshka", "embed", ["--dimensions", "16"]),
    ("part-rows-not-multiple", "embed", ["--part-rows", "100", "--window-rows", "64"]),
    ("quantize-on-torch", "embed", ["--quantize", "int8", "--backend", "torch"]),
    ("calibration-missing", "embed", ["--quantize", "int8", "--calibration", "/nonexistent.jsonl"]),
    ("truncate-too-long", "embed", ["--truncate-prompt-tokens", "100000"]),
    ("no-room-for-text", "embed", ["--truncate-prompt-tokens", "2"]),
    ("keep-output-column", "token-embed", ["--keep-columns", "token_ids"]),
    ("missing-model", "embed", ["-m", "no-such-org/no-such-model"]),
    ("output-is-input", "embed", _output_is_input),
    ("foreign-output", "embed", _foreign),
    ("unwritable-output", "embed", _unwritable),
    ("ray-to-stdout", "embed", ["--engine", "ray", "-o", "-"]),
    ("ray-batch-rows", "embed", ["--engine", "ray", "--batch-rows", "100", "--window-rows", "64"]),
    ("aggregate-without-activation", "token-classify", ["--aggregate", "simple", "--no-activation"]),
    ("rerank-top-n", "rerank", ["--top-n", "-5"]),
]


@pytest.mark.parametrize(("name", "command", "extra"), MISTAKES, ids=[m[0] for m in MISTAKES])
def test_a_mistake_exits_as_the_run_does(name: str, command: str, extra: Any, tiny_bert: Path, tmp_path: Path) -> None:
    if name.startswith("ray-"):
        pytest.importorskip("ray.data")
    src = write_jsonl(tmp_path / "in.jsonl", [{"text": "hello world", "query": "q", "documents": ["a", "b"]}])
    args = extra(tmp_path) if callable(extra) else list(extra)
    if "-o" not in args:
        args += ["-o", str(tmp_path / "out.parquet")]
    if "-m" not in args:
        args += ["-m", str(tiny_bert)]
    if not any(a in args for a in ("--backend", "--quantize")):
        args += ["--backend", "torch"]  # the real run would convert the body before some refusals: not needed here
    before = _listing(tmp_path)
    dry = run_cli(command, src, *args, "--dry-run")
    assert _listing(tmp_path) == before, name
    real = run_cli(command, src, *args)
    assert dry.returncode == real.returncode != 0, (dry.stderr, real.stderr)
    assert dry.stderr.splitlines()[-1] == real.stderr.splitlines()[-1]  # the same one-line message
    assert dry.stdout == ""


def test_an_output_held_by_another_run_is_busy(tiny_bert: Path, tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", [{"text": "hello"}])
    out = tmp_path / "o.parquet"
    lock = tmp_path / ".o.parquet.poolcli.lock"
    with open(lock, "ab") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        dry = run_cli("embed", src, "-m", tiny_bert, "-o", out, "--dry-run")
        real = run_cli("embed", src, "-m", tiny_bert, "-o", out, "--backend", "torch")
    assert dry.returncode == real.returncode == 75, (dry.stderr, real.stderr)


def test_a_stopped_run_is_planned_as_a_resume(tiny_bert: Path, tmp_path: Path) -> None:
    """A run stopped over its error budget keeps its committed parts: the dry run says the rerun skips them."""
    rows = [{"id": i, "text": f"text {i}"} for i in range(6)]
    rows[3] = {"id": 3, "text": ""}
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    out = f"{tmp_path / 'out'}/"
    args = ("embed", src, "-m", tiny_bert, "-o", out, "--part-rows", "2", "--window-rows", "2", "--backend", "torch")
    stopped = run_cli(*args, "--max-errors", "0")
    assert stopped.returncode == 65, stopped.stderr
    before = _listing(tmp_path)
    plan = _plan(run_cli(*args, "--max-errors", "0", "--dry-run"))
    assert _listing(tmp_path) == before
    assert plan["state"]["status"] == "resume" and plan["state"]["parts_committed"] == 2
    assert plan["state"]["rows_committed"] == 3 and plan["state"]["errors_committed"] == 1
    assert plan["output"]["kind"] == "dir" and plan["output"]["parts"] == 3
    changed = run_cli(*args[:-2], "--dry-run")  # another backend: another run's output
    assert changed.returncode == 78 and "different fingerprint" in changed.stderr
    assert _plan(run_cli(*args[:-2], "--dry-run", "--overwrite"))["state"]["status"] == "replace"


def test_rows_of_a_large_input_are_estimated(tiny_bert: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Above the exact-count size a JSONL file's rows are estimated from its first bytes (and said to be);
    Parquet rows come from the metadata, exact at any size."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from poolcli.drivers import dry_run

    monkeypatch.setattr(dry_run, "EXACT_BYTES", 4096)
    monkeypatch.setattr(dry_run, "SAMPLE_BYTES", 1024)
    rows = [{"id": i, "text": f"row number {i:05d} of the corpus"} for i in range(2000)]
    src = write_jsonl(tmp_path / "big.jsonl", rows)
    plan = _plan(run_cli("embed", src, "-m", tiny_bert, "--dry-run"))
    assert plan["input"]["rows_exact"] is False and "estimated" in plan["input"]["rows_counted"]
    assert abs(plan["input"]["rows"] - 2000) < 100
    assert plan["output"]["parts"] == 1 and plan["output"]["path"] == str(tmp_path / "big.embed.parquet")
    pq.write_table(pa.table({"text": [r["text"] for r in rows]}), tmp_path / "big.parquet", row_group_size=300)
    plan = _plan(run_cli("embed", tmp_path / "big.parquet", "-m", tiny_bert, "--dry-run", "--part-rows", "512",
                         "--window-rows", "256"))  # fmt: skip
    assert plan["input"]["rows"] == 2000 and plan["input"]["rows_exact"] is True
    assert plan["input"]["rows_counted"] == "Parquet metadata" and plan["output"]["parts"] == 4


def test_stdout_stdin_and_the_python_api(tiny_bert: Path, tmp_path: Path) -> None:
    import poolcli
    from poolcli.errors import UsageError

    src = write_jsonl(tmp_path / "in.jsonl", [{"text": "hello"}, {"text": "world"}])
    plan = _plan(run_cli("embed", src, "-m", tiny_bert, "-o", "-", "--dry-run"))
    assert plan["output"]["kind"] == "stdout" and plan["state"] is None and plan["output"]["parts"] is None
    piped = _plan(run_cli("embed", "-", "-m", tiny_bert, "-o", "-", "--dry-run", stdin=src.read_bytes()))
    assert piped["input"]["rows"] is None and not piped["input"]["rows_exact"]
    api = poolcli.plan_file("embed", str(src), str(tmp_path / "o.parquet"), model=str(tiny_bert), backend="torch")
    assert api["input"]["rows"] == 2 and api["state"]["status"] == "new"
    if importlib.util.find_spec("ray") is not None:  # Ray's own checks, and no cluster contacted
        ray_plan = _plan(run_cli("embed", src, "-m", tiny_bert, "-o", tmp_path / "r", "--engine", "ray", "--dry-run"))
        assert ray_plan["engine"] == "ray" and ray_plan["batching"]["part_rows"] == ray_plan["ray"]["batch_rows"]
        assert ray_plan["state"]["status"] == "new"
    assert os.listdir(tmp_path) == ["in.jsonl"]
    with pytest.raises(UsageError):
        poolcli.plan_file("embed", str(src), model=str(tiny_bert), pooling_type="MAXX")
