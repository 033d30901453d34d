"""Closed vocabularies, defined once and used for CLI choices, validation and dispatch."""

from __future__ import annotations

from typing import Literal, get_args

Task = Literal["embed", "classify", "score", "rerank", "token_embed", "token_classify"]

# The pooling task a model instance serves (score/rerank run on top of embed or classify).
PoolingTask = Literal["embed", "classify", "token_embed", "token_classify"]

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

Backend = Literal["auto", "torch", "openvino"]
"""--backend: what runs the model body (token ids -> hidden states or logits); heads always run in torch."""
ResolvedBackend = Literal["torch", "openvino"]

Quantize = Literal["none", "int8"]
"""--quantize: int8 is static quantization of the compiled body, calibrated on the job's own rows."""

OutputDType = Literal["float32", "float16"]
"""Element type of stored float vectors (BGE-M3's outputs)."""

VectorDType = Literal["float32", "float16", "int8", "uint8", "binary", "ubinary"]
"""embed's and token-embed's vectors, with the conventions of Sentence-Transformers' `quantize_embeddings`: floats;
`int8`/`uint8`, one of 256 buckets per dimension between that dimension's calibrated min and max (int8 offset by
-128); or one bit per dimension (value > 0) packed 8 to a byte (`binary`: int8 offset by -128, `ubinary`: uint8)."""

ScalarDType = Literal["int8", "uint8"]
"""The vector dtypes that need calibrated per-dimension ranges."""

TruncationSide = Literal["right", "left"]

OnTooLong = Literal["truncate", "error", "chunk"]

Convert = Literal["auto", "embed", "classify"]

# How `score` and `rerank` turn a (query, document) pair into a number.
ScoreType = Literal["cross-encoder", "bi-encoder", "late-interaction"]
ScoreTypeOpt = Literal["auto", "cross-encoder", "bi-encoder", "late-interaction"]

# ColBERT: how a text is encoded (query markers and expansion, or document markers and skiplist).
ColbertRole = Literal["query", "document"]

# token-classify: how per-token NER predictions become entity spans (none: no `entities` column).
TokenAggregation = Literal["none", "simple"]

# The final activation of a classifier head (relu: BGE-M3's sparse head).
Activation = Literal["sigmoid", "softmax", "identity", "relu"]

# What `embed` writes for a BGE-M3 model: the dense vector, the sparse lexical weights, the colbert vectors.
EmbedOutput = Literal["dense", "sparse", "colbert"]
"""embed --outputs on BGE-M3."""

DriverKind = Literal["local", "ray"]
"""--engine: this process, or actors on a Ray cluster."""

# How a causal LM's token logits become classifier logits (vLLM's `method`).
FromTokenMethod = Literal["from_2_way_softmax", "no_post_processing"]

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
