"""Inputs of `score` and `rerank`: pairs files, two files, `--query`, rerank rows and grouped pairs.

Every form becomes a `PairJob`: two tables of texts (queries and documents, each text once) and the pairs between
them, in output order, each pair carrying the ids it is written with. A bad row keeps its position, so pairing by
position (the 1:1/1:N/N:N rules) never shifts; a pair with a bad side becomes an error row and costs nothing else.
The texts are held in memory (the pairs are indices into them).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec

from poolcli.errors import DataError, UsageError
from poolcli.io.readers import InputSpec, Source, memory_source, open_source, peek_columns
from poolcli.io.records import ErrorRow
from poolcli.vocab import ErrorCode

PAIR_FIELDS = (("text_1", "text_2"), ("query", "document"))


class TextRow(msgspec.Struct):
    """One input row of a text table: its id, text, where it came from, and its error if it is bad."""

    id: Any
    text: str | None
    source: str
    line: int | None
    row: int | None
    error: ErrorRow | None = None


class Pair(msgspec.Struct, array_like=True):
    q: int
    """Index into `PairJob.queries`."""
    d: int
    """Index into `PairJob.docs`."""
    id: Any
    """Score: the output row id. Rerank: the document id."""
    id_1: Any = None
    id_2: Any = None
    group: int = 0
    """Rerank: the query group; score: unused."""
    index: int = 0
    """Rerank: the document's position in its query's list."""


class Group(msgspec.Struct):
    """One rerank query: its id and its pairs (`PairJob.pairs[start:stop]`)."""

    query_id: Any
    start: int
    stop: int


class PairJob(msgspec.Struct, kw_only=True):
    form: str
    """pairs | two-files | cross | query | rerank-rows | rerank-query | rerank-grouped"""
    queries: list[TextRow]
    docs: list[TextRow]
    pairs: list[Pair]
    groups: list[Group] = msgspec.field(default_factory=list)
    keep: dict[str, list[Any]] = msgspec.field(default_factory=dict)
    """Kept columns, one value per pair (pairs file and --query forms)."""
    extra_errors: list[tuple[int, ErrorRow]] = msgspec.field(default_factory=list)
    """Rerank rows that produced no pair at all (a bad query row), with the query group they belong to."""
    sources: list[Source] = msgspec.field(default_factory=list)

    @property
    def two_ids(self) -> bool:
        return self.form in ("two-files", "cross")


def _text_problem(value: Any, field: str) -> tuple[ErrorCode, str] | None:
    if value is None:
        return "MISSING_FIELD", f"field {field!r} is missing"
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError:
            return "INVALID_UTF8", f"field {field!r} is not valid UTF-8"
    if not isinstance(value, str):
        return "WRONG_TYPE", f"field {field!r} must be a string, got {type(value).__name__}"
    if not value.strip():
        return "EMPTY_TEXT", f"field {field!r} is empty"
    return None


def _as_text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def read_table(source: Source, extra: tuple[str, ...] = ()) -> tuple[list[TextRow], dict[str, list[Any]]]:
    """All rows of `source` in input order (bad ones included, with their error) and the `extra` columns."""
    rows: list[TextRow] = []
    keep: dict[str, list[Any]] = {c: [] for c in extra}
    for block in source.blocks(8192):
        errors = {e.row: e for e in block.errors}
        good = iter(range(len(block.rows)))
        for r in range(block.first_row, block.first_row + block.n_rows):
            if r in errors:
                e = errors[r]
                rows.append(TextRow(e.id, None, e.source, e.line, e.row, e))
                for c in extra:
                    keep[c].append(None)
                continue
            i = next(good)
            rows.append(TextRow(block.ids[i], block.texts[i], block.sources[i], block.lines[i], block.rows[i]))
            for c in extra:
                keep[c].append(block.keep[c][i])
    return rows, keep


def _bad(row: TextRow, code: ErrorCode, message: str) -> TextRow:
    return TextRow(
        row.id, None, row.source, row.line, row.row, ErrorRow(row.id, row.source, code, message, row.line, row.row)
    )


def _pair_fields(source: Source) -> tuple[str, str]:
    names = peek_columns(source)
    for a, b in PAIR_FIELDS:
        if a in names and b in names:
            return a, b
    raise DataError(
        f"{source.spec.path}: a pairs file needs columns text_1 and text_2 (or query and document); "
        f"found {', '.join(names) or 'none'}",
        hint="or give two inputs, or --query TEXT with one input",
    )


def load_score_job(
    inputs: tuple[str, ...],
    *,
    query: str | None,
    cross: bool,
    text_field: str,
    id_field: str | None,
    keep_columns: tuple[str, ...],
) -> PairJob:
    if len(inputs) == 2:
        if query is not None:
            raise UsageError("--query takes one input (the documents), not two")
        if keep_columns:
            raise UsageError("--keep-columns applies to a pairs file or --query, not to two inputs")
        s1 = open_source(InputSpec(inputs[0], text_field, id_field))
        s2 = open_source(InputSpec(inputs[1], text_field, id_field))
        return two_tables_job(read_table(s1)[0], read_table(s2)[0], cross=cross, names=inputs, sources=[s1, s2])
    if cross:
        raise UsageError("--cross needs two inputs")
    if query is not None:
        if not query.strip():
            raise UsageError("--query is empty")
        source = open_source(InputSpec(inputs[0], text_field, id_field, keep_columns))
        docs, keep = read_table(source, keep_columns)
        qrow = TextRow("query", query, "--query", None, None)
        pairs = [Pair(0, j, d.id) for j, d in enumerate(docs)]
        return PairJob(form="query", queries=[qrow], docs=docs, pairs=pairs, keep=keep, sources=[source])
    probe = open_source(InputSpec(inputs[0], text_field, id_field))
    f1, f2 = _pair_fields(probe)
    extra = tuple(dict.fromkeys((f2, *keep_columns)))
    source = open_source(InputSpec(inputs[0], f1, id_field, extra))
    rows, cols = read_table(source, extra)
    queries: list[TextRow] = []
    docs = []
    for i, row in enumerate(rows):
        queries.append(row)
        doc_value = cols[f2][i]
        problem = _text_problem(doc_value, f2) if row.error is None else None
        if problem is not None:
            docs.append(_bad(row, *problem))
        else:
            docs.append(
                TextRow(row.id, None if doc_value is None else _as_text(doc_value), row.source, row.line, row.row)
            )
    pairs = [Pair(i, i, r.id) for i, r in enumerate(rows)]
    keep = {c: cols[c] for c in keep_columns}
    return PairJob(form="pairs", queries=queries, docs=docs, pairs=pairs, keep=keep, sources=[source])


def load_rerank_job(
    inputs: tuple[str, ...],
    *,
    query: str | None,
    group_by: str | None,
    text_field: str,
    id_field: str | None,
) -> PairJob:
    if len(inputs) != 1:
        raise UsageError("rerank takes one input")
    if query is not None:
        if group_by is not None:
            raise UsageError("--query and --group-by do not go together")
        if not query.strip():
            raise UsageError("--query is empty")
        source = open_source(InputSpec(inputs[0], text_field, id_field))
        docs, _ = read_table(source)
        pairs = [Pair(0, j, d.id, index=j) for j, d in enumerate(docs)]
        qrow = TextRow(0, query, "--query", None, None)
        return PairJob(
            form="rerank-query",
            queries=[qrow],
            docs=docs,
            pairs=pairs,
            groups=[Group(0, 0, len(pairs))],
            sources=[source],
        )
    if group_by is not None:
        return _grouped(inputs[0], group_by, text_field, id_field)
    return _rerank_rows(inputs[0], id_field)


def two_tables_job(
    left: list[TextRow],
    right: list[TextRow],
    *,
    cross: bool,
    names: tuple[str, ...] = ("texts_1", "texts_2"),
    sources: list[Source] | None = None,
) -> PairJob:
    """Queries x documents: 1:N, N:N zipped, or every pair with `cross` (vLLM's pairing rules and messages)."""
    if not left:
        raise DataError("At least one text element must be given", hint=f"{names[0]} has no rows")
    if not right:
        raise DataError("At least one text_pair element must be given", hint=f"{names[1]} has no rows")
    pairs: list[Pair] = []
    if cross:
        for i, q in enumerate(left):
            for j, d in enumerate(right):
                pairs.append(Pair(i, j, len(pairs), q.id, d.id))
        form = "cross"
    elif len(left) == 1 or len(left) == len(right):
        for j, d in enumerate(right):
            i = 0 if len(left) == 1 else j
            pairs.append(Pair(i, j, j, left[i].id, d.id))
        form = "two-files"
    else:
        raise DataError(
            f"Input lengths must be either 1:1, 1:N or N:N (got {len(left)} and {len(right)} rows)",
            hint="--cross scores every pair of the two inputs",
        )
    return PairJob(form=form, queries=left, docs=right, pairs=pairs, sources=sources or [])


def memory_pairs_job(pairs: Sequence[tuple[Any, Any]]) -> PairJob:
    """(query, document) pairs held in memory (the Python API): pair i has id i; a bad side costs its pair."""
    pairs = list(pairs)
    for i, pair in enumerate(pairs):
        if not isinstance(pair, tuple | list) or len(pair) != 2:
            raise UsageError(f"pairs[{i}] is not a (text_1, text_2) pair")
    left, _ = read_table(memory_source([p[0] for p in pairs]))
    right, _ = read_table(memory_source([p[1] for p in pairs]))
    return PairJob(form="pairs", queries=left, docs=right, pairs=[Pair(i, i, i) for i in range(len(pairs))])


def memory_rerank_job(query: str, documents: Sequence[Any]) -> PairJob:
    """One query against documents held in memory (the Python API); a document's id is its position."""
    if not isinstance(query, str) or not query.strip():
        raise UsageError("query must be a non-empty string")
    docs, _ = read_table(memory_source(documents))
    pairs = [Pair(0, j, d.id, index=j) for j, d in enumerate(docs)]
    qrow = TextRow(0, query, "<memory>", None, None)
    return PairJob(form="rerank-query", queries=[qrow], docs=docs, pairs=pairs, groups=[Group(0, 0, len(pairs))])


def _grouped(path: str, group_by: str, text_field: str, id_field: str | None) -> PairJob:
    probe = open_source(InputSpec(path, text_field, id_field))
    f1, f2 = _pair_fields(probe)
    extra = tuple(dict.fromkeys((f2, group_by)))
    source = open_source(InputSpec(path, f1, id_field, extra))
    if group_by not in peek_columns(source):
        raise DataError(f"{path} has no column {group_by!r} to group by")
    rows, cols = read_table(source, extra)
    order: dict[Any, list[int]] = {}
    for i, key in enumerate(cols[group_by]):
        if key is None or isinstance(key, list | dict):
            continue
        order.setdefault(key, []).append(i)
    job = PairJob(form="rerank-grouped", queries=[], docs=[], pairs=[], sources=[source])
    for i, key in enumerate(cols[group_by]):
        if key is None or isinstance(key, list | dict):
            row = rows[i]
            missing = ErrorRow(
                row.id, row.source, "MISSING_FIELD", f"group field {group_by!r} is missing", row.line, row.row
            )
            job.extra_errors.append((0, row.error or missing))
    for key, members in order.items():
        start = len(job.pairs)
        # The group's query is its first row's; every row of the group must carry the same text.
        qtexts = {rows[i].text for i in members if rows[i].error is None}
        q = len(job.queries)
        first = rows[members[0]]
        if len(qtexts) > 1:
            job.queries.append(_bad(first, "WRONG_TYPE", f"group {key!r} has {len(qtexts)} different query texts"))
        else:
            text = next(iter(qtexts), None)
            job.queries.append(TextRow(key, text, first.source, first.line, first.row, None if text else first.error))
        for index, i in enumerate(members):
            row = rows[i]
            value = cols[f2][i]
            problem = _text_problem(value, f2) if row.error is None else None
            d = len(job.docs)
            if row.error is not None:
                job.docs.append(row)
            elif problem is not None:
                job.docs.append(_bad(row, *problem))
            else:
                job.docs.append(TextRow(row.id, _as_text(value), row.source, row.line, row.row))
            job.pairs.append(Pair(q, d, row.id, group=len(job.groups), index=index))
        job.groups.append(Group(key, start, len(job.pairs)))
    return job


def _rerank_rows(path: str, id_field: str | None) -> PairJob:
    source = open_source(InputSpec(path, "query", id_field, ("documents",)))
    rows, cols = read_table(source, ("documents",))
    job = PairJob(form="rerank-rows", queries=[], docs=[], pairs=[], sources=[source])
    for i, row in enumerate(rows):
        docs = cols["documents"][i]
        if row.error is None and not isinstance(docs, list):
            what = "missing" if docs is None else f"a {type(docs).__name__}, not a list"
            row = _bad(row, "MISSING_FIELD" if docs is None else "WRONG_TYPE", f"field 'documents' is {what}")
        if row.error is None and not docs:
            row = _bad(row, "EMPTY_TEXT", "field 'documents' is an empty list")
        start = len(job.pairs)
        q = len(job.queries)
        job.queries.append(row)
        for index, item in enumerate(docs if row.error is None else []):
            doc_id: Any = index
            text = item
            if isinstance(item, dict):
                doc_id = item.get("id", index)
                text = item.get("text")
            problem = _text_problem(text, f"documents[{index}]")
            d = len(job.docs)
            if problem is not None:
                code, message = problem
                job.docs.append(
                    TextRow(
                        doc_id,
                        None,
                        row.source,
                        row.line,
                        row.row,
                        ErrorRow(row.id, row.source, code, message, row.line, row.row),
                    )
                )
            else:
                job.docs.append(TextRow(doc_id, _as_text(text), row.source, row.line, row.row))
            job.pairs.append(Pair(q, d, doc_id, group=len(job.groups), index=index))
        if row.error is not None:
            job.extra_errors.append((len(job.groups), row.error))
        job.groups.append(Group(row.id, start, len(job.pairs)))
    return job
