from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from poolcli.engine.scheduler import cut_batches


def test_longest_first_and_budget() -> None:
    lengths = [5, 10, 3, 10, 7]
    batches = cut_batches(lengths, max_tokens=20, max_rows=8)
    assert batches == [[1, 3], [4, 0], [2]]


def test_row_over_budget_is_alone() -> None:
    assert cut_batches([100, 2, 2], max_tokens=10, max_rows=8) == [[0], [1, 2]]


def test_max_rows() -> None:
    assert cut_batches([1] * 5, max_tokens=1000, max_rows=2) == [[0, 1], [2, 3], [4]]


@given(st.lists(st.integers(min_value=1, max_value=300), max_size=200), st.integers(1, 4000), st.integers(1, 64))
def test_every_row_once_within_budget(lengths: list[int], budget: int, rows: int) -> None:
    batches = cut_batches(lengths, max_tokens=budget, max_rows=rows)
    flat = sorted(i for b in batches for i in b)
    assert flat == list(range(len(lengths)))
    for b in batches:
        assert len(b) <= rows
        assert len(b) == 1 or len(b) * max(lengths[i] for i in b) <= budget
    assert batches == cut_batches(lengths, max_tokens=budget, max_rows=rows)  # deterministic
