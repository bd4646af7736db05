"""What every repository shares: the layout, the image reference and the protocol.

A repository has Intel's layout (reference-tool.md, image-formats.md §1):
``mapping_file.json`` at the root and ``joined_files/<M>.<m>/tdx_module_<M>.<m>.<u>.blob``.
This module imports nothing of the other sources modules, so each of them can use it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol
from urllib.parse import unquote, urlparse

from tdxupdate.errors import UsageError
from tdxupdate.versions import Version

if TYPE_CHECKING:  # pragma: no cover
    from tdxupdate.catalog import Catalog
    from tdxupdate.imagecheck import VerifiedImage

BLOB_RE = re.compile(r"^tdx_module_(\d+\.\d+\.\d+)\.blob$")
MAPPING_NAME = "mapping_file.json"


@dataclass(frozen=True)
class ImageRef:
    """One image in a repository. ``location`` is what people are shown (a path or a URL)."""

    version: Version
    location: str


class Repository(Protocol):
    location: str

    def catalog(self) -> Catalog: ...

    def images(self, catalog: Catalog) -> dict[Version, ImageRef]: ...

    def head(self, ref: ImageRef) -> tuple[bytes, int]: ...

    def read(self, ref: ImageRef) -> bytes: ...

    def admit(self, ref: ImageRef, verified: VerifiedImage) -> bool:
        """Offer the caller's verdict on what :meth:`read` returned for ``ref``: a repository
        with a cache keeps the bytes when they are the ones it served and their integrity
        checks passed. Returns whether they were kept."""
        ...


def blob_relpath(version: Version) -> str:
    return f"joined_files/{version.major}.{version.minor}/tdx_module_{version}.blob"


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
        if parsed.netloc not in ("", "localhost"):
            # file://host/path names a file on another machine (RFC 8089); reading the local
            # /path instead would load a different repository than the one named.
            raise UsageError(f"{text}: a file URL names this host only (file:///path)")
        return Path(unquote(parsed.path))
    return None
