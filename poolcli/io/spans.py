"""Spans: an input cut into deterministic stretches of consecutive rows, each readable on its own.

A distributed run (`poolcli.drivers.ray`) hands each span to a worker, which commits it as one part. The cut
depends only on the input files and the span size, never on timing or the cluster, so a rerun after a failure finds
the same spans and recomputes only the missing ones. Planning reads the input once, cheaply:

- Parquet: the footers; a span is `rows` rows from a row offset in one file.
- JSONL and TXT: one pass over the bytes to find every span's first line (blank JSONL lines are not rows); a
  worker seeks there.
- CSV/TSV and compressed files: one span per file. A CSV record may hold quoted newlines, and a compressed stream
  cannot be entered in the middle, so only a full parse finds a record boundary; such files are counted once
  here and each read whole by one worker (split them, or use Parquet or JSONL, for more parallelism).

Rows are numbered over all files in order, as a local run numbers them, so ids, error rows and row numbers are the
same whichever driver ran.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import msgspec

from poolcli.errors import UsageError
from poolcli.io.rows import open_input

if TYPE_CHECKING:
    from poolcli.io.readers import Source


class Span(msgspec.Struct, frozen=True, kw_only=True):
    """A stretch of one input file: the rows `first_row` .. `first_row + n_rows - 1` of the whole input."""

    index: int
    """The part this span becomes."""
    path: str
    offset: int = 0
    """Where the span starts in its file: a byte offset (JSONL, TXT) or a row offset (Parquet); 0 for a whole file."""
    first_line: int = 1
    """The line number of the span's first line (JSONL, TXT)."""
    first_row: int
    n_rows: int


def plan_spans(source: Source, rows: int) -> list[Span]:
    """Cut `source` into spans of at most `rows` rows (a span never crosses a file boundary)."""
    if source.files == ["-"] or source.format == "memory":
        raise UsageError("a distributed run reads files; standard input cannot be cut into spans")
    if rows < 1:
        raise UsageError(f"--batch-rows must be at least 1, got {rows}")
    spans: list[Span] = []
    first_row = 0
    for path in source.files:
        if source.format == "parquet":
            starts = _parquet_starts(path, rows)
        elif path.endswith((".gz", ".zst")) or source.format in ("csv", "tsv"):
            starts = _whole_file(source, path)
        else:
            starts = _line_starts(path, rows, skip_blank=source.format == "jsonl")
        for offset, line, n in starts:
            spans.append(
                Span(index=len(spans), path=path, offset=offset, first_line=line, first_row=first_row, n_rows=n)
            )
            first_row += n
    return spans


def _parquet_starts(path: str, rows: int) -> Iterator[tuple[int, int, int]]:
    import pyarrow.parquet as pq

    with open_input(path) as fh:
        total = pq.read_metadata(fh).num_rows
    for offset in range(0, total, rows):
        yield offset, 1, min(rows, total - offset)


def _line_starts(path: str, rows: int, *, skip_blank: bool) -> Iterator[tuple[int, int, int]]:
    """Every `rows`-th row's byte offset and line number. Lines end at b"\\n", as the readers split them."""
    starts: list[tuple[int, int]] = []
    count = 0
    position = 0
    line_no = 0
    with open_input(path) as fh:
        for raw in fh:
            line_no += 1
            text = raw.removeprefix(b"\xef\xbb\xbf") if line_no == 1 else raw  # as `numbered_lines` reads it
            if not (skip_blank and not text.strip()):
                if count % rows == 0:
                    starts.append((position, line_no))
                count += 1
            position += len(raw)
    for k, (offset, line) in enumerate(starts):
        yield offset, line, min(rows, count - k * rows)


def _whole_file(source: Source, path: str) -> Iterator[tuple[int, int, int]]:
    """A file read whole: its row count, from the same reader a worker uses (so every record counts once)."""
    n = source.count_rows(path)
    if n:
        yield 0, 1, n
