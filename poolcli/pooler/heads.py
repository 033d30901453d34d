"""Heads applied to pooled vectors, always in float32."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from torch import Tensor

    from poolcli.engine.resolve import DenseSpec


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

    def __init__(self, spec: DenseSpec) -> None:
        super().__init__()
        self.linear = nn.Linear(spec.in_features, spec.out_features, bias=spec.bias)
        self.activation = _ACTIVATIONS[spec.activation]()
        self.residual: nn.Linear | None = None
        self.use_residual = spec.use_residual
        if spec.use_residual and spec.in_features != spec.out_features:
            self.residual = nn.Linear(spec.in_features, spec.out_features, bias=False)

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
