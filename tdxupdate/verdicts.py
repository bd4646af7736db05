"""Verdicts kept across runs, so a listing does not redo work whose answer it already knows
(issue 14).

Two kinds of verdict are kept, both positive only ("these exact bytes passed"):

* ``mapping``: a mapping file's bytes passed every stage of :func:`tdxupdate.catalog.parse_catalog`
  (bounds, strict JSON, header, the JSON Schema, the semantic checks);
* ``signature``: a sigstruct's RSA-3072 signature verifies under the modulus it carries.

A failure is never kept: it is recomputed each time, with its message.

Rules, because a verdict store is a security-relevant input:

* It is used only while listing (``--list``, ``--status``; :func:`listing`). ``--update`` never
  opens it: the chosen image is verified in full every time
  (:class:`~tdxupdate.imagecheck.VerifiedImage`), and its listing stage computes every signature.
* Each entry is the SHA-256 of the verdict's kind, the tool version, the digest of the mapping
  schema and the SHA-256 of the exact bytes judged (the mapping file; the sigstruct, its modulus
  and its signature). Different bytes, another tool version or another schema never meet an
  entry; there is nothing in an entry to parse or trust but its presence.
* The store lives in the cache directory (``<cache-dir>/verdicts/``) and is reached through
  :mod:`tdxupdate.safedir`: a directory others can write is refused, a symbolic link is never
  followed, a file not owned by root (or this user) or writable by others is ignored. A file that
  is unreadable, unsafe, of the wrong size or from another tool version is a miss, never an error.
* It is written atomically (a temporary file renamed over the old one), merged with what another
  run wrote meanwhile, and bounded to :data:`MAX_ENTRIES` entries (the oldest are dropped).
* Where there is no usable cache directory (none configured and no home, read-only, unsafe),
  everything works uncached.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from tdxupdate import __version__

if TYPE_CHECKING:
    from tdxupdate.safedir import SafeDir

#: Most entries kept (32 bytes each: 2 MiB at most), some 30 times the 2,000-release listing.
MAX_ENTRIES = 1 << 16
DIR_NAME = "verdicts"
FILE_NAME = "verdicts-v1"
_MAGIC = b"tdxupdate verdicts 1\n"
_ENTRY = 32
_HEADER = len(_MAGIC) + _ENTRY  # magic, then the digest of the context (tool and schema)


@functools.cache
def _schema_digest() -> bytes:
    from tdxupdate.releases import package_data

    return hashlib.sha256(package_data("schemas/mapping.schema.json")).digest()


@functools.cache
def context() -> bytes:
    """What every entry is bound to besides the bytes it judged: the tool version and the
    mapping schema."""
    return hashlib.sha256(b"tdxupdate\0" + __version__.encode() + b"\0" + _schema_digest()).digest()


def entry_key(kind: str, *judged: bytes) -> bytes:
    """The entry for a verdict of ``kind`` on the bytes ``judged`` (each part length-prefixed)."""
    inner = hashlib.sha256()
    for part in judged:
        inner.update(len(part).to_bytes(8, "big"))
        inner.update(part)
    return hashlib.sha256(kind.encode() + b"\0" + context() + inner.digest()).digest()


class VerdictStore:
    """The verdict file of one cache directory, loaded on first use, written by :meth:`flush`."""

    def __init__(self, cache_dir: Path) -> None:
        self.cache_dir = Path(cache_dir)
        self._known: dict[bytes, None] | None = None  # ordered: oldest first
        self._new: dict[bytes, None] = {}
        #: lookups answered from the store and not, for tests and ``-vv``
        self.hits = 0
        self.misses = 0

    # --- reading ----------------------------------------------------------------------------

    def _load(self) -> dict[bytes, None]:
        if self._known is None:
            self._known = dict.fromkeys(_read_entries(self.cache_dir))
        return self._known

    def known(self, kind: str, *judged: bytes) -> bool:
        key = entry_key(kind, *judged)
        found = key in self._new or key in self._load()
        if found:
            self.hits += 1
        else:
            self.misses += 1
        return found

    # --- writing ----------------------------------------------------------------------------

    def add(self, kind: str, *judged: bytes) -> None:
        key = entry_key(kind, *judged)
        if key not in self._load():
            self._new[key] = None

    def flush(self) -> None:
        """Write the new entries (merged with the file as it is now); never raises."""
        if not self._new:
            return
        with contextlib.suppress(Exception):
            merged = dict.fromkeys(_read_entries(self.cache_dir))
            merged.update(self._new)
            keys = list(merged)[-MAX_ENTRIES:]
            _write_entries(self.cache_dir, keys)
            self._known = dict.fromkeys(keys)
        self._new = {}


def _open_dir(cache_dir: Path, *, create: bool) -> SafeDir | None:
    from tdxupdate import safedir

    if create:
        top = safedir.open_dir(cache_dir, "cache directory")
    else:
        found = safedir.open_existing(cache_dir, "cache directory")
        if found is None:
            return None
        top = found
    with top:
        try:
            return top.subdir(DIR_NAME, create=create)
        except FileNotFoundError:
            return None


def _read_entries(cache_dir: Path) -> list[bytes]:
    """The entries on disk, oldest first; [] for anything but a sound file of this context."""
    try:
        directory = _open_dir(cache_dir, create=False)
        if directory is None:
            return []
        with directory:
            data = directory.read(FILE_NAME, trusted=True)
    except Exception:  # an OSError, or the safe opener's refusal (a TdxError): a miss
        return []
    if data is None or not data.startswith(_MAGIC) or len(data) < _HEADER:
        return []
    if data[len(_MAGIC) : _HEADER] != context():
        return []  # another tool version or schema: nothing here applies
    body = data[_HEADER:]
    if len(body) % _ENTRY or len(body) // _ENTRY > MAX_ENTRIES:
        return []
    return [body[i : i + _ENTRY] for i in range(0, len(body), _ENTRY)]


def _write_entries(cache_dir: Path, keys: list[bytes]) -> None:
    from tdxupdate.sources.cache import atomic_write

    directory = _open_dir(cache_dir, create=True)
    assert directory is not None  # created
    with directory:
        atomic_write(directory, FILE_NAME, _MAGIC + context() + b"".join(keys))


# --- the store of this process ----------------------------------------------------------------

_active: VerdictStore | None = None


def current() -> VerdictStore | None:
    """The store a listing may consult, or None (everything computed)."""
    return _active


def default_dir() -> Path:
    """The cache directory used without ``--cache-dir`` (the test suite points it elsewhere)."""
    from tdxupdate.settings import default_cache_dir

    return default_cache_dir()


@contextlib.contextmanager
def listing(cache_dir: Path | None) -> Iterator[VerdictStore | None]:
    """Use the verdicts of ``cache_dir`` (default: the usual cache directory) inside the block,
    and write what it learnt at the end. Only ``--list`` and ``--status`` enter it."""
    global _active
    if cache_dir is None:
        try:
            cache_dir = default_dir()
        except (KeyError, RuntimeError):  # no home directory: uncached
            yield None
            return
    previous = _active
    store = VerdictStore(cache_dir)
    _active = store
    try:
        yield store
    finally:
        _active = previous
        store.flush()
