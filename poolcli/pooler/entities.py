"""Entity spans from per-token NER probabilities, as the Hugging Face token-classification pipeline's "simple"
aggregation builds them.

Each non-special token takes its best label and that label's probability. Consecutive tokens join one entity when
their tag (the label without its B-/I- prefix) is the same and the later token is not a B- token; a label without
a prefix continues the previous entity of that tag. An entity's score is the mean of its tokens' scores, its span
runs from its first token's start to its last token's end, and its text is that slice of the original text.
Entities whose tag is an ignored label (by default "O") are dropped.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np


class Entity(NamedTuple):
    entity: str
    start: int
    end: int
    score: float
    text: str


def _split_tag(label: str) -> tuple[str, str]:
    if label.startswith("B-"):
        return "B", label[2:]
    if label.startswith("I-"):
        return "I", label[2:]
    return "I", label  # no B-/I- scheme: treated as a continuation, as the pipeline does


def aggregate_simple(
    probs: np.ndarray,
    offsets: Sequence[tuple[int, int]],
    special: Sequence[bool],
    labels: Sequence[str],
    text: str,
    *,
    ignore: frozenset[str] = frozenset({"O"}),
) -> list[Entity]:
    """Entities of one row: `probs` [n_tokens, n_labels], per-token `offsets` into `text`, `special` marks the
    tokens the pipeline skips (special tokens)."""
    tokens = [
        (labels[int(best)], float(row[best]), offsets[i])
        for i, (row, best) in enumerate(zip(probs, probs.argmax(axis=1), strict=True))
        if not special[i]
    ]
    groups: list[list[tuple[str, float, tuple[int, int]]]] = []
    for token in tokens:
        if groups:
            bi, tag = _split_tag(token[0])
            _, last_tag = _split_tag(groups[-1][-1][0])
            if tag == last_tag and bi != "B":
                groups[-1].append(token)
                continue
        groups.append([token])
    out: list[Entity] = []
    for group in groups:
        # The pipeline names the group after its first label with everything up to the first "-" removed.
        tag = group[0][0].split("-", 1)[-1]
        if tag in ignore:
            continue
        start, end = group[0][2][0], group[-1][2][1]
        score = float(np.nanmean([t[1] for t in group]))
        out.append(Entity(tag, start, end, score, text[start:end]))
    return out
