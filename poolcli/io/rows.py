"""From raw input rows to blocks: the field checks every reader shares, and opening input files.

`RowSink` validates one row's id, text and kept columns and files it into the current `Block` or its error rows,
so a bad row costs only itself and every row, good or bad, is counted once with its own number and id.
"""

from __future__ import annotations

import gzip
import io
import sys
import zlib
from collections.abc import Callable, Iterator
from typing import IO, Any

import msgspec

from poolcli.errors import DataError, NoInputError, UsageError
from poolcli.io.records import Block, ErrorRow
from poolcli.vocab import ErrorCode

MISSING: Any = object()
"""A field the row does not have (None is a field that is present and null)."""


class InputSpec(msgspec.Struct, frozen=True):
    """Where the rows come from and which fields matter."""

    path: str
    text_field: str = "text"
    id_field: str | None = None
    keep_columns: tuple[str, ...] = ()


class BadUtf8(msgspec.Struct, frozen=True):
    """A value whose bytes are not valid UTF-8, found by a reader; the row it belongs to becomes an error row."""

    reason: str


def checked_str(value: str) -> str | BadUtf8:
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


class RowSink:
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
        """`rid` is the id value (or MISSING); with no id field the row number is the id."""
        if self.id_field is None:
            rid = row
        elif rid is MISSING or rid is None:
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
        if text is MISSING or text is None:
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


def numbered_lines(stream: IO[bytes], source: str, *, start: int = 1) -> Iterator[tuple[int, bytes]]:
    """Numbered lines (the first is number `start`: a span read from the middle of a file); a UTF-8 byte-order mark
    before a file's first line is dropped, and a corrupt or truncated compressed stream is a one-line data error
    naming the file and line."""
    line_no = start - 1
    try:
        for line_no, raw in enumerate(stream, start=start):
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


def first_line(message: str) -> str:
    return message.splitlines()[0]


def open_input(path: str) -> IO[bytes]:
    """Open one input file for reading; any failure to open it (missing, unreadable, a directory) is exit 66,
    whatever the format."""
    try:
        return open(path, "rb")
    except OSError as exc:
        raise NoInputError(f"cannot open {path}: {exc.strerror or exc}") from None


class open_binary:
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
