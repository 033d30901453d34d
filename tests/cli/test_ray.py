"""`--engine ray`: the same engines on a local Ray cluster, every row exactly once, resumable; and the stage for
users' own Ray Data pipelines.

The cluster is started once for this module (`ray.init(num_cpus=2)`); every test here runs in one pytest-xdist
worker (group "ray", see tests/conftest.py) so that only one cluster starts per test run.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from tests.conftest import CliResult, run_cli, summary_of, write_jsonl

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("ray")]

# Small parts so that every input is several Ray tasks; one thread everywhere so local and Ray batches run the
# same kernels (a matmul's last bits can depend on the thread count).
SMALL = ("--window-rows", "16", "--threads", "1")
LOCAL = (*SMALL, "--part-rows", "32")
RAY = (*SMALL, "--engine", "ray", "--num-workers", "2", "--batch-rows", "32")
RAY1 = (*RAY, "--num-workers", "1")  # one actor: the parity tests need parts, not parallelism (and CI has 2 cores)


@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:
    import ray

    # This worker was pinned to one core (tests/conftest.py); the cluster's processes get both, as a user's would.
    saved = os.sched_getaffinity(0) if hasattr(os, "sched_setaffinity") else None
    if saved is not None:
        os.sched_setaffinity(0, range(os.cpu_count() or 1))
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    try:
        yield ray
    finally:
        ray.shutdown()
        if saved is not None:
            os.sched_setaffinity(0, saved)


def _texts(n: int) -> list[str]:
    words = "paris berlin river capital numbers vector quick brown fox lazy dog hello world".split()
    return [" ".join(words[(i * 7 + j) % len(words)] for j in range(1 + (i * 5) % 23)) for i in range(n)]


def _rows_with_errors(n: int) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = [{"id": f"r{i}", "text": t} for i, t in enumerate(_texts(n))]
    rows[5]["text"] = ""  # EMPTY_TEXT
    rows[41]["text"] = 17  # WRONG_TYPE
    return rows


def _same_output(local: Path, ray_out: Path, key: str = "id") -> pa.Table:
    """Both outputs hold the same rows under the same ids with bit-identical values, the same schema and the same
    error rows; returns the Ray table."""
    a, b = pq.read_table(local), pq.read_table(ray_out)
    assert a.schema.remove_metadata() == b.schema.remove_metadata()
    assert b.num_rows == a.num_rows
    ids = b.column(key).to_pylist()
    if key == "id":
        assert len(set(ids)) == len(ids)
    # Same order too: parts are numbered by input position, whichever worker committed them.
    assert a.remove_column(0).equals(b.remove_column(0)) and a.column(0).equals(b.column(0))
    meta_a = json.loads(a.schema.metadata[b"poolcli"])
    meta_b = json.loads(b.schema.metadata[b"poolcli"])
    assert meta_b.pop("driver") == "ray"
    for drop in ("fingerprint", "part_rows", "driver"):
        meta_a.pop(drop, None)
        meta_b.pop(drop, None)
    assert meta_a == meta_b
    return b


def _errors(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _ok(proc: CliResult) -> dict[str, Any]:
    assert proc.returncode == 0, proc.stderr
    return summary_of(proc)


# -- every task, local vs ray -------------------------------------------------------------------------------------


def test_embed_dataset_dir_equals_local(cluster: Any, st_model_factory: Any, tmp_path: Path) -> None:
    model = st_model_factory("mean-norm")
    src = write_jsonl(tmp_path / "in.jsonl", _rows_with_errors(150))
    with src.open("a") as fh:
        fh.write("not json\n")  # INVALID_JSON on line 151
    local, out = tmp_path / "local", tmp_path / "ray"
    _ok(run_cli("embed", src, "-m", model, "-o", f"{local}/", *LOCAL))
    summary = _ok(run_cli("embed", src, "-m", model, "-o", f"{out}/", *RAY))
    assert summary["rows_in"] == 151 and summary["errors"] == 3 and summary["parts"] == 5
    _same_output(local, out)
    assert (out / "_SUCCESS").is_file()
    manifest = json.loads((out / "_MANIFEST.json").read_text())
    assert manifest["rows"] == 148 and manifest["errors"] == 3 and len(manifest["parts"]) == 5
    assert sorted(p.name for p in out.glob("part-*.parquet")) == sorted(p.name for p in local.glob("part-*.parquet"))
    errs = _errors(tmp_path / "ray" / "_errors.jsonl")
    assert errs == _errors(tmp_path / "local" / "_errors.jsonl")
    assert [e["code"] for e in errs] == ["EMPTY_TEXT", "WRONG_TYPE", "INVALID_JSON"]


def test_classify_parquet_input_equals_local(cluster: Any, tiny_classifier: Path, tmp_path: Path) -> None:
    texts: list[str | None] = list(_texts(120))
    texts[70] = None
    src = tmp_path / "in.parquet"
    # Two row groups: spans start inside the file.
    pq.write_table(pa.table({"text": texts, "lang": ["en"] * 120}), src, row_group_size=50)
    local, out = tmp_path / "local.parquet", tmp_path / "ray.parquet"
    args = ("--keep-columns", "lang", "--top-k", "2")
    _ok(run_cli("classify", src, "-m", tiny_classifier, "-o", local, *args, *LOCAL))
    summary = _ok(run_cli("classify", src, "-m", tiny_classifier, "-o", out, *args, *RAY1))
    assert summary["errors"] == 1
    _same_output(local, out)
    assert _errors(tmp_path / "ray.errors.jsonl") == _errors(tmp_path / "local.errors.jsonl")


def test_token_classify_csv_equals_local(cluster: Any, ner: Path, tmp_path: Path) -> None:
    # A CSV file is one span (its rows can hold newlines): one part, one worker.
    src = tmp_path / "in.csv"
    pacsv.write_csv(pa.table({"id": list(range(40)), "text": _texts(40)}), src)
    local, out = tmp_path / "local.parquet", tmp_path / "ray.parquet"
    _ok(run_cli("token-classify", src, "-m", ner, "-o", local, "--aggregate", "simple", *SMALL))
    summary = _ok(run_cli("token-classify", src, "-m", ner, "-o", out, "--aggregate", "simple", *RAY1))
    assert summary["parts"] == 1
    _same_output(local, out)


def test_token_embed_txt_equals_local(cluster: Any, tiny_bert: Path, tmp_path: Path) -> None:
    (tmp_path / "in.txt").write_text("\n".join(_texts(90)) + "\n", encoding="utf-8")
    # Relative paths, from another directory than the cluster's: each actor works in the driver's directory.
    _ok(run_cli("token-embed", "in.txt", "-m", tiny_bert, "-o", "local.parquet", *LOCAL, cwd=tmp_path))
    _ok(run_cli("token-embed", "in.txt", "-m", tiny_bert, "-o", "ray.parquet", *RAY1, cwd=tmp_path))
    _same_output(tmp_path / "local.parquet", tmp_path / "ray.parquet")
    # An actor no node can hold is refused, not left waiting in Ray's queue.
    proc = run_cli(
        "token-embed", "in.txt", "-m", tiny_bert, "-o", "gpu.parquet", *RAY1, "--gpus-per-worker", "1", cwd=tmp_path
    )
    assert proc.returncode == 64 and "GPUs" in proc.stderr, proc.stderr


def test_score_and_rerank_equal_local(cluster: Any, tiny_ce: Path, tmp_path: Path) -> None:
    texts = _texts(60)
    pairs = [{"id": f"p{i}", "text_1": texts[i], "text_2": texts[(i * 7) % 60]} for i in range(60)]
    pairs[9]["text_2"] = ""  # one bad side costs its pair only
    src = write_jsonl(tmp_path / "pairs.jsonl", pairs)
    _ok(run_cli("score", src, "-m", tiny_ce, "-o", tmp_path / "s-local.parquet", *LOCAL))
    summary = _ok(run_cli("score", src, "-m", tiny_ce, "-o", tmp_path / "s-ray.parquet", *RAY1))
    assert summary["errors"] == 1 and summary["parts"] == 2
    _same_output(tmp_path / "s-local.parquet", tmp_path / "s-ray.parquet")
    assert _errors(tmp_path / "s-ray.errors.jsonl") == _errors(tmp_path / "s-local.errors.jsonl")

    rows = [{"id": f"q{i}", "query": texts[i], "documents": texts[i : i + 9]} for i in range(0, 50, 5)]
    rows[3]["documents"][2] = 5  # a bad document costs itself
    src = write_jsonl(tmp_path / "rows.jsonl", rows)
    _ok(run_cli("rerank", src, "-m", tiny_ce, "-o", tmp_path / "r-local.parquet", "--top-n", "4", *LOCAL))
    summary = _ok(run_cli("rerank", src, "-m", tiny_ce, "-o", tmp_path / "r-ray.parquet", "--top-n", "4", *RAY1))
    assert summary["parts"] >= 3  # whole queries per part: 9 pairs each, 3 queries per 32-pair part
    _same_output(tmp_path / "r-local.parquet", tmp_path / "r-ray.parquet", key="query_id")
    assert _errors(tmp_path / "r-ray.errors.jsonl") == _errors(tmp_path / "r-local.errors.jsonl")


# -- exactly once --------------------------------------------------------------------------------------------------


def _worker_pids() -> list[int]:
    """The pids of this cluster's poolcli actors (Ray titles an actor's process after its class)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if b"PartWorker" in cmdline:
            pids.append(int(entry.name))
    return pids


def _markers(out: Path) -> int:
    return len(list((out / ".poolcli" / "done").glob("*.json"))) if (out / ".poolcli" / "done").is_dir() else 0


def test_killed_worker_loses_and_duplicates_nothing(cluster: Any, st_model_factory: Any, tmp_path: Path) -> None:
    model = st_model_factory("mean-norm")
    src = write_jsonl(tmp_path / "in.jsonl", _rows_with_errors(256))
    local, out = tmp_path / "local", tmp_path / "ray"
    _ok(run_cli("embed", src, "-m", model, "-o", f"{local}/", *LOCAL))
    result: list[CliResult] = []
    slow = {"POOLCLI_SLOW_BATCH_SECONDS": "0.15"}  # 8 parts of 2 windows of ~3 batches: about a second per part
    job = threading.Thread(
        target=lambda: result.append(run_cli("embed", src, "-m", model, "-o", f"{out}/", *RAY, env=slow))
    )
    job.start()
    deadline = time.monotonic() + 120
    while _markers(out) < 1 and time.monotonic() < deadline:
        time.sleep(0.1)
    pids = _worker_pids()
    assert pids, "no poolcli actor process found"
    os.kill(pids[0], signal.SIGKILL)
    job.join(timeout=300)
    assert not job.is_alive()
    summary = _ok(result[0])
    assert summary["parts"] == 8 and summary["rows_out"] + summary["errors"] == 256
    _same_output(local, out)
    assert _errors(out / "_errors.jsonl") == _errors(local / "_errors.jsonl")
    assert not list((out / ".poolcli").glob("staging/*"))

    again = _ok(run_cli("embed", src, "-m", model, "-o", f"{out}/", *RAY))
    assert again["status"] == "already complete" and again["rows_computed"] == 0


def test_stopped_and_killed_jobs_resume_only_missing_parts(cluster: Any, st_model_factory: Any, tmp_path: Path) -> None:
    """The driver stopped by SIGTERM (exit 143 between parts), then killed with SIGKILL (the cluster lives on, as a
    shared cluster does): each rerun computes only the parts not committed, and the end result is the local one."""
    model = st_model_factory("mean-norm")
    src = write_jsonl(tmp_path / "in.jsonl", _rows_with_errors(256))
    local, out = tmp_path / "local", tmp_path / "ray"
    _ok(run_cli("embed", src, "-m", model, "-o", f"{local}/", *LOCAL))
    env = dict(os.environ, HF_HUB_OFFLINE="1", POOLCLI_SLOW_BATCH_SECONDS="0.15")
    env["RAY_ADDRESS"] = cluster.get_runtime_context().gcs_address
    cmd = [sys.executable, "-m", "poolcli", "embed", str(src), "-m", str(model), "-o", f"{out}/", *RAY]

    def interrupted(sig: signal.Signals, markers: int) -> tuple[int | None, str]:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
        deadline = time.monotonic() + 180
        while _markers(out) < markers and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.1)
        assert proc.poll() is None, proc.communicate()[1].decode()
        os.kill(proc.pid, sig)
        _, err = proc.communicate(timeout=120)
        return proc.returncode, err.decode()

    code, err = interrupted(signal.SIGTERM, 2)
    assert code == 143 and "SIGTERM received" in err, err
    assert not (out / "_SUCCESS").exists()
    code, err = interrupted(signal.SIGKILL, _markers(out) + 1)
    assert code == -signal.SIGKILL
    assert not (out / "_SUCCESS").exists()
    done = _markers(out)

    summary = _ok(run_cli("embed", src, "-m", model, "-o", f"{out}/", *RAY))
    assert summary["parts_skipped"] >= done >= 2
    assert summary["rows_computed"] < 256
    _same_output(local, out)
    assert _errors(out / "_errors.jsonl") == _errors(local / "_errors.jsonl")

    # Another option against the same output: the fingerprint guard (--overwrite's recompute is the store's, shared
    # with the local driver and tested there).
    changed = run_cli("embed", src, "-m", model, "-o", f"{out}/", *RAY, "--no-normalize")
    assert changed.returncode == 78, changed.stderr


# -- the stage for users' own pipelines ----------------------------------------------------------------------------


def test_map_dataset_embeds_a_ray_dataset_like_the_api(cluster: Any, st_model_factory: Any) -> None:
    import numpy as np

    import poolcli

    model = st_model_factory("mean-norm")
    texts: list[Any] = _texts(70)
    texts[3] = ""
    ds = cluster.data.from_items([{"doc": t, "n": i} for i, t in enumerate(texts)])
    mapped = poolcli.map_dataset(ds, "embed", model=str(model), text_field="doc", batch_rows=16, threads=1)
    rows = sorted(mapped.take_all(), key=lambda r: r["n"])
    assert len(rows) == 70 and [r["n"] for r in rows] == list(range(70))
    assert rows[3]["embedding"] is None and rows[3]["error_code"] == "EMPTY_TEXT"
    good = [i for i in range(70) if i != 3]
    assert all(rows[i]["error_code"] is None and rows[i]["error_message"] is None for i in good)
    expected = poolcli.load(str(model), threads=1).embed([texts[i] for i in good])
    got = np.stack([np.asarray(rows[i]["embedding"], dtype=np.float32) for i in good])
    # Per-row results do not depend on batch neighbours (equal to the reference within float32 rounding).
    assert np.abs(got - expected).max() < 1e-6


def test_map_dataset_scores_pairs(cluster: Any, tiny_ce: Path) -> None:
    import numpy as np

    import poolcli

    texts = _texts(20)
    ds = cluster.data.from_items([{"q": texts[i], "d": texts[19 - i]} for i in range(20)])
    mapped = poolcli.map_dataset(ds, "score", model=str(tiny_ce), text_field="q", text_pair_field="d", threads=1)
    rows = mapped.take_all()
    got = np.asarray([r["score"] for r in sorted(rows, key=lambda r: r["q"] + r["d"])], dtype=np.float32)
    pairs = sorted([(texts[i], texts[19 - i]) for i in range(20)], key=lambda p: p[0] + p[1])
    expected = poolcli.load(str(tiny_ce), threads=1).score(pairs)
    assert np.abs(got - expected).max() < 1e-6


def test_map_dataset_reranks_one_query_per_row(cluster: Any, tiny_ce: Path) -> None:
    import poolcli

    texts = _texts(12)
    items: list[dict[str, Any]] = [{"k": i, "q": texts[i], "docs": texts[i : i + 5]} for i in range(6)]
    items[2]["q"] = ""  # a bad query costs its row
    items[4]["docs"] = [texts[0], 7, texts[1]]  # a bad document costs itself
    ds = cluster.data.from_items(items)
    mapped = poolcli.map_dataset(
        ds, "rerank", model=str(tiny_ce), text_field="q", text_pair_field="docs", top_n=3, threads=1
    )
    rows = sorted(mapped.take_all(), key=lambda r: r["k"])
    assert [r["k"] for r in rows] == list(range(6))
    assert rows[2]["ranking"] is None and rows[2]["error_code"] == "EMPTY_TEXT"
    m = poolcli.load(str(tiny_ce), threads=1)
    for i in (0, 1, 3, 5):
        expected = m.rerank(items[i]["q"], items[i]["docs"], top_n=3)
        got = rows[i]["ranking"]
        assert [g["index"] for g in got] == [e["index"] for e in expected]
        assert all(abs(g["relevance_score"] - e["relevance_score"]) < 1e-6 for g, e in zip(got, expected, strict=True))
    assert rows[4]["error_code"] == "WRONG_TYPE" and "documents[1]" in rows[4]["error_message"]
    assert [g["index"] for g in rows[4]["ranking"]] and 1 not in [g["index"] for g in rows[4]["ranking"]]


class _Failing:
    """A Ray Data UDF that fails the way a poolcli worker does: a typed error from its call."""

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        from poolcli.errors import DataError

        raise DataError("in.jsonl changed while the job ran")


def test_a_workers_typed_error_reaches_the_driver_as_itself(cluster: Any) -> None:
    from ray.data import ActorPoolStrategy

    from poolcli.drivers.ray import _worker_error, data_context
    from poolcli.errors import DataError

    with data_context(cluster), pytest.raises(Exception) as caught:
        ds = cluster.data.from_items([{"x": 1}])
        ds.map_batches(_Failing, compute=ActorPoolStrategy(size=1), num_cpus=0.5).take_all()
    error = _worker_error(caught.value)
    assert type(error) is DataError and str(error) == "in.jsonl changed while the job ran"
