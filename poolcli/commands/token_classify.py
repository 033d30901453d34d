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
    on_too_long: o.OnTooLongOpt = None,
    text_field: o.TextField = "text",
    id_field: o.IdField = None,
    keep_columns: o.KeepColumns = None,
    device: o.Device = "auto",
    dtype: o.DTypeOpt = "auto",
    backend: o.BackendOpt = "auto",
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
    dry_run: o.DryRun = False,
    engine: o.EngineOpt = "local",
    ray_address: o.RayAddress = None,
    num_workers: o.NumWorkers = 1,
    cpus_per_worker: o.CpusPerWorker = 1.0,
    gpus_per_worker: o.GpusPerWorker = 0.0,
    batch_rows: o.BatchRows = None,
) -> None:
    """Per-token outputs: token_ids and probs per token (NER, per-token rewards), or per step tag (STEP)."""
    from poolcli.commands._run import execute

    execute("token_classify", locals())
