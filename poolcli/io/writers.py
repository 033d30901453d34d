"""Writers that never leave a half-written file where a reader looks.

Every file is written under a hidden staging name in the destination directory, closed, fsynced, and renamed into
place; the directory is fsynced after the rename so the new name survives a power loss.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import sys
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import msgspec

from poolcli.errors import CantCreateError, OutputIOError

if TYPE_CHECKING:
    import pyarrow as pa
    import pyarrow.parquet as pq

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


class ParquetFileSink:
    """One Parquet file, appended window by window under a staging name and renamed into place on `commit`."""

    def __init__(self, final: Path, row_group_rows: int = 65536) -> None:
        self.final = final
        self.staged = staging_path(final)
        self.writer: pq.ParquetWriter | None = None
        self.rows = 0
        self.row_group_rows = row_group_rows
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise _io_error("create the directory of", final, exc) from None

    def write(self, table: pa.Table) -> None:
        import pyarrow.parquet as pq

        try:
            if self.writer is None:
                self.writer = pq.ParquetWriter(str(self.staged), table.schema, compression="zstd")
            self.writer.write_table(table, row_group_size=self.row_group_rows)
        except OSError as exc:
            raise _io_error("write", self.staged, exc) from None
        self.rows += table.num_rows

    def commit(self, schema: pa.Schema | None) -> None:
        import pyarrow.parquet as pq

        try:
            if self.writer is None:
                if schema is None:
                    raise ValueError("no schema for an empty output")
                self.writer = pq.ParquetWriter(str(self.staged), schema, compression="zstd")
            self.writer.close()
        except OSError as exc:
            raise _io_error("write", self.staged, exc) from None
        commit_file(self.staged, self.final)

    def abort(self) -> None:
        if self.writer is not None:
            with contextlib.suppress(Exception):
                self.writer.close()
        with contextlib.suppress(FileNotFoundError):
            self.staged.unlink()


class DatasetDirSink:
    """A directory of part files; `_MANIFEST.json` then `_SUCCESS` are written last, once every part is in place."""

    def __init__(self, directory: Path, part_rows: int) -> None:
        self.directory = directory
        self.part_rows = part_rows
        self.parts: list[dict[str, Any]] = []
        self.current: ParquetFileSink | None = None
        self.rows = 0
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise _io_error("create", directory, exc) from None
        for marker in ("_SUCCESS", "_MANIFEST.json"):
            with contextlib.suppress(FileNotFoundError):
                (directory / marker).unlink()

    def write(self, table: pa.Table) -> None:
        if self.current is None:
            self.current = ParquetFileSink(self.directory / f"part-{len(self.parts):05d}.parquet")
        self.current.write(table)
        self.rows += table.num_rows
        if self.current.rows >= self.part_rows:
            self._close_part(table.schema)

    def _close_part(self, schema: pa.Schema) -> None:
        assert self.current is not None
        self.current.commit(schema)
        self.parts.append({"file": self.current.final.name, "rows": self.current.rows})
        self.current = None

    def commit(self, schema: pa.Schema | None, manifest: dict[str, Any]) -> None:
        if self.current is not None:
            self._close_part(self.current.writer.schema if self.current.writer else schema)
        elif not self.parts and schema is not None:
            self.current = ParquetFileSink(self.directory / "part-00000.parquet")
            self._close_part(schema)
        body = dict(manifest, parts=self.parts, rows=self.rows)
        write_small_file(self.directory / "_MANIFEST.json", json.dumps(body, indent=2).encode() + b"\n")
        write_small_file(self.directory / "_SUCCESS", b"")

    def abort(self) -> None:
        if self.current is not None:
            self.current.abort()


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
