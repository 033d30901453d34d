"""The path every data subcommand shares: its flags -> a `Request` -> the file-run driver -> the summary line.

Commands stay thin: each passes its parameters (`locals()`) here with its task name; what the flags mean, and every
check on them, lives in `poolcli.request`, shared with the Python API.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from poolcli.errors import ErrorBudgetExceeded, Interrupted
from poolcli.vocab import Task

if TYPE_CHECKING:
    from poolcli.config import DriverConfig
    from poolcli.console import Progress


def execute(task: Task, flags: dict[str, Any]) -> None:
    """Run one command; print its summary line (also for a run stopped by a signal or the error budget, which
    still reports what it committed), then raise the error that stopped it, if any. With --dry-run: print the
    plan (JSON on stdout) or raise what the run would raise before loading its weights."""
    from poolcli.console import print_summary
    from poolcli.drivers.run import run_file_request
    from poolcli.request import Request

    req = Request.from_flags(task, flags)
    if flags.get("dry_run"):
        from poolcli.console import print_text
        from poolcli.drivers.dry_run import plan_file_request

        print_text(json.dumps(plan_file_request(req), indent=2, default=str))
        return
    outcome = run_file_request(req, make_progress=_progress)
    if outcome.error is None or isinstance(outcome.error, Interrupted | ErrorBudgetExceeded):
        print_summary(_trim(outcome.summary.as_dict(), req.verbose), quiet=req.quiet)
    if outcome.error is not None:
        raise outcome.error


def _progress(description: str, driver: DriverConfig) -> Progress:
    from poolcli.console import make_progress

    return make_progress(description, quiet=driver.quiet, progress=driver.progress)


def _trim(info: dict[str, Any], verbose: bool) -> dict[str, Any]:
    if not verbose:
        for key in ("padded_tokens", "batches", "padding_ratio", "oom_splits", "duplicates", "load_seconds", "threads"):
            info.pop(key, None)
    for key in ("convert_seconds", "quantization", "output_ranges"):
        if not info.get(key):
            info.pop(key, None)
    if not info.get("chunked_rows") and not info.get("chunks"):
        info.pop("chunked_rows", None)
        info.pop("chunks", None)
    return info
