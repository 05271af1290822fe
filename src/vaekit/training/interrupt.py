"""Stop training cleanly on SIGTERM or Ctrl-C: the signal only sets a flag, and the trainer writes
a checkpoint at the next batch boundary before it stops (a second signal stops at once)."""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Any, Iterator


class StopRequest:
    """``requested`` becomes True when SIGTERM or SIGINT arrives while it is installed."""

    def __init__(self) -> None:
        self.requested = False

    def _handler(self, signum: int, frame: Any) -> None:
        if self.requested:  # asked twice: do not wait for the batch boundary
            raise KeyboardInterrupt
        self.requested = True


@contextlib.contextmanager
def stop_on_signals() -> Iterator[StopRequest]:
    """Install the flag-setting handlers for the duration (main thread only; elsewhere signals
    cannot be caught, and the flag simply stays False). The previous handlers come back after."""
    stop = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    old = {s: signal.signal(s, stop._handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for s, h in old.items():
            signal.signal(s, h)
