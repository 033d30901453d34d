"""Typed errors raised below the command layer; `poolcli.app` maps each to its exit code (sysexits)."""

from __future__ import annotations

from typing import Any


class PoolcliError(Exception):
    """Base of every error poolcli reports as a one-line message with a distinct exit code."""

    exit_code = 70

    summary: dict[str, object] | None = None
    """Set by `poolcli.run_file` on an error that stopped a run: the summary of what it committed."""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickled as its class, args and attributes, restored without calling `__init__`: a subclass's own
        constructor (`Interrupted(signum)`, `RowError(..., errors=...)`) does not take back what it stored, and an
        error crosses processes (a Ray actor's, a multiprocessing worker's) whole: message, hint, exit code,
        summary and any fields of its own."""
        return (_restore, (type(self), self.args, self.__dict__))


def _restore(cls: type[PoolcliError], args: tuple[Any, ...], state: dict[str, Any]) -> PoolcliError:
    error = cls.__new__(cls, *args)
    error.__dict__.update(state)
    return error


class UsageError(PoolcliError):
    """A flag or parameter is wrong for this task or model (EX_USAGE)."""

    exit_code = 64


class DataError(PoolcliError):
    """The input as a whole cannot be used: wrong schema, missing column, error budget exceeded (EX_DATAERR)."""

    exit_code = 65


class RowError(DataError):
    """Python API: some rows could not be processed (an empty text, a too-long one with on_too_long="error");
    `errors` lists them all. Pass on_error="return" to get the good rows and the error rows instead."""

    def __init__(self, message: str, *, errors: list[Any], hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.errors = errors


class ErrorBudgetExceeded(DataError):
    """More error rows than --max-errors / --max-error-rate allow; committed parts are kept."""


class NoInputError(PoolcliError):
    """The input file or model directory does not exist or cannot be opened (EX_NOINPUT)."""

    exit_code = 66


class InternalError(PoolcliError):
    """A bug or an unexpected failure inside poolcli or the model (EX_SOFTWARE)."""

    exit_code = 70


class CantCreateError(PoolcliError):
    """The output cannot be created (EX_CANTCREAT)."""

    exit_code = 73


class OutputIOError(PoolcliError):
    """Reading or writing failed at the operating-system level: disk full, EIO (EX_IOERR)."""

    exit_code = 74


class BusyError(PoolcliError):
    """Another run holds the output (EX_TEMPFAIL)."""

    exit_code = 75


class ConfigError(PoolcliError):
    """The model or configuration cannot be resolved or contradicts itself (EX_CONFIG)."""

    exit_code = 78


class Interrupted(PoolcliError):
    """The run was stopped by a signal; nothing partial was committed."""

    def __init__(self, signum: int) -> None:
        import signal

        super().__init__(
            f"stopped by {signal.Signals(signum).name}",
            hint="what was committed is kept; rerun the same command to resume",
        )
        self.exit_code = 128 + signum
