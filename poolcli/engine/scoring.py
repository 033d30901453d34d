"""`score` and `rerank`: (query, document) pairs -> one number each, committed in parts that resume like embed.

All pairs of a part flow through one length-sorted stream (windows of `window_rows` pairs, cut into batches under
the padded-token budget), whatever query they belong to; rerank then sorts each query's documents. Three scorers:
a cross-encoder (the pair through a classifier), a bi-encoder (cosine of two embeddings, each distinct text
embedded once) and late interaction (MaxSim over token vectors, each distinct text encoded once).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec
import numpy as np

from poolcli import __version__
from poolcli.config import RunConfig, ScoreOptions
from poolcli.console import Progress
from poolcli.engine.identity import fingerprint, weights_digest
from poolcli.engine.pipeline import (
    BatchLoop,
    Embedder,
    Summary,
    _check_budget,
    default_errors_path,
    output_kind,
)
from poolcli.engine.plan import ScorePlan
from poolcli.engine.signals import StopFlag
from poolcli.errors import ErrorBudgetExceeded, PoolcliError
from poolcli.faults import Faults
from poolcli.io.pairs import Pair, PairJob, TextRow
from poolcli.io.parts import Layout, PartStore
from poolcli.io.records import ErrorRow
from poolcli.io.writers import ErrorFileSink, JsonlStdoutSink
from poolcli.vocab import ErrorCode

if TYPE_CHECKING:
    import pyarrow as pa

Failed = dict[int, tuple[ErrorCode, str]]
OnBatch = Callable[[int, int], None]


class CrossEncoderScorer:
    """Each pair through the classifier: text-pair (or templated) encoding, the model's head, calibration and the
    final activation."""

    def __init__(self, run: RunConfig, plan: ScorePlan, faults: Faults, *, quiet: bool) -> None:
        from poolcli.engine.runner import ClassifierRunner, configure_threads
        from poolcli.engine.tokenize import PairEncoder
        from poolcli.pooler.heads import ClassifierHead

        self.run = run
        self.faults = faults
        self.encoder = PairEncoder(plan)
        self.runner = ClassifierRunner(
            plan.model,
            device=run.device,
            dtype=run.dtype,
            trust_remote_code=run.trust_remote_code,
            pad_id=self.encoder.pad_id,
        )
        self.threads = configure_threads(run.threads, self.runner.device)
        self.head = ClassifierHead(
            plan.activation,
            use_activation=plan.use_activation,
            logit_mean=plan.logit_mean,
            logit_sigma=plan.logit_sigma,
        )
        self.loop = BatchLoop.for_run(run, self.runner.device.type, quiet=quiet)
        self.batches = 0
        self.padded_tokens = 0

    def score(
        self, pairs: list[tuple[str, str]], stop: StopFlag, on_batch: OnBatch
    ) -> tuple[np.ndarray, Failed, list[int], list[bool]]:
        from poolcli.engine.runner import collate

        n = len(pairs)
        scores = np.zeros(n, dtype=np.float32)
        n_tokens = [0] * n
        truncated = [False] * n
        failed: Failed = {}
        f = self.faults
        step = self.run.window_rows
        for w in range(0, n, step):
            sel = list(range(w, min(n, w + step)))
            enc = self.encoder.encode(pairs[w : w + step])

            def forward(batch: list[int], enc: Any = enc, sel: list[int] = sel, w: int = w) -> None:
                ids, mask = collate([enc[j].ids for j in batch], self.encoder.pad_id)
                types = None
                if enc[batch[0]].type_ids is not None:
                    types = collate([enc[j].type_ids for j in batch], 0)[0]
                rows = [sel[j] for j in batch]
                f.before_batch(rows, ids.numel())
                out = self.head(self.runner.logits(ids, mask, types))[:, 0].cpu().numpy()
                for j, row in enumerate(rows):
                    if row in f.nan_rows:
                        out[j] = np.nan
                scores[[w + j for j in batch]] = out
                self.batches += 1
                self.padded_tokens += ids.numel()

            for j, code in self.loop.run([len(e.ids) for e in enc], forward, stop, on_batch).items():
                failed[w + j] = code
            for j, e in enumerate(enc):
                n_tokens[w + j] = len(e.ids)
                truncated[w + j] = e.truncated
        for j in np.flatnonzero(~np.isfinite(scores)).tolist():
            failed.setdefault(j, ("NONFINITE_OUTPUT", "the model produced NaN or Inf for this pair"))
        return scores, failed, n_tokens, truncated


class _TextCache:
    """Distinct texts -> their representation, computed once per run (both sides share it)."""

    def __init__(self) -> None:
        self.values: dict[str, Any] = {}
        self.failed: dict[str, tuple[ErrorCode, str]] = {}
        self.tokens: dict[str, tuple[int, bool]] = {}

    def fill(
        self,
        texts: list[str],
        window: int,
        encode: Callable[[list[str]], Any],
        compute: Callable[[list[list[int]]], tuple[Any, Failed]],
    ) -> None:
        """Compute the texts not seen yet, a window at a time: `compute(token ids)` -> (values, failures)."""
        todo = [t for t in dict.fromkeys(texts) if t not in self.values and t not in self.failed]
        for w in range(0, len(todo), window):
            chunk = todo[w : w + window]
            enc = encode(chunk)
            values, failed = compute([e.ids for e in enc])
            for j, text in enumerate(chunk):
                self.tokens[text] = (len(enc[j].ids), enc[j].truncated)
                if j in failed:
                    self.failed[text] = failed[j]
                else:
                    self.values[text] = values[j]

    def combine(
        self, pairs: list[tuple[str, str]], sim: Callable[[Any, Any], float]
    ) -> tuple[np.ndarray, Failed, list[int], list[bool]]:
        scores = np.zeros(len(pairs), dtype=np.float32)
        failed: Failed = {}
        n_tokens: list[int] = []
        truncated: list[bool] = []
        for i, (q, d) in enumerate(pairs):
            tq, td = self.tokens[q], self.tokens[d]
            n_tokens.append(tq[0] + td[0])
            truncated.append(tq[1] or td[1])
            bad = self.failed.get(q) or self.failed.get(d)
            if bad is not None:
                failed[i] = bad
                continue
            scores[i] = sim(self.values[q], self.values[d])
        return scores, failed, n_tokens, truncated


class BiEncoderScorer:
    """Cosine of the two texts' embeddings (the full embed head: prompt, pooling, projector, normalize), in fp32
    inputs with a float64 dot product."""

    def __init__(self, run: RunConfig, plan: ScorePlan, faults: Faults, *, quiet: bool) -> None:
        assert plan.embed is not None
        self.embedder = Embedder(run, plan.embed, faults, quiet=quiet)
        self.loop = self.embedder.loop
        self.threads = self.embedder.threads
        self.cache = _TextCache()
        self.window = run.window_rows

    @property
    def batches(self) -> int:
        return self.embedder.batches

    @property
    def padded_tokens(self) -> int:
        return self.embedder.padded_tokens

    def score(
        self, pairs: list[tuple[str, str]], stop: StopFlag, on_batch: OnBatch
    ) -> tuple[np.ndarray, Failed, list[int], list[bool]]:
        def compute(seqs: list[list[int]]) -> tuple[Any, Failed]:
            vectors, failed = self.embedder.embed(seqs, list(range(len(seqs))), stop, on_batch)
            return vectors.astype(np.float64), failed

        self.cache.fill([t for pair in pairs for t in pair], self.window, self.embedder.encoder.encode, compute)
        return self.cache.combine(pairs, _cosine)


class LateInteractionScorer:
    """MaxSim over token vectors: every token's final hidden state (special tokens included), through the
    model's projector if it has one, L2-normalized per token, summed over query tokens of the best document match."""

    def __init__(self, run: RunConfig, plan: ScorePlan, faults: Faults, *, quiet: bool) -> None:
        from poolcli.engine.runner import ModelRunner, configure_threads, load_projector
        from poolcli.engine.tokenize import TextEncoder

        assert plan.embed is not None
        self.run = run
        self.normalize = plan.embed.params.normalize
        self.by_length = plan.maxsim_normalize
        self.runner = ModelRunner(
            plan.model, device=run.device, dtype=run.dtype, trust_remote_code=run.trust_remote_code
        )
        self.threads = configure_threads(run.threads, self.runner.device)
        self.encoder = TextEncoder(plan.embed)
        projector = load_projector(Path(plan.model.root), plan.model.dense)
        self.projector = projector.to(self.runner.device) if projector is not None else None
        self.loop = BatchLoop.for_run(run, self.runner.device.type, quiet=quiet)
        self.cache = _TextCache()
        self.batches = 0
        self.padded_tokens = 0

    def token_vectors(self, seqs: list[list[int]], stop: StopFlag, on_batch: OnBatch) -> tuple[list[Any], Failed]:
        import torch
        import torch.nn.functional as F

        from poolcli.engine.runner import collate

        out: list[Any] = [None] * len(seqs)

        def forward(batch: list[int]) -> None:
            ids, mask = collate([seqs[j] for j in batch], self.encoder.pad_id)
            with torch.inference_mode():
                hidden = self.runner.hidden_states(ids, mask).float()
                if self.projector is not None:
                    hidden = self.projector(hidden)
                if self.normalize:
                    hidden = F.normalize(hidden, p=2, dim=-1)
            hidden = hidden.cpu()
            for k, j in enumerate(batch):
                out[j] = hidden[k, : len(seqs[j])].clone()
            self.batches += 1
            self.padded_tokens += ids.numel()

        failed = self.loop.run([len(s) for s in seqs], forward, stop, on_batch)
        return out, failed

    def score(
        self, pairs: list[tuple[str, str]], stop: StopFlag, on_batch: OnBatch
    ) -> tuple[np.ndarray, Failed, list[int], list[bool]]:
        from poolcli.pooler.heads import maxsim

        def compute(seqs: list[list[int]]) -> tuple[Any, Failed]:
            return self.token_vectors(seqs, stop, on_batch)

        def sim(a: Any, b: Any) -> float:
            return maxsim(a, b, normalize_by_length=self.by_length)

        self.cache.fill([t for pair in pairs for t in pair], self.run.window_rows, self.encoder.encode, compute)
        return self.cache.combine(pairs, sim)


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    denom = float(np.linalg.norm(a) * np.linalg.norm(b))
    return float(a @ b) / denom if denom > 0 else 0.0


Scorer = CrossEncoderScorer | BiEncoderScorer | LateInteractionScorer


def make_scorer(run: RunConfig, plan: ScorePlan, faults: Faults) -> Scorer:
    if plan.score_type == "cross-encoder":
        return CrossEncoderScorer(run, plan, faults, quiet=run.quiet)
    if plan.score_type == "bi-encoder":
        return BiEncoderScorer(run, plan, faults, quiet=run.quiet)
    return LateInteractionScorer(run, plan, faults, quiet=run.quiet)


def _text(row: TextRow) -> str:
    assert row.text is not None
    return row.text


def _pair_error(job: PairJob, pair: Pair, *, rerank: bool, query_id: Any = None) -> ErrorRow | None:
    """The error row of a pair with a bad side, or None when both sides are good."""
    q, d = job.queries[pair.q], job.docs[pair.d]
    for side, row in (("query", q), ("document", d)):
        if row.error is not None or row.text is None:
            e = row.error or ErrorRow(row.id, row.source, "MISSING_FIELD", "text is missing", row.line, row.row)
            out_id = query_id if rerank else pair.id
            return ErrorRow(out_id, e.source, e.code, f"{side}: {e.message}", e.line, e.row)
    return None


def _id_type(values: Any) -> str:
    """Ids keep their type (int64 or string); a mix of types is written as strings. Decided once per job, so
    every part of a run (and of a resumed run) has the same schema."""
    kinds = {type(v) for v in values if v is not None}
    return "int64" if kinds <= {int} else "string"


def _id_array(values: list[Any], kind: str) -> pa.Array:
    import pyarrow as pa

    if kind == "int64":
        return pa.array(values, type=pa.int64())
    return pa.array([v if v is None or isinstance(v, str) else str(v) for v in values], type=pa.string())


class _Units(msgspec.Struct):
    """What a part covers: pairs (score) or queries (rerank)."""

    n: int
    per_part: int


def _units(job: PairJob, rerank: bool, part_rows: int) -> _Units:
    if not rerank:
        return _Units(len(job.pairs), part_rows)
    groups = max(1, len(job.groups))
    # A rerank part holds whole queries, about `part_rows` pairs of them.
    per = max(1, part_rows * groups // max(1, len(job.pairs)))
    return _Units(len(job.groups), per)


class _IdKinds(msgspec.Struct):
    first: str
    """`id` (score) or `query_id` (rerank)."""
    second: str = "int64"
    """`document_id` (rerank)."""
    pair: str = "int64"
    """`id_1` and `id_2` (two inputs)."""


def _id_kinds(job: PairJob, rerank: bool) -> _IdKinds:
    if rerank:
        return _IdKinds(_id_type(g.query_id for g in job.groups), _id_type(p.id for p in job.pairs))
    kinds = _IdKinds(_id_type(p.id for p in job.pairs))
    if job.two_ids:
        kinds.pair = _id_type([p.id_1 for p in job.pairs] + [p.id_2 for p in job.pairs])
    return kinds


def _part(
    job: PairJob,
    scorer: Scorer,
    opts: ScoreOptions,
    rerank: bool,
    start: int,
    stop_unit: int,
    stop: StopFlag,
    on_batch: OnBatch,
    metadata: dict[bytes, bytes],
    keep_columns: tuple[str, ...],
    kinds: _IdKinds,
) -> tuple[pa.Table | None, list[ErrorRow], int, int]:
    """Score one part's units; returns (table, error rows, tokens, truncated pairs)."""
    import pyarrow as pa

    errors: list[ErrorRow] = []
    if rerank:
        groups = job.groups[start:stop_unit]
        pair_ids = [p for g in groups for p in range(g.start, g.stop)]
        gid_of = {p: start + gi for gi, g in enumerate(groups) for p in range(g.start, g.stop)}
        # Errors of a query with no group (no group key) go with the first part.
        errors += [e for u, e in job.extra_errors if start <= u < stop_unit or (start == 0 and u >= len(job.groups))]
    else:
        pair_ids = list(range(start, stop_unit))
        gid_of = {}
    good: list[int] = []
    for p in pair_ids:
        query_id = job.groups[gid_of[p]].query_id if rerank else None
        err = _pair_error(job, job.pairs[p], rerank=rerank, query_id=query_id)
        if err is not None:
            errors.append(err)
        else:
            good.append(p)
    texts = [(_text(job.queries[job.pairs[p].q]), _text(job.docs[job.pairs[p].d])) for p in good]
    scores, failed, n_tokens, truncated = scorer.score(texts, stop, on_batch)
    ok: dict[int, float] = {}
    for j, p in enumerate(good):
        if j in failed:
            code, message = failed[j]
            pair = job.pairs[p]
            row = job.docs[pair.d]
            out_id = job.groups[gid_of[p]].query_id if rerank else pair.id
            errors.append(ErrorRow(out_id, row.source, code, message, row.line, row.row))
        else:
            ok[p] = float(scores[j])
    tokens = sum(n_tokens)
    n_trunc = sum(truncated)
    errors.sort(key=lambda e: e.row if e.row is not None else -1)
    if rerank:
        cols: dict[str, list[Any]] = {
            "query_id": [],
            "rank": [],
            "index": [],
            "document_id": [],
            "relevance_score": [],
        }
        if opts.return_documents:
            cols["document"] = []
        for g in job.groups[start:stop_unit]:
            members = [p for p in range(g.start, g.stop) if p in ok]
            order = np.argsort(-np.array([ok[p] for p in members], dtype=np.float64), kind="stable")
            if opts.top_n > 0:
                order = order[: opts.top_n]
            for rank, k in enumerate(order.tolist(), start=1):
                pair = job.pairs[members[k]]
                cols["query_id"].append(g.query_id)
                cols["rank"].append(rank)
                cols["index"].append(pair.index)
                cols["document_id"].append(pair.id)
                cols["relevance_score"].append(ok[members[k]])
                if opts.return_documents:
                    cols["document"].append(job.docs[pair.d].text)
        if not cols["query_id"]:
            return None, errors, tokens, n_trunc
        arrays = [
            _id_array(cols["query_id"], kinds.first),
            pa.array(cols["rank"], type=pa.int32()),
            pa.array(cols["index"], type=pa.int32()),
            _id_array(cols["document_id"], kinds.second),
            pa.array(cols["relevance_score"], type=pa.float32()),
        ]
        names = ["query_id", "rank", "index", "document_id", "relevance_score"]
        if opts.return_documents:
            arrays.append(pa.array(cols["document"], type=pa.string()))
            names.append("document")
        return pa.Table.from_arrays(arrays, names=names).replace_schema_metadata(metadata), errors, tokens, n_trunc
    kept = [p for p in pair_ids if p in ok]
    if not kept:
        return None, errors, tokens, n_trunc
    arrays = [_id_array([job.pairs[p].id for p in kept], kinds.first)]
    names = ["id"]
    if job.two_ids:
        arrays += [
            _id_array([job.pairs[p].id_1 for p in kept], kinds.pair),
            _id_array([job.pairs[p].id_2 for p in kept], kinds.pair),
        ]
        names += ["id_1", "id_2"]
    arrays.append(pa.array([ok[p] for p in kept], type=pa.float32()))
    names.append("score")
    for c in keep_columns:
        arrays.append(pa.array([job.keep[c][p] for p in kept]))
        names.append(c)
    return pa.Table.from_arrays(arrays, names=names).replace_schema_metadata(metadata), errors, tokens, n_trunc


def _schema(job: PairJob, rerank: bool, opts: ScoreOptions, metadata: dict[bytes, bytes], kinds: _IdKinds) -> pa.Schema:
    """The output schema when no row was written."""
    import pyarrow as pa

    def t(kind: str) -> pa.DataType:
        return pa.int64() if kind == "int64" else pa.string()

    if rerank:
        fields = [
            pa.field("query_id", t(kinds.first)),
            pa.field("rank", pa.int32()),
            pa.field("index", pa.int32()),
            pa.field("document_id", t(kinds.second)),
            pa.field("relevance_score", pa.float32()),
        ]
        if opts.return_documents:
            fields.append(pa.field("document", pa.string()))
    else:
        fields = [pa.field("id", t(kinds.first))]
        if job.two_ids:
            fields += [pa.field("id_1", t(kinds.pair)), pa.field("id_2", t(kinds.pair))]
        fields.append(pa.field("score", pa.float32()))
    return pa.schema(fields, metadata=metadata)


def run_score(
    run: RunConfig, plan: ScorePlan, job: PairJob, progress: Progress, faults: Faults | None = None
) -> Summary:
    faults = faults if faults is not None else Faults.from_env()
    from poolcli.engine.runner import resolve_device, resolve_dtype

    started = time.monotonic()
    rerank = run.task == "rerank"
    opts = run.score or ScoreOptions()
    summary = Summary(task=run.task, output=run.output)
    model = plan.model
    identity = {
        "poolcli_version": __version__,
        "task": run.task,
        "model": model.name,
        "model_weights_sha256": weights_digest(Path(model.root)),
        "plan": plan.describe(),
        "dtype": str(resolve_dtype(run.dtype, resolve_device(run.device))).removeprefix("torch."),
        "input_form": job.form,
        "score_options": msgspec.to_builtins(opts),
        "part_rows": run.part_rows,
        "keep_columns": list(run.keep_columns),
        "text_field": run.text_field,
        "id_field": run.id_field,
        "input": [entry for s in job.sources for entry in s.listing()],
    }
    run_fingerprint = fingerprint(identity)
    metadata = {b"poolcli": msgspec.json.encode({**identity, "fingerprint": run_fingerprint})}
    units = _units(job, rerank, run.part_rows)
    kinds = _id_kinds(job, rerank)
    n_parts = max(1, -(-units.n // units.per_part))
    id_column, value_column = ("query_id", "relevance_score") if rerank else ("id", "score")
    kind = output_kind(run.output)
    scorer: Scorer | None = None
    total_pairs = len(job.pairs)
    done_pairs = 0

    def part_range(k: int) -> tuple[int, int]:
        return k * units.per_part, min(units.n, (k + 1) * units.per_part)

    def part_pairs(a: int, b: int) -> int:
        return (job.groups[b - 1].stop - job.groups[a].start) if rerank and b > a else (b - a)

    def on_batch(rows: int, tokens: int) -> None:
        nonlocal done_pairs
        done_pairs += rows
        progress.update(done_pairs, summary.tokens + tokens, done_pairs / total_pairs if total_pairs else None)

    def load() -> Scorer:
        t = time.monotonic()
        s = make_scorer(run, plan, faults)
        summary.load_seconds = round(time.monotonic() - t, 3)
        return s

    try:
        with StopFlag() as stop:
            if kind == "stdout":
                scorer = load()
                sink = JsonlStdoutSink()
                errors_sink = ErrorFileSink(default_errors_path(run), always=run.errors is not None)
                try:
                    for k in range(n_parts):
                        a, b = part_range(k)
                        table, errs, tokens, trunc = _part(
                            job, scorer, opts, rerank, a, b, stop, on_batch, metadata, run.keep_columns, kinds
                        )
                        if table is not None:
                            sink.write(table)
                        errors_sink.write(errs)
                        _count(summary, b - a, table, errs, tokens, trunc)
                        _check_budget(run, summary)
                    _check_budget(run, summary, final=True)
                    committed = errors_sink.commit()
                    summary.errors_file = str(committed) if committed else None
                except BaseException:
                    # Rows already streamed are final; so are the error rows of the same stretch of input.
                    published = errors_sink.publish_partial()
                    summary.errors_file = str(published) if published else None
                    raise
            else:
                layout = Layout.for_output(run.output, "dir" if kind == "dir" else "file")
                store = PartStore(layout, run_fingerprint, identity, faults)
                errors_path = default_errors_path(run)
                store.stale_error_files = [errors_path]
                try:
                    if store.open(overwrite=run.overwrite or any(s.files == ["-"] for s in job.sources)):
                        summary.status = "already complete"
                        summary.rows_out = store.committed_rows()
                    else:
                        scorer = load()
                        schema: pa.Schema | None = None
                        try:
                            for k in range(n_parts):
                                a, b = part_range(k)
                                if k in store.done:
                                    summary.add_part(store.done[k], computed=False)
                                    done_pairs += part_pairs(a, b)
                                    continue
                                writer = store.begin(k, a, id_column=id_column, value_column=value_column)
                                try:
                                    table, errs, tokens, trunc = _part(
                                        job,
                                        scorer,
                                        opts,
                                        rerank,
                                        a,
                                        b,
                                        stop,
                                        on_batch,
                                        metadata,
                                        run.keep_columns,
                                        kinds,
                                    )
                                    if table is not None:
                                        writer.write(table)
                                        schema = schema or table.schema
                                    writer.errors.extend(errs)
                                    writer.rows_in = b - a
                                    writer.tokens = tokens
                                    writer.truncated = trunc
                                    writer.batch_budget = scorer.loop.budget
                                    summary.add_part(writer.commit(), computed=True)
                                except BaseException:
                                    writer.abort()
                                    raise
                                _check_budget(run, summary)
                            _check_budget(run, summary, final=True)
                            write_errors = summary.errors > 0 or run.errors is not None
                            store.finish(
                                n_parts,
                                schema or _schema(job, rerank, opts, metadata, kinds),
                                errors_path if write_errors else None,
                            )
                            summary.errors_file = str(errors_path) if write_errors else None
                        except ErrorBudgetExceeded:
                            store.finish_errors_only(errors_path)
                            summary.errors_file = str(errors_path)
                            raise
                finally:
                    store.close()
    except PoolcliError as exc:
        summary.stopped(exc, started)
        raise
    finally:
        progress.close()
    return summary.finish(scorer, started)


def _count(summary: Summary, units: int, table: pa.Table | None, errs: list[ErrorRow], tokens: int, trunc: int) -> None:
    rows = table.num_rows if table is not None else 0
    summary.rows_in += units
    summary.rows_out += rows
    summary.rows_computed += rows
    summary.errors += len(errs)
    summary.tokens += tokens
    summary.truncated += trunc
