"""Sparse lexical weights (BGE-M3): per-token weights -> one weight per token id, and the lexical match score.

FlagEmbedding's `_process_token_weights`: the ids of the cls, eos, pad and unk tokens are dropped (so is an
`<unk>` inside the text), weights that are not positive are dropped, and a token id that occurs several times
keeps its largest weight; ids keep the order of their first kept occurrence.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

import numpy as np


def lexical_weights(weights: np.ndarray, token_ids: Sequence[int], unused: Collection[int]) -> np.ndarray:
    """A row's per-token weights [n] (or [n, 1]) and ids -> a [k, 2] float64 array of (token id, weight)."""
    best: dict[int, float] = {}
    for tid, w in zip(token_ids, np.asarray(weights, dtype=np.float64).reshape(-1).tolist(), strict=True):
        if tid in unused or not w > 0:
            continue
        if w > best.get(tid, 0.0):
            best[tid] = w
    out = np.zeros((len(best), 2), dtype=np.float64)
    if best:
        out[:, 0] = list(best)
        out[:, 1] = list(best.values())
    return out


def lexical_score(query: Mapping[int, float], document: Mapping[int, float]) -> float:
    """Sum over the token ids both sides have of w_q * w_d (FlagEmbedding's compute_lexical_matching_score)."""
    return float(sum(w * document[t] for t, w in query.items() if t in document))
