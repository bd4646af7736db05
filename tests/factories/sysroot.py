"""A :class:`~tdxupdate.sysroot.Sysroot` that fails the way a kernel would, on chosen paths.

Tests run as root, which never gets EACCES from a plain file and never gets ENXIO or EBUSY
from one at all. ``FaultySysroot(root)`` reads and writes the plain tree under ``root`` and
raises, for the rules added with :meth:`FaultySysroot.fail`, the OSError the kernel would:

    sysroot = FaultySysroot(root).fail(f"{T}/version", errno.ENXIO)        # every read
    sysroot.fail("/sys/class/firmware/tdx_module/loading", errno.EBUSY, op="write", times=1)
    sysroot.short_writes("/sys/class/firmware/tdx_module/data", 100)       # at most 100 a write
    sysroot.hang("/sys/class/firmware/tdx_module/status", until=event)     # a read blocks

Paths are in-sysroot (``/sys/...``) or already resolved under ``root``. Operations: ``open``
(any open), ``read``, ``write``, ``stat``. Nothing is patched, so nothing leaks to other code.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path

from tdxupdate.sysroot import Sysroot

__all__ = ["FaultySysroot", "Rule"]

OPERATIONS = ("open", "read", "write", "stat")


@dataclass
class Rule:
    """Fail ``op`` on ``path`` with ``errno``, ``times`` more times (None: always)."""

    path: str
    op: str
    errno: int
    times: int | None = None

    def take(self) -> bool:
        if self.times is None:
            return True
        if self.times <= 0:
            return False
        self.times -= 1
        return True


class FaultySysroot(Sysroot):
    """A Sysroot over a plain tree whose chosen paths fail; see the module docstring."""

    __slots__ = ("_fds", "_hangs", "_limits", "_rules", "calls")

    def __init__(self, root: str | os.PathLike[str] = "/") -> None:
        super().__init__(root)
        self._rules: list[Rule] = []
        self._limits: dict[str, int] = {}
        self._hangs: dict[str, threading.Event] = {}
        self._fds: dict[int, str] = {}
        #: (operation, resolved path) of every primitive call, in order
        self.calls: list[tuple[str, str]] = []

    # ---- configuration
    def _key(self, path: str | os.PathLike[str]) -> str:
        text = os.fspath(path)
        if Path(text).is_relative_to(self.root):
            return text
        return os.fspath(self.path(text))

    def fail(
        self,
        path: str | os.PathLike[str],
        err: int,
        *,
        op: str = "read",
        times: int | None = None,
    ) -> FaultySysroot:
        """``op`` on ``path`` raises ``OSError(err)`` (``times`` times, or always)."""
        if op not in OPERATIONS:
            raise ValueError(f"unknown operation {op!r}; expected one of {OPERATIONS}")
        self._rules.append(Rule(self._key(path), op, err, times))
        return self

    def short_writes(self, path: str | os.PathLike[str], limit: int) -> FaultySysroot:
        """Each ``write()`` to ``path`` takes at most ``limit`` bytes (0: none at all)."""
        self._limits[self._key(path)] = limit
        return self

    def hang(self, path: str | os.PathLike[str], until: threading.Event) -> FaultySysroot:
        """A read of ``path`` blocks until ``until`` is set (a hung driver)."""
        self._hangs[self._key(path)] = until
        return self

    def _check(self, op: str, path: str) -> None:
        self.calls.append((op, path))
        for rule in self._rules:
            if rule.path == path and rule.op == op and rule.take():
                raise OSError(rule.errno, os.strerror(rule.errno), path)

    # ---- the primitives
    def open_fd(self, path: Path, flags: int) -> int:
        key = os.fspath(path)
        self._check("open", key)
        fd = super().open_fd(path, flags)
        self._fds[fd] = key
        return fd

    def close_fd(self, fd: int) -> None:
        self._fds.pop(fd, None)
        super().close_fd(fd)

    def read_fd(self, fd: int, size: int) -> bytes:
        key = self._fds.get(fd, "")
        self._check("read", key)
        hang = self._hangs.get(key)
        if hang is not None:
            hang.wait()
        return super().read_fd(fd, size)

    def write_fd(self, fd: int, data: bytes | memoryview) -> int:
        key = self._fds.get(fd, "")
        self._check("write", key)
        limit = self._limits.get(key)
        if limit is not None:
            if limit == 0:
                return 0
            data = memoryview(data)[:limit]
        return super().write_fd(fd, data)

    def stat(self, path: Path) -> os.stat_result:
        self._check("stat", os.fspath(path))
        return super().stat(path)
