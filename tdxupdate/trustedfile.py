"""Reading a file that decides what the tool trusts: bounded, and only from a safe owner.

The configuration file and the trusted-keys files widen or narrow what reaches the kernel, so
(issue 9, items 10 and 14):

- at most ``limit`` bytes are read, whatever the file is (``/dev/zero``, a pipe, a huge file):
  memory stays proportional to what such a file can hold;
- a regular file owned by someone other than root or the running user, or writable by group
  or others, is refused: anyone who can write it could make the tool trust their key or
  their mirror. Devices and pipes (``--config /dev/null``, ``--trusted-keys <(...)``) were
  named on the command line by whoever runs the tool, and are only bounded.
"""

from __future__ import annotations

import os
import stat

from tdxupdate import replay

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (tdxupdate.replay)
if TYPE_CHECKING:
    from pathlib import Path


class TooLarge(Exception):
    """The file holds more than the limit."""


def unsafe(st: os.stat_result) -> str | None:
    """Why a file with this status cannot be trusted, or None."""
    if not stat.S_ISREG(st.st_mode):
        return None
    if st.st_uid not in (0, os.geteuid()):
        return f"is owned by uid {st.st_uid}, not by root or the user running tdxupdate"
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return f"is writable by group or others (mode {stat.S_IMODE(st.st_mode):04o})"
    return None


def unsafe_dir(st: os.stat_result, *, any_owner: bool = False) -> str | None:
    """Why a directory with this status cannot hold tdxupdate's files, or None."""
    if not stat.S_ISDIR(st.st_mode):
        return "is not a directory"
    if not any_owner and st.st_uid not in (0, os.geteuid()):
        return f"is owned by uid {st.st_uid}, not by root or the user running tdxupdate"
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return f"is writable by group or others (mode {stat.S_IMODE(st.st_mode):04o})"
    return None


def read_capped(path: Path, limit: int) -> tuple[bytes, os.stat_result]:
    """At most ``limit`` bytes of ``path`` and its status; :class:`TooLarge` beyond that.

    Raises the usual OSErrors (``FileNotFoundError``, ``IsADirectoryError``, ...). What it read
    is an input of a listing (:func:`tdxupdate.replay.note`).
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY)
    except OSError as exc:
        replay.note_error(b"capped", path, limit, exc)
        raise
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            replay.poison("a directory given as a file")
            raise IsADirectoryError(21, "Is a directory", str(path))
        chunks: list[bytes] = []
        total = 0
        while True:
            chunk = os.read(fd, min(65536, limit + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
            if total > limit:  # read, not st_size: devices and pipes have none
                replay.poison("a file over its size limit")
                raise TooLarge(path)
    except OSError as exc:
        replay.note_error(b"capped", path, limit, exc)
        raise
    finally:
        os.close(fd)
    data = b"".join(chunks)
    replay.note(b"capped", path, limit, *replay.stat_parts(st), data)
    return data, st
