"""Vectors read back from a file: an int8/uint8 run's calibration sample given as vectors (an earlier float32 run's
output, or any Parquet/JSONL file or Parquet directory with the output's vector column) rather than as texts."""

from __future__ import annotations

import glob
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import msgspec
import numpy as np

from poolcli.errors import DataError, UsageError
from poolcli.io.rows import numbered_lines, open_binary

if TYPE_CHECKING:
    from numpy.typing import NDArray

_PARQUET = (".parquet", ".pq")
_JSONL = (".jsonl", ".ndjson", ".jsonl.gz", ".jsonl.zst", ".ndjson.gz", ".ndjson.zst")


def _files(path: str) -> list[str]:
    """The files a --calibration path names: a file, a directory's Parquet files (hidden and `_` names left out, as
    readers of a dataset do), or a glob's matches, in order."""
    if os.path.isdir(path):
        names = sorted(n for n in os.listdir(path) if n.lower().endswith(_PARQUET) and not n.startswith((".", "_")))
        return [os.path.join(path, n) for n in names]
    if os.path.isfile(path):
        return [path]
    return sorted(glob.glob(path))


def _schema_names(path: str) -> list[str]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return list(pq.read_schema(path).names)
    except (OSError, pa.ArrowException) as exc:
        raise DataError(f"--calibration {path}: not a readable Parquet file ({exc})") from None


def has_column(path: str, column: str) -> bool:
    """Whether the first file of a --calibration path (its Parquet schema, or a JSONL file's first object) has
    `column` (a missing path is left to the text reader, which names it)."""
    files = _files(path)
    if not files:
        return False
    first = files[0]
    if first.lower().endswith(_PARQUET):
        return column in _schema_names(first)
    if not first.lower().endswith(_JSONL):
        return False
    with open_binary(first) as (stream, _):
        for _, raw in numbered_lines(stream, first):
            try:
                obj = msgspec.json.decode(raw)
            except msgspec.DecodeError:
                continue
            return isinstance(obj, dict) and column in obj
    return False


def read_vectors(path: str, column: str, dim: int, rows: int) -> tuple[NDArray[np.float32], int]:
    """The first `rows` rows' vectors of `column` as [n, dim] float32 (a per-token column's vectors all stacked),
    and the number of rows they came from. Finite float vectors only: quantized or broken ones calibrate nothing."""
    chunks: list[NDArray[np.float32]] = []
    taken = 0
    for where, value in _values(path, column):
        if taken == rows:
            break
        if value is None:
            continue
        bad = f"--calibration {where}: {column!r} is not a list of numbers"
        if isinstance(value, bool) or not isinstance(value, list):
            raise DataError(bad)
        try:
            arr = np.asarray(value, dtype=np.float32)
        except (TypeError, ValueError):
            raise DataError(bad) from None
        if arr.ndim == 0 or (arr.size and arr.shape[-1] != dim):
            width = arr.shape[-1] if arr.ndim else 0
            raise UsageError(
                f"--calibration {where}: {column!r} holds vectors of {width} dimensions; this run writes {dim} "
                "(same model, --dimensions and normalization needed)"
            )
        if not np.isfinite(arr).all():
            raise DataError(f"--calibration {where}: {column!r} holds a value that is not finite (NaN or Inf)")
        chunks.append(arr.reshape(-1, dim))
        taken += 1
    if not chunks:
        raise UsageError(f"--calibration {path}: no vectors in column {column!r}")
    return np.concatenate(chunks), taken


def _values(path: str, column: str) -> Iterator[tuple[str, Any]]:
    """(where, value) of each row of `column`: `where` names the file and row for messages."""
    for file in _files(path):
        if file.lower().endswith(_PARQUET):
            yield from _parquet_values(file, column)
        else:
            yield from _jsonl_values(file, column)


def _parquet_values(file: str, column: str) -> Iterator[tuple[str, Any]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(file)
        kind = parquet.schema_arrow.field(column).type
    except (OSError, KeyError, pa.ArrowException) as exc:
        raise DataError(f"--calibration {file}: cannot read column {column!r} ({exc})") from None
    inner = kind
    while pa.types.is_list(inner) or pa.types.is_fixed_size_list(inner) or pa.types.is_large_list(inner):
        inner = inner.value_type
    if not pa.types.is_floating(inner) or inner == kind:
        raise UsageError(
            f"--calibration {file}: column {column!r} is {kind}; calibration needs float vectors (a float32 run's)"
        )
    row = 0
    try:
        for batch in parquet.iter_batches(columns=[column], batch_size=256):
            for value in batch.column(0).to_pylist():
                row += 1
                yield f"{file} row {row}", value
    except (OSError, pa.ArrowException) as exc:
        raise DataError(f"--calibration {file}: cannot read past row {row} ({exc})") from None


def _jsonl_values(file: str, column: str) -> Iterator[tuple[str, Any]]:
    with open_binary(file) as (stream, _):
        for line_no, raw in numbered_lines(stream, file):
            if not raw.strip():
                continue
            try:
                obj = msgspec.json.decode(raw)
            except msgspec.DecodeError:
                raise DataError(f"--calibration {file}: line {line_no} is not JSON") from None
            yield f"{file} line {line_no}", obj.get(column) if isinstance(obj, dict) else None
