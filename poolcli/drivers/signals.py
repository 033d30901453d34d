"""Graceful stop: SIGINT/SIGTERM set a flag the pipeline checks between batches; a second signal exits at once."""

from __future__ import annotations

import os
import signal
import sys
import threading
from types import FrameType, TracebackType

from poolcli.errors import Interrupted

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
"""The signals that stop a run between batches (exit 128 + the signal's number: 130, 143)."""


class StopFlag:
    """Installed for the duration of a run (main thread only); restores the previous handlers afterwards."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopFlag:
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def reinstall(self) -> None:
        """Take the signals back from a library that installed its own handlers meanwhile (Ray's start-up installs
        native SIGTERM handlers that end the process at once, with no stop between batches)."""
        for sig in self._previous:
            signal.signal(sig, self._handle)

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None:
            # Second signal: nothing partial is ever visible, so leaving right now is safe.
            sys.stderr.write("poolcli: second signal, exiting now\n")
            sys.stderr.flush()
            os._exit(128 + signum)
        self.signum = signum
        sys.stderr.write(
            f"poolcli: {signal.Signals(signum).name} received, stopping after this batch (send again to exit at once)\n"
        )
        sys.stderr.flush()

    def check(self) -> None:
        if self.signum is not None:
            raise Interrupted(self.signum)
