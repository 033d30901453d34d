"""Arrow schemas and conversions: vectors go from numpy buffers into Arrow arrays without Python lists."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from poolcli.errors import DataError
from poolcli.io.records import Block
from poolcli.vocab import OutputDType

if TYPE_CHECKING:
    from numpy.typing import NDArray

_ARROW_FLOAT = {"float32": pa.float32(), "float16": pa.float16()}
_NP_FLOAT = {"float32": np.float32, "float16": np.float16}


def vector_array(vectors: NDArray[np.float32], dtype: OutputDType) -> pa.FixedSizeListArray:
    """[n, d] float32 -> fixed_size_list<dtype>[d], sharing the numpy buffer when no cast is needed."""
    n, d = vectors.shape
    flat = np.ascontiguousarray(vectors, dtype=_NP_FLOAT[dtype]).reshape(n * d)
    return pa.FixedSizeListArray.from_arrays(pa.array(flat, type=_ARROW_FLOAT[dtype]), d)


class EmbedTableBuilder:
    """Builds the embed output table per window; the first window fixes the schema of kept columns."""

    value_column = "embedding"
    """The column whose values the part validation checks for finiteness."""

    def __init__(self, dim: int, dtype: OutputDType, keep_columns: tuple[str, ...], metadata: dict[bytes, bytes]):
        self.dim = dim
        self.dtype = dtype
        self.keep_columns = keep_columns
        self.metadata = metadata
        self.schema: pa.Schema | None = None

    def observe(self, block: Block) -> None:
        """Fix the schema from a block that is not computed (a resumed run skipping committed parts), so every
        run of the same command derives the same column types from the same first rows."""
        if self.schema is None and block.ids:
            n = len(block.ids)
            self.table(block.ids, np.zeros((n, self.dim), dtype=np.float32), [0] * n, [False] * n, block.keep)

    def value_fields(self) -> list[pa.Field]:
        return [pa.field("embedding", pa.list_(_ARROW_FLOAT[self.dtype], self.dim))]

    def value_arrays(self, vectors: NDArray[np.float32]) -> list[tuple[str, pa.Array]]:
        return [("embedding", vector_array(vectors, self.dtype))]

    def empty_schema(self) -> pa.Schema:
        fields = [
            pa.field("id", pa.string()),
            *self.value_fields(),
            pa.field("n_tokens", pa.int32()),
            pa.field("truncated", pa.bool_()),
        ]
        fields += [pa.field(c, pa.null()) for c in self.keep_columns]
        return pa.schema(fields, metadata=self.metadata)

    def table(
        self,
        ids: list[Any],
        vectors: NDArray[np.float32],
        n_tokens: list[int],
        truncated: list[bool],
        keep: dict[str, list[Any]],
    ) -> pa.Table:
        types = self.schema
        values = self.value_arrays(vectors)
        arrays = [
            pa.array(ids, type=types.field("id").type if types is not None else None),
            *(a for _, a in values),
            pa.array(n_tokens, type=pa.int32()),
            pa.array(truncated, type=pa.bool_()),
        ]
        names = ["id", *(n for n, _ in values), "n_tokens", "truncated"]
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
            fields = [pa.field(name, arr.type) for name, arr in zip(names, arrays, strict=True)]
            self.schema = pa.schema(fields, metadata=self.metadata)
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
        metadata: dict[bytes, bytes],
    ) -> None:
        super().__init__(len(labels), "float32", keep_columns, metadata)
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
            out.append(("labels", pa.array([names[row >= self.threshold].tolist() for row in vectors])))
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
