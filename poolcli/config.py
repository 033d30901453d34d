"""Configuration objects: built once at the command-line edge, validated, frozen, and passed explicitly.

`PoolerConfig` follows vLLM's field names (old spellings accepted as aliases); `PoolingParams` holds the per-run
parameters after defaults are merged. A run is three configs: `EngineConfig` (the model and how it runs),
`PlanOptions` plus one task's options (`EmbedOptions`, `ClassifyOptions`, `TokenClassifyOptions`, `ScoreOptions`:
what is computed), and `DriverConfig` (where rows come from and go, parts, error budget, what the user sees).
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

import msgspec

from poolcli.errors import PoolcliError, UsageError
from poolcli.vocab import (
    POOLING_TYPES,
    SEQ_POOLING_TYPES,
    TOK_POOLING_TYPES,
    Backend,
    ColbertRole,
    Convert,
    DriverKind,
    DType,
    EmbedOutput,
    OnTooLong,
    PoolingTask,
    Quantize,
    ScoreTypeOpt,
    Task,
    TokenAggregation,
    TruncationSide,
    VectorDType,
)


class PoolerConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, omit_defaults=True):
    """How the model's hidden states become outputs. Every field None means "not set here"."""

    task: PoolingTask | None = None
    """The single pooling task this run serves; None picks the model's first supported task."""
    pooling_type: str | None = None
    """Convenience alias: CLS/LAST/MEAN set `seq_pooling_type`, ALL/STEP set `tok_pooling_type`."""
    seq_pooling_type: str | None = None
    """Sequence pooling for embed/classify: CLS, LAST or MEAN."""
    tok_pooling_type: str | None = None
    """Token pooling for token tasks: ALL or STEP."""
    use_activation: bool | None = None
    """Final activation: L2 normalisation for embed tasks, the classifier activation for classify tasks."""
    normalize: bool | None = None
    """Old spelling of `use_activation` for embed tasks."""
    softmax: bool | None = None
    """Old spelling of `use_activation` for classify tasks."""
    activation: bool | None = None
    """Old spelling of `use_activation` for classify tasks."""
    dimensions: int | None = None
    """Matryoshka output dimension (embed tasks only)."""
    enable_chunked_processing: bool | None = None
    """Embed texts longer than the model maximum in chunks (same as `--on-too-long chunk`)."""
    max_embed_len: int | None = None
    """Longest input accepted for chunked embedding, in tokens."""
    logit_mean: float | None = None
    """Calibration: activation((logit - logit_mean) / logit_sigma)."""
    logit_sigma: float | None = None
    """Calibration divisor; must not be 0."""
    logit_bias: float | None = None
    """Deprecated alias of `logit_mean`."""
    logit_scale: float | None = None
    """Deprecated: `logit_sigma = 1 / logit_scale`."""
    step_tag_id: int | None = None
    """STEP pooling: keep only positions whose token id is this one."""
    returned_token_ids: list[int] | None = None
    """STEP pooling: keep only these output columns."""

    def canonical(self) -> PoolerConfig:
        """Fold aliases into the canonical fields and check the combination; raises ValueError."""
        seq, tok = self.seq_pooling_type, self.tok_pooling_type
        if self.pooling_type is not None:
            kind = self.pooling_type.upper()
            if kind in SEQ_POOLING_TYPES:
                if seq is not None:
                    raise ValueError("Cannot set both `pooling_type` and `seq_pooling_type`")
                seq = kind
            elif kind in TOK_POOLING_TYPES:
                if tok is not None:
                    raise ValueError("Cannot set both `pooling_type` and `tok_pooling_type`")
                tok = kind
            else:
                raise ValueError(f"unknown pooling type {self.pooling_type!r}; valid types: {', '.join(POOLING_TYPES)}")
        if seq is not None:
            seq = seq.upper()
            if seq not in SEQ_POOLING_TYPES:
                raise ValueError(f"Unknown sequence pooling type: {seq!r}; valid: {', '.join(SEQ_POOLING_TYPES)}")
        if tok is not None:
            tok = tok.upper()
            if tok not in TOK_POOLING_TYPES:
                raise ValueError(f"Unknown tokenwise pooling type: {tok!r}; valid: {', '.join(TOK_POOLING_TYPES)}")

        activation = self.use_activation
        for alias in ("normalize", "softmax", "activation"):
            value = getattr(self, alias)
            if value is not None:
                if activation is not None and activation != value:
                    raise ValueError(f"`{alias}` and `use_activation` disagree; set only `use_activation`")
                activation = value

        mean, sigma = self.logit_mean, self.logit_sigma
        if self.logit_bias is not None:
            if mean is not None:
                raise ValueError(
                    "Cannot set both `logit_bias` and `logit_mean`. `logit_bias` is deprecated, "
                    "use `logit_mean` instead."
                )
            mean = self.logit_bias
        if self.logit_scale is not None:
            if sigma is not None:
                raise ValueError(
                    "Cannot set both `logit_scale` and `logit_sigma`. `logit_scale` is deprecated, "
                    "use `logit_sigma` instead."
                )
            if self.logit_scale == 0:
                raise ValueError("logit_scale cannot be 0 (division by zero)")
            sigma = 1.0 / self.logit_scale
        if sigma == 0:
            raise ValueError("logit_sigma cannot be 0 (division by zero)")
        if self.dimensions is not None and self.dimensions < 1:
            raise ValueError("Dimensions must be greater than 0")
        if self.max_embed_len is not None and self.max_embed_len < 1:
            raise ValueError("max_embed_len must be greater than 0")
        # With no pooling type here, the model's default decides (STEP for process reward models): checked in the
        # token-classify plan.
        if tok is not None and tok != "STEP" and (self.step_tag_id is not None or self.returned_token_ids is not None):
            raise ValueError("`step_tag_id` and `returned_token_ids` need STEP pooling")
        return PoolerConfig(
            task=self.task,
            seq_pooling_type=seq,
            tok_pooling_type=tok,
            use_activation=activation,
            dimensions=self.dimensions,
            enable_chunked_processing=self.enable_chunked_processing,
            max_embed_len=self.max_embed_len,
            logit_mean=mean,
            logit_sigma=sigma,
            step_tag_id=self.step_tag_id,
            returned_token_ids=self.returned_token_ids,
        )

    def over(self, lower: PoolerConfig) -> PoolerConfig:
        """This config's set fields win; unset ones come from `lower` (both must be canonical)."""
        fields = {f: getattr(self, f) for f in self.__struct_fields__}
        for name, value in fields.items():
            if value is None:
                fields[name] = getattr(lower, name)
        return PoolerConfig(**fields)

    def to_dict(self) -> dict[str, Any]:
        return msgspec.to_builtins(self)  # type: ignore[no-any-return]


def parse_pooler_config(
    data: Mapping[str, Any], *, source: str, error: type[PoolcliError] = UsageError
) -> PoolerConfig:
    """Decode and canonicalise a pooler config; any problem is a one-line `error` naming `source`."""
    try:
        raw = msgspec.convert(dict(data), PoolerConfig)
        return raw.canonical()
    except msgspec.ValidationError as exc:
        valid = ", ".join(PoolerConfig.__struct_fields__)
        raise error(f"{source}: {exc}", hint=f"valid fields: {valid}") from None
    except ValueError as exc:
        raise error(f"{source}: {exc}") from None


def load_json_or_file(value: str, *, what: str) -> dict[str, Any]:
    """`value` is inline JSON, or the path of a .json/.toml file holding one object."""
    text = value.strip()
    if text.startswith("{"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise UsageError(f"{what}: invalid JSON ({exc.msg} at column {exc.colno})") from None
    else:
        path = Path(value)
        if not path.is_file():
            raise UsageError(f"{what}: {value!r} is neither a JSON object nor an existing .json/.toml file")
        try:
            if path.suffix == ".toml":
                data = tomllib.loads(path.read_text(encoding="utf-8"))
            else:
                data = json.loads(path.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise UsageError(f"{what}: cannot parse {path}: {exc}") from None
    if not isinstance(data, dict):
        raise UsageError(f"{what}: expected a JSON object, got {type(data).__name__}")
    return data


class PoolingParams(msgspec.Struct, frozen=True, kw_only=True):
    """Per-run parameters after every default was merged; valid for `task` by construction."""

    task: PoolingTask
    dimensions: int | None = None
    """Matryoshka slice length (embed tasks)."""
    normalize: bool = True
    """L2-normalise the output vector (embed tasks)."""
    use_activation: bool = True
    """Apply the classifier activation (classify tasks)."""


class Preset(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A model-family preset from `configs/`: pooler config, hf_overrides and prompts."""

    description: str = ""
    pooler: dict[str, Any] = msgspec.field(default_factory=dict)
    hf_overrides: dict[str, Any] = msgspec.field(default_factory=dict)
    prompts: dict[str, str] = msgspec.field(default_factory=dict)
    default_prompt_name: str | None = None
    score: ScoreTemplate | None = None


class ScoreTemplate(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """How a cross-encoder or LLM reranker sees a pair: `query` + `document` rendered and concatenated.

    `{query}`, `{document}` and `{instruction}` are replaced literally (other braces are text).
    """

    query: str = "{query}"
    document: str = "{document}"
    instruction: str = ""
    """The default for `{instruction}`; --instruction replaces it."""


class ScoreOptions(msgspec.Struct, frozen=True, kw_only=True):
    """What `score` and `rerank` add to a run: pairing, score type, and ranking."""

    score_type: ScoreTypeOpt = "auto"
    query: str | None = None
    """--query TEXT: one query against every row of the input."""
    cross: bool = False
    """Two inputs: every pair of the N x M matrix instead of the 1:1/1:N/N:N rules."""
    group_by: str | None = None
    """rerank over a pairs file: the column that names each row's query."""
    top_n: int = 0
    """rerank: documents kept per query (0 = all)."""
    return_documents: bool = False
    maxsim_normalize: bool = False
    max_tokens_per_query: int = 0
    max_tokens_per_doc: int = 0
    instruction: str | None = None
    """Replaces the template's default instruction."""


class ClassifyOptions(msgspec.Struct, frozen=True, kw_only=True):
    """What `classify` adds to a run."""

    top_k: int = 0
    """Also write the K best labels and scores (0: no top_k column)."""
    threshold: float = 0.5
    """Multi-label models: the probability at which a class joins the row's `labels`."""


class TokenClassifyOptions(msgspec.Struct, frozen=True, kw_only=True):
    """What `token-classify` adds to a run."""

    offsets: bool = False
    """Write each token's [start, end) characters in the row's text."""
    aggregate: TokenAggregation = "none"
    """simple: also write entity spans (the Hugging Face pipeline's simple aggregation)."""
    ignore_labels: tuple[str, ...] = ("O",)
    """Entity tags left out of the aggregated spans."""


class TokenEmbedOptions(msgspec.Struct, frozen=True, kw_only=True):
    """What `token-embed` adds to a run."""

    output_dtype: VectorDType = "float16"
    """Element type of stored per-token vectors (int8/uint8: calibrated ranges; binary/ubinary: packed bits)."""
    skip_special_tokens: bool = False
    """Leave out the vectors of the tokenizer's special tokens ([CLS], [SEP], <s>, </s>, ...)."""
    colbert_role: ColbertRole | None = None
    """ColBERT checkpoints: encode as queries or documents (markers, lengths, expansion, skiplist)."""


Positive = Annotated[int, msgspec.Meta(ge=1)]
NonNegative = Annotated[int, msgspec.Meta(ge=0)]
Share = Annotated[float, msgspec.Meta(ge=0.0, le=1.0)]
"""The bounds the command line's flags have (Click's min/max), checked again for the Python API's values."""

DEFAULT_PART_ROWS = 65536
"""Input rows per committed part unless --part-rows says otherwise (also the Python API's unit of work)."""


class EngineConfig(msgspec.Struct, frozen=True, kw_only=True):
    """Which model runs, where, in what precision, and in batches of what size (the engine's own settings)."""

    model: str | None = None
    """Model directory or Hugging Face id; None means the bundled all-MiniLM-L6-v2."""
    hf_overrides: dict[str, Any] = msgspec.field(default_factory=dict)
    """Merged onto config.json (flags win over the preset)."""
    convert: Convert = "auto"
    max_model_len: int | None = None
    """Model maximum when the model files do not give one."""
    trust_remote_code: bool = False
    device: str = "auto"
    """auto, cpu, cuda or cuda:N."""
    dtype: DType = "auto"
    """Compute dtype of the model body; heads always run in float32."""
    backend: Backend = "auto"
    """What runs the model body: torch, OpenVINO, or auto (poolcli.model.backend decides)."""
    quantize: Quantize = "none"
    """int8: the compiled body quantized with calibration rows the driver hands the engine."""
    min_cosine: float = 0.98
    """The int8 gate: the lowest cosine a held-out row may have against the float32 model."""
    threads: Positive | None = None
    """Threads for the model on CPU; None uses every core this process may run on."""
    max_batch_tokens: int | None = None
    """Padded-token budget per batch; None picks a per-device default."""
    max_batch_size: Positive = 512
    """Most rows in one batch."""
    window_rows: Positive = 4096
    """Rows (or pairs) tokenized and length-sorted together; bounds memory."""


class PlanOptions(msgspec.Struct, frozen=True, kw_only=True):
    """What the user asked of pooling and tokenization; merged with the model's own files into a plan."""

    pooler_flags: PoolerConfig = PoolerConfig()
    """Pooler fields set by explicit flags (highest precedence)."""
    pooler_config: PoolerConfig = PoolerConfig()
    """Fields from --pooler-config."""
    preset: Preset | None = None
    """The --config preset, if any."""
    preset_name: str | None = None
    prompt: str | None = None
    """Literal prefix added to every text."""
    prompt_name: str | None = None
    """Name of a prompt from the preset or the model's Sentence-Transformers config."""
    truncate_prompt_tokens: int | None = None
    """Token limit (-1 = model maximum); None also means the model maximum."""
    truncation_side: TruncationSide = "right"
    """Which end of a too-long input is cut."""
    on_too_long: OnTooLong | None = None
    """What to do with inputs longer than the limit; None (not given): truncate, or chunk where the preset or
    pooler config enables chunked processing. An explicit value wins over both."""


class EmbedOptions(msgspec.Struct, frozen=True, kw_only=True):
    """What `embed` adds to a run."""

    output_dtype: VectorDType = "float32"
    """Element type of stored vectors (int8/uint8: calibrated ranges; binary/ubinary: packed bits)."""
    outputs: tuple[EmbedOutput, ...] = ("dense",)
    """BGE-M3: any of dense (`embedding`), sparse (`lexical_weights`), colbert (`colbert_embeddings`), all from
    one forward pass."""


TaskOptions = EmbedOptions | ClassifyOptions | TokenClassifyOptions | TokenEmbedOptions | ScoreOptions


class DriverConfig(msgspec.Struct, frozen=True, kw_only=True):
    """Where rows come from and where results go, how they are committed, and what the user sees."""

    task: Task
    """The subcommand."""
    inputs: tuple[str, ...]
    """Input paths (or '-' for stdin)."""
    output: str
    """Output path: a .parquet file, a directory (trailing slash or existing), or '-' for JSONL on stdout."""
    errors: str | None = None
    """Error-row file (JSONL); None puts it beside the output."""
    text_field: str = "text"
    """Column or key holding the text."""
    calibration: str | None = None
    """--quantize int8 and --output-dtype int8/uint8: a file whose rows (texts, or for the output ranges vectors)
    calibrate them (default: the input's first rows)."""
    id_field: str | None = None
    """Column or key holding the row id; None uses `id` when present, else the row number."""
    keep_columns: tuple[str, ...] = ()
    """Input columns copied to the output."""
    part_rows: Positive = DEFAULT_PART_ROWS
    """Input rows per committed part (a multiple of the window): the most work a crash can lose."""
    overwrite: bool = False
    """Replace an output written with a different fingerprint (or not by poolcli) instead of refusing."""
    max_errors: NonNegative | None = None
    """Stop with exit 65 once more error rows than this were committed (0 with --strict)."""
    max_error_rate: Share | None = None
    """Stop with exit 65 once the share of error rows exceeds this (checked from 1000 rows on)."""
    quiet: bool = False
    progress: bool | None = None
    """None: show progress when stderr is a terminal."""
    verbose: bool = False
    seed: int = 0
    engine: DriverKind = "local"
    """Who computes the parts: this process, or an actor pool on a Ray cluster (`ray`)."""
    ray: RayConfig | None = None
    """The cluster and its actors, with engine "ray"."""


class RayConfig(msgspec.Struct, frozen=True, kw_only=True):
    """--engine ray: where the cluster is and how the work is spread over it."""

    address: str | None = None
    """A cluster to join (`ray://...` or `host:port`); None: RAY_ADDRESS, else a local cluster started for the run."""
    num_workers: int = 1
    """Actors in the pool, each holding one engine (one model copy)."""
    cpus_per_worker: float = 1.0
    """CPUs reserved per actor; its torch threads (unless --threads says otherwise)."""
    gpus_per_worker: float = 0.0
    """GPUs per actor (a fraction shares a GPU between actors)."""
    batch_rows: int = 16384
    """Input rows per Ray task, each committed as one part (score: pairs; rerank: pairs, whole queries). Smaller than
    the local driver's parts so that a modest input still spreads over the pool and a lost worker costs little."""
