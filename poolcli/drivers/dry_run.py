"""`poolcli <task> --dry-run` (and `poolcli.plan_file`): what a file run would do, refused exactly where the run
refuses, with nothing written and no weights loaded.

The dry run is the run's own preparation (`drivers.run.prepare_file_run`: options, input, model, output paths,
plan and engine, calibration rows, part sizes; a Ray run's own checks, `drivers.ray.ray_store`), then what the
driver would find at its output (`PartStore.inspect`: creatable (73), not held by another run (75), not another
command's output (78), and whether a rerun is a no-op or resumes committed parts), then the tokenizers as the run
builds them, the output schema from the table builder, and the input rows counted. Every refusal is the typed error
the run raises, so the exit code is the run's. The loader of a dry run decides device, dtype and backend and
refuses to load anything (`model.load.Loader(dry_run=True)`); the compiled-model cache is probed, not created.

What it cannot know without the model: a weight file that does not load, an out-of-memory device, rows that fail
in the model (TOO_LONG with --on-too-long error, NONFINITE_OUTPUT), and the error budget those rows would spend.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import msgspec

from poolcli.drivers.local import default_errors_path, output_kind, run_identity
from poolcli.drivers.run import prepare_file_run
from poolcli.model.identity import fingerprint

if TYPE_CHECKING:
    import pyarrow as pa

    from poolcli.engine.base import TaskEngine
    from poolcli.io.readers import Source
    from poolcli.model.resolve import ResolvedModel
    from poolcli.request import Request

EXACT_BYTES = 64 << 20
"""Inputs up to this size on disk (all files together) are read to the end: their rows are counted exactly.
Parquet rows always come from the files' metadata (exact, and cheap at any size)."""
SAMPLE_BYTES = 4 << 20
"""A larger file's rows are estimated from its first this-many bytes: its size over the bytes per row there."""
OBSERVE_WINDOWS = 64
"""Windows read to find the first good row, whose id and kept columns type the output (an input whose first 64
windows hold no good row is shown with the schema of an empty output)."""


def plan_file_request(req: Request, *, warn: Callable[[str], None] | None = None) -> dict[str, Any]:
    """The plan of the run `req` describes, as a JSON-able dict; raises what the run would raise before loading
    its weights."""
    from poolcli.engine.base import RowEngine
    from poolcli.io.parts import Layout, PartStore

    configs, driver, sources, job, model, engine, faults = prepare_file_run(req, warn=warn, dry_run=True)
    eng = configs.engine
    kind = output_kind(driver.output)
    part_rows: int | None = driver.part_rows
    store: PartStore | None = None
    if driver.engine == "ray":
        from poolcli.drivers.ray import ray_store

        _, store, part_rows, _ = ray_store(req, engine, sources, job, driver, faults)
    elif kind != "stdout":
        identity = run_identity(engine, driver, sources)
        store = PartStore(Layout.for_output(driver.output, kind), fingerprint(identity), identity, faults)
    from_stdin = any(s.files == ["-"] for s in sources)
    state = store.inspect(overwrite=driver.overwrite or from_stdin) if store is not None else None
    max_tokens = engine.tokenizer_limit()  # the tokenizers as the run builds them, with their refusals
    notes: list[str] = []
    if isinstance(engine, RowEngine):
        source = sources[0]
        window = min(eng.window_rows, driver.part_rows)
        _observe(engine, source, window, notes)
        rows, exact, counted, bad = count_rows(source)
        parts = None if rows is None or part_rows is None else -(-rows // part_rows)
        inputs: dict[str, Any] = _input(source) | {"rows": rows, "rows_exact": exact, "rows_counted": counted}
        if bad is not None:
            inputs["error_rows"] = bad
        schema = engine.empty_schema()
    else:
        from poolcli.engine.score import ScoreEngine

        assert isinstance(engine, ScoreEngine) and job is not None
        units = engine.units(driver.part_rows if part_rows is None else part_rows)
        parts = max(1, -(-units.n // units.per_part))
        inputs = {
            "files": [f for s in sources for f in s.files],
            "form": job.form,
            "rows": units.n,
            "rows_are": "queries" if engine.rerank else "pairs",
            "rows_exact": True,
            "rows_counted": "read to the end (a score or rerank job is held in memory)",
            "pairs": len(job.pairs),
        }
        schema = engine.output_schema()
    if any(_is_null(f.type) for f in schema):
        notes.append("a kept column that is null in every row read so far is typed by its first non-null values")
    loader = engine.loader
    plan: dict[str, Any] = {
        "poolcli": "plan",
        "task": req.task,
        "model": _model(model, engine),
        "plan": engine.describe(),
        "options": msgspec.to_builtins(configs.options),
        "device": str(loader.device),
        "dtype": str(loader.dtype).removeprefix("torch."),
        "backend": loader.backend.name,
        "backend_chosen_by_auto": loader.backend.auto,
        "max_tokens": max_tokens,
        "batching": {
            "max_batch_tokens": _budget(engine),
            "max_batch_size": eng.max_batch_size,
            "window_rows": eng.window_rows,
            "part_rows": part_rows if kind != "stdout" else None,
        },
        "engine": driver.engine,
        "input": inputs,
        "output": {
            "path": driver.output,
            "kind": kind,
            "schema": schema_fields(as_written(schema)),
            "parts": parts if kind != "stdout" else None,
            "errors_file": str(default_errors_path(driver)),
            "errors_file_written": "always" if driver.errors is not None else "when a row fails",
        },
        "state": None,
        "notes": [text for _, text in loader.take_notes()] + notes,
    }
    if store is not None and state is not None:
        plan["output"] |= {"state_folder": str(store.layout.state), "lock": str(store.layout.lock)}
        plan["state"] = {
            "status": state.status,
            "parts_committed": state.parts,
            "rows_committed": state.rows,
            "errors_committed": state.errors,
            "fingerprint": store.fingerprint,
        }
    if driver.engine == "ray":
        plan["ray"] = msgspec.to_builtins(driver.ray)
        plan["notes"].append("the Ray cluster is not contacted: its CPUs and GPUs are checked when the run starts")
    return plan


def _observe(engine: Any, source: Source, window: int, notes: list[str]) -> None:
    """The output schema's id and kept-column types, fixed by the input's first rows as the run fixes them."""
    if source.files == ["-"]:
        notes.append(
            "standard input is not read by a dry run: the id column's type and the kept columns' types are "
            "those of its first rows"
        )
        return
    for n, block in enumerate(source.blocks(window), start=1):
        engine.observe(block)
        if engine.builder.schema is not None or n >= OBSERVE_WINDOWS:
            return


def count_rows(source: Source) -> tuple[int | None, bool, str, int | None]:
    """The input's rows as the run counts them (good and bad; a JSONL file's blank lines are not rows): (rows,
    exact, how they were counted, rows the reader already rejects (when every row was read))."""
    from poolcli.io.readers import Source

    if source.files == ["-"]:
        return None, False, "not counted: standard input is read once, by the run", None
    if source.format == "parquet":
        assert source.total is not None
        return source.total, True, "Parquet metadata", None
    sizes = [os.path.getsize(f) for f in source.files]
    exact = sum(sizes) <= EXACT_BYTES
    rows = 0.0
    bad = 0
    per_byte: float | None = None
    for path, size in zip(source.files, sizes, strict=True):
        view = Source(source.spec, source.format, [path], source.roots)
        if exact or size <= SAMPLE_BYTES:
            for block in view.blocks(1 << 14):
                rows += block.n_rows
                bad += len(block.errors)
            continue
        if per_byte is None:
            n = 0
            for block in view.blocks(1 << 10):
                n += block.n_rows
                if view.done >= SAMPLE_BYTES:
                    break
            per_byte = n / max(view.done, 1)
        rows += size * per_byte
    if exact:
        return int(rows), True, "read to the end", bad
    return round(rows), False, f"estimated from the first {SAMPLE_BYTES >> 20} MiB (file size / bytes per row)", None


def _input(source: Source) -> dict[str, Any]:
    files = source.files
    return {
        "path": source.spec.path,
        "format": source.format,
        "files": files if len(files) <= 20 else [*files[:20], f"... {len(files) - 20} more"],
        "bytes": None if files == ["-"] else sum(os.path.getsize(f) for f in files),
        "text_field": source.spec.text_field,
        "id_field": source.spec.id_field,
    }


def _model(model: ResolvedModel, engine: TaskEngine) -> dict[str, Any]:
    from pathlib import Path

    from poolcli.model.identity import weights_digest

    heads: list[str] = []
    if model.st_pooling is not None:
        heads.append(f"Sentence-Transformers Pooling ({', '.join(model.st_pooling.modes)})")
    heads += [f"Dense {d.in_features}->{d.out_features} ({d.activation})" for d in model.dense]
    if model.st_normalize:
        heads.append("Normalize")
    if model.classifier is not None:
        heads.append(f"classifier: {model.classifier.head}, {model.classifier.num_labels} labels")
    if model.colbert is not None:
        heads.append(f"ColBERT ({model.colbert.layout}) projection to {model.colbert.dim}")
    if model.bge_m3 is not None:
        heads.append(f"BGE-M3 colbert ({model.bge_m3.colbert_dim}) and sparse heads")
    return {
        "name": model.name,
        "path": model.path,
        "source": model.source,
        "architecture": model.architecture,
        "model_type": model.model_type,
        "hidden_size": model.hidden_size,
        "max_length": model.max_length,
        "supported_tasks": list(model.supported_tasks),
        "heads": heads,
        "weights_sha256": weights_digest(Path(model.root)),
    }


def _budget(engine: TaskEngine) -> int:
    from poolcli.engine.batch import default_budget

    return engine.config.max_batch_tokens or default_budget(engine.loader.device)


def _is_null(t: pa.DataType) -> bool:
    import pyarrow as pa

    return bool(pa.types.is_null(t))


def as_written(schema: pa.Schema) -> pa.Schema:
    """`schema` as a reader of the Parquet output sees it (list items are called `element` there), by writing an
    empty table with it to memory and reading its schema back."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    sink = pa.BufferOutputStream()
    pq.write_table(schema.empty_table(), sink, compression="zstd")
    return pq.read_schema(pa.BufferReader(sink.getvalue())).remove_metadata()


def schema_fields(schema: pa.Schema) -> list[dict[str, Any]]:
    """An Arrow schema as the plan shows it: each field's name and type (and its metadata, where it has some)."""
    out: list[dict[str, Any]] = []
    for f in schema:
        entry: dict[str, Any] = {"name": f.name, "type": str(f.type)}
        if f.metadata:
            entry["metadata"] = {k.decode(): v.decode() for k, v in f.metadata.items()}
        out.append(entry)
    return out
