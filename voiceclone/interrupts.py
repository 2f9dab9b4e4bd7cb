"""SIGINT and SIGTERM as one Ctrl-C: the first raises KeyboardInterrupt (the command exits 130 after writing its
reports), later ones are ignored, so a burst of signals cannot interrupt the clean-up with a second traceback."""

from __future__ import annotations

import signal

SIGNALS = (signal.SIGINT, signal.SIGTERM)


def interrupt_once(signum, frame) -> None:
    """Signal handler: ignore further SIGINT/SIGTERM, then stop like Ctrl-C."""
    for sig in SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    raise KeyboardInterrupt


def install() -> dict:
    """Handle SIGINT and SIGTERM with `interrupt_once`; the previous handlers, by signal."""
    return {sig: signal.signal(sig, interrupt_once) for sig in SIGNALS}


def restore(previous: dict) -> None:
    """Put back the `previous` handlers; where they were `interrupt_once` (the command line's own, the process ends
    next) a signal that came leaves the signals ignored rather than armed again."""
    for sig, handler in previous.items():
        if handler is not interrupt_once:
            signal.signal(sig, handler)
