"""Scoring pieces on hand-made tensors and files: the classifier head, MaxSim, activation choice, pairing rules."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from poolcli.engine.plan import classifier_activation
from poolcli.errors import DataError, UsageError
from poolcli.io.pairs import load_rerank_job, load_score_job
from poolcli.model.resolve import ClassifierInfo
from poolcli.pooler.heads import ClassifierHead, maxsim
from tests.conftest import write_jsonl


def test_classifier_head_calibrates_then_activates() -> None:
    logits = torch.tensor([[2.0], [-1.0]])
    head = ClassifierHead("sigmoid", use_activation=True, logit_mean=1.0, logit_sigma=2.0)
    got = head(logits)[:, 0].tolist()
    assert got == pytest.approx([1 / (1 + math.exp(-0.5)), 1 / (1 + math.exp(1.0))])
    raw = ClassifierHead("sigmoid", use_activation=False, logit_mean=1.0, logit_sigma=2.0)(logits)[:, 0].tolist()
    assert raw == pytest.approx([0.5, -1.0])
    probs = ClassifierHead("softmax", use_activation=True)(torch.tensor([[1.0, 2.0, 3.0]]))
    assert probs.sum().item() == pytest.approx(1.0) and probs.argmax().item() == 2
    assert ClassifierHead("identity", use_activation=True)(torch.tensor([[-3.0]])).item() == -3.0


def test_maxsim_sums_the_best_match_per_query_token() -> None:
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    d = torch.tensor([[0.0, 1.0], [0.8, 0.6]])
    # best per query token: 0.8, 1.0, max(0.8, 0.96) = 0.96
    assert maxsim(q, d) == pytest.approx(2.76)
    assert maxsim(q, d, normalize_by_length=True) == pytest.approx(0.92)


@pytest.mark.parametrize(
    ("info", "expected"),
    [
        (ClassifierInfo(num_labels=1), "sigmoid"),
        (ClassifierInfo(num_labels=3), "softmax"),
        (ClassifierInfo(num_labels=1, problem_type="regression"), "identity"),
        (ClassifierInfo(num_labels=4, problem_type="multi_label_classification"), "sigmoid"),
        (ClassifierInfo(num_labels=3, problem_type="single_label_classification"), "softmax"),
        (ClassifierInfo(num_labels=1, st_activation="identity"), "identity"),
        (ClassifierInfo(num_labels=1, st_activation="sigmoid"), "sigmoid"),
        (ClassifierInfo(num_labels=2, st_activation="sigmoid"), "softmax"),
    ],
)
def test_activation_follows_problem_type_then_cross_encoder_then_label_count(
    info: ClassifierInfo, expected: str
) -> None:
    assert classifier_activation(info) == expected


def _files(tmp_path: Path, n1: int, n2: int) -> tuple[str, str]:
    a = write_jsonl(tmp_path / "a.jsonl", [{"id": f"a{i}", "text": f"q {i}"} for i in range(n1)])
    b = write_jsonl(tmp_path / "b.jsonl", [{"id": f"b{i}", "text": f"d {i}"} for i in range(n2)])
    return str(a), str(b)


@pytest.mark.parametrize(("n1", "n2", "cross", "expected"), [(1, 3, False, 3), (3, 3, False, 3), (2, 3, True, 6)])
def test_pairing_rules(tmp_path: Path, n1: int, n2: int, cross: bool, expected: int) -> None:
    a, b = _files(tmp_path, n1, n2)
    job = load_score_job((a, b), query=None, cross=cross, text_field="text", id_field=None, keep_columns=())
    assert len(job.pairs) == expected
    if not cross:
        assert [p.id_2 for p in job.pairs] == [f"b{j}" for j in range(n2)]
        assert [p.id_1 for p in job.pairs] == [f"a{0 if n1 == 1 else j}" for j in range(n2)]


def test_pairing_mismatch_and_empty_inputs(tmp_path: Path) -> None:
    a, b = _files(tmp_path, 2, 3)
    with pytest.raises(DataError, match="Input lengths must be either 1:1, 1:N or N:N"):
        load_score_job((a, b), query=None, cross=False, text_field="text", id_field=None, keep_columns=())
    empty = write_jsonl(tmp_path / "e.jsonl", [])
    with pytest.raises(DataError, match="At least one text element"):
        load_score_job((str(empty), b), query=None, cross=False, text_field="text", id_field=None, keep_columns=())
    with pytest.raises(UsageError):
        load_score_job((a,), query=None, cross=True, text_field="text", id_field=None, keep_columns=())


def test_bad_rows_keep_their_position(tmp_path: Path) -> None:
    a = write_jsonl(tmp_path / "a.jsonl", [{"text": "q0"}, {"text": ""}, {"text": "q2"}])
    b = write_jsonl(tmp_path / "b.jsonl", [{"text": "d0"}, {"text": "d1"}, {"nope": 1}])
    job = load_score_job((str(a), str(b)), query=None, cross=False, text_field="text", id_field=None, keep_columns=())
    bad = [(job.queries[p.q].error is not None) or (job.docs[p.d].error is not None) for p in job.pairs]
    assert bad == [False, True, True]


def test_rerank_rows_with_object_documents(tmp_path: Path) -> None:
    rows = [
        {"id": 7, "query": "q", "documents": ["a", {"id": "x", "text": "b"}, {"text": "c"}, 5]},
        {"id": 8, "query": "q2", "documents": []},
    ]
    job = load_rerank_job(
        (str(write_jsonl(tmp_path / "r.jsonl", rows)),), query=None, group_by=None, text_field="text", id_field=None
    )
    assert [g.query_id for g in job.groups] == [7, 8]
    assert [(p.id, p.index) for p in job.pairs] == [(0, 0), ("x", 1), (2, 2), (3, 3)]
    assert job.docs[3].error is not None and job.docs[3].error.code == "WRONG_TYPE"
    assert [e.code for _, e in job.extra_errors] == ["EMPTY_TEXT"]
