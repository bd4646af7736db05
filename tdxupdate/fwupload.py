"""The fw_upload directory of one host, as a handle: :class:`UploadInterface` (kernel-abi.md §2).

:func:`tdxupdate.host.discover` finds it (``/sys/class/firmware/<name>/``, or the device's
``firmware/<name>`` in a plain tree) and :mod:`tdxupdate.uploader` drives it: ``loading``,
``data``, ``status``, ``error``, ``remaining_size``, every access through the host's
:class:`~tdxupdate.sysroot.Sysroot`. Also the guard that refuses to write an image into a
directory that is not on sysfs (or a FUSE emulator of it).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tdxupdate.errors import TdxError
from tdxupdate.sysroot import Sysroot, Writer

__all__ = [
    "ATTRIBUTES",
    "MOUNTINFO",
    "UPLOAD_FILESYSTEMS",
    "UploadInterface",
    "filesystem_type",
    "require_upload_filesystem",
]

#: The attributes the driver uses (``cancel`` is not: ``-1`` to ``loading`` aborts).
ATTRIBUTES = ("loading", "data", "status", "error", "remaining_size")

#: a sysfs show() returns everything in one read of a page
_ATTR_READ_SIZE = 4096
#: mountinfo of a host with thousands of mounts stays far below this
_MOUNTINFO_LIMIT = 16 * 1024 * 1024
MOUNTINFO = Path("/proc/self/mountinfo")


@dataclass(frozen=True)
class UploadInterface:
    """One fw_upload directory (``dir``, sysroot-prefixed) and the sysroot that reaches it."""

    dir: Path
    firmware_name: str | None = None
    sysroot: Sysroot = field(default_factory=Sysroot)

    @property
    def loading(self) -> Path:
        return self.dir / "loading"

    @property
    def data(self) -> Path:
        return self.dir / "data"

    @property
    def status(self) -> Path:
        return self.dir / "status"

    @property
    def error(self) -> Path:
        return self.dir / "error"

    @property
    def remaining_size(self) -> Path:
        return self.dir / "remaining_size"

    def read(self, path: Path) -> str:
        """One attribute as stripped ASCII, from a fresh open; raises OSError."""
        return self.sysroot.read_once(path, _ATTR_READ_SIZE).decode("ascii", "replace").strip()

    def write(self, path: Path, value: str) -> None:
        """``echo -n value > path``; raises OSError."""
        self.sysroot.write(path, value.encode("ascii"))

    def open_data(self) -> Writer:
        """``data`` opened once for the whole image (each open starts again at offset 0)."""
        return self.sysroot.open_writer(self.data)

    def read_remaining(self) -> int | None:
        """``remaining_size``; None when it cannot be read (informational, absent on some
        emulations)."""
        try:
            return int(self.read(self.remaining_size))
        except (OSError, ValueError):
            return None

    def __fspath__(self) -> str:
        return os.fspath(self.dir)

    def __str__(self) -> str:
        return str(self.dir)


#: Filesystems an upload interface can live on: the kernel's sysfs, and FUSE (emulators of
#: it, ours or anyone's). A regular disk filesystem means a plain tree of files: writing an
#: image there updates nothing, and reading "idle" back from it proves nothing.
UPLOAD_FILESYSTEMS = ("sysfs",)


def _unescape_mount(text: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), text)


def _mount_points(text: str) -> Iterator[tuple[str, str]]:
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        fields = left.split()
        if not sep or len(fields) < 5 or not right.split():
            continue
        yield _unescape_mount(fields[4]), right.split()[0]


def filesystem_type(
    path: Path, mountinfo: Path = MOUNTINFO, sysroot: Sysroot | None = None
) -> str | None:
    """The type of the filesystem holding ``path`` (from mountinfo); None when unknown.

    ``mountinfo`` is this process's own, not the sysroot's: ``path`` is already resolved."""
    door = sysroot if sysroot is not None else Sysroot()
    target = door.realpath(path)
    try:
        text = door.read(mountinfo, _MOUNTINFO_LIMIT).decode("utf-8", "replace")
    except OSError:
        return None
    best: tuple[int, str] | None = None
    for point, fstype in _mount_points(text):
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and (best is None or len(point) >= best[0]):
            best = (len(point), fstype)
    return best[1] if best is not None else None


def require_upload_filesystem(target: UploadInterface | Path) -> None:
    """Refuse to write an image into an upload interface that is not the kernel's (or an
    emulator's): a plain-file ``--sysroot`` would take the image, say nothing, and be
    recorded as a success. Symlinks out of the interface directory are refused too."""
    iface = target if isinstance(target, UploadInterface) else UploadInterface(Path(target))
    upload_dir, door = iface.dir, iface.sysroot
    fstype = filesystem_type(upload_dir, sysroot=door)
    if fstype is None or not (fstype in UPLOAD_FILESYSTEMS or fstype.split(".")[0] == "fuse"):
        raise TdxError(
            f"{upload_dir}: not an upload interface: it is on a {fstype or 'unknown'} "
            "filesystem, not sysfs (or a FUSE emulator of it); refusing to write an image "
            "into plain files (read-only actions and --dry-run work on such trees)",
            code="no-upload-interface",
        )
    real_dir = door.realpath(upload_dir)
    for name in ("loading", "data", "status", "error"):
        entry = door.realpath(upload_dir / name)
        if os.path.dirname(entry) != real_dir:
            raise TdxError(
                f"{upload_dir / name}: points out of the upload interface (to {entry}); "
                "refusing to write",
                code="no-upload-interface",
            )
