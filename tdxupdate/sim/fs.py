"""Serve an emulated host over FUSE (mfusepy): the tree of :mod:`tdxupdate.sim.sysfs`.

The mount uses ``direct_io``, so every ``read()``/``write()`` reaches the model unbuffered: a
``write()`` on ``data`` returns the short count the model took (one page, as kernfs does,
kernel-abi.md §2 "Short writes"), and each read of ``status`` is a fresh ``show``. Errors from
the model (EBUSY, ENODEV, ENXIO, EINVAL, ...) become the caller's errno. ``default_permissions``
lets the kernel apply the modes for other users (files belong to whoever mounted; root-mounted
emulators are ``allow_other``); on top of that, as in kernfs, opening an attribute for reading
when it has no ``show`` (``cancel``) or for writing when it has no ``store`` fails with EACCES,
even for root, and writing ``data`` needs CAP_SYS_RAWIO (here: root or the mounting user).
"""

from __future__ import annotations

import errno
import itertools
import os
import stat
import threading
import time
from collections.abc import Callable
from typing import Any

import mfusepy

from tdxupdate.sim.kernel import SimKernel
from tdxupdate.sim.sysfs import (
    PAGE,
    Attribute,
    BinAttribute,
    Node,
    Symlink,
    build_tree,
    directories,
    errno_of,
    uid_is_privileged,
)


def _fail(code: int) -> mfusepy.FuseOSError:
    return mfusepy.FuseOSError(code)


class SimFilesystem(mfusepy.Operations):  # type: ignore[misc]  # mfusepy is untyped
    """mfusepy operations over one :class:`SimKernel`."""

    use_ns = True

    def __init__(self, kernel: SimKernel, *, on_ready: Callable[[], None] | None = None):
        self.kernel = kernel
        self.nodes: dict[str, Node] = build_tree(kernel)
        self.dirs = directories(self.nodes)
        self.on_ready = on_ready
        self.uid, self.gid = os.getuid(), os.getgid()
        self.time_ns = time.time_ns()
        self._handles = itertools.count(1)
        self._snapshots: dict[int, bytes] = {}
        self._lock = threading.Lock()

    # --- lifecycle ----------------------------------------------------------------------

    def init(self, path: str) -> None:
        if self.on_ready is not None:
            self.on_ready()

    def destroy(self, path: str) -> None:
        self.kernel.shutdown()

    # --- lookup -------------------------------------------------------------------------

    def _lookup(self, path: str) -> Node:
        node = self.nodes.get(path.strip("/"))
        if node is None:
            raise _fail(errno.EISDIR if path.strip("/") in self.dirs else errno.ENOENT)
        return node

    def getattr(self, path: str, fh: int | None = None) -> dict[str, Any]:
        rel = path.strip("/")
        base = {
            "st_uid": self.uid,
            "st_gid": self.gid,
            "st_atime": self.time_ns,
            "st_mtime": self.time_ns,
            "st_ctime": self.time_ns,
        }
        if rel in self.dirs:
            subdirs = sum(1 for e in self.dirs[rel] if f"{rel}/{e}".strip("/") in self.dirs)
            return {**base, "st_mode": stat.S_IFDIR | 0o755, "st_nlink": 2 + subdirs}
        node = self.nodes.get(rel)
        if node is None:
            raise _fail(errno.ENOENT)
        if isinstance(node, Symlink):
            return {
                **base,
                "st_mode": stat.S_IFLNK | 0o777,
                "st_nlink": 1,
                "st_size": len(node.target),
            }
        return {**base, "st_mode": stat.S_IFREG | node.mode, "st_nlink": 1, "st_size": node.size}

    def readdir(self, path: str, fh: int) -> list[str]:
        rel = path.strip("/")
        if rel not in self.dirs:
            raise _fail(errno.ENOTDIR)
        return [".", "..", *self.dirs[rel]]

    def readlink(self, path: str) -> str:
        node = self._lookup(path)
        if not isinstance(node, Symlink):
            raise _fail(errno.EINVAL)
        return node.target

    # --- files --------------------------------------------------------------------------

    def open(self, path: str, flags: int) -> int:
        node = self._lookup(path)
        access = flags & os.O_ACCMODE
        readable = node.show is not None if isinstance(node, Attribute) else None
        writable = node.store is not None if isinstance(node, Attribute) else None
        if isinstance(node, BinAttribute):
            readable, writable = node.read is not None, node.write is not None
        if access in (os.O_RDONLY, os.O_RDWR) and not readable:
            raise _fail(errno.EACCES)
        if access in (os.O_WRONLY, os.O_RDWR) and not writable:
            raise _fail(errno.EACCES)
        with self._lock:
            return next(self._handles)

    def release(self, path: str, fh: int) -> int:
        with self._lock:
            self._snapshots.pop(fh, None)
        return 0

    def _show(self, node: Attribute, offset: int, fh: int) -> bytes:
        with self._lock:
            snapshot = self._snapshots.get(fh) if offset else None
        if snapshot is None:
            assert node.show is not None
            snapshot = node.show()
            with self._lock:
                self._snapshots[fh] = snapshot
        return snapshot

    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        node = self._lookup(path)
        try:
            if isinstance(node, Attribute):
                return self._show(node, offset, fh)[offset : offset + size]
            if isinstance(node, BinAttribute):
                assert node.read is not None
                return node.read(offset, size)
        except OSError as exc:
            raise _fail(errno_of(exc)) from None
        raise _fail(errno.EINVAL)

    def write(self, path: str, data: bytes, offset: int, fh: int) -> int:
        node = self._lookup(path)
        try:
            if isinstance(node, Attribute):
                assert node.store is not None
                # kernfs hands a store() at most one page per write() and returns that count
                return node.store(bytes(data[:PAGE]))
            if isinstance(node, BinAttribute):
                assert node.write is not None
                if node.rawio and not uid_is_privileged(mfusepy.fuse_get_context()[0]):
                    raise _fail(errno.EPERM)
                return node.write(bytes(data), offset)
        except mfusepy.FuseOSError:
            raise
        except OSError as exc:
            raise _fail(errno_of(exc)) from None
        raise _fail(errno.EINVAL)

    def truncate(self, path: str, length: int, fh: int | None = None) -> int:
        # ``echo 1 > loading`` opens with O_TRUNC; sysfs ignores the truncation.
        self._lookup(path)
        return 0

    def chmod(self, path: str, mode: int) -> int:
        raise _fail(errno.EPERM)

    def chown(self, path: str, uid: int, gid: int) -> int:
        raise _fail(errno.EPERM)


def serve(
    kernel: SimKernel, mountpoint: str, *, on_ready: Callable[[], None] | None = None
) -> None:
    """Mount and serve until unmounted (or SIGTERM/SIGINT/SIGHUP); blocks."""
    ops = SimFilesystem(kernel, on_ready=on_ready)
    options: dict[str, Any] = {
        "foreground": True,
        "direct_io": True,
        "default_permissions": True,
        "fsname": "tdxsim",
        "subtype": "tdxsim",
        "attr_timeout": 0,
        "entry_timeout": 0,
        "negative_timeout": 0,
    }
    if os.geteuid() == 0:
        options["allow_other"] = True
    try:
        mfusepy.FUSE(ops, mountpoint, **options)
    finally:
        kernel.shutdown()
