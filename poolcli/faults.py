"""Fault injection for the reliability tests, read once from the environment at the start of a run.

Production runs never set these variables; every hook is a no-op unless its variable is present. They exist so the
tests can prove, on disk, that a crash, an I/O fault, a NaN or an out-of-memory error at any step loses nothing:

- POOLCLI_CRASHPOINT=name[:n]      hard-exit (os._exit(137)) the n-th time (default 1st) the commit sequence
                                   reaches step `name` (see `CRASH_POINTS`).
- POOLCLI_IO_FAULT=op:n:errno      raise OSError(errno) the n-th time `op` (write, fsync, rename) runs.
- POOLCLI_FAIL_AT_ROW=row          raise RuntimeError from the model when a batch contains input row `row`.
- POOLCLI_OOM_ABOVE_TOKENS=t       raise torch's out-of-memory error for batches over t padded tokens.
- POOLCLI_OOM_ROWS=r1,r2           raise torch's out-of-memory error for any batch containing these input rows.
- POOLCLI_NAN_ROWS=r1,r2[:always]  make these rows' outputs NaN (only in the reduced-precision pass unless
                                   `:always`).
- POOLCLI_BREAK_COMMIT_ORDER=1     write the done-marker before the part is in place (to show the tests catch it).
- POOLCLI_SLOW_BATCH_SECONDS=s     sleep this long after each batch (to make signal tests deterministic).
"""

from __future__ import annotations

import errno as errno_mod
import os
from collections.abc import Mapping

import msgspec

CRASH_POINTS = (
    "after_tmp_write",
    "after_fsync",
    "after_replace_err",
    "after_replace_part",
    "before_marker",
    "after_marker",
    "mid_manifest",
    "before_success",
    "after_assemble",
)


def _rows(value: str | None) -> frozenset[int]:
    if not value:
        return frozenset()
    return frozenset(int(v) for v in value.split(",") if v.strip())


class Faults(msgspec.Struct, kw_only=True):
    crash_point: str | None = None
    crash_nth: int = 1
    io_op: str | None = None
    io_nth: int = 1
    io_errno: int = errno_mod.EIO
    fail_at_row: int | None = None
    oom_above_tokens: int | None = None
    oom_rows: frozenset[int] = frozenset()
    nan_rows: frozenset[int] = frozenset()
    nan_always: bool = False
    break_commit_order: bool = False
    slow_batch_seconds: float = 0.0
    counts: dict[str, int] = msgspec.field(default_factory=dict)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Faults:
        env = os.environ if env is None else env
        f = cls()
        if cp := env.get("POOLCLI_CRASHPOINT"):
            name, _, nth = cp.partition(":")
            if name not in CRASH_POINTS:
                raise ValueError(f"unknown crash point {name!r}")
            f.crash_point, f.crash_nth = name, int(nth or 1)
        if io := env.get("POOLCLI_IO_FAULT"):
            op, nth, code = (io.split(":") + ["1", "EIO"])[:3]
            f.io_op, f.io_nth = op, int(nth)
            f.io_errno = int(code) if code.isdigit() else getattr(errno_mod, code)
        if row := env.get("POOLCLI_FAIL_AT_ROW"):
            f.fail_at_row = int(row)
        if t := env.get("POOLCLI_OOM_ABOVE_TOKENS"):
            f.oom_above_tokens = int(t)
        f.oom_rows = _rows(env.get("POOLCLI_OOM_ROWS"))
        nan = env.get("POOLCLI_NAN_ROWS", "")
        rows, _, mode = nan.partition(":")
        f.nan_rows, f.nan_always = _rows(rows), mode == "always"
        f.break_commit_order = env.get("POOLCLI_BREAK_COMMIT_ORDER") == "1"
        f.slow_batch_seconds = float(env.get("POOLCLI_SLOW_BATCH_SECONDS", "0") or 0)
        return f

    def _hit(self, key: str, nth: int) -> bool:
        self.counts[key] = self.counts.get(key, 0) + 1
        return self.counts[key] == nth

    def crash(self, point: str) -> None:
        if self.crash_point == point and self._hit("crash:" + point, self.crash_nth):
            os._exit(137)

    def before_batch(self, rows: list[int], padded_tokens: int) -> None:
        """Model-side faults for a batch of these input rows (or pairs): an exception, or out of memory."""
        if self.fail_at_row is not None and self.fail_at_row in rows:
            raise RuntimeError(f"injected model failure at row {self.fail_at_row}")
        if (self.oom_above_tokens is not None and padded_tokens > self.oom_above_tokens) or self.oom_rows.intersection(
            rows
        ):
            import torch

            raise torch.OutOfMemoryError("injected out of memory")

    def io(self, op: str, path: object) -> None:
        if self.io_op == op and self._hit("io:" + op, self.io_nth):
            raise OSError(self.io_errno, os.strerror(self.io_errno), str(path))


NO_FAULTS = Faults()
