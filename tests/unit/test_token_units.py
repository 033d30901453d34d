"""Token-level pooling on hand-made tensors: STEP selection and entity aggregation."""

from __future__ import annotations

import numpy as np
import torch

from poolcli.pooler.entities import Entity, aggregate_simple
from poolcli.pooler.methods import step_pool

LABELS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "MISC"]


def _probs(rows: list[tuple[int, float]]) -> np.ndarray:
    """One row per token: its best label gets `p`, the rest share what is left."""
    out = np.zeros((len(rows), len(LABELS)), dtype=np.float32)
    for i, (label, p) in enumerate(rows):
        out[i, :] = (1 - p) / (len(LABELS) - 1)
        out[i, label] = p
    return out


def test_step_pool_keeps_tag_rows_and_chosen_columns() -> None:
    data = torch.arange(12, dtype=torch.float32).reshape(4, 3)  # 4 tokens x 3 outputs
    ids = torch.tensor([5, 9, 5, 7])
    kept, pos = step_pool(data, ids, step_tag_id=5, returned_token_ids=[2, 0])
    assert pos.tolist() == [0, 2]
    assert kept.tolist() == [[2.0, 0.0], [8.0, 6.0]]
    kept, pos = step_pool(data, ids, step_tag_id=None, returned_token_ids=None)
    assert torch.equal(kept, data) and pos.tolist() == [0, 1, 2, 3]
    kept, pos = step_pool(data, ids, step_tag_id=4, returned_token_ids=None)
    assert kept.shape == (0, 3) and pos.numel() == 0


def test_simple_aggregation_hand_checked() -> None:
    text = "Johnny lives in New York, Paris"
    # [CLS] John ##ny lives in New York , Paris [SEP]
    offsets = [(0, 0), (0, 4), (4, 6), (7, 12), (13, 15), (16, 19), (20, 24), (24, 25), (26, 31), (0, 0)]
    special = [True, False, False, False, False, False, False, False, False, True]
    probs = _probs(
        [(0, 0.99), (1, 0.9), (2, 0.8), (0, 0.9), (0, 0.9), (3, 0.7), (4, 0.6), (0, 0.9), (3, 0.95), (1, 0.99)]
    )
    got = aggregate_simple(probs, offsets, special, LABELS, text)
    expected = [
        Entity("PER", 0, 6, 0.85, "Johnny"),
        Entity("LOC", 16, 24, 0.65, "New York"),
        Entity("LOC", 26, 31, 0.95, "Paris"),
    ]
    assert [(e.entity, e.start, e.end, e.text) for e in got] == [(e.entity, e.start, e.end, e.text) for e in expected]
    assert np.allclose([e.score for e in got], [e.score for e in expected], atol=1e-6)


def test_simple_aggregation_b_tag_starts_a_new_entity_and_plain_labels_continue() -> None:
    text = "Paris Berlin misc stuff"
    offsets = [(0, 5), (6, 12), (13, 17), (18, 23)]
    special = [False] * 4
    # B-LOC B-LOC: two entities; MISC MISC (no scheme): one entity; I-PER after nothing: its own entity.
    probs = _probs([(3, 0.8), (3, 0.6), (5, 0.5), (5, 0.7)])
    got = aggregate_simple(probs, offsets, special, LABELS, text)
    assert [(e.entity, e.text) for e in got] == [("LOC", "Paris"), ("LOC", "Berlin"), ("MISC", "misc stuff")]
    assert abs(got[2].score - 0.6) < 1e-6
    # Ignored tags are dropped; an I- tag continues only the same tag.
    probs = _probs([(2, 0.8), (4, 0.6), (0, 0.9), (5, 0.7)])
    got = aggregate_simple(probs, offsets, special, LABELS, text, ignore=frozenset({"O", "MISC"}))
    assert [(e.entity, e.text) for e in got] == [("PER", "Paris"), ("LOC", "Berlin")]
