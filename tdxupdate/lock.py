"""One update at a time per host: ``<state-dir>/lock`` (cli-contract.md §4 step 1).

An ``flock(LOCK_EX | LOCK_NB)`` on the lock file. The kernel drops the lock when the holder
exits however it exits, so a lock file left behind is never stale; it stays in place, as
flock lock files do. The holder writes its pid into the file so that a refused run can name
it (exit 75, ``locked``).
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

from tdxupdate import fsio, safedir
from tdxupdate.errors import PermissionDenied, TdxError, TryLater

__all__ = [
    "HOST_LOCK_DIR",
    "LOCK_FILE",
    "Lock",
    "acquire",
    "acquire_host",
    "host_lock_path",
    "interface_key",
]

LOCK_FILE = "lock"
#: Where the host-wide locks live: root's, and not movable by any option, so two runs with
#: different --state-dir values still exclude each other on the same upload interface.
HOST_LOCK_DIR = Path("/run/tdxupdate")


class Lock:
    """A held lock; a context manager that releases it on exit (``release`` is idempotent)."""

    def __init__(self, path: Path, fd: int, *, holder_died: bool = False) -> None:
        self.path = path
        self.pid = os.getpid()
        self._fd: int | None = fd
        #: the previous holder exited without releasing (killed): it left its pid behind
        self.holder_died = holder_died

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


_CASES = fsio.cases(
    (
        fsio.DENIED + fsio.READ_ONLY,
        PermissionDenied,
        "permission denied (run as root or choose another --state-dir)",
    )
)


def _error(exc: OSError, path: Path, doing: str) -> TdxError:
    return fsio.os_error(exc, f"{path}: cannot {doing} the update lock", _CASES)


def _holder(fd: int) -> str:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return "unknown pid"
    # Empty while the holder is between its truncate and its write, or after a crash.
    return f"pid {text}" if text.isdigit() else "unknown pid"


def acquire(state_dir: Path) -> Lock:
    """Take ``<state_dir>/lock`` without waiting (creating the directory, 0755, when missing).

    The directory and the file go through :mod:`tdxupdate.safedir`: an unsafe state directory
    or a symbolic link in place of the lock is refused (``permission-denied``), never followed.

    Raises :class:`TryLater` (``locked``) naming the holder's pid when another process holds
    it, :class:`PermissionDenied`/:class:`IOFailure` naming the file when it cannot be opened.
    """
    state_dir = Path(state_dir)
    path = state_dir / LOCK_FILE
    try:
        with safedir.open_dir(state_dir, "state directory") as directory:
            fd = _open_lock(directory, 0o644)
    except OSError as exc:
        raise _error(exc, path, "open") from exc
    return _take(
        path, fd, lambda holder: f"{path}: another tdxupdate ({holder}) is updating this host"
    )


def interface_key(upload_dir: Path) -> str:
    """The key of one upload interface: a digest of its resolved path, so each emulated host
    on a machine (tests, a fleet rehearsal) has its own, and every way of naming one interface
    (a symlink, a sysroot prefix) meets the same key. The TD-build fence uses it too."""
    return hashlib.sha256(os.path.realpath(upload_dir).encode()).hexdigest()[:32]


def host_lock_path(upload_dir: Path) -> Path:
    """The lock of one upload interface (keyed by :func:`interface_key`)."""
    return HOST_LOCK_DIR / f"upload-{interface_key(upload_dir)}.lock"


def acquire_host(upload_dir: Path) -> Lock:
    """Take the host-wide lock of ``upload_dir`` (under :data:`HOST_LOCK_DIR`) without waiting.

    Same errors as :func:`acquire`; the directory is created 0700 and must be root's (or
    this user's) and writable by nobody else, and a planted symlink in place of the lock file
    is refused instead of followed (:mod:`tdxupdate.safedir`).
    """
    path = host_lock_path(upload_dir)
    try:
        with safedir.open_dir(path.parent, "host lock directory", mode=0o700) as directory:
            fd = _open_lock(directory, 0o600, name=path.name)
    except OSError as exc:
        raise _error(exc, path, "open") from exc
    return _take(
        path,
        fd,
        lambda holder: (
            f"{upload_dir}: another tdxupdate ({holder}) is updating through this upload interface"
        ),
    )


def _open_lock(directory: safedir.SafeDir, mode: int, *, name: str = LOCK_FILE) -> int:
    """Open (or create, with exactly ``mode``) the lock file ``name`` in ``directory``.

    Never through a symbolic link and never anything but a regular file: the holder
    truncates and writes it."""
    try:
        fd = directory.open(name, os.O_RDWR | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError:
        return directory.open(name, os.O_RDWR, mode)
    try:
        os.fchmod(fd, mode)  # the umask applied to the mode given to open
    except BaseException:
        os.close(fd)
        raise
    return fd


def _take(path: Path, fd: int, busy: Callable[[str], str]) -> Lock:
    """flock ``fd`` without waiting and write our pid into it; closes ``fd`` on failure.

    ``busy(holder)`` says who holds it (exit 75, ``locked``). A clean release empties the
    file, so a pid found in it now was left by a holder that was killed.
    """
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        holder = _holder(fd)
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise TryLater(f"{busy(holder)}; try again later", code="locked") from exc
        raise _error(exc, path, "take") from exc
    died = _holder(fd) != "unknown pid"
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
    except OSError as exc:
        os.close(fd)
        raise _error(exc, path, "write") from exc
    return Lock(path, fd, holder_died=died)
