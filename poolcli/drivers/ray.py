"""The Ray driver: the same task engines on an actor pool of a Ray cluster, every row exactly once.

`--engine ray` plans the input into deterministic units on the driver (row tasks: spans of the input files,
`poolcli.io.spans`; score/rerank: stretches of the pair job, which travels through the object store), and Ray Data
maps them through an `ActorPoolStrategy` pool. Each actor builds one engine from the request (model loaded once,
torch threads = its CPUs), reads its span itself with poolcli's readers (so a bad row costs only itself, with the
same row numbers and ids as a local run), and commits the span as one part: staged under a name of its own,
validated, renamed, then its done-marker (`poolcli.io.parts`). The driver holds the output's lock, checks the
fingerprint, skips the units whose markers are valid, and does the job commit once every part is in place.

Exactly once: a part's name and bytes depend only on the input and the options, so a task that Ray retries after
its actor died rewrites the same part, and a rerun after a failed job recomputes only the parts without a valid
marker. Ray's own retries (actors restarted, tasks resubmitted) finish a job that loses a worker.

`map_dataset` is the other entry: a stage for a user's own `ray.data` pipeline (no files, no parts).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from poolcli.config import DriverConfig, RayConfig
from poolcli.drivers.local import Outcome, Summary, check_budget, default_errors_path, output_kind, run_identity
from poolcli.drivers.signals import StopFlag
from poolcli.errors import ConfigError, DataError, ErrorBudgetExceeded, InternalError, PoolcliError, UsageError
from poolcli.faults import NO_FAULTS, Faults
from poolcli.io.parts import Layout, PartMarker, PartStore
from poolcli.io.readers import Settled, Source
from poolcli.io.rows import InputSpec
from poolcli.io.spans import Span, plan_spans
from poolcli.model.identity import fingerprint
from poolcli.request import Request

if TYPE_CHECKING:
    from poolcli.console import Progress
    from poolcli.engine.base import TaskEngine
    from poolcli.io.pairs import PairJob

INSTALL = "pip install 'poolcli[ray]'"


class Unit(msgspec.Struct, frozen=True, kw_only=True):
    """One part's work: a span of the input (row tasks) or units [start, stop) of a pair job."""

    index: int
    first_row: int
    span: Span | None = None
    start: int = 0
    stop: int = 0


class WorkerSetup(msgspec.Struct, frozen=True, kw_only=True):
    """What every actor needs to build its engine and commit parts, sent once (small: no data)."""

    request: Request
    spec: InputSpec | None
    """The input as the driver opened it (with the id column it found), for row tasks."""
    input_format: str
    roots: tuple[str, ...]
    settled: Settled | None
    schema: bytes | None
    """The output schema the driver fixed from the input's first rows (Arrow IPC), so every part types its kept
    columns the same way."""
    cwd: str
    """The driver's working directory: relative input, preset and pooler-config paths mean the same in an actor
    (on shared storage mounted at the same path)."""
    output_kind: str
    output: str
    fingerprint: str
    identity: bytes
    window_rows: int
    faults: Faults


def import_ray() -> Any:
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise UsageError(f"--engine ray needs Ray, which is not installed: {INSTALL}") from None
    return ray


def ray_store(
    req: Request, engine: TaskEngine, sources: list[Source], job: PairJob | None, cfg: DriverConfig, faults: Faults
) -> tuple[Any, PartStore, int, int]:
    """What a Ray run checks before it opens its output (also a dry run's): Ray, the output kind, the block and
    window sizes, the actors' precision; returns Ray, the output's store (not opened), the rows per part and the
    window."""
    ray = import_ray()
    assert cfg.ray is not None
    rc: RayConfig = cfg.ray
    kind = output_kind(cfg.output)
    if kind == "stdout":
        raise UsageError("--engine ray writes a Parquet file or dataset directory, not -o -")
    if job is None and "-" in sources[0].files:
        raise UsageError("--engine ray cannot cut standard input into parts: give it a file")
    block_rows = rc.batch_rows
    window = min(engine.config.window_rows, block_rows)
    if job is None and block_rows % window:
        raise UsageError(f"--batch-rows ({block_rows}) must be a multiple of --window-rows ({window})")
    _fix_precision(req, engine, rc)
    identity = run_identity(engine, cfg, sources) | {"part_rows": block_rows, "driver": "ray"}
    layout = Layout.for_output(str(Path(cfg.output).absolute()) + ("/" if kind == "dir" else ""), kind)
    store = PartStore(layout, fingerprint(identity), identity, faults)
    store.stale_error_files = [default_errors_path(cfg)]
    return ray, store, block_rows, window


def run_ray(
    req: Request,
    engine: TaskEngine,
    sources: list[Source],
    job: PairJob | None,
    cfg: DriverConfig,
    progress: Progress,
    faults: Faults = NO_FAULTS,
) -> Outcome:
    """Run one task on a Ray cluster, from its input to its committed output; see the module docstring."""
    started = time.monotonic()
    ray, store, block_rows, window = ray_store(req, engine, sources, job, cfg, faults)
    assert cfg.ray is not None
    rc: RayConfig = cfg.ray
    summary = Summary(task=cfg.task, output=cfg.output)
    layout, digest, identity = store.layout, store.fingerprint, store.identity
    error: PoolcliError | None = None
    started_ray = False
    try:
        with StopFlag() as stop:
            try:
                if store.open(overwrite=cfg.overwrite):
                    summary.status = "already complete"
                    summary.rows_out, summary.errors = store.committed()
                    errors_path = default_errors_path(cfg)
                    if summary.errors and errors_path.is_file():
                        summary.errors_file = str(errors_path)
                else:
                    # Planned only when there is work: a finished output reruns without reading its input.
                    settled, units = _plan(engine, sources, job, block_rows, window)
                    for k in sorted(store.done):
                        summary.add_part(store.done[k], computed=False)
                    todo = [u for u in units if u.index not in store.done]
                    if todo:
                        started_ray = _connect(ray, rc)
                        stop.reinstall()
                        _check_resources(ray, rc)
                        setup = _setup(req, engine, sources, settled, layout, digest, identity, window, faults, rc)
                        job_ref = [ray.put(job)] if job is not None else None
                        for marker in _map(ray, rc, setup, todo, job_ref):
                            # The worker validated the part before its marker; no need to read it back here.
                            store.done[marker.part] = marker
                            summary.add_part(marker, computed=True)
                            progress.update(summary.rows_out, summary.tokens, summary.parts / max(1, len(units)))
                            check_budget(cfg, summary)
                            stop.check()
                    check_budget(cfg, summary, final=True)
                    write_errors = summary.errors > 0 or cfg.errors is not None
                    errors_path = default_errors_path(cfg)
                    store.finish(len(units), engine.empty_schema(), errors_path if write_errors else None)
                    summary.errors_file = str(errors_path) if write_errors else None
            except ErrorBudgetExceeded:
                store.finish_errors_only(default_errors_path(cfg))
                summary.errors_file = str(default_errors_path(cfg))
                raise
            finally:
                store.close()
    except PoolcliError as exc:
        summary.status = type(exc).__name__
        error = exc
    finally:
        progress.close()
        if started_ray:
            ray.shutdown()
    summary.threads = req.threads or max(1, int(rc.cpus_per_worker))
    summary.seconds = time.monotonic() - started
    return Outcome(summary, error)


def _plan(
    engine: TaskEngine, sources: list[Source], job: PairJob | None, block_rows: int, window: int
) -> tuple[Settled | None, list[Unit]]:
    """The units of work, in input order: spans of the input (row tasks) or stretches of the pair job."""
    if job is None:
        from poolcli.engine.base import RowEngine

        assert isinstance(engine, RowEngine)
        source = sources[0]
        settled, first = source.settle(window)
        if first is not None:
            engine.observe(first)  # the kept columns' types, from the first rows, as a local run fixes them
        return settled, [Unit(index=s.index, first_row=s.first_row, span=s) for s in plan_spans(source, block_rows)]
    from poolcli.engine.score import ScoreEngine

    assert isinstance(engine, ScoreEngine)
    ranges = engine.units(block_rows).ranges()
    return None, [Unit(index=k, first_row=a, start=a, stop=b) for k, (a, b) in enumerate(ranges)]


def _fix_precision(req: Request, engine: TaskEngine, rc: RayConfig) -> None:
    """The device the actors compute on decides `--device auto` and `--dtype auto`, not the driver's machine: GPU
    actors with --gpus-per-worker, CPU actors without (an actor given no GPU must not take one). The identity then
    records that precision; each actor checks it resolves the same (a GPU without bfloat16 would not)."""
    import torch

    if req.device == "auto":
        engine.loader.retarget(torch.device("cuda" if rc.gpus_per_worker > 0 else "cpu"))


def _check_resources(ray: Any, rc: RayConfig) -> None:
    """An actor no node can hold would wait forever in Ray's queue: refuse it instead."""
    total = ray.cluster_resources()
    if rc.gpus_per_worker > total.get("GPU", 0):
        raise UsageError(f"--gpus-per-worker {rc.gpus_per_worker:g}: the Ray cluster has {total.get('GPU', 0):g} GPUs")
    if rc.cpus_per_worker > total.get("CPU", 0):
        raise UsageError(f"--cpus-per-worker {rc.cpus_per_worker:g}: the Ray cluster has {total.get('CPU', 0):g} CPUs")


def _connect(ray: Any, rc: RayConfig) -> bool:
    """Join the cluster (--ray-address, RAY_ADDRESS) or start a local one; True when this run started it (and
    so shuts it down). A process already connected (a test, a notebook) keeps its connection."""
    if ray.is_initialized():
        return False
    address = rc.address or os.environ.get("RAY_ADDRESS")
    try:
        ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    except ConnectionError as exc:
        raise UsageError(f"cannot reach the Ray cluster at {address}: {exc}") from None
    return True


def _setup(
    req: Request,
    engine: TaskEngine,
    sources: list[Source],
    settled: Settled | None,
    layout: Layout,
    digest: str,
    identity: dict[str, Any],
    window: int,
    faults: Faults,
    rc: RayConfig,
) -> WorkerSetup:
    import pyarrow as pa

    threads = req.threads or max(1, int(rc.cpus_per_worker))
    device = req.device
    if device == "auto":
        device = "cuda" if rc.gpus_per_worker > 0 else "cpu"
    # Absolute paths: an actor's working directory is not the driver's.
    worker_req = msgspec.structs.replace(
        req, model=str(engine.model.root or req.model), threads=threads, device=device, quiet=True, progress=False
    )
    schema = None
    if req.task not in ("score", "rerank"):
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, engine.empty_schema()):
            pass
        schema = sink.getvalue().to_pybytes()
    source = sources[0]
    return WorkerSetup(
        request=worker_req,
        spec=source.spec if req.task not in ("score", "rerank") else None,
        input_format=source.format,
        roots=source.roots,
        settled=settled,
        schema=schema,
        cwd=os.getcwd(),
        output_kind=layout.kind,
        output=str(layout.final),
        fingerprint=digest,
        identity=msgspec.json.encode(identity),
        window_rows=window,
        faults=faults,
    )


def _map(
    ray: Any, rc: RayConfig, setup: WorkerSetup, todo: list[Unit], job_ref: list[Any] | None
) -> Iterator[PartMarker]:
    """The units through the actor pool, one per task; each result is the part's done-marker."""
    from ray.data import ActorPoolStrategy

    with data_context(ray):
        items = [{"unit": msgspec.json.encode(u)} for u in todo]
        ds = ray.data.from_items(items, override_num_blocks=len(items))
        ds = ds.map_batches(
            PartWorker,
            batch_size=1,
            compute=ActorPoolStrategy(size=min(rc.num_workers, len(items))),
            num_cpus=rc.cpus_per_worker,
            num_gpus=rc.gpus_per_worker or None,
            fn_constructor_kwargs={"setup": msgspec.json.encode(setup), "job_ref": job_ref},
        )
        try:
            for row in ds.iter_rows():
                yield msgspec.json.decode(row["marker"], type=PartMarker)
        except Exception as exc:
            raise _worker_error(exc) from None


@contextlib.contextmanager
def data_context(ray: Any) -> Iterator[None]:
    """Ray Data as poolcli's driver needs it, put back afterwards (a notebook or a test that called run_file keeps
    its own settings): the worker's own exception raised (not a UserCodeException that keeps only its text, so a
    typed error keeps its exit code), no INFO narration of every execution, no progress bars (the summary says what
    a user needs)."""
    logger = logging.getLogger("ray.data")
    context = ray.data.DataContext.get_current()
    saved = (
        logger.level,
        context.enable_progress_bars,
        context.enable_operator_progress_bars,
        context.raise_original_map_exception,
    )
    logger.setLevel(logging.CRITICAL)
    context.enable_progress_bars = context.enable_operator_progress_bars = False
    context.raise_original_map_exception = True
    try:
        yield
    finally:
        logger.setLevel(saved[0])
        context.enable_progress_bars, context.enable_operator_progress_bars = saved[1], saved[2]
        context.raise_original_map_exception = saved[3]


def _worker_error(exc: BaseException) -> PoolcliError:
    """The typed error a worker raised (Ray wraps it, maybe twice, in classes that also subclass it), or an internal
    error naming the innermost exception."""
    seen: set[int] = set()
    current: BaseException | None = exc
    innermost = exc
    typed: PoolcliError | None = None
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, PoolcliError):
            typed = current
        innermost = current
        current = getattr(current, "cause", None) or current.__cause__
    if typed is not None:
        return typed  # the innermost: the worker's own error, not Ray's wrapper class derived from it
    lines = str(innermost).strip().splitlines()
    what = f"{type(innermost).__name__}: {lines[0]}" if lines else type(innermost).__name__
    return InternalError(f"a Ray worker failed: {what}")


class PartWorker:
    """A Ray Data actor: one engine, many parts."""

    def __init__(self, setup: bytes, job_ref: list[Any] | None) -> None:
        # A typed error here is raised again by the first call: Ray retries a failing actor constructor without
        # end and reports it as a system error, while a failing call ends the job with the error itself.
        self.failure: PoolcliError | None = None
        try:
            self._build(setup, job_ref)
        except PoolcliError as exc:
            self.failure = exc

    def _build(self, setup: bytes, job_ref: list[Any] | None) -> None:
        import pyarrow as pa

        from poolcli.drivers.run import file_engine
        from poolcli.model.resolve import resolve_model
        from poolcli.request import build

        s = msgspec.json.decode(setup, type=WorkerSetup)
        self.setup = s
        if os.path.isdir(s.cwd):
            os.chdir(s.cwd)
        configs = build(s.request)
        driver = configs.driver
        assert driver is not None
        eng = configs.engine
        job = None
        if job_ref is not None:
            import ray

            job = ray.get(job_ref[0])
        model = resolve_model(
            eng.model, hf_overrides=eng.hf_overrides, convert=eng.convert, max_model_len=eng.max_model_len
        )
        self.engine = file_engine(s.request.task, configs, model, job, s.faults)
        identity = msgspec.json.decode(s.identity)
        # What this actor resolved, as the identity records it (JSON, so tuples compare as the recorded lists).
        backend = self.engine.loader.backend.name
        resolved = {
            "dtype": str(self.engine.loader.dtype).removeprefix("torch."),
            "backend": None if backend == "torch" else backend,
            "plan": self.engine.describe(),
        }
        for key, ours in msgspec.json.decode(msgspec.json.encode(resolved)).items():
            if ours != identity.get(key):
                raise ConfigError(
                    f"a Ray worker would compute with {key} {ours!r} where the run recorded {identity.get(key)!r} "
                    "(auto settings and bf16 support resolve per machine): set --device, --backend and --dtype "
                    "float32 explicitly, or run on workers of one CPU kind"
                )
        self.schema = pa.ipc.open_stream(s.schema).schema if s.schema is not None else None
        self.engine.load()
        import torch

        torch.manual_seed(driver.seed)
        layout = Layout.for_output(s.output + ("/" if s.output_kind == "dir" else ""), s.output_kind)  # type: ignore[arg-type]
        self.store = PartStore.worker(
            layout, s.fingerprint, identity, f"{os.getpid()}-{uuid.uuid4().hex[:8]}", s.faults
        )

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        import numpy as np

        if self.failure is not None:
            raise self.failure

        markers = [msgspec.json.encode(self._run(msgspec.json.decode(raw, type=Unit))) for raw in batch["unit"]]
        return {"marker": np.array(markers, dtype=object)}

    def _run(self, unit: Unit) -> PartMarker:
        engine = self.engine
        writer = self.store.begin(
            unit.index, unit.first_row, id_column=engine.id_column, value_column=engine.value_column
        )
        try:
            if unit.span is not None:
                from poolcli.engine.base import RowEngine

                assert isinstance(engine, RowEngine)
                assert self.setup.spec is not None
                # Every part starts from the driver's schema, whatever this actor's earlier parts promoted: a part's
                # bytes must not depend on which actor wrote it.
                engine.builder.schema = self.schema
                source = Source(self.setup.spec, self.setup.input_format, [unit.span.path], self.setup.roots)  # type: ignore[arg-type]
                for block in source.for_span(unit.span, self.setup.settled).blocks(self.setup.window_rows):
                    writer.add(engine.run(block, engine.prepare(block.texts)), block.n_rows)
                if writer.rows_in != unit.span.n_rows:
                    raise DataError(
                        f"{unit.span.path} changed while the job ran: rows {unit.span.first_row}.. held "
                        f"{unit.span.n_rows} rows when planned, {writer.rows_in} now"
                    )
            else:
                from poolcli.engine.score import ScoreEngine

                assert isinstance(engine, ScoreEngine)
                writer.add(engine.run_units(unit.start, unit.stop), unit.stop - unit.start)
            writer.batch_budget = engine.budget
            return writer.commit()
        except BaseException:
            writer.abort()
            raise
