"""The path every data subcommand shares: flags -> RunConfig -> model resolution -> plan -> engine."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import msgspec

from poolcli.commands import _options as o
from poolcli.config import (
    ClassifyOptions,
    PoolerConfig,
    RunConfig,
    ScoreOptions,
    TokenClassifyOptions,
    parse_pooler_config,
)
from poolcli.console import make_progress, print_summary
from poolcli.errors import ErrorBudgetExceeded, Interrupted, PoolcliError, UsageError
from poolcli.io.writers import default_output
from poolcli.vocab import Convert, DType, OnTooLong, OutputDType, PoolingTask, Task, TruncationSide

if TYPE_CHECKING:
    from poolcli.console import Progress
    from poolcli.engine.pipeline import Summary
    from poolcli.engine.resolve import ResolvedModel
    from poolcli.io.readers import Source


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
    threads: int | None = None
    input2: str | None = None
    score: ScoreOptions | None = None
    classify: ClassifyOptions | None = None
    token_classify: TokenClassifyOptions | None = None


def build_run_config(req: RunRequest) -> RunConfig:
    from poolcli.engine.plan import check_fields_for_task

    pooling_task: PoolingTask = (
        "embed" if req.task == "embed" else "token_classify" if req.task == "token_classify" else "classify"
    )
    preset, preset_name = o.load_preset(req.config)
    pooler_data = o.parse_pooler_config_option(req.pooler_config)
    if req.task not in ("score", "rerank"):  # their pooling task depends on the model: checked in the score plan
        check_fields_for_task(pooling_task, pooler_data, source="--pooler-config")
    flags = {k: v for k, v in req.pooler_flags.items() if v is not None}
    try:
        flag_pooler = PoolerConfig(**flags).canonical()
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    return RunConfig(
        task=req.task,
        inputs=(req.input,) if req.input2 is None else (req.input, req.input2),
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
        threads=req.threads,
        score=req.score,
        classify=req.classify,
        token_classify=req.token_classify,
    )


def execute(req: RunRequest) -> None:
    from poolcli.engine.plan import build_plan
    from poolcli.engine.resolve import resolve_model
    from poolcli.io.readers import InputSpec, open_source

    run = build_run_config(req)
    if run.task in ("score", "rerank"):
        return _execute_score(run)
    source = open_source(InputSpec(run.inputs[0], run.text_field, run.id_field, run.keep_columns))
    model = resolve_model(
        run.model, hf_overrides=run.hf_overrides, convert=run.convert, max_model_len=run.max_model_len
    )
    check_output_paths(run, [source], model)
    if run.task == "classify":
        runner = _classify_runner(run, model, source)
    elif run.task == "token_classify":
        runner = _token_classify_runner(run, model, source)
    else:
        plan = build_plan(run, model, "embed")

        def runner(progress: Progress) -> Summary:
            from poolcli.engine.pipeline import run_embed

            return run_embed(run, plan, source, progress)

    _report(run, model.name, runner)


def check_output_paths(run: RunConfig, sources: list[Source], model: ResolvedModel) -> None:
    """Before anything is written: no output, state or error path of this run may be (or hold) an input; the
    model's files count as inputs too."""
    from pathlib import Path

    from poolcli.engine.pipeline import default_errors_path, output_kind
    from poolcli.io.safety import check_paths

    model_files = [str(p) for p in Path(model.root).rglob("*") if p.is_file()] if model.root else []
    check_paths(
        [f for s in sources for f in s.files] + model_files,
        [r for s in sources for r in s.roots],
        run.output,
        output_kind(run.output),
        default_errors_path(run),
        default_errors_path(msgspec.structs.replace(run, errors=None)),
    )


def _report(run: RunConfig, model_name: str, runner: Callable[[Progress], Summary]) -> None:
    """Seed, run with a progress display, and print the summary line (also for a stopped run)."""
    import torch

    torch.manual_seed(run.seed)
    progress = make_progress(f"{run.task} {model_name}", quiet=run.quiet, progress=run.progress)
    try:
        summary = runner(progress).as_dict()
    except PoolcliError as exc:
        # A stopped run still reports what it committed, before the error line.
        partial = getattr(exc, "summary", None)
        if partial is not None and isinstance(exc, Interrupted | ErrorBudgetExceeded):
            print_summary(_trim(partial, run.verbose), quiet=run.quiet)
        raise
    print_summary(_trim(summary, run.verbose), quiet=run.quiet)


def score_request(task: Task, flags: dict[str, Any], opts: ScoreOptions) -> None:
    """score and rerank: their flags (the command's locals) -> a RunRequest; pairing options ride in `opts`."""
    execute(
        RunRequest(
            task=task,
            input=flags["input"],
            input2=flags.get("input2"),
            output=flags["output"],
            errors=flags["errors"],
            model=flags["model"],
            config=flags["config"],
            pooler_config=flags["pooler_config"],
            pooler_flags={"pooling_type": flags["pooling_type"], "use_activation": flags["use_activation"]},
            prompt=flags["prompt"],
            prompt_name=flags["prompt_name"],
            truncate_prompt_tokens=flags["truncate_prompt_tokens"],
            truncation_side="right",
            on_too_long="truncate",
            text_field=flags["text_field"],
            id_field=flags["id_field"],
            keep_columns=flags.get("keep_columns"),
            output_dtype="float32",
            device=flags["device"],
            dtype=flags["dtype"],
            hf_overrides=flags["hf_overrides"],
            convert=flags["convert"],
            trust_remote_code=flags["trust_remote_code"],
            max_model_len=flags["max_model_len"],
            max_batch_tokens=flags["max_batch_tokens"],
            max_batch_size=flags["max_batch_size"],
            window_rows=flags["window_rows"],
            part_rows=flags["part_rows"],
            overwrite=flags["overwrite"],
            max_errors=0 if flags["strict"] else flags["max_errors"],
            max_error_rate=flags["max_error_rate"],
            quiet=flags["quiet"],
            progress=flags["progress"],
            verbose=flags["verbose"],
            seed=flags["seed"],
            threads=flags["threads"],
            score=opts,
        )
    )


def _classify_runner(run: RunConfig, model: ResolvedModel, source: Source) -> Callable[[Progress], Summary]:
    from poolcli.engine.plan import build_classify_plan

    cplan = build_classify_plan(run, model)
    opts = run.classify or ClassifyOptions()
    if not 0 <= opts.threshold <= 1:
        raise UsageError(f"--threshold must be between 0 and 1, got {opts.threshold}")

    def runner(progress: Progress) -> Summary:
        from poolcli.engine.classify import Classifier
        from poolcli.engine.pipeline import run_rows
        from poolcli.io.arrow import ClassifyTableBuilder

        return run_rows(
            run,
            cplan.text,
            source,
            progress,
            # The output options change the bytes written, so they are part of the run's identity.
            describe=cplan.describe() | {"top_k": opts.top_k, "threshold": opts.threshold},
            make_builder=lambda metadata: ClassifyTableBuilder(
                list(cplan.labels),
                multi_label=cplan.multi_label,
                threshold=opts.threshold,
                top_k=opts.top_k,
                keep_columns=run.keep_columns,
                metadata=metadata,
            ),
            make_worker=lambda faults: Classifier(run, cplan, faults, quiet=run.quiet),
        )

    return runner


def _token_classify_runner(run: RunConfig, model: ResolvedModel, source: Source) -> Callable[[Progress], Summary]:
    from poolcli.engine.plan import build_token_classify_plan

    tplan = build_token_classify_plan(run, model)
    opts = run.token_classify or TokenClassifyOptions()
    if opts.aggregate != "none" and not tplan.use_activation:
        raise UsageError("--aggregate needs probabilities; the activation is off for this model or run")
    if opts.aggregate != "none" and (
        tplan.activation != "softmax" or tplan.logit_mean is not None or tplan.logit_sigma is not None
    ):
        # The pipeline's spans come from a softmax of the raw logits; anything else would give other spans.
        raise UsageError("--aggregate needs a softmax over uncalibrated logits (a multi-class token classifier)")
    if opts.aggregate != "none" and tplan.pooling == "STEP":
        raise UsageError("--aggregate builds entity spans from every token; it does not apply to STEP pooling")

    def runner(progress: Progress) -> Summary:
        from poolcli.engine.pipeline import run_rows
        from poolcli.engine.token_classify import TokenClassifier
        from poolcli.io.arrow import TokenClassifyTableBuilder

        return run_rows(
            run,
            tplan.text,
            source,
            progress,
            describe=tplan.describe() | {"output_options": msgspec.to_builtins(opts)},
            make_builder=lambda metadata: TokenClassifyTableBuilder(
                list(tplan.labels),
                step=tplan.pooling == "STEP",
                step_tag_id=tplan.step_tag_id,
                offsets=opts.offsets,
                aggregate=opts.aggregate != "none",
                ignore_labels=frozenset(opts.ignore_labels),
                keep_columns=run.keep_columns,
                metadata=metadata,
            ),
            make_worker=lambda faults: TokenClassifier(
                run, tplan, faults, quiet=run.quiet, offsets=opts.offsets or opts.aggregate != "none"
            ),
        )

    return runner


def _execute_score(run: RunConfig) -> None:
    from poolcli.engine.plan import build_score_plan
    from poolcli.engine.resolve import resolve_model
    from poolcli.io.pairs import load_rerank_job, load_score_job

    opts = run.score or ScoreOptions()
    if run.task == "score":
        job = load_score_job(
            run.inputs,
            query=opts.query,
            cross=opts.cross,
            text_field=run.text_field,
            id_field=run.id_field,
            keep_columns=run.keep_columns,
        )
    else:
        if opts.top_n < 0:
            raise UsageError(f"--top-n must be 0 (all) or more, got {opts.top_n}")
        job = load_rerank_job(
            run.inputs, query=opts.query, group_by=opts.group_by, text_field=run.text_field, id_field=run.id_field
        )
    model = resolve_model(
        run.model, hf_overrides=run.hf_overrides, convert=run.convert, max_model_len=run.max_model_len
    )
    check_output_paths(run, job.sources, model)
    plan = build_score_plan(run, model)

    def runner(progress: Progress) -> Summary:
        from poolcli.engine.scoring import run_score

        return run_score(run, plan, job, progress)

    _report(run, model.name, runner)


def _trim(info: dict[str, Any], verbose: bool) -> dict[str, Any]:
    if not verbose:
        for key in ("padded_tokens", "batches", "padding_ratio", "oom_splits", "load_seconds", "threads"):
            info.pop(key, None)
    return info
