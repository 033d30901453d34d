"""Length-bucketed batching: sort a window of rows by token length, cut batches by a padded-token budget.

Batch boundaries depend only on the lengths and the budget, never on timing, so a rerun cuts the same batches.
"""

from __future__ import annotations

from collections.abc import Sequence


def cut_batches(lengths: Sequence[int], *, max_tokens: int, max_rows: int) -> list[list[int]]:
    """Indices into `lengths`, grouped into batches whose padded size (rows x longest) fits `max_tokens`.

    Rows are taken longest first (ties in input order), so each batch pads to its first row; a row longer than
    the whole budget forms a batch of its own.
    """
    if max_tokens < 1 or max_rows < 1:
        raise ValueError("batch budget and batch size must be positive")
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: list[list[int]] = []
    current: list[int] = []
    longest = 0
    for i in order:
        if current and ((len(current) + 1) * longest > max_tokens or len(current) >= max_rows):
            batches.append(current)
            current = []
        if not current:
            longest = lengths[i]
        current.append(i)
    if current:
        batches.append(current)
    return batches
