"""Calibrated int8/uint8 outputs: the per-dimension ranges every vector of a run is bucketed in.

The driver hands the engine a `RangeSample`: texts (by default the input's first `RANGE_ROWS` rows, or a
--calibration file's) that the loaded model embeds in float32, or vectors read from a file. Their per-dimension
min and max are the ranges, as Sentence-Transformers' `quantize_embeddings(..., calibration_embeddings=...)` takes
them; the driver records them in the output's metadata, and a resumed run takes them from there."""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import pyarrow as pa

from poolcli.errors import ConfigError
from poolcli.io.records import Block

if TYPE_CHECKING:
    from numpy.typing import NDArray

    from poolcli.engine.base import RowEngine
    from poolcli.io.tables import OutputRanges
    from poolcli.vocab import ScalarDType

RANGE_ROWS = 1000
"""Rows whose vectors calibrate the ranges by default (Sentence-Transformers warns under 100)."""
FEW_ROWS = 100


class RangeSample(NamedTuple):
    texts: list[str]
    """Texts the run embeds to calibrate (empty when `vectors` are given)."""
    vectors: NDArray[np.float32] | None
    """Vectors read from a file ([n, d]; a per-token column's vectors stacked)."""
    rows: int
    source: str
    """"input" or the --calibration file."""

    def digest(self) -> str:
        if self.vectors is not None:
            return hashlib.sha256(np.ascontiguousarray(self.vectors, dtype=np.float32).tobytes()).hexdigest()
        return hashlib.sha256(json.dumps(self.texts).encode()).hexdigest()

    def describe(self) -> dict[str, object]:
        """The run identity's part: what decides the ranges (the ranges themselves are measured after it is fixed)."""
        return {"rows": self.rows, "kind": "texts" if self.vectors is None else "vectors", "sha256": self.digest()}


def float_values(engine: RowEngine, texts: list[str]) -> pa.Table | None:
    """The task's output table for `texts` with float32 vectors (row ids 0..n-1), outside the run's counts and
    schema: what the calibrations compare and measure."""
    n = len(texts)
    block = Block(
        first_row=0,
        n_rows=n,
        rows=list(range(n)),
        ids=list(range(n)),
        texts=texts,
        sources=["calibration"] * n,
        lines=[None] * n,
        keep={c: [None] * n for c in engine.keep_columns},  # the output's kept columns, empty for these rows
    )
    template = engine.template
    counted = template.stats
    template.stats = type(counted)()  # calibration batches are not the run's batches
    try:
        with engine.builder.unquantized():
            return engine.run(block, engine.prepare(texts)).table
    finally:
        template.stats = counted


def _stacked(column: pa.ChunkedArray, dim: int) -> NDArray[np.float32]:
    values: pa.Array = column.combine_chunks()
    while pa.types.is_list(values.type) or pa.types.is_fixed_size_list(values.type):
        values = values.flatten()
    return np.asarray(values.to_numpy(zero_copy_only=False), dtype=np.float32).reshape(-1, dim)


def calibrate(engine: RowEngine, sample: RangeSample, precision: ScalarDType) -> OutputRanges:
    """The ranges of the sample's float32 vectors (see the module docstring)."""
    from poolcli.io.tables import OutputRanges

    dim = engine.builder.dim
    if sample.vectors is not None:
        vectors = sample.vectors
    else:
        table = float_values(engine, sample.texts)
        vectors = (
            _stacked(table.column(engine.value_column), dim) if table is not None else np.zeros((0, dim), np.float32)
        )
    if not len(vectors):
        raise ConfigError(
            f"--output-dtype {precision}: no calibration vectors (every calibration row failed or was empty)",
            hint="give --calibration a file of typical rows",
        )
    if not np.isfinite(vectors).all():
        raise ConfigError(f"--output-dtype {precision}: the calibration vectors are not all finite")
    if sample.rows < FEW_ROWS:
        engine.warn(
            f"--output-dtype {precision}: ranges calibrated on {sample.rows} rows; they are more stable from "
            f"{FEW_ROWS} or more (--calibration FILE)"
        )
    return OutputRanges.measure(
        vectors, precision, engine.value_column, rows=sample.rows, source=sample.source, sha256=sample.digest()
    )
