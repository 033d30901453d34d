"""Deterministic parts, committed atomically, with done-markers written after the data; resume and job commit.

Layout of a dataset directory (`-o out/`):

    out/part-00000.parquet ...          committed parts (rows in input order)
    out/_errors.jsonl                   every error row, assembled at the end
    out/_MANIFEST.json                  counts, per-part hashes, fingerprint, error counts
    out/_SUCCESS                        written last; holds the manifest's sha256
    out/.poolcli/fingerprint.json       what decides the output; a different one is refused
    out/.poolcli/done/part-00000.json   done-marker, written after its part is in place
    out/.poolcli/errors/part-00000.jsonl  the part's error rows, committed with it
    out/.poolcli/staging/               files being written; wiped at start
    out/.poolcli.lock                   flock: one run per output

A single file (`-o out.parquet`) keeps the same state in `.out.parquet.poolcli/` beside it, with the parts in its
`parts/` folder; at the end the parts are assembled into a staged file that is renamed onto `out.parquet`, and the
state folder is removed. Readers (pyarrow.dataset, DuckDB, pandas) skip names starting with '.' or '_', so they
never see a file that is being written.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Literal

import msgspec

from poolcli.errors import BusyError, CantCreateError, ConfigError, InternalError, OutputIOError
from poolcli.faults import NO_FAULTS, Faults
from poolcli.io.safety import probe_dir

if TYPE_CHECKING:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from poolcli.io.records import ErrorRow

STATE_VERSION = 1
_ENCODER = msgspec.json.Encoder()
_RESULT_KEY = b"poolcli_result"
"""A single-file output's metadata key for its counts (a directory output keeps them in _MANIFEST.json)."""


class Layout(msgspec.Struct, frozen=True):
    kind: Literal["file", "dir"]
    final: Path
    state: Path
    parts: Path
    markers: Path
    errors: Path
    staging: Path
    lock: Path

    @classmethod
    def for_output(cls, output: str, kind: Literal["file", "dir"]) -> Layout:
        final = Path(output.rstrip("/") if kind == "dir" else output)
        if kind == "dir":
            state = final / ".poolcli"
            return cls(
                kind, final, state, final, state / "done", state / "errors", state / "staging", final / ".poolcli.lock"
            )
        state = final.with_name(f".{final.name}.poolcli")
        return cls(
            kind,
            final,
            state,
            state / "parts",
            state / "done",
            state / "errors",
            state / "staging",
            final.with_name(f".{final.name}.poolcli.lock"),
        )


def part_file(k: int) -> str:
    return f"part-{k:05d}.parquet"


def _marker_file(k: int) -> str:
    return f"part-{k:05d}.json"


def _errors_file(k: int) -> str:
    return f"part-{k:05d}.jsonl"


class StoreState(msgspec.Struct, kw_only=True):
    """What a run would do with its output (`PartStore.inspect`, a dry run's answer)."""

    status: Literal["new", "complete", "resume", "replace"]
    """new: nothing there yet; complete: the output is finished by this very command, a rerun is a no-op;
    resume: `parts` committed parts match and are skipped; replace: an earlier output or state is removed first
    (--overwrite)."""
    parts: int = 0
    rows: int = 0
    """Output rows already committed (complete: the whole output)."""
    errors: int = 0


class PartMarker(msgspec.Struct, kw_only=True):
    """The done-marker of one part: written only once the part (and its error rows) are in place."""

    part: int
    fingerprint: str
    first_row: int
    rows_in: int
    rows_ok: int
    rows_err: int
    tokens: int = 0
    truncated: int = 0
    chunked_rows: int = 0
    chunks: int = 0
    sha256_part: str | None = None
    sha256_errors: str | None = None
    error_codes: dict[str, int] = msgspec.field(default_factory=dict)
    batch_budget: int | None = None
    """The token budget in force at the end of the part (lowered after an out-of-memory error); a resumed run
    continues with it so its batches stay the same."""


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


class Fs:
    """The few filesystem steps of a commit, each fsynced, each a place where the tests inject faults."""

    def __init__(self, faults: Faults) -> None:
        self.faults = faults

    def fsync(self, path: Path) -> None:
        self.faults.io("fsync", path)
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def replace(self, src: Path, dst: Path) -> None:
        self.faults.io("rename", dst)
        os.replace(src, dst)
        self.fsync(dst.parent)

    def write_bytes(self, staged: Path, final: Path, data: bytes) -> None:
        """Small file: staged, fsynced, renamed into place."""
        with open(staged, "wb") as fh:
            self.faults.io("write", staged)
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        self.replace(staged, final)


def _oserror(action: str, path: Path, exc: OSError) -> OutputIOError:
    return OutputIOError(f"cannot {action} {path}: {exc.strerror or exc}")


class PartStore:
    """Owns an output's state: lock, fingerprint, done-markers, part commits, and the final job commit."""

    def __init__(self, layout: Layout, fingerprint: str, identity: dict[str, Any], faults: Faults = NO_FAULTS):
        self.layout = layout
        self.fingerprint = fingerprint
        self.identity = identity
        self.faults = faults
        self.fs = Fs(faults)
        self._lock_fh: IO[bytes] | None = None
        self.done: dict[int, PartMarker] = {}
        self.stale_error_files: list[Path] = []
        """Error files a fresh run must remove before it commits anything (set by the caller)."""
        self.metadata = {b"poolcli": msgspec.json.encode({**identity, "fingerprint": fingerprint})}
        """The Parquet key-value metadata of every file written: the run's identity and fingerprint."""
        self.tag = ""
        """Prefix of this writer's staged file names (a distributed worker's own, so that two attempts at the
        same part never write the same staged file)."""

    @classmethod
    def worker(
        cls, layout: Layout, fingerprint: str, identity: dict[str, Any], tag: str, faults: Faults = NO_FAULTS
    ) -> PartStore:
        """A store that only commits parts, for a distributed worker: the driver holds the lock, opened the
        state, and does the job commit. Parts are deterministic, so a retried part rewrites the same bytes."""
        store = cls(layout, fingerprint, identity, faults)
        store.tag = f".{tag}."
        layout.staging.mkdir(parents=True, exist_ok=True)
        return store

    def reload(self) -> None:
        """Load the done-markers again (workers committed parts behind this store's back)."""
        self.done = self._load_markers()

    # -- start ---------------------------------------------------------------------------------------------

    def open(self, *, overwrite: bool) -> bool:
        """Lock the output and load valid done-markers; True when the output is already complete (a no-op)."""
        lay = self.layout
        try:
            lay.final.parent.mkdir(parents=True, exist_ok=True)
            if lay.kind == "dir":
                lay.final.mkdir(exist_ok=True)
        except OSError as exc:
            raise CantCreateError(f"cannot create {lay.final}: {exc.strerror}") from None
        self._lock()
        complete, state_fp = self._check(overwrite=overwrite)
        if complete and not overwrite:
            if lay.kind == "file":
                self._remove_state()  # left by a crash after the final rename
            return True
        # Same fingerprint and unfinished: resume, even with --overwrite (the result would be the same bytes).
        fresh = complete or state_fp != self.fingerprint
        try:
            if fresh:
                if lay.kind == "dir":
                    for marker in ("_SUCCESS", "_MANIFEST.json"):
                        with contextlib.suppress(FileNotFoundError):
                            (lay.final / marker).unlink()
                # An error file of another run would list rows this run may put in its output.
                for stale in self.stale_error_files:
                    with contextlib.suppress(FileNotFoundError):
                        stale.unlink()
                self._remove_state()
            for d in (lay.state, lay.parts, lay.markers, lay.errors):
                d.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(lay.staging, ignore_errors=True)
            lay.staging.mkdir()
            if fresh or state_fp is None:
                doc = dict(self.identity, fingerprint=self.fingerprint, state_version=STATE_VERSION)
                self.fs.write_bytes(
                    lay.staging / "fingerprint.json",
                    lay.state / "fingerprint.json",
                    json.dumps(doc, indent=2, default=str).encode(),
                )
        except OSError as exc:
            raise _oserror("prepare", lay.state, exc) from None
        self.done = self._load_markers()
        return False

    def _check(self, *, overwrite: bool) -> tuple[bool, str | None]:
        """What `open` finds, read only: whether the output is complete, and the fingerprint of an unfinished
        run's state; refuses (exit 78) an output of another command unless `overwrite`."""
        lay = self.layout
        complete = self._complete()
        if complete and not overwrite:
            return True, None
        state_fp = self._state_fingerprint()
        if state_fp is not None and state_fp != self.fingerprint and not overwrite:
            committed = sum(1 for _ in lay.markers.glob("part-*.json")) if lay.markers.is_dir() else 0
            if committed:
                raise ConfigError(
                    f"{lay.final} holds an unfinished run with a different fingerprint (model, options or input "
                    f"changed) that has committed {committed} part(s)",
                    hint="rerun the original command to finish it, or pass --overwrite",
                )
            # A run that committed nothing (refused or stopped before its first part) has nothing to keep: this
            # run starts afresh in its place, unless what the output holds besides it is another command's.
            state_fp = None
        if state_fp is None and self._foreign_output() and not overwrite:
            ours = lay.kind == "file" and final_file_fingerprint(lay.final) is not None
            raise ConfigError(
                f"{lay.final} already exists and holds "
                + (
                    "the output of a different command (model, options or input changed)"
                    if ours
                    else "files not written by this command"
                ),
                hint="pass --overwrite to replace it",
            )
        return complete, state_fp

    def inspect(self, *, overwrite: bool) -> StoreState:
        """What `open` would find and decide, creating, locking and removing nothing (a dry run): the same
        refusals (the output cannot be created: 73; another run holds it: 75; it holds another command's
        output: 78), and whether the run would be a no-op, resume committed parts, or start afresh."""
        lay = self.layout
        problem = probe_dir(lay.final if lay.kind == "dir" else lay.final.parent)
        if problem is not None:
            raise CantCreateError(f"cannot create {lay.final}: {problem.strerror or problem}")
        if self._held():
            raise self._busy()
        complete, state_fp = self._check(overwrite=overwrite)
        if complete and not overwrite:
            rows, errors = self.committed()
            return StoreState(status="complete", rows=rows, errors=errors)
        if complete or state_fp != self.fingerprint:
            there = complete or state_fp is not None or self._foreign_output()
            return StoreState(status="replace" if there else "new")
        done = self._load_markers()
        return StoreState(
            status="resume",
            parts=len(done),
            rows=sum(m.rows_ok for m in done.values()),
            errors=sum(m.rows_err for m in done.values()),
        )

    def _held(self) -> bool:
        """Another run holds the output's lock (asked with a shared lock on the file, if there is one; nothing is
        created)."""
        try:
            fh = open(self.layout.lock, "rb")
        except OSError:
            return False
        with fh:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
        return False

    def _busy(self) -> BusyError:
        return BusyError(f"another poolcli run is writing {self.layout.final}", hint="retry when it ends")

    def _lock(self) -> None:
        path = self.layout.lock
        while True:
            try:
                fh = open(path, "ab")
            except OSError as exc:
                raise CantCreateError(f"cannot create the lock {path}: {exc.strerror}") from None
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                fh.close()
                raise self._busy() from None
            # The previous holder removes the lock file when it ends; a lock on a removed file guards nothing.
            try:
                same = os.stat(path).st_ino == os.fstat(fh.fileno()).st_ino
            except FileNotFoundError:
                same = False
            if same:
                self._lock_fh = fh
                return
            fh.close()

    def close(self) -> None:
        if self._lock_fh is not None:
            with contextlib.suppress(OSError):
                self.layout.lock.unlink()  # still holding the lock, so nobody can be relying on this file
            with contextlib.suppress(OSError):
                fcntl.flock(self._lock_fh.fileno(), fcntl.LOCK_UN)
            self._lock_fh.close()
            self._lock_fh = None

    def _remove_state(self) -> None:
        """One atomic rename hides the whole state folder; deleting the renamed copy may then fail harmlessly."""
        lay = self.layout
        if not lay.state.exists():
            return
        trash = lay.state.with_name(lay.state.name + f".trash-{os.getpid()}")
        os.replace(lay.state, trash)
        shutil.rmtree(trash, ignore_errors=True)

    def committed(self) -> tuple[int, int]:
        """Rows and error rows of a complete output (for the summary of a no-op rerun)."""
        if self.layout.kind == "dir":
            manifest = json.loads((self.layout.final / "_MANIFEST.json").read_text())
            return int(manifest.get("rows", 0)), int(manifest.get("errors", 0))
        import pyarrow.parquet as pq

        meta = pq.ParquetFile(self.layout.final).metadata
        result = json.loads((meta.metadata or {}).get(_RESULT_KEY, b"{}"))
        return int(meta.num_rows), int(result.get("errors", 0))

    def _state_fingerprint(self) -> str | None:
        try:
            return str(json.loads((self.layout.state / "fingerprint.json").read_text())["fingerprint"])
        except (OSError, ValueError, KeyError):
            return None

    def _complete(self) -> bool:
        lay = self.layout
        if lay.kind == "dir":
            success = lay.final / "_SUCCESS"
            manifest = lay.final / "_MANIFEST.json"
            if not (success.is_file() and manifest.is_file()):
                return False
            try:
                data = json.loads(manifest.read_text())
            except ValueError:
                return False
            if data.get("fingerprint") != self.fingerprint or success.read_text().strip() != sha256_file(manifest):
                return False
            # A part deleted or replaced after the fact makes the output incomplete again (cheap check: sizes).
            for part in data.get("parts", []):
                path = lay.parts / part["file"]
                if part.get("sha256") is not None and (not path.is_file() or path.stat().st_size != part.get("bytes")):
                    return False
            return True
        # A matching final file is complete even if a crash interrupted the removal of the state folder.
        return lay.final.is_file() and final_file_fingerprint(lay.final) == self.fingerprint

    def _foreign_output(self) -> bool:
        lay = self.layout
        if lay.kind == "file":
            return lay.final.exists()
        return lay.final.is_dir() and any(p.name not in (".poolcli", ".poolcli.lock") for p in lay.final.iterdir())

    def _load_markers(self) -> dict[int, PartMarker]:
        done: dict[int, PartMarker] = {}
        for path in sorted(self.layout.markers.glob("part-*.json")):
            try:
                marker = msgspec.json.decode(path.read_bytes(), type=PartMarker)
            except (OSError, msgspec.DecodeError, msgspec.ValidationError):
                continue
            # With the commit order broken on purpose, behave like a naive implementation that trusts markers.
            trusted = self.faults.break_commit_order or self._verify(marker)
            if marker.fingerprint == self.fingerprint and trusted:
                done[marker.part] = marker
        return done

    def _verify(self, m: PartMarker) -> bool:
        """A part counts as done only if its files exist and their hashes match the marker."""
        part = self.layout.parts / part_file(m.part)
        errs = self.layout.errors / _errors_file(m.part)
        try:
            if m.sha256_part is None and part.exists():
                return False  # a part file the marker does not account for: recompute
            if m.sha256_part is not None and (not part.is_file() or sha256_file(part) != m.sha256_part):
                return False
            if m.sha256_errors is not None and (not errs.is_file() or sha256_file(errs) != m.sha256_errors):
                return False
        except OSError:
            return False
        return True

    def recorded(self, key: bytes) -> bytes | None:
        """A key-value metadata entry of the first committed part that has a file: what an earlier run of this
        output measured after its identity was fixed (int8/uint8 output ranges)."""
        import pyarrow.parquet as pq

        for k in sorted(self.done):
            if self.done[k].sha256_part is not None:
                meta = pq.read_schema(self.layout.parts / part_file(k)).metadata or {}
                return meta.get(key)
        return None

    # -- one part ------------------------------------------------------------------------------------------

    def begin(self, k: int, first_row: int, *, id_column: str = "id", value_column: str = "embedding") -> PartWriter:
        return PartWriter(self, k, first_row, id_column=id_column, value_column=value_column)

    # -- the end -------------------------------------------------------------------------------------------

    def finish(self, n_parts: int, schema: pa.Schema, errors_path: Path | None) -> dict[str, Any]:
        """Job commit: every part 0..n-1 must be done. Returns the manifest."""
        lay = self.layout
        schema = schema.with_metadata(self.metadata)
        missing = [k for k in range(n_parts) if k not in self.done]
        if missing:
            raise InternalError(f"parts {missing[:5]} have no done-marker at job commit")
        markers = [self.done[k] for k in range(n_parts)]
        try:
            # Parts beyond this run's count can only come from an overwritten, longer earlier run.
            for stale in lay.parts.glob("part-*.parquet"):
                if int(stale.stem.split("-")[1]) >= n_parts:
                    stale.unlink()
            codes: dict[str, int] = {}
            for m in markers:
                for code, n in m.error_codes.items():
                    codes[code] = codes.get(code, 0) + n
            manifest: dict[str, Any] = {
                "fingerprint": self.fingerprint,
                "poolcli_version": self.identity.get("poolcli_version"),
                "task": self.identity.get("task"),
                "model": self.identity.get("model"),
                "rows_in": sum(m.rows_in for m in markers),
                "rows": sum(m.rows_ok for m in markers),
                "errors": sum(m.rows_err for m in markers),
                "error_codes": codes,
                "parts": [
                    {
                        "file": part_file(m.part),
                        "bytes": (lay.parts / part_file(m.part)).stat().st_size if m.sha256_part else 0,
                        "rows": m.rows_ok,
                        "rows_in": m.rows_in,
                        "errors": m.rows_err,
                        "first_row": m.first_row,
                        "sha256": m.sha256_part,
                    }
                    for m in markers
                ],
            }
            if errors_path is not None:
                self._assemble_errors(markers, errors_path)
            if lay.kind == "file":
                counts = {"rows_in": manifest["rows_in"], "errors": manifest["errors"], "error_codes": codes}
                self._assemble_file(markers, schema.with_metadata({**self.metadata, _RESULT_KEY: json.dumps(counts)}))
                self.faults.crash("after_assemble")
                self._remove_state()
                return manifest
            if not any(m.rows_ok for m in markers):
                # Readers need a schema even for an empty result: one zero-row part carries it.
                self._write_empty_part(schema)
            blob = json.dumps(manifest, indent=2).encode() + b"\n"
            manifest_path = lay.final / "_MANIFEST.json"
            staged = lay.staging / "_MANIFEST.json"
            with open(staged, "wb") as fh:
                fh.write(blob[: len(blob) // 2])
                self.faults.crash("mid_manifest")
                fh.write(blob[len(blob) // 2 :])
            self.fs.fsync(staged)
            self.fs.replace(staged, manifest_path)
            self.faults.crash("before_success")
            self.fs.write_bytes(
                lay.staging / "_SUCCESS", lay.final / "_SUCCESS", hashlib.sha256(blob).hexdigest().encode() + b"\n"
            )
            shutil.rmtree(lay.staging, ignore_errors=True)
        except OSError as exc:
            raise _oserror("commit", lay.final, exc) from None
        return manifest

    def _write_empty_part(self, schema: pa.Schema) -> None:
        import pyarrow.parquet as pq

        staged = self.layout.staging / part_file(0)
        pq.write_table(schema.empty_table(), str(staged), compression="zstd")
        self.fs.fsync(staged)
        self.fs.replace(staged, self.layout.parts / part_file(0))

    def finish_errors_only(self, final: Path) -> None:
        """After a stop over the error budget: publish the committed parts' error rows, and nothing else."""
        markers = [self.done[k] for k in sorted(self.done)]
        try:
            self.layout.staging.mkdir(parents=True, exist_ok=True)
            self._assemble_errors(markers, final)
        except OSError as exc:
            raise _oserror("write", final, exc) from None

    def _assemble_errors(self, markers: list[PartMarker], final: Path) -> None:
        # Staged beside its destination: --errors may be on another filesystem than the output.
        final.parent.mkdir(parents=True, exist_ok=True)
        staged = final.with_name(f".{final.name}.poolcli-{os.getpid()}.tmp")
        with open(staged, "wb") as out:
            self.faults.io("write", staged)
            for m in markers:
                if m.rows_err:
                    with open(self.layout.errors / _errors_file(m.part), "rb") as src:
                        shutil.copyfileobj(src, out)
            out.flush()
            os.fsync(out.fileno())
        self.fs.replace(staged, final)

    def _assemble_file(self, markers: list[PartMarker], schema: pa.Schema) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        lay = self.layout
        staged = lay.final.with_name(f".{lay.final.name}.poolcli-assemble.tmp")
        # Parts written by different runs may type an all-null kept column differently; promote to one schema.
        part_schemas = [pq.read_schema(lay.parts / part_file(m.part)) for m in markers if m.rows_ok]
        if part_schemas:
            schema = pa.unify_schemas(part_schemas, promote_options="permissive").with_metadata(schema.metadata)
        writer = pq.ParquetWriter(str(staged), schema, compression="zstd")
        try:
            self.faults.io("write", staged)
            for m in markers:
                if m.rows_ok:
                    pf = pq.ParquetFile(lay.parts / part_file(m.part))
                    for i in range(pf.num_row_groups):
                        writer.write_table(pf.read_row_group(i).cast(schema))
        except BaseException:
            writer.close()
            staged.unlink(missing_ok=True)
            raise
        writer.close()
        self.fs.fsync(staged)
        expected = sum(m.rows_ok for m in markers)
        if pq.ParquetFile(staged).metadata.num_rows != expected:
            staged.unlink(missing_ok=True)
            raise InternalError(f"assembled output has the wrong row count (expected {expected})")
        self.fs.replace(staged, lay.final)


def final_file_fingerprint(path: Path) -> str | None:
    import pyarrow.parquet as pq

    try:
        meta = pq.read_schema(path).metadata or {}
        return str(json.loads(meta[b"poolcli"])["fingerprint"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


class PartWriter:
    """Writes one part into staging; `commit` validates it and runs the commit sequence."""

    def __init__(
        self, store: PartStore, k: int, first_row: int, *, id_column: str = "id", value_column: str = "embedding"
    ) -> None:
        self.store = store
        self.id_column = id_column
        self.value_column = value_column
        """The column whose values must be finite (vectors or scores)."""
        self.k = k
        self.first_row = first_row
        self.staged = store.layout.staging / f"{store.tag}{part_file(k)}"
        self.writer: pq.ParquetWriter | None = None
        self.ids: list[Any] = []
        self.errors: list[ErrorRow] = []
        self.rows_in = 0
        self.tokens = 0
        self.truncated = 0
        self.chunked_rows = 0
        self.chunks = 0
        self.batch_budget: int | None = None

    def add(self, result: Any, rows_in: int) -> None:
        """One block's result (`engine.base.BlockResult`: table, errors and counts) that covered `rows_in` input
        rows (or pair units)."""
        if result.table is not None:
            self.write(result.table)
        self.errors.extend(result.errors)
        self.rows_in += rows_in
        self.tokens += result.tokens
        self.truncated += result.truncated
        self.chunked_rows += result.chunked_rows
        self.chunks += result.chunks

    def write(self, table: pa.Table) -> None:
        import pyarrow.parquet as pq

        table = table.replace_schema_metadata(self.store.metadata)
        try:
            if self.writer is not None and not self.writer.schema.equals(table.schema):
                self._promote(table.schema)
            if self.writer is None:
                self.writer = pq.ParquetWriter(str(self.staged), table.schema, compression="zstd")
            self.store.faults.io("write", self.staged)
            self.writer.write_table(table)
        except OSError as exc:
            raise _oserror("write", self.staged, exc) from None
        self.ids.extend(table.column(self.id_column).to_pylist())

    def _promote(self, schema: pa.Schema) -> None:
        """A kept column that was all-null so far got a real type: rewrite what is staged with the new schema."""
        import pyarrow.parquet as pq

        assert self.writer is not None
        self.writer.close()
        written = pq.read_table(self.staged).cast(schema)
        self.writer = pq.ParquetWriter(str(self.staged), schema, compression="zstd")
        self.writer.write_table(written)

    def abort(self) -> None:
        """Leave nothing of this part behind (its staging files are hidden, and wiped at the next start)."""
        if self.writer is not None:
            with contextlib.suppress(Exception):
                self.writer.close()
            self.writer = None
        for p in (self.staged, self.staged.with_suffix(".jsonl")):
            with contextlib.suppress(OSError):
                p.unlink()

    def commit(self) -> PartMarker:
        store, lay, faults, fs = self.store, self.store.layout, self.store.faults, self.store.fs
        k = self.k
        part_final = lay.parts / part_file(k)
        errs_final = lay.errors / _errors_file(k)
        errs_staged = lay.staging / f"{store.tag}{_errors_file(k)}"
        try:
            sha_part = None
            if self.writer is not None:
                self.writer.close()
                self.writer = None
                faults.crash("after_tmp_write")
                fs.fsync(self.staged)
                faults.crash("after_fsync")
                self._validate()
                sha_part = sha256_file(self.staged)
            sha_err = None
            codes: dict[str, int] = {}
            if self.errors:
                self.errors.sort(key=lambda e: e.row if e.row is not None else -1)
                for e in self.errors:
                    codes[e.code] = codes.get(e.code, 0) + 1
                with open(errs_staged, "wb") as fh:
                    faults.io("write", errs_staged)
                    fh.write(b"".join(_ENCODER.encode(e) + b"\n" for e in self.errors))
                fs.fsync(errs_staged)
                sha_err = sha256_file(errs_staged)
            marker = PartMarker(
                part=k,
                fingerprint=store.fingerprint,
                first_row=self.first_row,
                rows_in=self.rows_in,
                rows_ok=len(self.ids),
                rows_err=len(self.errors),
                tokens=self.tokens,
                truncated=self.truncated,
                chunked_rows=self.chunked_rows,
                chunks=self.chunks,
                sha256_part=sha_part,
                sha256_errors=sha_err,
                error_codes=codes,
                batch_budget=self.batch_budget,
            )
            if faults.break_commit_order:
                self._write_marker(marker)
            if sha_err is not None:
                fs.replace(errs_staged, errs_final)
            faults.crash("after_replace_err")
            if sha_part is not None:
                fs.replace(self.staged, part_final)
            else:
                with contextlib.suppress(FileNotFoundError):
                    part_final.unlink()
            faults.crash("after_replace_part")
            faults.crash("before_marker")
            if not faults.break_commit_order:
                self._write_marker(marker)
            faults.crash("after_marker")
        except OSError as exc:
            raise _oserror("commit part", part_final, exc) from None
        store.done[k] = marker
        return marker

    def _write_marker(self, marker: PartMarker) -> None:
        lay = self.store.layout
        self.store.fs.write_bytes(
            lay.staging / f"{self.store.tag}{_marker_file(marker.part)}",
            lay.markers / _marker_file(marker.part),
            _ENCODER.encode(marker),
        )

    def _validate(self) -> None:
        """Reopen the staged part: its footer, row count, ids, and finite values, before it may be renamed.

        Read a thousand rows at a time, so validating a part costs that much memory, not the whole part (per-token
        vectors make a row large)."""
        import numpy as np
        import pyarrow as pa
        import pyarrow.parquet as pq

        def fail(why: object) -> InternalError:
            return InternalError(f"part {self.k} failed validation: {why}")

        seen = 0
        try:
            pf = pq.ParquetFile(self.staged)
            if pf.metadata.num_rows != len(self.ids):
                raise fail("rows differ from what was computed")
            for batch in pf.iter_batches(batch_size=1024, columns=[self.id_column, self.value_column]):
                ids = batch.column(0).to_pylist()
                if ids != self.ids[seen : seen + len(ids)]:
                    raise fail("ids differ from what was computed")
                seen += len(ids)
                column = batch.column(1)
                if pa.types.is_map(column.type):  # lexical weights: the weights are the map's items
                    column = column.items
                while hasattr(column, "flatten") and pa.types.is_nested(column.type):  # lists of vectors
                    column = column.flatten()
                if not np.isfinite(column.to_numpy(zero_copy_only=False)).all():
                    raise fail("non-finite values")
        except InternalError:
            raise
        except Exception as exc:  # pyarrow raises ArrowInvalid / OSError for a torn file
            raise fail(exc) from None
        if seen != len(self.ids):
            raise fail("rows differ from what was computed")
