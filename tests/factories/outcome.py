"""Property tests where a call may either return or raise the one error it is allowed to raise."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")
E = TypeVar("E", bound=BaseException)


def returned_or_raised(call: Callable[[], T], error: type[E]) -> T | E:
    """``call()``'s value, or the ``error`` it raised; any other exception propagates.

    A fuzz test accepts both outcomes and then checks the one it got. Checking the error
    here, outside an ``except`` block, keeps a failed check from being reported as raised
    "during handling of" the error under test.
    """
    try:
        return call()
    except error as exc:
        return exc
