"""Where the mapping file and the module images come from.

A repository has Intel's layout (reference-tool.md, image-formats.md §1):
``mapping_file.json`` at the root and ``joined_files/<M>.<m>/tdx_module_<M>.<m>.<u>.blob``.

* :mod:`~tdxupdate.sources.local`: a directory (and ``file://`` URLs); the only place image
  and mapping files are read from disk.
* :mod:`~tdxupdate.sources.mirror`: a repository behind a URL, with its options
  (:class:`~tdxupdate.sources.mirror.MirrorOptions`) and its cache
  (:mod:`~tdxupdate.sources.cache`), over :mod:`~tdxupdate.sources.http`. Imported only when a
  URL asks for it, so local runs never import ``requests``.

Nothing here verifies an image: the caller judges the bytes (``imagecheck.verify_image``) and hands
its verdict back through :meth:`Repository.admit`, which is what a cache keeps.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tdxupdate.errors import NotFound
from tdxupdate.sources.local import LocalRepository
from tdxupdate.sources.refs import (
    BLOB_RE,
    MAPPING_NAME,
    ImageRef,
    Repository,
    blob_relpath,
    is_url,
    local_path,
)

if TYPE_CHECKING:  # pragma: no cover
    from tdxupdate.sources.mirror import MirrorOptions

#: The old private name (``tdxupdate.actions`` matches file names with it).
_BLOB_RE = BLOB_RE


def open_repository(
    repo: str, mapping: str | None = None, options: MirrorOptions | None = None
) -> Repository:
    """A repository for ``--repo`` (directory or URL) and an optional ``--mapping`` override.

    ``options`` apply when either is a URL other than ``file://`` (the defaults otherwise)."""
    repo_path = local_path(repo)
    mapping_path = local_path(mapping) if mapping is not None else None
    if repo_path is not None and (mapping is None or mapping_path is not None):
        return LocalRepository(repo_path, mapping_path)
    try:
        from tdxupdate.sources import mirror
    except ImportError as exc:  # pragma: no cover - remote support is part of the package
        raise NotFound(
            f"{repo}: remote repositories are not supported", code="repository-not-found"
        ) from exc
    return mirror.open_remote(repo, mapping, options)


__all__ = [
    "BLOB_RE",
    "MAPPING_NAME",
    "ImageRef",
    "LocalRepository",
    "Repository",
    "blob_relpath",
    "is_url",
    "local_path",
    "open_repository",
]
