"""`poolcli rerank`: per query, its documents ranked by score."""

from __future__ import annotations

import typer

from poolcli.commands import _options as o


def rerank(
    input: str = typer.Argument(
        ...,
        help="Rows with 'query' and 'documents' (a list of strings or of {id, text}); or documents with --query; "
        "or a pairs file (query/document or text_1/text_2) with --group-by.",
        show_default=False,
    ),
    output: o.Output = None,
    errors: o.Errors = None,
    model: o.ModelOpt = None,
    query: o.QueryText = None,
    group_by: str | None = typer.Option(
        None, "--group-by", help="Pairs file: the column naming each row's query.", rich_help_panel="Scoring"
    ),
    top_n: int = typer.Option(
        0, "--top-n", help="Documents kept per query, best first (0 or -1: all).", rich_help_panel="Scoring"
    ),
    return_documents: bool = typer.Option(
        False, "--return-documents", help="Add each document's text to the output.", rich_help_panel="Scoring"
    ),
    score_type: o.ScoreTypeOption = "auto",
    use_activation: o.UseActivation = None,
    instruction: o.Instruction = None,
    max_tokens_per_query: o.MaxTokensPerQuery = 0,
    max_tokens_per_doc: o.MaxTokensPerDoc = 0,
    maxsim_normalize: o.MaxsimNormalize = False,
    config: o.ConfigPreset = None,
    pooler_config: o.PoolerConfigOpt = None,
    pooling_type: o.PoolingTypeOpt = None,
    prompt: o.Prompt = None,
    prompt_name: o.PromptName = None,
    truncate_prompt_tokens: o.TruncatePromptTokens = None,
    on_too_long: o.OnTooLongOpt = None,
    text_field: o.TextField = "text",
    id_field: o.IdField = None,
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
    """Rerank: every query's documents scored in one length-bucketed stream, then sorted by score (stable)."""
    from poolcli.commands._run import execute

    execute("rerank", locals())
