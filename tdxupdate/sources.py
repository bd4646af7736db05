"""Where the mapping file and the module images come from.

A repository has Intel's layout (reference-tool.md, image-formats.md §1):
``mapping_file.json`` at the root and ``joined_files/<M>.<m>/tdx_module_<M>.<m>.<u>.blob``.
This module serves a local directory (and ``file://`` URLs). Remote mirrors live in
:mod:`tdxupdate.remote`, which implements the same :class:`Repository` protocol and is imported
only when a URL asks for it, so local runs never import ``requests``.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import unquote, urlparse

from tdxupdate import catalog as _catalog
from tdxupdate import image as _image
from tdxupdate.errors import NotFound, UsageError, from_oserror
from tdxupdate.versions import Version

_BLOB_RE = re.compile(r"^tdx_module_(\d+\.\d+\.\d+)\.blob$")


@dataclass(frozen=True)
class ImageRef:
    """One image in a repository. ``location`` is what people are shown (a path or a URL)."""

    version: Version
    location: str


class Repository(Protocol):
    location: str

    def catalog(self) -> _catalog.Catalog: ...

    def images(self, catalog: _catalog.Catalog) -> dict[Version, ImageRef]: ...

    def head(self, ref: ImageRef) -> tuple[bytes, int]: ...

    def read(self, ref: ImageRef) -> bytes: ...


def blob_relpath(version: Version) -> str:
    return f"joined_files/{version.major}.{version.minor}/tdx_module_{version}.blob"


class LocalRepository:
    """A repository in a local directory."""

    def __init__(self, root: Path, mapping: Path | None = None):
        self.root = root
        self.location = str(root)
        self.mapping_path = mapping if mapping is not None else root / "mapping_file.json"
        if not root.is_dir():
            if root.exists():
                raise NotFound(f"{root}: not a directory", code="repository-not-found")
            raise NotFound(f"{root}: module repository does not exist", code="repository-not-found")

    def catalog(self) -> _catalog.Catalog:
        return _catalog.load_catalog(self.mapping_path)

    def images(self, catalog: _catalog.Catalog) -> dict[Version, ImageRef]:
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
        except FileNotFoundError:
            return found
        except OSError as exc:
            raise from_oserror(exc, joined) from exc
        for stream_dir in stream_dirs:
            try:
                names = sorted(os.listdir(stream_dir))
            except OSError as exc:
                raise from_oserror(exc, stream_dir) from exc
            for name in names:
                m = _BLOB_RE.match(name)
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
        return _image.read_head(ref.location)

    def read(self, ref: ImageRef) -> bytes:
        return self.read_path(Path(ref.location))

    @staticmethod
    def read_path(path: Path) -> bytes:
        return _image.read_image(path)


def is_url(text: str) -> bool:
    return re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", text) is not None


def local_path(text: str) -> Path | None:
    """``file://`` URLs and plain paths as a Path; None for other URLs."""
    if not is_url(text):
        return Path(text)
    try:
        parsed = urlparse(text)
    except ValueError as exc:  # "file://[::1/x" or "https://[::1/x"
        if text.split(":", 1)[0].lower() == "file":
            raise UsageError(f"{text}: malformed URL ({exc})") from None
        return None  # a web URL: reported, with its option, where it is opened
    if parsed.scheme == "file":
        return Path(unquote(parsed.path))
    return None


def open_repository(repo: str, mapping: str | None = None, **remote_options: Any) -> Repository:
    """A repository for ``--repo`` (directory or URL) and an optional ``--mapping`` override."""
    repo_path = local_path(repo)
    mapping_path = local_path(mapping) if mapping is not None else None
    if repo_path is not None and (mapping is None or mapping_path is not None):
        return LocalRepository(repo_path, mapping_path)
    try:
        from tdxupdate import remote
    except ImportError as exc:  # pragma: no cover - remote support is part of the package
        raise NotFound(
            f"{repo}: remote repositories are not supported", code="repository-not-found"
        ) from exc
    return remote.open_remote(repo, mapping, **remote_options)
