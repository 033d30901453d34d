"""The path every data subcommand shares: flags -> RunConfig -> model resolution -> plan -> engine."""

from __future__ import annotations

from typing import Any

import msgspec

from poolcli.commands import _options as o
from poolcli.config import PoolerConfig, RunConfig, parse_pooler_config
from poolcli.console import make_progress, print_summary
from poolcli.errors import ErrorBudgetExceeded, Interrupted, PoolcliError, UsageError
from poolcli.io.writers import default_output
from poolcli.vocab import Convert, DType, OnTooLong, OutputDType, PoolingTask, Task, TruncationSide


class RunRequest(msgspec.Struct, kw_only=True):
    """The raw flags of a data subcommand, before validation."""

    task: Task
    input: str
    output: str | None
    errors: str | None
    model: str | None
    config: str | None
    pooler_config: str | None
    pooler_flags: dict[str, Any]
    prompt: str | None
    prompt_name: str | None
    truncate_prompt_tokens: int | None
    truncation_side: TruncationSide
    on_too_long: OnTooLong
    text_field: str
    id_field: str | None
    keep_columns: str | None
    output_dtype: OutputDType
    device: str
    dtype: DType
    hf_overrides: str | None
    convert: Convert
    trust_remote_code: bool
    max_model_len: int | None
    max_batch_tokens: str
    max_batch_size: int
    window_rows: int
    part_rows: int
    overwrite: bool
    max_errors: int | None
    max_error_rate: float | None
    quiet: bool
    progress: bool | None
    verbose: bool
    seed: int


def build_run_config(req: RunRequest) -> RunConfig:
    from poolcli.engine.plan import check_fields_for_task

    pooling_task: PoolingTask = "embed" if req.task == "embed" else "classify"
    preset, preset_name = o.load_preset(req.config)
    pooler_data = o.parse_pooler_config_option(req.pooler_config)
    check_fields_for_task(pooling_task, pooler_data, source="--pooler-config")
    flags = {k: v for k, v in req.pooler_flags.items() if v is not None}
    try:
        flag_pooler = PoolerConfig(**flags).canonical()
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    return RunConfig(
        task=req.task,
        inputs=(req.input,),
        output=req.output or default_output(req.input, req.task),
        errors=req.errors,
        model=req.model,
        text_field=req.text_field,
        id_field=req.id_field,
        keep_columns=o.parse_keep_columns(req.keep_columns),
        device=req.device,
        dtype=req.dtype,
        output_dtype=req.output_dtype,
        max_batch_tokens=o.parse_batch_tokens(req.max_batch_tokens),
        max_batch_size=req.max_batch_size,
        window_rows=req.window_rows,
        part_rows=req.part_rows,
        overwrite=req.overwrite,
        max_errors=req.max_errors,
        max_error_rate=req.max_error_rate,
        on_too_long=req.on_too_long,
        truncate_prompt_tokens=req.truncate_prompt_tokens,
        truncation_side=req.truncation_side,
        max_model_len=req.max_model_len,
        prompt=req.prompt,
        prompt_name=req.prompt_name,
        pooler_flags=flag_pooler,
        pooler_config=parse_pooler_config(pooler_data, source="--pooler-config"),
        preset=preset,
        preset_name=preset_name,
        hf_overrides=o.parse_hf_overrides(req.hf_overrides, preset),
        convert=req.convert,
        trust_remote_code=req.trust_remote_code,
        quiet=req.quiet,
        progress=req.progress,
        verbose=req.verbose,
        seed=req.seed,
    )


def execute(req: RunRequest) -> None:
    from poolcli.engine.plan import build_plan
    from poolcli.engine.resolve import resolve_model
    from poolcli.io.readers import InputSpec, open_source

    run = build_run_config(req)
    source = open_source(InputSpec(run.inputs[0], run.text_field, run.id_field, run.keep_columns))
    model = resolve_model(
        run.model, hf_overrides=run.hf_overrides, convert=run.convert, max_model_len=run.max_model_len
    )
    plan = build_plan(run, model, "embed")

    import torch

    torch.manual_seed(run.seed)
    from poolcli.engine.pipeline import run_embed

    progress = make_progress(f"{run.task} {model.name}", quiet=run.quiet, progress=run.progress)
    try:
        summary = run_embed(run, plan, source, progress).as_dict()
    except PoolcliError as exc:
        # A stopped run still reports what it committed, before the error line.
        partial = getattr(exc, "summary", None)
        if partial is not None and isinstance(exc, Interrupted | ErrorBudgetExceeded):
            print_summary(_trim(partial, run.verbose), quiet=run.quiet)
        raise
    print_summary(_trim(summary, run.verbose), quiet=run.quiet)


def _trim(info: dict[str, Any], verbose: bool) -> dict[str, Any]:
    if not verbose:
        for key in ("padded_tokens", "batches", "padding_ratio", "oom_splits", "load_seconds"):
            info.pop(key, None)
    return info
