"""The Python API: the same engines as the command line, on texts held in memory, or file to file.

    import poolcli

    vectors = poolcli.embed(["a text", "another"])                       # float32 [n, d]
    m = poolcli.load("./my-model", device="cpu")                        # weights loaded once, on first use
    probs = m.classify(texts, top_k=3)                                   # float32 [n, labels]
    table = m.embed(texts, dimensions=256, as_table=True)                # pyarrow Table: id, embedding, ...
    summary = poolcli.run_file("embed", "in.jsonl", "out.parquet")      # exactly what `poolcli embed` runs

Options have the command line's names (underscores for dashes) and go through the same checks
(`poolcli.request`), raising the same messages as typed exceptions from `poolcli.errors`. Rows are processed in
the command line's windows and batches, so the numbers are bit-identical to a command-line run. A bad row (an
empty text, a too-long text with `on_too_long="error"`) raises `RowError` by default; `on_error="return"` gives a
`Result` with the good rows' table and the error rows instead. Nothing is written to disk except by `run_file`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

import msgspec

from poolcli.config import DEFAULT_PART_ROWS
from poolcli.errors import PoolcliError, RowError, UsageError
from poolcli.request import ENGINE_FIELDS, RUN_FIELDS, TASK_FIELDS, Request, build, check_fields
from poolcli.vocab import Task

if TYPE_CHECKING:
    import numpy as np
    import pyarrow as pa

    from poolcli.engine.base import BlockResult, TaskEngine
    from poolcli.io.pairs import PairJob
    from poolcli.io.records import ErrorRow
    from poolcli.model.load import Loader
    from poolcli.model.resolve import ResolvedModel

OnError = Literal["raise", "return"]


class Result(msgspec.Struct):
    """What a call with `on_error="return"` gives: the good rows' table (with their ids) and the error rows."""

    table: Any
    """pyarrow.Table, the task's output columns (the command line's schema)."""
    errors: list[ErrorRow]

    @property
    def ids(self) -> list[Any]:
        """The good rows' ids (positions in the input unless `ids=` was given)."""
        column = "query_id" if "query_id" in self.table.column_names else "id"
        return list(self.table.column(column).to_pylist())


class Model:
    """A model resolved once and loaded on first use; its methods run tasks on texts in memory.

    Each kind of weights a task needs (the model body, a classifier, a float32 copy for non-finite recomputes) is
    loaded once and kept for later calls."""

    def __init__(
        self, model: str | os.PathLike[str] | None = None, *, config: str | None = None, **engine_options: Any
    ) -> None:
        from poolcli.model.load import Loader
        from poolcli.model.resolve import resolve_model

        model = os.fspath(model) if model is not None else None
        unknown = sorted(set(engine_options) - ENGINE_FIELDS)
        if unknown:
            raise UsageError(f"poolcli.load() takes no option {', '.join(unknown)}")
        self._base: dict[str, Any] = {"model": model, "config": config, **engine_options}
        engine = build(Request(task="embed", **self._base)).engine
        self.engine_config = engine
        self.resolved: ResolvedModel = resolve_model(
            engine.model, hf_overrides=engine.hf_overrides, convert=engine.convert, max_model_len=engine.max_model_len
        )
        self.loader: Loader = Loader.from_config(self.resolved, engine)

    @property
    def name(self) -> str:
        return self.resolved.name

    def __repr__(self) -> str:
        return (
            f"poolcli.Model({self.name!r}, device={self.loader.device}, dtype={self.loader.dtype}, "
            f"backend={self.loader.backend.name})"
        )

    # -- tasks ----------------------------------------------------------------------------------------------------

    def embed(
        self,
        texts: Sequence[str],
        *,
        ids: Sequence[Any] | None = None,
        as_table: bool = False,
        on_error: OnError = "raise",
        **options: Any,
    ) -> Any:
        """One vector per text: float32 [n, d] (or the output table with `as_table`). Options: `pooling_type`,
        `normalize`, `dimensions`, `prompt`, `prompt_name`, `config`, `pooler_config`, `truncate_prompt_tokens`,
        `truncation_side`, `on_too_long`, `output_dtype`."""
        result = self._rows("embed", texts, ids, options)
        if "colbert_embeddings" in result.table.column_names or "lexical_weights" in result.table.column_names:
            return self._shape(result, as_table, on_error, _m3_outputs)
        return self._shape(result, as_table, on_error, lambda t: _fixed_size(t.column("embedding")))

    def classify(
        self,
        texts: Sequence[str],
        *,
        ids: Sequence[Any] | None = None,
        as_table: bool = False,
        on_error: OnError = "raise",
        **options: Any,
    ) -> Any:
        """Class probabilities per text: float32 [n, labels] in label order (or the output table, with `label`,
        `score`, `probs`, ..., with `as_table`). Options: `use_activation`, `top_k`, `threshold`, `prompt`,
        `config`, `pooler_config`, truncation options."""
        result = self._rows("classify", texts, ids, options)
        return self._shape(result, as_table, on_error, lambda t: _fixed_size(t.column("probs")))

    def token_classify(
        self,
        texts: Sequence[str],
        *,
        ids: Sequence[Any] | None = None,
        as_table: bool = False,
        on_error: OnError = "raise",
        **options: Any,
    ) -> Any:
        """Per-token outputs: one float32 [tokens, labels] array per text (per step tag with STEP pooling), or the
        output table (`token_ids`, `probs`, `offsets`, `entities`, ...) with `as_table`. Options: `pooling_type`,
        `step_tag_id`, `returned_token_ids`, `use_activation`, `offsets`, `aggregate`, `ignore_labels`, ..."""
        result = self._rows("token_classify", texts, ids, options)
        if "lexical_weights" in result.table.column_names:  # BGE-M3: one {token id: weight} per text
            return self._shape(result, as_table, on_error, lambda t: _lexical(t.column("lexical_weights")))
        return self._shape(result, as_table, on_error, lambda t: _ragged(t, "probs"))

    def token_embed(
        self,
        texts: Sequence[str],
        *,
        ids: Sequence[Any] | None = None,
        as_table: bool = False,
        on_error: OnError = "raise",
        **options: Any,
    ) -> Any:
        """One [tokens, d] array per text (float16 unless `output_dtype="float32"`), or the output table
        (`token_ids`, `embeddings`, ...) with `as_table`. Options: `normalize`, `dimensions`,
        `skip_special_tokens`, `colbert_role`, `output_dtype`, `prompt`, `config`, `pooler_config`, ..."""
        result = self._rows("token_embed", texts, ids, options)
        return self._shape(result, as_table, on_error, lambda t: _ragged(t, "embeddings"))

    def score(
        self,
        pairs_or_texts_1: Sequence[Any],
        texts_2: Sequence[str] | None = None,
        *,
        cross: bool = False,
        as_table: bool = False,
        on_error: OnError = "raise",
        **options: Any,
    ) -> Any:
        """One score per pair: `score(pairs)` for (text_1, text_2) pairs, or `score(texts_1, texts_2)` with the
        1:1 / 1:N / N:N rules (`cross=True`: every pair, an [N, M] array). float32 scores, or the output table
        with `as_table`. Options: `score_type`, `use_activation`, `instruction`, `max_tokens_per_query`,
        `max_tokens_per_doc`, `maxsim_normalize`, `pooling_type`, `prompt`, `config`, `pooler_config`, ..."""
        from poolcli.io.pairs import memory_pairs_job, read_table, two_tables_job
        from poolcli.io.readers import memory_source

        if texts_2 is None:
            if cross:
                raise UsageError("--cross needs two inputs")
            job = memory_pairs_job(pairs_or_texts_1)
        else:
            left, _ = read_table(memory_source(pairs_or_texts_1))
            right, _ = read_table(memory_source(texts_2))
            job = two_tables_job(left, right, cross=cross)
        result = self._pairs("score", job, {**options, "cross": cross})

        def scores(table: pa.Table) -> np.ndarray:
            import numpy as np

            values = np.asarray(table.column("score").to_numpy(), dtype=np.float32)
            if cross and texts_2 is not None and not result.errors:
                return values.reshape(len(job.queries), len(job.docs))
            return values

        return self._shape(result, as_table, on_error, scores)

    def rerank(
        self,
        query: str,
        documents: Sequence[str],
        *,
        top_n: int = 0,
        return_documents: bool = False,
        as_table: bool = False,
        on_error: OnError = "raise",
        **options: Any,
    ) -> Any:
        """The documents ranked for `query`, best first: a list of {"index", "relevance_score"} (and "document"
        with `return_documents`), the `top_n` best (0: all); or the output table with `as_table`."""
        from poolcli.io.pairs import memory_rerank_job

        job = memory_rerank_job(query, documents)
        result = self._pairs("rerank", job, {**options, "top_n": top_n, "return_documents": return_documents})

        def ranking(table: pa.Table) -> list[dict[str, Any]]:
            keys = ["index", "relevance_score"] + (["document"] if return_documents else [])
            return [{k: row[k] for k in keys} for row in table.select(keys).to_pylist()]

        return self._shape(result, as_table, on_error, ranking)

    # -- the in-memory driver ---------------------------------------------------------------------------------------

    def _engine(self, task: Task, options: dict[str, Any], job: PairJob | None = None) -> TaskEngine:
        from poolcli.console import print_warning
        from poolcli.engine.tasks import build_engine

        forbidden = sorted(set(options) & {"model", *ENGINE_FIELDS})
        if forbidden:
            raise UsageError(f"{', '.join(forbidden)}: give these to poolcli.load(), not to each call")
        # In memory there are no files: of the run options, only `quiet` (warnings) means anything.
        allowed = (TASK_FIELDS[task] - RUN_FIELDS) | {"quiet"}
        check_fields(task, options, allowed=allowed, what=task)
        merged = {**self._base, **options}
        configs = build(Request(task=task, **merged))
        if configs.engine.hf_overrides != self.engine_config.hf_overrides:
            raise UsageError(
                "this preset changes the model's config (hf_overrides); pass it to poolcli.load(config=...)"
            )
        return build_engine(
            task,
            self.resolved,
            self.loader,
            self.engine_config,
            configs.plan,
            configs.options,
            job=job,
            warn=lambda message: print_warning(message, quiet=bool(options.get("quiet", True))),
        )

    def _rows(self, task: Task, texts: Sequence[str], ids: Sequence[Any] | None, options: dict[str, Any]) -> Result:
        """Texts -> the task's table, in the command line's windows (so the same batches and the same bits)."""
        from poolcli.engine.base import RowEngine
        from poolcli.io.readers import memory_source

        source = memory_source(texts, ids)
        engine = self._engine(task, options)
        assert isinstance(engine, RowEngine)
        engine.load()
        results: list[BlockResult] = []
        for block in source.blocks(min(self.engine_config.window_rows, DEFAULT_PART_ROWS)):
            results.append(engine.run(block, engine.prepare(block.texts)))
        return _collect(engine, results)

    def _pairs(self, task: Task, job: PairJob, options: dict[str, Any]) -> Result:
        """A pair job -> its table, in the command line's parts (so the same windows, batches and bits)."""
        from poolcli.engine.score import ScoreEngine

        engine = self._engine(task, options, job)
        assert isinstance(engine, ScoreEngine)
        engine.load()
        results = [engine.run_units(a, b) for a, b in engine.units(DEFAULT_PART_ROWS).ranges()]
        return _collect(engine, results)

    @staticmethod
    def _shape(result: Result, as_table: bool, on_error: OnError, convert: Any) -> Any:
        if on_error not in ("raise", "return"):
            raise UsageError(f"on_error must be 'raise' or 'return', got {on_error!r}")
        if on_error == "return":
            return result
        if result.errors:
            first = result.errors[0]
            where = f"row {first.row}" if first.row is not None else f"id {first.id!r}"
            raise RowError(
                f"{where}: {first.code}: {first.message} ({len(result.errors)} bad row(s))",
                errors=result.errors,
                hint='on_error="return" gives the good rows and the error rows instead',
            )
        return result.table if as_table else convert(result.table)


def _collect(engine: TaskEngine, results: list[BlockResult]) -> Result:
    import pyarrow as pa

    tables = [r.table for r in results if r.table is not None]
    errors = [e for r in results for e in r.errors]
    if not tables:
        return Result(engine.empty_schema().empty_table(), errors)
    schema = tables[-1].schema
    return Result(pa.concat_tables([t.cast(schema) for t in tables]), errors)


def _fixed_size(column: pa.ChunkedArray) -> np.ndarray:
    import numpy as np

    arr = column.combine_chunks()
    width = arr.type.list_size
    values = arr.values.to_numpy(zero_copy_only=False)
    return np.asarray(values, dtype=values.dtype).reshape(len(arr), width)


def _ragged(table: pa.Table, name: str) -> list[np.ndarray]:
    import numpy as np

    out: list[np.ndarray] = []
    column = table.column(name).combine_chunks()
    width = column.type.value_type.list_size
    for i in range(len(column)):
        row = column[i].values  # fixed_size_list<float32>[labels], one per token
        flat = row.flatten().to_numpy(zero_copy_only=False) if len(row) else np.zeros(0, np.float32)
        out.append(flat.reshape(len(row), width))
    return out


def _lexical(column: pa.ChunkedArray) -> list[dict[int, float]]:
    return [dict(row) for row in column.to_pylist()]


def _m3_outputs(table: pa.Table) -> dict[str, Any]:
    """BGE-M3's outputs under FlagEmbedding's names: dense_vecs [n, H], lexical_weights, colbert_vecs."""
    out: dict[str, Any] = {}
    names = table.column_names
    if "embedding" in names:
        out["dense_vecs"] = _fixed_size(table.column("embedding"))
    if "lexical_weights" in names:
        out["lexical_weights"] = _lexical(table.column("lexical_weights"))
    if "colbert_embeddings" in names:
        out["colbert_vecs"] = _ragged(table, "colbert_embeddings")
    return out


def load(model: str | os.PathLike[str] | None = None, *, config: str | None = None, **engine_options: Any) -> Model:
    """Resolve `model` (a directory or a cached Hugging Face id; None: the bundled all-MiniLM-L6-v2) once; the
    weights load at the first call that needs them. Options: `device`, `dtype`, `threads`, `max_batch_tokens`,
    `max_batch_size`, `window_rows`, `trust_remote_code`, `hf_overrides`, `convert`, `max_model_len`, and
    `config` (a preset whose hf_overrides change the model)."""
    return Model(model, config=config, **engine_options)


def _split(options: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """A one-shot call's options: those of `load()` and those of the task."""
    load_opts = {k: options.pop(k) for k in list(options) if k in ENGINE_FIELDS}
    return load_opts, options


def embed(texts: Sequence[str], *, model: str | None = None, **options: Any) -> Any:
    """`poolcli.load(model, ...).embed(texts, ...)` in one call (the model is loaded for this call only)."""
    load_opts, call = _split(options)
    return load(model, **load_opts).embed(texts, **call)


def classify(texts: Sequence[str], *, model: str | None = None, **options: Any) -> Any:
    """`poolcli.load(model, ...).classify(texts, ...)` in one call."""
    load_opts, call = _split(options)
    return load(model, **load_opts).classify(texts, **call)


def token_classify(texts: Sequence[str], *, model: str | None = None, **options: Any) -> Any:
    """`poolcli.load(model, ...).token_classify(texts, ...)` in one call."""
    load_opts, call = _split(options)
    return load(model, **load_opts).token_classify(texts, **call)


def token_embed(texts: Sequence[str], *, model: str | None = None, **options: Any) -> Any:
    """`poolcli.load(model, ...).token_embed(texts, ...)` in one call."""
    load_opts, call = _split(options)
    return load(model, **load_opts).token_embed(texts, **call)


def score(
    pairs_or_texts_1: Sequence[Any], texts_2: Sequence[str] | None = None, *, model: str | None = None, **options: Any
) -> Any:
    """`poolcli.load(model, ...).score(pairs)` or `.score(texts_1, texts_2)` in one call."""
    load_opts, call = _split(options)
    return load(model, **load_opts).score(pairs_or_texts_1, texts_2, **call)


def rerank(query: str, documents: Sequence[str], *, model: str | None = None, **options: Any) -> Any:
    """`poolcli.load(model, ...).rerank(query, documents, ...)` in one call."""
    load_opts, call = _split(options)
    return load(model, **load_opts).rerank(query, documents, **call)


def run_file(task: Task, input: str, output: str | None = None, **options: Any) -> dict[str, Any]:
    """Exactly what `poolcli <task> INPUT -o OUTPUT` runs (parts, resume, fingerprint, error file, lock), with
    the command line's options as keyword arguments (`input2` for score's second input). Returns the summary;
    a run that fails or stops raises the typed error (`ErrorBudgetExceeded` and `Interrupted` carry the summary
    of what was committed as `.summary`). No progress bar unless `progress=True`."""
    from poolcli.drivers.run import run_file_request

    check_fields(task, options, what=f"run_file({task!r})")
    req = Request(task=task, input=input, output=output, **{"quiet": True, "progress": False, **options})
    outcome = run_file_request(req, make_progress=_progress if options.get("progress") else None)
    summary = outcome.summary.as_dict()
    if outcome.error is not None:
        error: PoolcliError = outcome.error
        error.summary = summary
        raise error
    return summary


def plan_file(task: Task, input: str, output: str | None = None, **options: Any) -> dict[str, Any]:
    """What `run_file` with the same arguments would do, as `poolcli <task> ... --dry-run` prints it: the model,
    the pooling plan, backend, dtype and device, the input's rows, the output schema and paths, and what a rerun
    would resume. Raises exactly what `run_file` would raise before loading the weights; loads no weights and
    writes nothing."""
    from poolcli.drivers.dry_run import plan_file_request

    check_fields(task, options, what=f"plan_file({task!r})")
    req = Request(task=task, input=input, output=output, **{"quiet": True, "progress": False, **options})
    return plan_file_request(req)


def _progress(description: str, driver: Any) -> Any:
    from poolcli.console import make_progress

    return make_progress(description, quiet=False, progress=True)
