"""Module repositories behind a URL: an https mirror with a verified, content-addressed cache.

Implements issue 5 and the remote half of cli-contract.md §1 (``--repo URL``, ``--mapping URL``,
``--cache-dir``, ``--offline``, ``--ca-bundle``, ``--allow-insecure-http``) and §2
(``network-error`` 74, ``mapping-not-found``/``image-not-found`` 66). A mirror has Intel's layout
(image-formats.md §1): ``mapping_file.json`` and ``joined_files/<M>.<m>/tdx_module_<v>.blob``
under a base URL. :func:`open_remote` is what :func:`tdxupdate.sources.open_repository` calls for
a URL, with one :class:`MirrorOptions`; the object it returns implements
:class:`tdxupdate.sources.Repository`. The transport is :mod:`tdxupdate.sources.http`.

How bytes move (the point of this module):

* :meth:`RemoteRepository.catalog`: one GET of the mapping file, conditional (``If-None-Match``
  / ``If-Modified-Since``) when a copy is cached, so an unchanged mapping costs one 304.
* :meth:`RemoteRepository.images`: no request (HTTP has no directory listing): one ref per
  mapping entry; a 404 on the image surfaces from :meth:`head` as ``image-not-found``.
* :meth:`RemoteRepository.head`: ``Range: bytes=0-8191`` (the header page and the sigstruct's
  first page, all the policy needs), conditional when cached; a server that ignores Range answers
  200 with the whole image, which is then kept for the run so it is never fetched twice.
* :meth:`RemoteRepository.read`: the whole image, conditional when cached, capped at
  :data:`tdxupdate.image.MAX_IMAGE_SIZE`. A second run against an unchanged mirror therefore
  moves no image bytes: every request is answered 304.

What enters the cache, and who decides: a body enters the cache only when it has exactly the
announced length and, for an image, when the caller's verdict on those very bytes says the checks
of image-formats.md §4 that do not depend on local policy passed (container, checksum, SEAMHASH,
RSA signature): ``--update`` and ``--verify`` verify what :meth:`read` returned
(``imagecheck.verify_image``) and hand the :class:`~tdxupdate.imagecheck.VerifiedImage` to
:meth:`RemoteRepository.admit`, which stores the bytes it served when the verdict's digest is
theirs. Nothing here verifies an image. :meth:`read` also returns an image that fails those
checks (never cached), so the caller reports precisely which check failed and ``--update`` moves
on to the next candidate. What :meth:`read` refuses outright (``network-error``) is a body that is
not what was listed: a different size or different first 8 KiB than :meth:`head` returned in this
run, because the policy decided on those bytes.

Plain ``http`` is refused for the mapping file *and* the images unless ``--allow-insecure-http``:
the mapping decides what is safe to load, and the 1.5.x images carry no version in their
sigstruct, so over plain http an older Intel-signed image could be served under a newer name and
pass every signature check (a silent downgrade).
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urljoin

from tdxupdate import catalog as _catalog
from tdxupdate import image as _image
from tdxupdate.errors import IOFailure, NotFound, UsageError
from tdxupdate.sources.cache import Cache, Entry, sha256_hex
from tdxupdate.sources.http import (
    DownloadProgress,
    HttpClient,
    Response,
    Tuning,
    as_base_url,
    check_ca_bundle,
    is_plain_http,
    redact,
    web_url,
)
from tdxupdate.sources.local import LocalRepository, load_catalog
from tdxupdate.sources.refs import MAPPING_NAME, ImageRef, blob_relpath, local_path
from tdxupdate.versions import Version

if TYPE_CHECKING:  # pragma: no cover
    from tdxupdate.imagecheck import VerifiedImage

#: Checks whose verdict decides whether an image enters the cache (image-formats.md §4.1–§4.3):
#: facts about the bytes themselves, independent of the trust list and the host. The caller
#: ran them (:meth:`RemoteRepository.admit` reads its verdict; nothing here runs them again).
INTEGRITY_CHECKS = ("container", "checksum", "seamhash", "signature")


@dataclass(frozen=True)
class MirrorOptions:
    """How a mirror is reached and cached: ``--cache-dir``, ``--offline``, ``--ca-bundle``,
    ``--allow-insecure-http``, the transport's :class:`~tdxupdate.sources.http.Tuning`, and
    where download progress is told (None: nowhere). Proxies come from the environment
    (``HTTPS_PROXY``, ``NO_PROXY``), as requests reads them."""

    #: the cache lives under ``<cache_dir>/remote``; None for
    #: :func:`tdxupdate.settings.default_cache_dir`
    cache_dir: Path | None = None
    offline: bool = False
    ca_bundle: Path | None = None
    allow_insecure_http: bool = False
    tuning: Tuning = field(default_factory=Tuning)
    progress: DownloadProgress | None = None
    #: wall clock of the cache index (fetched/confirmed times); tests inject a fake one
    clock: Callable[[], float] = time.time


@dataclass(frozen=True)
class _Fetched:
    """A whole image served in this run, not (yet) admitted to the cache."""

    data: bytes
    sha256: str
    etag: str | None
    last_modified: str | None


# ---------------------------------------------------------------------------------------------
# The repository


def _age(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 60:
        return "less than a minute"
    if seconds < 3600:
        return f"{int(seconds // 60)} min"
    if seconds < 2 * 86400:
        return f"{int(seconds // 3600)} h"
    return f"{int(seconds // 86400)} days"


def _rfc3339(when: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(when))


_CONTENT_RANGE = re.compile(r"^\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*$", re.IGNORECASE)
_UNSATISFIED_RANGE = re.compile(r"^\s*bytes\s+\*/(\d+)\s*$", re.IGNORECASE)


class RemoteRepository:
    """A repository whose mapping file and/or images come from URLs (see the module docstring).

    ``warnings`` collects ``(token, sentence)`` pairs the caller should add to the report:
    ``insecure-http`` (plain http was allowed) and ``offline-cache`` (the mapping comes from the
    cache, with its age).
    """

    def __init__(
        self,
        *,
        location: str,
        cache: Cache,
        client: HttpClient | None,
        base_url: str | None = None,
        local: LocalRepository | None = None,
        mapping_url: str | None = None,
        mapping_path: Path | None = None,
        options: MirrorOptions | None = None,
    ):
        """``options`` give the download progress and the clock of the cache index; the
        rest of them made ``cache`` and ``client`` (see :func:`open_remote`)."""
        opts = options if options is not None else MirrorOptions()
        self.location = location
        self.cache = cache
        self.client = client
        self.base_url = base_url
        self.local = local
        self.mapping_url = mapping_url
        self.mapping_path = mapping_path
        self.progress = opts.progress
        self.clock = opts.clock
        self.warnings: list[tuple[str, str]] = []
        #: displayed location -> the URL to fetch (they differ when the URL holds a password)
        self._urls: dict[str, str] = {}
        #: image key -> (sha256 of the head returned by head(), image size), this run
        self._listed: dict[str, tuple[str, int]] = {}
        #: image key -> the whole image last served for it in this run and not in the cache
        #: (a 200 to a read, or to a head the server answered without its Range): what
        #: :meth:`admit` may keep once the caller has verified it
        self._fetched: dict[str, _Fetched] = {}

    @property
    def offline(self) -> bool:
        return self.client is None

    def warn(self, token: str, sentence: str) -> None:
        if all(t != token for t, _ in self.warnings):
            self.warnings.append((token, sentence))

    def close(self) -> None:
        self._fetched.clear()
        if self.client is not None:
            self.client.close()

    def __enter__(self) -> RemoteRepository:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _fetch(self, url: str, **kwargs: Any) -> Response:
        assert self.client is not None
        return self.client.fetch(url, **kwargs)

    # --- mapping ----------------------------------------------------------------------------

    def catalog(self) -> _catalog.Catalog:
        if self.mapping_path is not None:
            return load_catalog(self.mapping_path)
        assert self.mapping_url is not None
        url = self.mapping_url
        key = redact(url)
        entry = self.cache.entry(key)
        cached = self.cache.load("mappings", entry.sha256) if entry is not None else None
        if self.offline:
            if entry is None or cached is None:
                raise NotFound(
                    f"{key}: not in the cache ({self.cache.root}) and --offline forbids "
                    "fetching it",
                    code="mapping-not-found",
                )
            age = self.clock() - entry.validated_at
            self.warn(
                "offline-cache",
                f"offline: the mapping file is the copy of {key} the mirror last confirmed "
                f"{_age(age)} ago ({_rfc3339(entry.validated_at)}); newer modules may have "
                "been published since",
            )
            return _catalog.parse_catalog(cached, key)
        headers = entry.validators() if entry is not None and cached is not None else {}
        resp = self._fetch(
            url, headers=headers, limit=_catalog.MAX_MAPPING_SIZE, what="mapping file"
        )
        if resp.status == 304 and entry is not None and cached is not None:
            self.cache.touch(entry)
            return _catalog.parse_catalog(cached, key)
        if resp.status == 200:
            # Parse before caching: an invalid mapping (65) never replaces a good copy.
            parsed = _catalog.parse_catalog(resp.body, key)
            digest = self.cache.store("mappings", resp.body)
            self._remember(key, resp, size=len(resp.body), sha256=digest)
            return parsed
        if resp.status in (404, 410):
            raise NotFound(f"{key}: {resp.status_text}", code="mapping-not-found")
        raise IOFailure(f"{key}: unexpected {resp.status_text} to a GET", code="network-error")

    # --- images -----------------------------------------------------------------------------

    def images(self, catalog: _catalog.Catalog) -> dict[Version, ImageRef]:
        """One ref per mapping entry at its canonical place (there is no listing over HTTP)."""
        if self.local is not None:
            return self.local.images(catalog)
        assert self.base_url is not None
        refs: dict[Version, ImageRef] = {}
        for release in catalog.releases:
            url = urljoin(self.base_url, blob_relpath(release.version))
            shown = redact(url)
            self._urls[shown] = url
            refs[release.version] = ImageRef(release.version, shown)
        return refs

    def _url(self, ref: ImageRef) -> tuple[str, str]:
        url = self._urls.get(ref.location, ref.location)
        return url, redact(url)

    def _cached_head(self, entry: Entry | None) -> tuple[bytes, int] | None:
        if entry is None or entry.size is None:
            return None
        head = self.cache.load("heads", entry.head_sha256)
        if head is None and entry.sha256 is not None:
            whole = self.cache.load("images", entry.sha256)
            head = whole[: _image.HEAD_SIZE] if whole is not None else None
        if head is None or len(head) != min(entry.size, _image.HEAD_SIZE):
            return None
        return head, entry.size

    def _seen(self, key: str, head: bytes, size: int) -> tuple[bytes, int]:
        self._listed[key] = (sha256_hex(head), size)
        return head, size

    def head(self, ref: ImageRef) -> tuple[bytes, int]:
        """The first HEAD_SIZE bytes of the image and its size (one Range request, or none)."""
        if self.local is not None:
            return self.local.head(ref)
        url, key = self._url(ref)
        entry = self.cache.entry(key)
        cached = self._cached_head(entry)
        if self.offline:
            if cached is None:
                raise NotFound(
                    f"{key}: not in the cache and --offline forbids fetching it",
                    code="image-not-found",
                )
            return self._seen(key, *cached)
        headers = {"Range": f"bytes=0-{_image.HEAD_SIZE - 1}"}
        if entry is not None and cached is not None:
            headers.update(entry.validators())
        resp = self._fetch(
            url,
            headers=headers,
            limit=_image.MAX_IMAGE_SIZE,
            what="image",
        )
        if resp.status == 304 and entry is not None and cached is not None:
            self.cache.touch(entry)
            return self._seen(key, *cached)
        if resp.status == 206:
            head, total = self._partial(key, resp)
            digest = self.cache.store("heads", head)
            self._remember(key, resp, size=total, head_sha256=digest)
            return self._seen(key, head, total)
        if resp.status == 200:
            # The server ignored Range: the whole image came. Its head is cached like a 206's;
            # the image is kept for this run (read() then only asks whether it changed) and
            # enters the cache when the caller has verified it (admit()).
            head = resp.body[: _image.HEAD_SIZE]
            self._hold(key, resp)
            digest = self.cache.store("heads", head)
            self._remember(key, resp, size=len(resp.body), head_sha256=digest)
            return self._seen(key, head, len(resp.body))
        if resp.status == 416:
            m = _UNSATISFIED_RANGE.match(resp.headers.get("Content-Range", ""))
            if m is not None and int(m.group(1)) == 0:
                self.cache.drop_entry(key)
                return self._seen(key, b"", 0)  # an empty file: inspect() says why
        if resp.status in (404, 410):
            self.cache.drop_entry(key)
            raise NotFound(f"{key}: {resp.status_text}", code="image-not-found")
        raise IOFailure(
            f"{key}: unexpected {resp.status_text} to a request for bytes 0-{_image.HEAD_SIZE - 1}",
            code="network-error",
        )

    def _partial(self, key: str, resp: Response) -> tuple[bytes, int]:
        """Check a 206 against what was asked; return (head, total size)."""
        content_range = resp.headers.get("Content-Range", "")
        m = _CONTENT_RANGE.match(content_range)
        if m is None or m.group(3) == "*":
            raise IOFailure(
                f"{key}: 206 Partial Content without a usable Content-Range "
                f"({content_range or 'none'})",
                code="network-error",
            )
        start, end, total = int(m.group(1)), int(m.group(2)), int(m.group(3))
        want_end = min(total, _image.HEAD_SIZE) - 1
        if start != 0 or end != want_end or end >= total:
            raise IOFailure(
                f"{key}: asked for bytes 0-{_image.HEAD_SIZE - 1}, the server sent "
                f"'{content_range.strip()}'",
                code="network-error",
            )
        if len(resp.body) != end - start + 1:
            raise IOFailure(
                f"{key}: body truncated: received {len(resp.body)} of {end - start + 1} bytes "
                f"of range {start}-{end}",
                code="network-error",
            )
        return resp.body, total

    def _hold(self, key: str, resp: Response) -> None:
        self._fetched[key] = _Fetched(
            resp.body, sha256_hex(resp.body), resp.etag, resp.last_modified
        )

    def admit(self, ref: ImageRef, verified: VerifiedImage) -> bool:
        """Cache the whole image served for ``ref`` in this run, given the caller's verdict on it.

        ``verified`` must judge exactly the bytes served (its SHA-256 is compared; what is
        stored is what was served, never the caller's copy), and its checks of
        :data:`INTEGRITY_CHECKS` must all be there and have passed; otherwise nothing is kept
        and the index forgets the URL. An image that came from the cache, or a local file, is
        not stored again. Returns whether the image was stored.
        """
        if self.local is not None:
            return False
        _, key = self._url(ref)
        fetched = self._fetched.pop(key, None)
        if fetched is None:
            return False
        checks = {c.name: c.ok for c in verified.verification.checks}
        sound = all(checks.get(name, False) for name in INTEGRITY_CHECKS)
        if verified.sha256 != fetched.sha256 or not sound:
            self.cache.drop_entry(key)
            return False
        data = fetched.data
        digest = self.cache.store("images", data)
        head_digest = self.cache.store("heads", data[: _image.HEAD_SIZE])
        self._remember(key, fetched, size=len(data), sha256=digest, head_sha256=head_digest)
        return True

    def _remember(
        self,
        key: str,
        resp: Response | _Fetched,
        *,
        size: int,
        sha256: str | None = None,
        head_sha256: str | None = None,
    ) -> None:
        """Index what was just fetched with the validators for the next conditional request."""
        now = self.clock()
        self.cache.put_entry(
            Entry(
                key,
                etag=resp.etag,
                last_modified=resp.last_modified,
                size=size,
                sha256=sha256,
                head_sha256=head_sha256,
                fetched_at=now,
                validated_at=now,
            )
        )

    def _same_as_listed(self, key: str, data: bytes) -> None:
        """The policy chose on the head seen in this run: the whole image must start with it."""
        listed = self._listed.get(key)
        if listed is None:
            return
        head_digest, size = listed
        if len(data) != size:
            what = f"{len(data)} bytes where {size} were listed"
        elif sha256_hex(data[: _image.HEAD_SIZE]) != head_digest:
            what = "its header or sigstruct differs from the one listed"
        else:
            return
        raise IOFailure(
            f"{key}: the image served is not the one listed moments ago ({what}); the mirror "
            "changed during this run or something on the path altered it; nothing was kept, "
            "run again",
            code="network-error",
        )

    def read(self, ref: ImageRef) -> bytes:
        """The whole image: from the cache after a 304, or downloaded.

        A downloaded image is not cached yet: the caller verifies it and hands its verdict to
        :meth:`admit`. An image that fails the integrity checks is returned too (the caller's
        ``imagecheck.verify`` then names the failed check) and is never cached.
        """
        if self.local is not None:
            return self.local.read(ref)
        url, key = self._url(ref)
        entry = self.cache.entry(key)
        cached = self.cache.load("images", entry.sha256) if entry is not None else None
        if self.offline:
            if cached is None:
                raise NotFound(
                    f"{key}: the whole image is not in the cache and --offline forbids fetching it",
                    code="image-not-found",
                )
            self._same_as_listed(key, cached)
            return cached
        held = self._fetched.get(key) if cached is None else None
        headers: dict[str, str] = {}
        if entry is not None and cached is not None:
            headers = entry.validators()
        elif held is not None:
            headers = Entry(key, etag=held.etag, last_modified=held.last_modified).validators()
        name = key.rsplit("/", 1)[-1]
        telling = self.progress(name) if self.progress is not None else contextlib.nullcontext()
        with telling as tick:
            resp = self._fetch(
                url, headers=headers, limit=_image.MAX_IMAGE_SIZE, what="image", progress=tick
            )
        if resp.status == 304 and entry is not None and cached is not None:
            self.cache.touch(entry)
            self._same_as_listed(key, cached)
            return cached
        if resp.status == 304 and held is not None and headers:
            if entry is not None:
                self.cache.touch(entry)
            self._same_as_listed(key, held.data)
            return held.data
        if resp.status == 200:
            self._same_as_listed(key, resp.body)
            # What the index held is not what the mirror serves now: forgotten until admit()
            # stores the new image (an image failing its checks leaves no entry behind).
            self.cache.drop_entry(key)
            self._hold(key, resp)
            return resp.body
        if resp.status in (404, 410):
            self.cache.drop_entry(key)
            raise NotFound(f"{key}: {resp.status_text}", code="image-not-found")
        raise IOFailure(f"{key}: unexpected {resp.status_text} to a GET", code="network-error")


# ---------------------------------------------------------------------------------------------
# Opening


def open_remote(
    repo: str,
    mapping: str | None = None,
    options: MirrorOptions | None = None,
) -> RemoteRepository:
    """The repository for ``--repo``/``--mapping`` when at least one of them is a URL.

    A ``file://`` URL or a path on either side is read locally; ``https`` (or ``http`` with
    ``allow_insecure_http``) through the cache under ``<cache_dir>/remote`` (default
    :func:`tdxupdate.settings.default_cache_dir`). With ``offline`` nothing is fetched.
    """
    from tdxupdate.settings import default_cache_dir

    opts = options if options is not None else MirrorOptions()
    cache_dir, ca_bundle = opts.cache_dir, opts.ca_bundle
    allow_insecure_http, clock = opts.allow_insecure_http, opts.clock

    repo_path = local_path(repo)
    base_url = None if repo_path is not None else as_base_url(web_url(repo, "--repo"))
    mapping_path = local_path(mapping) if mapping is not None else None
    mapping_url: str | None = None
    if mapping is None:
        if base_url is not None:
            mapping_url = urljoin(base_url, MAPPING_NAME)
        else:
            assert repo_path is not None
            mapping_path = repo_path / MAPPING_NAME
    elif mapping_path is None:
        mapping_url = web_url(mapping, "--mapping")

    insecure = [u for u in (mapping_url, base_url) if u is not None and is_plain_http(u)]
    if insecure and not allow_insecure_http:
        raise UsageError(
            f"{redact(insecure[0])}: refusing plain http: the mapping file decides what is safe "
            "to install and the images' names decide their versions (use https, a file, or "
            "--allow-insecure-http for a lab mirror)"
        )
    if ca_bundle is not None:
        check_ca_bundle(ca_bundle)

    local = LocalRepository(repo_path, mapping_path) if repo_path is not None else None
    cache = Cache(
        (cache_dir if cache_dir is not None else default_cache_dir()) / "remote", clock=clock
    )
    client = (
        None
        if opts.offline
        else HttpClient(
            ca_bundle=ca_bundle, allow_insecure_http=allow_insecure_http, tuning=opts.tuning
        )
    )
    location = redact(base_url) if base_url is not None else str(repo_path)
    result = RemoteRepository(
        location=location,
        cache=cache,
        client=client,
        base_url=base_url,
        local=local,
        mapping_url=mapping_url,
        mapping_path=mapping_path if mapping_url is None else None,
        options=opts,
    )
    if insecure:
        shown = ", ".join(redact(u) for u in _unique(insecure))
        result.warn(
            "insecure-http",
            f"--allow-insecure-http: {shown} is plain http: anyone on the network path can "
            "choose which modules are offered (images are still signature-checked)",
        )
    return result


def _unique(items: Iterable[str]) -> list[str]:
    out: list[str] = []
    for item in items:
        if item not in out:
            out.append(item)
    return out
