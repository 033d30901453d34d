"""Task -> pooler: compose a pooling method with the task's head."""

from __future__ import annotations

from typing import TYPE_CHECKING

from poolcli.pooler.heads import EmbeddingHead
from poolcli.pooler.methods import sequence_pool

if TYPE_CHECKING:
    from torch import Tensor, nn

    from poolcli.vocab import StPoolingMode


class EmbedPooler:
    """Sequence pooling then the embedding head; the prompt's first tokens are left out when configured."""

    supported_tasks = ("embed",)

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
        mask = attention_mask.bool()
        if self.skip_prompt_tokens:
            # Rows are right-padded, so the prompt is always the first tokens (Sentence-Transformers semantics).
            mask = mask.clone()
            mask[:, : self.skip_prompt_tokens] = False
        return self.head(self.method(hidden, mask))
