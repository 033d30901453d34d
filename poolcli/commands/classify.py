"""`poolcli classify`: class probabilities and a label per row."""

from __future__ import annotations

import typer

from poolcli.commands import _options as o


def classify(
    input: str = typer.Argument(
        ...,
        help="JSONL(.gz/.zst), Parquet file/dir/glob, CSV, TSV, TXT, or '-' for JSONL on stdin.",
        show_default=False,
    ),
    output: o.Output = None,
    errors: o.Errors = None,
    model: o.ModelOpt = None,
    use_activation: o.UseActivation = None,
    top_k: int = typer.Option(
        0,
        "--top-k",
        min=0,
        help="Also write the K best labels with their scores (top_k column).",
        rich_help_panel="Classes",
    ),
    threshold: float = typer.Option(
        0.5,
        "--threshold",
        help="Multi-label models: a class is in the row's `labels` when its probability is at least this.",
        rich_help_panel="Classes",
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
    """Classify every row: label (id2label), score (its probability) and probs (every class), as Parquet."""
    from poolcli.commands._run import execute

    execute("classify", locals())
