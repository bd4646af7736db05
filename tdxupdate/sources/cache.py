"""The download cache of remote module repositories (issue 5; cli-contract.md §1 ``--cache-dir``).

Layout under the cache root (``<--cache-dir>/remote``)::

    index/<sha256 of the URL>.json   what the mirror said about one URL: ETag, Last-Modified,
                                     size, the digests of what is stored, when it was fetched
                                     and when the mirror last confirmed it
    mappings/sha256/<hex>            mapping files, by content
    heads/sha256/<hex>               the first HEAD_SIZE bytes of images (all --list needs)
    images/sha256/<hex>              whole images that passed the integrity checks

Rules that keep a bad byte out:

* Content files are named by the SHA-256 of their bytes and checked against that name every
  time they are read; a file that no longer matches is deleted and reported missing, so the
  caller fetches it again.
* Every file (content and index) is written to a dot-named temporary file in its final
  directory, fsynced, and renamed into place: a killed or failed write leaves at worst a
  ``.tmp-*`` file, which never looks like a digest and is swept after :data:`STALE_TEMP_AGE`.
* What enters the store is decided by the caller (:mod:`tdxupdate.sources.mirror` admits only
  bodies of the announced length, and only images whose container, checksum, SEAMHASH and
  signature checks passed in the verdict its own caller handed back, image-formats.md
  §4.1–§4.3); this module verifies nothing and only guarantees that what comes back out is
  byte-for-byte what went in.
* An unreadable or inconsistent index entry is treated as absent: the cost is one download.
* The cache directory and everything in it go through :mod:`tdxupdate.safedir` (issue 9, item
  12): a directory others can write is refused, a symbolic link inside is never followed, and
  a file not owned by root (or this user), or writable by others, is deleted, never served.

Nothing here imports ``requests``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from tdxupdate import fsio, safedir
from tdxupdate.safedir import SafeDir

#: Kinds of content in the store, each its own directory.
KINDS = ("mappings", "heads", "images")
#: A temporary file older than this is left over from a killed run and is removed.
STALE_TEMP_AGE = 3600.0
_TEMP_PREFIX = ".tmp-"
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
INDEX_FORMAT = 1


@dataclass(frozen=True)
class Entry:
    """What is known about one URL."""

    url: str
    etag: str | None = None
    last_modified: str | None = None
    #: the size of the whole resource (images: the image size; mappings: the file size)
    size: int | None = None
    #: SHA-256 of the whole body in the store (``mappings`` or ``images``), None when not stored
    sha256: str | None = None
    #: SHA-256 of the stored head (``heads``), images only
    head_sha256: str | None = None
    #: when the stored content was downloaded (seconds since the epoch)
    fetched_at: float = 0.0
    #: when the mirror last confirmed the stored content (a 200 or a 304)
    validated_at: float = 0.0

    def validators(self) -> dict[str, str]:
        """Headers for a conditional request (RFC 9110 §13): 304 when the content is unchanged."""
        headers: dict[str, str] = {}
        if self.etag:
            headers["If-None-Match"] = self.etag
        if self.last_modified:
            headers["If-Modified-Since"] = self.last_modified
        return headers

    def to_json(self) -> dict[str, Any]:
        return {"format": INDEX_FORMAT, **asdict(self)}

    @classmethod
    def from_json(cls, doc: Any) -> Entry:
        """Raises ValueError on anything but a well-formed entry."""
        if not isinstance(doc, dict) or doc.get("format") != INDEX_FORMAT:
            raise ValueError("not an index entry")
        url = doc.get("url")
        if not isinstance(url, str):
            raise ValueError("url missing")
        fields: dict[str, Any] = {}
        for name, kind in (
            ("etag", str),
            ("last_modified", str),
            ("size", int),
            ("sha256", str),
            ("head_sha256", str),
        ):
            value = doc.get(name)
            if value is not None and (not isinstance(value, kind) or isinstance(value, bool)):
                raise ValueError(f"{name}: wrong type")
            fields[name] = value
        for name in ("sha256", "head_sha256"):
            value = doc.get(name)
            if value is not None and not _HEX64.match(value):
                raise ValueError(f"{name}: not a SHA-256 digest")
        for name in ("fetched_at", "validated_at"):
            value = doc.get(name, 0.0)
            if not isinstance(value, int | float) or isinstance(value, bool):
                raise ValueError(f"{name}: wrong type")
            fields[name] = float(value)
        return cls(url, **fields)


def sha256_hex(data: bytes | bytearray | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


class Cache:
    """A content-addressed store plus a per-URL index under ``root``.

    Every directory and file is reached through :mod:`tdxupdate.safedir`: the cache directory
    is created 0755 and refused (``permission-denied``) when someone else could write it, no
    symbolic link inside it is followed, and a stored file that is not a regular file owned by
    root (or this user) and writable by nobody else is treated as corrupt: deleted, never used.
    """

    def __init__(self, root: Path, *, clock: Callable[[], float] = time.time):
        self.root = root
        self.clock = clock
        with self._open() as top:
            for sub in ("index", *KINDS):
                with self._sub(top, sub) as child:
                    if sub != "index":
                        self._sub(child, "sha256").close()
        self._sweep()

    # --- directories --------------------------------------------------------------------------

    def _open(self) -> SafeDir:
        try:
            return safedir.open_dir(self.root, "cache directory")
        except OSError as exc:
            raise fsio.os_error(exc, str(self.root)) from exc

    @staticmethod
    def _sub(parent: SafeDir, name: str) -> SafeDir:
        try:
            return parent.subdir(name)
        except OSError as exc:
            raise fsio.os_error(exc, str(parent.path / name)) from exc

    def _dir(self, kind: str) -> SafeDir:
        """The open directory of ``kind`` (``index`` or one of :data:`KINDS`)."""
        with self._open() as top:
            if kind == "index":
                return self._sub(top, "index")
            with self._sub(top, kind) as middle:
                return self._sub(middle, "sha256")

    # --- content ----------------------------------------------------------------------------

    def path(self, kind: str, digest: str) -> Path:
        if kind not in KINDS or not _HEX64.match(digest):
            raise ValueError(f"bad cache key {kind}/{digest}")
        return self.root / kind / "sha256" / digest

    def load(self, kind: str, digest: str | None) -> bytes | None:
        """The stored bytes named ``digest``, or None when absent or corrupt (then deleted)."""
        if digest is None:
            return None
        path = self.path(kind, digest)
        with self._dir(kind) as directory:
            data = _read_trusted(directory, digest, path)
            if data is not None and sha256_hex(data) == digest:
                return data
            if data is not None:
                # Bit rot, a truncating disk-full, a hand edit: never serve it, fetch it again.
                with contextlib.suppress(OSError):
                    directory.unlink(digest)
        return None

    def store(self, kind: str, data: bytes | bytearray | memoryview) -> str:
        """Store ``data`` under its digest (atomically) and return the digest."""
        with self.staging(kind) as staged:
            staged.write(data)
            return staged.commit()

    def begin(self, kind: str) -> Staged:
        """A temporary file in the ``kind`` store: the caller commits or discards it."""
        if kind not in KINDS:
            raise ValueError(f"bad cache kind {kind}")
        directory = self._dir(kind)
        try:
            fd, name = directory.mkstemp(_TEMP_PREFIX)
        except OSError as exc:
            directory.close()
            raise fsio.os_error(exc, str(directory.path)) from exc
        except BaseException:
            directory.close()
            raise
        return Staged(fd, name, directory)

    @contextlib.contextmanager
    def staging(self, kind: str) -> Iterator[Staged]:
        """:meth:`begin` as a context: the temporary file is removed on exit unless committed."""
        staged = self.begin(kind)
        try:
            yield staged
        finally:
            staged.discard()

    # --- index ------------------------------------------------------------------------------

    @staticmethod
    def _index_name(url: str) -> str:
        return f"{sha256_hex(url.encode())}.json"

    def _index_path(self, url: str) -> Path:
        return self.root / "index" / self._index_name(url)

    def entry(self, url: str) -> Entry | None:
        name = self._index_name(url)
        with self._dir("index") as directory:
            raw = _read_trusted(directory, name, self._index_path(url))
            if raw is None:
                return None
            try:
                found = Entry.from_json(json.loads(raw))
            except (ValueError, UnicodeDecodeError):
                found = None
            if found is None or found.url != url:
                with contextlib.suppress(OSError):
                    directory.unlink(name)
                return None
            return found

    def put_entry(self, entry: Entry) -> None:
        data = json.dumps(entry.to_json(), indent=1, sort_keys=True).encode() + b"\n"
        with self._dir("index") as directory:
            atomic_write(directory, self._index_name(entry.url), data)

    def drop_entry(self, url: str) -> None:
        with self._dir("index") as directory:
            try:
                directory.unlink(self._index_name(url))
            except OSError as exc:
                raise fsio.os_error(exc, str(self._index_path(url))) from exc

    def touch(self, entry: Entry) -> Entry:
        """Record that the mirror just confirmed ``entry`` (a 304)."""
        updated = replace(entry, validated_at=self.clock())
        self.put_entry(updated)
        return updated

    # --- housekeeping -----------------------------------------------------------------------

    def _sweep(self) -> None:
        """Remove temporary files left by killed runs (old enough not to be a live download)."""
        cutoff = self.clock() - STALE_TEMP_AGE
        for kind in ("index", *KINDS):
            with self._dir(kind) as directory, contextlib.suppress(OSError):
                for name in directory.names():
                    if name.startswith(_TEMP_PREFIX):
                        with contextlib.suppress(OSError):
                            if directory.lstat(name).st_mtime < cutoff:
                                directory.unlink(name)


def _read_trusted(directory: SafeDir, name: str, path: Path) -> bytes | None:
    """``name``'s bytes, or None when it is absent or not a file this cache could have written
    (a symbolic link, not a regular file, someone else's, writable by others): such a file is
    removed, never used."""
    try:
        return directory.read(name, trusted=True)
    except safedir.UnsafePath:
        with contextlib.suppress(OSError):
            directory.unlink(name)
        return None
    except OSError as exc:
        raise fsio.os_error(exc, str(path)) from exc


class Staged:
    """A temporary file being filled; :meth:`commit` renames it to its digest."""

    def __init__(self, fd: int, name: str, directory: SafeDir):
        self._file = os.fdopen(fd, "wb")
        self._hash = hashlib.sha256()
        self._name = name
        self._dir = directory
        self.path = directory.path / name
        self.directory = directory.path
        self.size = 0
        self.committed: Path | None = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        try:
            self._file.write(data)
        except OSError as exc:
            raise fsio.os_error(exc, str(self.path)) from exc
        self._hash.update(data)
        self.size += len(data)

    @property
    def digest(self) -> str:
        return self._hash.hexdigest()

    def commit(self) -> str:
        digest = self.digest
        final = self.directory / digest
        try:
            self._file.flush()
            os.fchmod(self._file.fileno(), 0o644)
            os.fsync(self._file.fileno())
            self._file.close()
            self._dir.replace(self._name, digest)
            self._dir.fsync()
        except OSError as exc:
            raise fsio.os_error(exc, str(final)) from exc
        self.committed = final
        self._dir.close()
        return digest

    def discard(self) -> None:
        if self.committed is not None:
            return
        with contextlib.suppress(OSError):
            self._file.close()
        with contextlib.suppress(OSError):
            self._dir.unlink(self._name)
        self._dir.close()


def atomic_write(directory: SafeDir, name: str, data: bytes) -> None:
    """Write ``data`` as ``name`` in ``directory`` so that readers see the old file or the
    new one, never a part (a symbolic link in its place is replaced, not followed)."""
    fsio.write_atomically(directory, name, data, prefix=_TEMP_PREFIX, suffix="")
