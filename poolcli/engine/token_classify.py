"""token-classify: one text per row -> one output vector per token (ALL) or per step tag (STEP)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import msgspec
import numpy as np

from poolcli.config import EngineConfig, PlanOptions, TokenClassifyOptions
from poolcli.engine.base import RowEngine
from poolcli.engine.plan import Plan, build_plan, classifier_activation, preset_pooler
from poolcli.errors import UsageError
from poolcli.faults import NO_FAULTS, Faults
from poolcli.io.records import Encoded
from poolcli.model.resolve import ClassifierInfo, ResolvedModel
from poolcli.vocab import Activation, TokPoolingType

if TYPE_CHECKING:
    from torch import Tensor

    from poolcli.engine.batch import Collated
    from poolcli.io.tables import TokenClassifyTableBuilder
    from poolcli.model.load import Loader, LogitsModel
    from poolcli.pooler.dispatch import Pooler


class TokenClassifyPlan(msgspec.Struct, frozen=True, kw_only=True):
    """token-classify: per-token classifier outputs, all positions (ALL) or the step tags' (STEP)."""

    text: Plan
    pooling: TokPoolingType
    pooling_source: str
    step_tag_id: int | None = None
    returned_token_ids: tuple[int, ...] | None = None
    lm_rows: tuple[int, ...] | None = None
    """A generative model's logits come from these LM head rows (its returned_token_ids)."""
    activation: Activation
    use_activation: bool
    logit_mean: float | None = None
    logit_sigma: float | None = None
    labels: tuple[str, ...]
    """One name per output column."""

    def describe(self) -> dict[str, Any]:
        d = self.text.describe()
        for key in ("pooling", "pooling_source", "normalize", "dimensions"):
            d.pop(key, None)
        return d | {
            "pooling": self.pooling,
            "pooling_source": self.pooling_source,
            "step_tag_id": self.step_tag_id,
            "returned_token_ids": list(self.returned_token_ids) if self.returned_token_ids is not None else None,
            "head": "LM head rows" if self.lm_rows is not None else "the model's own classifier",
            "activation": self.activation if self.use_activation else "none",
            "logit_mean": self.logit_mean,
            "logit_sigma": self.logit_sigma,
            "labels": list(self.labels),
        }


def build_token_classify_plan(opts: PlanOptions, model: ResolvedModel) -> TokenClassifyPlan:
    info = model.classifier
    if "token_classify" not in model.supported_tasks:
        raise UsageError(
            f"model {model.name} ({model.architecture}) has no per-token classifier; it supports "
            f"{', '.join(model.supported_tasks)}",
            hint="token-classify takes *ForTokenClassification, reward and decoder classification models",
        )
    text = build_plan(opts, model, "token_classify")
    upper = opts.pooler_flags.over(opts.pooler_config).over(preset_pooler(opts, "token_classify"))
    if upper.seq_pooling_type is not None:
        raise UsageError(
            f"pooling type {upper.seq_pooling_type} pools a sequence; token-classify takes ALL or STEP",
        )
    if upper.tok_pooling_type is not None:
        pooling: TokPoolingType = "STEP" if upper.tok_pooling_type == "STEP" else "ALL"
        source = "flags/pooler-config/preset"
    else:
        pooling, source = model.default_tok_pooling, f"architecture default ({model.architecture})"
    step_tag_id = upper.step_tag_id if upper.step_tag_id is not None else model.default_step_tag_id
    returned = tuple(upper.returned_token_ids) if upper.returned_token_ids is not None else None
    if returned is not None and not returned:
        raise UsageError("returned_token_ids is empty; leave it out to keep every column")
    if pooling != "STEP":
        if upper.step_tag_id is not None or returned is not None:
            raise UsageError("step_tag_id and returned_token_ids need STEP pooling (--pooling-type STEP)")
        step_tag_id = None
    lm_rows: tuple[int, ...] | None = None
    if info is None or (model.is_generative and info.head == "sequence"):
        # A causal LM adapted with --convert classify: its classifier is the LM head, column by token id.
        if returned is None:
            raise UsageError(
                f"{model.name} is a generative model: token-classify reads its LM head through "
                "returned_token_ids (STEP pooling), e.g. --pooler-config "
                '\'{"pooling_type": "STEP", "step_tag_id": N, "returned_token_ids": [good, bad]}\''
            )
        lm_rows, returned = returned, None
        columns = len(lm_rows)
        labels = tuple(f"token_{i}" for i in lm_rows)
        problem_info = ClassifierInfo(num_labels=columns)
    else:
        problem_info = info
        if returned is not None:
            bad = [i for i in returned if not 0 <= i < info.num_labels]
            if bad:
                raise UsageError(f"returned_token_ids {bad} are not columns of a {info.num_labels}-label head")
        all_labels = [info.id2label.get(i, f"LABEL_{i}") for i in range(info.num_labels)]
        labels = tuple(all_labels[i] for i in returned) if returned is not None else tuple(all_labels)
        columns = len(labels)
    default_activation = not model.raw_rewards or pooling == "STEP"
    return TokenClassifyPlan(
        text=text,
        pooling=pooling,
        pooling_source=source,
        step_tag_id=step_tag_id,
        returned_token_ids=returned,
        lm_rows=lm_rows,
        activation=classifier_activation(problem_info, columns),
        use_activation=default_activation if upper.use_activation is None else upper.use_activation,
        logit_mean=upper.logit_mean,
        logit_sigma=upper.logit_sigma,
        labels=labels,
    )


class TokenClassifyEngine(RowEngine):
    """Token ids -> per-position logits (the model's own token head, a reward head, or LM head rows) -> STEP
    selection -> calibration -> the final activation, in float32. Each row's result is a [n, C] array: every
    token (ALL) or every step tag (STEP)."""

    task = "token_classify"
    value_column = "probs"
    per_token = True

    def __init__(
        self,
        plan: TokenClassifyPlan,
        loader: Loader,
        config: EngineConfig,
        *,
        options: TokenClassifyOptions | None = None,
        keep_columns: tuple[str, ...] = (),
        faults: Faults = NO_FAULTS,
        warn: Callable[[str], None] = lambda message: None,
    ) -> None:
        options = options or TokenClassifyOptions()
        aggregate = options.aggregate != "none"
        if aggregate and not plan.use_activation:
            raise UsageError("--aggregate needs probabilities; the activation is off for this model or run")
        if aggregate and (plan.activation != "softmax" or plan.logit_mean is not None or plan.logit_sigma is not None):
            # The pipeline's spans come from a softmax of the raw logits; anything else would give other spans.
            raise UsageError("--aggregate needs a softmax over uncalibrated logits (a multi-class token classifier)")
        if aggregate and plan.pooling == "STEP":
            raise UsageError("--aggregate builds entity spans from every token; it does not apply to STEP pooling")
        self.tplan = plan
        self.options = options
        super().__init__(plan.text, loader, config, keep_columns=keep_columns, faults=faults, warn=warn)
        self._logits: LogitsModel | None = None
        self._pooler: Pooler | None = None

    def describe(self) -> dict[str, Any]:
        return self.tplan.describe() | {"output_options": msgspec.to_builtins(self.options)}

    def identity(self) -> dict[str, Any]:
        return super().identity() | {"output_dtype": "float32"}

    def _encoder_options(self) -> dict[str, Any]:
        return {"offsets": self.options.offsets or self.options.aggregate != "none"}

    def _builder(self) -> TokenClassifyTableBuilder:
        from poolcli.io.tables import TokenClassifyTableBuilder

        tp = self.tplan
        return TokenClassifyTableBuilder(
            list(tp.labels),
            step=tp.pooling == "STEP",
            step_tag_id=tp.step_tag_id,
            offsets=self.options.offsets,
            aggregate=self.options.aggregate != "none",
            ignore_labels=frozenset(self.options.ignore_labels),
            keep_columns=self.keep_columns,
        )

    def _model(self, float32: bool) -> LogitsModel:
        return self.loader.logits_model(
            pad_id=self.encoder.pad_id, per_token=True, lm_rows=self.tplan.lm_rows, float32=float32
        )

    def _load_model(self) -> int:
        from poolcli.pooler.dispatch import pooler_for

        self._logits = self._model(False)
        tp = self.tplan
        self._pooler = pooler_for(
            "token_classify",
            activation=tp.activation,
            use_activation=tp.use_activation,
            logit_mean=tp.logit_mean,
            logit_sigma=tp.logit_sigma,
            columns=tp.returned_token_ids,
        )
        return self.encoder.pad_id

    def _forward(self, batch: Collated, float32: bool) -> Tensor:
        assert self._logits is not None and self._pooler is not None
        model = self._model(True) if float32 else self._logits
        return self._pooler(model.logits(batch.ids, batch.mask, None), batch.mask)

    def _finish(
        self, values: list[np.ndarray], encoded: Sequence[Encoded]
    ) -> tuple[list[np.ndarray], Sequence[Encoded]]:
        if self.tplan.pooling != "STEP":
            return values, encoded
        import torch

        from poolcli.pooler.methods import step_pool

        out = []
        for data, enc in zip(values, encoded, strict=True):
            kept, _ = step_pool(
                torch.from_numpy(np.ascontiguousarray(data)),
                torch.as_tensor(enc.ids),
                step_tag_id=self.tplan.step_tag_id,
                returned_token_ids=None,
            )
            out.append(kept.numpy().astype(np.float32, copy=False))
        return out, encoded
