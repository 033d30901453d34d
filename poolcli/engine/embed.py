"""embed: one text per row -> one vector (sequence pooling, then the embedding head).

On BGE-M3, `--outputs dense,sparse,colbert` computes the dense vector, the lexical weights and the colbert vectors
from one forward pass (three heads on the same hidden states), exactly as `embed`, `token-classify` and
`token-embed` give them one at a time."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from poolcli.config import EmbedOptions, EngineConfig
from poolcli.engine.base import RowEngine
from poolcli.errors import UsageError
from poolcli.faults import NO_FAULTS, Faults
from poolcli.io.records import Encoded

if TYPE_CHECKING:
    from torch import Tensor, nn

    from poolcli.engine.batch import Collated
    from poolcli.engine.plan import Plan
    from poolcli.io.tables import EmbedTableBuilder
    from poolcli.model.load import HiddenStateModel, Loader
    from poolcli.pooler.dispatch import Pooler


class EmbedEngine(RowEngine):
    """Token ids -> hidden states -> pooling (the plan's methods, the prompt left out when configured) ->
    projector -> matryoshka slice -> L2 normalisation; the head in float32."""

    task = "embed"

    def __init__(
        self,
        plan: Plan,
        loader: Loader,
        config: EngineConfig,
        *,
        options: EmbedOptions | None = None,
        keep_columns: tuple[str, ...] = (),
        faults: Faults = NO_FAULTS,
        warn: Callable[[str], None] = lambda message: None,
    ) -> None:
        self.options = options = options or EmbedOptions()
        self.multi = options.outputs != ("dense",)
        if self.multi and plan.model.bge_m3 is None:
            raise UsageError(
                f"--outputs {','.join(options.outputs)}: sparse and colbert outputs need a BGE-M3 model "
                "(BgeM3EmbeddingModel); this one gives the dense vector only"
            )
        if self.multi and plan.chunk:
            raise UsageError("--outputs sparse/colbert do not combine with chunked processing; embed one at a time")
        if self.multi:
            self.per_token = (False, True, True)
        if plan.chunk and plan.pooling.label in ("CLS", "LAST"):
            warn(
                f"chunked processing with {plan.pooling.label} pooling: each chunk is pooled at its "
                f"{'first ([CLS])' if plan.pooling.label == 'CLS' else 'last'} token and a long text's vector is the "
                "token-weighted mean of those; MEAN pooling averages every token of the text"
            )
        super().__init__(plan, loader, config, keep_columns=keep_columns, faults=faults, warn=warn)
        self._body: HiddenStateModel | None = None
        self._pooler: Pooler | None = None
        self._heads: tuple[nn.Module, Pooler] | None = None

    @property
    def dim(self) -> int:
        return self.plan.params.dimensions or self.plan.embedding_size

    def describe(self) -> dict[str, Any]:
        return self.plan.describe() | ({"outputs": list(self.options.outputs)} if self.multi else {})

    def identity(self) -> dict[str, Any]:
        return super().identity() | {"output_dtype": self.options.output_dtype}

    def _builder(self) -> EmbedTableBuilder:
        from poolcli.io.tables import EmbedTableBuilder, M3TableBuilder

        if self.multi:
            assert self.plan.model.bge_m3 is not None
            if self.options.output_dtype not in ("float32", "float16"):
                raise UsageError(
                    f"--output-dtype {self.options.output_dtype} is for dense vectors, not BGE-M3's outputs"
                )
            self.value_column = (
                "embedding"
                if "dense" in self.options.outputs
                else ("colbert_embeddings" if "colbert" in self.options.outputs else "lexical_weights")
            )
            return M3TableBuilder(
                self.dim,
                self.plan.model.bge_m3.colbert_dim,
                self.options.output_dtype,
                self.options.outputs,
                self.keep_columns,
            )
        return EmbedTableBuilder(self.dim, self.options.output_dtype, self.keep_columns)

    def _load_model(self) -> int:
        from poolcli.pooler.dispatch import pooler_for

        self._body = self.loader.hidden_state_model()
        params = self.plan.params
        self._pooler = pooler_for(
            "embed",
            modes=self.plan.pooling.modes,
            projector=self.loader.projector(),
            dimensions=params.dimensions,
            normalize=params.normalize,
            skip_prompt_tokens=self.encoder.prompt_tokens,
        )
        if self.multi:
            colbert = pooler_for("token_embed", projector=self.loader.token_projector(), normalize=params.normalize)
            self._heads = (self.loader.sparse_head(), colbert)
            self._sparse_pooler = pooler_for("token_classify", activation="relu")
        return self.encoder.pad_id

    def _forward(self, batch: Collated, float32: bool) -> Tensor | tuple[Tensor, ...]:
        assert self._body is not None and self._pooler is not None
        body = self.loader.hidden_state_model(float32=True) if float32 else self._body
        hidden = body.hidden_states(batch.ids, batch.mask)
        mask = batch.mask.to(body.device)
        if self.plan.chunk:
            from poolcli.pooler.dispatch import EmbedPooler

            # The head runs after a chunked row's chunks are combined (`_finish`), so every row stops here.
            assert isinstance(self._pooler, EmbedPooler)
            return self._pooler.pool(hidden, mask).float()
        dense = self._pooler(hidden, mask).float()
        if self._heads is None:
            return dense
        sparse_linear, colbert = self._heads
        return dense, self._sparse_pooler(sparse_linear(hidden.float()), mask), colbert(hidden, mask)

    def _combine(self, outputs: list[Any], enc: Encoded) -> Any:
        """A chunked row: the mean of its chunks' pooled vectors weighted by each chunk's token count (its special
        tokens included), so MEAN pooling of the row is the mean over all its chunk token states."""
        assert enc.chunks is not None
        weights = np.array([len(c) for c in enc.chunks], dtype=np.float64)
        return (np.stack(outputs).astype(np.float64) * weights[:, None]).sum(0) / weights.sum()

    def _finish(
        self, values: list[np.ndarray], encoded: Sequence[Encoded]
    ) -> tuple[list[np.ndarray], Sequence[Encoded]]:
        if self.plan.chunk:
            import torch

            from poolcli.pooler.dispatch import EmbedPooler

            assert isinstance(self._pooler, EmbedPooler)
            if not values:
                return values, encoded
            pooled = torch.from_numpy(np.stack(values).astype(np.float32)).to(self.loader.device)
            with torch.inference_mode():
                out = self._pooler.head(pooled).float().cpu().numpy()
            return list(out), encoded
        if not self.multi:
            return values, encoded
        from poolcli.pooler.lexical import lexical_weights

        unused: frozenset[int] = getattr(self.encoder, "lexical_unused", frozenset())
        rows: list[Any] = []
        for (dense, sparse, colbert), enc in zip(values, encoded, strict=True):
            # The colbert vectors leave out the first token, as FlagEmbedding's do (token-embed on BGE-M3).
            rows.append((dense, lexical_weights(sparse, enc.ids, unused), colbert[1:]))
        return rows, encoded
