"""The local driver: what `poolcli <task>` runs, for every task. Feed -> engine -> committed parts (or JSONL on
stdout), with the error budget, signals, the run fingerprint and the summary.

Items of a feed are grouped into deterministic parts of `units_per_part` units; each part is written under a hidden
staging name, validated, and committed atomically with its error rows (`poolcli.io.parts`). A part is committed
as soon as its last item is done. The driver returns an `Outcome`: the summary, and the error that stopped the
run, if one did; it never prints.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import msgspec

from poolcli.config import DriverConfig
from poolcli.drivers.signals import StopFlag
from poolcli.errors import ErrorBudgetExceeded, PoolcliError
from poolcli.faults import NO_FAULTS, Faults
from poolcli.io.parts import Layout, PartMarker, PartStore, PartWriter
from poolcli.io.safety import OutputKind
from poolcli.io.tables import RANGES_KEY, OutputRanges
from poolcli.io.writers import ErrorFileSink, JsonlStdoutSink, default_output
from poolcli.model.identity import fingerprint
from poolcli.version import __version__

if TYPE_CHECKING:
    from poolcli.console import Progress
    from poolcli.drivers.feed import Feed
    from poolcli.engine.base import TaskEngine
    from poolcli.io.readers import Source


class Summary(msgspec.Struct, kw_only=True):
    task: str
    rows_in: int = 0
    rows_out: int = 0
    errors: int = 0
    truncated: int = 0
    chunked_rows: int = 0
    """Rows longer than the model maximum, embedded in chunks."""
    chunks: int = 0
    """Chunks those rows were cut into."""
    tokens: int = 0
    padded_tokens: int = 0
    batches: int = 0
    parts: int = 0
    parts_skipped: int = 0
    rows_computed: int = 0
    oom_splits: int = 0
    duplicates: int = 0
    """Inputs with the same tokens as another in their block, computed once (--verbose)."""
    threads: int = 0
    seconds: float = 0.0
    load_seconds: float = 0.0
    """Time spent loading the model and tokenizer (part of `seconds`)."""
    backend: str = ""
    """What ran the model body (torch, openvino)."""
    convert_seconds: float = 0.0
    """Time spent converting the body for a compiled backend (part of `load_seconds`; 0 when it was cached)."""
    quantization: dict[str, Any] | None = None
    """--quantize int8: the fidelity the run measured (also in the output's metadata)."""
    output_ranges: dict[str, Any] | None = None
    """--output-dtype int8/uint8: what calibrated the ranges (the ranges are in the output's metadata)."""
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
        self.chunked_rows += marker.chunked_rows
        self.chunks += marker.chunks

    def as_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = msgspec.to_builtins(self)
        work = self.seconds - self.load_seconds  # model loading is a fixed cost, not throughput
        d["rows_per_s"] = round(self.rows_computed / work, 1) if work > 0 and self.rows_computed else None
        d["padding_ratio"] = round(1 - self.tokens / self.padded_tokens, 4) if self.padded_tokens else 0.0
        d["seconds"] = round(self.seconds, 3)
        return d


class Outcome(NamedTuple):
    """How a run ended: its summary (also for a stopped run: what it committed) and the error, if any."""

    summary: Summary
    error: PoolcliError | None


def output_kind(output: str) -> OutputKind:
    if output == "-":
        return "stdout"
    if output.endswith(("/", os.sep)) or os.path.isdir(output):
        return "dir"
    return "file"


def default_errors_path(cfg: DriverConfig, *, explicit: bool = True) -> Path:
    """The run's error file: --errors, else beside the output (`explicit=False`: the default even with --errors)."""
    if explicit and cfg.errors is not None:
        return Path(cfg.errors)
    kind = output_kind(cfg.output)
    if kind == "dir":
        return Path(cfg.output) / "_errors.jsonl"
    if kind == "stdout":
        return Path(default_output(cfg.inputs[0], cfg.task).removesuffix(".parquet") + ".errors.jsonl")
    out = Path(cfg.output)
    return out.with_name(out.name.removesuffix(".parquet") + ".errors.jsonl")


def run_identity(engine: TaskEngine, cfg: DriverConfig, sources: list[Source]) -> dict[str, Any]:
    """Everything that decides the output bytes; a resumed run must match it exactly."""
    return {
        "poolcli_version": __version__,
        **engine.identity(),
        "part_rows": cfg.part_rows,
        "keep_columns": list(cfg.keep_columns),
        "text_field": cfg.text_field,
        "id_field": cfg.id_field,
        "input": [entry for s in sources for entry in s.listing()],
    }


def run_local(
    engine: TaskEngine,
    feed: Feed,
    cfg: DriverConfig,
    sources: list[Source],
    progress: Progress,
    faults: Faults = NO_FAULTS,
) -> Outcome:
    """Run one task from its feed to its output; see the module docstring."""
    started = time.monotonic()
    summary = Summary(task=cfg.task, output=cfg.output)
    kind = output_kind(cfg.output)
    loaded = False
    try:
        with StopFlag() as stop:
            if kind == "stdout":
                engine.load()
                loaded = True
                _stream(engine, feed, cfg, progress, stop, summary)
            else:
                identity = run_identity(engine, cfg, sources)
                layout = Layout.for_output(cfg.output, kind)
                store = PartStore(layout, fingerprint(identity), identity, faults)
                store.stale_error_files = [default_errors_path(cfg)]
                # Standard input has no identity to compare, so a run from it always starts afresh.
                from_stdin = any(s.files == ["-"] for s in sources)
                try:
                    if store.open(overwrite=cfg.overwrite or from_stdin):
                        # Finished by an earlier run of this very command: nothing to do, nothing rewritten.
                        summary.status = "already complete"
                        summary.rows_out, summary.errors = store.committed()
                        errors_path = default_errors_path(cfg)
                        if summary.errors and errors_path.is_file():
                            summary.errors_file = str(errors_path)
                    else:
                        _reuse_ranges(engine, store)
                        engine.load()
                        loaded = True
                        if engine.fidelity is not None:
                            # Outside the fingerprint: measured after it was fixed, and not a choice of the user's.
                            # Its timing stays in the summary: parts of a resumed run keep the same bytes.
                            measured = msgspec.to_builtins(engine.fidelity)
                            measured.pop("seconds", None)
                            store.metadata[b"poolcli_quantization"] = msgspec.json.encode(measured)
                        ranges = getattr(engine, "output_ranges", None)
                        if ranges is not None:
                            store.metadata[RANGES_KEY] = msgspec.json.encode(ranges)
                        _parts(engine, feed, cfg, progress, stop, summary, store)
                finally:
                    store.close()
        error: PoolcliError | None = None
    except PoolcliError as exc:
        summary.status = type(exc).__name__
        error = exc
    finally:
        feed.close()
        progress.close()
    if loaded:
        summary.batches = engine.stats.batches
        summary.padded_tokens = engine.stats.padded_tokens
        summary.oom_splits = engine.stats.oom_splits
        summary.duplicates = engine.stats.duplicates
        summary.threads = engine.threads
        summary.load_seconds = engine.load_seconds
        summary.backend = engine.loader.backend.name
        summary.convert_seconds = round(engine.loader.convert_seconds, 3)
        if engine.fidelity is not None:
            summary.quantization = msgspec.to_builtins(engine.fidelity)
        ranges = getattr(engine, "output_ranges", None)
        if ranges is not None:
            summary.output_ranges = {
                "precision": ranges.precision,
                "rows": ranges.rows,
                "vectors": ranges.vectors,
                "source": ranges.source,
            }
    summary.seconds = time.monotonic() - started
    return Outcome(summary, error)


def _reuse_ranges(engine: TaskEngine, store: PartStore) -> None:
    """A resumed int8/uint8 run buckets its vectors in the ranges its committed parts were written with."""
    from poolcli.engine.base import RowEngine

    if not isinstance(engine, RowEngine) or engine.scalar_output is None or not store.done:
        return
    recorded = store.recorded(RANGES_KEY)
    if recorded is not None:
        engine.use_ranges(msgspec.json.decode(recorded, type=OutputRanges))


def _stream(
    engine: TaskEngine, feed: Feed, cfg: DriverConfig, progress: Progress, stop: StopFlag, summary: Summary
) -> None:
    """`-o -`: JSONL on stdout as items finish; nothing to resume."""
    sink = JsonlStdoutSink()
    errors = ErrorFileSink(default_errors_path(cfg), always=cfg.errors is not None)
    try:
        for item in feed.items(skip=lambda part: False):
            assert item.run is not None
            result = item.run(stop.check, lambda rows, tokens: None)
            summary.rows_in += item.n
            errors.write(result.errors)
            summary.errors += len(result.errors)
            if result.table is not None:
                sink.write(result.table)
                summary.rows_out += result.table.num_rows
                summary.rows_computed += result.table.num_rows
            summary.tokens += result.tokens
            summary.truncated += result.truncated
            summary.chunked_rows += result.chunked_rows
            summary.chunks += result.chunks
            progress.update(summary.rows_out, summary.tokens, feed.fraction(0))
            check_budget(cfg, summary)
        check_budget(cfg, summary, final=True)
        committed = errors.commit()
        summary.errors_file = str(committed) if committed else None
    except BaseException:
        # Rows already streamed are final: the error rows of the same stretch of input are published with them.
        published = errors.publish_partial()
        summary.errors_file = str(published) if published else None
        raise


def check_budget(cfg: DriverConfig, summary: Summary, *, final: bool = False) -> None:
    """A rate is judged from 1000 rows on (or at the end), so a bad first row cannot stop a long run."""
    over_count = cfg.max_errors is not None and summary.errors > cfg.max_errors
    over_rate = (
        cfg.max_error_rate is not None
        and summary.rows_in > 0
        and (summary.rows_in >= 1000 or final)
        and summary.errors / summary.rows_in > cfg.max_error_rate
    )
    if over_count or over_rate:
        limit = f"--max-errors {cfg.max_errors}" if over_count else f"--max-error-rate {cfg.max_error_rate}"
        limit += " (or --strict)" if over_count and cfg.max_errors == 0 else ""
        raise ErrorBudgetExceeded(
            f"{summary.errors} error rows exceed {limit}; committed parts are kept, no _SUCCESS",
            hint=f"the bad rows are in {default_errors_path(cfg)}; a rerun resumes",
        )


def _parts(
    engine: TaskEngine,
    feed: Feed,
    cfg: DriverConfig,
    progress: Progress,
    stop: StopFlag,
    summary: Summary,
    store: PartStore,
) -> None:
    errors_path = default_errors_path(cfg)
    done = set(store.done)
    budgets = [m.batch_budget for m in store.done.values() if m.batch_budget is not None]
    if budgets:
        engine.restore_budget(min(budgets))
    per_part = feed.units_per_part
    current: PartWriter | None = None
    seen_done: set[int] = set()
    computed_rows = computed_tokens = 0

    def on_batch(rows: int, tokens: int) -> None:
        nonlocal computed_rows, computed_tokens
        computed_rows += rows
        computed_tokens += tokens
        progress.update(
            summary.rows_out + computed_rows, summary.tokens + computed_tokens, feed.fraction(computed_rows)
        )

    def commit(writer: PartWriter) -> None:
        nonlocal computed_rows, computed_tokens
        writer.batch_budget = engine.budget
        summary.add_part(writer.commit(), computed=True)
        computed_rows = computed_tokens = 0
        check_budget(cfg, summary)

    try:
        for item in feed.items(skip=lambda part: part in done):
            k = item.first // per_part
            if current is not None and current.k != k:
                commit(current)
                current = None
            if item.run is None:
                if k not in seen_done:
                    seen_done.add(k)
                    summary.add_part(store.done[k], computed=False)
                continue
            if current is None:
                current = store.begin(k, item.first, id_column=engine.id_column, value_column=engine.value_column)
            current.add(item.run(stop.check, on_batch), item.n)
            if current.rows_in == per_part:
                # Complete: commit now rather than when the next item arrives, which may be an input error.
                commit(current)
                current = None
            stop.check()
        if current is not None:
            commit(current)
            current = None
        check_budget(cfg, summary, final=True)
        write_errors = summary.errors > 0 or cfg.errors is not None
        store.finish(feed.n_parts(summary.rows_in), engine.empty_schema(), errors_path if write_errors else None)
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
