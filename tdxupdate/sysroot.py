"""The one door to the host: every ``/sys`` and ``/proc`` access of host.py and uploader.py.

A :class:`Sysroot` resolves host paths under its root (``--sysroot``, cli-contract.md §1) and
performs the few operations the tool needs on them: capped reads, single writes, a streaming
writer for ``data``, stat, listing, existence and symlink resolution. Paths given to the
operations are the resolved ones (:meth:`Sysroot.path`), because every message names them.

All of them are built on five primitives (:meth:`~Sysroot.open_fd`, :meth:`~Sysroot.read_fd`,
:meth:`~Sysroot.write_fd`, :meth:`~Sysroot.close_fd`, :meth:`~Sysroot.stat`) plus the
directory queries. Tests subclass it to make one path fail the way the kernel would (EACCES,
ENXIO, EBUSY, short writes) instead of patching ``os`` for the whole process.
"""

from __future__ import annotations

import os
from pathlib import Path

from tdxupdate import replay

__all__ = ["ATTR_LIMIT", "Sysroot", "Writer"]

#: A sysfs attribute is at most a page.
ATTR_LIMIT = 4096
_CHUNK = 65536


class Writer:
    """An open file of the host that takes ``write`` calls (the fw_upload ``data`` stream)."""

    __slots__ = ("_fd", "_sysroot", "path")

    def __init__(self, sysroot: Sysroot, path: Path, fd: int) -> None:
        self._sysroot = sysroot
        self._fd = fd
        self.path = path

    def write(self, data: bytes | memoryview) -> int:
        """One ``write()``: the count the file took, which may be short."""
        return self._sysroot.write_fd(self._fd, data)

    def close(self) -> None:
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            self._sysroot.close_fd(fd)

    def __enter__(self) -> Writer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class Sysroot:
    """The root every ``/sys`` and ``/proc`` path is resolved under (``--sysroot``, contract §1)."""

    __slots__ = ("root",)

    def __init__(self, root: str | os.PathLike[str] = "/") -> None:
        self.root = Path(root)

    def path(self, path: str) -> Path:
        """``Sysroot("/tmp/h").path("/sys/x")`` -> ``/tmp/h/sys/x``; root ``/`` -> ``/sys/x``."""
        if not path.startswith("/"):
            raise ValueError(f"{path!r} is not an absolute path")
        return self.root / path.lstrip("/")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.root)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Sysroot) and other.root == self.root

    def __hash__(self) -> int:
        return hash(self.root)

    # ----------------------------------------------------------------- primitives

    def open_fd(self, path: Path, flags: int) -> int:
        """``os.open`` with O_CLOEXEC: the only place a host file is opened."""
        return os.open(path, flags | os.O_CLOEXEC)

    def read_fd(self, fd: int, size: int) -> bytes:
        return os.read(fd, size)

    def write_fd(self, fd: int, data: bytes | memoryview) -> int:
        return os.write(fd, data)

    def close_fd(self, fd: int) -> None:
        os.close(fd)

    def stat(self, path: Path) -> os.stat_result:
        """``os.stat`` (following symlinks); raises OSError."""
        try:
            st = os.stat(path)
        except OSError as exc:
            replay.note_error(b"stat", path, 0, exc)
            raise
        replay.note(b"stat", path, 0, *replay.stat_parts(st))
        return st

    def exists(self, path: Path) -> bool:
        # os.path (not Path.exists, which raises on EACCES in 3.11): a path we cannot see is
        # absent; a dangling symlink exists.
        found = os.path.lexists(path)
        replay.note(b"lexists", path, 0, int(found))
        return found

    def is_dir(self, path: Path) -> bool:
        found = os.path.isdir(path)
        replay.note(b"isdir", path, 0, int(found))
        return found

    def listdir(self, path: Path) -> list[str]:
        """The names in a directory, sorted; raises OSError."""
        try:
            names = sorted(os.listdir(path))
        except OSError as exc:
            replay.note_error(b"listdir", path, 0, exc)
            raise
        if replay.recording():  # names_parts sorts and encodes: only for a record
            replay.note(b"listdir", path, 0, *replay.names_parts(names))
        return names

    def realpath(self, path: Path) -> str:
        """Where ``path`` leads once every symlink is followed (``os.path.realpath``)."""
        found = os.path.realpath(path)
        replay.note(b"realpath", path, 0, os.fsencode(found))
        return found

    # ----------------------------------------------------------------- operations

    def read(self, path: Path, limit: int = ATTR_LIMIT) -> bytes:
        """At most ``limit`` bytes of ``path``, read until EOF or the cap; raises OSError."""
        try:
            fd = self.open_fd(path, os.O_RDONLY)
            try:
                chunks: list[bytes] = []
                total = 0
                while total < limit:
                    chunk = self.read_fd(fd, min(_CHUNK, limit - total))
                    if not chunk:
                        break
                    chunks.append(chunk)
                    total += len(chunk)
            finally:
                self.close_fd(fd)
        except OSError as exc:
            replay.note_error(b"read", path, limit, exc)
            raise
        data = b"".join(chunks)
        replay.note(b"read", path, limit, b"D", data)
        return data

    def read_once(self, path: Path, limit: int = ATTR_LIMIT) -> bytes:
        """One ``read()`` of at most ``limit`` bytes from a fresh open: a sysfs ``show()``.

        Re-opening for every read is as cheap as pread on a kept fd and cannot be served from
        a stale page cache (FUSE without direct_io keeps one per open file)."""
        try:
            fd = self.open_fd(path, os.O_RDONLY)
            try:
                data = self.read_fd(fd, limit)
            finally:
                self.close_fd(fd)
        except OSError as exc:
            replay.note_error(b"read1", path, limit, exc)
            raise
        replay.note(b"read1", path, limit, b"D", data)
        return data

    def write(self, path: Path, data: bytes) -> None:
        """One open and one ``write()`` of ``data`` (a sysfs ``store()``); raises OSError.

        No O_TRUNC: sysfs ignores it, and an emulator need not implement truncation."""
        fd = self.open_fd(path, os.O_WRONLY)
        try:
            self.write_fd(fd, data)
        finally:
            self.close_fd(fd)

    def open_writer(self, path: Path) -> Writer:
        """``path`` opened once for writing (no O_TRUNC, O_CREAT or O_APPEND); raises OSError.

        Use it as a context manager: leaving it closes the file."""
        return Writer(self, path, self.open_fd(path, os.O_WRONLY))
