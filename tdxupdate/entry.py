"""The ``tdxupdate`` command (and ``python -m tdxupdate``): a listing whose inputs are all
unchanged is printed again by :mod:`tdxupdate.replay` before anything else is imported; every
other run is :func:`tdxupdate.cli.main`, recorded when it is a listing a replay could repeat."""

from __future__ import annotations

import sys

from tdxupdate import replay

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence


def main() -> int:
    return run(sys.argv[1:])


def run(args: Sequence[str], *, process: bool = True) -> int:
    """One run of the command on ``args``. ``process``: this is the process's own entry point
    (signals are held while a replay is tried, and :func:`tdxupdate.cli.main` acts as the
    process's main); the tests run it in-process with ``process=False``."""
    code = replay.replay(args, hold_signals=process)
    if code is not None:
        return code
    replay.begin(args)
    status = 1
    try:
        from tdxupdate.cli import main as full

        status = full(None if process else list(args))
    finally:
        replay.end(status)
    return status
