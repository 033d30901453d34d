"""Streaming readers: JSONL (.gz/.zst), Parquet (file, directory, glob), CSV/TSV, TXT, stdin, and texts in memory.
The columnar formats' row generators are in `poolcli.io.columnar`, the field checks in `poolcli.io.rows`.

Every reader yields `Block`s of consecutive input rows in bounded memory. A bad row becomes an `ErrorRow` with its
position and costs nothing else; a problem with the whole input (missing file, missing column) raises a typed error.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import msgspec

from poolcli.errors import NoInputError, UsageError
from poolcli.io.records import Block
from poolcli.io.rows import MISSING, InputSpec, RowSink, numbered_lines, open_binary
from poolcli.io.spans import Span
from poolcli.vocab import ErrorCode

__all__ = ["InputFormat", "InputSpec", "Source", "memory_source", "open_source", "peek_columns"]

InputFormat = Literal["jsonl", "parquet", "csv", "tsv", "txt", "memory"]
_SUFFIXES: dict[str, InputFormat] = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".csv": "csv",
    ".tsv": "tsv",
    ".txt": "txt",
}


class Source:
    """An input: `blocks(n)` yields blocks of n input rows (the last may be shorter).

    `files` are the files read, in order; `roots` the directories they were found in (a directory input), so
    the output can be kept out of them."""

    def __init__(self, spec: InputSpec, fmt: InputFormat, files: list[str], roots: tuple[str, ...] = ()) -> None:
        self.spec = spec
        self.format = fmt
        self.files = files
        self.roots = roots
        self.done = 0
        self.total: int | None = None
        self.memory: tuple[Sequence[Any], Sequence[Any] | None] = ((), None)
        """Texts (and ids) of an in-memory source (`memory_source`)."""
        self.span: Span | None = None
        """Read only this stretch of one file (a distributed run's unit; `poolcli.io.spans`)."""
        self.settled: Settled | None = None
        """How ids were decided at the start of the input, for a span that starts later (`settle`)."""

    def for_span(self, span: Span, settled: Settled | None) -> Source:
        """The same input, reading only `span`, with the id decisions the whole input's first rows made."""
        view = Source(self.spec, self.format, [span.path], self.roots)
        view.span = span
        view.settled = settled
        return view

    def settle(self, rows_per_block: int) -> tuple[Settled, Block | None]:
        """Read from the start until the first valid id fixes the id type (JSONL: its first object also decides
        whether there is an id field): what a span further on must assume, as a local run would have by then.
        Also returns the first block with a good row, which fixes the kept columns' types."""
        sink = RowSink(self.spec)
        type_row: int | None = None
        for _ in self._rows(sink):
            if sink.id_type is not None:
                type_row = sink.block.first_row + sink.block.n_rows - 1
                break
            if self._id_decided and sink.id_field is None:
                break  # ids are row numbers
            if sink.block.n_rows >= rows_per_block:
                sink.take()
        settled = Settled(
            field_row=self._decided_row,
            id_field=sink.id_field,
            type_row=type_row,
            id_type=None if sink.id_type is None else ("int" if sink.id_type is int else "str"),
        )
        first = next((b for b in self.blocks(rows_per_block) if b.ids), None)
        return settled, first

    def count_rows(self, path: str) -> int:
        """Rows of one file of this input (good and bad), read as a worker reads it."""
        return sum(b.n_rows for b in Source(self.spec, self.format, [path], self.roots).blocks(1 << 14))

    def listing(self) -> list[dict[str, Any]]:
        """What the input is made of, for the run fingerprint and the output metadata."""
        out: list[dict[str, Any]] = []
        for f in self.files:
            if f == "-":
                out.append({"path": "-"})
            else:
                st = os.stat(f)
                out.append({"path": os.path.abspath(f), "size": st.st_size, "mtime_ns": st.st_mtime_ns})
        return out

    def blocks(self, rows_per_block: int) -> Iterator[Block]:
        sink = RowSink(self.spec)
        if self.span is not None:
            sink.start(self.span.first_row)
        for _ in self._rows(sink):
            if sink.block.n_rows >= rows_per_block:
                yield sink.take()
        if sink.block.n_rows:
            yield sink.take()

    def _rows(self, sink: RowSink) -> Iterator[None]:
        self._id_decided = False
        self._decided_row = 0
        rows = {
            "jsonl": self._jsonl_rows,
            "parquet": self._parquet_rows,
            "csv": self._csv_rows,
            "tsv": self._csv_rows,
            "txt": self._txt_rows,
            "memory": self._memory_rows,
        }[self.format]
        settled = self.settled
        if self.span is not None and settled is not None and settled.id_type is not None:
            # A span after the input's first valid id checks ids against its type, as a local run does by then.
            if settled.type_row is not None and self.span.first_row > settled.type_row:
                sink.id_type = int if settled.id_type == "int" else str
        return rows(sink)

    def _span_rows(self) -> tuple[int, int | None]:
        """The first row number, and the row number to stop before (None: read to the end)."""
        if self.span is None:
            return 0, None
        return self.span.first_row, self.span.first_row + self.span.n_rows

    # Each row generator files every input row into `sink` (good or bad, each counted once, each bound to its own
    # id there and then) and yields once per row so `blocks` can cut.

    def _lines(self) -> Iterator[tuple[str, int, bytes, Any]]:
        """(source name, line number, line, position function) over the files, or over this source's span."""
        span = self.span
        for path in self.files:
            source = "<stdin>" if path == "-" else path
            with open_binary(path) as (stream, position):
                if span is not None and span.offset:
                    stream.seek(span.offset)
                start = span.first_line if span is not None else 1
                for line_no, raw in numbered_lines(stream, source, start=start):
                    yield source, line_no, raw, position

    def _jsonl_rows(self, sink: RowSink) -> Iterator[None]:
        decoder = msgspec.json.Decoder()
        row, end = self._span_rows()
        settled = self.settled if self.span is not None and row > 0 else None
        id_decided = self.spec.id_field is not None
        self._id_decided = id_decided
        field = self.spec.text_field
        self.total = self._total_bytes()
        if row == end:
            return
        for source, line_no, raw, position in self._lines():
            if not raw.strip():
                continue  # blank lines are not rows
            if not id_decided and settled is not None and row >= settled.field_row:
                sink.id_field = settled.id_field  # decided by an earlier span's first object
                id_decided = True
            self.done = position()
            problem: tuple[ErrorCode, str] | None = None
            obj: Any = None
            try:
                obj = decoder.decode(raw.decode("utf-8"))
            except UnicodeDecodeError as exc:
                problem = "INVALID_UTF8", f"line is not valid UTF-8 ({exc.reason} at byte {exc.start})"
            except msgspec.DecodeError as exc:
                problem = "INVALID_JSON", f"invalid JSON: {exc}"
            except RecursionError:
                problem = "INVALID_JSON", "invalid JSON: nested too deeply"
            if problem is None and not isinstance(obj, dict):
                problem = "NOT_OBJECT", f"expected a JSON object, got {_json_kind(obj)}"
            if problem is not None:
                sink.error(row, row if sink.id_field is None else None, *problem, source, line_no)
            else:
                if not id_decided:
                    sink.id_field = "id" if "id" in obj else None
                    id_decided = True
                    self._id_decided, self._decided_row = True, row
                rid = obj.get(sink.id_field, MISSING) if sink.id_field is not None else None
                sink.add(row, rid, obj.get(field, MISSING), obj, source, line_no)
            row += 1
            yield
            if row == end:
                return

    def _memory_rows(self, sink: RowSink) -> Iterator[None]:
        texts, ids = self.memory
        self.total = len(texts)
        for row, text in enumerate(texts):
            sink.add(row, ids[row] if ids is not None else None, text, {}, "<memory>", None)
            self.done = row + 1
            yield

    def _total_bytes(self) -> int | None:
        if self.files == ["-"]:
            return None
        return sum(os.path.getsize(f) for f in self.files)

    def _txt_rows(self, sink: RowSink) -> Iterator[None]:
        row, end = self._span_rows()
        sink.id_field = None
        self._id_decided = True
        self.total = self._total_bytes()
        if row == end:
            return
        for source, line_no, raw, position in self._lines():
            self.done = position()
            sink.add(row, None, raw.rstrip(b"\r\n"), {}, source, line_no)
            row += 1
            yield
            if row == end:
                return

    def _parquet_rows(self, sink: RowSink) -> Iterator[None]:
        from poolcli.io.columnar import parquet_rows

        def done(row: int) -> None:
            self.done = row

        self._id_decided = True
        first, end = self._span_rows()
        offset = self.span.offset if self.span is not None else 0
        return parquet_rows(self.files, self.spec, sink, done, first_row=first, skip=offset, stop=end)

    def _csv_rows(self, sink: RowSink) -> Iterator[None]:
        from poolcli.io.columnar import csv_rows

        self.total = self._total_bytes()

        def done(position: int) -> None:
            self.done = position

        self._id_decided = True
        return csv_rows(self.files, self.format, self.spec, sink, done, first_row=self._span_rows()[0])

    def check_columns(self) -> None:
        """Columnar inputs: a missing, ambiguous or mistyped column is a whole-input error, found in every file
        before any model is loaded. Decides the id field (`id` when the first file has it) for all files."""
        from poolcli.io.columnar import check_text_type, columns_needed, csv_header, parquet_schema

        if self.format == "parquet":
            total = 0
            for f in self.files:
                schema, rows = parquet_schema(f)
                total += rows
                if self.spec.id_field is None and f == self.files[0] and "id" in schema.names:
                    self.spec = msgspec.structs.replace(self.spec, id_field="id")
                columns_needed(self.spec, schema.names, f)
                check_text_type(schema, self.spec.text_field, f)
            self.total = total
        elif self.format in ("csv", "tsv"):
            for f in self.files:
                header = csv_header(f, self.format)
                if self.spec.id_field is None and f == self.files[0] and "id" in header:
                    self.spec = msgspec.structs.replace(self.spec, id_field="id")
                columns_needed(self.spec, header, f)


def _json_kind(obj: Any) -> str:
    if isinstance(obj, list):
        return "an array"
    if isinstance(obj, str):
        return "a string"
    if obj is None:
        return "null"
    return f"a {type(obj).__name__}"


def _format_of(path: str) -> InputFormat | None:
    p = path
    for comp in (".gz", ".zst"):
        if p.endswith(comp):
            p = p[: -len(comp)]
    return _SUFFIXES.get(Path(p).suffix.lower())


def open_source(spec: InputSpec) -> Source:
    """Find the files behind `spec.path` and their format; whole-input problems raise here, before any work.

    A path that exists is that file or directory, even if its name has glob characters (`in[1].jsonl`); only a
    path that does not exist is expanded as a glob."""
    path = spec.path
    if path == "-":
        return Source(spec, "jsonl", ["-"])
    roots: tuple[str, ...] = ()
    if os.path.isdir(path):
        files = sorted(
            str(p)
            for p in Path(path).rglob("*")
            if p.is_file() and p.suffix in (".parquet", ".pq") and not p.name.startswith(("_", "."))
        )
        if not files:
            raise NoInputError(f"directory {path} holds no .parquet files")
        source = Source(spec, "parquet", files, roots=(path,))
        source.check_columns()
        return source
    if os.path.lexists(path):
        if not os.path.exists(path):
            raise NoInputError(f"input {path} is a broken symbolic link")
        files = [path]
    elif any(ch in path for ch in "*?["):
        files = sorted(f for f in glob.glob(path, recursive=True) if os.path.isfile(f))
        if not files:
            raise NoInputError(f"no file matches {path!r}")
    else:
        raise NoInputError(f"input {path} does not exist")
    formats = {_format_of(f) for f in files}
    if len(formats) != 1 or None in formats:
        raise UsageError(
            f"cannot tell the input format of {path}",
            hint="poolcli reads .jsonl/.ndjson (optionally .gz/.zst), .parquet, .csv, .tsv and .txt",
        )
    fmt = formats.pop()
    assert fmt is not None
    if fmt != "jsonl" and fmt != "txt" and any(f.endswith((".gz", ".zst")) for f in files):
        raise UsageError(f"{path}: only JSONL and TXT inputs may be compressed")
    source = Source(spec, fmt, files, roots=roots)
    source.check_columns()
    return source


def memory_source(texts: Sequence[Any], ids: Sequence[Any] | None = None) -> Source:
    """Texts held in memory (the Python API), one row each, checked exactly as a file's rows are: a text that is
    not a non-empty string is an error row. Without `ids`, a row's id is its position."""
    if isinstance(texts, str | bytes):
        raise UsageError("texts must be a list of strings, not a single string")
    texts = list(texts)
    if ids is not None:
        ids = list(ids)
        if len(ids) != len(texts):
            raise UsageError(f"ids has {len(ids)} values for {len(texts)} texts")
    source = Source(InputSpec("<memory>", id_field=None if ids is None else "id"), "memory", [])
    source.memory = (texts, ids)
    return source


def peek_columns(source: Source) -> list[str]:
    """The input's column names: the Parquet schema, the CSV/TSV header, or the first JSONL object's keys."""
    from poolcli.io.columnar import csv_header, parquet_schema

    if source.format == "parquet":
        return list(parquet_schema(source.files[0])[0].names)
    if source.format in ("csv", "tsv"):
        return csv_header(source.files[0], source.format)
    if source.format == "jsonl" and source.files != ["-"]:
        with open_binary(source.files[0]) as (stream, _):
            for _, raw in numbered_lines(stream, source.files[0]):
                try:
                    obj = msgspec.json.decode(raw)
                except (msgspec.DecodeError, RecursionError):
                    continue
                if isinstance(obj, dict):
                    return list(obj)
    return []


class Settled(msgspec.Struct, frozen=True):
    """What the first rows of an input decided about ids (`Source.settle`), handed to the spans after them."""

    field_row: int
    """The row at which a JSONL input decided whether it has an `id` field (its first JSON object)."""
    id_field: str | None
    type_row: int | None
    """The row of the first valid id, whose type later ids must have (None: no valid id anywhere)."""
    id_type: Literal["int", "str"] | None
