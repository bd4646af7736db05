"""The directories tdxupdate keeps its own files in, opened so that nobody else can steer them.

The state directory (lock, history), the cache directory (the remote index and the images
``--offline`` installs) and the metrics file's directory are where a local user would plant a
file or a symbolic link to make root overwrite something, or install something older
(issue 9, item 12). One rule for all of them:

- a missing directory is created component by component with an explicit mode (0755),
  whatever the umask;
- the directory is opened once (``O_DIRECTORY``) and refused, ``permission-denied`` (77), when
  it is not owned by root or the running user, or is writable by group or others (a sticky
  world-writable directory such as /tmp included). A symbolic link an administrator chose as
  the directory itself (``/var/lib/tdxupdate -> /srv/x``) is followed and its target checked;
- every file and subdirectory in it is then reached relative to that descriptor with
  ``O_NOFOLLOW``: a symbolic link *inside* is never followed, a file that is not a regular file
  is refused, and temporary files are created ``O_EXCL`` and renamed within the same
  directory. Files whose content is trusted (the cache index, cached images) must also be
  owned by root or the running user and not writable by group or others.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
from pathlib import Path
from types import TracebackType

from tdxupdate.errors import PermissionDenied
from tdxupdate.trustedfile import unsafe as _unsafe_file
from tdxupdate.trustedfile import unsafe_dir

__all__ = ["DIR_MODE", "SafeDir", "UnsafePath", "open_dir", "open_existing", "unsafe_dir"]

DIR_MODE = 0o755
_FILE_FLAGS = os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NOCTTY
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC


class UnsafePath(PermissionDenied):
    """A directory or file that someone other than root or this user could have put there."""


class SafeDir:
    """An open, checked directory; a context manager that closes it.

    Names given to its methods are single path components (no ``/``)."""

    def __init__(self, path: Path, fd: int, what: str, *, any_owner: bool = False) -> None:
        self.path = path
        self.fd = fd
        self.what = what
        self._any_owner = any_owner

    # --- life cycle ---------------------------------------------------------------------------

    def close(self) -> None:
        fd, self.fd = self.fd, -1
        if fd >= 0:
            os.close(fd)

    def __enter__(self) -> SafeDir:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<SafeDir {self.path} fd {self.fd}>"

    # --- files --------------------------------------------------------------------------------

    def open(self, name: str, flags: int, mode: int = 0o644, *, trusted: bool = False) -> int:
        """``os.open(name, flags | O_NOFOLLOW | O_CLOEXEC, mode)`` inside this directory.

        Raises :class:`UnsafePath` for a symbolic link, a file that is not a regular file and,
        with ``trusted``, one owned by someone else or writable by group or others; the usual
        OSErrors otherwise. A file this call creates gets exactly ``mode``.
        """
        _component(name)
        try:
            # O_NONBLOCK: a FIFO planted in place of a file must not hang the open.
            fd = os.open(name, flags | _FILE_FLAGS | os.O_NONBLOCK, mode, dir_fd=self.fd)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise self._refuse(name, "is a symbolic link; it is not followed") from exc
            raise
        try:
            st = os.fstat(fd)
            why = "is not a regular file" if not stat.S_ISREG(st.st_mode) else None
            if why is None and trusted:
                why = _unsafe_file(st)
            if why is not None:
                raise self._refuse(name, why)
            if not flags & os.O_NONBLOCK:
                fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def read(self, name: str, *, trusted: bool = False) -> bytes | None:
        """The whole content of ``name``, or None when it does not exist."""
        try:
            fd = self.open(name, os.O_RDONLY, trusted=trusted)
        except FileNotFoundError:
            return None
        try:
            chunks: list[bytes] = []
            while chunk := os.read(fd, 1 << 20):
                chunks.append(chunk)
            return b"".join(chunks)
        finally:
            os.close(fd)

    def mkstemp(self, prefix: str, suffix: str = "") -> tuple[int, str]:
        """A new empty file (mode 0600, ``O_EXCL``) in this directory: its fd and name."""
        import secrets  # writers only: a listing that only reads does not load it

        for _ in range(100):
            name = f"{prefix}{secrets.token_hex(6)}{suffix}"
            try:
                return self.open(name, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600), name
            except FileExistsError:
                continue
        raise FileExistsError(errno.EEXIST, "no unused temporary name", str(self.path / prefix))

    def replace(self, src: str, dst: str) -> None:
        """Rename ``src`` over ``dst`` within this directory (a link at ``dst`` is replaced)."""
        _component(src)
        _component(dst)
        os.replace(src, dst, src_dir_fd=self.fd, dst_dir_fd=self.fd)

    def unlink(self, name: str) -> None:
        """Remove ``name`` (never what a link points to); a missing file is not an error."""
        _component(name)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name, dir_fd=self.fd)

    def lstat(self, name: str) -> os.stat_result:
        _component(name)
        return os.stat(name, dir_fd=self.fd, follow_symlinks=False)

    def names(self) -> list[str]:
        return os.listdir(self.fd)

    def fsync(self) -> None:
        """Make the renames and creations in this directory durable."""
        os.fsync(self.fd)

    # --- subdirectories -----------------------------------------------------------------------

    def subdir(self, name: str, *, create: bool = True, mode: int = DIR_MODE) -> SafeDir:
        """The checked subdirectory ``name`` (created with ``mode`` when missing and ``create``).

        A symbolic link in its place is refused, never followed."""
        _component(name)
        path = self.path / name
        created = False
        if create:
            try:
                os.mkdir(name, mode, dir_fd=self.fd)
                created = True
            except FileExistsError:
                pass
        try:
            fd = os.open(name, _DIR_FLAGS | os.O_NOFOLLOW, dir_fd=self.fd)
        except OSError as exc:
            # O_DIRECTORY | O_NOFOLLOW on a link fails ENOTDIR, not ELOOP
            if exc.errno in (errno.ELOOP, errno.ENOTDIR) and _is_link(name, self.fd):
                raise UnsafePath(
                    f"{path}: refusing a directory in the {self.what}: it is a symbolic link; "
                    "it is not followed"
                ) from exc
            raise
        return _checked(path, fd, self.what, created=created, mode=mode, any_owner=self._any_owner)

    def _refuse(self, name: str, why: str) -> UnsafePath:
        return UnsafePath(f"{self.path / name}: refusing a file in the {self.what}: it {why}")


def _is_link(name: str, dir_fd: int) -> bool:
    try:
        return stat.S_ISLNK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
    except OSError:
        return False


def _component(name: str) -> None:
    if not name or "/" in name or name in (".", ".."):
        raise ValueError(f"not a file name: {name!r}")


def _checked(
    path: Path, fd: int, what: str, *, created: bool, mode: int, any_owner: bool
) -> SafeDir:
    """Wrap ``fd`` once it passes :func:`unsafe_dir`; closes it and raises otherwise."""
    try:
        if created:
            os.fchmod(fd, mode)  # mkdir's mode went through the umask
        why = unsafe_dir(os.fstat(fd), any_owner=any_owner)
        if why is not None:
            raise UnsafePath(
                f"{path}: refusing the {what}: it {why} (make it owned by root and not "
                "writable by group or others, or choose another directory)"
            )
    except BaseException:
        os.close(fd)
        raise
    return SafeDir(path, fd, what, any_owner=any_owner)


def open_dir(path: Path, what: str, *, mode: int = DIR_MODE, any_owner: bool = False) -> SafeDir:
    """Open the directory ``path``, creating it and any missing parents with ``mode``.

    Raises :class:`UnsafePath` (``permission-denied``) when it may not be used, the OSError
    of ``mkdir``/``open`` when it cannot be created or opened. ``any_owner`` accepts a
    directory owned by another user (still not one writable by group or others): the
    metrics directory belongs to the exporter.
    """
    path = Path(path)
    absolute = Path(os.path.abspath(path))
    missing: list[str] = []
    base = absolute
    while not os.path.isdir(base) and base != base.parent:
        missing.append(base.name)
        base = base.parent
    if not missing:
        fd = os.open(absolute, _DIR_FLAGS)
        return _checked(path, fd, what, created=False, mode=mode, any_owner=any_owner)
    fd = os.open(base, _DIR_FLAGS)
    try:
        for name in reversed(missing):
            created = False
            try:
                os.mkdir(name, mode, dir_fd=fd)
                created = True
            except FileExistsError:
                pass
            child = os.open(name, _DIR_FLAGS | os.O_NOFOLLOW, dir_fd=fd)
            if created:
                with contextlib.suppress(OSError):
                    os.fsync(fd)  # the new entry reaches the disk with its parent
            os.close(fd)
            fd = child
            if created:
                os.fchmod(fd, mode)
    except BaseException:
        os.close(fd)
        raise
    return _checked(path, fd, what, created=False, mode=mode, any_owner=any_owner)


def open_existing(path: Path, what: str, *, any_owner: bool = False) -> SafeDir | None:
    """Open the directory ``path`` for reading, or None when it does not exist."""
    path = Path(path)
    try:
        fd = os.open(path, _DIR_FLAGS)
    except FileNotFoundError:
        return None
    return _checked(path, fd, what, created=False, mode=DIR_MODE, any_owner=any_owner)
