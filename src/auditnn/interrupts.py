"""SIGINT and SIGTERM as an exception (Interrupted), and sections that finish before an interrupt lands."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from .errors import Interrupted

SIGNALS = (signal.SIGINT, signal.SIGTERM)
_deferring = 0  # depth of nested deferred() sections
_pending: list[int] = []  # signals that arrived inside one, raised when the outermost ends


def _raise(signum: int, frame: Any) -> None:
    if _deferring:
        _pending.append(signum)
        return
    raise Interrupted(signum)


@contextmanager
def handled() -> Iterator[None]:
    """While the block runs, SIGINT and SIGTERM raise Interrupted; the handlers found before are restored after.
    A signal found ignored stays ignored (a shell starts background jobs with SIGINT ignored, nohup ignores SIGHUP:
    the caller asked for that). Outside the main thread Python cannot set handlers, and signals never reach that
    thread: nothing to do."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in SIGNALS}
    ours = [s for s, handler in previous.items() if handler is not signal.SIG_IGN]
    for s in ours:
        signal.signal(s, _raise)
    try:
        yield
    finally:
        for s in ours:  # None: a handler set outside Python, which we cannot reinstate; the default is closest
            signal.signal(s, signal.SIG_DFL if previous[s] is None else previous[s])
        _pending.clear()


@contextmanager
def deferred() -> Iterator[None]:
    """A signal that arrives inside the block (a rename pair, a clean-up) is raised when the block ends, so that the
    block never stops half way. Only the handler installed by handled() defers; without it nothing changes."""
    global _deferring
    _deferring += 1
    try:
        yield
    finally:
        _deferring -= 1
        if not _deferring and _pending:
            signum = _pending[0]
            _pending.clear()
            raise Interrupted(signum)
