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
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any, Literal

import msgspec

from poolcli.errors import DataError, NoInputError, UsageError
from poolcli.io.records import Block, ErrorRow
from poolcli.vocab import ErrorCode

InputFormat = Literal["jsonl", "parquet", "csv", "tsv", "txt"]
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
                return self.error(
                    row,
                    rid,
                    "INVALID_UTF8",
                    f"text is not valid UTF-8 ({exc.reason} at byte {exc.start})",
                    source,
                    line,
                )
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
    """An input: `blocks(n)` yields blocks of n input rows (the last may be shorter)."""

    def __init__(self, spec: InputSpec, fmt: InputFormat, files: list[str]) -> None:
        self.spec = spec
        self.format = fmt
        self.files = files
        self.done = 0
        self.total: int | None = None

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
        }[self.format]
        for _ in rows(sink):
            if sink.block.n_rows >= rows_per_block:
                yield sink.take()
        if sink.block.n_rows:
            yield sink.take()

    # Each row generator files rows into `sink` and yields once per row so `blocks` can cut.

    def _jsonl_rows(self, sink: _RowSink) -> Iterator[None]:
        decoder = msgspec.json.Decoder()
        row = 0
        id_decided = self.spec.id_field is not None
        field = self.spec.text_field
        for path in self.files:
            source = "<stdin>" if path == "-" else path
            with _open_binary(path) as (stream, position):
                self.total = self._total_bytes()
                for line_no, raw in _lines(stream, source):
                    if not raw.strip():
                        continue  # blank lines are not rows
                    self.done = position()
                    try:
                        text_line = raw.decode("utf-8")
                    except UnicodeDecodeError as exc:
                        sink.error(
                            row,
                            row if sink.id_field is None else None,
                            "INVALID_UTF8",
                            f"line is not valid UTF-8 ({exc.reason} at byte {exc.start})",
                            source,
                            line_no,
                        )
                        row += 1
                        yield
                        continue
                    try:
                        obj = decoder.decode(text_line)
                    except msgspec.DecodeError as exc:
                        sink.error(
                            row,
                            row if sink.id_field is None else None,
                            "INVALID_JSON",
                            f"invalid JSON: {exc}",
                            source,
                            line_no,
                        )
                        row += 1
                        yield
                        continue
                    if not isinstance(obj, dict):
                        sink.error(
                            row,
                            row if sink.id_field is None else None,
                            "NOT_OBJECT",
                            f"expected a JSON object, got {_json_kind(obj)}",
                            source,
                            line_no,
                        )
                        row += 1
                        yield
                        continue
                    if not id_decided:
                        sink.id_field = "id" if "id" in obj else None
                        id_decided = True
                    rid = obj.get(sink.id_field, _MISSING) if sink.id_field is not None else None
                    sink.add(row, rid, obj.get(field, _MISSING), obj, source, line_no)
                    row += 1
                    yield

    def _total_bytes(self) -> int | None:
        if self.files == ["-"]:
            return None
        return sum(os.path.getsize(f) for f in self.files)

    def _txt_rows(self, sink: _RowSink) -> Iterator[None]:
        row = 0
        sink.id_field = None
        for path in self.files:
            source = "<stdin>" if path == "-" else path
            with _open_binary(path) as (stream, position):
                self.total = self._total_bytes()
                for line_no, raw in _lines(stream, source):
                    self.done = position()
                    sink.add(row, None, raw.rstrip(b"\r\n"), {}, source, line_no)
                    row += 1
                    yield

    def check_columns(self) -> None:
        """Columnar inputs: a missing column is a whole-input error, found before any model is loaded."""
        if self.format == "parquet":
            import pyarrow.parquet as pq

            for f in self.files:
                try:
                    names = pq.read_schema(f).names
                except Exception as exc:  # pyarrow raises ArrowInvalid / OSError for a broken file
                    raise DataError(f"{f}: not a readable Parquet file ({exc})".splitlines()[0]) from None
                id_field = self.spec.id_field
                spec = InputSpec(self.spec.path, self.spec.text_field, id_field, self.spec.keep_columns)
                Source(spec, "parquet", [f])._columns_needed(names, f)

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
        return needed

    def _parquet_rows(self, sink: _RowSink) -> Iterator[None]:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if self.spec.id_field is None:
            first = pq.read_schema(self.files[0])
            sink.id_field = "id" if "id" in first.names else None
        spec = InputSpec(self.spec.path, self.spec.text_field, sink.id_field, self.spec.keep_columns)
        files = [pq.ParquetFile(f) for f in self.files]
        self.total = sum(f.metadata.num_rows for f in files)
        row = 0
        for path, pf in zip(self.files, files, strict=True):
            schema = pf.schema_arrow
            cols = Source(spec, "parquet", [path])._columns_needed(schema.names, path)
            text_type = schema.field(spec.text_field).type
            if pa.types.is_dictionary(text_type):
                text_type = text_type.value_type
            if not (
                pa.types.is_string_view(text_type)
                or pa.types.is_string(text_type)
                or pa.types.is_large_string(text_type)
                or pa.types.is_binary(text_type)
                or pa.types.is_large_binary(text_type)
            ):
                raise DataError(f"{path}: column {spec.text_field!r} is {text_type}, not a string column")
            for batch in pf.iter_batches(batch_size=8192, columns=cols):
                data = {name: _plain(batch.column(name)).to_pylist() for name in cols}
                texts = data[spec.text_field]
                ids = data[sink.id_field] if sink.id_field is not None else None
                for i in range(batch.num_rows):
                    keep = {c: data[c][i] for c in spec.keep_columns}
                    sink.add(row, ids[i] if ids is not None else None, texts[i], keep, path, None)
                    row += 1
                    self.done = row
                    yield

    def _csv_rows(self, sink: _RowSink) -> Iterator[None]:
        import pyarrow as pa
        import pyarrow.csv as pacsv

        # TSV has no quoting: a '"' is text and a row ends at the newline. CSV follows RFC 4180.
        tsv = self.format == "tsv"
        row = 0
        self.total = self._total_bytes()
        for path in self.files:
            bad_rows: list[str] = []

            def on_invalid(invalid: Any, bad_rows: list[str] = bad_rows) -> str:
                bad_rows.append(f"expected {invalid.expected_columns} fields, got {invalid.actual_columns}")
                return "skip"

            parse = pacsv.ParseOptions(
                delimiter="\t" if tsv else ",",
                quote_char=False if tsv else '"',
                newlines_in_values=not tsv,
                invalid_row_handler=on_invalid,
            )
            try:
                with open(path, "rb") as probe:
                    header = pacsv.open_csv(
                        probe, parse_options=parse, read_options=pacsv.ReadOptions(block_size=1 << 16)
                    ).schema.names
            except pa.ArrowInvalid as exc:
                raise DataError(f"{path}: cannot read a header row ({exc})") from None
            bad_rows.clear()  # the probe parsed the first block too; the real pass reports its bad rows
            if self.spec.id_field is None:
                sink.id_field = "id" if "id" in header else None
            spec = InputSpec(self.spec.path, self.spec.text_field, sink.id_field, self.spec.keep_columns)
            cols = Source(spec, self.format, [path])._columns_needed(header, path)
            # Text is read as bytes so invalid UTF-8 costs one row; everything else stays a string, so a
            # column's type never changes halfway through a file.
            types = {c: pa.string() for c in header}
            types[spec.text_field] = pa.binary()
            with open(path, "rb") as fh:
                try:
                    reader = pacsv.open_csv(
                        fh,
                        parse_options=parse,
                        read_options=pacsv.ReadOptions(block_size=1 << 20),
                        convert_options=pacsv.ConvertOptions(
                            column_types=types,
                            include_columns=cols,
                            strings_can_be_null=False,
                            quoted_strings_can_be_null=False,
                        ),
                    )
                    batches = iter(reader)
                    while True:
                        try:
                            batch = next(batches)
                        except StopIteration:
                            break
                        self.done = fh.tell()
                        # Rows the parser rejected in this block: one error row each, ahead of the block's rows.
                        for message in bad_rows:
                            sink.error(
                                row, row if sink.id_field is None else None, "MALFORMED_ROW", message, path, None
                            )
                            row += 1
                            yield
                        bad_rows.clear()
                        data = {name: batch.column(name).to_pylist() for name in cols}
                        ids = data[sink.id_field] if sink.id_field is not None else None
                        for i in range(batch.num_rows):
                            keep = {c: data[c][i] for c in spec.keep_columns}
                            sink.add(
                                row, ids[i] if ids is not None else None, data[spec.text_field][i], keep, path, None
                            )
                            row += 1
                            yield
                    for message in bad_rows:
                        sink.error(row, row if sink.id_field is None else None, "MALFORMED_ROW", message, path, None)
                        row += 1
                        yield
                except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
                    raise DataError(f"{path}: {exc}".splitlines()[0]) from None


def _plain(column: Any) -> Any:
    """Dictionary-encoded columns (pandas categories) read as their values."""
    import pyarrow as pa

    if pa.types.is_dictionary(column.type):
        return column.dictionary_decode()
    return column


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


class _open_binary:
    """Context manager giving a line-iterable binary stream and a function returning bytes consumed so far."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.raw: IO[bytes] | None = None
        self.stream: Any = None

    def __enter__(self) -> tuple[IO[bytes], Callable[[], int]]:
        if self.path == "-":
            return sys.stdin.buffer, lambda: 0
        try:
            raw = open(self.path, "rb")
        except OSError as exc:
            raise NoInputError(f"cannot open {self.path}: {exc.strerror}") from None
        self.raw = raw
        if self.path.endswith(".gz"):
            self.stream = gzip.GzipFile(fileobj=raw, mode="rb")
        elif self.path.endswith(".zst"):
            try:
                import zstandard
            except ImportError:
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
    """Find the files behind `spec.path` and their format; whole-input problems raise here, before any work."""
    path = spec.path
    if path == "-":
        return Source(spec, "jsonl", ["-"])
    if os.path.isdir(path):
        files = sorted(
            str(p)
            for p in Path(path).rglob("*")
            if p.is_file() and p.suffix in (".parquet", ".pq") and not p.name.startswith(("_", "."))
        )
        if not files:
            raise NoInputError(f"directory {path} holds no .parquet files")
        return Source(spec, "parquet", files)
    if any(ch in path for ch in "*?["):
        files = sorted(glob.glob(path, recursive=True))
        if not files:
            raise NoInputError(f"no file matches {path!r}")
    else:
        if not os.path.exists(path):
            raise NoInputError(f"input {path} does not exist")
        files = [path]
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
    source = Source(spec, fmt, files)
    source.check_columns()
    return source


def peek_columns(source: Source) -> list[str]:
    """The input's column names: the Parquet schema, the CSV/TSV header, or the first JSONL object's keys."""
    if source.format == "parquet":
        import pyarrow.parquet as pq

        return list(pq.read_schema(source.files[0]).names)
    if source.format in ("csv", "tsv"):
        with open(source.files[0], "rb") as fh:
            first = fh.readline().decode("utf-8", "replace").removeprefix("\ufeff").rstrip("\r\n")
        return [c.strip('"') for c in first.split("\t" if source.format == "tsv" else ",")]
    if source.format == "jsonl" and source.files != ["-"]:
        with _open_binary(source.files[0]) as (stream, _):
            for _, raw in _lines(stream, source.files[0]):
                try:
                    obj = msgspec.json.decode(raw)
                except msgspec.DecodeError:
                    continue
                if isinstance(obj, dict):
                    return list(obj)
    return []
