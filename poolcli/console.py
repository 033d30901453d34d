"""What a person sees: the progress bar, warnings, error messages and the summary line, all on stderr, and the
text `inspect` prints on stdout. Data goes to stdout only as JSONL rows with `-o -` (`poolcli.io.writers`).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from typing import IO, Any, Protocol


class Progress(Protocol):
    def update(self, rows: int, tokens: int, fraction: float | None) -> None: ...

    def close(self) -> None: ...


class NullProgress:
    """Used with --quiet, --no-progress, or when stderr is not a terminal."""

    def update(self, rows: int, tokens: int, fraction: float | None) -> None:
        pass

    def close(self) -> None:
        pass


class RichProgress:
    """A transient bar with rows/s, tokens/s and ETA; it vanishes when the run ends."""

    def __init__(self, description: str, clock: Callable[[], float] = time.monotonic) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
        from rich.progress import Progress as RichBar

        self.clock = clock
        self.start: float | None = None  # set at the first update, so model loading does not dilute rows/s
        self.bar = RichBar(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TextColumn("{task.fields[stats]}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            transient=True,
        )
        self.task = self.bar.add_task(description, total=1.0, stats="")
        self.bar.start()

    def update(self, rows: int, tokens: int, fraction: float | None) -> None:
        if self.start is None:
            self.start = self.clock()
        elapsed = max(self.clock() - self.start, 1e-9)
        stats = f"{rows:,} rows · {rows / elapsed:,.0f} rows/s · {tokens / elapsed:,.0f} tok/s"
        if fraction is None:
            self.bar.update(self.task, stats=stats)
        else:
            self.bar.update(self.task, completed=min(fraction, 1.0), stats=stats)

    def close(self) -> None:
        self.bar.stop()


def make_progress(description: str, *, quiet: bool, progress: bool | None, stream: IO[str] | None = None) -> Progress:
    stream = stream or sys.stderr
    wanted = progress if progress is not None else stream.isatty()
    if quiet or not wanted:
        return NullProgress()
    return RichProgress(description)


def print_error(message: str, hint: str | None = None, stream: IO[str] | None = None) -> None:
    stream = stream or sys.stderr
    line = f"poolcli: error: {message}"
    if hint:
        line += f" ({hint})"
    stream.write(line.replace("\n", " ") + "\n")
    stream.flush()


def print_warning(message: str, *, quiet: bool, stream: IO[str] | None = None) -> None:
    if quiet:
        return
    stream = stream or sys.stderr
    stream.write(f"poolcli: warning: {message}\n")


def print_info(message: str, stream: IO[str] | None = None) -> None:
    """Detail shown with --verbose."""
    stream = stream or sys.stderr
    stream.write(f"poolcli: info: {message}\n")


def print_summary(summary: dict[str, Any], *, quiet: bool, stream: IO[str] | None = None) -> None:
    """One machine-readable JSON line, the last thing a run prints."""
    if quiet:
        return
    stream = stream or sys.stderr
    stream.write(json.dumps({"poolcli": "summary", **summary}, default=str) + "\n")
    stream.flush()


def print_text(text: str, stream: IO[str] | None = None) -> None:
    (stream or sys.stdout).write(text if text.endswith("\n") else text + "\n")
