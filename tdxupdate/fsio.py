"""Files on disk: an ``OSError`` as the documented :class:`TdxError`, and the atomic writer.

Every module that touches a file says what an ``OSError`` means in its own words ("cannot
write the update history: permission denied (run as root or choose another --state-dir)"),
but the mapping is the same shape everywhere: some errnos become a named error with a fixed
text, every other errno an ``io-error`` with the system's reason. :func:`os_error` is that
shape; a caller passes its ``what`` and, when it words things differently, its cases.

:func:`write_atomically` replaces a file inside a :class:`~tdxupdate.safedir.SafeDir` so that
readers see the old or the new content, never a part, and a symbolic link planted in its
place is replaced, never written through.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Callable, Iterable, Mapping
from typing import Literal

from tdxupdate.errors import IOFailure, PermissionDenied, TdxError
from tdxupdate.safedir import SafeDir

__all__ = [
    "COMMON",
    "DENIED",
    "MISSING",
    "READ_ONLY",
    "Cases",
    "Make",
    "cases",
    "errno_name",
    "os_error",
    "reason",
    "write_atomically",
]

#: Builds the error from its whole message: an error class (``PermissionDenied``), a
#: ``functools.partial(NotFound, code="image-not-found")``, or any function of the message.
Make = Callable[[str], TdxError]
#: errno -> (the error to make, the text after ``"WHAT: "``)
Cases = Mapping[int, tuple[Make, str]]

DENIED = (errno.EACCES, errno.EPERM)
READ_ONLY = (errno.EROFS,)
MISSING = (errno.ENOENT,)


def cases(*groups: tuple[Iterable[int], Make, str]) -> dict[int, tuple[Make, str]]:
    """``cases((DENIED, PermissionDenied, "permission denied"), ...)``: one entry per errno."""
    return {number: (make, text) for numbers, make, text in groups for number in numbers}


#: What a file that cannot be read or written means when nothing more specific is said.
COMMON: Cases = cases(
    (DENIED, PermissionDenied, "permission denied (run as root)"),
    (MISSING, IOFailure, "does not exist"),
)


def reason(exc: OSError) -> str:
    """The system's words for ``exc`` ("No space left on device")."""
    return exc.strerror or str(exc)


def errno_name(exc: OSError) -> str:
    """The symbolic name of ``exc``'s errno ("EIO"), or "error"."""
    return errno.errorcode.get(exc.errno or 0, "error")


def os_error(
    exc: OSError,
    what: object,
    known: Cases = COMMON,
    *,
    other: Callable[[OSError], str] = reason,
    make: Make = IOFailure,
) -> TdxError:
    """``exc``, raised while touching ``what``, as the documented error.

    An errno in ``known`` becomes its error with ``"WHAT: TEXT"``; any other errno becomes
    ``make("WHAT: " + other(exc))``, an ``io-error`` with the system's reason by default.
    """
    found = known.get(exc.errno if exc.errno is not None else -1)
    if found is not None:
        return found[0](f"{what}: {found[1]}")
    return make(f"{what}: {other(exc)}")


Stage = Literal["create", "write"]


def _default_error(directory: SafeDir, name: str) -> Callable[[OSError, Stage], TdxError]:
    def error(exc: OSError, stage: Stage) -> TdxError:
        return os_error(exc, directory.path if stage == "create" else directory.path / name)

    return error


def write_atomically(
    directory: SafeDir,
    name: str,
    data: bytes,
    *,
    mode: int = 0o644,
    prefix: str | None = None,
    suffix: str = ".tmp",
    error: Callable[[OSError, Stage], TdxError] | None = None,
    strict_dir_sync: bool = True,
) -> None:
    """Replace ``name`` in ``directory`` with ``data``: readers see the old or the new file.

    The temporary file (``prefix`` + random + ``suffix``, by default ``.NAME.XXXX.tmp``) is
    created ``O_EXCL`` in the directory, filled, given ``mode``, synced and renamed over
    ``name`` through the directory's descriptor; on any failure it is removed. ``error`` maps
    an ``OSError`` of the ``"create"`` stage (the temporary file) or the ``"write"`` stage
    (filling, renaming) to the error raised; by default :func:`os_error` of the directory
    and of the file. The rename is durable once the directory is synced: with
    ``strict_dir_sync`` a failure there is a ``"write"`` error, without it it is ignored.
    """
    error = error or _default_error(directory, name)
    try:
        fd, tmp = directory.mkstemp(f".{name}." if prefix is None else prefix, suffix)
    except OSError as exc:
        raise error(exc, "create") from exc
    try:
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(data)
                out.flush()
                # mkstemp creates it 0600; a reader may run as another user.
                os.fchmod(out.fileno(), mode)
                os.fsync(out.fileno())
            directory.replace(tmp, name)
            if strict_dir_sync:
                directory.fsync()
        except OSError as exc:
            raise error(exc, "write") from exc
    except BaseException:
        with contextlib.suppress(OSError):
            directory.unlink(tmp)
        raise
    if not strict_dir_sync:
        with contextlib.suppress(OSError):
            directory.fsync()
