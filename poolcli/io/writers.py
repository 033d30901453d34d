"""Streaming JSONL output, the error-row file of a streamed run, and output naming.

Every file here is written under a hidden staging name in the destination directory, closed, fsynced, and renamed into
place; the directory is fsynced after the rename so the new name survives a power loss.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sys
from pathlib import Path
from typing import IO, TYPE_CHECKING

import msgspec

from poolcli.errors import CantCreateError, OutputIOError

if TYPE_CHECKING:
    import pyarrow as pa

    from poolcli.io.records import ErrorRow


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def staging_path(final: Path) -> Path:
    return final.with_name(f".{final.name}.poolcli-{os.getpid()}.tmp")


def commit_file(staged: Path, final: Path) -> None:
    """fsync `staged`, rename it onto `final`, fsync the directory."""
    try:
        fd = os.open(staged, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(staged, final)
        fsync_dir(final.parent)
    except OSError as exc:
        raise OutputIOError(f"cannot commit {final}: {exc.strerror or exc}") from None


def _io_error(action: str, path: Path, exc: OSError) -> OutputIOError | CantCreateError:
    if exc.errno in (errno.EACCES, errno.EROFS, errno.ENOENT, errno.ENOTDIR, errno.EISDIR):
        return CantCreateError(f"cannot {action} {path}: {exc.strerror}")
    return OutputIOError(f"cannot {action} {path}: {exc.strerror or exc}")


class JsonlStdoutSink:
    """JSONL rows on stdout; vectors become JSON arrays of floats."""

    def __init__(self, stream: IO[bytes] | None = None) -> None:
        self.stream = stream or sys.stdout.buffer
        self.rows = 0
        self.encoder = msgspec.json.Encoder()

    def write(self, table: pa.Table) -> None:
        lines = [self.encoder.encode(row) for row in table.to_pylist()]
        try:
            self.stream.write(b"\n".join(lines) + b"\n")
            self.stream.flush()
        except BrokenPipeError:
            raise OutputIOError("stdout was closed by the reader") from None
        self.rows += table.num_rows

    def commit(self, schema: pa.Schema | None) -> None:
        with contextlib.suppress(BrokenPipeError):
            self.stream.flush()

    def abort(self) -> None:
        pass


def write_small_file(final: Path, data: bytes) -> None:
    staged = staging_path(final)
    try:
        with open(staged, "wb") as fh:
            fh.write(data)
    except OSError as exc:
        raise _io_error("write", staged, exc) from None
    commit_file(staged, final)


class ErrorFileSink:
    """The error-row JSONL file: staged while the run goes, renamed into place at the end."""

    def __init__(self, final: Path, *, always: bool) -> None:
        self.final = final
        self.always = always
        self.count = 0
        self._fh: IO[bytes] | None = None
        self.staged = staging_path(final)
        self.encoder = msgspec.json.Encoder()

    def write(self, rows: list[ErrorRow]) -> None:
        if not rows:
            return
        try:
            if self._fh is None:
                self.final.parent.mkdir(parents=True, exist_ok=True)
                self._fh = open(self.staged, "wb")
            self._fh.write(b"".join(self.encoder.encode(r) + b"\n" for r in rows))
        except OSError as exc:
            raise _io_error("write", self.staged, exc) from None
        self.count += len(rows)

    def commit(self) -> Path | None:
        if self._fh is None:
            if not self.always:
                return None
            write_small_file(self.final, b"")
            return self.final
        try:
            self._fh.close()
        except OSError as exc:
            raise _io_error("write", self.staged, exc) from None
        commit_file(self.staged, self.final)
        return self.final

    def abort(self) -> None:
        if self._fh is not None:
            with contextlib.suppress(OSError):
                self._fh.close()
        with contextlib.suppress(FileNotFoundError):
            self.staged.unlink()

    def publish_partial(self) -> Path | None:
        """A streamed run that stops: commit the error rows written so far (if any), else leave nothing."""
        if self._fh is None:
            return None
        try:
            return self.commit()
        except (CantCreateError, OutputIOError):
            self.abort()
            return None


def default_output(input_path: str, task: str) -> str:
    """`<input stem>.<task>.parquet` beside the input; only the compression and format suffixes are dropped, so
    dated names like `logs/2024.01.05.jsonl` keep their dots."""
    task = task.replace("_", "-")  # named as the command is
    if input_path == "-":
        return f"stdin.{task}.parquet"
    if any(ch in input_path for ch in "*?["):
        return f"{task}.parquet"
    p = Path(input_path.rstrip("/"))
    name = p.name
    for suffix in (".gz", ".zst"):
        name = name.removesuffix(suffix)
    for suffix in (".jsonl", ".ndjson", ".parquet", ".pq", ".csv", ".tsv", ".txt"):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    return str(p.with_name(f"{name or 'output'}.{task}.parquet"))
