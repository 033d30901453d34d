"""token-embed: one text per row -> one vector per kept token (every position, through the token projector,
normalized per token). Special tokens are kept unless asked otherwise, as vLLM's token_embed keeps them.

- ColBERT checkpoints: the projection is the checkpoint's (Stanford `linear`, or PyLate's Dense); with a role,
  the text is encoded as PyLate encodes queries (marker, [MASK] expansion) or documents (marker, skiplist
  tokens dropped); without one, plain per-token vectors, as vLLM gives them.
- BGE-M3: `colbert_linear` over every token but the first (FlagEmbedding's `colbert_vecs`: <s> dropped, </s>
  kept)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import msgspec
import numpy as np

from poolcli.config import EngineConfig, TokenEmbedOptions
from poolcli.engine.base import RowEncoder, RowEngine
from poolcli.errors import UsageError
from poolcli.faults import NO_FAULTS, Faults
from poolcli.io.records import Encoded

if TYPE_CHECKING:
    from torch import Tensor

    from poolcli.engine.batch import Collated
    from poolcli.engine.plan import Plan
    from poolcli.io.tables import TokenEmbedTableBuilder
    from poolcli.model.load import HiddenStateModel, Loader
    from poolcli.pooler.dispatch import Pooler


class TokenEmbedEngine(RowEngine):
    """Token ids -> hidden states -> per-token head (projector, matryoshka slice, L2 norm per token)."""

    task = "token_embed"
    value_column = "embeddings"
    per_token = True

    def __init__(
        self,
        plan: Plan,
        loader: Loader,
        config: EngineConfig,
        *,
        options: TokenEmbedOptions | None = None,
        keep_columns: tuple[str, ...] = (),
        faults: Faults = NO_FAULTS,
        warn: Callable[[str], None] = lambda message: None,
    ) -> None:
        self.options = options = options or TokenEmbedOptions()
        if options.colbert_role is not None and (plan.chunk or plan.max_embed_len is not None):
            role = options.colbert_role
            raise UsageError(
                f"a ColBERT {role} has a fixed length (the checkpoint's {role}_length); chunked processing and "
                "max_embed_len do not apply to it"
            )
        if options.colbert_role is not None and plan.model.colbert is None:
            raise UsageError(
                f"--colbert-role applies to ColBERT checkpoints; {plan.model.name} "
                f"({plan.model.architecture}) is not one"
            )
        self.out_dtype = np.float16 if options.output_dtype == "float16" else np.float32
        super().__init__(plan, loader, config, keep_columns=keep_columns, faults=faults, warn=warn)
        self._body: HiddenStateModel | None = None
        self._pooler: Pooler | None = None

    @property
    def dim(self) -> int:
        return self.plan.params.dimensions or self.plan.embedding_size

    def describe(self) -> dict[str, Any]:
        model = self.plan.model
        head: dict[str, Any] = {}
        if model.colbert is not None:
            head = {"colbert": msgspec.to_builtins(model.colbert), "colbert_role": self.options.colbert_role}
        elif model.bge_m3 is not None:
            head = {"head": "BGE-M3 colbert_linear, first token dropped"}
        return self.plan.describe() | {"skip_special_tokens": self.options.skip_special_tokens} | head

    def identity(self) -> dict[str, Any]:
        return super().identity() | {"output_dtype": self.options.output_dtype}

    def _encoder_options(self) -> dict[str, Any]:
        return {"special": self.options.skip_special_tokens}

    def _make_encoder(self) -> RowEncoder:
        spec, role = self.plan.model.colbert, self.options.colbert_role
        if spec is not None and role is not None:
            from poolcli.engine.tokenize import ColbertEncoder

            return ColbertEncoder(self.plan, spec, role, special=self.options.skip_special_tokens)
        return super()._make_encoder()

    def _builder(self) -> TokenEmbedTableBuilder:
        from poolcli.io.tables import TokenEmbedTableBuilder

        return TokenEmbedTableBuilder(self.dim, self.options.output_dtype, self.keep_columns)

    def _load_model(self) -> int:
        from poolcli.pooler.dispatch import pooler_for

        self._body = self.loader.hidden_state_model()
        params = self.plan.params
        self._pooler = pooler_for(
            "token_embed",
            projector=self.loader.token_projector(),
            dimensions=params.dimensions,
            normalize=params.normalize,
        )
        return self.encoder.pad_id

    def _forward(self, batch: Collated, float32: bool) -> Tensor:
        assert self._body is not None and self._pooler is not None
        body = self.loader.hidden_state_model(float32=True) if float32 else self._body
        hidden = body.hidden_states(batch.ids, batch.mask)
        return self._pooler(hidden, batch.mask.to(body.device))

    def _combine(self, outputs: list[Any], enc: Encoded) -> Any:
        """A chunked row: its chunks' vectors concatenated, each token once (the special tokens and the prompt that
        every chunk repeats are kept from the first chunk, the closing special tokens from the last)."""
        lead, trail = getattr(self.encoder, "chunk_frame", (0, 0))
        last = len(outputs) - 1
        pieces = [v[(0 if k == 0 else lead) : (len(v) if k == last else len(v) - trail)] for k, v in enumerate(outputs)]
        combined = np.concatenate(pieces)
        assert len(combined) == len(enc.ids)
        return combined

    def _finish(
        self, values: list[np.ndarray], encoded: Sequence[Encoded]
    ) -> tuple[list[np.ndarray], Sequence[Encoded]]:
        skip_ids: frozenset[int] = getattr(self.encoder, "skip_ids", frozenset())  # a ColBERT document's skiplist
        drop_first = self.plan.model.bge_m3 is not None
        if not (self.options.skip_special_tokens or skip_ids or drop_first):
            return values, encoded
        kept_values: list[np.ndarray] = []
        kept_encoded: list[Encoded] = []
        for vectors, enc in zip(values, encoded, strict=True):
            keep = np.ones(len(enc.ids), dtype=bool)
            if drop_first:
                keep[:1] = False
            if skip_ids:
                keep &= ~np.isin(np.asarray(enc.ids), list(skip_ids))
            if self.options.skip_special_tokens:
                assert enc.special is not None
                keep &= np.asarray(enc.special, dtype=bool) == 0
            index = np.flatnonzero(keep)
            kept_values.append(vectors[index])
            kept_encoded.append(Encoded([enc.ids[i] for i in index], enc.truncated))
        return kept_values, kept_encoded
