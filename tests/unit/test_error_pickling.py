"""Every poolcli error survives pickling whole (a Ray actor's or a worker process's error reaches the driver):
class, message, hint, exit code, summary and its own fields, whatever its constructor takes."""

from __future__ import annotations

import pickle
import signal

import pytest

from poolcli import errors
from poolcli.io.records import ErrorRow


def _every_error_class() -> list[type[errors.PoolcliError]]:
    classes: list[type[errors.PoolcliError]] = [errors.PoolcliError]
    for cls in classes:
        classes.extend(c for c in cls.__subclasses__() if c.__module__ == errors.__name__)
    return classes


def _example(cls: type[errors.PoolcliError]) -> errors.PoolcliError:
    """One instance of `cls`, built with what its own constructor takes."""
    if cls is errors.Interrupted:
        return errors.Interrupted(signal.SIGTERM)
    if issubclass(cls, errors.RowError):
        return cls("2 rows failed", errors=[ErrorRow(id="a", source="<memory>", code="EMPTY_TEXT", message="x")])
    return cls("something is wrong", hint="fix it")


@pytest.mark.parametrize("cls", _every_error_class(), ids=lambda c: c.__name__)
def test_an_error_round_trips_through_pickle(cls: type[errors.PoolcliError]) -> None:
    error = _example(cls)
    error.summary = {"rows_out": 3}
    back = pickle.loads(pickle.dumps(error))
    assert type(back) is cls
    assert vars(back) == vars(error) and back.args == error.args
    assert (str(back), back.exit_code, back.hint, back.summary) == (
        str(error),
        error.exit_code,
        error.hint,
        {"rows_out": 3},
    )


def test_an_interrupted_run_keeps_its_signal() -> None:
    back = pickle.loads(pickle.dumps(errors.Interrupted(signal.SIGINT)))
    assert back.exit_code == 130 and str(back).startswith("stopped by SIGINT (")
