"""One table builder per task: a block's results -> that task's Arrow table, with a fixed schema.

Vectors go from numpy buffers into Arrow arrays without Python lists. Tables carry no key-value metadata; the
driver that writes them adds the run's (`poolcli` key: fingerprint, plan, model identity)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import msgspec
import numpy as np
import pyarrow as pa

from poolcli.errors import DataError, UsageError
from poolcli.io.records import Block, Encoded
from poolcli.vocab import OutputDType, ScalarDType, VectorDType

if TYPE_CHECKING:
    from numpy.typing import NDArray

_ARROW_FLOAT = {"float32": pa.float32(), "float16": pa.float16()}
_NP_FLOAT = {"float32": np.float32, "float16": np.float16}


_PACKED = {"binary": pa.int8(), "ubinary": pa.uint8()}
_SCALAR = {"int8": pa.int8(), "uint8": pa.uint8()}

RANGES_KEY = b"poolcli_output_ranges"
"""The Parquet key-value metadata key of an int8/uint8 output's per-dimension ranges (`OutputRanges`)."""


class OutputRanges(msgspec.Struct, frozen=True, kw_only=True):
    """Per-dimension [min, max] of a calibration sample's vectors: what int8/uint8 outputs are buckets of, recorded
    in the output's metadata so a reader can dequantize and a resumed run quantizes the same."""

    precision: ScalarDType
    column: str
    min: list[float]
    max: list[float]
    rows: int
    """Calibration rows (texts embedded by the run, or rows of vectors read from a file)."""
    vectors: int
    """Vectors the ranges were taken over (token-embed: every kept token of those rows)."""
    source: str
    """"input" (the run's first rows) or the --calibration file."""
    sha256: str
    """Digest of the calibration sample (part of the run's identity)."""
    formula: str = (
        "step = (max - min) / 255 (1 where 0); q = clip(floor((v - min) / step), 0, 255); int8 stores q - 128, uint8 q;"
        " v ~= min + (q + 0.5) * step"
    )

    def array(self) -> NDArray[np.float32]:
        """[2, d] float32, rows min and max: Sentence-Transformers' `ranges` argument."""
        return np.asarray([self.min, self.max], dtype=np.float32)

    @classmethod
    def measure(
        cls, vectors: NDArray[np.float32], precision: ScalarDType, column: str, *, rows: int, source: str, sha256: str
    ) -> OutputRanges:
        """The ranges of [n, d] float32 vectors (exactly as Sentence-Transformers computes them)."""
        lo, hi = np.min(vectors, axis=0), np.max(vectors, axis=0)
        return cls(
            precision=precision,
            column=column,
            min=[float(v) for v in lo],
            max=[float(v) for v in hi],
            rows=rows,
            vectors=len(vectors),
            source=source,
            sha256=sha256,
        )


def scalar_quantize(vectors: NDArray[np.float32], ranges: NDArray[np.float32], precision: ScalarDType) -> NDArray[Any]:
    """Sentence-Transformers' `quantize_embeddings(vectors, precision, ranges=ranges)` for int8/uint8, in float32:
    values outside the calibrated range land in the first or last bucket."""
    starts = ranges[0, :]
    steps = (ranges[1, :] - starts) / 255
    steps = np.where(steps == 0, 1, steps)
    buckets = np.clip(np.floor((np.asarray(vectors, dtype=np.float32) - starts) / steps), 0, 255)
    return buckets.astype(np.uint8) if precision == "uint8" else (buckets - 128).astype(np.int8)


def vector_type(dtype: VectorDType, dim: int) -> tuple[pa.DataType, int, dict[bytes, bytes] | None]:
    """A vector's Arrow element type, list width and field metadata."""
    if dtype in _PACKED:
        meta = {b"poolcli.dim": str(dim).encode(), b"poolcli.packing": f"{dtype}: numpy.packbits(v > 0)".encode()}
        return _PACKED[dtype], dim // 8, meta
    if dtype in _SCALAR:
        return _SCALAR[dtype], dim, {b"poolcli.quantization": f"{dtype}: ranges in {RANGES_KEY.decode()}".encode()}
    return _ARROW_FLOAT[dtype], dim, None


def vector_field(name: str, dtype: VectorDType, dim: int) -> pa.Field:
    """A vector column's field; packed bits say their dimension in the field's metadata, int8/uint8 where their
    ranges are."""
    value, width, meta = vector_type(dtype, dim)
    return pa.field(name, pa.list_(value, width), metadata=meta)


def encode_vectors(
    vectors: NDArray[np.float32], dtype: VectorDType, ranges: NDArray[np.float32] | None
) -> NDArray[Any]:
    """[n, d] float32 -> the stored elements ([n, d/8] for packed bits), as Sentence-Transformers'
    `quantize_embeddings` gives them."""
    if dtype in _PACKED:
        bits = np.packbits(np.asarray(vectors) > 0, axis=-1)
        return (bits.astype(np.int16) - 128).astype(np.int8) if dtype == "binary" else bits
    if dtype in _SCALAR:
        if ranges is None:
            raise UsageError(f"--output-dtype {dtype} needs calibrated ranges (--calibration)")
        return scalar_quantize(vectors, ranges, "int8" if dtype == "int8" else "uint8")
    return np.asarray(vectors, dtype=_NP_FLOAT[dtype])


def vector_array(
    vectors: NDArray[np.float32], dtype: VectorDType, ranges: NDArray[np.float32] | None = None
) -> pa.FixedSizeListArray:
    """[n, d] float32 -> fixed_size_list<dtype>[width], sharing the numpy buffer when no cast is needed."""
    value, width, _ = vector_type(dtype, vectors.shape[1])
    flat = np.ascontiguousarray(encode_vectors(vectors, dtype, ranges)).reshape(-1)
    return pa.FixedSizeListArray.from_arrays(pa.array(flat, type=value), width)


class EmbedTableBuilder:
    """Builds the embed output table per window; the first window fixes the schema of kept columns."""

    value_column = "embedding"
    """The column whose values the part validation checks for finiteness."""

    def __init__(self, dim: int, dtype: VectorDType, keep_columns: tuple[str, ...]):
        if dtype in _PACKED and dim % 8:
            raise UsageError(f"--output-dtype {dtype} packs 8 dimensions per byte; these vectors have {dim}")
        self.dim = dim
        self.dtype = dtype
        self.ranges: NDArray[np.float32] | None = None
        """int8/uint8: the per-dimension [min, max] ([2, d]) vectors are bucketed in."""
        self.keep_columns = keep_columns
        self.schema: pa.Schema | None = None
        self.chunks = False
        """Chunked processing is on: an `n_chunks` column follows `truncated`."""

    def observe(self, block: Block) -> None:
        """Fix the schema from a block that is not computed (a resumed run skipping committed parts), so every
        run of the same command derives the same column types from the same first rows."""
        if self.schema is None and block.ids:
            n = len(block.ids)
            with self._schema_only():
                self.table(block.ids, np.zeros((n, self.dim), dtype=np.float32), [0] * n, [False] * n, block.keep)

    @contextmanager
    def _schema_only(self) -> Iterator[None]:
        """Placeholder ranges while a table is built only for its schema (before the ranges are calibrated: a dry
        run, or a resumed run's skipped rows)."""
        placeholder = self.ranges is None and self.dtype in _SCALAR
        if placeholder:
            self.ranges = np.zeros((2, self.dim), dtype=np.float32)
        try:
            yield
        finally:
            if placeholder:
                self.ranges = None

    @contextmanager
    def unquantized(self) -> Iterator[None]:
        """Tables of float32 vectors for a while (the calibration of the run's int8 body or output ranges), leaving
        the output's schema to the run's own first block."""
        dtype, schema = self.dtype, self.schema
        self.dtype, self.schema = "float32", None
        try:
            yield
        finally:
            self.dtype, self.schema = dtype, schema

    def value_fields(self) -> list[pa.Field]:
        return [vector_field("embedding", self.dtype, self.dim)]

    def value_arrays(self, vectors: NDArray[np.float32]) -> list[tuple[str, pa.Array]]:
        return [("embedding", vector_array(vectors, self.dtype, self._ranges()))]

    def _ranges(self) -> NDArray[np.float32] | None:
        if self.ranges is None and self.dtype in _SCALAR:
            raise AssertionError("int8/uint8 vectors built before their ranges were calibrated")
        return self.ranges

    def output_fields(self) -> list[pa.Field]:
        """The task's own columns (the kept input columns follow them)."""
        fields = [
            pa.field("id", pa.string()),
            *self.value_fields(),
            pa.field("n_tokens", pa.int32()),
            pa.field("truncated", pa.bool_()),
        ]
        if self.chunks:
            fields.append(pa.field("n_chunks", pa.int32()))
        return fields

    def empty_schema(self) -> pa.Schema:
        return pa.schema([*self.output_fields(), *(pa.field(c, pa.null()) for c in self.keep_columns)])

    def table(
        self,
        ids: list[Any],
        vectors: Any,
        n_tokens: list[int],
        truncated: list[bool],
        keep: dict[str, list[Any]],
        *,
        encoded: Sequence[Any] = (),
        texts: Sequence[str] = (),
        n_chunks: Sequence[int] | None = None,
    ) -> pa.Table:
        """`encoded` and `texts` (the rows' tokenization and text) are for builders whose columns need them."""
        types = self.schema
        values = self.value_arrays(vectors)
        arrays = [
            pa.array(ids, type=types.field("id").type if types is not None else None),
            *(a for _, a in values),
            pa.array(n_tokens, type=pa.int32()),
            pa.array(truncated, type=pa.bool_()),
        ]
        names = ["id", *(n for n, _ in values), "n_tokens", "truncated"]
        if self.chunks:
            arrays.append(pa.array(n_chunks if n_chunks is not None else [1] * len(ids), type=pa.int32()))
            names.append("n_chunks")
        promoted = False
        for col in self.keep_columns:
            known = types.field(col).type if types is not None else None
            if known is not None and pa.types.is_null(known):
                known = None  # all-null so far: the first non-null values decide the type
            try:
                arr = pa.array(keep[col], type=known)
            except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError) as exc:
                raise DataError(f"column {col!r} changes type within the input: {exc}") from None
            promoted |= types is not None and known is None and not pa.types.is_null(arr.type)
            arrays.append(arr)
            names.append(col)
        if self.schema is None or promoted:
            # A value field with metadata (a packed vector's dimension) is taken as declared; the rest as built.
            own = {f.name: f for f in self.value_fields() if f.metadata}
            fields = [own.get(name) or pa.field(name, arr.type) for name, arr in zip(names, arrays, strict=True)]
            self.schema = pa.schema(fields)
        return pa.Table.from_arrays(arrays, schema=self.schema)


class ClassifyTableBuilder(EmbedTableBuilder):
    """classify: `label` (id2label of the best class), `score` (its probability), `probs` (every class, in label
    order), then `labels` (multi-label: every class at or over the threshold) and `top_k` (the K best)."""

    value_column = "probs"

    def __init__(
        self,
        labels: list[str],
        *,
        multi_label: bool,
        threshold: float,
        top_k: int,
        keep_columns: tuple[str, ...],
    ) -> None:
        super().__init__(len(labels), "float32", keep_columns)
        self.labels = labels
        self.multi_label = multi_label
        self.threshold = threshold
        self.top_k = min(top_k, len(labels))

    def value_fields(self) -> list[pa.Field]:
        fields = [
            pa.field("label", pa.string()),
            pa.field("score", pa.float32()),
            pa.field("probs", pa.list_(pa.float32(), self.dim)),
        ]
        if self.multi_label:
            fields.append(pa.field("labels", pa.list_(pa.string())))
        if self.top_k:
            fields.append(pa.field("top_k", pa.list_(_TOP_K)))
        return fields

    def value_arrays(self, vectors: NDArray[np.float32]) -> list[tuple[str, pa.Array]]:
        best = vectors.argmax(axis=1) if len(vectors) else np.zeros(0, dtype=np.int64)
        names = np.asarray(self.labels, dtype=object)
        out: list[tuple[str, pa.Array]] = [
            ("label", pa.array(names[best].tolist(), type=pa.string())),
            ("score", pa.array(vectors[np.arange(len(vectors)), best], type=pa.float32())),
            ("probs", vector_array(vectors, "float32")),
        ]
        if self.multi_label:
            labels = [names[row >= self.threshold].tolist() for row in vectors]
            # Typed: rows with no label above the threshold must not make the column list<null>.
            out.append(("labels", pa.array(labels, type=pa.list_(pa.string()))))
        if self.top_k:
            # A stable sort on the negated scores: equal scores keep label order.
            order = np.argsort(-vectors, axis=1, kind="stable")[:, : self.top_k]
            top = [
                [{"label": self.labels[j], "score": float(row[j])} for j in idx]
                for row, idx in zip(vectors, order, strict=True)
            ]
            out.append(("top_k", pa.array(top, type=pa.list_(_TOP_K))))
        return out


_TOP_K = pa.struct([pa.field("label", pa.string()), pa.field("score", pa.float32())])


def _ragged(arrays: Sequence[NDArray[Any]], value_type: pa.DataType, width: int | None) -> pa.ListArray:
    """Per-row arrays (each [n_i] or [n_i, width]) -> list<value> or list<fixed_size_list<value>[width]>, from
    one concatenated buffer."""
    counts = np.fromiter((len(a) for a in arrays), dtype=np.int64, count=len(arrays))
    offsets = np.zeros(len(arrays) + 1, dtype=np.int32)
    np.cumsum(counts, out=offsets[1:])
    np_type = value_type.to_pandas_dtype()
    if width is None:
        flat = np.concatenate(arrays).astype(np_type, copy=False) if arrays else np.zeros(0, np_type)
        values: pa.Array = pa.array(flat, type=value_type)
    else:
        flat = (
            np.concatenate([_rows_of(a, np_type, width) for a in arrays]).reshape(-1)
            if arrays
            else np.zeros(0, np_type)
        )
        values = pa.FixedSizeListArray.from_arrays(pa.array(flat, type=value_type), width)
    return pa.ListArray.from_arrays(pa.array(offsets, type=pa.int32()), values)


def _rows_of(a: NDArray[Any], np_type: Any, width: int) -> NDArray[Any]:
    arr = np.asarray(a, dtype=np_type)
    if arr.size and (arr.ndim != 2 or arr.shape[1] != width):
        raise ValueError(f"a row of shape {arr.shape} in a column of width {width}")
    return arr.reshape(-1, width)


_ENTITY = pa.struct(
    [
        pa.field("entity", pa.string()),
        pa.field("start", pa.int32()),
        pa.field("end", pa.int32()),
        pa.field("score", pa.float32()),
        pa.field("text", pa.string()),
    ]
)


class PerTokenTableBuilder(EmbedTableBuilder):
    """Base of the per-token tables: one list of vectors per row, with the rows' token ids alongside."""

    def __init__(self, dim: int, dtype: VectorDType, keep_columns: tuple[str, ...]) -> None:
        super().__init__(dim, dtype, keep_columns)
        self._encoded: Sequence[Any] = ()
        self._texts: Sequence[str] = ()

    def observe(self, block: Block) -> None:
        if self.schema is None and block.ids:
            n = len(block.ids)
            empty = [np.zeros((0, self.dim), dtype=np.float32) for _ in range(n)]
            encoded = [Encoded([], False, []) for _ in range(n)]
            with self._schema_only():
                self.table(block.ids, empty, [0] * n, [False] * n, block.keep, encoded=encoded, texts=[""] * n)

    def table(
        self,
        ids: list[Any],
        vectors: Any,
        n_tokens: list[int],
        truncated: list[bool],
        keep: dict[str, list[Any]],
        *,
        encoded: Sequence[Any] = (),
        texts: Sequence[str] = (),
        n_chunks: Sequence[int] | None = None,
    ) -> pa.Table:
        self._encoded, self._texts = encoded, texts
        try:
            return super().table(
                ids, vectors, n_tokens, truncated, keep, encoded=encoded, texts=texts, n_chunks=n_chunks
            )
        finally:
            self._encoded, self._texts = (), ()


class TokenEmbedTableBuilder(PerTokenTableBuilder):
    """token-embed: `token_ids` (the kept tokens) and `embeddings` (one vector per kept token), `n_tokens`,
    `truncated`."""

    value_column = "embeddings"

    def value_fields(self) -> list[pa.Field]:
        value, width, meta = vector_type(self.dtype, self.dim)
        return [
            pa.field("token_ids", pa.list_(pa.int32())),
            pa.field("embeddings", pa.list_(pa.list_(value, width)), metadata=meta),
        ]

    def value_arrays(self, vectors: Any) -> list[tuple[str, pa.Array]]:
        encoded = self._encoded
        assert len(encoded) == len(vectors)
        value, width, _ = vector_type(self.dtype, self.dim)
        if self.dtype not in _ARROW_FLOAT:
            ranges = self._ranges()
            vectors = [
                encode_vectors(np.asarray(v, dtype=np.float32).reshape(-1, self.dim), self.dtype, ranges)
                for v in vectors
            ]
        return [
            ("token_ids", _ragged([np.asarray(e.ids, dtype=np.int32) for e in encoded], pa.int32(), None)),
            ("embeddings", _ragged(list(vectors), value, width)),
        ]


class TokenClassifyTableBuilder(PerTokenTableBuilder):
    """token-classify: `token_ids` and `probs` (one vector per token, or per step tag with STEP pooling, then
    `step_positions`), `n_tokens`, `truncated`; `offsets` ([start, end) characters per token) and `entities`
    (aggregated spans) when asked for."""

    value_column = "probs"

    def __init__(
        self,
        labels: list[str],
        *,
        step: bool,
        step_tag_id: int | None,
        offsets: bool,
        aggregate: bool,
        ignore_labels: frozenset[str],
        keep_columns: tuple[str, ...],
    ) -> None:
        super().__init__(len(labels), "float32", keep_columns)
        self.labels = labels
        self.step = step
        self.step_tag_id = step_tag_id
        self.offsets = offsets
        self.aggregate = aggregate
        self.ignore_labels = ignore_labels

    def value_fields(self) -> list[pa.Field]:
        fields = [
            pa.field("token_ids", pa.list_(pa.int32())),
            pa.field("probs", pa.list_(pa.list_(pa.float32(), self.dim))),
        ]
        if self.step:
            fields.append(pa.field("step_positions", pa.list_(pa.int32())))
        if self.offsets:
            fields.append(pa.field("offsets", pa.list_(pa.list_(pa.int32(), 2))))
        if self.aggregate:
            fields.append(pa.field("entities", pa.list_(_ENTITY)))
        return fields

    def value_arrays(self, vectors: NDArray[Any]) -> list[tuple[str, pa.Array]]:
        encoded = self._encoded
        assert len(encoded) == len(vectors)
        token_ids = [np.asarray(e.ids, dtype=np.int32) for e in encoded]
        out: list[tuple[str, pa.Array]] = [
            ("token_ids", _ragged(token_ids, pa.int32(), None)),
            ("probs", _ragged(list(vectors), pa.float32(), self.dim)),
        ]
        if self.step:
            out.append(("step_positions", _ragged([self._step_positions(e.ids) for e in encoded], pa.int32(), None)))
        if self.offsets:
            out.append(("offsets", _ragged([np.asarray(e.offsets, np.int32) for e in encoded], pa.int32(), 2)))
        if self.aggregate:
            from poolcli.pooler.entities import aggregate_simple

            rows = []
            for e, probs, text in zip(encoded, vectors, self._texts, strict=True):
                special = [s == t for s, t in e.offsets]
                ents = aggregate_simple(probs, e.offsets, special, self.labels, text, ignore=self.ignore_labels)
                rows.append([ent._asdict() for ent in ents])
            out.append(("entities", pa.array(rows, type=pa.list_(_ENTITY))))
        return out

    def _step_positions(self, ids: Sequence[int]) -> NDArray[np.int32]:
        arr = np.asarray(ids, dtype=np.int64)
        if self.step_tag_id is None:
            return np.arange(len(arr), dtype=np.int32)
        return np.flatnonzero(arr == self.step_tag_id).astype(np.int32)


# -- score and rerank ---------------------------------------------------------------------------------------------


def id_type(values: Any) -> str:
    """Ids keep their type (int64 or string); a mix of types is written as strings. Decided once per job, so
    every part of a run (and of a resumed run) has the same schema."""
    kinds = {type(v) for v in values if v is not None}
    return "int64" if kinds <= {int} else "string"


def _id_array(values: list[Any], kind: str) -> pa.Array:
    if kind == "int64":
        return pa.array(values, type=pa.int64())
    return pa.array([v if v is None or isinstance(v, str) else str(v) for v in values], type=pa.string())


def check_keep_columns(keep_columns: Sequence[str], output_fields: Sequence[pa.Field]) -> None:
    """A kept input column may not take the name of one of the task's own columns (the file would have two)."""
    clash = sorted({f.name for f in output_fields} & set(keep_columns))
    if clash:
        raise UsageError(
            f"--keep-columns cannot include this command's output column names: {', '.join(clash)}",
            hint="rename the input column",
        )


def _id_field(name: str, kind: str) -> pa.Field:
    return pa.field(name, pa.int64() if kind == "int64" else pa.string())


class ScoreTableBuilder:
    """score: `id`, then `id_1`/`id_2` (two inputs), `score`, then the kept columns."""

    value_column = "score"
    id_column = "id"

    def __init__(self, *, id_kind: str, pair_kind: str | None, keep_columns: tuple[str, ...]) -> None:
        self.id_kind = id_kind
        self.pair_kind = pair_kind
        """The type of `id_1`/`id_2`, or None when the pairs have no ids of their own (one input)."""
        self.keep_columns = keep_columns

    def table(
        self,
        ids: list[Any],
        scores: list[float],
        keep: dict[str, list[Any]],
        id_1: list[Any] | None = None,
        id_2: list[Any] | None = None,
    ) -> pa.Table:
        arrays = [_id_array(ids, self.id_kind)]
        names = ["id"]
        if self.pair_kind is not None:
            assert id_1 is not None and id_2 is not None
            arrays += [_id_array(id_1, self.pair_kind), _id_array(id_2, self.pair_kind)]
            names += ["id_1", "id_2"]
        arrays.append(pa.array(scores, type=pa.float32()))
        names.append("score")
        for c in self.keep_columns:
            arrays.append(pa.array(keep[c]))
            names.append(c)
        return pa.Table.from_arrays(arrays, names=names)

    def output_fields(self) -> list[pa.Field]:
        fields = [_id_field("id", self.id_kind)]
        if self.pair_kind is not None:
            fields += [_id_field("id_1", self.pair_kind), _id_field("id_2", self.pair_kind)]
        fields.append(pa.field("score", pa.float32()))
        return fields

    def empty_schema(self) -> pa.Schema:
        return pa.schema([*self.output_fields(), *(pa.field(c, pa.null()) for c in self.keep_columns)])


class RerankTableBuilder:
    """rerank: `query_id`, `rank` (1-based), `index` (position in the query's documents), `document_id`,
    `relevance_score`, then `document` with --return-documents."""

    value_column = "relevance_score"
    id_column = "query_id"
    columns = ("query_id", "rank", "index", "document_id", "relevance_score")

    def __init__(self, *, query_kind: str, document_kind: str, return_documents: bool) -> None:
        self.query_kind = query_kind
        self.document_kind = document_kind
        self.return_documents = return_documents

    def table(self, cols: dict[str, list[Any]]) -> pa.Table:
        arrays = [
            _id_array(cols["query_id"], self.query_kind),
            pa.array(cols["rank"], type=pa.int32()),
            pa.array(cols["index"], type=pa.int32()),
            _id_array(cols["document_id"], self.document_kind),
            pa.array(cols["relevance_score"], type=pa.float32()),
        ]
        names = list(self.columns)
        if self.return_documents:
            arrays.append(pa.array(cols["document"], type=pa.string()))
            names.append("document")
        return pa.Table.from_arrays(arrays, names=names)

    def empty_schema(self) -> pa.Schema:
        fields = [
            _id_field("query_id", self.query_kind),
            pa.field("rank", pa.int32()),
            pa.field("index", pa.int32()),
            _id_field("document_id", self.document_kind),
            pa.field("relevance_score", pa.float32()),
        ]
        if self.return_documents:
            fields.append(pa.field("document", pa.string()))
        return pa.schema(fields)


# -- BGE-M3: lexical weights and the three outputs of one forward pass ------------------------------------------------


LEXICAL = pa.map_(pa.int32(), pa.float32())


def _lexical_map(rows: Sequence[NDArray[Any]]) -> pa.MapArray:
    """Per row a [k, 2] array of (token id, weight) -> map<int32, float32>, in each row's order."""
    counts = np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows))
    offsets = np.zeros(len(rows) + 1, dtype=np.int32)
    np.cumsum(counts, out=offsets[1:])
    flat = np.concatenate([np.asarray(r, dtype=np.float64).reshape(-1, 2) for r in rows]) if rows else np.zeros((0, 2))
    return pa.MapArray.from_arrays(
        pa.array(offsets, type=pa.int32()),
        pa.array(flat[:, 0].astype(np.int32), type=pa.int32()),
        pa.array(flat[:, 1].astype(np.float32), type=pa.float32()),
    )


class LexicalTableBuilder(EmbedTableBuilder):
    """token-classify on BGE-M3: `lexical_weights` (map<int32, float32>, token id -> weight), `n_tokens`,
    `truncated`. A map keeps FlagEmbedding's `{token_id: weight}` shape, one entry per distinct token id."""

    value_column = "lexical_weights"

    def __init__(self, keep_columns: tuple[str, ...]) -> None:
        super().__init__(0, "float32", keep_columns)

    def observe(self, block: Block) -> None:
        if self.schema is None and block.ids:
            n = len(block.ids)
            self.table(block.ids, [np.zeros((0, 2))] * n, [0] * n, [False] * n, block.keep)

    def value_fields(self) -> list[pa.Field]:
        return [pa.field("lexical_weights", LEXICAL)]

    def value_arrays(self, vectors: Any) -> list[tuple[str, pa.Array]]:
        return [("lexical_weights", _lexical_map(list(vectors)))]


class M3TableBuilder(EmbedTableBuilder):
    """embed --outputs on BGE-M3: `embedding` (dense), `lexical_weights` (sparse) and `colbert_embeddings` (one
    vector per token), as asked, from one forward pass; then `n_tokens`, `truncated`."""

    def __init__(
        self, dim: int, colbert_dim: int, dtype: OutputDType, outputs: tuple[str, ...], keep_columns: tuple[str, ...]
    ) -> None:
        super().__init__(dim, dtype, keep_columns)
        self.colbert_dim = colbert_dim
        self.outputs = outputs
        self.value_column = "embedding" if "dense" in outputs else "colbert_embeddings" if "colbert" in outputs else ""
        if not self.value_column:
            self.value_column = "lexical_weights"

    def observe(self, block: Block) -> None:
        if self.schema is None and block.ids:
            n = len(block.ids)
            row = (np.zeros(self.dim, np.float32), np.zeros((0, 2)), np.zeros((0, self.colbert_dim), np.float32))
            self.table(block.ids, [row] * n, [0] * n, [False] * n, block.keep)

    def value_fields(self) -> list[pa.Field]:
        fields = []
        if "dense" in self.outputs:
            fields.append(pa.field("embedding", pa.list_(_ARROW_FLOAT[self.dtype], self.dim)))
        if "sparse" in self.outputs:
            fields.append(pa.field("lexical_weights", LEXICAL))
        if "colbert" in self.outputs:
            fields.append(
                pa.field("colbert_embeddings", pa.list_(pa.list_(_ARROW_FLOAT[self.dtype], self.colbert_dim)))
            )
        return fields

    def value_arrays(self, vectors: Any) -> list[tuple[str, pa.Array]]:
        rows = list(vectors)
        out: list[tuple[str, pa.Array]] = []
        if "dense" in self.outputs:
            dense = np.stack([r[0] for r in rows]) if rows else np.zeros((0, self.dim), np.float32)
            out.append(("embedding", vector_array(dense, self.dtype)))
        if "sparse" in self.outputs:
            out.append(("lexical_weights", _lexical_map([r[1] for r in rows])))
        if "colbert" in self.outputs:
            colbert = [r[2] for r in rows]
            out.append(("colbert_embeddings", _ragged(colbert, _ARROW_FLOAT[self.dtype], self.colbert_dim)))
        return out
