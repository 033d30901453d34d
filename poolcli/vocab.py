"""Closed vocabularies, defined once and used for CLI choices, validation and dispatch."""

from __future__ import annotations

from typing import Literal, get_args

Task = Literal["embed", "classify", "score", "rerank", "token_embed", "token_classify"]
TASKS: tuple[Task, ...] = get_args(Task)

# The pooling task a model instance serves (score/rerank run on top of embed or classify).
PoolingTask = Literal["embed", "classify", "token_embed", "token_classify"]
POOLING_TASKS: tuple[PoolingTask, ...] = get_args(PoolingTask)

SeqPoolingType = Literal["CLS", "LAST", "MEAN"]
TokPoolingType = Literal["ALL", "STEP"]
PoolingType = Literal["CLS", "LAST", "MEAN", "ALL", "STEP"]
POOLING_TYPES: tuple[PoolingType, ...] = get_args(PoolingType)
SEQ_POOLING_TYPES: tuple[SeqPoolingType, ...] = get_args(SeqPoolingType)
TOK_POOLING_TYPES: tuple[TokPoolingType, ...] = get_args(TokPoolingType)

# Sentence-Transformers pooling modes, computed exactly as ST computes them.
StPoolingMode = Literal["cls", "max", "mean", "mean_sqrt_len_tokens", "weightedmean", "lasttoken"]
ST_POOLING_MODES: tuple[StPoolingMode, ...] = get_args(StPoolingMode)

DType = Literal["auto", "float32", "bfloat16", "float16"]
DTYPES: tuple[DType, ...] = get_args(DType)

OutputDType = Literal["float32", "float16"]
OUTPUT_DTYPES: tuple[OutputDType, ...] = get_args(OutputDType)

TruncationSide = Literal["right", "left"]
TRUNCATION_SIDES: tuple[TruncationSide, ...] = get_args(TruncationSide)

OnTooLong = Literal["truncate", "error"]
ON_TOO_LONG: tuple[OnTooLong, ...] = get_args(OnTooLong)

Convert = Literal["auto", "embed", "classify"]
CONVERTS: tuple[Convert, ...] = get_args(Convert)

ErrorCode = Literal[
    "INVALID_JSON",
    "NOT_OBJECT",
    "INVALID_UTF8",
    "MISSING_FIELD",
    "WRONG_TYPE",
    "MALFORMED_ROW",
    "EMPTY_TEXT",
    "TOO_LONG",
    "NONFINITE_OUTPUT",
    "OOM_SINGLE_ROW",
]
ERROR_CODES: tuple[ErrorCode, ...] = get_args(ErrorCode)

# Which per-request parameters each pooling task accepts (DESIGN section 2).
VALID_PARAMETERS: dict[PoolingTask, tuple[str, ...]] = {
    "embed": ("dimensions", "normalize"),
    "token_embed": ("dimensions", "normalize"),
    "classify": ("use_activation",),
    "token_classify": ("use_activation",),
}
