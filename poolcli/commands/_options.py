"""Option definitions shared by the subcommands (Typer `Annotated` aliases); what they mean is `poolcli.request`."""

from __future__ import annotations

from typing import Annotated

import typer

from poolcli.vocab import (
    POOLING_TYPES,
    Backend,
    ColbertRole,
    Convert,
    DriverKind,
    DType,
    OnTooLong,
    Quantize,
    ScoreTypeOpt,
    TruncationSide,
    VectorDType,
)

_MODEL = "Model"
_POOL = "Pooling"
_IO = "Input and output"
_RUN = "Run"

Output = Annotated[
    str | None,
    typer.Option(
        "--output",
        "-o",
        help="Output: a .parquet file, a directory (trailing '/') for part files, or '-' for JSONL "
        "on stdout. Default: <input stem>.<task>.parquet next to the input.",
        rich_help_panel=_IO,
    ),
]
Errors = Annotated[
    str | None,
    typer.Option(
        "--errors",
        help="Error-row file (JSONL: id, source, line/row, code, message). Default: beside the output, "
        "written only when a row fails.",
        rich_help_panel=_IO,
    ),
]
TextField = Annotated[str, typer.Option("--text-field", help="Column or key holding the text.", rich_help_panel=_IO)]
IdField = Annotated[
    str | None,
    typer.Option(
        "--id-field",
        help="Column or key holding the row id. Default: 'id' if present, else the row number.",
        rich_help_panel=_IO,
    ),
]
KeepColumns = Annotated[
    str | None,
    typer.Option("--keep-columns", help="Comma-separated input columns copied to the output.", rich_help_panel=_IO),
]
VectorDTypeOpt = Annotated[
    VectorDType,
    typer.Option(
        "--output-dtype",
        help="Element type of stored vectors, as Sentence-Transformers' quantize_embeddings: int8/uint8 bucket "
        "each dimension into 256 steps of its calibrated range (--calibration, default the input's first 1000 rows; "
        "ranges in the file metadata); binary/ubinary pack one bit per dimension (value > 0) 8 to a byte.",
        rich_help_panel=_IO,
    ),
]

ModelOpt = Annotated[
    str | None,
    typer.Option(
        "--model",
        "-m",
        help="Model directory or Hugging Face id in the local cache. Default: the bundled all-MiniLM-L6-v2.",
        rich_help_panel=_MODEL,
    ),
]
Device = Annotated[str, typer.Option("--device", help="auto, cpu, cuda or cuda:N.", rich_help_panel=_MODEL)]
DTypeOpt = Annotated[
    DType,
    typer.Option(
        "--dtype",
        help="Model compute dtype (auto: float32 on CPU, bfloat16 on GPUs that have it). Heads always run in float32.",
        rich_help_panel=_MODEL,
    ),
]
BackendOpt = Annotated[
    Backend,
    typer.Option(
        "--backend",
        help="What runs the model body: torch, openvino (CPU, compiled once and cached), or auto (openvino on CPU "
        "when installed and the architecture is one it converts, else torch).",
        rich_help_panel=_MODEL,
    ),
]
QuantizeOpt = Annotated[
    Quantize,
    typer.Option(
        "--quantize",
        help="int8: static int8 of the OpenVINO body, calibrated on the input's first 300 rows (or "
        "--calibration) and checked on the next 100 against float32 before anything is written.",
        rich_help_panel=_MODEL,
    ),
]
Calibration = Annotated[
    str | None,
    typer.Option(
        "--calibration",
        help="Rows that calibrate --quantize int8 and --output-dtype int8/uint8 (same format rules and --text-field "
        "as the input); for the output ranges, a file with the output's vector column (an earlier float32 run's "
        "output) gives them directly.",
        rich_help_panel=_MODEL,
    ),
]
MinCosine = Annotated[
    float,
    typer.Option(
        "--min-cosine",
        help="--quantize int8: stop if a held-out row's cosine to the float32 output is below this.",
        rich_help_panel=_MODEL,
    ),
]
HfOverrides = Annotated[
    str | None,
    typer.Option(
        "--hf-overrides",
        help="JSON object (or .json/.toml file) merged onto config.json, e.g. '{\"is_matryoshka\": true}'.",
        rich_help_panel=_MODEL,
    ),
]
ConvertOpt = Annotated[
    Convert,
    typer.Option("--convert", help="Adapt a generative model to a pooling task.", rich_help_panel=_MODEL),
]
TrustRemoteCode = Annotated[
    bool,
    typer.Option("--trust-remote-code", help="Allow model code from the model directory.", rich_help_panel=_MODEL),
]
MaxModelLen = Annotated[
    int | None,
    typer.Option(
        "--max-model-len",
        help="Model maximum in tokens when the model files give none (or a smaller cap).",
        rich_help_panel=_MODEL,
    ),
]
ConfigPreset = Annotated[
    str | None,
    typer.Option(
        "--config",
        help="Preset name from configs/ (e.g. e5, bge, qwen3-embedding) or a .toml file.",
        rich_help_panel=_POOL,
    ),
]
PoolerConfigOpt = Annotated[
    str | None,
    typer.Option(
        "--pooler-config", help="Pooler config as a JSON object or a .json/.toml file.", rich_help_panel=_POOL
    ),
]
PoolingTypeOpt = Annotated[
    str | None,
    typer.Option("--pooling-type", help=f"One of {', '.join(POOLING_TYPES)} (any case).", rich_help_panel=_POOL),
]
Prompt = Annotated[
    str | None,
    typer.Option("--prompt", help="Literal prefix added to every text, e.g. 'query: '.", rich_help_panel=_POOL),
]
PromptName = Annotated[
    str | None,
    typer.Option(
        "--prompt-name",
        help="A named prompt from the preset or the model's Sentence-Transformers config.",
        rich_help_panel=_POOL,
    ),
]
TruncatePromptTokens = Annotated[
    int | None,
    typer.Option(
        "--truncate-prompt-tokens",
        help="Keep at most K tokens, special tokens included (-1: the model maximum).",
        rich_help_panel=_POOL,
    ),
]
TruncationSideOpt = Annotated[
    TruncationSide,
    typer.Option(
        "--truncation-side",
        help="Which end of a too-long text is cut (the special tokens are kept either way).",
        rich_help_panel=_POOL,
    ),
]
OnTooLongOpt = Annotated[
    OnTooLong | None,
    typer.Option(
        "--on-too-long",
        help="Truncate too-long texts (flagged in the 'truncated' column), make them TOO_LONG error rows, or (embed, "
        "token-embed) embed them in chunks of the model maximum. Default: truncate, or chunk where a preset or "
        "pooler config enables chunked processing; an explicit value wins over both.",
        rich_help_panel=_POOL,
    ),
]
EnableChunkedProcessing = Annotated[
    bool | None,
    typer.Option(
        "--enable-chunked-processing/--no-chunked-processing",
        help="Embed texts longer than the model maximum in chunks (the same as --on-too-long chunk).",
        rich_help_panel=_POOL,
    ),
]
MaxEmbedLen = Annotated[
    int | None,
    typer.Option(
        "--max-embed-len",
        help="Texts longer than this many tokens are TOO_LONG error rows, chunked or not.",
        rich_help_panel=_POOL,
    ),
]

MaxBatchTokens = Annotated[
    str,
    typer.Option(
        "--max-batch-tokens",
        help="Padded-token budget per batch, or 'auto' (a per-device default).",
        rich_help_panel=_RUN,
    ),
]
MaxBatchSize = Annotated[
    int, typer.Option("--max-batch-size", min=1, help="Most rows in one batch.", rich_help_panel=_RUN)
]
WindowRows = Annotated[
    int,
    typer.Option(
        "--window-rows",
        min=1,
        help="Rows read and length-sorted together (bounds memory).",
        rich_help_panel=_RUN,
    ),
]
PartRows = Annotated[
    int,
    typer.Option(
        "--part-rows",
        min=1,
        help="Input rows per committed part (a multiple of --window-rows): the most work a crash can lose.",
        rich_help_panel=_RUN,
    ),
]
Overwrite = Annotated[
    bool,
    typer.Option(
        "--overwrite/--resume",
        help="Replace an output from a different command "
        "instead of refusing (exit 78). Default: resume a matching unfinished "
        "run; a finished one is a no-op.",
        rich_help_panel=_RUN,
    ),
]
MaxErrors = Annotated[
    int | None,
    typer.Option(
        "--max-errors",
        min=0,
        help="Stop with exit 65 (no _SUCCESS) once more error rows than this are committed.",
        rich_help_panel=_RUN,
    ),
]
MaxErrorRate = Annotated[
    float | None,
    typer.Option(
        "--max-error-rate",
        min=0.0,
        max=1.0,
        help="Stop with exit 65 once this share of rows are errors (from 1000 rows on).",
        rich_help_panel=_RUN,
    ),
]
Strict = Annotated[
    bool,
    typer.Option(
        "--strict", help="Any error row stops the run with exit 65 (same as --max-errors 0).", rich_help_panel=_RUN
    ),
]
Quiet = Annotated[
    bool,
    typer.Option("--quiet", "-q", help="No progress bar, warnings or summary line.", rich_help_panel=_RUN),
]
ProgressOpt = Annotated[
    bool | None,
    typer.Option(
        "--progress/--no-progress",
        help="Progress bar on stderr (default: when stderr is a terminal).",
        rich_help_panel=_RUN,
    ),
]
Verbose = Annotated[
    bool, typer.Option("--verbose", "-v", help="Also report batching statistics.", rich_help_panel=_RUN)
]
Seed = Annotated[
    int, typer.Option("--seed", help="Random seed (for models with stochastic layers).", rich_help_panel=_RUN)
]
Threads = Annotated[
    int | None,
    typer.Option(
        "--threads",
        min=1,
        help="CPU threads for the model. Default: every core this process may use (its CPU affinity).",
        rich_help_panel=_RUN,
    ),
]
DryRun = Annotated[
    bool,
    typer.Option(
        "--dry-run",
        help="Check everything a run checks (options, input, model files, tokenizer, output path) and print its plan "
        "as JSON on stdout: model, pooling plan, backend, input rows, output schema and paths, what a rerun would "
        "resume. Loads no weights, writes nothing; exits as the run would for the same mistakes.",
        rich_help_panel=_RUN,
    ),
]


_SCORE = "Scoring"
ColbertRoleOpt = Annotated[
    ColbertRole | None,
    typer.Option(
        "--colbert-role",
        help="ColBERT checkpoints: encode as queries or documents (markers, lengths, query expansion, document "
        "skiplist), as the checkpoint declares. Without it: plain per-token vectors, as vLLM gives them.",
        rich_help_panel="Tokens",
    ),
]
ScoreTypeOption = Annotated[
    ScoreTypeOpt,
    typer.Option(
        "--score-type",
        help="auto: a one-label classifier is a cross-encoder, an embedding model a bi-encoder (cosine); "
        "late-interaction scores token vectors by MaxSim.",
        rich_help_panel=_SCORE,
    ),
]
QueryText = Annotated[
    str | None,
    typer.Option("--query", help="Score this one query against every row of INPUT.", rich_help_panel=_SCORE),
]
UseActivation = Annotated[
    bool | None,
    typer.Option(
        "--use-activation/--no-activation",
        help="Apply the classifier's final activation (sigmoid/softmax); off gives the raw (calibrated) logits.",
        rich_help_panel=_SCORE,
    ),
]
MaxTokensPerQuery = Annotated[
    int,
    typer.Option("--max-tokens-per-query", help="Cut each query to N tokens first (0: off).", rich_help_panel=_SCORE),
]
MaxTokensPerDoc = Annotated[
    int,
    typer.Option("--max-tokens-per-doc", help="Cut each document to N tokens first (0: off).", rich_help_panel=_SCORE),
]
MaxsimNormalize = Annotated[
    bool,
    typer.Option(
        "--maxsim-normalize", help="Late interaction: divide MaxSim by the query's token count.", rich_help_panel=_SCORE
    ),
]
Instruction = Annotated[
    str | None,
    typer.Option(
        "--instruction",
        help="The {instruction} of a reranker prompt template (e.g. the qwen3-reranker preset).",
        rich_help_panel=_SCORE,
    ),
]

_RAY = "Distributed (Ray)"
EngineOpt = Annotated[
    DriverKind,
    typer.Option(
        "--engine",
        help="local: this process. ray: an actor pool on a Ray cluster (pip install 'poolcli\\[ray]'), each actor one "
        "engine; each input block is committed as one part, exactly once, and a rerun resumes.",
        rich_help_panel=_RAY,
    ),
]
RayAddress = Annotated[
    str | None,
    typer.Option(
        "--ray-address",
        help="The cluster to join (host:port or ray://host:port). Default: RAY_ADDRESS, else a local cluster.",
        rich_help_panel=_RAY,
        show_default=False,
    ),
]
NumWorkers = Annotated[
    int, typer.Option("--num-workers", help="Actors in the pool (one model copy each).", rich_help_panel=_RAY)
]
CpusPerWorker = Annotated[
    float,
    typer.Option("--cpus-per-worker", help="CPUs per actor, and its torch threads.", rich_help_panel=_RAY),
]
GpusPerWorker = Annotated[
    float,
    typer.Option("--gpus-per-worker", help="GPUs per actor (0.5: two actors share a GPU).", rich_help_panel=_RAY),
]
BatchRows = Annotated[
    int | None,
    typer.Option(
        "--batch-rows",
        help="Input rows per Ray task, each committed as one part (it replaces --part-rows). Score: pairs; "
        "rerank: pairs, whole queries. Default: 16384.",
        rich_help_panel=_RAY,
        show_default=False,
    ),
]
