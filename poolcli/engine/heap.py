"""Freed memory handed back to the system between CPU batches, so a long run does not keep the heap of its largest
batches.

A window's batches grow from short to long rows (they are cut from length-sorted rows), and each longer batch needs
larger activation buffers than the last. glibc's allocator raises its mmap threshold as large blocks are freed, so
these buffers soon come from the heap, where the freed smaller ones stay as fragments it keeps for reuse: measured
with all-MiniLM-L6-v2 on 2 cores, peak RSS rose from 865 MB at 2,000 rows to 1,094 MB at 8,000, most of it heap that
was free but not returned. `malloc_trim(0)` returns the free pages (the middle of the heap too, by madvise) at about
9 ms a call, plus the cost of faulting pages in again for the next batches; it runs at most once a second (`interval`),
which kept most of the saving (docs/performance.md, "Memory") for a few percent of throughput at most. On GPUs the
activations are not malloc's, and other C libraries have no malloc_trim: nothing is done there.
"""

from __future__ import annotations

import ctypes
import sys
import time
from collections.abc import Callable


def _malloc_trim() -> Callable[[], object] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        trim = ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # musl and other C libraries
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return lambda: trim(0)


class HeapTrimmer:
    """Call after each batch; trims when `interval` seconds have passed since the last trim."""

    def __init__(
        self,
        *,
        enabled: bool = True,
        interval: float = 1.0,
        trim: Callable[[], object] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._trim = (trim or _malloc_trim()) if enabled else None
        self._interval = interval
        self._clock = clock
        self._last = float("-inf")
        self.calls = 0

    def __call__(self) -> None:
        if self._trim is None:
            return
        now = self._clock()
        if now - self._last >= self._interval:
            self._last = now
            self._trim()
            self.calls += 1
