"""The batch template on a fake forward: batching, out-of-memory halving, the float32 recompute of non-finite
rows, the fault hooks and the counters, with no model at all."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from poolcli.engine.batch import BatchTemplate, Collated, collate
from poolcli.faults import Faults
from poolcli.io.records import Encoded


def _rows(lengths: list[int]) -> list[Encoded]:
    # Row i's tokens are all i + 1, so a fake output can tell which row it came from.
    return [Encoded([i + 1] * n, False) for i, n in enumerate(lengths)]


class FakeForward:
    """Output per row: [first token id, real length]; records every batch it saw (rows, float32 flag)."""

    def __init__(self, *, oom_above: int | None = None, nan_ids: set[int] | None = None, nan_fp32: bool = False):
        self.oom_above = oom_above
        self.nan_ids = nan_ids or set()
        self.nan_fp32 = nan_fp32
        self.calls: list[tuple[list[int], bool]] = []

    def __call__(self, batch: Collated, float32: bool) -> torch.Tensor:
        first = batch.ids[:, 0].tolist()
        self.calls.append((first, float32))
        if self.oom_above is not None and batch.ids.numel() > self.oom_above:
            raise torch.OutOfMemoryError("fake")
        out = torch.stack([batch.ids[:, 0].float(), batch.mask.sum(1).float()], dim=1)
        for k, token in enumerate(first):
            if token in self.nan_ids and (not float32 or self.nan_fp32):
                out[k, 0] = float("nan")
        return out


def _template(**kwargs: Any) -> tuple[BatchTemplate, list[str]]:
    warnings: list[str] = []
    kwargs.setdefault("budget", 1000)
    kwargs.setdefault("max_rows", 512)
    return BatchTemplate(device="cpu", pad_id=0, warn=warnings.append, **kwargs), warnings


def test_collate_pads_right_and_keeps_token_types() -> None:
    rows = [Encoded([5, 6, 7], False, type_ids=[0, 0, 1]), Encoded([8], False, type_ids=[0])]
    c = collate(rows, pad_id=9)
    assert c.ids.tolist() == [[5, 6, 7], [8, 9, 9]]
    assert c.mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    assert c.types is not None and c.types.tolist() == [[0, 0, 1], [0, 0, 0]]
    assert collate([Encoded([1], False)], 0).types is None


def test_outputs_in_item_order_and_counters() -> None:
    t, _ = _template(budget=8)
    lengths = [3, 1, 4, 1, 5, 2]
    seen: list[tuple[int, int]] = []
    values, failed = t.run(_rows(lengths), list(range(6)), FakeForward(), on_batch=lambda r, n: seen.append((r, n)))
    assert failed == {}
    assert [v.tolist() for v in values if v is not None] == [[i + 1, n] for i, n in enumerate(lengths)]
    assert sum(r for r, _ in seen) == 6 and sum(n for _, n in seen) == sum(lengths)
    assert t.stats.batches == len(seen) and t.stats.padded_tokens >= sum(lengths)


def test_per_token_outputs_keep_each_rows_positions() -> None:
    t, _ = _template()

    def forward(batch: Collated, float32: bool) -> torch.Tensor:
        return batch.ids.float().unsqueeze(-1)  # [B, L, 1]

    values, _ = t.run(_rows([2, 4]), [0, 1], forward, per_token=True)
    assert [v.shape for v in values if v is not None] == [(2, 1), (4, 1)]


def test_oom_halves_the_batch_and_lowers_the_budget() -> None:
    t, warnings = _template(budget=100)
    fake = FakeForward(oom_above=10)
    values, failed = t.run(_rows([5] * 8), list(range(8)), fake)  # 8 x 5 = 40 padded tokens
    assert failed == {}
    assert [v[0] for v in values if v is not None] == [float(i + 1) for i in range(8)]
    assert [len(rows) for rows, _ in fake.calls] == [8, 4, 2, 2, 4, 2, 2]
    assert t.stats.oom_splits == 3 and t.budget == 10  # half of the last batch that failed (4 x 5 / 2)
    assert len(warnings) == 3 and "splitting into 4 + 4" in warnings[0]


def test_oom_on_a_single_row_costs_that_row_only() -> None:
    t, warnings = _template()
    values, failed = t.run(_rows([3, 50, 3]), [0, 1, 2], FakeForward(oom_above=40))
    assert failed == {1: ("OOM_SINGLE_ROW", "out of memory even alone (50 tokens)")}
    assert values[1] is None and values[0] is not None and values[2] is not None
    assert any("OOM_SINGLE_ROW" in w for w in warnings)


def test_non_finite_rows_are_recomputed_alone_in_float32() -> None:
    t, _ = _template()
    fake = FakeForward(nan_ids={2, 4})
    values, failed = t.run(_rows([3, 3, 3, 3]), [0, 1, 2, 3], fake)
    assert failed == {}
    assert all(v is not None and np.isfinite(v).all() for v in values)
    assert [(rows, fp32) for rows, fp32 in fake.calls if fp32] == [([2], True), ([4], True)]


def test_still_non_finite_in_float32_is_an_error_row() -> None:
    t, _ = _template()
    values, failed = t.run(_rows([3, 3]), [0, 1], FakeForward(nan_ids={2}, nan_fp32=True))
    assert failed == {1: ("NONFINITE_OUTPUT", "the model produced NaN or Inf for this row, also in float32 alone")}
    assert values[1] is None and values[0] is not None


def test_oom_while_recomputing_is_oom_single_row() -> None:
    t, _ = _template()
    fake = FakeForward(nan_ids={1})
    original = fake.__call__

    def forward(batch: Collated, float32: bool) -> torch.Tensor:
        if float32:
            raise torch.OutOfMemoryError("fake")
        return original(batch, float32)

    _, failed = t.run(_rows([3, 3]), [0, 1], forward)
    assert failed == {0: ("OOM_SINGLE_ROW", "out of memory recomputing a non-finite row in float32")}


def test_fault_hooks_see_input_row_numbers() -> None:
    t, _ = _template(faults=Faults(nan_rows=frozenset({10}), oom_rows=frozenset({12})))
    values, failed = t.run(_rows([2, 2, 2]), [10, 11, 12], FakeForward())
    # Row 10's NaN is injected in the first pass only, so the float32 recompute fixes it; row 12 runs out of memory.
    assert values[0] is not None and np.isfinite(values[0]).all()
    assert failed == {2: ("OOM_SINGLE_ROW", "out of memory even alone (2 tokens)")}
    t2, _ = _template(faults=Faults(fail_at_row=11))
    with pytest.raises(RuntimeError, match="injected model failure at row 11"):
        t2.run(_rows([2, 2]), [10, 11], FakeForward())


def test_stop_is_checked_between_batches() -> None:
    t, _ = _template(budget=2)
    calls = 0

    def stop() -> None:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise KeyboardInterrupt

    fake = FakeForward()
    with pytest.raises(KeyboardInterrupt):
        t.run(_rows([2, 2, 2]), [0, 1, 2], fake, stop=stop)
    assert len(fake.calls) == 2


def test_duplicate_items_are_computed_once_and_get_equal_outputs() -> None:
    t, _ = _template(budget=6)
    rows = [Encoded([7, 7, 7], False), Encoded([5], False), Encoded([7, 7, 7], False), Encoded([7, 7, 7], False)]
    rows.append(Encoded([7, 7, 7], False, type_ids=[0, 0, 1]))  # same ids, other token types: not a duplicate
    seen: list[tuple[int, int]] = []
    fake = FakeForward(nan_ids={5}, nan_fp32=True)
    values, failed = t.run(rows, list(range(5)), fake, on_batch=lambda r, n: seen.append((r, n)))
    assert sorted(len(batch) for batch, _ in fake.calls if batch) == [1, 1, 2]  # [7]x3 twice, then [5] (NaN)
    assert values[0] is not None and values[2] is not None and values[3] is not None
    assert values[0].tolist() == values[2].tolist() == values[3].tolist() == [7.0, 3.0]
    values[2][0] = -1.0  # each row owns its arrays
    assert values[0][0] == 7.0 and values[3][0] == 7.0
    assert failed == {1: ("NONFINITE_OUTPUT", "the model produced NaN or Inf for this row, also in float32 alone")}
    assert t.stats.duplicates == 2
    # Progress still counts every row and its tokens.
    assert sum(r for r, _ in seen) == 5 and sum(n for _, n in seen) == 3 * 4 + 1


def test_a_failed_item_fails_its_duplicates_too() -> None:
    t, _ = _template()
    values, failed = t.run(_rows([3]) + _rows([3]), [0, 1], FakeForward(nan_ids={1}, nan_fp32=True))
    assert set(failed) == {0, 1} and values == [None, None]


def test_freed_heap_is_returned_between_cpu_batches_at_most_every_interval() -> None:
    from poolcli.engine.heap import HeapTrimmer

    clock = [0.0]
    trims: list[float] = []
    trimmer = HeapTrimmer(interval=2.0, trim=lambda: trims.append(clock[0]), clock=lambda: clock[0])
    for step in (0.0, 1.0, 1.0, 1.0, 3.0):  # batches at t = 0, 1, 2, 3, 6
        clock[0] += step
        trimmer()
    assert trims == [0.0, 2.0, 6.0]
    assert not HeapTrimmer(enabled=False, trim=lambda: trims.append(-1))._trim

    # Wired into the template on CPU (and off for a GPU device): called once per batch.
    t, _ = _template(budget=8)
    calls: list[int] = []
    t.trim_heap = HeapTrimmer(interval=0.0, trim=lambda: calls.append(1))
    t.run(_rows([4, 4, 4, 4]), [0, 1, 2, 3], FakeForward())
    assert len(calls) == t.stats.batches == 2
    assert BatchTemplate(budget=8, max_rows=4, device="cuda", pad_id=0).trim_heap._trim is None
    assert HeapTrimmer()._trim is not None  # this machine's C library (glibc) has malloc_trim
