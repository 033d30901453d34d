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

    def empty_schema(self) -> pa.Schema:
        fields = [
            pa.field("id", pa.string()),
            pa.field("embedding", pa.list_(_ARROW_FLOAT[self.dtype], self.dim)),
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
        arrays = [
            pa.array(ids, type=types.field("id").type if types is not None else None),
            vector_array(vectors, self.dtype),
            pa.array(n_tokens, type=pa.int32()),
            pa.array(truncated, type=pa.bool_()),
        ]
        names = ["id", "embedding", "n_tokens", "truncated"]
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
