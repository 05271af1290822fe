"""Stop training cleanly on SIGTERM or Ctrl-C: the signal only sets a flag, and the trainer writes
a checkpoint at the next batch boundary before it stops (a second signal stops at once)."""

from __future__ import annotations

import contextlib
import functools
import signal
import sys
import threading
from typing import Any, Iterator

#: how long a signal that arrived inside a finalizer waits before it is delivered again
_REDELIVER_AFTER_S = 0.05


def _in_finalizer(frame: Any) -> bool:
    while frame is not None:
        if frame.f_code.co_name == "__del__":
            return True
        frame = frame.f_back
    return False


def _deliver_again(signum: int) -> None:
    # from another thread, a moment later: by then the finalizer has returned, and the main thread's
    # handler (whichever is installed then) sees the signal at an ordinary point of the program
    # (a real signal aimed at the main thread, unlike _thread.interrupt_main, also wakes a blocking call)
    timer = threading.Timer(_REDELIVER_AFTER_S, _signal_main_thread, args=(threading.main_thread().ident, signum))
    timer.daemon = True
    with contextlib.suppress(RuntimeError):  # "can't create new thread at interpreter shutdown": it is ending anyway
        timer.start()


def _signal_main_thread(ident: int, signum: int) -> None:
    with contextlib.suppress(OSError):  # the main thread is gone: nothing is left to stop
        signal.pthread_kill(ident, signum)


_raised: tuple[int, int] | None = None  # (id, signal) of the latest KeyboardInterrupt raise_interrupt raised


def _unraisable(unraisable: Any, *, previous: Any) -> None:
    global _raised
    if _raised is None or _raised[0] != id(unraisable.exc_value):
        previous(unraisable)
    else:  # swallowed by a finalizer our frame check did not recognise (a weakref callback, a generator)
        _deliver_again(_raised[1])
        _raised = None


_stopping = False  # set by stopping_anyway()


def stopping_anyway() -> None:
    """This process is already stopping with its own message (a distributed run whose peer is gone:
    the launcher says which process stopped and signals the others): from now on, a SIGTERM or Ctrl-C
    that would raise KeyboardInterrupt is ignored instead of replacing that message with 'interrupted'."""
    global _stopping
    _stopping = True


def raise_interrupt(signum: int, frame: Any) -> None:
    """From a signal handler: stop the program with KeyboardInterrupt. Python runs handlers between
    any two bytecodes, finalizers (``__del__``: a progress bar's, a file's) included, and an exception
    raised there is printed as 'Exception ignored ...' and dropped; there the signal is delivered
    again a moment later instead, so it neither prints a traceback nor is lost."""
    global _raised
    if _stopping:
        return
    if _in_finalizer(frame):
        _deliver_again(signum)
        return
    if not isinstance(sys.unraisablehook, functools.partial) or sys.unraisablehook.func is not _unraisable:
        sys.unraisablehook = functools.partial(_unraisable, previous=sys.unraisablehook)
    error = KeyboardInterrupt()
    _raised = (id(error), signum)
    raise error


class StopRequest:
    """``requested`` becomes True when SIGTERM or SIGINT arrives while it is installed."""

    def __init__(self) -> None:
        self.requested = False

    def _handler(self, signum: int, frame: Any) -> None:
        if self.requested:  # asked twice: do not wait for the batch boundary
            raise_interrupt(signum, frame)
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
