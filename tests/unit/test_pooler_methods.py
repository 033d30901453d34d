"""Pooling methods and the embedding head on tiny hand-made tensors with hand-computed expectations."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from poolcli.pooler.dispatch import EmbedPooler
from poolcli.pooler.heads import Dense, EmbeddingHead
from poolcli.pooler.methods import (
    AllPool,
    ClsPool,
    LastPool,
    MaxPool,
    MeanPool,
    MeanSqrtLenPool,
    WeightedMeanPool,
    sequence_pool,
)

# Two rows, right-padded: row 0 has 3 real tokens, row 1 has 2; H = 2.
HIDDEN = torch.tensor(
    [
        [[1.0, 2.0], [3.0, 4.0], [5.0, 9.0], [100.0, 100.0]],
        [[2.0, 0.0], [4.0, -2.0], [100.0, 100.0], [100.0, 100.0]],
    ]
)
MASK = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])


def test_cls_takes_first_token() -> None:
    assert ClsPool()(HIDDEN, MASK).tolist() == [[1.0, 2.0], [2.0, 0.0]]


def test_last_takes_last_real_token_not_padding() -> None:
    assert LastPool()(HIDDEN, MASK).tolist() == [[5.0, 9.0], [4.0, -2.0]]


def test_mean_divides_by_real_length() -> None:
    assert MeanPool()(HIDDEN, MASK).tolist() == [[3.0, 5.0], [3.0, -1.0]]


def test_mean_sqrt_len() -> None:
    out = MeanSqrtLenPool()(HIDDEN, MASK)
    assert torch.allclose(
        out, torch.tensor([[9 / math.sqrt(3), 15 / math.sqrt(3)], [6 / math.sqrt(2), -2 / math.sqrt(2)]])
    )


def test_max_ignores_padding() -> None:
    assert MaxPool()(HIDDEN, MASK).tolist() == [[5.0, 9.0], [4.0, 0.0]]


def test_weighted_mean_uses_positions_1_to_n() -> None:
    out = WeightedMeanPool()(HIDDEN, MASK)
    row0 = [(1 * 1 + 2 * 3 + 3 * 5) / 6, (1 * 2 + 2 * 4 + 3 * 9) / 6]
    row1 = [(1 * 2 + 2 * 4) / 3, (1 * 0 + 2 * -2) / 3]
    assert torch.allclose(out, torch.tensor([row0, row1]))


def test_concat_in_mode_order() -> None:
    out = sequence_pool(("cls", "mean"))(HIDDEN, MASK)
    assert out.tolist() == [[1.0, 2.0, 3.0, 5.0], [2.0, 0.0, 3.0, -1.0]]


def test_all_returns_each_rows_real_tokens() -> None:
    rows = AllPool()(HIDDEN, MASK)
    assert [r.shape[0] for r in rows] == [3, 2]
    assert rows[1].tolist() == [[2.0, 0.0], [4.0, -2.0]]


def test_mean_accumulates_half_precision_in_float32() -> None:
    hidden = torch.full((1, 3, 1), 1025.0, dtype=torch.float16)  # the sum 3075 is not representable in fp16
    out = MeanPool()(hidden, torch.ones(1, 3, dtype=torch.long))
    assert out.dtype == torch.float32
    assert out.item() == 1025.0


def test_single_token_row() -> None:
    hidden = torch.tensor([[[7.0, -1.0]]])
    mask = torch.tensor([[1]])
    for method in (ClsPool(), LastPool(), MeanPool(), MaxPool()):
        assert method(hidden, mask).tolist() == [[7.0, -1.0]]


def test_prompt_exclusion_moves_cls_and_mean() -> None:
    # With 1 prompt token skipped, row 0 pools tokens 1..2 and row 1 pools token 1 only.
    pooler = EmbedPooler(("cls",), projector=None, dimensions=None, normalize=False, skip_prompt_tokens=1)
    assert pooler(HIDDEN, MASK).tolist() == [[3.0, 4.0], [4.0, -2.0]]
    pooler = EmbedPooler(("mean",), projector=None, dimensions=None, normalize=False, skip_prompt_tokens=1)
    assert pooler(HIDDEN, MASK).tolist() == [[4.0, 6.5], [4.0, -2.0]]


class TestEmbeddingHead:
    def test_normalize(self) -> None:
        out = EmbeddingHead(None, None, normalize=True)(torch.tensor([[3.0, 4.0]]))
        assert torch.allclose(out, torch.tensor([[0.6, 0.8]]))

    def test_slice_before_normalize(self) -> None:
        out = EmbeddingHead(None, 2, normalize=True)(torch.tensor([[3.0, 4.0, 12.0]]))
        assert torch.allclose(out, torch.tensor([[0.6, 0.8]]))

    def test_no_normalize_keeps_values(self) -> None:
        out = EmbeddingHead(None, 2, normalize=False)(torch.tensor([[3.0, 4.0, 12.0]]))
        assert out.tolist() == [[3.0, 4.0]]

    def test_projector_runs_before_slice_and_in_float32(self) -> None:
        lin = nn.Linear(2, 3, bias=False)
        with torch.no_grad():
            lin.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
        out = EmbeddingHead(lin, 3, normalize=False)(torch.tensor([[1.0, 2.0]], dtype=torch.bfloat16))
        assert out.dtype == torch.float32
        assert out.tolist() == [[1.0, 2.0, 3.0]]

    def test_dense_activation_and_residual(self) -> None:
        dense = Dense(2, 2, bias=True, activation="tanh", use_residual=True)
        with torch.no_grad():
            dense.linear.weight.copy_(torch.eye(2))
            dense.linear.bias.zero_()
        x = torch.tensor([[0.5, -1.0]])
        assert torch.allclose(dense(x), torch.tanh(x) + x)


@pytest.mark.parametrize("modes", [("cls",), ("lasttoken",), ("mean",), ("max",), ("cls", "max", "mean")])
def test_output_is_float32_for_bf16_input(modes: tuple) -> None:  # type: ignore[type-arg]
    out = sequence_pool(modes)(HIDDEN.to(torch.bfloat16), MASK)
    assert out.dtype == torch.float32


def test_pooler_dispatch_composes_method_and_head_per_task() -> None:
    from poolcli.pooler.dispatch import pooler_for

    hidden = torch.tensor([[[1.0, 0.0], [3.0, 4.0], [9.0, 9.0]]])
    mask = torch.tensor([[1, 1, 0]])
    embed = pooler_for("embed", modes=("mean",), normalize=False)
    assert embed(hidden, mask).tolist() == [[2.0, 2.0]]  # the padding position is left out
    per_token = pooler_for("token_embed", normalize=True)(hidden, mask)
    assert per_token.shape == (1, 3, 2) and torch.allclose(per_token[0, 1], torch.tensor([0.6, 0.8]))
    logits = torch.tensor([[0.0, 2.0]])
    assert torch.allclose(pooler_for("classify", activation="softmax")(logits, mask).sum(), torch.tensor(1.0))
    token_logits = torch.tensor([[[0.0, 1.0, 5.0], [2.0, 0.0, 0.0]]])
    chosen = pooler_for("token_classify", activation="identity", columns=[2, 0])(token_logits, mask)
    assert chosen.tolist() == [[[5.0, 0.0], [0.0, 2.0]]]
    with pytest.raises(ValueError, match="no pooler"):
        pooler_for("score")  # type: ignore[arg-type]
