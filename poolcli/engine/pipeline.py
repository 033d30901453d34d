"""The embed pipeline: read + tokenize (producer thread) -> schedule -> model -> pool -> commit parts.

Reading and tokenizing run in a producer thread (the Rust tokenizer releases the GIL) while the model runs in the
caller's thread; a bounded queue keeps memory flat. Input rows are grouped into deterministic parts of
`part_rows` rows; each part is read in windows that are sorted by length, cut into batches under the padded-token
budget, written back in input order, and committed atomically (`poolcli.io.parts`). Part boundaries and batch
composition depend only on the input and the options, so a resumed run recomputes exactly the same bytes.
"""

from __future__ import annotations

import gc
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

import msgspec
import numpy as np

from poolcli import __version__
from poolcli.config import RunConfig
from poolcli.console import Progress, print_warning
from poolcli.engine.identity import fingerprint, weights_digest
from poolcli.engine.plan import Plan
from poolcli.engine.scheduler import cut_batches
from poolcli.engine.signals import StopFlag
from poolcli.engine.tokenize import Encoded, TextEncoder
from poolcli.errors import ErrorBudgetExceeded, PoolcliError, UsageError
from poolcli.faults import Faults
from poolcli.io.arrow import EmbedTableBuilder
from poolcli.io.parts import Layout, PartMarker, PartStore, PartWriter
from poolcli.io.readers import Source
from poolcli.io.records import Block, ErrorRow
from poolcli.io.safety import OutputKind
from poolcli.io.writers import ErrorFileSink, JsonlStdoutSink, default_output
from poolcli.vocab import ErrorCode

if TYPE_CHECKING:
    import torch

    from poolcli.engine.runner import ModelRunner

DEFAULT_CPU_BATCH_TOKENS = 2048  # measured best for small encoders on a 2-core CPU (docs/performance.md)
DEFAULT_GPU_BATCH_TOKENS = 65536
_QUEUE_DEPTH = 2
_JOIN_SECONDS = 2.0


class Summary(msgspec.Struct, kw_only=True):
    task: str
    rows_in: int = 0
    rows_out: int = 0
    errors: int = 0
    truncated: int = 0
    tokens: int = 0
    padded_tokens: int = 0
    batches: int = 0
    parts: int = 0
    parts_skipped: int = 0
    rows_computed: int = 0
    oom_splits: int = 0
    threads: int = 0
    seconds: float = 0.0
    load_seconds: float = 0.0
    """Time spent loading the model and tokenizer (part of `seconds`)."""
    output: str = ""
    errors_file: str | None = None
    status: str = "ok"

    def add_part(self, marker: PartMarker, *, computed: bool) -> None:
        """Count a committed part: one computed by this run, or one skipped because an earlier run committed it."""
        self.parts += 1
        self.parts_skipped += 0 if computed else 1
        self.rows_computed += marker.rows_ok if computed else 0
        self.rows_in += marker.rows_in
        self.rows_out += marker.rows_ok
        self.errors += marker.rows_err
        self.tokens += marker.tokens
        self.truncated += marker.truncated

    def finish(self, worker: Any, started: float) -> Summary:
        """The batching statistics of the worker that ran (if one was loaded) and the total time."""
        if worker is not None:
            self.batches = worker.batches
            self.padded_tokens = worker.padded_tokens
            self.oom_splits = worker.loop.oom_splits
            self.threads = worker.threads
        self.seconds = time.monotonic() - started
        return self

    def stopped(self, exc: PoolcliError, started: float) -> None:
        """A run stopping with `exc` still reports what it committed: the summary rides on the error."""
        self.seconds = time.monotonic() - started
        self.status = type(exc).__name__
        exc.summary = self.as_dict()  # type: ignore[attr-defined]

    def as_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = msgspec.to_builtins(self)
        work = self.seconds - self.load_seconds  # model loading is a fixed cost, not throughput
        d["rows_per_s"] = round(self.rows_computed / work, 1) if work > 0 and self.rows_computed else None
        d["padding_ratio"] = round(1 - self.tokens / self.padded_tokens, 4) if self.padded_tokens else 0.0
        d["seconds"] = round(self.seconds, 3)
        return d


def output_kind(output: str) -> OutputKind:
    if output == "-":
        return "stdout"
    if output.endswith(("/", os.sep)) or os.path.isdir(output):
        return "dir"
    return "file"


def default_errors_path(run: RunConfig) -> Path:
    if run.errors is not None:
        return Path(run.errors)
    kind = output_kind(run.output)
    if kind == "dir":
        return Path(run.output) / "_errors.jsonl"
    if kind == "stdout":
        return Path(default_output(run.inputs[0], run.task).removesuffix(".parquet") + ".errors.jsonl")
    out = Path(run.output)
    return out.with_name(out.name.removesuffix(".parquet") + ".errors.jsonl")


class _Item(NamedTuple):
    block: Block
    encoded: list[Encoded] | None
    """None for a block of a part that is already committed (it is read, not tokenized)."""
    position: int
    """How far into the input the reader was when the block ended (in `Source.total` units)."""


class _Producer(threading.Thread):
    """Reads blocks and tokenizes them ahead of the model; errors travel through the queue."""

    def __init__(self, source: Source, encoder: TextEncoder, window_rows: int, skip: Callable[[Block], bool]):
        super().__init__(name="poolcli-reader", daemon=True)
        self.source = source
        self.encoder = encoder
        self.window_rows = window_rows
        self.skip = skip
        self.out: queue.Queue[_Item | BaseException | None] = queue.Queue(_QUEUE_DEPTH)
        self.stop = threading.Event()

    def run(self) -> None:
        try:
            for block in self.source.blocks(self.window_rows):
                encoded = None if self.skip(block) else (self.encoder.encode(block.texts) if block.texts else [])
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

    def items(self) -> Iterator[_Item]:
        while True:
            item = self.out.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item


def _is_oom(exc: BaseException) -> bool:
    import torch

    if isinstance(exc, torch.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


class BatchLoop:
    """Cuts rows into batches under the padded-token budget and runs them, surviving out-of-memory errors.

    A batch that runs out of memory is split in halves and each half retried (down to a single row, which then
    fails alone as OOM_SINGLE_ROW); the budget is lowered to half the failed batch so later batches fit. `budget`
    is the state a resumed run restores.
    """

    def __init__(self, budget: int, max_rows: int, *, device: str, quiet: bool) -> None:
        self.budget = budget
        self.max_rows = max_rows
        self.device = device
        self.quiet = quiet
        self.oom_splits = 0

    @classmethod
    def for_run(cls, run: RunConfig, device: str, *, quiet: bool) -> BatchLoop:
        """The run's loop: its --max-batch-tokens, or the device's default budget."""
        budget = run.max_batch_tokens or (DEFAULT_GPU_BATCH_TOKENS if device == "cuda" else DEFAULT_CPU_BATCH_TOKENS)
        return cls(budget, run.max_batch_size, device=device, quiet=quiet)

    def run(
        self,
        lengths: list[int],
        forward: Callable[[list[int]], None],
        stop: StopFlag,
        on_batch: Callable[[int, int], None],
    ) -> dict[int, tuple[ErrorCode, str]]:
        """Calls `forward(batch)` for every batch (indices into `lengths`); returns the rows that failed."""
        failed: dict[int, tuple[ErrorCode, str]] = {}

        def compute(batch: list[int]) -> None:
            try:
                forward(batch)
            except Exception as exc:
                if not _is_oom(exc):
                    raise
                self.free()
                padded = len(batch) * max(lengths[j] for j in batch)
                if len(batch) == 1:
                    failed[batch[0]] = ("OOM_SINGLE_ROW", f"out of memory even alone ({lengths[batch[0]]} tokens)")
                    print_warning(
                        f"out of memory on a single row of {lengths[batch[0]]} tokens; it becomes an "
                        "OOM_SINGLE_ROW error row",
                        quiet=self.quiet,
                    )
                    return
                half = len(batch) // 2
                self.budget = min(self.budget, max(1, padded // 2))
                self.oom_splits += 1
                print_warning(
                    f"out of memory on a batch of {len(batch)} rows x {padded // len(batch)} tokens; "
                    f"splitting into {half} + {len(batch) - half}, batch budget now {self.budget} tokens",
                    quiet=self.quiet,
                )
                compute(batch[:half])
                compute(batch[half:])
                return
            on_batch(len(batch), sum(lengths[j] for j in batch))

        for batch in cut_batches(lengths, max_tokens=self.budget, max_rows=self.max_rows):
            compute(batch)
            stop.check()
        return failed

    def free(self) -> None:
        import torch

        gc.collect()
        if self.device == "cuda":
            torch.cuda.empty_cache()


class Embedder:
    """Token ids of one window -> vectors, batch by batch, with OOM splitting and the fp32 retry of NaN rows."""

    def __init__(self, run: RunConfig, plan: Plan, faults: Faults, *, quiet: bool) -> None:
        from poolcli.engine.runner import ModelRunner, configure_threads, load_projector
        from poolcli.pooler.dispatch import EmbedPooler

        self.run = run
        self.plan = plan
        self.faults = faults
        self.quiet = quiet
        model = plan.model
        self.runner = ModelRunner(model, device=run.device, dtype=run.dtype, trust_remote_code=run.trust_remote_code)
        self.threads = configure_threads(run.threads, self.runner.device)
        self.encoder = TextEncoder(plan)
        projector = load_projector(Path(model.root), model.dense)
        if projector is not None:
            projector = projector.to(self.runner.device)
        self.pooler = EmbedPooler(
            plan.pooling.modes,
            projector=projector,
            dimensions=plan.params.dimensions,
            normalize=plan.params.normalize,
            skip_prompt_tokens=self.encoder.prompt_tokens,
        )
        self.dim = plan.params.dimensions or plan.embedding_size
        self.loop = BatchLoop.for_run(run, self.runner.device.type, quiet=quiet)
        self._fp32: ModelRunner | None = None
        self.batches = 0
        self.padded_tokens = 0

    def _forward(self, runner: ModelRunner, seqs: list[list[int]], rows: list[int], *, retry: bool) -> torch.Tensor:
        import torch

        from poolcli.engine.runner import collate

        f = self.faults
        ids, mask = collate(seqs, self.encoder.pad_id)
        f.before_batch(rows, ids.numel())
        with torch.inference_mode():
            hidden = runner.hidden_states(ids, mask)
            pooled = self.pooler(hidden, mask.to(runner.device)).float()
            if f.nan_rows and (f.nan_always or not retry):
                for j, row in enumerate(rows):
                    if row in f.nan_rows:
                        pooled[j] = float("nan")
        if f.slow_batch_seconds:
            time.sleep(f.slow_batch_seconds)
        self.batches += 1
        self.padded_tokens += ids.numel()
        return pooled.cpu()

    def embed(
        self, seqs: list[list[int]], rows: list[int], stop: StopFlag, on_batch: Callable[[int, int], None]
    ) -> tuple[np.ndarray, dict[int, tuple[ErrorCode, str]]]:
        """Vectors for `seqs` (in their order) and the failures {index: (code, message)}."""
        vectors = np.zeros((len(seqs), self.dim), dtype=np.float32)

        def forward(batch: list[int]) -> None:
            out = self._forward(self.runner, [seqs[j] for j in batch], [rows[j] for j in batch], retry=False)
            vectors[batch] = out.numpy()

        failed = self.loop.run([len(s) for s in seqs], forward, stop, on_batch)

        bad = [j for j in np.flatnonzero(~np.isfinite(vectors).all(axis=1)).tolist() if j not in failed]
        for j in bad:
            try:
                out = self._forward(self._fp32_runner(), [seqs[j]], [rows[j]], retry=True)
            except Exception as exc:
                if not _is_oom(exc):
                    raise
                self.loop.free()
                failed[j] = ("OOM_SINGLE_ROW", "out of memory recomputing a non-finite row in float32")
                continue
            if bool(np.isfinite(out.numpy()).all()):
                vectors[j] = out.numpy()[0]
            else:
                failed[j] = ("NONFINITE_OUTPUT", "the model produced NaN or Inf for this row, also in float32 alone")
        return vectors, failed

    def _fp32_runner(self) -> ModelRunner:
        import torch

        from poolcli.engine.runner import ModelRunner

        if self.runner.dtype == torch.float32:
            return self.runner
        if self._fp32 is None:
            run = self.run
            self._fp32 = ModelRunner(
                self.plan.model, device=run.device, dtype="float32", trust_remote_code=run.trust_remote_code
            )
        return self._fp32


class _Window(NamedTuple):
    table: Any
    errors: list[ErrorRow]
    tokens: int
    truncated: int


def _process_window(
    item: _Item,
    embedder: RowWorker,
    builder: EmbedTableBuilder,
    run: RunConfig,
    source: Source,
    stop: StopFlag,
    on_batch: Callable[[int, int], None],
) -> _Window:
    block, encoded = item.block, item.encoded
    assert encoded is not None
    plan = embedder.plan
    bad = list(block.errors)
    keep = list(range(len(block.texts)))
    if plan.on_too_long == "error":
        keep = []
        for i, enc in enumerate(encoded):
            if enc.truncated:
                bad.append(
                    ErrorRow(
                        id=block.ids[i],
                        source=block.sources[i],
                        line=block.lines[i],
                        code="TOO_LONG",
                        row=block.rows[i],
                        message=f"text is longer than {plan.max_tokens} tokens (--on-too-long error)",
                    )
                )
            else:
                keep.append(i)
    vectors, failed = embedder.embed([encoded[i].ids for i in keep], [block.rows[i] for i in keep], stop, on_batch)
    if failed:
        for j, (code, message) in failed.items():
            i = keep[j]
            bad.append(
                ErrorRow(
                    id=block.ids[i],
                    source=block.sources[i],
                    line=block.lines[i],
                    code=code,
                    row=block.rows[i],
                    message=message,
                )
            )
        ok = [j for j in range(len(keep)) if j not in failed]
        vectors = vectors[ok]
        keep = [keep[j] for j in ok]
    bad.sort(key=lambda e: e.row if e.row is not None else -1)
    n_tokens = [len(encoded[i].ids) for i in keep]
    truncated = [encoded[i].truncated for i in keep]
    table = (
        builder.table(
            [block.ids[i] for i in keep],
            vectors,
            n_tokens,
            truncated,
            {c: [block.keep[c][i] for i in keep] for c in run.keep_columns},
            encoded=[encoded[i] for i in keep],
            texts=[block.texts[i] for i in keep],
        )
        if keep
        else None
    )
    return _Window(table, bad, sum(n_tokens), sum(truncated))


def run_embed(run: RunConfig, plan: Plan, source: Source, progress: Progress, faults: Faults | None = None) -> Summary:
    return run_rows(run, plan, source, progress, faults)


class RowWorker(Protocol):
    """What the row pipeline drives: token ids of one window -> one output vector per row (see `Embedder`)."""

    plan: Plan
    encoder: TextEncoder
    loop: BatchLoop
    batches: int
    padded_tokens: int
    threads: int

    def embed(
        self, seqs: list[list[int]], rows: list[int], stop: StopFlag, on_batch: Callable[[int, int], None]
    ) -> tuple[np.ndarray, dict[int, tuple[ErrorCode, str]]]: ...


def run_rows(
    run: RunConfig,
    plan: Plan,
    source: Source,
    progress: Progress,
    faults: Faults | None = None,
    *,
    describe: dict[str, Any] | None = None,
    make_builder: Callable[[dict[bytes, bytes]], EmbedTableBuilder] | None = None,
    make_worker: Callable[[Faults], RowWorker] | None = None,
) -> Summary:
    """One text per input row -> one output row, in committed parts (embed by default; classify passes its own
    plan description, table builder and worker)."""
    from poolcli.engine.runner import resolve_device, resolve_dtype

    faults = faults if faults is not None else Faults.from_env()
    started = time.monotonic()
    summary = Summary(task=run.task, output=run.output)
    if run.part_rows % run.window_rows and run.part_rows > run.window_rows:
        raise UsageError(f"--part-rows ({run.part_rows}) must be a multiple of --window-rows ({run.window_rows})")
    window_rows = min(run.window_rows, run.part_rows)
    model = plan.model
    # Everything that decides the output bytes; a resumed run must match it exactly.
    identity = {
        "poolcli_version": __version__,
        "task": plan.task,
        "model": model.name,
        "model_weights_sha256": weights_digest(Path(model.root)),
        "plan": describe if describe is not None else plan.describe(),
        "dtype": str(resolve_dtype(run.dtype, resolve_device(run.device))).removeprefix("torch."),
        "output_dtype": run.output_dtype,
        "part_rows": run.part_rows,
        "keep_columns": list(run.keep_columns),
        "text_field": run.text_field,
        "id_field": run.id_field,
        "input": source.listing(),
    }
    run_fingerprint = fingerprint(identity)
    metadata = {b"poolcli": msgspec.json.encode({**identity, "fingerprint": run_fingerprint})}
    if make_builder is not None:
        builder = make_builder(metadata)
    else:
        dim = plan.params.dimensions or plan.embedding_size
        builder = EmbedTableBuilder(dim, run.output_dtype, run.keep_columns, metadata)

    def load() -> RowWorker:
        t = time.monotonic()
        worker = make_worker(faults) if make_worker is not None else Embedder(run, plan, faults, quiet=run.quiet)
        summary.load_seconds = round(time.monotonic() - t, 3)
        return worker

    kind = output_kind(run.output)
    embedder: RowWorker | None = None
    try:
        with StopFlag() as stop:
            if kind == "stdout":
                embedder = load()
                _stream(run, embedder, builder, source, progress, stop, summary, window_rows)
            else:
                layout = Layout.for_output(run.output, "dir" if kind == "dir" else "file")
                store = PartStore(layout, run_fingerprint, identity, faults)
                store.stale_error_files = [default_errors_path(run)]
                # Standard input has no identity to compare, so a run from it always starts afresh.
                from_stdin = source.files == ["-"]
                try:
                    if store.open(overwrite=run.overwrite or from_stdin):
                        # Finished by an earlier run of this very command: nothing to do, nothing rewritten.
                        summary.status = "already complete"
                        summary.rows_out = store.committed_rows()
                    else:
                        embedder = load()
                        _parts(run, embedder, builder, source, progress, stop, summary, store, window_rows)
                finally:
                    store.close()
    except PoolcliError as exc:
        summary.stopped(exc, started)
        raise
    finally:
        progress.close()
    return summary.finish(embedder, started)


def _progress_fraction(source: Source, position: float) -> float | None:
    return position / source.total if source.total else None


def _stream(
    run: RunConfig,
    embedder: RowWorker,
    builder: EmbedTableBuilder,
    source: Source,
    progress: Progress,
    stop: StopFlag,
    summary: Summary,
    window_rows: int,
) -> None:
    """`-o -`: JSONL on stdout as windows finish; nothing to resume."""
    sink = JsonlStdoutSink()
    errors = ErrorFileSink(default_errors_path(run), always=run.errors is not None)
    producer = _Producer(source, embedder.encoder, window_rows, skip=lambda b: False)
    producer.start()
    try:
        for item in producer.items():
            summary.rows_in += item.block.n_rows
            window = _process_window(item, embedder, builder, run, source, stop, lambda n, t: None)
            errors.write(window.errors)
            summary.errors += len(window.errors)
            if window.table is not None:
                sink.write(window.table)
                summary.rows_out += window.table.num_rows
                summary.rows_computed += window.table.num_rows
            summary.tokens += window.tokens
            summary.truncated += window.truncated
            progress.update(summary.rows_out, summary.tokens, _progress_fraction(source, item.position))
            _check_budget(run, summary)
        _check_budget(run, summary, final=True)
        committed = errors.commit()
        summary.errors_file = str(committed) if committed else None
    except BaseException:
        # Rows already streamed are final: the error rows of the same stretch of input are published with them.
        published = errors.publish_partial()
        summary.errors_file = str(published) if published else None
        raise
    finally:
        producer.close()


def _check_budget(run: RunConfig, summary: Summary, *, final: bool = False) -> None:
    """A rate is judged from 1000 rows on (or at the end), so a bad first row cannot stop a long run."""
    over_count = run.max_errors is not None and summary.errors > run.max_errors
    over_rate = (
        run.max_error_rate is not None
        and summary.rows_in > 0
        and (summary.rows_in >= 1000 or final)
        and summary.errors / summary.rows_in > run.max_error_rate
    )
    if over_count or over_rate:
        limit = f"--max-errors {run.max_errors}" if over_count else f"--max-error-rate {run.max_error_rate}"
        raise ErrorBudgetExceeded(
            f"{summary.errors} error rows exceed {limit}; committed parts are kept, no _SUCCESS",
            hint="see the error file; rerun resumes",
        )


def _parts(
    run: RunConfig,
    embedder: RowWorker,
    builder: EmbedTableBuilder,
    source: Source,
    progress: Progress,
    stop: StopFlag,
    summary: Summary,
    store: PartStore,
    window_rows: int,
) -> None:
    errors_path = default_errors_path(run)
    done = set(store.done)
    budgets = [m.batch_budget for m in store.done.values() if m.batch_budget is not None]
    if budgets:
        embedder.loop.budget = min(embedder.loop.budget, *budgets)
    part_rows = run.part_rows
    producer = _Producer(source, embedder.encoder, window_rows, skip=lambda b: b.first_row // part_rows in done)
    current: PartWriter | None = None
    seen_done: set[int] = set()
    position = 0.0
    computed_rows = computed_tokens = 0

    def on_batch(rows: int, tokens: int) -> None:
        nonlocal computed_rows, computed_tokens
        computed_rows += rows
        computed_tokens += tokens
        progress.update(
            summary.rows_out + computed_rows, summary.tokens + computed_tokens, _progress_fraction(source, position)
        )

    def commit(writer: PartWriter) -> None:
        nonlocal computed_rows, computed_tokens
        writer.batch_budget = embedder.loop.budget
        summary.add_part(writer.commit(), computed=True)
        computed_rows = computed_tokens = 0
        _check_budget(run, summary)

    producer.start()
    try:
        for item in producer.items():
            block = item.block
            k = block.first_row // part_rows
            if current is not None and current.k != k:
                commit(current)
                current = None
            if k in done:
                if k not in seen_done:
                    seen_done.add(k)
                    summary.add_part(store.done[k], computed=False)
                builder.observe(block)
                position = item.position
                continue
            if current is None:
                current = store.begin(k, block.first_row, value_column=builder.value_column)
            window = _process_window(item, embedder, builder, run, source, stop, on_batch)
            if window.table is not None:
                current.write(window.table)
            current.errors.extend(window.errors)
            current.rows_in += block.n_rows
            current.tokens += window.tokens
            current.truncated += window.truncated
            position = item.position
            if current.rows_in == part_rows:
                # Complete: commit now rather than when the next block arrives, which may be an input error.
                commit(current)
                current = None
            stop.check()
        if current is not None:
            commit(current)
            current = None
        _check_budget(run, summary, final=True)
        n_parts = -(-summary.rows_in // part_rows)
        schema = builder.schema or builder.empty_schema()
        write_errors = summary.errors > 0 or run.errors is not None
        store.finish(n_parts, schema, errors_path if write_errors else None)
        summary.errors_file = str(errors_path) if write_errors else None
    except ErrorBudgetExceeded:
        # Over the error budget: the committed parts and their error rows stay, visible in the error file.
        if current is not None:
            current.abort()
            current = None
        store.finish_errors_only(errors_path)
        summary.errors_file = str(errors_path)
        raise
    finally:
        if current is not None:
            current.abort()
        producer.close()
