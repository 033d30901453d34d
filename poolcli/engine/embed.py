"""embed: one text per row -> one vector (sequence pooling, then the embedding head)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from poolcli.config import EmbedOptions, EngineConfig
from poolcli.engine.base import RowEngine
from poolcli.faults import NO_FAULTS, Faults

if TYPE_CHECKING:
    from torch import Tensor

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
        super().__init__(plan, loader, config, keep_columns=keep_columns, faults=faults, warn=warn)
        self._body: HiddenStateModel | None = None
        self._pooler: Pooler | None = None

    @property
    def dim(self) -> int:
        return self.plan.params.dimensions or self.plan.embedding_size

    def describe(self) -> dict[str, Any]:
        return self.plan.describe()

    def identity(self) -> dict[str, Any]:
        return super().identity() | {"output_dtype": self.options.output_dtype}

    def _builder(self) -> EmbedTableBuilder:
        from poolcli.io.tables import EmbedTableBuilder

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
        return self.encoder.pad_id

    def _forward(self, batch: Collated, float32: bool) -> Tensor:
        assert self._body is not None and self._pooler is not None
        body = self.loader.hidden_state_model(float32=True) if float32 else self._body
        hidden = body.hidden_states(batch.ids, batch.mask)
        return self._pooler(hidden, batch.mask.to(body.device)).float()
