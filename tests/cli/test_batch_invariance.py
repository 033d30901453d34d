"""A row's vector does not depend on its batch neighbours or on the batch budget."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tests.conftest import read_vectors, run_cli, write_jsonl

TARGET = "Batch invariance means this row's vector never depends on its neighbours."
LONG = "An extremely long neighbouring row that forces a lot of padding onto the short one. " * 30


def _vectors(tmp_path: Path, name: str, texts: list[str], *args: str) -> np.ndarray:
    src = write_jsonl(tmp_path / f"{name}.jsonl", [{"text": t} for t in texts])
    out = tmp_path / f"{name}.parquet"
    proc = run_cli("embed", src, "-o", out, *args)
    assert proc.returncode == 0, proc.stderr
    return read_vectors(out)[1]


def test_row_alone_beside_long_neighbour_and_any_budget(tmp_path: Path) -> None:
    alone = _vectors(tmp_path, "alone", [TARGET])[0]
    neighbours = [LONG, TARGET, "short", LONG[:300], TARGET]
    results = {
        "one batch": _vectors(tmp_path, "big", neighbours, "--max-batch-tokens", "100000"),
        "budget 1": _vectors(tmp_path, "tiny", neighbours, "--max-batch-tokens", "1"),
        "budget 300": _vectors(tmp_path, "mid", neighbours, "--max-batch-tokens", "300", "--max-batch-size", "2"),
        "window 2": _vectors(tmp_path, "win", neighbours, "--window-rows", "2"),
    }
    for name, vectors in results.items():
        for row in (1, 4):
            diff = np.abs(vectors[row] - alone).max()
            # Padded positions are masked out exactly; what remains is kernel-shape rounding, far below 1e-6.
            assert diff <= 1e-6, (name, row, diff)
    # That the same options give the same bytes twice is checked by every resume test in test_reliability.py
    # (a resumed run's output equals an uninterrupted run's, byte for byte).
