"""A module repository in a local directory, and the only reads of image and mapping files.

:mod:`tdxupdate.image` and :mod:`tdxupdate.catalog` take bytes; the bounded reads that feed
them from a path live here (a listing reads thousands of heads; no file is read past the
largest image or mapping file, and only regular files are read as images).
"""

from __future__ import annotations

import errno
import functools
import os
import stat
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from tdxupdate import fsio, replay
from tdxupdate.catalog import MAX_MAPPING_SIZE, Catalog, parse_catalog, too_large
from tdxupdate.errors import InvalidImage, NotFound
from tdxupdate.image import HEAD_SIZE, MAX_IMAGE_SIZE
from tdxupdate.sources.refs import BLOB_RE, MAPPING_NAME, ImageRef, blob_relpath
from tdxupdate.versions import Version

if TYPE_CHECKING:  # pragma: no cover
    from tdxupdate.imagecheck import VerifiedImage


class LocalRepository:
    """A repository in a local directory."""

    def __init__(self, root: Path, mapping: Path | None = None):
        self.root = root
        self.location = str(root)
        self.mapping_path = mapping if mapping is not None else root / MAPPING_NAME
        is_dir = root.is_dir()
        replay.note(b"isdir", root, 0, int(is_dir))
        if not is_dir:
            replay.poison("no repository")
            if root.exists():
                raise NotFound(f"{root}: not a directory", code="repository-not-found")
            raise NotFound(f"{root}: module repository does not exist", code="repository-not-found")

    def catalog(self) -> Catalog:
        return load_catalog(self.mapping_path)

    def images(self, catalog: Catalog) -> dict[Version, ImageRef]:
        """Every ``tdx_module_<v>.blob`` under ``joined_files/``.

        Images in the wrong stream directory are still offered (the version in the file name
        is what the policy checks, and the sigstruct cross-checks it).
        """
        found: dict[Version, ImageRef] = {}
        # Strings, not Paths: a repository of thousands of images pays for every object.
        joined = str(self.root / "joined_files")  # as pathlib spells it ("./x" is "x")
        try:
            with os.scandir(joined) as entries:
                stream_dirs = sorted(e.path for e in entries if e.is_dir())
        except FileNotFoundError as exc:
            replay.note_error(b"subdirs", joined, 0, exc)
            return found
        except OSError as exc:
            raise fsio.os_error(exc, joined) from exc
        if replay.recording():  # names_parts sorts and encodes: only for a record
            streams = (os.path.basename(d) for d in stream_dirs)
            replay.note(b"subdirs", joined, 0, *replay.names_parts(streams))
        for stream_dir in stream_dirs:
            try:
                names = sorted(os.listdir(stream_dir))
            except OSError as exc:
                raise fsio.os_error(exc, stream_dir) from exc
            if replay.recording():
                replay.note(b"listdir", stream_dir, 0, *replay.names_parts(names))
            for name in names:
                m = BLOB_RE.match(name)
                if m is None:
                    continue
                version = Version.parse(m.group(1))
                path = os.path.join(stream_dir, name)
                # Prefer the file at its canonical place when a version appears twice.
                if version in found and path != str(self.root / blob_relpath(version)):
                    continue
                found[version] = ImageRef(version, path)
        return found

    def head(self, ref: ImageRef) -> tuple[bytes, int]:
        return read_head(ref.location)

    def read(self, ref: ImageRef) -> bytes:
        return self.read_path(Path(ref.location))

    def admit(self, ref: ImageRef, verified: VerifiedImage) -> bool:
        """Nothing to keep: the files are the repository."""
        return False

    @staticmethod
    def read_path(path: Path) -> bytes:
        return read_image(path)


# ---------------------------------------------------------------------------------------------
# Reading files: bounded, regular files only


#: An image file that cannot be read: a missing one is ``image-not-found`` (66).
_IMAGE_CASES: fsio.Cases = {
    **fsio.COMMON,
    **fsio.cases(
        (fsio.MISSING, functools.partial(NotFound, code="image-not-found"), "no such image")
    ),
}

#: A mapping file that cannot be opened: a missing one is ``mapping-not-found`` (66).
_MAPPING_CASES: fsio.Cases = {
    **fsio.COMMON,
    **fsio.cases(
        (
            (errno.ENOENT, errno.ENOTDIR),
            functools.partial(NotFound, code="mapping-not-found"),
            "no such file",
        )
    ),
}


def read_head(path: Path | str) -> tuple[bytes, int]:
    """The first ``HEAD_SIZE`` bytes of an image file and its size, for :func:`inspect`.

    Plain descriptor calls, no file object: a listing reads thousands of heads."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        replay.note_error(b"head", path, HEAD_SIZE, exc)
        raise fsio.os_error(exc, Path(path), _IMAGE_CASES) from exc
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            replay.note(b"head", path, HEAD_SIZE, b"N")
            raise InvalidImage(f"{path}: not a regular file")
        chunks = [os.read(fd, HEAD_SIZE)]
        got = len(chunks[0])
        while 0 < got < HEAD_SIZE and (more := os.read(fd, HEAD_SIZE - got)):
            chunks.append(more)
            got += len(more)
    except OSError as exc:
        replay.note_error(b"head", path, HEAD_SIZE, exc)
        raise fsio.os_error(exc, Path(path), _IMAGE_CASES) from exc
    finally:
        os.close(fd)
    head = b"".join(chunks) if len(chunks) > 1 else chunks[0]
    replay.note(b"head", path, HEAD_SIZE, b"D", st.st_size, head)
    return head, st.st_size


def read_image(path: Path, max_size: int = MAX_IMAGE_SIZE) -> bytes:
    """A whole image file; refuses a file larger than ``max_size`` before reading it."""
    try:
        with _open_regular(path) as f:
            size = os.fstat(f.fileno()).st_size
            if size > max_size:
                raise InvalidImage(
                    f"{path}: {size} bytes, larger than the largest image ({max_size} bytes)"
                )
            # Read one byte more than allowed: a file that grows (or a device that reports
            # size 0) is still caught without reading it all.
            data = f.read(max_size + 1)
    except OSError as exc:
        raise fsio.os_error(exc, path, _IMAGE_CASES) from exc
    if len(data) > max_size:
        raise InvalidImage(f"{path}: larger than the largest image ({max_size} bytes)")
    return data


def _open_regular(path: Path) -> BinaryIO:
    """Open for reading, refusing anything but a regular file (O_NONBLOCK: a FIFO must not
    block the open; it has no effect on regular files)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise InvalidImage(f"{path}: not a regular file")
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def load_catalog(path: Path | str) -> Catalog:
    """Read and validate the mapping file at ``path``.

    A missing file or a directory is ``mapping-not-found`` (66); permission problems are
    ``permission-denied`` (77); other read errors ``io-error`` (74). Pipes work
    (``--mapping <(curl ...)``); anything longer than :data:`MAX_MAPPING_SIZE` is refused.
    """
    source = str(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        replay.note_error(b"whole", path, MAX_MAPPING_SIZE, exc)
        raise fsio.os_error(exc, source, _MAPPING_CASES) from None
    chunks: list[bytes] = []
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            replay.note(b"whole", path, MAX_MAPPING_SIZE, b"I")
            raise NotFound(
                f"{source}: is a directory, not a mapping file", code="mapping-not-found"
            )
        total = 0
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
            total += len(chunk)
            if total > MAX_MAPPING_SIZE:  # read, not st_size: devices and pipes have none
                replay.poison("a mapping file over its size limit")
                raise too_large(source)
    except OSError as exc:
        replay.note_error(b"whole", path, MAX_MAPPING_SIZE, exc)
        raise fsio.os_error(exc, source) from None
    finally:
        os.close(fd)
    data = b"".join(chunks)
    replay.note(b"whole", path, MAX_MAPPING_SIZE, b"D", data)
    return parse_catalog(data, source)
