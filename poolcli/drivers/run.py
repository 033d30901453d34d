"""A file run, from a request to its outcome: the path `poolcli <task>` and `poolcli.run_file` share.

Request -> configs -> input opened (or the score/rerank job loaded) -> model resolved -> output paths checked against
the inputs -> plan and engine -> feed -> the local driver. Everything that can be refused is refused before
anything is written.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from poolcli.config import DriverConfig, ScoreOptions
from poolcli.errors import UsageError
from poolcli.faults import Faults
from poolcli.request import Configs, Request, build
from poolcli.vocab import Task

if TYPE_CHECKING:
    from poolcli.console import Progress
    from poolcli.drivers.feed import Feed
    from poolcli.drivers.local import Outcome
    from poolcli.engine.base import RowEngine, TaskEngine
    from poolcli.engine.quantize import Calibration
    from poolcli.engine.ranges import RangeSample
    from poolcli.io.pairs import PairJob
    from poolcli.io.readers import Source
    from poolcli.model.resolve import ResolvedModel


class Prepared(NamedTuple):
    """A file run checked as far as it can be before anything is written or loaded (`prepare_file_run`)."""

    configs: Configs
    driver: DriverConfig
    sources: list[Source]
    job: PairJob | None
    model: ResolvedModel
    engine: TaskEngine
    """Plan built, weights not loaded."""
    faults: Faults


def run_file_request(
    req: Request,
    *,
    make_progress: Callable[[str, DriverConfig], Progress] | None = None,
    warn: Callable[[str], None] | None = None,
) -> Outcome:
    """Run `req` (which names an input) to its output. `make_progress(description, driver config)` builds the
    progress display (none by default); `warn` receives warnings (stderr unless quiet, by default)."""
    configs, driver, sources, job, model, engine, faults = prepare_file_run(req, warn=warn)
    import torch

    from poolcli.console import NullProgress
    from poolcli.drivers.feed import PairFeed, RowFeed
    from poolcli.drivers.local import run_local
    from poolcli.engine.base import RowEngine

    eng = configs.engine
    if driver.engine == "ray":
        from poolcli.drivers.ray import run_ray

        progress = make_progress(f"{req.task} {model.name}", driver) if make_progress is not None else NullProgress()
        return run_ray(req, engine, sources, job, driver, progress, faults)
    feed: Feed
    if job is not None:
        from poolcli.engine.score import ScoreEngine

        assert isinstance(engine, ScoreEngine)
        feed = PairFeed(engine, part_rows=driver.part_rows)
    else:
        assert isinstance(engine, RowEngine)
        feed = RowFeed(
            sources[0], engine, window_rows=min(eng.window_rows, driver.part_rows), part_rows=driver.part_rows
        )
    torch.manual_seed(driver.seed)
    description = f"{req.task} {model.name}"
    progress = make_progress(description, driver) if make_progress is not None else NullProgress()
    return run_local(engine, feed, driver, sources, progress, faults)


def prepare_file_run(req: Request, *, warn: Callable[[str], None] | None = None, dry_run: bool = False) -> Prepared:
    """Everything a file run checks before its driver opens the output: configs, part and window sizes, input
    (or pair job), model, output paths, calibration rows, plan and engine, output-range rows; every refusal here
    has the exit code the run gives. Nothing is written and no weights are loaded (`dry_run`: nor is the
    compiled-model cache created to see whether it could be; `poolcli <task> --dry-run` continues in
    `drivers.dry_run`). The cheap refusals come first: everything up to the engine is checked before torch is
    imported (the engine's loader imports it to decide device, dtype and backend)."""
    from poolcli.console import print_warning
    from poolcli.io.readers import InputSpec, open_source
    from poolcli.model.resolve import resolve_model

    configs = build(req)
    driver = configs.driver
    if driver is None:
        raise UsageError("a file run needs an input")
    eng = configs.engine
    # Rows in windows and parts: a local run of a row task (a Ray run's parts are --batch-rows, its driver checks).
    local_rows = req.task not in ("score", "rerank") and driver.engine != "ray"
    if local_rows and driver.part_rows % eng.window_rows and driver.part_rows > eng.window_rows:
        raise UsageError(f"--part-rows ({driver.part_rows}) must be a multiple of --window-rows ({eng.window_rows})")
    faults = Faults.from_env()
    job: PairJob | None = None
    if req.task in ("score", "rerank"):
        assert isinstance(configs.options, ScoreOptions)
        job = _load_job(req, driver, configs.options)
        sources = job.sources
    else:
        sources = [open_source(InputSpec(driver.inputs[0], driver.text_field, driver.id_field, driver.keep_columns))]
    model = resolve_model(
        eng.model, hf_overrides=eng.hf_overrides, convert=eng.convert, max_model_len=eng.max_model_len
    )
    check_output_paths(driver, sources, model)
    calibration = read_calibration(driver) if eng.quantize != "none" else None
    engine = file_engine(
        req.task,
        configs,
        model,
        job,
        faults,
        warn or (lambda message: print_warning(message, quiet=driver.quiet)),
        dry_run=dry_run,
    )
    if driver.verbose and not driver.quiet:
        from poolcli.console import print_info

        engine.info = print_info
    if calibration is not None:
        from poolcli.engine.quantize import check_backend

        check_backend(engine.loader)
        engine.calibration = calibration
    from poolcli.engine.base import RowEngine

    if isinstance(engine, RowEngine) and engine.scalar_output is not None:
        engine.range_sample = read_range_sample(driver, engine)
    return Prepared(configs, driver, sources, job, model, engine, faults)


def file_engine(
    task: Task,
    configs: Configs,
    model: ResolvedModel,
    job: PairJob | None,
    faults: Faults,
    warn: Callable[[str], None] = lambda message: None,
    *,
    dry_run: bool = False,
) -> TaskEngine:
    """The engine of a file run, on `model` as the request's configs say: the local driver's, each Ray actor's,
    and a dry run's (its loader decides device, dtype and backend, and loads nothing)."""
    from poolcli.engine.tasks import build_engine
    from poolcli.model.load import Loader

    eng, driver = configs.engine, configs.driver
    assert driver is not None
    loader = Loader.from_config(model, eng, dry_run=dry_run)
    return build_engine(
        task,
        model,
        loader,
        eng,
        configs.plan,
        configs.options,
        keep_columns=driver.keep_columns,
        job=job,
        faults=faults,
        warn=warn,
    )


def _load_job(req: Request, driver: DriverConfig, opts: ScoreOptions) -> PairJob:
    from poolcli.io.pairs import load_rerank_job, load_score_job

    if req.task == "score":
        return load_score_job(
            driver.inputs,
            query=opts.query,
            cross=opts.cross,
            text_field=driver.text_field,
            id_field=driver.id_field,
            keep_columns=driver.keep_columns,
        )
    if opts.top_n < 0:
        raise UsageError(f"--top-n must be 0 or -1 (all), or a positive count, got {opts.top_n}")
    return load_rerank_job(
        driver.inputs, query=opts.query, group_by=opts.group_by, text_field=driver.text_field, id_field=driver.id_field
    )


def check_output_paths(driver: DriverConfig, sources: list[Source], model: ResolvedModel) -> None:
    """Before anything is written: no output, state or error path of this run may be (or hold) an input; the
    model's files count as inputs too."""
    from poolcli.drivers.local import default_errors_path, output_kind
    from poolcli.errors import CantCreateError
    from poolcli.io.safety import check_paths, probe_dir

    if driver.errors is not None:
        # Found now, not after every row is computed and the commit of the error rows fails.
        problem = probe_dir(Path(driver.errors).parent)
        if problem is not None:
            raise CantCreateError(f"cannot create --errors {driver.errors}: {problem.strerror or problem}")
    model_files = [str(p) for p in Path(model.root).rglob("*") if p.is_file()] if model.root else []
    check_paths(
        [f for s in sources for f in s.files] + model_files,
        [r for s in sources for r in s.roots],
        driver.output,
        output_kind(driver.output),
        default_errors_path(driver),
        default_errors_path(driver, explicit=False),
    )


def _first_texts(path: str, text_field: str, n: int) -> list[str]:
    """The texts of a file's first `n` good rows, read with a reader of its own (the run's feed starts from the
    first row as always)."""
    from poolcli.io.readers import InputSpec, open_source

    texts: list[str] = []
    for block in open_source(InputSpec(path, text_field, None, ())).blocks(n):
        texts.extend(block.texts)
        if len(texts) >= n:
            break
    return texts[:n]


def read_calibration(driver: DriverConfig) -> Calibration:
    """--quantize int8: the input's first rows split into calibration and held-out rows, or the --calibration
    file's first rows to calibrate and the input's first rows held out."""
    from poolcli.engine.quantize import CALIBRATION_ROWS, HOLDOUT_ROWS, Calibration, split_sample

    def first(path: str, n: int) -> list[str]:
        return _first_texts(path, driver.text_field, n)

    if driver.calibration is not None:
        _check_calibration_file(driver.calibration)
    if driver.calibration is None:
        texts, holdout = split_sample(first(driver.inputs[0], CALIBRATION_ROWS + HOLDOUT_ROWS))
        return Calibration(texts, holdout, "input")
    if driver.inputs[0] == "-":  # standard input is read once, by the run: calibrate and hold out from the file
        texts, holdout = split_sample(first(driver.calibration, CALIBRATION_ROWS + HOLDOUT_ROWS))
        return Calibration(texts, holdout, driver.calibration)
    return Calibration(
        first(driver.calibration, CALIBRATION_ROWS), first(driver.inputs[0], HOLDOUT_ROWS), driver.calibration
    )


def read_range_sample(driver: DriverConfig, engine: RowEngine) -> RangeSample:
    """--output-dtype int8/uint8: the vectors of a --calibration file that has the output's vector column (an
    earlier float32 run's output), else the texts of its first rows, else of the input's first rows."""
    from poolcli.engine.ranges import RANGE_ROWS, RangeSample
    from poolcli.io.vectors import has_column, read_vectors

    path = driver.calibration
    if path is not None:
        _check_calibration_file(path)
    if path is not None and has_column(path, engine.value_column):
        vectors, rows = read_vectors(path, engine.value_column, engine.builder.dim, RANGE_ROWS)
        return RangeSample([], vectors, rows, path)
    texts = _first_texts(path or driver.inputs[0], driver.text_field, RANGE_ROWS)
    if path is not None and not texts:
        raise UsageError(
            f"--calibration {path}: no usable rows (texts in --text-field {driver.text_field!r}, or vectors in "
            f"{engine.value_column!r})"
        )
    # An input with no good row at all (read to its end) gets an empty output, which needs no ranges.
    return RangeSample(texts, None, len(texts), path or "input")


def _check_calibration_file(path: str) -> None:
    """A --calibration path that is not there is named as such (not as "input")."""
    import glob

    from poolcli.errors import NoInputError

    if not os.path.exists(path) and not glob.glob(path):
        raise NoInputError(f"--calibration {path} does not exist")
