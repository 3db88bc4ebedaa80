"""Ctrl-C and SIGTERM, delivered where a run can stop cleanly.

A `KeyboardInterrupt` raised inside a database call (Optuna's or MLflow's SQLite store) can leave
the file locked, and the clean-up that follows then waits on that lock: `tune` stopped by SIGTERM
hung for minutes. Inside `deferred()` (the training loop, each trial) a signal only takes note,
and `interrupt_point()`, called between steps, raises there; a second signal raises at once.
Only signals that already raise `KeyboardInterrupt` are deferred (SIGINT by default, SIGTERM once
the CLI installs `raise_interrupt`), and only in the main thread, the one signals reach.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_pending: list[int] = []  # signals received while deferred, not yet raised


def raise_interrupt(signum: int, frame: FrameType | None) -> None:
    """A handler that makes a signal (SIGTERM) stop the program as Ctrl-C does."""
    raise KeyboardInterrupt


def _note(signum: int, frame: FrameType | None) -> None:
    interrupt_point()  # a second signal raises at once
    _pending.append(signum)


def interrupt_point() -> None:
    """Raise `KeyboardInterrupt` here if a signal arrived since the last point."""
    if _pending:
        _pending.clear()
        raise KeyboardInterrupt


@contextmanager
def deferred() -> Iterator[None]:
    """Hold Ctrl-C and SIGTERM until the next `interrupt_point()` (or the block's end)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.getsignal(signum) for signum in _SIGNALS}
    raising = (signal.default_int_handler, raise_interrupt)
    deferring = [signum for signum, handler in previous.items() if handler in raising]
    for signum in deferring:
        signal.signal(signum, _note)
    try:
        yield
    finally:
        for signum in deferring:
            signal.signal(signum, previous[signum])
        # One that arrived after the last point is not lost, even when the block ends in an
        # exception (a pruned trial): the user asked to stop, not for the next trial.
        interrupt_point()
