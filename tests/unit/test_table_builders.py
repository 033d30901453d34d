"""Table builders: column types fixed by the task, not by the values of the first rows."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from poolcli.io.records import Block
from poolcli.io.tables import ClassifyTableBuilder


def test_multi_label_labels_stay_typed_when_the_first_rows_have_none() -> None:
    """A schema fixed from rows with no label over the threshold (a resumed run's skipped block, or the Ray driver's
    first rows) still takes the labels of later rows."""
    builder = ClassifyTableBuilder(["a", "b", "c"], multi_label=True, threshold=0.5, top_k=0, keep_columns=())
    builder.observe(Block(first_row=0, n_rows=2, rows=[0, 1], ids=[0, 1], texts=["x", "y"]))
    assert builder.schema is not None and builder.schema.field("labels").type == pa.list_(pa.string())
    probs = np.asarray([[0.9, 0.2, 0.7], [0.1, 0.1, 0.1]], dtype=np.float32)
    table = builder.table([2, 3], probs, [3, 3], [False, False], {})
    assert table.column("labels").to_pylist() == [["a", "c"], []]
