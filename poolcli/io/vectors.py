"""Vectors read back from a file: an int8/uint8 run's calibration sample given as vectors (an earlier float32 run's
output, or any Parquet/JSONL file with the output's vector column) rather than as texts."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import msgspec
import numpy as np

from poolcli.errors import DataError, UsageError
from poolcli.io.rows import numbered_lines, open_binary

if TYPE_CHECKING:
    from numpy.typing import NDArray


def has_column(path: str, column: str) -> bool:
    """Whether a Parquet file's schema, or a JSONL file's first object, has `column` (a missing file is left to
    the text reader, which names it)."""
    if not os.path.isfile(path):
        return False
    if path.endswith((".parquet", ".pq")):
        import pyarrow.parquet as pq

        return column in pq.read_schema(path).names
    if not path.endswith((".jsonl", ".ndjson", ".jsonl.gz", ".jsonl.zst", ".ndjson.gz", ".ndjson.zst")):
        return False
    with open_binary(path) as (stream, _):
        for _, raw in numbered_lines(stream, path):
            try:
                obj = msgspec.json.decode(raw)
            except msgspec.DecodeError:
                continue
            return isinstance(obj, dict) and column in obj
    return False


def read_vectors(path: str, column: str, dim: int, rows: int) -> tuple[NDArray[np.float32], int]:
    """The first `rows` rows' vectors of `column` as [n, dim] float32 (a per-token column's vectors all stacked),
    and the number of rows they came from. Float vectors only: quantized ones cannot calibrate anything."""
    chunks: list[NDArray[np.float32]] = []
    taken = 0
    for value in _values(path, column):
        if taken == rows:
            break
        if value is None:
            continue
        try:
            arr = np.asarray(value, dtype=np.float32)
        except (TypeError, ValueError):
            raise DataError(f"--calibration {path}: {column!r} of row {taken + 1} is not a list of numbers") from None
        if arr.size and arr.shape[-1] != dim:
            raise UsageError(
                f"--calibration {path}: column {column!r} holds vectors of {arr.shape[-1]} dimensions; this run writes "
                f"{dim} (same model, --dimensions and normalization needed)"
            )
        chunks.append(arr.reshape(-1, dim))
        taken += 1
    if not chunks:
        raise UsageError(f"--calibration {path}: no vectors in column {column!r}")
    return np.concatenate(chunks), taken


def _values(path: str, column: str) -> Iterator[Any]:
    if path.endswith((".parquet", ".pq")):
        import pyarrow as pa
        import pyarrow.parquet as pq

        kind = pq.ParquetFile(path).schema_arrow.field(column).type
        inner = kind
        while pa.types.is_list(inner) or pa.types.is_fixed_size_list(inner) or pa.types.is_large_list(inner):
            inner = inner.value_type
        if not pa.types.is_floating(inner):
            raise UsageError(
                f"--calibration {path}: column {column!r} is {kind}; calibration needs float vectors (a float32 run)"
            )
        for batch in pq.ParquetFile(path).iter_batches(columns=[column], batch_size=256):
            yield from batch.column(0).to_pylist()
        return
    with open_binary(path) as (stream, _):
        for line_no, raw in numbered_lines(stream, path):
            if not raw.strip():
                continue
            try:
                obj = msgspec.json.decode(raw)
            except msgspec.DecodeError:
                raise DataError(f"--calibration {path}: line {line_no} is not JSON") from None
            yield obj.get(column) if isinstance(obj, dict) else None
