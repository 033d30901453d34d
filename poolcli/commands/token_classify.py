"""`poolcli token-classify`: per-token class probabilities (NER), rewards and process-reward step scores."""

from __future__ import annotations

from typing import Annotated

import typer

from poolcli.commands import _options as o
from poolcli.vocab import TokenAggregation

_TOKENS = "Tokens"

Aggregate = Annotated[
    TokenAggregation,
    typer.Option(
        "--aggregate",
        help="simple: also write entity spans (entity, start, end, score, text), as the Hugging Face "
        "token-classification pipeline's simple aggregation.",
        rich_help_panel=_TOKENS,
    ),
]


def token_classify(
    input: str = typer.Argument(
        ...,
        help="JSONL(.gz/.zst), Parquet file/dir/glob, CSV, TSV, TXT, or '-' for JSONL on stdin.",
        show_default=False,
    ),
    output: o.Output = None,
    errors: o.Errors = None,
    model: o.ModelOpt = None,
    use_activation: o.UseActivation = None,
    pooling_type: o.PoolingTypeOpt = None,
    step_tag_id: int | None = typer.Option(
        None,
        "--step-tag-id",
        help="STEP pooling: keep the positions of this token id (process reward models; Qwen2-PRM: 151651).",
        rich_help_panel=_TOKENS,
    ),
    returned_token_ids: str | None = typer.Option(
        None,
        "--returned-token-ids",
        help="STEP pooling: keep these output columns (comma-separated; for a causal LM, vocabulary ids).",
        rich_help_panel=_TOKENS,
    ),
    offsets: bool = typer.Option(
        False, "--offsets", help="Also write each token's [start, end) characters in the text.", rich_help_panel=_TOKENS
    ),
    aggregate: Aggregate = "none",
    ignore_labels: str = typer.Option(
        "O",
        "--ignore-labels",
        help="Entity tags left out of --aggregate spans (comma-separated).",
        rich_help_panel=_TOKENS,
    ),
    config: o.ConfigPreset = None,
    pooler_config: o.PoolerConfigOpt = None,
    prompt: o.Prompt = None,
    prompt_name: o.PromptName = None,
    truncate_prompt_tokens: o.TruncatePromptTokens = None,
    truncation_side: o.TruncationSideOpt = "right",
    on_too_long: o.OnTooLongOpt = "truncate",
    text_field: o.TextField = "text",
    id_field: o.IdField = None,
    keep_columns: o.KeepColumns = None,
    device: o.Device = "auto",
    dtype: o.DTypeOpt = "auto",
    hf_overrides: o.HfOverrides = None,
    convert: o.ConvertOpt = "auto",
    trust_remote_code: o.TrustRemoteCode = False,
    max_model_len: o.MaxModelLen = None,
    max_batch_tokens: o.MaxBatchTokens = "auto",
    max_batch_size: o.MaxBatchSize = 512,
    window_rows: o.WindowRows = 4096,
    part_rows: o.PartRows = 65536,
    overwrite: o.Overwrite = False,
    max_errors: o.MaxErrors = None,
    max_error_rate: o.MaxErrorRate = None,
    strict: o.Strict = False,
    quiet: o.Quiet = False,
    progress: o.ProgressOpt = None,
    verbose: o.Verbose = False,
    seed: o.Seed = 0,
    threads: o.Threads = None,
) -> None:
    """Per-token outputs: token_ids and probs per token (NER, per-token rewards), or per step tag (STEP)."""
    from poolcli.commands._run import RunRequest, execute
    from poolcli.config import TokenClassifyOptions
    from poolcli.errors import UsageError

    returned: list[int] | None = None
    if returned_token_ids is not None:
        try:
            returned = [int(x) for x in returned_token_ids.split(",") if x.strip()]
        except ValueError:
            raise UsageError(
                f"--returned-token-ids takes comma-separated integers, got {returned_token_ids!r}"
            ) from None
    if aggregate != "none" and use_activation is False:
        raise UsageError("--aggregate needs probabilities; it cannot be combined with --no-activation")
    execute(
        RunRequest(
            task="token_classify",
            input=input,
            output=output,
            errors=errors,
            model=model,
            config=config,
            pooler_config=pooler_config,
            pooler_flags={
                "use_activation": use_activation,
                "pooling_type": pooling_type,
                "step_tag_id": step_tag_id,
                "returned_token_ids": returned,
            },
            prompt=prompt,
            prompt_name=prompt_name,
            truncate_prompt_tokens=truncate_prompt_tokens,
            truncation_side=truncation_side,
            on_too_long=on_too_long,
            text_field=text_field,
            id_field=id_field,
            keep_columns=keep_columns,
            output_dtype="float32",
            device=device,
            dtype=dtype,
            hf_overrides=hf_overrides,
            convert=convert,
            trust_remote_code=trust_remote_code,
            max_model_len=max_model_len,
            max_batch_tokens=max_batch_tokens,
            max_batch_size=max_batch_size,
            window_rows=window_rows,
            part_rows=part_rows,
            overwrite=overwrite,
            max_errors=0 if strict else max_errors,
            max_error_rate=max_error_rate,
            quiet=quiet,
            progress=progress,
            verbose=verbose,
            seed=seed,
            threads=threads,
            token_classify=TokenClassifyOptions(
                offsets=offsets,
                aggregate=aggregate,
                ignore_labels=tuple(x.strip() for x in ignore_labels.split(",") if x.strip()),
            ),
        )
    )
