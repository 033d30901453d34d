"""`score` and `rerank`: (query, document) pairs -> one number each.

All pairs of a part flow through one length-sorted stream (windows of `window_rows` pairs, cut into batches under
the padded-token budget), whatever query they belong to; rerank then sorts each query's documents. The scorer
follows the plan (`poolcli.engine.scorers`): a cross-encoder, a bi-encoder or late interaction.

The engine works on a `PairJob` (every text in memory, pairs as indices): its units are pairs (score) or queries
(rerank), and `run_units(a, b)` scores units [a, b) into one table.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import msgspec
import numpy as np

from poolcli.config import EngineConfig, ScoreOptions
from poolcli.engine.base import BlockResult, TaskEngine
from poolcli.engine.batch import OnBatch, StopCheck
from poolcli.engine.plan import ScorePlan
from poolcli.errors import UsageError
from poolcli.faults import NO_FAULTS, Faults
from poolcli.io.pairs import Pair, PairJob, TextRow
from poolcli.io.records import ErrorRow

if TYPE_CHECKING:
    import pyarrow as pa

    from poolcli.engine.scorers import Scorer
    from poolcli.io.tables import RerankTableBuilder, ScoreTableBuilder
    from poolcli.model.load import Loader


class Units(msgspec.Struct):
    """What a part covers: pairs (score) or queries (rerank)."""

    n: int
    per_part: int

    def ranges(self) -> list[tuple[int, int]]:
        """Each part's units [start, stop), in order (one empty part for an empty job)."""
        return [(a, min(self.n, a + self.per_part)) for a in range(0, max(self.n, 1), self.per_part)]


class ScoreEngine(TaskEngine):
    """One score per pair (score) or a ranking per query (rerank), through the plan's scorer."""

    def __init__(
        self,
        plan: ScorePlan,
        job: PairJob,
        loader: Loader,
        config: EngineConfig,
        *,
        rerank: bool,
        options: ScoreOptions | None = None,
        keep_columns: tuple[str, ...] = (),
        faults: Faults = NO_FAULTS,
        warn: Callable[[str], None] = lambda message: None,
    ) -> None:
        super().__init__(plan.model, loader, config, faults=faults, warn=warn)
        options = options or ScoreOptions()
        if rerank and options.top_n < 0:
            raise UsageError(f"--top-n must be 0 or -1 (all), or a positive count, got {options.top_n}")
        self.task = "rerank" if rerank else "score"
        self.rerank = rerank
        self.plan = plan
        self.job = job
        self.options = options
        self.keep_columns = keep_columns
        self.scorer: Scorer | None = None
        self.builder: ScoreTableBuilder | RerankTableBuilder
        from poolcli.io.tables import RerankTableBuilder, ScoreTableBuilder, check_keep_columns, id_type

        if rerank:
            self.id_column, self.value_column = "query_id", "relevance_score"
            self.builder = RerankTableBuilder(
                query_kind=id_type(g.query_id for g in job.groups),
                document_kind=id_type(p.id for p in job.pairs),
                return_documents=options.return_documents,
            )
        else:
            self.id_column, self.value_column = "id", "score"
            pair_kind = id_type([p.id_1 for p in job.pairs] + [p.id_2 for p in job.pairs]) if job.two_ids else None
            self.builder = ScoreTableBuilder(
                id_kind=id_type(p.id for p in job.pairs), pair_kind=pair_kind, keep_columns=keep_columns
            )
            check_keep_columns(keep_columns, self.builder.output_fields())

    def describe(self) -> dict[str, Any]:
        return self.plan.describe()

    def identity(self) -> dict[str, Any]:
        return super().identity() | {
            "input_form": self.job.form,
            "score_options": msgspec.to_builtins(self.options),
        }

    def empty_schema(self) -> pa.Schema:
        return self.builder.empty_schema()

    def output_schema(self) -> pa.Schema:
        """The schema of the whole job's output, before any pair is scored (a dry run's): the table builder's
        table of every pair that is not an error row already, with kept columns typed by their values as the
        assembled output types them."""
        job = self.job
        if self.rerank or not self.keep_columns:
            return self.empty_schema()
        good = [p for p, pair in enumerate(job.pairs) if _pair_error(job, pair, rerank=False) is None]
        table = self._score_table(good, dict.fromkeys(good, 0.0))
        return table.schema if table is not None else self.empty_schema()

    def units(self, part_rows: int) -> Units:
        """How many units the job has, and how many go in one part of about `part_rows` pairs."""
        job = self.job
        if not self.rerank:
            return Units(len(job.pairs), part_rows)
        groups = max(1, len(job.groups))
        # A rerank part holds whole queries, about `part_rows` pairs of them.
        return Units(len(job.groups), max(1, part_rows * groups // max(1, len(job.pairs))))

    def pairs_in(self, a: int, b: int) -> int:
        """Pairs of units [a, b)."""
        job = self.job
        return (job.groups[b - 1].stop - job.groups[a].start) if self.rerank and b > a else (b - a)

    def tokenizer_limit(self) -> int:
        if self.scorer is None:
            from poolcli.engine.scorers import make_scorer

            self.scorer = make_scorer(self)
        return self.scorer.max_tokens

    def _load_model(self) -> int:
        self.tokenizer_limit()
        assert self.scorer is not None
        self.scorer.load()
        return self.scorer.pad_id

    def run_units(
        self, start: int, stop_unit: int, *, stop: StopCheck = lambda: None, on_batch: OnBatch = lambda r, t: None
    ) -> BlockResult:
        """Score units [start, stop_unit): their table, error rows, tokens and truncated pairs."""
        self.load()
        assert self.scorer is not None
        job, rerank = self.job, self.rerank
        errors: list[ErrorRow] = []
        if rerank:
            groups = job.groups[start:stop_unit]
            pair_ids = [p for g in groups for p in range(g.start, g.stop)]
            gid_of = {p: start + gi for gi, g in enumerate(groups) for p in range(g.start, g.stop)}
            # Errors of a query with no group (no group key) go with the first part.
            errors += [
                e for u, e in job.extra_errors if start <= u < stop_unit or (start == 0 and u >= len(job.groups))
            ]
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
        result = self.scorer.score(texts, stop, on_batch)
        ok: dict[int, float] = {}
        queries_reported: set[int] = set()
        for j, p in enumerate(good):
            if j not in result.failed:
                ok[p] = float(result.scores[j])
                continue
            code, message = result.failed[j]
            pair = job.pairs[p]
            by_query = j in result.query_failed
            row = job.queries[pair.q] if by_query else job.docs[pair.d]
            if rerank:
                # A query at fault is one error row for its whole ranking; a document names its place in the row.
                gid = gid_of[p]
                if by_query:
                    if gid in queries_reported:
                        continue
                    queries_reported.add(gid)
                else:
                    message = f"documents[{pair.index}]: {message}"
                errors.append(ErrorRow(job.groups[gid].query_id, row.source, code, message, row.line, row.row))
            else:
                errors.append(ErrorRow(pair.id, row.source, code, message, row.line, row.row))
        tokens = sum(result.n_tokens)
        n_trunc = sum(result.truncated)
        errors.sort(key=lambda e: e.row if e.row is not None else -1)
        table = self._rerank_table(start, stop_unit, ok) if rerank else self._score_table(pair_ids, ok)
        return BlockResult(table, errors, tokens, n_trunc)

    def _rerank_table(self, start: int, stop_unit: int, ok: dict[int, float]) -> pa.Table | None:
        from poolcli.io.tables import RerankTableBuilder

        job, opts = self.job, self.options
        builder = self.builder
        assert isinstance(builder, RerankTableBuilder)
        cols: dict[str, list[Any]] = {name: [] for name in builder.columns}
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
                cols["document"].append(job.docs[pair.d].text)
        return builder.table(cols) if cols["query_id"] else None

    def _score_table(self, pair_ids: list[int], ok: dict[int, float]) -> pa.Table | None:
        from poolcli.io.tables import ScoreTableBuilder

        job = self.job
        builder = self.builder
        assert isinstance(builder, ScoreTableBuilder)
        kept = [p for p in pair_ids if p in ok]
        if not kept:
            return None
        return builder.table(
            [job.pairs[p].id for p in kept],
            [ok[p] for p in kept],
            {c: [job.keep[c][p] for p in kept] for c in self.keep_columns},
            id_1=[job.pairs[p].id_1 for p in kept] if job.two_ids else None,
            id_2=[job.pairs[p].id_2 for p in kept] if job.two_ids else None,
        )


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
            if rerank and side == "document" and pair.index is not None:
                side = f"documents[{pair.index}]"  # which of the query's documents, as model failures say
            return ErrorRow(out_id, e.source, e.code, f"{side}: {e.message}", e.line, e.row)
    return None
