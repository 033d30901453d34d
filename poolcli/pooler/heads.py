"""Heads: what turns a model body's hidden states (or pooled vectors) into a task's numbers, always in float32.

Every head here is pure tensor code; the weights they hold are read from the checkpoint by `poolcli.model.load`.

- `EmbeddingHead`: pooled vector -> Sentence-Transformers Dense projector(s) -> matryoshka slice -> L2 norm.
- `TokenEmbeddingHead`: every token's hidden state -> projector -> L2 norm per token (late interaction).
- `ClassifierHead`: logits -> calibration -> final activation (vLLM's classifier head).
- `LmRowsHead`: hidden states @ chosen LM-head rows (classifier_from_token, returned_token_ids).
- `RewardHead`: a reward model's Linear(-ReLU-Linear) head from its checkpoint.
- `PositionScoreHead`: a decoder classifier's `score` layer applied at every position.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from torch import Tensor

    from poolcli.vocab import Activation


_ACTIVATIONS: dict[str, type[nn.Module]] = {
    "identity": nn.Identity,
    "tanh": nn.Tanh,
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "sigmoid": nn.Sigmoid,
    "silu": nn.SiLU,
}


class Dense(nn.Module):
    """A Sentence-Transformers Dense module: activation(Linear(x)), plus the residual when configured."""

    def __init__(
        self, in_features: int, out_features: int, *, bias: bool, activation: str, use_residual: bool = False
    ) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, out_features, bias=bias)
        self.activation = _ACTIVATIONS[activation]()
        self.residual: nn.Linear | None = None
        self.use_residual = use_residual
        if use_residual and in_features != out_features:
            self.residual = nn.Linear(in_features, out_features, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.activation(self.linear(x))
        if self.use_residual:
            out = out + (x if self.residual is None else self.residual(x))
        return out


class EmbeddingHead:
    """pooled (float32) -> projector -> matryoshka slice -> L2 normalisation, in that order (vLLM's order)."""

    def __init__(self, projector: nn.Module | None, dimensions: int | None, normalize: bool) -> None:
        self.projector = projector
        self.dimensions = dimensions
        self.normalize = normalize

    def __call__(self, pooled: Tensor) -> Tensor:
        x = pooled.to(torch.float32)
        if self.projector is not None:
            x = self.projector(x)
        if self.dimensions is not None:
            x = x[..., : self.dimensions]
        if self.normalize:
            x = F.normalize(x, p=2, dim=-1)
        return x


class TokenEmbeddingHead:
    """Per-token vectors: every position's hidden state (float32) -> projector -> matryoshka slice -> L2
    normalisation per token (vLLM's token_embed head)."""

    def __init__(self, projector: nn.Module | None, normalize: bool, dimensions: int | None = None) -> None:
        self.projector = projector
        self.normalize = normalize
        self.dimensions = dimensions

    def __call__(self, hidden: Tensor) -> Tensor:
        x = hidden.float()
        if self.projector is not None:
            x = self.projector(x)
        if self.dimensions is not None:
            x = x[..., : self.dimensions]
        if self.normalize:
            x = F.normalize(x, p=2, dim=-1)
        return x


class ClassifierHead:
    """Classifier logits -> calibration -> final activation, in float32 (vLLM's classifier head, spec 4.2).

    The model's own pooler and classifier layers have already run; this is what follows them:
    `activation((logits - logit_mean) / logit_sigma)`, the activation only when `use_activation`.
    """

    def __init__(
        self,
        activation: Activation,
        *,
        use_activation: bool,
        logit_mean: float | None = None,
        logit_sigma: float | None = None,
    ) -> None:
        self.activation = activation
        self.use_activation = use_activation
        self.logit_mean = logit_mean
        self.logit_sigma = logit_sigma

    def __call__(self, logits: Tensor) -> Tensor:
        x = logits.float()
        if self.logit_mean is not None:
            x = x - self.logit_mean
        if self.logit_sigma is not None:
            x = x / self.logit_sigma
        if not self.use_activation or self.activation == "identity":
            return x
        if self.activation == "sigmoid":
            return torch.sigmoid(x)
        if self.activation == "relu":
            return torch.relu(x)
        return torch.softmax(x, dim=-1)


class LmRowsHead(nn.Module):
    """Logits from chosen rows of a causal LM's output layer, [labels, hidden] float32: the full vocabulary's
    logits are never computed (vLLM's classifier_from_token, and STEP's returned_token_ids on a causal LM)."""

    def __init__(self, rows: Tensor) -> None:
        super().__init__()
        self.register_buffer("rows", rows.float())

    rows: Tensor

    def forward(self, hidden: Tensor) -> Tensor:
        return hidden.float() @ self.rows.T


class RewardHead(nn.Module):
    """A reward model's head in float32: its Linear layers with a ReLU between each (Qwen2 reward models:
    Linear(h, h) -> ReLU -> Linear(h, labels); InternLM2: one Linear)."""

    def __init__(self, linears: Sequence[nn.Linear]) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for linear in linears:
            if layers:
                layers.append(nn.ReLU())
            layers.append(linear.float())
        self.inner = nn.Sequential(*layers).eval().requires_grad_(False)

    def forward(self, hidden: Tensor) -> Tensor:
        out: Tensor = self.inner(hidden.float())
        return out


class PositionScoreHead(nn.Module):
    """A decoder sequence classifier's `score` layer at every position, in float32 (transformers keeps only the
    last position; vLLM's per-token head runs it everywhere)."""

    def __init__(self, score: nn.Module) -> None:
        super().__init__()
        self.score = score.float()

    def forward(self, hidden: Tensor) -> Tensor:
        out: Tensor = self.score(hidden.float())
        return out


def maxsim(query: Tensor, doc: Tensor, *, normalize_by_length: bool = False) -> float:
    """Late-interaction relevance: for each query token its best dot product over document tokens, summed
    (divided by the query's token count with `normalize_by_length`), in float32."""
    best = (query.float() @ doc.float().T).amax(dim=-1)
    total = best.sum()
    return float(total / query.shape[0]) if normalize_by_length else float(total)
