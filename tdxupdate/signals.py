"""What a terminating signal does to a run: one policy for the whole process.

Every signal in :data:`~tdxupdate.errors.TERMINATING_SIGNALS` is handled alike, in two phases:

- **interruptible** (from the start of :func:`tdxupdate.cli.main`): the signal raises
  :class:`~tdxupdate.errors.Interrupted` (exit 128 + N) in the main thread, so locks are
  released, temporary files removed and ``--json`` prints its document;
- **held** (from the first write to the kernel, and once the outcome of any run is decided):
  the signal is recorded and nothing else happens. What the kernel did, or what the run found,
  is what is reported and is the exit status; a signal cannot turn a recorded success into
  "interrupted", and it cannot kill the process between the JSON document and the exit.
  There is no way back to interruptible: the phase ends with the process (or, for a caller
  that runs :func:`tdxupdate.cli.main` in-process, when ``main`` returns and :func:`install`'s
  restore puts the caller's handlers back).

While the image is streamed the uploader installs its own handlers (a signal aborts the
stream with ``loading=-1``) and restores these afterwards.

A signal that arrives while the interpreter is still starting (before ``main``) ends the
process the default way: nothing has been read or written yet.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from typing import Any

from tdxupdate.errors import TERMINATING_SIGNALS, Interrupted

__all__ = ["critical", "held", "hold", "holding", "ignore_until_exit", "install"]

_held: list[int] = []
_trapped: list[int] = []
_holding = False
_installed = False


def _handler(signum: int, _frame: object) -> None:
    if _holding:
        _held.append(signum)
        return
    raise Interrupted(f"interrupted by {signal.Signals(signum).name}", signum=signum)


def install() -> Callable[[], None]:
    """Make every terminating signal interruptible; return the function that undoes it.

    Signals that are ignored (``nohup``, a service manager's ``IgnoreSIGPIPE``-style setup)
    stay ignored. Outside the main thread nothing is installed (Python delivers signals to
    the main thread only).
    """
    global _holding, _installed
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous: dict[int, Any] = {}
    for signum in TERMINATING_SIGNALS:
        old = signal.getsignal(signum)
        if old is signal.SIG_IGN:
            continue
        previous[signum] = old if old is not None else signal.SIG_DFL
        signal.signal(signum, _handler)
    _held.clear()
    _holding = False
    _installed = True

    _trapped[:] = list(previous)

    def restore() -> None:
        global _holding, _installed
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        _holding = False
        _installed = False

    return restore


def hold() -> None:
    """From now on signals are recorded, not raised (see the module docstring)."""
    global _holding
    _holding = True


def ignore_until_exit() -> None:
    """The process is about to exit with the status it has reported: ignore the signals
    :func:`install` trapped. (Interpreter shutdown puts back the default action of every
    handler Python installed, and a signal in that window would kill the process after the
    JSON document said otherwise; an ignored signal stays ignored.)"""
    if threading.current_thread() is not threading.main_thread():
        return
    for signum in _trapped:
        signal.signal(signum, signal.SIG_IGN)


def held() -> tuple[int, ...]:
    """The signals recorded while holding, in order of arrival."""
    return tuple(_held)


@contextlib.contextmanager
def holding() -> Iterator[list[int]]:
    """Hold signals from here on; yields the list of the signals held inside the block.

    Under :func:`install` (the command line) holding does not end with the block: once the
    kernel has been written to, the run ends with the kernel's outcome. Without it (a library
    caller of :func:`tdxupdate.update.run_update`), the block installs a recording handler of
    its own and restores the previous ones when it ends.
    """
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return
    if _installed:
        start = len(_held)
        hold()
        try:
            yield received
        finally:
            received.extend(_held[start:])
        return

    def record(signum: int, _frame: object) -> None:
        received.append(signum)

    previous: dict[int, Any] = {}
    for signum in TERMINATING_SIGNALS:
        old = signal.getsignal(signum)
        if old is signal.SIG_IGN:
            continue  # ignored stays ignored, as under install()
        previous[signum] = old if old is not None else signal.SIG_DFL
        signal.signal(signum, record)
    try:
        yield received
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


@contextlib.contextmanager
def critical() -> Iterator[None]:
    """A few steps that must not be cut in two (create a temporary directory *and* register
    its removal): a signal inside is held and raised as :class:`Interrupted` when the block
    ends. Already holding, outside :func:`install` or outside the main thread: no change."""
    global _holding
    if not _installed or _holding or threading.current_thread() is not threading.main_thread():
        yield
        return
    start = len(_held)
    _holding = True
    try:
        yield
    finally:
        _holding = False
        arrived = _held[start:]
        del _held[start:]
        if arrived:
            # Raised even when the block itself failed: the signal wins (the block's error
            # stays attached as the context), as it would have a moment later.
            _handler(arrived[0], None)
