"""classify: one text per row -> class probabilities, through the model's own classifier."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import msgspec

from poolcli.config import ClassifyOptions, EngineConfig, PlanOptions
from poolcli.engine.base import RowEngine
from poolcli.engine.plan import Plan, build_plan, classifier_activation, preset_pooler
from poolcli.errors import UsageError
from poolcli.faults import NO_FAULTS, Faults
from poolcli.model.resolve import ResolvedModel
from poolcli.vocab import Activation

if TYPE_CHECKING:
    from torch import Tensor

    from poolcli.engine.batch import Collated
    from poolcli.io.tables import ClassifyTableBuilder
    from poolcli.model.load import Loader, LogitsModel
    from poolcli.pooler.dispatch import Pooler


class ClassifyPlan(msgspec.Struct, frozen=True, kw_only=True):
    """classify: the tokenization plan of the text plus the classifier head after the model's own layers."""

    text: Plan
    activation: Activation
    use_activation: bool
    logit_mean: float | None = None
    logit_sigma: float | None = None
    labels: tuple[str, ...]
    problem_type: str | None = None

    @property
    def multi_label(self) -> bool:
        return self.problem_type == "multi_label_classification"

    def describe(self) -> dict[str, Any]:
        d = self.text.describe()
        for key in ("pooling", "pooling_source", "normalize", "dimensions"):
            d.pop(key, None)
        return d | {
            "pooling": "the model's own (transformers' sequence-classification head)",
            "activation": self.activation if self.use_activation else "none",
            "logit_mean": self.logit_mean,
            "logit_sigma": self.logit_sigma,
            "labels": list(self.labels),
            "problem_type": self.problem_type,
        }


def build_classify_plan(opts: PlanOptions, model: ResolvedModel) -> ClassifyPlan:
    info = model.classifier
    if info is None or "classify" not in model.supported_tasks:
        raise UsageError(
            f"model {model.name} ({model.architecture}) is not a sequence classifier",
            hint="--convert classify adapts a checkpoint that carries classifier weights",
        )
    text = build_plan(opts, model, "classify")
    upper = opts.pooler_flags.over(opts.pooler_config).over(preset_pooler(opts, "classify"))
    if upper.pooling_type is not None or upper.seq_pooling_type is not None:
        raise UsageError(
            "classify runs the model's own pooling and classifier layers; a pooling type cannot be chosen",
            hint="remove pooling_type from the flags, --pooler-config or the preset",
        )
    labels = tuple(info.id2label.get(i, f"LABEL_{i}") for i in range(info.num_labels))
    return ClassifyPlan(
        text=text,
        activation=classifier_activation(info),
        # Reward models give the raw reward unless asked otherwise (vLLM's reward models).
        use_activation=(not model.raw_rewards) if upper.use_activation is None else upper.use_activation,
        logit_mean=upper.logit_mean,
        logit_sigma=upper.logit_sigma,
        labels=labels,
        problem_type=info.problem_type,
    )


class ClassifyEngine(RowEngine):
    """Token ids -> transformers' sequence-classification logits (the model's pooler and classifier always run)
    -> calibration -> the final activation, in float32."""

    task = "classify"
    value_column = "probs"

    def __init__(
        self,
        plan: ClassifyPlan,
        loader: Loader,
        config: EngineConfig,
        *,
        options: ClassifyOptions | None = None,
        keep_columns: tuple[str, ...] = (),
        faults: Faults = NO_FAULTS,
        warn: Callable[[str], None] = lambda message: None,
    ) -> None:
        options = options or ClassifyOptions()
        if not 0 <= options.threshold <= 1:
            raise UsageError(f"--threshold must be between 0 and 1, got {options.threshold}")
        if options.top_k < 0:
            raise UsageError(f"--top-k must be 0 or more, got {options.top_k}")
        self.cplan = plan
        self.options = options
        super().__init__(plan.text, loader, config, keep_columns=keep_columns, faults=faults, warn=warn)
        self._logits: LogitsModel | None = None
        self._pooler: Pooler | None = None

    def describe(self) -> dict[str, Any]:
        # The output options change the bytes written, so they are part of the run's identity.
        return self.cplan.describe() | {"top_k": self.options.top_k, "threshold": self.options.threshold}

    def identity(self) -> dict[str, Any]:
        return super().identity() | {"output_dtype": "float32"}

    def _builder(self) -> ClassifyTableBuilder:
        from poolcli.io.tables import ClassifyTableBuilder

        return ClassifyTableBuilder(
            list(self.cplan.labels),
            multi_label=self.cplan.multi_label,
            threshold=self.options.threshold,
            top_k=self.options.top_k,
            keep_columns=self.keep_columns,
        )

    def _load_model(self) -> int:
        from poolcli.pooler.dispatch import pooler_for

        pad_id = self.encoder.pad_id
        self._logits = self.loader.logits_model(pad_id=pad_id)
        c = self.cplan
        self._pooler = pooler_for(
            "classify",
            activation=c.activation,
            use_activation=c.use_activation,
            logit_mean=c.logit_mean,
            logit_sigma=c.logit_sigma,
        )
        return pad_id

    def _forward(self, batch: Collated, float32: bool) -> Tensor:
        assert self._logits is not None and self._pooler is not None
        model = self.loader.logits_model(pad_id=self.encoder.pad_id, float32=True) if float32 else self._logits
        return self._pooler(model.logits(batch.ids, batch.mask, None), batch.mask)
