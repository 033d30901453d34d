"""Feeds: what a driver loops over. A feed cuts a task's input into work items of consecutive units (input rows,
pairs or rerank queries), each tied to the engine call that computes it, and says how units group into parts.

- `RowFeed`: blocks of input rows read and tokenized in a background thread (the Rust tokenizer releases the GIL)
  while the model runs in the caller's thread; a bounded queue keeps memory flat. Blocks of committed parts are
  read but not tokenized.
- `PairFeed`: the parts of a score or rerank job, one item each (the pairs are in memory already).

Part boundaries and item boundaries depend only on the input and the options, never on timing, so a resumed run
recomputes exactly the same bytes.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, NamedTuple, Protocol

from poolcli.engine.base import BlockResult
from poolcli.engine.batch import OnBatch, StopCheck

if TYPE_CHECKING:
    from poolcli.engine.base import RowEngine
    from poolcli.engine.score import ScoreEngine
    from poolcli.io.readers import Source
    from poolcli.io.records import Block, Encoded

_QUEUE_DEPTH = 2
_JOIN_SECONDS = 2.0


class WorkItem(NamedTuple):
    first: int
    """The first unit (input row, pair or query) the item covers."""
    n: int
    """Units covered, good and bad."""
    run: Callable[[StopCheck, OnBatch], BlockResult] | None
    """Computes the item; None for an item of a part that an earlier run committed."""


class Feed(Protocol):
    units_per_part: int

    def items(self, skip: Callable[[int], bool]) -> Iterator[WorkItem]:
        """Every item in order; `skip(part)` says a part is committed already (its items are not computed)."""
        ...

    def n_parts(self, units: int) -> int:
        """How many parts `units` units make (the job commit needs every one of them)."""
        ...

    def fraction(self, computed: int) -> float | None:
        """How far through the input the run is, `computed` units into the current item (None: unknown)."""
        ...

    def close(self) -> None: ...


class _Item(NamedTuple):
    block: Block
    encoded: list[Encoded] | None
    position: int


class _Producer(threading.Thread):
    """Reads blocks and tokenizes them ahead of the model; errors travel through the queue."""

    def __init__(self, source: Source, engine: RowEngine, window_rows: int, skip: Callable[[Block], bool]) -> None:
        super().__init__(name="poolcli-reader", daemon=True)
        self.source = source
        self.engine = engine
        self.window_rows = window_rows
        self.skip = skip
        self.out: queue.Queue[_Item | BaseException | None] = queue.Queue(_QUEUE_DEPTH)
        self.stop = threading.Event()

    def run(self) -> None:
        try:
            for block in self.source.blocks(self.window_rows):
                encoded = None if self.skip(block) else self.engine.prepare(block.texts)
                if not self._put(_Item(block, encoded, self.source.done)):
                    return
            self._put(None)
        except BaseException as exc:  # handed to the consumer, which re-raises it
            self._put(exc)

    def _put(self, item: _Item | BaseException | None) -> bool:
        while not self.stop.is_set():
            try:
                self.out.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def close(self) -> None:
        """Stop reading and wait for the thread: a reader (or a native library under it) must not outlive the
        run, or interpreter shutdown can abort the process. A thread blocked on a read that never returns (an
        idle stdin) is left to `poolcli.app.main`, which then leaves without finalizing the interpreter."""
        self.stop.set()
        if self.is_alive():
            self.join(timeout=_JOIN_SECONDS)


class RowFeed:
    """Windows of `window_rows` input rows; `units_per_part` must be a multiple of it (checked by the driver)."""

    def __init__(self, source: Source, engine: RowEngine, *, window_rows: int, part_rows: int) -> None:
        self.source = source
        self.engine = engine
        self.window_rows = window_rows
        self.units_per_part = part_rows
        self.position = 0
        self._producer: _Producer | None = None

    def items(self, skip: Callable[[int], bool]) -> Iterator[WorkItem]:
        per_part = self.units_per_part
        self.engine.encoder  # noqa: B018 - load the tokenizer here, not in the reader thread
        producer = _Producer(self.source, self.engine, self.window_rows, lambda b: skip(b.first_row // per_part))
        self._producer = producer
        producer.start()
        while True:
            item = producer.out.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            block, encoded = item.block, item.encoded
            self.position = item.position
            if encoded is None:
                self.engine.observe(block)
                yield WorkItem(block.first_row, block.n_rows, None)
                continue

            def run(
                stop: StopCheck, on_batch: OnBatch, block: Block = block, encoded: list[Encoded] = encoded
            ) -> BlockResult:
                return self.engine.run(block, encoded, stop=stop, on_batch=on_batch)

            yield WorkItem(block.first_row, block.n_rows, run)

    def n_parts(self, units: int) -> int:
        return -(-units // self.units_per_part)

    def fraction(self, computed: int) -> float | None:
        total = self.source.total
        return self.position / total if total else None

    def close(self) -> None:
        if self._producer is not None:
            self._producer.close()


class PairFeed:
    """One item per part of a score or rerank job."""

    def __init__(self, engine: ScoreEngine, *, part_rows: int) -> None:
        self.engine = engine
        units = engine.units(part_rows)
        self.n = units.n
        self.units_per_part = units.per_part
        self.total_pairs = len(engine.job.pairs)
        self.done_pairs = 0

    def items(self, skip: Callable[[int], bool]) -> Iterator[WorkItem]:
        per = self.units_per_part
        for k in range(self.n_parts(self.n)):
            a, b = k * per, min(self.n, (k + 1) * per)
            if skip(k):
                self.done_pairs += self.engine.pairs_in(a, b)
                yield WorkItem(a, b - a, None)
                continue

            def run(stop: StopCheck, on_batch: OnBatch, a: int = a, b: int = b) -> BlockResult:
                result = self.engine.run_units(a, b, stop=stop, on_batch=on_batch)
                self.done_pairs += self.engine.pairs_in(a, b)
                return result

            yield WorkItem(a, b - a, run)

    def n_parts(self, units: int) -> int:
        return max(1, -(-self.n // self.units_per_part))

    def fraction(self, computed: int) -> float | None:
        return (self.done_pairs + computed) / self.total_pairs if self.total_pairs else None

    def close(self) -> None:
        pass
