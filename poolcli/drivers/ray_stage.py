"""A poolcli task as a stage of a user's own Ray Data pipeline: `poolcli.map_dataset(ds, "embed", ...)`.

    import ray, poolcli

    ds = ray.data.read_parquet("s3://bucket/docs/")
    ds = poolcli.map_dataset(ds, "embed", model="/models/bge-small", text_field="body", num_workers=4)
    ds.write_parquet("s3://bucket/vectors/")

Every input row comes out once, in its block, with its own columns and the task's output columns added; a bad row
keeps its place with the output columns null and `error_code`/`error_message` set (the error file's codes), so
nothing is lost silently. The stage is lazy like every Ray Data transform: nothing runs until the dataset is
consumed. It gives Ray Data's guarantees, not the command line's: no parts, no resume, no fingerprint (a pipeline
that must resume writes files and is rerun with `poolcli <task> --engine ray`).

Row tasks (embed, classify, token_embed, token_classify) read `text_field`; score reads `text_field` and
`text_pair_field` (one pair per row); rerank reads a query (`text_field`) and a list of documents
(`text_pair_field`) per row and adds a `ranking` column: the documents' indices and scores, best first.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from poolcli.errors import DataError, UsageError
from poolcli.request import ENGINE_FIELDS, RUN_FIELDS, TASK_FIELDS, Request, build, check_fields
from poolcli.vocab import Task

if TYPE_CHECKING:
    import pyarrow as pa

ERROR_COLUMNS = ("error_code", "error_message")


def map_dataset(
    ds: Any,
    task: Task,
    *,
    model: str | None = None,
    text_field: str = "text",
    text_pair_field: str | None = None,
    num_workers: int = 1,
    cpus_per_worker: float = 1.0,
    gpus_per_worker: float = 0.0,
    batch_rows: int = 1024,
    **options: Any,
) -> Any:
    """`ds` (a `ray.data.Dataset`) with the task's output columns added, computed by an actor pool of
    `num_workers` actors, each holding one model (`cpus_per_worker` CPUs and as many torch threads unless
    `threads=` says otherwise; `gpus_per_worker` GPUs, the model on `cuda`). `batch_rows` rows per call; options are
    those of `poolcli.load()` and of the task (`dimensions=`, `normalize=`, `top_k=`, ...). Options are checked
    here, before anything runs; a model that cannot be found fails when the first actor starts."""
    from poolcli.drivers.ray import import_ray

    import_ray()
    from ray.data import ActorPoolStrategy

    if task not in TASK_FIELDS:
        raise UsageError(f"unknown task {task!r}: one of {', '.join(TASK_FIELDS)}")
    if task in ("score", "rerank") and text_pair_field is None:
        raise UsageError(f"map_dataset({task!r}) needs text_pair_field= (the second text, or the documents)")
    if task not in ("score", "rerank") and text_pair_field is not None:
        raise UsageError(f"text_pair_field= is for score and rerank, not {task}")
    if num_workers < 1 or batch_rows < 1 or cpus_per_worker <= 0 or gpus_per_worker < 0:
        raise UsageError("num_workers and batch_rows must be at least 1, cpus_per_worker positive")
    engine_options = {k: options.pop(k) for k in list(options) if k in ENGINE_FIELDS}
    engine_options.setdefault("threads", max(1, int(cpus_per_worker)))
    if gpus_per_worker > 0:
        engine_options.setdefault("device", "cuda")
    check_fields(task, options, allowed=(TASK_FIELDS[task] - RUN_FIELDS) | {"config"}, what=f"map_dataset({task!r})")
    build(Request(task=task, model=model, **engine_options, **options))  # every option's check, here and now
    return ds.map_batches(
        TaskStage,
        batch_size=batch_rows,
        batch_format="pyarrow",
        compute=ActorPoolStrategy(size=num_workers),
        num_cpus=cpus_per_worker,
        num_gpus=gpus_per_worker or None,
        fn_constructor_kwargs={
            "task": task,
            "model": model,
            "engine_options": engine_options,
            "options": options,
            "text_field": text_field,
            "text_pair_field": text_pair_field,
        },
    )


class TaskStage:
    """The callable class behind `map_dataset`: one model per actor, one engine per task, pyarrow in and out."""

    def __init__(
        self,
        task: Task,
        model: str | None,
        engine_options: dict[str, Any],
        options: dict[str, Any],
        text_field: str,
        text_pair_field: str | None,
    ) -> None:
        from poolcli.drivers.api import Model

        config = options.pop("config", None)
        self.model = Model(model, config=config, **engine_options)
        self.task = task
        self.options = options
        self.text_field = text_field
        self.text_pair_field = text_pair_field

    def __call__(self, batch: pa.Table) -> pa.Table:
        from poolcli.drivers.api import Result

        texts = self._column(batch, self.text_field)
        if self.task == "score":
            from poolcli.io.pairs import memory_pairs_job

            pairs = list(zip(texts, self._column(batch, self.text_pair_field), strict=True))
            result: Result = self.model._pairs("score", memory_pairs_job(pairs), dict(self.options))
            return _joined(batch, result, key="id")
        if self.task == "rerank":
            return self._rerank(batch, texts)
        result = self.model._rows(self.task, texts, None, dict(self.options))
        return _joined(batch, result, key="id")

    @staticmethod
    def _column(batch: pa.Table, name: str | None) -> list[Any]:
        if name is None or name not in batch.column_names:
            raise DataError(f"the dataset has no column {name!r} (columns: {', '.join(batch.column_names)})")
        return list(batch.column(name).to_pylist())

    def _rerank(self, batch: pa.Table, queries: list[Any]) -> pa.Table:
        """One ranking per row: list<struct<index, relevance_score>>, best first (top_n, if given)."""
        import pyarrow as pa

        from poolcli.drivers.api import Result
        from poolcli.io.pairs import memory_rerank_job

        documents = self._column(batch, self.text_pair_field)
        entry = pa.struct([("index", pa.int32()), ("relevance_score", pa.float32())])
        rankings: list[list[dict[str, Any]] | None] = []
        codes: list[str | None] = []
        messages: list[str | None] = []
        for query, docs in zip(queries, documents, strict=True):
            problem = _bad_query(query, docs, self.text_field, self.text_pair_field)
            if problem is not None:
                rankings.append(None)
                codes.append(problem[0])
                messages.append(problem[1])
                continue
            result: Result = self.model._pairs("rerank", memory_rerank_job(query, docs), dict(self.options))
            rankings.append(result.table.select(["index", "relevance_score"]).to_pylist())
            bad = result.errors
            codes.append(bad[0].code if bad else None)
            messages.append("; ".join(e.message for e in bad) if bad else None)
        out = _check_free(batch, ["ranking", *ERROR_COLUMNS])
        out = out.append_column("ranking", pa.array(rankings, type=pa.list_(entry)))
        out = out.append_column("error_code", pa.array(codes, type=pa.string()))
        return out.append_column("error_message", pa.array(messages, type=pa.string()))


def _bad_query(query: Any, docs: Any, query_field: str, docs_field: str | None) -> tuple[str, str] | None:
    if not isinstance(query, str):
        return "WRONG_TYPE", f"{query_field!r} must be a string, got {type(query).__name__}"
    if not query.strip():
        return "EMPTY_TEXT", f"{query_field!r} is empty"
    if not isinstance(docs, list):
        return "WRONG_TYPE", f"{docs_field!r} must be a list of documents, got {type(docs).__name__}"
    return None


def _check_free(batch: pa.Table, names: list[str]) -> pa.Table:
    clash = [n for n in names if n in batch.column_names]
    if clash:
        raise UsageError(f"the dataset already has column(s) {', '.join(clash)} that the stage adds")
    return batch


def _joined(batch: pa.Table, result: Any, *, key: str) -> pa.Table:
    """The batch with the result's columns beside their rows (ids are positions), nulls and error columns where a
    row failed."""
    import pyarrow as pa

    table: pa.Table = result.table
    names = [n for n in table.column_names if n != key]
    out = _check_free(batch, [*names, *ERROR_COLUMNS])
    n = batch.num_rows
    where: list[int | None] = [None] * n
    for j, position in enumerate(table.column(key).to_pylist()):
        where[int(position)] = j
    take = pa.array(where, type=pa.int64())
    for name in names:
        column = table.column(name).combine_chunks() if table.num_rows else pa.nulls(0, table.schema.field(name).type)
        out = out.append_column(table.schema.field(name), column.take(take))
    codes: list[str | None] = [None] * n
    messages: list[str | None] = [None] * n
    for e in result.errors:
        codes[int(e.id)], messages[int(e.id)] = e.code, e.message
    out = out.append_column("error_code", pa.array(codes, type=pa.string()))
    return out.append_column("error_message", pa.array(messages, type=pa.string()))
