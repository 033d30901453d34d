"""The columnar readers: CSV/TSV (Python's csv module) and Parquet (pyarrow, row group by row group)."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable, Iterator
from typing import IO, TYPE_CHECKING, Any

from poolcli.errors import DataError
from poolcli.io.rows import BadUtf8, InputSpec, RowSink, checked_str, first_line, open_binary, open_input

if TYPE_CHECKING:
    from poolcli.io.readers import InputFormat


def columns_needed(spec: InputSpec, names: list[str], source: str) -> list[str]:
    """The columns a run reads, in order; a missing or ambiguous one is a whole-input error."""
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


def parquet_rows(
    files: list[str],
    spec: InputSpec,
    sink: RowSink,
    done: Callable[[int], None],
    *,
    first_row: int = 0,
    skip: int = 0,
    stop: int | None = None,
) -> Iterator[None]:
    """Parquet files row group by row group: a damaged row group is a data error naming the file and group.

    A span (one file) starts `skip` rows into it, numbered from `first_row`, and ends before row number `stop`."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    sink.id_field = spec.id_field
    row = first_row
    if row == stop:
        return
    for path in files:
        with open_input(path) as fh:
            try:
                pf = pq.ParquetFile(fh)
            except (OSError, ValueError, pa.ArrowException) as exc:
                raise DataError(first_line(f"{path}: not a readable Parquet file ({exc})")) from None
            cols = columns_needed(spec, pf.schema_arrow.names, path)
            to_skip = skip
            for rg in range(pf.num_row_groups):
                in_group = pf.metadata.row_group(rg).num_rows
                if to_skip >= in_group:
                    to_skip -= in_group
                    continue
                batches = pf.iter_batches(batch_size=8192, row_groups=[rg], columns=cols)
                while True:
                    try:
                        batch = next(batches)
                    except StopIteration:
                        break
                    except (OSError, ValueError, pa.ArrowException) as exc:
                        raise DataError(
                            first_line(f"{path}: row group {rg} cannot be read ({exc})"),
                            hint="the file is damaged; the rows before it are committed",
                        ) from None
                    if to_skip:
                        cut = min(to_skip, batch.num_rows)
                        batch, to_skip = batch.slice(cut), to_skip - cut
                    data = {name: column_values(batch.column(name)) for name in cols}
                    texts = data[spec.text_field]
                    ids = data[spec.id_field] if spec.id_field is not None else None
                    for i in range(batch.num_rows):
                        keep = {c: data[c][i] for c in spec.keep_columns}
                        sink.add(row, ids[i] if ids is not None else None, texts[i], keep, path, None)
                        row += 1
                        done(row - first_row)
                        yield
                        if row == stop:
                            return


def csv_rows(
    files: list[str],
    fmt: InputFormat,
    spec: InputSpec,
    sink: RowSink,
    done: Callable[[int], None],
    *,
    first_row: int = 0,
) -> Iterator[None]:
    """CSV (RFC 4180 quoting, newlines inside quoted values) or TSV (no quoting: a row ends at the newline).

    Every record after the header is one row, whatever is wrong with it; values are strings, and one that is
    not valid UTF-8 costs only its row."""
    sink.id_field = spec.id_field
    row = first_row
    for path in files:
        with open_binary(path) as (stream, position):
            records = csv_records(stream, fmt)
            header = next(records, None)
            if header is None:
                raise DataError(f"{path}: empty file, no header row")
            names = header[2]
            width = len(names)
            needed = columns_needed(spec, names, path)
            at = {name: names.index(name) for name in needed}
            text_at = at[spec.text_field]
            id_at = at[spec.id_field] if spec.id_field is not None else None
            for line, last_line, fields, problem in records:
                done(position())
                if problem is None and len(fields) != width:
                    problem = f"expected {_fields(width)}, got {len(fields)}"
                    if last_line > line:
                        problem += f" (lines {line}-{last_line}: a quote left open joins them)"
                if problem is not None:
                    sink.error(row, row if sink.id_field is None else None, "MALFORMED_ROW", problem, path, line)
                else:
                    rid = checked_str(fields[id_at]) if id_at is not None else None
                    keep = {c: checked_str(fields[at[c]]) for c in spec.keep_columns}
                    sink.add(row, rid, checked_str(fields[text_at]), keep, path, line)
                row += 1
                yield


_csv_limit_raised = False


def csv_records(stream: IO[bytes], fmt: InputFormat) -> Iterator[tuple[int, int, list[str], str | None]]:
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
        # The caller owns the byte stream (and may have closed it already, having stopped reading early).
        with contextlib.suppress(ValueError):
            text.detach()


def csv_header(path: str, fmt: InputFormat) -> list[str]:
    with open_binary(path) as (stream, _):
        first = next(csv_records(stream, fmt), None)
    if first is None:
        raise DataError(f"{path}: empty file, no header row")
    return first[2]


def parquet_schema(path: str) -> tuple[Any, int]:
    """The Arrow schema and row count of one Parquet file (its footer only)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    with open_input(path) as fh:
        try:
            meta = pq.read_metadata(fh)
            return meta.schema.to_arrow_schema(), meta.num_rows
        except (OSError, ValueError, pa.ArrowException) as exc:
            raise DataError(first_line(f"{path}: not a readable Parquet file ({exc})")) from None


def check_text_type(schema: Any, field: str, path: str) -> None:
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


def column_values(column: Any) -> list[Any]:
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
