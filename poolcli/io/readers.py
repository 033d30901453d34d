"""Streaming readers: JSONL (.gz/.zst), Parquet (file, directory, glob), CSV/TSV, TXT and stdin.

Every reader yields `Block`s of consecutive input rows in bounded memory. A bad row becomes an `ErrorRow` with its
position and costs nothing else; a problem with the whole input (missing file, missing column) raises a typed error.
"""

from __future__ import annotations

import glob
import gzip
import io
import os
import sys
import zlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any, Literal

import msgspec

from poolcli.errors import DataError, NoInputError, UsageError
from poolcli.io.records import Block, ErrorRow
from poolcli.vocab import ErrorCode

InputFormat = Literal["jsonl", "parquet", "csv", "tsv", "txt", "memory"]
_MISSING: Any = object()
_SUFFIXES: dict[str, InputFormat] = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".csv": "csv",
    ".tsv": "tsv",
    ".txt": "txt",
}


class InputSpec(msgspec.Struct, frozen=True):
    """Where the rows come from and which fields matter."""

    path: str
    text_field: str = "text"
    id_field: str | None = None
    keep_columns: tuple[str, ...] = ()


class BadUtf8(msgspec.Struct, frozen=True):
    """A value whose bytes are not valid UTF-8, found by a reader; the row it belongs to becomes an error row."""

    reason: str


def _checked_str(value: str) -> str | BadUtf8:
    """A field decoded with `surrogateescape`: lone surrogates stand for the bytes that were not UTF-8."""
    if value.isascii():
        return value
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raw = value.encode("utf-8", "surrogateescape")
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            return BadUtf8(f"{exc.reason} at byte {exc.start}")
        return BadUtf8("lone surrogate")  # pragma: no cover - surrogateescape only makes decodable surrogates
    return value


class _RowSink:
    """Validates one row's fields and files it into the current block or its error list."""

    def __init__(self, spec: InputSpec) -> None:
        self.spec = spec
        self.id_field = spec.id_field
        self.id_type: type | None = None
        self.block: Block = Block(first_row=0, n_rows=0, keep={c: [] for c in spec.keep_columns})

    def start(self, first_row: int) -> None:
        self.block = Block(first_row=first_row, n_rows=0, keep={c: [] for c in self.spec.keep_columns})

    def error(self, row: int, rid: Any, code: ErrorCode, message: str, source: str, line: int | None) -> None:
        self.block.n_rows += 1
        self.block.errors.append(ErrorRow(id=rid, source=source, code=code, message=message, line=line, row=row))

    def add(self, row: int, rid: Any, text: Any, keep: dict[str, Any], source: str, line: int | None) -> None:
        """`rid` is the id value (or _MISSING); with no id field the row number is the id."""
        if self.id_field is None:
            rid = row
        elif rid is _MISSING or rid is None:
            return self.error(row, None, "MISSING_FIELD", f"id field {self.id_field!r} is missing", source, line)
        elif isinstance(rid, BadUtf8):
            message = f"id field {self.id_field!r} is not valid UTF-8 ({rid.reason})"
            return self.error(row, None, "INVALID_UTF8", message, source, line)
        else:
            if (
                isinstance(rid, bool)
                or not isinstance(rid, int | str)
                or (isinstance(rid, int) and not -(2**63) <= rid < 2**63)
            ):
                return self.error(
                    row,
                    None,
                    "WRONG_TYPE",
                    f"id field {self.id_field!r} must be a string or a 64-bit integer, got {_describe(rid)}",
                    source,
                    line,
                )
            if self.id_type is None:
                self.id_type = type(rid)
            elif type(rid) is not self.id_type:
                return self.error(
                    row,
                    rid,
                    "WRONG_TYPE",
                    f"id {rid!r} is a {type(rid).__name__} but earlier ids are {self.id_type.__name__}s",
                    source,
                    line,
                )
        field = self.spec.text_field
        if text is _MISSING or text is None:
            return self.error(row, rid, "MISSING_FIELD", f"text field {field!r} is missing", source, line)
        if isinstance(text, bytes):
            try:
                text = text.decode("utf-8")
            except UnicodeDecodeError as exc:
                text = BadUtf8(f"{exc.reason} at byte {exc.start}")
        if isinstance(text, BadUtf8):
            message = f"text field {field!r} is not valid UTF-8 ({text.reason})"
            return self.error(row, rid, "INVALID_UTF8", message, source, line)
        if not isinstance(text, str):
            return self.error(
                row,
                rid,
                "WRONG_TYPE",
                f"text field {field!r} must be a string, got {type(text).__name__}",
                source,
                line,
            )
        if not text.strip():
            return self.error(row, rid, "EMPTY_TEXT", f"text field {field!r} is empty", source, line)
        for col in self.spec.keep_columns:
            value = keep.get(col)
            if isinstance(value, BadUtf8):
                message = f"kept column {col!r} is not valid UTF-8 ({value.reason})"
                return self.error(row, rid, "INVALID_UTF8", message, source, line)
        b = self.block
        b.n_rows += 1
        b.rows.append(row)
        b.ids.append(rid)
        b.texts.append(text)
        b.sources.append(source)
        b.lines.append(line)
        for col in self.spec.keep_columns:
            b.keep[col].append(keep.get(col))

    def take(self) -> Block:
        block = self.block
        self.start(block.first_row + block.n_rows)
        return block


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
        sink = _RowSink(self.spec)
        rows = {
            "jsonl": self._jsonl_rows,
            "parquet": self._parquet_rows,
            "csv": self._csv_rows,
            "tsv": self._csv_rows,
            "txt": self._txt_rows,
            "memory": self._memory_rows,
        }[self.format]
        for _ in rows(sink):
            if sink.block.n_rows >= rows_per_block:
                yield sink.take()
        if sink.block.n_rows:
            yield sink.take()

    # Each row generator files every input row into `sink` (good or bad, each counted once, each bound to its own
    # id there and then) and yields once per row so `blocks` can cut.

    def _jsonl_rows(self, sink: _RowSink) -> Iterator[None]:
        decoder = msgspec.json.Decoder()
        row = 0
        id_decided = self.spec.id_field is not None
        field = self.spec.text_field
        self.total = self._total_bytes()
        for path in self.files:
            source = "<stdin>" if path == "-" else path
            with _open_binary(path) as (stream, position):
                for line_no, raw in _lines(stream, source):
                    if not raw.strip():
                        continue  # blank lines are not rows
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
                        rid = obj.get(sink.id_field, _MISSING) if sink.id_field is not None else None
                        sink.add(row, rid, obj.get(field, _MISSING), obj, source, line_no)
                    row += 1
                    yield

    def _memory_rows(self, sink: _RowSink) -> Iterator[None]:
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

    def _txt_rows(self, sink: _RowSink) -> Iterator[None]:
        row = 0
        sink.id_field = None
        self.total = self._total_bytes()
        for path in self.files:
            source = "<stdin>" if path == "-" else path
            with _open_binary(path) as (stream, position):
                for line_no, raw in _lines(stream, source):
                    self.done = position()
                    sink.add(row, None, raw.rstrip(b"\r\n"), {}, source, line_no)
                    row += 1
                    yield

    def check_columns(self) -> None:
        """Columnar inputs: a missing, ambiguous or mistyped column is a whole-input error, found in every file
        before any model is loaded. Decides the id field (`id` when the first file has it) for all files."""
        if self.format == "parquet":
            total = 0
            for f in self.files:
                schema, rows = _parquet_schema(f)
                total += rows
                if self.spec.id_field is None and f == self.files[0] and "id" in schema.names:
                    self.spec = msgspec.structs.replace(self.spec, id_field="id")
                self._columns_needed(schema.names, f)
                _check_text_type(schema, self.spec.text_field, f)
            self.total = total
        elif self.format in ("csv", "tsv"):
            for f in self.files:
                header = _csv_header(f, self.format)
                if self.spec.id_field is None and f == self.files[0] and "id" in header:
                    self.spec = msgspec.structs.replace(self.spec, id_field="id")
                self._columns_needed(header, f)

    def _columns_needed(self, names: list[str], source: str) -> list[str]:
        spec = self.spec
        if spec.text_field not in names:
            raise DataError(
                f"{source} has no column {spec.text_field!r} (columns: {', '.join(names)})",
                hint="name the text column with --text-field",
            )
        needed = [spec.text_field]
        if spec.id_field is not None:
            if spec.id_field not in names:
                raise DataError(f"{source} has no id column {spec.id_field!r} (columns: {', '.join(names)})")
            needed.append(spec.id_field)
        for col in spec.keep_columns:
            if col not in names:
                raise DataError(f"{source} has no column {col!r} to keep (columns: {', '.join(names)})")
            if col not in needed:
                needed.append(col)
        for col in needed:
            if names.count(col) > 1:
                raise DataError(
                    f"{source} has {names.count(col)} columns named {col!r}; poolcli cannot tell which one to read",
                    hint="rename the duplicates",
                )
        return needed

    def _parquet_rows(self, sink: _RowSink) -> Iterator[None]:
        import pyarrow as pa
        import pyarrow.parquet as pq

        spec = self.spec
        sink.id_field = spec.id_field
        row = 0
        for path in self.files:
            with open_input(path) as fh:
                try:
                    pf = pq.ParquetFile(fh)
                except (OSError, ValueError, pa.ArrowException) as exc:
                    raise DataError(_first_line(f"{path}: not a readable Parquet file ({exc})")) from None
                cols = self._columns_needed(pf.schema_arrow.names, path)
                for rg in range(pf.num_row_groups):
                    batches = pf.iter_batches(batch_size=8192, row_groups=[rg], columns=cols)
                    while True:
                        try:
                            batch = next(batches)
                        except StopIteration:
                            break
                        except (OSError, ValueError, pa.ArrowException) as exc:
                            raise DataError(
                                _first_line(f"{path}: row group {rg} cannot be read ({exc})"),
                                hint="the file is damaged; the rows before it are committed",
                            ) from None
                        data = {name: _column_values(batch.column(name)) for name in cols}
                        texts = data[spec.text_field]
                        ids = data[spec.id_field] if spec.id_field is not None else None
                        for i in range(batch.num_rows):
                            keep = {c: data[c][i] for c in spec.keep_columns}
                            sink.add(row, ids[i] if ids is not None else None, texts[i], keep, path, None)
                            row += 1
                            self.done = row
                            yield

    def _csv_rows(self, sink: _RowSink) -> Iterator[None]:
        """CSV (RFC 4180 quoting, newlines inside quoted values) or TSV (no quoting: a row ends at the newline).

        Every record after the header is one row, whatever is wrong with it; values are strings, and one that is
        not valid UTF-8 costs only its row."""
        spec = self.spec
        sink.id_field = spec.id_field
        row = 0
        self.total = self._total_bytes()
        for path in self.files:
            with _open_binary(path) as (stream, position):
                records = _csv_records(stream, self.format)
                header = next(records, None)
                if header is None:
                    raise DataError(f"{path}: empty file, no header row")
                names = header[2]
                width = len(names)
                needed = self._columns_needed(names, path)
                at = {name: names.index(name) for name in needed}
                text_at = at[spec.text_field]
                id_at = at[spec.id_field] if spec.id_field is not None else None
                for line, last_line, fields, problem in records:
                    self.done = position()
                    if problem is None and len(fields) != width:
                        problem = f"expected {_fields(width)}, got {len(fields)}"
                        if last_line > line:
                            problem += f" (lines {line}-{last_line}: a quote left open joins them)"
                    if problem is not None:
                        sink.error(row, row if sink.id_field is None else None, "MALFORMED_ROW", problem, path, line)
                    else:
                        rid = _checked_str(fields[id_at]) if id_at is not None else None
                        keep = {c: _checked_str(fields[at[c]]) for c in spec.keep_columns}
                        sink.add(row, rid, _checked_str(fields[text_at]), keep, path, line)
                    row += 1
                    yield


_csv_limit_raised = False


def _csv_records(stream: IO[bytes], fmt: InputFormat) -> Iterator[tuple[int, int, list[str], str | None]]:
    """(first line, last line, fields, problem) per record; the first is the header (BOM removed). Blank lines
    are skipped: they are not records.

    Values are decoded with `surrogateescape`, so a byte that is not UTF-8 stays in its field (checked per value)
    instead of failing the file."""
    import csv

    global _csv_limit_raised
    if not _csv_limit_raised:
        # One field may be a whole document; the default limit (128 KiB) would fail such rows.
        csv.field_size_limit(2**31 - 1)
        _csv_limit_raised = True
    text = io.TextIOWrapper(stream, encoding="utf-8", errors="surrogateescape", newline="")
    if fmt == "tsv":
        reader = csv.reader(text, delimiter="\t", quoting=csv.QUOTE_NONE, strict=False)
    else:
        reader = csv.reader(text, delimiter=",", quotechar='"', doublequote=True, strict=False)
    first = True
    try:
        while True:
            line = reader.line_num + 1
            problem: str | None = None
            try:
                fields = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                fields, problem = [], f"cannot parse the record: {exc}"
            if not fields and problem is None:
                continue
            if first:
                first = False
                fields[0] = fields[0].removeprefix("\ufeff")
            yield line, reader.line_num, fields, problem
    finally:
        text.detach()  # the caller owns the byte stream


def _csv_header(path: str, fmt: InputFormat) -> list[str]:
    with _open_binary(path) as (stream, _):
        first = next(_csv_records(stream, fmt), None)
    if first is None:
        raise DataError(f"{path}: empty file, no header row")
    return first[2]


def _parquet_schema(path: str) -> tuple[Any, int]:
    """The Arrow schema and row count of one Parquet file (its footer only)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    with open_input(path) as fh:
        try:
            meta = pq.read_metadata(fh)
            return meta.schema.to_arrow_schema(), meta.num_rows
        except (OSError, ValueError, pa.ArrowException) as exc:
            raise DataError(_first_line(f"{path}: not a readable Parquet file ({exc})")) from None


def _check_text_type(schema: Any, field: str, path: str) -> None:
    import pyarrow as pa

    text_type = schema.field(field).type
    if pa.types.is_dictionary(text_type):
        text_type = text_type.value_type
    if not (
        pa.types.is_string_view(text_type)
        or pa.types.is_string(text_type)
        or pa.types.is_large_string(text_type)
        or pa.types.is_binary(text_type)
        or pa.types.is_large_binary(text_type)
    ):
        raise DataError(f"{path}: column {field!r} is {text_type}, not a string column")


def _column_values(column: Any) -> list[Any]:
    """A column as Python values; dictionary-encoded columns (pandas categories) read as their values, and a
    string column holding bytes that are not UTF-8 gives `BadUtf8` for those values instead of failing the batch."""
    import pyarrow as pa

    if pa.types.is_dictionary(column.type):
        column = column.dictionary_decode()
    try:
        return list(column.to_pylist())
    except UnicodeDecodeError:
        if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
            raise
        binary = column.view(pa.binary() if pa.types.is_string(column.type) else pa.large_binary())
        out: list[Any] = []
        for raw in binary.to_pylist():
            if raw is None:
                out.append(None)
                continue
            try:
                out.append(raw.decode("utf-8"))
            except UnicodeDecodeError as exc:
                out.append(BadUtf8(f"{exc.reason} at byte {exc.start}"))
        return out


def _fields(n: int) -> str:
    return "1 field" if n == 1 else f"{n} fields"


def _first_line(message: str) -> str:
    return message.splitlines()[0]


def _lines(stream: IO[bytes], source: str) -> Iterator[tuple[int, bytes]]:
    """Numbered lines; a UTF-8 byte-order mark before the first is dropped, and a corrupt or truncated
    compressed stream is a one-line data error naming the file and line."""
    line_no = 0
    try:
        for line_no, raw in enumerate(stream, start=1):
            yield line_no, (raw.removeprefix(b"\xef\xbb\xbf") if line_no == 1 else raw)
    except (EOFError, OSError, zlib.error) as exc:
        raise DataError(f"{source}: cannot read past line {line_no}: {exc}") from None
    except Exception as exc:  # zstandard.ZstdError and friends
        if type(exc).__module__.startswith("zstandard"):
            raise DataError(f"{source}: cannot read past line {line_no}: {exc}") from None
        raise


def _describe(value: Any) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        return "an integer outside the 64-bit range"
    return type(value).__name__


def _json_kind(obj: Any) -> str:
    if isinstance(obj, list):
        return "an array"
    if isinstance(obj, str):
        return "a string"
    if obj is None:
        return "null"
    return f"a {type(obj).__name__}"


def open_input(path: str) -> IO[bytes]:
    """Open one input file for reading; any failure to open it (missing, unreadable, a directory) is exit 66,
    whatever the format."""
    try:
        return open(path, "rb")
    except OSError as exc:
        raise NoInputError(f"cannot open {path}: {exc.strerror or exc}") from None


class _open_binary:
    """Context manager giving a line-iterable binary stream and a function returning bytes consumed so far."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.raw: IO[bytes] | None = None
        self.stream: Any = None

    def __enter__(self) -> tuple[IO[bytes], Callable[[], int]]:
        if self.path == "-":
            return sys.stdin.buffer, lambda: 0
        raw = open_input(self.path)
        self.raw = raw
        if self.path.endswith(".gz"):
            self.stream = gzip.GzipFile(fileobj=raw, mode="rb")
        elif self.path.endswith(".zst"):
            try:
                import zstandard
            except ImportError:
                raw.close()
                raise UsageError(
                    f"{self.path}: reading .zst needs the zstandard package",
                    hint="pip install 'poolcli[zstd]'",
                ) from None
            self.stream = io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(raw))
        else:
            self.stream = raw
        return self.stream, raw.tell

    def __exit__(self, *exc: object) -> None:
        if self.stream is not None and self.stream is not self.raw:
            self.stream.close()
        if self.raw is not None:
            self.raw.close()


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
    if source.format == "parquet":
        return list(_parquet_schema(source.files[0])[0].names)
    if source.format in ("csv", "tsv"):
        return _csv_header(source.files[0], source.format)
    if source.format == "jsonl" and source.files != ["-"]:
        with _open_binary(source.files[0]) as (stream, _):
            for _, raw in _lines(stream, source.files[0]):
                try:
                    obj = msgspec.json.decode(raw)
                except (msgspec.DecodeError, RecursionError):
                    continue
                if isinstance(obj, dict):
                    return list(obj)
    return []
