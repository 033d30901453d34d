"""token-classify on BGE-M3: the sparse lexical weights of every row (FlagEmbedding's `lexical_weights`).

Every position's hidden state through `sparse_linear` and a ReLU (vLLM's token_classify head for BGE-M3), then
per row one weight per token id (`poolcli.pooler.lexical`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from poolcli.config import EngineConfig
from poolcli.engine.base import RowEngine
from poolcli.faults import NO_FAULTS, Faults
from poolcli.io.records import Encoded

if TYPE_CHECKING:
    from torch import Tensor, nn

    from poolcli.engine.batch import Collated
    from poolcli.engine.plan import Plan
    from poolcli.io.tables import LexicalTableBuilder
    from poolcli.model.load import HiddenStateModel, Loader
    from poolcli.pooler.dispatch import Pooler


class LexicalEngine(RowEngine):
    """Token ids -> hidden states -> relu(sparse_linear(h)) per token -> {token id: max weight}."""

    task = "token_classify"
    value_column = "lexical_weights"
    per_token = True

    def __init__(
        self,
        plan: Plan,
        loader: Loader,
        config: EngineConfig,
        *,
        keep_columns: tuple[str, ...] = (),
        faults: Faults = NO_FAULTS,
        warn: Callable[[str], None] = lambda message: None,
    ) -> None:
        super().__init__(plan, loader, config, keep_columns=keep_columns, faults=faults, warn=warn)
        self._body: HiddenStateModel | None = None
        self._sparse: nn.Module | None = None
        self._pooler: Pooler | None = None

    def describe(self) -> dict[str, Any]:
        return self.plan.describe() | {"head": "BGE-M3 sparse_linear + relu, max weight per token id"}

    def identity(self) -> dict[str, Any]:
        return super().identity() | {"output_dtype": "float32"}

    def _builder(self) -> LexicalTableBuilder:
        from poolcli.io.tables import LexicalTableBuilder

        return LexicalTableBuilder(self.keep_columns)

    def _load_model(self) -> int:
        from poolcli.pooler.dispatch import pooler_for

        self._body = self.loader.hidden_state_model()
        self._sparse = self.loader.sparse_head()
        self._pooler = pooler_for("token_classify", activation="relu")
        return self.encoder.pad_id

    def _forward(self, batch: Collated, float32: bool) -> Tensor:
        assert self._body is not None and self._sparse is not None and self._pooler is not None
        body = self.loader.hidden_state_model(float32=True) if float32 else self._body
        hidden = body.hidden_states(batch.ids, batch.mask)
        return self._pooler(self._sparse(hidden.float()), batch.mask)

    def _finish(
        self, values: list[np.ndarray], encoded: Sequence[Encoded]
    ) -> tuple[list[np.ndarray], Sequence[Encoded]]:
        from poolcli.pooler.lexical import lexical_weights

        unused: frozenset[int] = getattr(self.encoder, "lexical_unused", frozenset())
        return [lexical_weights(v, e.ids, unused) for v, e in zip(values, encoded, strict=True)], encoded
