"""One update at a time per host: ``<state-dir>/lock`` (cli-contract.md §4 step 1).

An ``flock(LOCK_EX | LOCK_NB)`` on the lock file. The kernel drops the lock when the holder
exits however it exits, so a lock file left behind is never stale; it stays in place, as
flock lock files do. The holder writes its pid into the file so that a refused run can name
it (exit 75, ``locked``).
"""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path
from types import TracebackType

from tdxupdate.errors import IOFailure, PermissionDenied, TdxError, TryLater

__all__ = ["LOCK_FILE", "Lock", "acquire"]

LOCK_FILE = "lock"


class Lock:
    """A held lock; a context manager that releases it on exit (``release`` is idempotent)."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self.pid = os.getpid()
        self._fd: int | None = fd

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            # The pid would be wrong once we are gone; the next holder rewrites it anyway.
            os.ftruncate(fd, 0)
        except OSError:
            pass
        finally:
            os.close(fd)  # closing the only descriptor drops the flock

    def __enter__(self) -> Lock:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

    def __repr__(self) -> str:
        state = "held" if self.held else "released"
        return f"<Lock {self.path} pid {self.pid} {state}>"


def _error(exc: OSError, path: Path, doing: str) -> TdxError:
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return PermissionDenied(
            f"{path}: cannot {doing} the update lock: permission denied "
            "(run as root or choose another --state-dir)"
        )
    return IOFailure(f"{path}: cannot {doing} the update lock: {exc.strerror or exc}")


def _holder(fd: int) -> str:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return "unknown pid"
    # Empty while the holder is between its truncate and its write, or after a crash.
    return f"pid {text}" if text.isdigit() else "unknown pid"


def acquire(state_dir: Path) -> Lock:
    """Take ``<state_dir>/lock`` without waiting (creating the directory, 0755, when missing).

    Raises :class:`TryLater` (``locked``) naming the holder's pid when another process holds
    it, :class:`PermissionDenied`/:class:`IOFailure` naming the file when it cannot be opened.
    """
    state_dir = Path(state_dir)
    path = state_dir / LOCK_FILE
    try:
        state_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise _error(exc, path, "open") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        holder = _holder(fd)
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise TryLater(
                f"{path}: another tdxupdate ({holder}) is updating this host; try again later",
                code="locked",
            ) from exc
        raise _error(exc, path, "take") from exc
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
    except OSError as exc:
        os.close(fd)
        raise _error(exc, path, "write") from exc
    return Lock(path, fd)
