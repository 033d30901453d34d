"""Pooling methods: one class per method, each turning hidden states into one vector (or one per token) per row.

Every method takes `hidden` [B, L, H] and `mask` [B, L], where `mask` marks the tokens that take part in pooling
(the attention mask, minus prompt tokens when a Sentence-Transformers model excludes its prompt). Sequence methods
return float32 [B, H]: accumulation is always in float32 whatever the model dtype.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import torch

from poolcli.vocab import StPoolingMode

if TYPE_CHECKING:
    from torch import Tensor


class SequencePool(Protocol):
    name: str

    def __call__(self, hidden: Tensor, mask: Tensor) -> Tensor: ...


def _first_index(mask: Tensor) -> Tensor:
    # argmax returns the first maximum, i.e. the first pooled position.
    return mask.to(torch.int32).argmax(dim=1)


def _last_index(mask: Tensor) -> Tensor:
    length = mask.shape[1]
    return (length - 1) - mask.to(torch.int32).flip(1).argmax(dim=1)


def _gather(hidden: Tensor, index: Tensor) -> Tensor:
    rows = torch.arange(hidden.shape[0], device=hidden.device)
    return hidden[rows, index.to(torch.long)].float()


class ClsPool:
    """The first pooled token ([CLS] for BERT-likes)."""

    name = "cls"

    def __call__(self, hidden: Tensor, mask: Tensor) -> Tensor:
        return _gather(hidden, _first_index(mask))


class LastPool:
    """The last pooled token (the final real token of a right-padded row)."""

    name = "lasttoken"

    def __call__(self, hidden: Tensor, mask: Tensor) -> Tensor:
        return _gather(hidden, _last_index(mask))


class MeanPool:
    """Mean over pooled tokens, special tokens included, summed in float32."""

    name = "mean"

    def __call__(self, hidden: Tensor, mask: Tensor) -> Tensor:
        m = mask.unsqueeze(-1).to(torch.float32)
        total = (hidden.float() * m).sum(dim=1)
        return total / m.sum(dim=1).clamp(min=1e-9)


class MeanSqrtLenPool:
    """Sum over pooled tokens divided by the square root of their count (ST `mean_sqrt_len_tokens`)."""

    name = "mean_sqrt_len_tokens"

    def __call__(self, hidden: Tensor, mask: Tensor) -> Tensor:
        m = mask.unsqueeze(-1).to(torch.float32)
        total = (hidden.float() * m).sum(dim=1)
        return total / torch.sqrt(m.sum(dim=1).clamp(min=1e-9))


class MaxPool:
    """Element-wise maximum over pooled tokens (ST `max`)."""

    name = "max"

    def __call__(self, hidden: Tensor, mask: Tensor) -> Tensor:
        filled = hidden.float().masked_fill(~mask.bool().unsqueeze(-1), float("-inf"))
        return filled.max(dim=1).values


class WeightedMeanPool:
    """Position-weighted mean, weight i+1 for position i of a right-padded row (ST `weightedmean`)."""

    name = "weightedmean"

    def __call__(self, hidden: Tensor, mask: Tensor) -> Tensor:
        weights = torch.arange(1, hidden.shape[1] + 1, device=hidden.device, dtype=torch.float32).view(1, -1, 1)
        w = mask.unsqueeze(-1).to(torch.float32) * weights
        return (hidden.float() * w).sum(dim=1) / w.sum(dim=1).clamp(min=1e-9)


class ConcatPool:
    """Several methods, their outputs concatenated in order (ST models with more than one pooling mode)."""

    def __init__(self, methods: list[SequencePool]) -> None:
        self.methods = methods
        self.name = "+".join(m.name for m in methods)

    def __call__(self, hidden: Tensor, mask: Tensor) -> Tensor:
        return torch.cat([m(hidden, mask) for m in self.methods], dim=-1)


class AllPool:
    """Every pooled token of each row, for token tasks: a list of [n_i, H] float32 tensors."""

    name = "all"

    def __call__(self, hidden: Tensor, mask: Tensor) -> list[Tensor]:
        keep = mask.bool()
        return [hidden[i][keep[i]].float() for i in range(hidden.shape[0])]


_METHODS: dict[StPoolingMode, type[SequencePool]] = {
    "cls": ClsPool,
    "lasttoken": LastPool,
    "mean": MeanPool,
    "mean_sqrt_len_tokens": MeanSqrtLenPool,
    "max": MaxPool,
    "weightedmean": WeightedMeanPool,
}


def sequence_pool(modes: tuple[StPoolingMode, ...]) -> SequencePool:
    methods = [_METHODS[m]() for m in modes]
    return methods[0] if len(methods) == 1 else ConcatPool(methods)


def step_pool(
    data: Tensor, token_ids: Tensor, *, step_tag_id: int | None, returned_token_ids: list[int] | None
) -> tuple[Tensor, Tensor]:
    """STEP pooling of one row (vLLM section 3): the columns `returned_token_ids` (all when None) of the rows at
    positions whose token is `step_tag_id` (every position when None).

    `data` is the row's per-token output [L, C], `token_ids` its ids [L]. Returns (the kept outputs [S, C'],
    their positions [S]).
    """
    if returned_token_ids is not None:
        data = data[:, returned_token_ids]
    positions = torch.arange(data.shape[0], device=data.device)
    if step_tag_id is not None:
        keep = token_ids.to(data.device) == step_tag_id
        data, positions = data[keep], positions[keep]
    return data, positions
