"""The recipes in examples/ run as written, on real files with the real command line.

- Makefile: `make` killed with SIGKILL (make and poolcli together) mid-run, then run again, resumes (committed
  parts are skipped) and completes: every input row exactly once, vectors byte-identical to an uninterrupted run,
  the downstream target built, and a third `make` has nothing to do.
- cron.sh: while another run holds the output's lock, the wrapper skips quietly (exit 0); another failure (a typo
  in the command) is reported with poolcli's exit code; the run that held the lock completes.
- read_outputs.py: pyarrow and pandas read the same rows; the DuckDB and LanceDB top-k equal numpy's brute force.

DuckDB and LanceDB are in the test extra: a missing one fails these tests, it never skips them.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from tests.conftest import ROOT, run_cli, summary_of

EXAMPLES = ROOT / "examples"
N_ROWS = 120
PART_ROWS = 10
N_PARTS = N_ROWS // PART_ROWS
FLAGS = ("--part-rows", str(PART_ROWS), "--window-rows", "5", "--backend", "torch")


def _env(**extra: str) -> dict[str, str]:
    """The environment a user's shell would give: this venv's `poolcli` first on PATH."""
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    return dict(os.environ, PATH=path, HF_HUB_OFFLINE="1", **extra)


def _wait_until(ready: Callable[[], bool], proc: subprocess.Popen[str], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None or time.monotonic() > deadline:
            out, err = proc.communicate()
            raise AssertionError(f"the run ended or stalled before the moment (rc {proc.returncode}):\n{out}\n{err}")
        time.sleep(0.02)


def _read(out: Path) -> dict[Any, bytes]:
    """id -> vector bytes; fails on a duplicated id."""
    table = ds.dataset(out, format="parquet").to_table()
    ids = table.column("id").to_pylist()
    assert len(ids) == len(set(ids)), "duplicated ids in the output"
    emb = table.column("embedding").combine_chunks()
    dim = emb.type.list_size
    values = emb.flatten().to_numpy()
    return {i: values[n * dim : (n + 1) * dim].tobytes() for n, i in enumerate(ids)}


def _example(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"examples_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def docs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """N_ROWS distinct texts."""
    words = "the quick brown fox jumps over the lazy dog and runs to the river city of paris".split()
    rng = random.Random(5)
    texts: list[str] = []
    while len(texts) < N_ROWS:
        text = " ".join(rng.choice(words) for _ in range(rng.randint(4, 30)))
        if text not in texts:
            texts.append(text)
    path = tmp_path_factory.mktemp("examples") / "docs.jsonl"
    path.write_text("".join(json.dumps({"id": f"d{i:04d}", "text": t}) + "\n" for i, t in enumerate(texts)))
    return path


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, docs: Path, tiny_bert: Path) -> dict[Any, bytes]:
    """An uninterrupted run of the same command, in-process."""
    out = tmp_path_factory.mktemp("reference") / "docs"
    proc = run_cli("embed", docs, "-o", f"{out}/", "--model", tiny_bert, *FLAGS, "--quiet")
    assert proc.returncode == 0, proc.stderr
    vectors = _read(out)
    assert sorted(vectors) == [f"d{i:04d}" for i in range(N_ROWS)]
    return vectors


def test_makefile_resumes_after_kill(tmp_path: Path, docs: Path, tiny_bert: Path, reference: dict[Any, bytes]) -> None:
    work = tmp_path / "examples"
    shutil.copytree(EXAMPLES, work, ignore=shutil.ignore_patterns("out", "__pycache__"))
    make = [
        "make",
        "-C",
        str(work),
        f"DOCS={docs}",
        f"MODEL={tiny_bert}",
        f"PYTHON={sys.executable}",
        "K=3",
        "POOLCLI_FLAGS=" + " ".join(FLAGS),
    ]
    out = work / "out" / "docs"
    markers = out / ".poolcli" / "done"
    neighbours = work / "out" / "neighbours.parquet"

    # make and poolcli in a process group of their own, killed together with SIGKILL after three parts: nothing
    # gets a chance to clean up (the slow batches only keep the run from finishing before the kill).
    first = subprocess.Popen(
        make,
        env=_env(POOLCLI_SLOW_BATCH_SECONDS="0.1"),
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_until(lambda: markers.is_dir() and len(list(markers.iterdir())) >= 3, first)
    finally:
        with contextlib.suppress(ProcessLookupError):  # gone already if the wait failed
            os.killpg(first.pid, signal.SIGKILL)
        first.communicate()
    assert first.returncode == -signal.SIGKILL
    assert not (out / "_SUCCESS").exists() and not neighbours.exists()
    committed = len(list(markers.iterdir()))
    assert 3 <= committed < N_PARTS

    second = subprocess.run(make, env=_env(), capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stdout + second.stderr
    summary = summary_of(second)  # poolcli's summary line, on make's stderr
    assert summary["status"] == "ok"
    assert summary["parts"] == N_PARTS and summary["parts_skipped"] == committed
    assert summary["rows_computed"] == N_ROWS - committed * PART_ROWS

    # Every input row exactly once, and the same bytes as the uninterrupted run.
    assert (out / "_SUCCESS").is_file()
    assert _read(out) == reference
    manifest = json.loads((out / "_MANIFEST.json").read_text())
    assert manifest["rows"] == N_ROWS and manifest["errors"] == 0

    # The downstream target: K=3 nearest other documents for every document, ranked.
    table = pq.read_table(neighbours).to_pylist()
    assert len(table) == N_ROWS * 3
    assert {r["id"] for r in table} == set(reference)
    assert all(r["id"] != r["neighbour"] for r in table)
    by_id: dict[str, list[dict[str, Any]]] = {}
    for r in table:
        by_id.setdefault(r["id"], []).append(r)
    for rows in by_id.values():
        assert [r["rank"] for r in rows] == [1, 2, 3]
        assert [r["similarity"] for r in rows] == sorted((r["similarity"] for r in rows), reverse=True)

    # Everything is up to date now: make has nothing to run (-q: exit 0 only when nothing needs remaking).
    assert subprocess.run([*make, "-q"], env=_env(), capture_output=True, timeout=60).returncode == 0


def test_cron_skips_while_another_run_holds_the_output(tmp_path: Path, docs: Path, tiny_bert: Path) -> None:
    out = tmp_path / "out"
    cron = ["bash", str(EXAMPLES / "cron.sh")]
    job = ["embed", str(docs), "-o", f"{out}/", "--model", str(tiny_bert), *FLAGS]

    def start(args: list[str], **env: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [*cron, *args],
            env=_env(**env),
            start_new_session=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    holder = start(job, POOLCLI_SLOW_BATCH_SECONDS="0.05")
    try:
        # The lock is taken before the fingerprint is written, and the model is loaded after it (then 24 batches
        # of at least 0.05 s): time enough to catch the holder here and hold it still (SIGSTOP keeps its lock), so
        # the runs below meet it however slowly they start.
        _wait_until(lambda: (out / ".poolcli" / "fingerprint.json").exists(), holder)
        os.killpg(holder.pid, signal.SIGSTOP)
        try:
            busy = start(job)
            typo = start([*job, "--part-row", "10"])  # a typo in the crontab line
            busy_out, busy_err = busy.communicate(timeout=120)
            typo_out, typo_err = typo.communicate(timeout=120)
        finally:
            os.killpg(holder.pid, signal.SIGCONT)
        holder_out, holder_err = holder.communicate(timeout=120)
    finally:
        if holder.poll() is None:
            os.killpg(holder.pid, signal.SIGKILL)
            holder.communicate()

    # Busy: exit 0, one "skipped" line for the log, nothing on stderr (nothing for cron to mail).
    assert busy.returncode == 0, busy_err
    assert re.fullmatch(r"\S+Z skipped: another poolcli run holds the output of: poolcli embed .*\n", busy_out)
    assert busy_err == ""

    # Any other failure: poolcli's exit code, its message and the command on stderr (for cron to mail).
    assert typo.returncode == 64, typo_err
    assert "No such option: --part-row" in typo_err and "failed with exit 64" in typo_err
    assert typo_out == ""

    # The run that held the lock finished normally: its summary in the log, nothing on stderr.
    assert holder.returncode == 0, holder_err
    assert holder_err == ""
    summary = json.loads(holder_out.strip().splitlines()[-1].split(" ", 1)[1])
    assert summary["status"] == "ok" and summary["rows_out"] == N_ROWS
    assert (out / "_SUCCESS").is_file()


@pytest.fixture(scope="module")
def minilm_output(tmp_path_factory: pytest.TempPathFactory, minilm_path: Path) -> Path:
    """samples/sample.jsonl embedded by the real command line with all-MiniLM-L6-v2, in four parts."""
    out = tmp_path_factory.mktemp("minilm") / "sample"
    proc = run_cli(
        "embed", ROOT / "samples" / "sample.jsonl", "-o", f"{out}/", "--model", minilm_path, *FLAGS, "--quiet"
    )
    assert proc.returncode == 0, proc.stderr
    assert len(list(out.glob("part-*.parquet"))) == 4
    return out


def _numpy_top_k(vectors: np.ndarray, query: np.ndarray, k: int) -> tuple[list[int], np.ndarray]:
    """Brute-force cosine top-k in float64; asserts the ranking has no near-ties for float32 engines to flip."""
    v, q = vectors.astype(np.float64), query.astype(np.float64)
    sims = (v @ q) / (np.linalg.norm(v, axis=1) * np.linalg.norm(q))
    order = np.argsort(-sims)
    ranked = sims[order[: k + 1]]
    assert np.all(-np.diff(ranked) > 1e-4), f"near-tie in the top {k + 1}: {ranked}"
    return [int(i) for i in order[:k]], sims[order[:k]]


def test_read_outputs_top_k_equals_numpy(
    tmp_path: Path, minilm_output: Path, minilm_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ro = _example("read_outputs")
    out, k = minilm_output, 5

    ids, vectors = ro.read_with_pyarrow(out)
    assert ids == [f"s{i:03d}" for i in range(40)] and vectors.shape == (40, 384)
    df = ro.read_with_pandas(out)
    assert df["id"].tolist() == ids
    np.testing.assert_array_equal(np.stack(df["embedding"].to_numpy()), vectors)
    meta = ro.poolcli_metadata(out)
    assert meta["task"] == "embed" and meta["plan"]["pooling"] == "MEAN"

    text = "how do vectors capture meaning"
    query = ro.embed_query(text, out, str(minilm_path), backend="torch")
    rng = np.random.default_rng(0)
    queries = [vectors[0], vectors[17], query, rng.standard_normal(384).astype(np.float32)]
    table = ro.lancedb_table(out, tmp_path / "lancedb")
    assert table.count_rows() == 40
    for q in queries:
        expected, sims = _numpy_top_k(vectors, q, k)
        duck = ro.top_k_duckdb(out, q, k)
        lance = ro.top_k_lancedb(table, q, k)
        assert [i for i, _ in duck] == [ids[i] for i in expected]
        assert [i for i, _ in lance] == [ids[i] for i in expected]
        np.testing.assert_allclose([s for _, s in duck], sims, atol=1e-5)
        np.testing.assert_allclose([s for _, s in lance], sims, atol=1e-5)

    # The script as a user runs it: the three engines print the same ranking, numpy's.
    capsys.readouterr()
    args = [str(out), text, "-k", str(k), "--model", str(minilm_path), "--backend", "torch"]
    args += ["--lancedb", str(tmp_path / "lancedb2")]
    assert ro.main(args) == 0
    printed = capsys.readouterr().out
    rankings = {
        line.split()[0]: [hit.split(":")[0] for hit in line.split()[1:]]
        for line in printed.splitlines()
        if line.startswith("  ")
    }
    expected, _ = _numpy_top_k(vectors, query, k)
    assert rankings == {name: [ids[i] for i in expected] for name in ("numpy", "duckdb", "lancedb")}, printed
