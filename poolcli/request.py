"""A run as the user asks for it, by option name -> the validated, frozen configs the engine and drivers take.

The command line and the Python API both build a `Request` (the command line from its flags, the API from keyword
arguments with the same names) and turn it into configs here, so they accept the same options with the same checks
and the same error messages. Values may come as command-line strings ("a,b", '{"k": 1}', "auto") or as Python
values (lists, dicts, numbers).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import msgspec

from poolcli.config import (
    DEFAULT_PART_ROWS,
    ClassifyOptions,
    DriverConfig,
    EmbedOptions,
    EngineConfig,
    PlanOptions,
    PoolerConfig,
    Preset,
    RayConfig,
    ScoreOptions,
    TaskOptions,
    TokenClassifyOptions,
    TokenEmbedOptions,
    load_json_or_file,
    parse_pooler_config,
)
from poolcli.errors import ConfigError, UsageError
from poolcli.vocab import PoolingTask, Task

_T = TypeVar("_T")

POOLER_FLAGS = (
    "pooling_type",
    "normalize",
    "dimensions",
    "use_activation",
    "step_tag_id",
    "returned_token_ids",
    "enable_chunked_processing",
    "max_embed_len",
)
"""Pooler fields that are also flags (they win over --pooler-config and the preset)."""


class Request(msgspec.Struct, kw_only=True):
    """Every option of a run, by its command-line name with underscores; None (or the default) means not given."""

    task: Task
    input: str | None = None
    input2: str | None = None
    output: str | None = None
    errors: str | None = None
    model: str | None = None
    config: str | None = None
    pooler_config: str | Mapping[str, Any] | None = None
    pooling_type: str | None = None
    normalize: bool | None = None
    dimensions: int | None = None
    use_activation: bool | None = None
    step_tag_id: int | None = None
    returned_token_ids: str | Sequence[int] | None = None
    enable_chunked_processing: bool | None = None
    max_embed_len: int | None = None
    prompt: str | None = None
    prompt_name: str | None = None
    truncate_prompt_tokens: int | None = None
    truncation_side: str = "right"
    on_too_long: str | None = None
    """None: truncate, or chunk where a preset or pooler config enables chunked processing."""
    text_field: str = "text"
    id_field: str | None = None
    keep_columns: str | Sequence[str] | None = None
    output_dtype: str | None = None
    """None: the task's default (float32 for embed, float16 for token-embed's per-token vectors)."""
    device: str = "auto"
    dtype: str = "auto"
    backend: str = "auto"
    quantize: str = "none"
    min_cosine: float = 0.98
    calibration: str | None = None
    hf_overrides: str | Mapping[str, Any] | None = None
    convert: str = "auto"
    trust_remote_code: bool = False
    max_model_len: int | None = None
    max_batch_tokens: str | int | None = "auto"
    max_batch_size: int = 512
    window_rows: int = 4096
    part_rows: int = DEFAULT_PART_ROWS
    overwrite: bool = False
    max_errors: int | None = None
    max_error_rate: float | None = None
    strict: bool = False
    quiet: bool = False
    progress: bool | None = None
    verbose: bool = False
    seed: int = 0
    threads: int | None = None
    # distributed runs
    engine: str = "local"
    ray_address: str | None = None
    num_workers: int = 1
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    batch_rows: int | None = None
    # classify
    top_k: int = 0
    threshold: float = 0.5
    # token-classify
    offsets: bool = False
    aggregate: str = "none"
    ignore_labels: str | Sequence[str] = "O"
    outputs: str | Sequence[str] | None = None
    """embed on BGE-M3: dense, sparse, colbert (comma-separated or a list)."""
    # token-embed
    skip_special_tokens: bool = False
    colbert_role: str | None = None
    # score and rerank
    query: str | None = None
    cross: bool = False
    group_by: str | None = None
    top_n: int = 0
    return_documents: bool = False
    score_type: str = "auto"
    maxsim_normalize: bool = False
    max_tokens_per_query: int = 0
    max_tokens_per_doc: int = 0
    instruction: str | None = None

    @classmethod
    def from_flags(cls, task: Task, flags: Mapping[str, Any]) -> Request:
        """A command's flags (its parameters, e.g. its `locals()`) -> a request; names it does not know are left."""
        names = set(cls.__struct_fields__) - {"task"}
        return cls(task=task, **{k: v for k, v in flags.items() if k in names})


ENGINE_FIELDS = frozenset(
    {
        "device",
        "dtype",
        "backend",
        "threads",
        "max_batch_tokens",
        "max_batch_size",
        "window_rows",
        "trust_remote_code",
        "hf_overrides",
        "convert",
        "max_model_len",
    }
)
"""What loading a model and batching take (the Python API takes these once, at `poolcli.load`)."""
RUN_FIELDS = frozenset(
    {
        "input",
        "output",
        "errors",
        "text_field",
        "id_field",
        "keep_columns",
        "part_rows",
        "overwrite",
        "max_errors",
        "max_error_rate",
        "strict",
        "quiet",
        "progress",
        "verbose",
        "seed",
        "engine",
        "ray_address",
        "num_workers",
        "cpus_per_worker",
        "gpus_per_worker",
        "batch_rows",
    }
)
"""What a run over files takes (the command line and `run_file`)."""
_POOLING = frozenset({"config", "pooler_config", "prompt", "prompt_name", "truncate_prompt_tokens", "on_too_long"})
_COMMON = frozenset({"model"}) | ENGINE_FIELDS | RUN_FIELDS | _POOLING
_SCORING = frozenset(
    {
        "query",
        "pooling_type",
        "use_activation",
        "score_type",
        "maxsim_normalize",
        "max_tokens_per_query",
        "max_tokens_per_doc",
        "instruction",
    }
)
TASK_FIELDS: dict[Task, frozenset[str]] = {
    "embed": _COMMON
    | {
        "truncation_side",
        "pooling_type",
        "normalize",
        "dimensions",
        "enable_chunked_processing",
        "max_embed_len",
        "output_dtype",
        "quantize",
        "calibration",
        "min_cosine",
        "outputs",
    },
    "token_embed": _COMMON
    | {
        "truncation_side",
        "normalize",
        "dimensions",
        "enable_chunked_processing",
        "max_embed_len",
        "output_dtype",
        "calibration",
        "skip_special_tokens",
        "colbert_role",
    },
    "classify": _COMMON | {"truncation_side", "use_activation", "top_k", "threshold"},
    "token_classify": _COMMON
    | {
        "truncation_side",
        "pooling_type",
        "use_activation",
        "step_tag_id",
        "returned_token_ids",
        "offsets",
        "aggregate",
        "ignore_labels",
    },
    "score": _COMMON | _SCORING | {"input2", "cross"},
    "rerank": (_COMMON - {"keep_columns"}) | _SCORING | {"group_by", "top_n", "return_documents"},
}
"""The options each task takes: its command's flags, and what the Python API accepts for it (the same checks)."""


def check_fields(task: Task, names: Iterable[str], *, allowed: frozenset[str] | None = None, what: str) -> None:
    """Refuse options that are unknown or do not apply to `task`, as the command line does for its flags."""
    allowed = TASK_FIELDS[task] if allowed is None else allowed
    wrong = sorted(n for n in names if n not in allowed)
    if wrong:
        known = [n for n in wrong if n in Request.__struct_fields__]
        why = f" (not an option of {task.replace('_', '-')})" if known == wrong else ""
        raise UsageError(f"{what} takes no option {', '.join(wrong)}{why}")


class Configs(NamedTuple):
    engine: EngineConfig
    plan: PlanOptions
    options: TaskOptions
    driver: DriverConfig | None
    """None when the request has no input (the Python API's in-memory calls)."""


def pooling_task(task: Task) -> PoolingTask:
    if task in ("embed", "token_embed", "token_classify"):
        return task
    return "classify"


def build(req: Request) -> Configs:
    """Parse and check every option of `req`; raises `UsageError`/`ConfigError` with the command line's messages."""
    from poolcli.engine.plan import check_fields_for_task

    preset, preset_name = load_preset(req.config)
    pooler_data = parse_mapping(req.pooler_config, what="--pooler-config")
    if req.task not in ("score", "rerank"):  # their pooling task depends on the model: checked in the score plan
        check_fields_for_task(pooling_task(req.task), pooler_data, source="--pooler-config")
    flags: dict[str, Any] = {k: getattr(req, k) for k in POOLER_FLAGS}
    flags["returned_token_ids"] = _int_list(req.returned_token_ids, what="--returned-token-ids")
    flags = {k: v for k, v in flags.items() if v is not None}
    try:
        flag_pooler = PoolerConfig(**flags).canonical()
    except (ValueError, TypeError) as exc:
        raise UsageError(f"{_flags_named(str(exc), flags)}: {exc}") from None
    hf_overrides: dict[str, Any] = dict(preset.hf_overrides) if preset else {}
    hf_overrides.update(parse_mapping(req.hf_overrides, what="--hf-overrides"))
    engine = _convert(
        EngineConfig,
        model=req.model,
        hf_overrides=hf_overrides,
        convert=req.convert,
        max_model_len=req.max_model_len,
        trust_remote_code=req.trust_remote_code,
        device=req.device,
        dtype=req.dtype,
        backend=req.backend,
        quantize=req.quantize,
        min_cosine=req.min_cosine,
        threads=req.threads,
        max_batch_tokens=parse_batch_tokens(req.max_batch_tokens),
        max_batch_size=req.max_batch_size,
        window_rows=req.window_rows,
    )
    plan = _convert(
        PlanOptions,
        pooler_flags=flag_pooler,
        pooler_config=parse_pooler_config(pooler_data, source="--pooler-config"),
        preset=preset,
        preset_name=preset_name,
        prompt=req.prompt,
        prompt_name=req.prompt_name,
        truncate_prompt_tokens=req.truncate_prompt_tokens,
        truncation_side=req.truncation_side,
        on_too_long=req.on_too_long,
    )
    driver = None
    if req.input is not None:
        from poolcli.io.writers import default_output

        driver = _convert(
            DriverConfig,
            task=req.task,
            inputs=(req.input,) if req.input2 is None else (req.input, req.input2),
            output=req.output or default_output(req.input, req.task),
            errors=req.errors,
            text_field=req.text_field,
            calibration=req.calibration,
            id_field=req.id_field,
            keep_columns=parse_keep_columns(req.keep_columns),
            part_rows=req.part_rows,
            overwrite=req.overwrite,
            max_errors=0 if req.strict else req.max_errors,
            max_error_rate=req.max_error_rate,
            quiet=req.quiet,
            progress=req.progress,
            verbose=req.verbose,
            seed=req.seed,
            engine=req.engine,
            ray=_ray_config(req),
        )
    _check_quantize(req)
    return Configs(engine, plan, task_options(req), driver)


def _check_quantize(req: Request) -> None:
    """int8 is for embed's dense vectors on the local driver; its options mean nothing without it."""
    defaults = Request(task=req.task)
    if req.calibration == "-":
        # Standard input is the input's (or nobody's): rows read from it to calibrate would be lost to the run.
        raise UsageError("--calibration needs a file: standard input cannot be read for calibration")
    scalar = req.output_dtype in ("int8", "uint8")
    if scalar:
        _check_scalar_output(req)
    if req.quantize == "none":
        names = ("min_cosine",) if scalar else ("calibration", "min_cosine")
        given = [f"--{n.replace('_', '-')}" for n in names if getattr(req, n) != getattr(defaults, n)]
        if given:
            also = "" if given == ["--min-cosine"] else " and --output-dtype int8/uint8"
            raise UsageError(f"{', '.join(given)} {'applies' if len(given) == 1 else 'apply'} to --quantize int8{also}")
        return
    if req.task != "embed":
        raise UsageError(f"--quantize {req.quantize} applies to embed, not {req.task}")
    if req.backend == "torch":
        raise UsageError("--quantize int8 quantizes the OpenVINO body: use --backend openvino (or auto)")
    if req.engine == "ray":
        raise UsageError("--quantize int8 runs on the local engine only (each Ray actor would calibrate its own)")
    if req.dtype not in ("auto", "float32"):
        raise UsageError(
            "--quantize int8 starts from the float32 body (its fidelity is measured against it): drop --dtype"
        )
    if not 0.0 < req.min_cosine <= 1.0:
        raise UsageError(f"--min-cosine must be in (0, 1], got {req.min_cosine}")
    if req.input == "-" and req.calibration is None:
        raise UsageError("--quantize int8 on standard input needs --calibration FILE (stdin cannot be read twice)")


def _check_scalar_output(req: Request) -> None:
    """int8/uint8 vectors need ranges calibrated once per run on rows the driver can read before the run does."""
    dtype = req.output_dtype
    if req.input is None:
        raise UsageError(
            f"output_dtype={dtype!r} needs ranges calibrated on a sample of the job, which in-memory calls do not "
            "have: use run_file (or the command line), or embed float32 and quantize with Sentence-Transformers' "
            "quantize_embeddings(..., ranges=...)"
        )
    if req.engine == "ray":
        raise UsageError(
            f"--output-dtype {dtype} runs on the local engine (its ranges are calibrated once per run); with "
            "--engine ray write float32 or binary"
        )
    if req.input == "-" and req.calibration is None:
        raise UsageError(
            f"--output-dtype {dtype} calibrates its ranges on the input's first rows and standard input is read "
            "once: give --calibration FILE (texts, or an earlier float32 output's vectors)"
        )


def _ray_config(req: Request) -> RayConfig | None:
    """The cluster options, which only --engine ray takes."""
    defaults = Request(task=req.task)
    given = [
        f"--{name.replace('_', '-')}"
        for name in ("ray_address", "num_workers", "cpus_per_worker", "gpus_per_worker", "batch_rows")
        if getattr(req, name) != getattr(defaults, name)
    ]
    if req.engine != "ray":
        if given:
            raise UsageError(f"{', '.join(given)} {'applies' if len(given) == 1 else 'apply'} to --engine ray")
        return None
    if req.num_workers < 1:
        raise UsageError(f"--num-workers must be at least 1, got {req.num_workers}")
    if req.cpus_per_worker <= 0 or req.gpus_per_worker < 0:
        raise UsageError("--cpus-per-worker must be positive and --gpus-per-worker not negative")
    if req.batch_rows is not None and req.batch_rows < 1:
        raise UsageError(f"--batch-rows must be at least 1, got {req.batch_rows}")
    return _convert(
        RayConfig,
        address=req.ray_address,
        num_workers=req.num_workers,
        cpus_per_worker=req.cpus_per_worker,
        gpus_per_worker=req.gpus_per_worker,
        **({"batch_rows": req.batch_rows} if req.batch_rows is not None else {}),
    )


def task_options(req: Request) -> TaskOptions:
    if req.task == "embed":
        outputs = req.outputs.split(",") if isinstance(req.outputs, str) else (req.outputs or ["dense"])
        chosen = tuple(dict.fromkeys(o.strip() for o in outputs if o.strip()))
        if not chosen:
            raise UsageError("--outputs names none of dense, sparse, colbert")
        return _convert(EmbedOptions, output_dtype=req.output_dtype or "float32", outputs=chosen)
    if req.task == "classify":
        return _convert(ClassifyOptions, top_k=req.top_k, threshold=req.threshold)
    if req.task == "token_embed":
        return _convert(
            TokenEmbedOptions,
            output_dtype=req.output_dtype or "float16",
            skip_special_tokens=req.skip_special_tokens,
            colbert_role=req.colbert_role,
        )
    if req.task == "token_classify":
        if req.aggregate != "none" and req.use_activation is False:
            raise UsageError("--aggregate needs probabilities; it cannot be combined with --no-activation")
        labels = req.ignore_labels.split(",") if isinstance(req.ignore_labels, str) else req.ignore_labels
        return _convert(
            TokenClassifyOptions,
            offsets=req.offsets,
            aggregate=req.aggregate,
            ignore_labels=tuple(x.strip() for x in labels if x.strip()),
        )
    return _convert(
        ScoreOptions,
        score_type=req.score_type,
        query=req.query,
        cross=req.cross,
        group_by=req.group_by,
        top_n=0 if req.top_n == -1 else req.top_n,  # vLLM's "all"
        return_documents=req.return_documents,
        maxsim_normalize=req.maxsim_normalize,
        max_tokens_per_query=req.max_tokens_per_query,
        max_tokens_per_doc=req.max_tokens_per_doc,
        instruction=req.instruction,
    )


def _flags_named(message: str, flags: Mapping[str, Any]) -> str:
    """The pooler flags a `PoolerConfig` message is about, spelled as on the command line (its messages name
    fields: "Dimensions must be greater than 0"); every flag given when it names none."""
    text = message.lower().replace(" ", "_")
    named = [k for k in flags if k in text] or list(flags)
    return ", ".join("--" + k.replace("_", "-") for k in named)


_OPTION_OF_FIELD = {"address": "ray_address", "inputs": "input"}
"""Config fields whose option (the `Request` field, a flag without its dashes) has another name."""


def _convert(cls: type[_T], **fields: Any) -> _T:
    """A config from plain values; a value of the wrong kind (e.g. an unknown dtype) is a usage error."""
    try:
        return msgspec.convert(fields, cls)
    except msgspec.ValidationError as exc:
        raise UsageError(_invalid(str(exc), cls, fields)) from None


def _invalid(message: str, cls: type[Any], fields: Mapping[str, Any]) -> str:
    """msgspec's "Expected `int` >= 1 - at `$.window_rows`" as the option and the value the user passed:
    "window_rows=0: expected an int >= 1" ("dtype='f8': expected one of auto, bfloat16, ..." for a choice)."""
    found = re.fullmatch(r"(?s)(.*) - at `\$\.(\w+)[^`]*`", message)
    if found is None or found.group(2) not in fields:
        return message
    what, field = found.groups()
    choices = _choices(cls, field) if what.startswith("Invalid enum value") else None
    if choices:
        what = f"expected one of {', '.join(map(str, choices))}"
    what = re.sub(r"^Expected `(\w+)`", lambda m: f"expected {'an' if m[1][0] in 'aeiou' else 'a'} {m[1]}", what)
    what = what.replace("`", "")
    return f"{_OPTION_OF_FIELD.get(field, field)}={fields[field]!r}: {what[:1].lower()}{what[1:]}"


def _choices(cls: type[Any], field: str) -> tuple[Any, ...] | None:
    """The values a config field's Literal allows (also inside `X | None` and tuples of X), else None."""
    import msgspec.inspect as mi

    info = mi.type_info(cls)
    types = [f.type for f in getattr(info, "fields", ()) if f.name == field]
    while types:
        t = types.pop()
        if isinstance(t, mi.LiteralType):
            return t.values
        if isinstance(t, mi.UnionType):
            types.extend(t.types)
        elif isinstance(t, (mi.VarTupleType, mi.ListType)):
            types.append(t.item_type)
    return None


def parse_mapping(value: str | Mapping[str, Any] | None, *, what: str) -> dict[str, Any]:
    if value is None:
        return {}
    if isinstance(value, Mapping):
        return dict(value)
    return load_json_or_file(value, what=what)


def _int_list(value: str | Sequence[int] | None, *, what: str) -> list[int] | None:
    if value is None:
        return None
    if isinstance(value, str):
        try:
            return [int(x) for x in value.split(",") if x.strip()]
        except ValueError:
            raise UsageError(f"{what} takes comma-separated integers, got {value!r}") from None
    return [int(x) for x in value]


def parse_batch_tokens(value: str | int | None) -> int | None:
    if value is None or value == "auto":
        return None
    try:
        n = int(value)
    except ValueError:
        raise UsageError(f"--max-batch-tokens must be a number or 'auto', got {value!r}") from None
    if n < 1:
        raise UsageError("--max-batch-tokens must be at least 1")
    return n


def parse_keep_columns(value: str | Sequence[str] | None) -> tuple[str, ...]:
    if not value:
        return ()
    parts = value.split(",") if isinstance(value, str) else list(value)
    cols = tuple(c.strip() for c in parts if c.strip())
    # Every task writes `id`; the other names each task writes are checked against its table builder.
    if "id" in cols:
        raise UsageError("--keep-columns cannot include this command's output column names: id")
    return cols


def load_preset(value: str | None) -> tuple[Preset | None, str | None]:
    """A preset by name (configs/NAME.toml) or by path."""
    if value is None:
        return None, None
    path = Path(value)
    if path.suffix == ".toml" and path.is_file():
        text, name = path.read_text(encoding="utf-8"), str(path)
    else:
        res = resources.files("poolcli.configs").joinpath(f"{value}.toml")
        if not res.is_file():
            what = "no such file" if path.suffix == ".toml" else "no such preset"
            raise ConfigError(
                f"--config {value}: {what}", hint=f"known presets: {', '.join(preset_names())}, or a .toml file's path"
            )
        text, name = res.read_text(encoding="utf-8"), value
    try:
        return msgspec.toml.decode(text, type=Preset), name
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise ConfigError(f"--config {name}: {exc}") from None


def preset_names() -> list[str]:
    return sorted(
        p.name.removesuffix(".toml") for p in resources.files("poolcli.configs").iterdir() if p.name.endswith(".toml")
    )
