"""The plan of a run: the model's resolution and the user's pooling options merged, in the design's precedence
order. Each task module builds its own plan on this text plan (`build_plan`); the score plan is here too, because
the pair tokenizer reads it.

Precedence, highest first: explicit flags > --pooler-config > --config preset > Sentence-Transformers files of the
model > the architecture's default.
"""

from __future__ import annotations

from typing import Any

import msgspec

from poolcli.config import PlanOptions, PoolerConfig, PoolingParams, ScoreOptions, ScoreTemplate, parse_pooler_config
from poolcli.errors import ConfigError, UsageError
from poolcli.model.resolve import ClassifierInfo, ResolvedModel, StPooling
from poolcli.vocab import Activation, OnTooLong, PoolingTask, ScoreType, StPoolingMode, TruncationSide

_SEQ_TO_MODE: dict[str, StPoolingMode] = {"CLS": "cls", "LAST": "lasttoken", "MEAN": "mean"}
_MODE_TO_SEQ = {v: k for k, v in _SEQ_TO_MODE.items()}

_COMMON_FIELDS = {"task", "pooling_type", "seq_pooling_type", "tok_pooling_type", "use_activation"}
_TASK_FIELDS: dict[PoolingTask, set[str]] = {
    "embed": _COMMON_FIELDS | {"normalize", "dimensions", "enable_chunked_processing", "max_embed_len"},
    "token_embed": _COMMON_FIELDS | {"normalize", "dimensions", "enable_chunked_processing", "max_embed_len"},
    "classify": _COMMON_FIELDS | {"softmax", "activation", "logit_mean", "logit_sigma", "logit_bias", "logit_scale"},
    "token_classify": _COMMON_FIELDS
    | {
        "softmax",
        "activation",
        "logit_mean",
        "logit_sigma",
        "logit_bias",
        "logit_scale",
        "step_tag_id",
        "returned_token_ids",
    },
}


class PoolingSpec(msgspec.Struct, frozen=True):
    """Sequence pooling as Sentence-Transformers modes (CLS/LAST/MEAN are the modes cls/lasttoken/mean)."""

    modes: tuple[StPoolingMode, ...]
    include_prompt: bool = True
    source: str = ""

    @property
    def label(self) -> str:
        if not self.modes:
            return "ALL"
        if len(self.modes) == 1 and self.include_prompt and self.modes[0] in _MODE_TO_SEQ:
            return _MODE_TO_SEQ[self.modes[0]]
        text = "+".join(self.modes)
        return f"st:{text}" + ("" if self.include_prompt else " (prompt excluded)")


class Plan(msgspec.Struct, frozen=True, kw_only=True):
    """Everything the engine needs to turn text into the task's output."""

    model: ResolvedModel
    task: PoolingTask
    pooler: PoolerConfig
    """The merged pooler config (canonical fields only)."""
    pooling: PoolingSpec
    embedding_size: int
    """Length of the head's output before any matryoshka slice."""
    params: PoolingParams
    prompt: str | None
    prompt_name: str | None
    max_tokens: int
    """Rows longer than this (special tokens included) are truncated or become error rows."""
    truncation_side: TruncationSide
    on_too_long: OnTooLong
    lower_case: bool
    chunk: bool = False
    """Texts over `max_tokens` are embedded in chunks (--on-too-long chunk, enable_chunked_processing)."""
    max_embed_len: int | None = None
    """Texts over this many tokens are TOO_LONG error rows, chunked or not."""

    def describe(self) -> dict[str, Any]:
        """The resolved settings, as recorded in output metadata and shown by `inspect`."""
        return {
            "task": self.task,
            "pooling": self.pooling.label,
            "pooling_source": self.pooling.source,
            "normalize": self.params.normalize,
            "dimensions": self.params.dimensions,
            "prompt": self.prompt,
            "max_tokens": self.max_tokens,
            "truncation_side": self.truncation_side,
            "on_too_long": "chunk" if self.chunk else self.on_too_long,
            "max_embed_len": self.max_embed_len,
            "lower_case": self.lower_case,
            "pooler_config": self.pooler.to_dict(),
        }


def check_fields_for_task(task: PoolingTask, data: dict[str, Any], *, source: str) -> None:
    allowed = _TASK_FIELDS[task]
    extra = sorted(
        k for k, v in data.items() if v is not None and k not in allowed and k in PoolerConfig.__struct_fields__
    )
    if extra:
        raise UsageError(
            f"{source}: task {task!r} does not take {', '.join(extra)}",
            hint=f"valid for {task}: {', '.join(sorted(allowed))}",
        )


def preset_pooler(opts: PlanOptions, task: PoolingTask) -> PoolerConfig:
    if opts.preset is None or not opts.preset.pooler:
        return PoolerConfig()
    source = f"preset {opts.preset_name!r}"
    check_fields_for_task(task, opts.preset.pooler, source=source)
    return parse_pooler_config(opts.preset.pooler, source=source, error=ConfigError)


def _st_layer(model: ResolvedModel) -> PoolerConfig:
    return PoolerConfig(use_activation=model.st_normalize)


def _pooling_spec(
    merged_seq: str | None, layers_seq: str | None, st: StPooling | None, model: ResolvedModel
) -> PoolingSpec:
    if layers_seq is not None:
        return PoolingSpec(modes=(_SEQ_TO_MODE[layers_seq],), source="flags/pooler-config/preset")
    if st is not None:
        return PoolingSpec(modes=st.modes, include_prompt=st.include_prompt, source="Sentence-Transformers Pooling")
    seq = merged_seq or model.default_pooling
    return PoolingSpec(modes=(_SEQ_TO_MODE[seq],), source=f"architecture default ({model.architecture})")


def resolve_prompt(opts: PlanOptions, model: ResolvedModel) -> tuple[str | None, str | None]:
    if opts.prompt is not None:
        return opts.prompt, None
    prompts = dict(model.prompts)
    default_name = model.default_prompt_name
    if opts.preset is not None:
        prompts.update(opts.preset.prompts)
        default_name = opts.preset.default_prompt_name or default_name
    name = opts.prompt_name or default_name
    if name is None:
        return None, None
    if name not in prompts:
        known = ", ".join(sorted(prompts)) or "none"
        raise UsageError(f"--prompt-name {name}: not one of this model's and preset's prompts ({known})")
    return prompts[name] or None, name


def build_plan(opts: PlanOptions, model: ResolvedModel, task: PoolingTask) -> Plan:
    if task not in model.supported_tasks:
        raise UsageError(
            f"model {model.name} ({model.architecture}) does not support {task!r}; it supports "
            f"{', '.join(model.supported_tasks)}",
            hint="--convert embed or --convert classify adapts a model to another task",
        )
    preset = preset_pooler(opts, task)
    # Everything above the model's own files, merged highest first.
    upper = opts.pooler_flags.over(opts.pooler_config).over(preset)
    if upper.task is not None and upper.task != task:
        raise UsageError(f"pooler config task {upper.task!r} contradicts the command ({task!r})")
    # A Sentence-Transformers Normalize module normalizes the pooled vector; per-token vectors are normalized by
    # default whatever it says (vLLM's token_embed), --no-normalize turns it off.
    merged = upper if task == "token_embed" else upper.over(_st_layer(model))
    chunk, on_too_long = _long_input_policy(opts, merged)
    if chunk and task not in ("embed", "token_embed"):
        raise UsageError(
            f"chunked processing of long inputs applies to embed and token-embed, not {task!r}",
            hint="--on-too-long truncate or error",
        )
    if merged.tok_pooling_type is not None and task in ("embed", "classify"):
        raise UsageError(f"pooling type {merged.tok_pooling_type} is for token tasks; {task!r} takes CLS, LAST or MEAN")
    if task == "token_embed":
        if upper.seq_pooling_type is not None or merged.tok_pooling_type == "STEP":
            kind = upper.seq_pooling_type or merged.tok_pooling_type
            raise UsageError(
                f"token-embed gives every token's vector (ALL pooling); pooling type {kind} does not apply"
            )
        # Every position, through the projector (a Sentence-Transformers Dense stack applies per token).
        pooling = PoolingSpec(modes=(), source="every token")
    else:
        pooling = _pooling_spec(merged.seq_pooling_type, upper.seq_pooling_type, model.st_pooling, model)

    embedding_size = _embedding_size(pooling, model)
    if task == "token_embed" and model.colbert is not None:
        embedding_size = model.colbert.dim
    elif task == "token_embed" and model.bge_m3 is not None:
        embedding_size = model.bge_m3.colbert_dim
    dimensions = merged.dimensions
    if dimensions is not None and task in ("embed", "token_embed"):
        _check_dimensions(dimensions, model, embedding_size)
    normalize = True if merged.use_activation is None else merged.use_activation
    params = PoolingParams(
        task=task,
        dimensions=dimensions,
        normalize=normalize,
        use_activation=True if merged.use_activation is None else merged.use_activation,
    )

    limit = max_tokens(opts, model)
    prompt, prompt_name = resolve_prompt(opts, model)
    return Plan(
        model=model,
        task=task,
        pooler=merged,
        pooling=pooling,
        embedding_size=embedding_size,
        params=params,
        prompt=prompt,
        prompt_name=prompt_name,
        max_tokens=limit,
        truncation_side=opts.truncation_side,
        on_too_long=on_too_long,
        lower_case=model.do_lower_case,
        chunk=chunk,
        max_embed_len=merged.max_embed_len,
    )


def _long_input_policy(opts: PlanOptions, merged: PoolerConfig) -> tuple[bool, OnTooLong]:
    """Whether too-long texts are chunked, and the policy otherwise. An explicit --on-too-long wins over a preset's or
    pooler config's enable_chunked_processing; against the --enable-chunked-processing flag it is a contradiction."""
    explicit = opts.on_too_long
    if explicit is None:
        return bool(merged.enable_chunked_processing), "truncate"
    if explicit != "chunk" and opts.pooler_flags.enable_chunked_processing:
        raise UsageError(f"--on-too-long {explicit} contradicts --enable-chunked-processing")
    return explicit == "chunk", explicit


def _embedding_size(pooling: PoolingSpec, model: ResolvedModel) -> int:
    pooled = model.hidden_size * max(1, len(pooling.modes))
    if not model.dense:
        return pooled
    if model.dense[0].in_features != pooled:
        raise UsageError(
            f"pooling {pooling.label} gives {pooled}-dim vectors but the model's Dense projector takes "
            f"{model.dense[0].in_features}",
            hint="keep the model's own pooling for this model",
        )
    return model.dense[-1].out_features


def _check_dimensions(dimensions: int, model: ResolvedModel, embedding_size: int) -> None:
    if not model.is_matryoshka:
        raise UsageError(
            f'model "{model.name}" does not support matryoshka representation; changing output dimensions would '
            "give poor results",
            hint="if it was trained with matryoshka loss, pass --hf-overrides '{\"is_matryoshka\": true}'",
        )
    if model.matryoshka_dimensions is not None and dimensions not in model.matryoshka_dimensions:
        raise UsageError(
            f"model {model.name!r} only supports matryoshka dimensions {list(model.matryoshka_dimensions)}, "
            f"not {dimensions}"
        )
    if dimensions > embedding_size:
        raise UsageError(f"--dimensions {dimensions} is larger than the model's vector ({embedding_size})")


def classifier_activation(info: ClassifierInfo, columns: int | None = None) -> Activation:
    """vLLM's choice (spec 4.2): problem_type, else the cross-encoder's activation_fn, else by label count.

    Token tasks count the output's columns (`columns`, after any `returned_token_ids` selection) instead of the
    configured label count (vLLM's `static_num_labels=False`)."""
    n = info.num_labels if columns is None else columns
    by_count: Activation = "sigmoid" if n < 2 else "softmax"
    if info.problem_type == "regression":
        return "identity"
    if info.problem_type == "multi_label_classification":
        return "sigmoid"
    if info.problem_type == "single_label_classification":
        return by_count
    if info.st_activation == "identity":
        return "identity"
    if info.st_activation is not None:
        return by_count
    return by_count


def max_tokens(opts: PlanOptions, model: ResolvedModel) -> int:
    k = opts.truncate_prompt_tokens
    if k is None or k == -1:
        return model.max_length
    if k < -1 or k == 0:
        raise UsageError(f"--truncate-prompt-tokens must be -1 or a positive number, got {k}")
    if k > model.max_length:
        raise UsageError(
            f"--truncate-prompt-tokens {k} is greater than the model maximum {model.max_length} "
            f"({model.max_length_source}); request a smaller truncation size"
        )
    return k


class ScorePlan(msgspec.Struct, frozen=True, kw_only=True):
    """How `score` and `rerank` compute one number per (query, document) pair."""

    model: ResolvedModel
    score_type: ScoreType
    score_type_source: str
    max_tokens: int
    """Pair (cross-encoder) or text (bi-encoder, late interaction) limit, special tokens included."""
    activation: Activation
    use_activation: bool
    logit_mean: float | None = None
    logit_sigma: float | None = None
    template: ScoreTemplate | None = None
    instruction: str = ""
    use_sep_token: bool = True
    maxsim_normalize: bool = False
    max_tokens_per_query: int = 0
    max_tokens_per_doc: int = 0
    on_too_long: OnTooLong = "truncate"
    """error: a pair (cross-encoder) or text (bi-encoder, late interaction) over the limit is a TOO_LONG error row."""
    embed: Plan | None = None
    """The embedding plan of a bi-encoder or late-interaction scorer (pooling, normalize, projector, prompt)."""

    def describe(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "score_type": self.score_type,
            "score_type_source": self.score_type_source,
            "max_tokens": self.max_tokens,
        }
        if self.on_too_long != "truncate":
            d["on_too_long"] = self.on_too_long
        if self.score_type == "cross-encoder":
            d |= {
                "activation": self.activation if self.use_activation else "none",
                "logit_mean": self.logit_mean,
                "logit_sigma": self.logit_sigma,
                "pair_encoding": "text pair" if self.use_sep_token else "concatenation",
                "template": None if self.template is None else msgspec.to_builtins(self.template),
                "instruction": self.instruction or None,
                "max_tokens_per_query": self.max_tokens_per_query,
                "max_tokens_per_doc": self.max_tokens_per_doc,
            }
        elif self.embed is not None:
            d["embedding"] = self.embed.describe()
            if self.score_type == "late-interaction":
                d["maxsim_normalize"] = self.maxsim_normalize
        return d


def _detect_score_type(model: ResolvedModel) -> ScoreType:
    if model.colbert is not None:
        return "late-interaction"
    if "classify" in model.supported_tasks and model.classifier is not None:
        return "cross-encoder"
    return "bi-encoder"


def build_score_plan(plan_options: PlanOptions, opts: ScoreOptions, model: ResolvedModel) -> ScorePlan:
    if plan_options.on_too_long == "chunk":
        raise UsageError(
            "chunked processing applies to embed and token-embed; a pair over the limit is truncated or, with "
            "--on-too-long error, an error row"
        )
    on_too_long: OnTooLong = plan_options.on_too_long or "truncate"
    if opts.score_type == "auto":
        score_type = _detect_score_type(model)
        source = f"detected from the model ({model.architecture})"
    else:
        score_type = opts.score_type
        source = "--score-type"
    for name, value in (
        ("max_tokens_per_query", opts.max_tokens_per_query),
        ("max_tokens_per_doc", opts.max_tokens_per_doc),
    ):
        if value < 0:
            raise UsageError(f"{name} must be a non-negative integer")
        if value >= model.max_length:
            raise UsageError(f"{name} ({value}) must be less than max_model_len ({model.max_length}).")
    if opts.maxsim_normalize and score_type != "late-interaction":
        raise UsageError(f"--maxsim-normalize applies to late-interaction scoring, not {score_type}")
    if score_type == "cross-encoder":
        info = model.classifier
        if info is None or "classify" not in model.supported_tasks:
            raise UsageError(
                f"--score-type cross-encoder needs a sequence-classification model; {model.name} "
                f"({model.architecture}) is not one",
                hint="use --score-type bi-encoder for an embedding model",
            )
        if model.is_reward:
            raise UsageError(
                f"{model.name} is a reward model, not a cross-encoder",
                hint="poolcli classify gives its sequence reward; token-classify its per-token rewards",
            )
        if info.num_labels != 1:
            raise UsageError(
                f"scoring needs a one-label classifier; {model.name} has {info.num_labels} labels",
                hint="use poolcli classify for a multi-label or multi-class model",
            )
        preset = preset_pooler(plan_options, "classify")
        upper = plan_options.pooler_flags.over(plan_options.pooler_config).over(preset)
        check_fields_for_task("classify", upper.to_dict(), source="pooler config")
        limit = max_tokens(plan_options, model)
        template = plan_options.preset.score if plan_options.preset is not None else None
        instruction = opts.instruction if opts.instruction is not None else (template.instruction if template else "")
        return ScorePlan(
            model=model,
            score_type=score_type,
            score_type_source=source,
            max_tokens=limit,
            activation=classifier_activation(info),
            use_activation=True if upper.use_activation is None else upper.use_activation,
            logit_mean=upper.logit_mean,
            logit_sigma=upper.logit_sigma,
            template=template,
            instruction=instruction,
            use_sep_token=info.use_sep_token and template is None,
            max_tokens_per_query=opts.max_tokens_per_query,
            max_tokens_per_doc=opts.max_tokens_per_doc,
            on_too_long=on_too_long,
        )
    if opts.max_tokens_per_query or opts.max_tokens_per_doc:
        raise UsageError("--max-tokens-per-query/--max-tokens-per-doc apply to cross-encoders only")
    # Late interaction scores the per-token vectors of the token_embed head; a bi-encoder the pooled embedding.
    needed: PoolingTask = "token_embed" if score_type == "late-interaction" else "embed"
    if needed not in model.supported_tasks:
        kind = "a ColBERT (token-embed) model" if model.colbert is not None else "a classifier"
        raise UsageError(
            f"--score-type {score_type} needs {'per-token vectors' if needed == 'token_embed' else 'an embedding'}; "
            f"{model.name} ({model.architecture}) is {kind}",
            hint="leave --score-type to auto",
        )
    upper = plan_options.pooler_flags.over(plan_options.pooler_config)
    check_fields_for_task(needed, upper.to_dict(), source="pooler config")
    embed = build_plan(plan_options, model, needed)
    if embed.chunk or embed.max_embed_len is not None:
        what = "chunked processing" if embed.chunk else "max_embed_len"
        raise UsageError(
            f"{what} (from the preset or pooler config) applies to embed and token-embed, not to scoring; a text "
            "over the limit is truncated or, with --on-too-long error, an error row",
            hint="drop the preset or pooler key for score and rerank",
        )
    if embed.params.dimensions is not None and score_type == "late-interaction":
        raise UsageError("--dimensions does not apply to late-interaction scoring")
    return ScorePlan(
        model=model,
        score_type=score_type,
        score_type_source=source,
        max_tokens=embed.max_tokens,
        activation="identity",
        use_activation=False,
        embed=embed,
        maxsim_normalize=opts.maxsim_normalize,
        on_too_long=on_too_long,
    )
