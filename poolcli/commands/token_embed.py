"""`poolcli token-embed`: one vector per token of every row (ColBERT and BGE-M3 multi-vector retrieval)."""

from __future__ import annotations

import typer

from poolcli.commands import _options as o


def token_embed(
    input: str = typer.Argument(
        ...,
        help="JSONL(.gz/.zst), Parquet file/dir/glob, CSV, TSV, TXT, or '-' for JSONL on stdin.",
        show_default=False,
    ),
    output: o.Output = None,
    errors: o.Errors = None,
    model: o.ModelOpt = None,
    config: o.ConfigPreset = None,
    pooler_config: o.PoolerConfigOpt = None,
    normalize: bool | None = typer.Option(
        None,
        "--normalize/--no-normalize",
        help="L2-normalise every token's vector (default: yes).",
        rich_help_panel="Pooling",
    ),
    dimensions: int | None = typer.Option(
        None,
        "--dimensions",
        help="Matryoshka output dimension (the model must be matryoshka).",
        rich_help_panel="Pooling",
    ),
    prompt: o.Prompt = None,
    prompt_name: o.PromptName = None,
    truncate_prompt_tokens: o.TruncatePromptTokens = None,
    truncation_side: o.TruncationSideOpt = "right",
    on_too_long: o.OnTooLongOpt = None,
    enable_chunked_processing: o.EnableChunkedProcessing = None,
    max_embed_len: o.MaxEmbedLen = None,
    text_field: o.TextField = "text",
    id_field: o.IdField = None,
    keep_columns: o.KeepColumns = None,
    output_dtype: o.VectorDTypeOpt = "float16",
    calibration: o.Calibration = None,
    skip_special_tokens: bool = typer.Option(
        False,
        "--skip-special-tokens",
        help="Leave out the vectors of special tokens ([CLS], [SEP], <s>, ...); by default every token is kept.",
        rich_help_panel="Tokens",
    ),
    colbert_role: o.ColbertRoleOpt = None,
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
    """One vector per token of every row: token_ids and embeddings (float16 by default), as Parquet."""
    from poolcli.commands._run import execute

    execute("token_embed", locals())
