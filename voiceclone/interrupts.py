"""SIGINT and SIGTERM as one Ctrl-C: the first raises KeyboardInterrupt (the command exits 130 after writing its
reports) and sets both signals to be ignored, so a burst can neither interrupt the clean-up with a second traceback
nor kill the process while Python shuts down. `requested()` tells a run loop that a signal came even where its
KeyboardInterrupt was not raised (in a finaliser)."""

from __future__ import annotations

import contextlib
import os
import signal
import sys

SIGNALS = (signal.SIGINT, signal.SIGTERM)
_state = {"requested": False}


def interrupt_once(signum, frame) -> None:
    """Signal handler: ignore further SIGINT/SIGTERM, then raise KeyboardInterrupt the first time; a signal that lands
    in a finaliser (where Python would print the exception and drop it) is noted only, and the run loop stops on it."""
    for sig in SIGNALS:
        signal.signal(sig, signal.SIG_IGN)  # ignored ones stay ignored while Python shuts down (handled ones do not)
    if not _state["requested"]:
        _state["requested"] = True
        if not _in_finaliser(frame):
            raise KeyboardInterrupt


def _in_finaliser(frame) -> bool:
    """Whether `frame` runs inside a `__del__` or a weakref callback."""
    while frame is not None:
        if frame.f_code.co_name == "__del__" or frame.f_code.co_filename.endswith("weakref.py"):
            return True
        frame = frame.f_back
    return False


def requested() -> bool:
    """Whether a SIGINT or SIGTERM came since `install`."""
    return _state["requested"]


def install() -> dict:
    """Handle SIGINT and SIGTERM with `interrupt_once`; the previous handlers, by signal."""
    previous = {sig: signal.signal(sig, interrupt_once) for sig in SIGNALS}
    if not any(handler in (interrupt_once, signal.SIG_IGN) for handler in previous.values()):
        _state["requested"] = False  # a fresh start (in this process), not a nested install after a signal
    return previous


def restore(previous: dict) -> None:
    """Put back the `previous` handlers, except `interrupt_once` ones (the command line's own: the process ends next,
    and a signal that came must leave the signals ignored)."""
    for sig, handler in previous.items():
        if handler is not interrupt_once:
            signal.signal(sig, handler)


def exit_now(code: int) -> None:
    """Flush and end the process with `code`. After a KeyboardInterrupt, even a caught one, CPython may end its exit
    by killing itself with SIGINT (status -2 seen here, not 130), so an interrupted command exits here."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(code)
