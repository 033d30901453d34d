"""The batch template every task runs its model through.

A task gives a forward function (padded token ids -> its outputs, float32, one per row); the template does the
rest, the same way for every task: length-sorted batches under the padded-token budget, collation, inference mode,
the fault hooks the reliability tests use, out-of-memory halving, the per-row float32 recompute of non-finite
outputs, and the counters the summary reports.

- Out of memory: the batch is split in halves and each half retried, down to one row, which then fails alone as
  OOM_SINGLE_ROW; the budget drops to half the failed batch so later batches fit. `budget` is the state a resumed
  run restores.
- Non-finite output: the row is recomputed alone with `float32=True` (the task decides what that means, usually a
  float32 copy of the model); still non-finite, it becomes NONFINITE_OUTPUT.
- Duplicates: items with the same token ids are computed once and share the result. This is what makes two equal
  texts give equal outputs: a kernel may round a row differently at another position in a batch (seen with one
  CPU thread), which reorders tied scores in a ranking. It also saves the work on corpora with repeated rows.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

import msgspec
import numpy as np

from poolcli.engine.heap import HeapTrimmer
from poolcli.engine.scheduler import cut_batches
from poolcli.faults import NO_FAULTS, Faults
from poolcli.vocab import ErrorCode

if TYPE_CHECKING:
    import torch
    from torch import Tensor

DEFAULT_CPU_BATCH_TOKENS = 2048  # measured best for small encoders on a 2-core CPU (docs/performance.md)
DEFAULT_GPU_BATCH_TOKENS = 65536

Failed = dict[int, tuple[ErrorCode, str]]
"""Rows (indices into the template's input) that produced no output: {index: (code, message)}."""
OnBatch = Callable[[int, int], None]
"""Called after each batch with (rows, real tokens)."""
StopCheck = Callable[[], None]
"""Called between batches; raises to stop the run (a signal arrived)."""


class TokenSeq(Protocol):
    @property
    def ids(self) -> list[int]: ...

    @property
    def type_ids(self) -> list[int] | None: ...

    @property
    def attention(self) -> list[int] | None: ...


class Collated(NamedTuple):
    """A padded batch: int64 [B, L] ids, mask and (for text pairs with token types) type ids."""

    ids: Tensor
    mask: Tensor
    types: Tensor | None


Forward = Callable[[Collated, bool], "Tensor | tuple[Tensor, ...]"]
"""(batch, float32) -> outputs [B, ...] (rows right-padded, so a per-token output's first n positions are the
row's); several heads on one forward pass return a tuple, one tensor per head."""
Output = Any
"""One item's output: a numpy array, or a tuple of arrays (one per head) when the forward returns a tuple."""


def collate(rows: Sequence[TokenSeq], pad_id: int) -> Collated:
    """Right-pad rows to the longest one."""
    import torch

    longest = max(len(r.ids) for r in rows)
    ids = torch.full((len(rows), longest), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), longest), dtype=torch.long)
    with_types = rows[0].type_ids is not None
    types = torch.zeros((len(rows), longest), dtype=torch.long) if with_types else None
    for i, row in enumerate(rows):
        n = len(row.ids)
        ids[i, :n] = torch.as_tensor(row.ids, dtype=torch.long)
        mask[i, :n] = 1 if row.attention is None else torch.as_tensor(row.attention, dtype=torch.long)
        if types is not None and row.type_ids is not None:
            types[i, :n] = torch.as_tensor(row.type_ids, dtype=torch.long)
    return Collated(ids, mask, types)


def is_oom(exc: BaseException) -> bool:
    import torch

    if isinstance(exc, torch.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def default_budget(device: torch.device | str) -> int:
    kind = device if isinstance(device, str) else device.type
    return DEFAULT_GPU_BATCH_TOKENS if kind == "cuda" else DEFAULT_CPU_BATCH_TOKENS


class BatchStats(msgspec.Struct):
    """What the summary reports about batching."""

    batches: int = 0
    padded_tokens: int = 0
    oom_splits: int = 0
    duplicates: int = 0


class BatchTemplate:
    """Runs a task's forward over rows of token ids; see the module docstring for what it owns."""

    def __init__(
        self,
        *,
        budget: int,
        max_rows: int,
        device: str,
        pad_id: int,
        faults: Faults = NO_FAULTS,
        warn: Callable[[str], None] = lambda message: None,
    ) -> None:
        self.budget = budget
        self.max_rows = max_rows
        self.device = device
        self.pad_id = pad_id
        self.faults = faults
        self.warn = warn
        self.stats = BatchStats()
        self.trim_heap = HeapTrimmer(enabled=str(device).startswith("cpu"))

    def run(
        self,
        items: Sequence[TokenSeq],
        rows: Sequence[int],
        forward: Forward,
        *,
        per_token: bool | tuple[bool, ...] = False,
        out_dtype: type[np.floating] = np.float32,
        stop: StopCheck = lambda: None,
        on_batch: OnBatch = lambda rows, tokens: None,
    ) -> tuple[list[Output | None], Failed]:
        """Each item's output (numpy in `out_dtype`, cast per batch so a window of per-token vectors is held in the
        output's precision; with `per_token` (per head, for a tuple), its first len(ids) positions) in item order,
        and the items that failed. `rows` are the items' input row (or pair) numbers, for the fault hooks."""
        lengths = [len(item.ids) for item in items]
        out: list[Output | None] = [None] * len(items)
        failed: Failed = {}
        overflowed: set[int] = set()
        first, copies = _duplicates(items)
        unique = [j for j in range(len(items)) if first[j] == j]
        self.stats.duplicates += len(items) - len(unique)

        def compute(batch: list[int]) -> None:
            try:
                results = self._forward(
                    items,
                    rows,
                    batch,
                    forward,
                    per_token=per_token,
                    dtype=out_dtype,
                    retry=False,
                    overflowed=overflowed,
                )
            except Exception as exc:
                if not is_oom(exc):
                    raise
                self.free()
                padded = len(batch) * max(lengths[j] for j in batch)
                if len(batch) == 1:
                    failed[batch[0]] = ("OOM_SINGLE_ROW", f"out of memory even alone ({lengths[batch[0]]} tokens)")
                    self.warn(
                        f"out of memory on a single row of {lengths[batch[0]]} tokens; it becomes an "
                        "OOM_SINGLE_ROW error row"
                    )
                    return
                half = len(batch) // 2
                self.budget = min(self.budget, max(1, padded // 2))
                self.stats.oom_splits += 1
                self.warn(
                    f"out of memory on a batch of {len(batch)} rows x {padded // len(batch)} tokens; "
                    f"splitting into {half} + {len(batch) - half}, batch budget now {self.budget} tokens"
                )
                compute(batch[:half])
                compute(batch[half:])
                return
            for j, values in zip(batch, results, strict=True):
                out[j] = values
            on_batch(sum(1 + copies.get(j, 0) for j in batch), sum(lengths[j] * (1 + copies.get(j, 0)) for j in batch))

        for cut in cut_batches([lengths[j] for j in unique], max_tokens=self.budget, max_rows=self.max_rows):
            compute([unique[k] for k in cut])
            self.trim_heap()
            stop()

        for j, values in enumerate(out):
            if values is None or _finite(values):
                continue
            out[j] = None
            if j in overflowed:
                failed[j] = (
                    "NONFINITE_OUTPUT",
                    f"the output has values past the range of {np.dtype(out_dtype).name}; --output-dtype float32 "
                    "keeps them",
                )
                continue
            try:
                (again,) = self._forward(
                    items, rows, [j], forward, per_token=per_token, dtype=out_dtype, retry=True, overflowed=overflowed
                )
            except Exception as exc:
                if not is_oom(exc):
                    raise
                self.free()
                failed[j] = ("OOM_SINGLE_ROW", "out of memory recomputing a non-finite row in float32")
                continue
            if _finite(again):
                out[j] = again
            else:
                failed[j] = ("NONFINITE_OUTPUT", "the model produced NaN or Inf for this row, also in float32 alone")
        for j, source in enumerate(first):
            if source != j:
                out[j] = _copy(out[source])
                if source in failed:
                    failed[j] = failed[source]
        return out, failed

    def _forward(
        self,
        items: Sequence[TokenSeq],
        rows: Sequence[int],
        batch: list[int],
        forward: Forward,
        *,
        per_token: bool | tuple[bool, ...],
        dtype: type[np.floating],
        retry: bool,
        overflowed: set[int],
    ) -> list[Output]:
        """The batch's outputs in `dtype`; items whose finite float32 output does not fit `dtype` go in
        `overflowed`."""
        import torch

        f = self.faults
        collated = collate([items[j] for j in batch], self.pad_id)
        batch_rows = [rows[j] for j in batch]
        f.before_batch(batch_rows, collated.ids.numel())
        with torch.inference_mode():
            raw = forward(collated, retry)
            heads = raw if isinstance(raw, tuple) else (raw,)
            wide = [t.float().cpu().numpy() for t in heads]
        with np.errstate(over="ignore"):  # a value past float16's range: reported as its own row error below
            arrays = [a.astype(dtype, copy=False) for a in wide]
        flags = per_token if isinstance(per_token, tuple) else (per_token,) * len(arrays)
        values: list[Output] = []
        for k, j in enumerate(batch):
            n = len(items[j].ids)
            parts = tuple(a[k, :n] if flag else a[k] for a, flag in zip(arrays, flags, strict=True))
            if dtype is not np.float32 and not all(bool(np.isfinite(p).all()) for p in parts):
                exact = (a[k, :n] if flag else a[k] for a, flag in zip(wide, flags, strict=True))
                if all(bool(np.isfinite(p).all()) for p in exact):
                    overflowed.add(j)
            values.append(parts if isinstance(raw, tuple) else parts[0])
        if f.nan_rows and (f.nan_always or not retry):
            values = [_poisoned(v) if r in f.nan_rows else v for v, r in zip(values, batch_rows, strict=True)]
        if f.slow_batch_seconds:
            time.sleep(f.slow_batch_seconds)
        self.stats.batches += 1
        self.stats.padded_tokens += collated.ids.numel()
        return values

    def free(self) -> None:
        import torch

        gc.collect()
        if self.device == "cuda":
            torch.cuda.empty_cache()


def _duplicates(items: Sequence[TokenSeq]) -> tuple[list[int], dict[int, int]]:
    """For each item, the first item with the same tokens (itself if none), and how many copies each first has."""
    seen: dict[tuple[Any, ...], int] = {}
    first: list[int] = []
    copies: dict[int, int] = {}
    for j, item in enumerate(items):
        type_ids, attention = item.type_ids, item.attention
        key = (
            tuple(item.ids),
            None if type_ids is None else tuple(type_ids),
            None if attention is None else tuple(attention),
        )
        source = seen.setdefault(key, j)
        first.append(source)
        if source != j:
            copies[source] = copies.get(source, 0) + 1
    return first, copies


def _copy(values: Output | None) -> Output | None:
    """A copy, so that a consumer changing one row's arrays in place cannot change its duplicate's."""
    if values is None:
        return None
    if isinstance(values, tuple):
        return tuple(p.copy() for p in values)
    return values.copy()


def _finite(values: Output) -> bool:
    parts = values if isinstance(values, tuple) else (values,)
    return all(bool(np.isfinite(p).all()) for p in parts)


def _poisoned(values: Output) -> Output:
    """The fault hook's NaN output of a row (every head's)."""
    if isinstance(values, tuple):
        return tuple(np.full_like(p, np.nan) for p in values)
    return np.full_like(values, np.nan)
