"""Task -> pooler: a pooling method composed with the task's head, chosen in one place (`pooler_for`).

| task             | input                               | method                          | head                   |
|------------------|-------------------------------------|---------------------------------|------------------------|
| `embed`          | hidden states [B, L, H]             | sequence pooling (ST modes)      | `EmbeddingHead`        |
| `token_embed`    | hidden states [B, L, H]             | every position                   | `TokenEmbeddingHead`   |
| `classify`       | the model's own logits [B, C]       | (the model's pooler already ran) | `ClassifierHead`       |
| `token_classify` | per-position logits [B, L, C]       | every position, chosen columns   | `ClassifierHead`       |

STEP pooling (the step-tag positions of each row) is applied per row after the batch, by `methods.step_pool`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

from poolcli.pooler.heads import ClassifierHead, EmbeddingHead, TokenEmbeddingHead
from poolcli.pooler.methods import sequence_pool

if TYPE_CHECKING:
    from torch import Tensor, nn

    from poolcli.vocab import Activation, PoolingTask, StPoolingMode


class Pooler(Protocol):
    supported_tasks: tuple[PoolingTask, ...]

    def __call__(self, x: Tensor, attention_mask: Tensor, /) -> Tensor: ...


class EmbedPooler:
    """Sequence pooling then the embedding head; the prompt's first tokens are left out when configured."""

    supported_tasks: tuple[PoolingTask, ...] = ("embed",)

    def __init__(
        self,
        modes: tuple[StPoolingMode, ...],
        *,
        projector: nn.Module | None,
        dimensions: int | None,
        normalize: bool,
        skip_prompt_tokens: int = 0,
    ) -> None:
        self.method = sequence_pool(modes)
        self.head = EmbeddingHead(projector, dimensions, normalize)
        self.skip_prompt_tokens = skip_prompt_tokens

    def __call__(self, hidden: Tensor, attention_mask: Tensor) -> Tensor:
        return self.head(self.pool(hidden, attention_mask))

    def pool(self, hidden: Tensor, attention_mask: Tensor) -> Tensor:
        """The pooled vector before the head (chunked rows are combined at this point)."""
        mask = attention_mask.bool()
        if self.skip_prompt_tokens:
            # Rows are right-padded, so the prompt is always the first tokens (Sentence-Transformers semantics).
            mask = mask.clone()
            mask[:, : self.skip_prompt_tokens] = False
        return self.method(hidden, mask)


class TokenEmbedPooler:
    """Every position's hidden state through the per-token head (padding positions are cut per row later)."""

    supported_tasks: tuple[PoolingTask, ...] = ("token_embed",)

    def __init__(self, *, projector: nn.Module | None, normalize: bool, dimensions: int | None = None) -> None:
        self.head = TokenEmbeddingHead(projector, normalize, dimensions)

    def __call__(self, hidden: Tensor, attention_mask: Tensor) -> Tensor:
        return self.head(hidden)


class ClassifyPooler:
    """The model's own pooler and classifier have run (transformers' classes); calibration and the activation."""

    supported_tasks: tuple[PoolingTask, ...] = ("classify",)

    def __init__(self, head: ClassifierHead) -> None:
        self.head = head

    def __call__(self, logits: Tensor, attention_mask: Tensor) -> Tensor:
        return self.head(logits)


class TokenClassifyPooler:
    """Per-position logits: the chosen columns (`returned_token_ids`), calibration and the activation; the
    activation works on each position alone, so it runs once over the padded batch."""

    supported_tasks: tuple[PoolingTask, ...] = ("token_classify",)

    def __init__(self, head: ClassifierHead, columns: Sequence[int] | None = None) -> None:
        self.head = head
        self.columns = list(columns) if columns is not None else None

    def __call__(self, logits: Tensor, attention_mask: Tensor) -> Tensor:
        if self.columns is not None:
            logits = logits[..., self.columns]
        return self.head(logits)


def pooler_for(
    task: PoolingTask,
    *,
    modes: tuple[StPoolingMode, ...] = ("mean",),
    projector: nn.Module | None = None,
    dimensions: int | None = None,
    normalize: bool = True,
    skip_prompt_tokens: int = 0,
    activation: Activation = "identity",
    use_activation: bool = True,
    logit_mean: float | None = None,
    logit_sigma: float | None = None,
    columns: Sequence[int] | None = None,
) -> Pooler:
    """The pooler of `task`; each reads only the parameters its method and head take."""
    pooler: Pooler
    if task == "embed":
        pooler = EmbedPooler(
            modes,
            projector=projector,
            dimensions=dimensions,
            normalize=normalize,
            skip_prompt_tokens=skip_prompt_tokens,
        )
    elif task == "token_embed":
        pooler = TokenEmbedPooler(projector=projector, normalize=normalize, dimensions=dimensions)
    else:
        head = ClassifierHead(activation, use_activation=use_activation, logit_mean=logit_mean, logit_sigma=logit_sigma)
        if task == "classify":
            pooler = ClassifyPooler(head)
        else:
            pooler = TokenClassifyPooler(head, columns)
    if task not in pooler.supported_tasks:
        raise ValueError(f"no pooler for task {task!r}")
    return pooler
