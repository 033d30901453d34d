"""Every task gets the same numeric-fault behaviour from the shared batch template, through the real command line:
a NaN output is recomputed alone in float32 (and becomes NONFINITE_OUTPUT if it stays non-finite), an
out-of-memory batch is halved, and a row that is out of memory alone becomes OOM_SINGLE_ROW, costing nothing else.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest

from tests.conftest import run_cli, write_jsonl

WORDS = ["cat", "dog", "fox", "river", "city", "paris", "berlin", "model"]
N = 6


def _texts() -> list[str]:
    return [f"{WORDS[i % 8]} {WORDS[(i * 3) % 8]} hello" for i in range(N)]  # same length: one batch


class Case:
    """A task on a tiny model: its input file, extra flags, how to read one output value per unit, and which
    output unit a fault on model row 1 lands on."""

    def __init__(
        self,
        task: str,
        model: str,
        write: Callable[[Path], Path],
        read: Callable[[Path], dict[Any, Any]],
        *flags: str,
        hit: Any = 1,
        alone: bool = True,
    ) -> None:
        self.task, self.model, self.write, self.read, self.flags, self.hit = task, model, write, read, flags, hit
        self.alone = alone
        """The unit's value comes from the faulted model row alone (a bi-encoder's also from the other text, which
        ran in bfloat16)."""


def _rows(path: Path) -> Path:
    return write_jsonl(path / "in.jsonl", [{"id": i, "text": t} for i, t in enumerate(_texts())])


def _pairs(path: Path) -> Path:
    rows = [{"id": i, "query": t, "document": f"the {_texts()[(i + 1) % N]}"} for i, t in enumerate(_texts())]
    return write_jsonl(path / "pairs.jsonl", rows)


def _rerank(path: Path) -> Path:
    return write_jsonl(path / "run.jsonl", [{"id": "q", "query": "a cat", "documents": _texts()}])


def _by_id(column: str) -> Callable[[Path], dict[Any, Any]]:
    def read(out: Path) -> dict[Any, Any]:
        t = pq.read_table(out)
        return {
            i: np.asarray(v, dtype=np.float64)
            for i, v in zip(t.column("id").to_pylist(), t.column(column).to_pylist(), strict=True)
        }

    return read


def _rerank_read(out: Path) -> dict[Any, Any]:
    t = pq.read_table(out).to_pylist()
    return {r["index"]: np.float64(r["relevance_score"]) for r in t}


CASES = {
    "embed": Case("embed", "tiny_bert", _rows, _by_id("embedding")),
    "classify": Case("classify", "tiny_classifier", _rows, _by_id("probs")),
    "token_classify": Case("token-classify", "ner", _rows, _by_id("probs")),
    "cross-encoder": Case("score", "tiny_ce", _pairs, _by_id("score")),
    # Bi-encoder and late interaction embed each distinct text once, in first-seen order: model row 1 is the
    # first document, so the fault lands on pair 0.
    "bi-encoder": Case("score", "tiny_bert", _pairs, _by_id("score"), hit=0, alone=False),
    "late-interaction": Case(
        "score", "tiny_bert", _pairs, _by_id("score"), "--score-type", "late-interaction", hit=0, alone=False
    ),
    "rerank": Case("rerank", "tiny_ce", _rerank, _rerank_read),
}


def _run(case: Case, model: Path, src: Path, out: Path, *extra: str, env: dict[str, str] | None = None) -> Any:
    errs = out.with_suffix(".errors.jsonl")
    proc = run_cli(case.task, src, "-m", model, "-o", out, "--errors", errs, *case.flags, *extra, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    errors = [json.loads(line) for line in errs.read_text().splitlines()]
    return case.read(out), errors, proc.stderr


@pytest.mark.parametrize("name", list(CASES))
def test_nan_is_recomputed_in_float32_or_becomes_an_error_row(
    name: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    case = CASES[name]
    model: Path = request.getfixturevalue(case.model)
    src = case.write(tmp_path)
    ref, ref_errors, _ = _run(case, model, src, tmp_path / "ref.parquet")
    assert ref_errors == [] and len(ref) == N
    # In bfloat16 the injected NaN is recomputed alone in float32: that unit equals the float32 reference.
    fixed, errors, _ = _run(
        case, model, src, tmp_path / "fixed.parquet", "--dtype", "bfloat16", env={"POOLCLI_NAN_ROWS": "1"}
    )
    assert errors == [] and sorted(fixed) == sorted(ref)
    assert np.abs(np.asarray(fixed[case.hit]) - np.asarray(ref[case.hit])).max() <= (1e-5 if case.alone else 2e-2)
    # Still NaN in float32: that unit alone becomes an error row.
    still, errors, _ = _run(case, model, src, tmp_path / "still.parquet", env={"POOLCLI_NAN_ROWS": "1:always"})
    assert [e["code"] for e in errors] == ["NONFINITE_OUTPUT"]
    assert sorted(still) == sorted(k for k in ref if k != case.hit)
    for k, v in still.items():
        assert np.abs(np.asarray(v) - np.asarray(ref[k])).max() <= 1e-6


@pytest.mark.parametrize("name", list(CASES))
def test_out_of_memory_halves_batches_and_costs_only_the_row_alone(
    name: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    case = CASES[name]
    model: Path = request.getfixturevalue(case.model)
    src = case.write(tmp_path)
    ref, _, _ = _run(case, model, src, tmp_path / "ref.parquet")
    halved, errors, stderr = _run(case, model, src, tmp_path / "halved.parquet", env={"POOLCLI_OOM_ABOVE_TOKENS": "12"})
    assert errors == [] and "splitting into" in stderr
    assert sorted(halved) == sorted(ref)
    for k, v in halved.items():
        assert np.abs(np.asarray(v) - np.asarray(ref[k])).max() <= 1e-5
    poisoned, errors, _ = _run(case, model, src, tmp_path / "poisoned.parquet", env={"POOLCLI_OOM_ROWS": "1"})
    assert [e["code"] for e in errors] == ["OOM_SINGLE_ROW"]
    assert sorted(poisoned) == sorted(k for k in ref if k != case.hit)
