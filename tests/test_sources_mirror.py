"""Remote module repositories (tdxupdate.sources.mirror, .http, .cache) against real servers
(issue 5).

Every test starts its own HTTP or HTTPS server on 127.0.0.1 (``factories.httpserver``; the
certificate comes from a CA made on the fly with trustme) serving synthetic images in both
formats, and counts the requests and body bytes the server sent: that is how "an unchanged
mapping costs one 304", "listing reads two pages per image" and "a second run moves no image
bytes" are proved. Faults are injected per request (dropped connections, stalls, 5xx, short
bodies, a different image, endless bodies, wrong ranges, redirects); each test checks the exit
code, the exact message and what the cache holds afterwards. Retries never sleep: the backoff
goes through a recorded ``sleep``, and stalls use a short read timeout.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import subprocess
import sys
import weakref
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import trustme
from factories.httpserver import (
    BadRange,
    Body,
    ConnectProxy,
    Drop,
    Fault,
    MirrorServer,
    Oversize,
    Pass,
    Redirect,
    Short,
    Stall,
    Status,
    ca_bundle,
    clear_proxy_env,
    with_tuning,
)
from factories.images import make_image, mapping_document, trusted_signers, write_repo

from tdxupdate import image as _image
from tdxupdate import imagebuild, imagecheck
from tdxupdate.catalog import Catalog
from tdxupdate.errors import DataError, IOFailure, NotFound, TdxError, UsageError
from tdxupdate.image import FORMAT_A, FORMAT_B, HEAD_SIZE, MAX_IMAGE_SIZE
from tdxupdate.settings import Settings
from tdxupdate.sources import ImageRef
from tdxupdate.sources import http as _http
from tdxupdate.sources.cache import Cache
from tdxupdate.sources.http import Tuning
from tdxupdate.sources.mirror import MirrorOptions, RemoteRepository, open_remote
from tdxupdate.versions import Version

if TYPE_CHECKING:
    from tdxupdate.sim import SimHost

pytestmark = pytest.mark.network

#: The mirror's images: both container formats, two streams; 8 pages each, so the two pages a
#: listing reads are a quarter of an image.
FORMATS = {"1.5.06": FORMAT_A, "1.5.08": FORMAT_B, "1.5.09": FORMAT_A, "2.0.02": FORMAT_B}
IMAGE_SIZE = 8 * 4096
NEWEST = "1.5.09"
MAPPING = "/mapping_file.json"


def blob(version: str) -> str:
    v = Version.parse(version)
    return f"/joined_files/{v.major}.{v.minor}/tdx_module_{v}.blob"


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def images() -> dict[str, bytes]:
    return {v: make_image(v, fmt=f, module_pages=6) for v, f in FORMATS.items()}


@pytest.fixture
def mirror(ca: trustme.CA, images: dict[str, bytes]) -> Iterator[MirrorServer]:
    with MirrorServer(tls=ca, repo=images) as server:
        yield server


@pytest.fixture
def bundle(ca: trustme.CA, tmp_path: Path) -> Path:
    return ca_bundle(ca, tmp_path)


@pytest.fixture
def sleeps() -> list[float]:
    return []


@pytest.fixture
def tuning(sleeps: list[float]) -> Tuning:
    return Tuning(connect_timeout=5, read_timeout=5, retries=3, backoff=0.25, sleep=sleeps.append)


@pytest.fixture
def cache_dir(tmp_path: Path) -> Path:
    return tmp_path / "cache"


@pytest.fixture
def no_proxy_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests talk to 127.0.0.1 directly unless they set a proxy themselves."""
    clear_proxy_env(monkeypatch)


@pytest.fixture(autouse=True)
def _isolated_env(no_proxy_env: None) -> None:
    pass


def open_mirror(
    mirror: MirrorServer | str,
    bundle: Path | None,
    cache_dir: Path,
    tuning: Tuning,
    **options: object,
) -> RemoteRepository:
    url = mirror if isinstance(mirror, str) else mirror.url
    base = MirrorOptions(cache_dir=cache_dir, ca_bundle=bundle, tuning=tuning)
    return open_remote(url, None, replace(base, **options))  # type: ignore[arg-type]


def fetch(repo: RemoteRepository, ref: ImageRef) -> bytes:
    """What ``--update`` and ``--verify`` do: read the image, verify it, hand the verdict back
    (the mirror caches it when its integrity checks passed)."""
    data = repo.read(ref)
    admit(repo, ref, data)
    return data


def admit(repo: RemoteRepository, ref: ImageRef, data: bytes) -> bool:
    verified = imagecheck.verify_image(
        data, location=ref.location, trusted_signers=(), allow_debug=True
    )
    return repo.admit(ref, verified)


_CATALOGS: weakref.WeakKeyDictionary[RemoteRepository, Catalog] = weakref.WeakKeyDictionary()


def catalog_of(repo: RemoteRepository) -> Catalog:
    """The repository's catalog, fetched once per repository object (as one run does)."""
    if repo not in _CATALOGS:
        _CATALOGS[repo] = repo.catalog()
    return _CATALOGS[repo]


def listing(repo: RemoteRepository) -> dict[Version, tuple[bytes, int]]:
    """What ``load_inventory`` does: the catalog, the refs, a head for every image."""
    return {v: repo.head(ref) for v, ref in repo.images(catalog_of(repo)).items()}


def ref_of(repo: RemoteRepository, version: str) -> ImageRef:
    return repo.images(catalog_of(repo))[Version.parse(version)]


def store(cache_dir: Path, kind: str) -> list[str]:
    """Every file in one content store, temporary files included."""
    directory = cache_dir / "remote" / kind / "sha256"
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


def image_bytes(server: MirrorServer) -> int:
    """Image bytes the server sent (200 and 206 bodies; a 404's error text is not an image)."""
    return sum(r.body_bytes for r in server.requests(suffix=".blob") if r.status in (200, 206))


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------------------------
# Bytes moved: catalog, listing, download, revalidation


def test_catalog_over_https_parses_the_mapping_with_one_request(
    mirror: MirrorServer, bundle: Path, cache_dir: Path, tuning: Tuning
) -> None:
    with open_mirror(mirror, bundle, cache_dir, tuning) as repo:
        catalog = repo.catalog()
    assert catalog.source == f"{mirror.url}mapping_file.json"
    assert [str(r.version) for r in catalog.releases] == sorted(FORMATS, key=Version.parse)
    (request,) = mirror.log
    assert (request.path, request.status) == (MAPPING, 200)
    assert request.headers["user-agent"].startswith("tdxupdate/0.")
    assert request.headers["accept-encoding"] == "identity"
    assert "if-none-match" not in request.headers


def test_images_are_one_ref_per_mapping_entry_and_cost_no_request(
    mirror: MirrorServer, bundle: Path, cache_dir: Path, tuning: Tuning
) -> None:
    with open_mirror(mirror, bundle, cache_dir, tuning) as repo:
        catalog = repo.catalog()
        mirror.reset_log()
        refs = repo.images(catalog)
    assert mirror.log == []
    assert {str(v): r.location for v, r in refs.items()} == {
        v: mirror.url + blob(v).lstrip("/") for v in FORMATS
    }
    assert repo.location == mirror.url


def test_listing_reads_only_the_first_two_pages_of_each_image_with_range(
    mirror: MirrorServer, bundle: Path, cache_dir: Path, tuning: Tuning, images: dict[str, bytes]
) -> None:
    with open_mirror(mirror, bundle, cache_dir, tuning) as repo:
        heads = listing(repo)
    for version, (head, size) in heads.items():
        data = images[str(version)]
        assert (head, size) == (data[:HEAD_SIZE], len(data))
        assert _image.inspect(head, size).format == FORMATS[str(version)]
    for request in mirror.requests(suffix=".blob"):
        assert request.headers["range"] == "bytes=0-8191"
        assert (request.status, request.body_bytes) == (206, HEAD_SIZE)
    assert mirror.body_bytes(suffix=".blob") == len(FORMATS) * HEAD_SIZE
    assert store(cache_dir, "images") == []  # nothing was downloaded whole


def test_read_downloads_the_selected_image_once_into_the_content_addressed_store(
    mirror: MirrorServer, bundle: Path, cache_dir: Path, tuning: Tuning, images: dict[str, bytes]
) -> None:
    with open_mirror(mirror, bundle, cache_dir, tuning) as repo:
        listing(repo)
        mirror.reset_log()
        data = fetch(repo, ref_of(repo, NEWEST))
    assert data == images[NEWEST]
    assert imagecheck.verify(data, trusted_signers=trusted_signers()).ok
    full = [r for r in mirror.log if r.path == blob(NEWEST)]
    assert [(r.status, r.body_bytes, "range" in r.headers) for r in full] == [
        (200, IMAGE_SIZE, False)
    ]
    assert store(cache_dir, "images") == [sha(data)]
    assert (cache_dir / "remote" / "images" / "sha256" / sha(data)).read_bytes() == data
    entry = Cache(cache_dir / "remote").entry(mirror.url + blob(NEWEST).lstrip("/"))
    assert entry is not None
    assert entry.sha256 == sha(data)
    assert entry.size == IMAGE_SIZE
    assert entry.etag == f'"{sha(data)[:20]}"'


def test_second_run_on_an_unchanged_mirror_moves_no_bytes_only_revalidation(
    mirror: MirrorServer, bundle: Path, cache_dir: Path, tuning: Tuning, images: dict[str, bytes]
) -> None:
    with open_mirror(mirror, bundle, cache_dir, tuning) as first:
        listing(first)
        fetch(first, ref_of(first, NEWEST))
    mirror.reset_log()

    with open_mirror(mirror, bundle, cache_dir, tuning) as second:
        heads = listing(second)
        data = fetch(second, ref_of(second, NEWEST))

    assert data == images[NEWEST]
    assert {str(v): h for v, h in heads.items()} == {
        v: (d[:HEAD_SIZE], len(d)) for v, d in images.items()
    }
    assert all(r.status == 304 and r.body_bytes == 0 for r in mirror.log)
    assert all("if-none-match" in r.headers for r in mirror.log)
    assert mirror.body_bytes() == 0
    # one revalidation for the mapping, one per listed image, one for the downloaded image
    assert len(mirror.log) == 1 + len(FORMATS) + 1


def test_revalidation_works_with_last_modified_alone(
    mirror: MirrorServer, bundle: Path, cache_dir: Path, tuning: Tuning
) -> None:
    mirror.configure(etags=False)
    with open_mirror(mirror, bundle, cache_dir, tuning) as first:
        listing(first)
    mirror.reset_log()
    with open_mirror(mirror, bundle, cache_dir, tuning) as second:
        listing(second)
    assert [r.status for r in mirror.log] == [304] * (1 + len(FORMATS))
    assert all("if-modified-since" in r.headers for r in mirror.log)
    assert mirror.body_bytes() == 0


def test_a_server_ignoring_range_sends_whole_images_once_and_they_are_kept(
    mirror: MirrorServer, bundle: Path, cache_dir: Path, tuning: Tuning, images: dict[str, bytes]
) -> None:
    mirror.configure(ranges=False)
    with open_mirror(mirror, bundle, cache_dir, tuning) as repo:
        heads = listing(repo)
        assert {str(v): h for v, h in heads.items()} == {
            v: (d[:HEAD_SIZE], len(d)) for v, d in images.items()
        }
        assert [r.status for r in mirror.requests(suffix=".blob")] == [200] * len(FORMATS)
        mirror.reset_log()
        data = fetch(repo, ref_of(repo, NEWEST))
        # The caller's verdicts on the other whole images that came with the listing.
        for version, whole in images.items():
            if version != NEWEST:
                assert admit(repo, ref_of(repo, version), whole)
    assert data == images[NEWEST]
    # The whole image came with the listing, was kept and, verified, cached: reading it is a 304.
    assert [(r.status, r.body_bytes) for r in mirror.requests(blob(NEWEST))] == [(304, 0)]
    assert sorted(store(cache_dir, "images")) == sorted(sha(d) for d in images.values())


def test_an_image_replaced_on_the_mirror_is_fetched_again(
    mirror: MirrorServer, bundle: Path, cache_dir: Path, tuning: Tuning, images: dict[str, bytes]
) -> None:
    with open_mirror(mirror, bundle, cache_dir, tuning) as first:
        listing(first)
        fetch(first, ref_of(first, NEWEST))
    rebuilt = make_image(NEWEST, fmt=FORMAT_B, module_pages=7)  # the mirror switched format
    mirror.put(blob(NEWEST), rebuilt)
    mirror.reset_log()
    with open_mirror(mirror, bundle, cache_dir, tuning) as second:
        head, size = listing(second)[Version.parse(NEWEST)]
        data = fetch(second, ref_of(second, NEWEST))
    assert (head, size) == (rebuilt[:HEAD_SIZE], len(rebuilt))
    assert data == rebuilt
    assert [r.status for r in mirror.requests(blob(NEWEST))] == [206, 200]
    assert sha(rebuilt) in store(cache_dir, "images")


def test_a_changed_mapping_is_fetched_and_replaces_the_cached_copy(
    mirror: MirrorServer, bundle: Path, cache_dir: Path, tuning: Tuning
) -> None:
    with open_mirror(mirror, bundle, cache_dir, tuning) as first:
        first.catalog()
    newer = mapping_document([*sorted(FORMATS, key=Version.parse), "1.5.16"])
    mirror.put(MAPPING, json.dumps(newer).encode())
    with open_mirror(mirror, bundle, cache_dir, tuning) as second:
        catalog = second.catalog()
    assert Version.parse("1.5.16") in [r.version for r in catalog.releases]
    assert [r.status for r in mirror.requests(MAPPING)] == [200, 200]
    assert "if-none-match" in mirror.requests(MAPPING)[1].headers


# --------------------------------------------------------------------------------------------
# The cache keeps bad bytes out


def test_a_corrupt_cached_image_is_detected_and_fetched_again(
    mirror: MirrorServer, bundle: Path, cache_dir: Path, tuning: Tuning, images: dict[str, bytes]
) -> None:
    with open_mirror(mirror, bundle, cache_dir, tuning) as first:
        fetch(first, ref_of(first, NEWEST))
    path = cache_dir / "remote" / "images" / "sha256" / sha(images[NEWEST])
    rotten = bytearray(path.read_bytes())
    rotten[-1] ^= 0x01
    path.write_bytes(rotten)
    mirror.reset_log()
    with open_mirror(mirror, bundle, cache_dir, tuning) as second:
        data = fetch(second, ref_of(second, NEWEST))
    assert data == images[NEWEST]
    (request,) = mirror.requests(blob(NEWEST))
    # not a conditional request: the cached copy was unusable, so a 304 would not help
    assert (request.status, request.body_bytes) == (200, IMAGE_SIZE)
    assert "if-none-match" not in request.headers
    assert path.read_bytes() == images[NEWEST]


def test_a_corrupt_cached_mapping_is_fetched_again(
    mirror: MirrorServer, bundle: Path, cache_dir: Path, tuning: Tuning
) -> None:
    with open_mirror(mirror, bundle, cache_dir, tuning) as first:
        first.catalog()
    (name,) = store(cache_dir, "mappings")
    (cache_dir / "remote" / "mappings" / "sha256" / name).write_bytes(b'{"Header": {}}')
    with open_mirror(mirror, bundle, cache_dir, tuning) as second:
        catalog = second.catalog()
    assert len(catalog.releases) == len(FORMATS)
    assert [r.status for r in mirror.requests(MAPPING)] == [200, 200]
    assert store(cache_dir, "mappings") == [name]


def test_an_unreadable_index_entry_is_a_cache_miss(
    mirror: MirrorServer, bundle: Path, cache_dir: Path, tuning: Tuning
) -> None:
    with open_mirror(mirror, bundle, cache_dir, tuning) as first:
        first.catalog()
    for path in (cache_dir / "remote" / "index").iterdir():
        path.write_text("{not json")
    with open_mirror(mirror, bundle, cache_dir, tuning) as second:
        second.catalog()
    assert [r.status for r in mirror.requests(MAPPING)] == [200, 200]
    entry = Cache(cache_dir / "remote").entry(f"{mirror.url}mapping_file.json")
    assert entry is not None
    assert entry.etag is not None


def test_a_truncated_download_leaves_nothing_in_the_cache(
    mirror: MirrorServer, bundle: Path, cache_dir: Path, tuning: Tuning, sleeps: list[float]
) -> None:
    with open_mirror(mirror, bundle, cache_dir, tuning) as repo:
        ref = ref_of(repo, NEWEST)
        mirror.inject(blob(NEWEST), *[Short(5000)] * 4)
        with pytest.raises(IOFailure) as caught:
            fetch(repo, ref)
    assert caught.value.code == "network-error"
    assert caught.value.exit_code == 74
    assert caught.value.message == (
        f"{ref.location}: body truncated: received 5000 of {IMAGE_SIZE} bytes (after 4 attempts)"
    )
    assert sleeps == [0.25, 0.5, 1.0]
    assert store(cache_dir, "images") == []
    assert Cache(cache_dir / "remote").entry(ref.location) is None


def test_a_short_body_once_is_retried_and_the_image_arrives_whole(
    mirror: MirrorServer, bundle: Path, cache_dir: Path, tuning: Tuning, images: dict[str, bytes]
) -> None:
    mirror.inject(blob(NEWEST), Short(5000))
    with open_mirror(mirror, bundle, cache_dir, tuning) as repo:
        data = fetch(repo, ref_of(repo, NEWEST))
    assert data == images[NEWEST]
    assert [r.body_bytes for r in mirror.requests(blob(NEWEST))] == [5000, IMAGE_SIZE]
    assert store(cache_dir, "images") == [sha(data)]


def test_an_interrupted_download_leaves_no_partial_file(
    mirror: MirrorServer,
    bundle: Path,
    cache_dir: Path,
    tuning: Tuning,
) -> None:
    def interrupt(done: int, total: int | None) -> None:
        if done > 0:
            raise KeyboardInterrupt

    @contextlib.contextmanager
    def progress(name: str) -> Iterator[_http.Progress]:
        yield interrupt

    with open_mirror(mirror, bundle, cache_dir, tuning, progress=progress) as repo:
        ref = ref_of(repo, NEWEST)
        with pytest.raises(KeyboardInterrupt):
            fetch(repo, ref)
    assert store(cache_dir, "images") == []
    assert Cache(cache_dir / "remote").entry(ref.location) is None


def test_only_the_served_bytes_with_a_sound_verdict_are_admitted(
    mirror: MirrorServer, bundle: Path, cache_dir: Path, tuning: Tuning, images: dict[str, bytes]
) -> None:
    with open_mirror(mirror, bundle, cache_dir, tuning) as repo:
        ref = ref_of(repo, NEWEST)
        data = repo.read(ref)
        assert store(cache_dir, "images") == []  # read alone keeps nothing
        other = next(d for v, d in images.items() if v != NEWEST)
        assert not admit(repo, ref, other)  # a verdict on other bytes: nothing kept
        assert store(cache_dir, "images") == []
        assert Cache(cache_dir / "remote").entry(ref.location) is None
        assert repo.read(ref) == data
        assert admit(repo, ref, data)
        assert not admit(repo, ref, data)  # admitted once; nothing new was served
    assert store(cache_dir, "images") == [sha(data)]
    assert [r.status for r in mirror.requests(blob(NEWEST))] == [200, 200]


def test_a_verdict_without_the_integrity_checks_admits_nothing(
    mirror: MirrorServer, bundle: Path, cache_dir: Path, tuning: Tuning
) -> None:
    with open_mirror(mirror, bundle, cache_dir, tuning) as repo:
        ref = ref_of(repo, NEWEST)
        data = repo.read(ref)
        verified = imagecheck.verify_image(data, location=ref.location, trusted_signers=())
        partial = replace(
            verified,
            verification=replace(
                verified.verification,
                checks=tuple(c for c in verified.verification.checks if c.name != "signature"),
            ),
        )
        assert not repo.admit(ref, partial)
    assert store(cache_dir, "images") == []


def test_the_download_bar_is_never_drawn_with_json_or_quiet() -> None:
    from tdxupdate.cli import _download_progress

    assert _download_progress(Settings(interactive=True)) is not None
    assert _download_progress(Settings(interactive=True, json=True)) is None
    assert _download_progress(Settings(interactive=True, verbosity=-1)) is None


def test_an_image_failing_integrity_is_returned_for_the_verdict_but_never_cached(
    mirror: MirrorServer, bundle: Path, cache_dir: Path, tuning: Tuning
) -> None:
    broken = make_image(NEWEST, fmt=FORMAT_A, module_pages=6, tamper="module-byte")
    mirror.put(blob(NEWEST), broken)
    with open_mirror(mirror, bundle, cache_dir, tuning) as repo:
        ref = ref_of(repo, NEWEST)
        assert fetch(repo, ref) == broken
        assert fetch(repo, ref) == broken
    verdict = imagecheck.verify(broken, trusted_signers=trusted_signers())
    assert [c.name for c in verdict.failed] == ["seamhash"]
    assert store(cache_dir, "images") == []
    assert [r.status for r in mirror.requests(blob(NEWEST))] == [200, 200]


def test_an_invalid_mapping_is_refused_and_the_good_copy_stays_for_offline_use(
    mirror: MirrorServer, bundle: Path, cache_dir: Path, tuning: Tuning
) -> None:
    with open_mirror(mirror, bundle, cache_dir, tuning) as first:
        first.catalog()
    mirror.put(MAPPING, b'{"Header": {"Version": "1.0"}, "tdx_module_releases": [{}]}')
    with open_mirror(mirror, bundle, cache_dir, tuning) as second, pytest.raises(DataError) as e:
        second.catalog()
    assert e.value.code == "mapping-invalid"
    assert e.value.exit_code == 65
    assert e.value.message.startswith(f"{mirror.url}mapping_file.json: $.tdx_module_releases[0]")
    with open_mirror(mirror, bundle, cache_dir, tuning, offline=True) as offline:
        assert len(offline.catalog().releases) == len(FORMATS)


# --------------------------------------------------------------------------------------------
# Offline


def test_offline_uses_what_was_verified_before_and_says_how_old_the_mapping_is(
    ca: trustme.CA,
    images: dict[str, bytes],
    bundle: Path,
    cache_dir: Path,
    tuning: Tuning,
) -> None:
    fetched = 1_767_268_800.0  # 2026-01-01T12:00:00Z
    with MirrorServer(tls=ca, repo=images) as server:
        url = server.url
        with open_mirror(server, bundle, cache_dir, tuning, clock=lambda: fetched) as online:
            listing(online)
            fetch(online, ref_of(online, NEWEST))
    # The mirror is gone: nothing below may touch the network.
    with open_mirror(
        url, bundle, cache_dir, tuning, offline=True, clock=lambda: fetched + 3 * 3600 + 30
    ) as repo:
        heads = listing(repo)
        data = fetch(repo, ref_of(repo, NEWEST))
        warnings = dict(repo.warnings)
    assert data == images[NEWEST]
    assert {str(v): h for v, h in heads.items()} == {
        v: (d[:HEAD_SIZE], len(d)) for v, d in images.items()
    }
    assert warnings == {
        "offline-cache": f"offline: the mapping file is the copy of {url}mapping_file.json the "
        "mirror last confirmed 3 h ago (2026-01-01T12:00:00Z); newer modules may have been "
        "published since"
    }
    assert "requests" in sys.modules  # (imported by the online part; offline made no client)
    assert repo.client is None


def test_offline_with_nothing_cached_is_mapping_not_found(
    mirror: MirrorServer, bundle: Path, cache_dir: Path, tuning: Tuning
) -> None:
    with (
        open_mirror(mirror, bundle, cache_dir, tuning, offline=True) as repo,
        pytest.raises(NotFound) as caught,
    ):
        repo.catalog()
    assert caught.value.code == "mapping-not-found"
    assert caught.value.exit_code == 66
    assert caught.value.message == (
        f"{mirror.url}mapping_file.json: not in the cache ({cache_dir / 'remote'}) and "
        "--offline forbids fetching it"
    )
    assert mirror.log == []


def test_offline_an_image_only_listed_before_cannot_be_read(
    mirror: MirrorServer, bundle: Path, cache_dir: Path, tuning: Tuning
) -> None:
    with open_mirror(mirror, bundle, cache_dir, tuning) as online:
        listing(online)
    mirror.reset_log()
    with open_mirror(mirror, bundle, cache_dir, tuning, offline=True) as repo:
        listing(repo)  # the heads were kept
        ref = ref_of(repo, NEWEST)
        with pytest.raises(NotFound) as caught:
            fetch(repo, ref)
    assert caught.value.code == "image-not-found"
    assert caught.value.message == (
        f"{ref.location}: the whole image is not in the cache and --offline forbids fetching it"
    )
    assert mirror.log == []


# --------------------------------------------------------------------------------------------
# Failures: one line naming the URL and the cause, 74 (66 for a missing file)


def _fails(repo: RemoteRepository, call: str = "catalog", ref: ImageRef | None = None) -> TdxError:
    calls: dict[str, Callable[[], object]] = {
        "catalog": repo.catalog,
        "head": lambda: repo.head(_given(ref)),
        "read": lambda: fetch(repo, _given(ref)),
    }
    with pytest.raises(TdxError) as caught:
        calls[call]()
    return caught.value


def _given(ref: ImageRef | None) -> ImageRef:
    assert ref is not None
    return ref


def test_connection_refused_is_a_network_error_after_retries(
    bundle: Path, cache_dir: Path, tuning: Tuning, sleeps: list[float]
) -> None:
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"https://127.0.0.1:{port}/tdx/"
    with open_mirror(url, bundle, cache_dir, tuning) as repo:
        error = _fails(repo)
    assert (error.code, error.exit_code) == ("network-error", 74)
    assert error.message == f"{url}mapping_file.json: connection refused (after 4 attempts)"
    assert sleeps == [0.25, 0.5, 1.0]
    assert list((cache_dir / "remote" / "index").iterdir()) == []


def test_an_unresolvable_host_name_is_named(
    bundle: Path, cache_dir: Path, sleeps: list[float]
) -> None:
    tuning = Tuning(retries=1, backoff=0.25, sleep=sleeps.append)
    with open_mirror("https://mirror.invalid/tdx", bundle, cache_dir, tuning) as repo:
        error = _fails(repo)
    assert error.code == "network-error"
    assert error.message == (
        "https://mirror.invalid/tdx/mapping_file.json: cannot resolve host name "
        "'mirror.invalid' (after 2 attempts)"
    )


def test_a_stalled_server_times_out_and_is_retried(
    mirror: MirrorServer, bundle: Path, cache_dir: Path, sleeps: list[float]
) -> None:
    tuning = Tuning(read_timeout=0.3, retries=1, backoff=0.25, sleep=sleeps.append)
    mirror.inject(MAPPING, Stall(), Stall())
    with open_mirror(mirror, bundle, cache_dir, tuning) as repo:
        error = _fails(repo)
    assert error.code == "network-error"
    assert error.message == (
        f"{mirror.url}mapping_file.json: read timed out: no data for 0.3 s (after 2 attempts)"
    )
    assert len(mirror.requests(MAPPING)) == 2
    assert store(cache_dir, "mappings") == []


def test_a_stall_mid_body_is_retried_and_the_image_then_arrives(
    mirror: MirrorServer, bundle: Path, cache_dir: Path, images: dict[str, bytes]
) -> None:
    sleeps: list[float] = []
    tuning = Tuning(read_timeout=0.3, retries=2, backoff=0.25, sleep=sleeps.append)
    mirror.inject(blob(NEWEST), Stall(mid_body=True, after_bytes=10000), Pass())
    with open_mirror(mirror, bundle, cache_dir, tuning) as repo:
        data = fetch(repo, ref_of(repo, NEWEST))
    assert data == images[NEWEST]
    assert [r.body_bytes for r in mirror.requests(blob(NEWEST))] == [10000, IMAGE_SIZE]
    assert sleeps == [0.25]


def test_tls_without_the_internal_ca_fails_verification_with_a_hint(
    mirror: MirrorServer, cache_dir: Path, tuning: Tuning, sleeps: list[float]
) -> None:
    with open_mirror(mirror, None, cache_dir, tuning) as repo:
        error = _fails(repo)
    assert error.code == "network-error"
    assert error.message == (
        f"{mirror.url}mapping_file.json: TLS certificate verify failed (unable to get local "
        "issuer certificate; use --ca-bundle for an internal CA)"
    )
    assert sleeps == []  # a certificate does not get better by retrying
    assert mirror.log == []  # no request went out over the unverified connection


def test_tls_certificate_for_another_host_is_refused(
    ca: trustme.CA, images: dict[str, bytes], bundle: Path, cache_dir: Path, tuning: Tuning
) -> None:
    with (
        MirrorServer(tls=ca, hostnames=("mirror.example",), repo=images) as server,
        open_mirror(server, bundle, cache_dir, tuning) as repo,
    ):
        error = _fails(repo)
    assert error.code == "network-error"
    assert error.message.startswith(
        f"{server.url}mapping_file.json: TLS certificate is not valid for host '127.0.0.1' ("
    )
    assert "\n" not in error.message


def test_a_missing_mapping_is_mapping_not_found_66(
    mirror: MirrorServer, bundle: Path, cache_dir: Path, tuning: Tuning
) -> None:
    mirror.remove(MAPPING)
    with open_mirror(mirror, bundle, cache_dir, tuning) as repo:
        error = _fails(repo)
    assert (error.code, error.exit_code) == ("mapping-not-found", 66)
    assert error.message == f"{mirror.url}mapping_file.json: HTTP 404 Not Found"


def test_a_missing_image_is_image_not_found_from_head(
    mirror: MirrorServer, bundle: Path, cache_dir: Path, tuning: Tuning
) -> None:
    mirror.remove(blob("1.5.08"))
    with open_mirror(mirror, bundle, cache_dir, tuning) as repo:
        ref = ref_of(repo, "1.5.08")
        error = _fails(repo, "head", ref)
    assert (error.code, error.exit_code) == ("image-not-found", 66)
    assert error.message == f"{ref.location}: HTTP 404 Not Found"


def test_500_then_200_is_retried_after_the_first_backoff(
    mirror: MirrorServer, bundle: Path, cache_dir: Path, tuning: Tuning, sleeps: list[float]
) -> None:
    mirror.inject(MAPPING, Status(500))
    with open_mirror(mirror, bundle, cache_dir, tuning) as repo:
        assert len(repo.catalog().releases) == len(FORMATS)
    assert [r.status for r in mirror.requests(MAPPING)] == [500, 200]
    assert sleeps == [0.25]


def test_5xx_after_every_retry_is_a_network_error_with_exponential_backoff(
    mirror: MirrorServer, bundle: Path, cache_dir: Path, tuning: Tuning, sleeps: list[float]
) -> None:
    mirror.inject(MAPPING, *[Status(503)] * 4)
    with open_mirror(mirror, bundle, cache_dir, tuning) as repo:
        error = _fails(repo)
    assert error.message == (
        f"{mirror.url}mapping_file.json: HTTP 503 Service Unavailable (after 4 attempts)"
    )
    assert sleeps == [0.25, 0.5, 1.0]
    assert store(cache_dir, "mappings") == []


def test_retry_after_is_honoured(
    mirror: MirrorServer, bundle: Path, cache_dir: Path, tuning: Tuning, sleeps: list[float]
) -> None:
    mirror.inject(MAPPING, Status(429, retry_after="7"), Status(503, retry_after="0"))
    with open_mirror(mirror, bundle, cache_dir, tuning) as repo:
        repo.catalog()
    assert sleeps == [7.0, 0.0]
    assert [r.status for r in mirror.requests(MAPPING)] == [429, 503, 200]


def test_a_retry_after_beyond_the_limit_is_reported_not_waited_for(
    mirror: MirrorServer, bundle: Path, cache_dir: Path, tuning: Tuning, sleeps: list[float]
) -> None:
    mirror.inject(MAPPING, Status(503, retry_after="3600"))
    with open_mirror(mirror, bundle, cache_dir, tuning) as repo:
        error = _fails(repo)
    assert error.message == (
        f"{mirror.url}mapping_file.json: HTTP 503 Service Unavailable; the server asks to "
        "retry after 3600 s"
    )
    assert sleeps == []


def test_a_dropped_connection_is_retried(
    mirror: MirrorServer, bundle: Path, cache_dir: Path, tuning: Tuning, sleeps: list[float]
) -> None:
    mirror.inject(MAPPING, Drop())
    with open_mirror(mirror, bundle, cache_dir, tuning) as repo:
        repo.catalog()
    assert [r.fault for r in mirror.requests(MAPPING)] == ["Drop", None]
    assert sleeps == [0.25]


def test_connections_dropped_every_time_are_a_network_error(
    mirror: MirrorServer, bundle: Path, cache_dir: Path, tuning: Tuning
) -> None:
    mirror.inject(MAPPING, *[Drop()] * 4)
    with open_mirror(mirror, bundle, cache_dir, tuning) as repo:
        error = _fails(repo)
    assert error.message == (
        f"{mirror.url}mapping_file.json: the server closed the connection without a response "
        "(after 4 attempts)"
    )


def test_an_oversized_announced_body_is_refused_before_it_is_downloaded(
    mirror: MirrorServer, bundle: Path, cache_dir: Path, tuning: Tuning, sleeps: list[float]
) -> None:
    with open_mirror(mirror, bundle, cache_dir, tuning) as repo:
        ref = ref_of(repo, NEWEST)
        mirror.inject(blob(NEWEST), Oversize(total=64 * 1024 * 1024))
        error = _fails(repo, "read", ref)
    assert (error.code, error.exit_code) == ("network-error", 74)
    assert error.message == (
        f"{ref.location}: the response announces 67108864 bytes, larger than the largest image "
        f"({MAX_IMAGE_SIZE} bytes)"
    )
    assert sleeps == []
    assert store(cache_dir, "images") == []


def test_an_endless_body_without_a_length_is_cut_at_the_largest_image(
    mirror: MirrorServer, bundle: Path, cache_dir: Path, tuning: Tuning
) -> None:
    with open_mirror(mirror, bundle, cache_dir, tuning) as repo:
        ref = ref_of(repo, NEWEST)
        mirror.inject(blob(NEWEST), Oversize(total=8 * 1024 * 1024, declare=False))
        error = _fails(repo, "read", ref)
    assert error.message == (
        f"{ref.location}: the body is larger than the largest image ({MAX_IMAGE_SIZE} bytes)"
    )
    assert store(cache_dir, "images") == []


def test_a_different_image_than_the_one_listed_is_refused(
    mirror: MirrorServer, bundle: Path, cache_dir: Path, tuning: Tuning, images: dict[str, bytes]
) -> None:
    """The policy chose on the listed head: a download that starts differently is not it."""
    impostor = make_image(NEWEST, fmt=FORMAT_A, module_pages=6, cpuids=(0xA06D0,))
    assert len(impostor) == IMAGE_SIZE
    assert impostor[:HEAD_SIZE] != images[NEWEST][:HEAD_SIZE]
    with open_mirror(mirror, bundle, cache_dir, tuning) as repo:
        listing(repo)
        ref = ref_of(repo, NEWEST)
        mirror.inject(blob(NEWEST), Body(impostor))
        error = _fails(repo, "read", ref)
    assert (error.code, error.exit_code) == ("network-error", 74)
    assert error.message == (
        f"{ref.location}: the image served is not the one listed moments ago (its header or "
        "sigstruct differs from the one listed); the mirror changed during this run or "
        "something on the path altered it; nothing was kept, run again"
    )
    assert store(cache_dir, "images") == []


def test_a_body_of_another_size_than_listed_is_refused(
    mirror: MirrorServer, bundle: Path, cache_dir: Path, tuning: Tuning, images: dict[str, bytes]
) -> None:
    with open_mirror(mirror, bundle, cache_dir, tuning) as repo:
        listing(repo)
        ref = ref_of(repo, NEWEST)
        mirror.inject(blob(NEWEST), Body(images["1.5.06"] + bytes(4096)))
        error = _fails(repo, "read", ref)
    assert "(36864 bytes where 32768 were listed)" in error.message
    assert store(cache_dir, "images") == []


def test_a_renamed_image_reaches_the_callers_version_check_unchanged(
    mirror: MirrorServer, bundle: Path, cache_dir: Path, tuning: Tuning, images: dict[str, bytes]
) -> None:
    """A mirror consistently serving 1.5.06 as 1.5.09 is bad data (65), not a network fault."""
    mirror.put(blob(NEWEST), images["1.5.06"])
    with open_mirror(mirror, bundle, cache_dir, tuning) as repo:
        listing(repo)
        data = fetch(repo, ref_of(repo, NEWEST))
    verdict = imagecheck.verify(
        data, trusted_signers=trusted_signers(), expected_version=Version.parse(NEWEST)
    )
    assert [c.name for c in verdict.failed] == ["version"]


def test_a_wrong_content_range_is_refused(
    mirror: MirrorServer, bundle: Path, cache_dir: Path, tuning: Tuning
) -> None:
    with open_mirror(mirror, bundle, cache_dir, tuning) as repo:
        ref = ref_of(repo, NEWEST)
        mirror.inject(blob(NEWEST), BadRange(100, 8291))
        error = _fails(repo, "head", ref)
    assert error.message == (
        f"{ref.location}: asked for bytes 0-8191, the server sent 'bytes 100-8291/{IMAGE_SIZE}'"
    )
    assert store(cache_dir, "heads") == []


def test_an_empty_image_file_gives_an_empty_head_for_inspect_to_refuse(
    mirror: MirrorServer, bundle: Path, cache_dir: Path, tuning: Tuning
) -> None:
    mirror.put(blob("1.5.08"), b"")
    with open_mirror(mirror, bundle, cache_dir, tuning) as repo:
        assert repo.head(ref_of(repo, "1.5.08")) == (b"", 0)
    assert [r.status for r in mirror.requests(blob("1.5.08"))] == [416]


# --------------------------------------------------------------------------------------------
# Plain http, redirects, options


def test_plain_http_is_refused_without_allow_insecure_http(
    images: dict[str, bytes], cache_dir: Path, tuning: Tuning
) -> None:
    with MirrorServer(repo=images) as server:
        with pytest.raises(UsageError) as caught:
            open_mirror(server, None, cache_dir, tuning)
        assert server.log == []
    assert caught.value.exit_code == 64
    assert caught.value.message == (
        f"{server.url}mapping_file.json: refusing plain http: the mapping file decides what is "
        "safe to install and the images' names decide their versions (use https, a file, or "
        "--allow-insecure-http for a lab mirror)"
    )


def test_allow_insecure_http_works_and_says_so(
    images: dict[str, bytes], cache_dir: Path, tuning: Tuning
) -> None:
    with (
        MirrorServer(repo=images) as server,
        open_mirror(server, None, cache_dir, tuning, allow_insecure_http=True) as repo,
    ):
        listing(repo)
        assert fetch(repo, ref_of(repo, NEWEST)) == images[NEWEST]
        warnings = dict(repo.warnings)
    assert warnings == {
        "insecure-http": f"--allow-insecure-http: {server.url}mapping_file.json, {server.url} is "
        "plain http: anyone on the network path can choose which modules are offered (images "
        "are still signature-checked)"
    }


def test_a_redirect_from_https_to_plain_http_is_refused(
    mirror: MirrorServer, images: dict[str, bytes], bundle: Path, cache_dir: Path, tuning: Tuning
) -> None:
    with MirrorServer(repo=images) as plain:
        mirror.inject(MAPPING, Redirect(f"{plain.url}mapping_file.json"))
        with open_mirror(mirror, bundle, cache_dir, tuning) as repo:
            error = _fails(repo)
    assert error.message == (
        f"{mirror.url}mapping_file.json: redirected to {plain.url}mapping_file.json, which is "
        "plain http (refused; --allow-insecure-http lifts this for a lab mirror)"
    )
    assert store(cache_dir, "mappings") == []


def test_an_https_redirect_is_followed(
    mirror: MirrorServer, bundle: Path, cache_dir: Path, tuning: Tuning
) -> None:
    mirror.inject(MAPPING, Redirect(f"{mirror.url}current/mapping_file.json", code=301))
    doc = json.dumps(mapping_document(["1.5.06"])).encode()
    mirror.put("/current/mapping_file.json", doc)
    with open_mirror(mirror, bundle, cache_dir, tuning) as repo:
        assert [str(r.version) for r in repo.catalog().releases] == ["1.5.06"]


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (None, "--ca-bundle {path}: no such file"),
        (b"not a certificate\n", "--ca-bundle {path}: not a PEM certificate bundle ("),
    ],
    ids=["missing", "not-pem"],
)
def test_a_bad_ca_bundle_is_a_usage_error(
    tmp_path: Path, cache_dir: Path, tuning: Tuning, content: bytes | None, expected: str
) -> None:
    path = tmp_path / "ca.pem"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(UsageError) as caught:
        open_mirror("https://mirror.example/tdx/", path, cache_dir, tuning)
    assert caught.value.message.startswith(expected.format(path=path))


def test_an_unsupported_url_scheme_is_a_usage_error(cache_dir: Path, tuning: Tuning) -> None:
    with pytest.raises(UsageError) as caught:
        open_mirror("ftp://mirror.example/tdx/", None, cache_dir, tuning)
    assert caught.value.message == (
        "--repo ftp://mirror.example/tdx/: unsupported URL (use https://…, http://… with "
        "--allow-insecure-http, file://… or a directory)"
    )


def test_a_password_in_the_url_is_used_but_never_shown_or_stored(
    mirror: MirrorServer, bundle: Path, cache_dir: Path, tuning: Tuning
) -> None:
    url = mirror.url.replace("https://", "https://fleet:s3cret@")
    with open_mirror(url, bundle, cache_dir, tuning) as repo:
        listing(repo)
        shown = repo.location
        ref = ref_of(repo, NEWEST)
        fetch(repo, ref)
        mirror.remove(blob("1.5.06"))
        error = _fails(repo, "read", ref_of(repo, "1.5.06"))
    assert "s3cret" not in shown
    assert "s3cret" not in ref.location
    assert "fleet:***@" in shown
    assert "s3cret" not in error.message
    assert all(r.headers.get("authorization", "").startswith("Basic ") for r in mirror.log)
    for path in (cache_dir / "remote").rglob("*"):
        if path.is_file():
            assert b"s3cret" not in path.read_bytes()


def test_local_images_with_a_mapping_from_the_mirror(
    mirror: MirrorServer,
    bundle: Path,
    cache_dir: Path,
    tuning: Tuning,
    images: dict[str, bytes],
    tmp_path: Path,
) -> None:
    root = write_repo(tmp_path / "repo", {"1.5.06": images["1.5.06"]})
    (root / "mapping_file.json").unlink()
    with open_remote(
        root.as_uri(),
        f"{mirror.url}mapping_file.json",
        MirrorOptions(cache_dir=cache_dir, ca_bundle=bundle, tuning=tuning),
    ) as repo:
        catalog = repo.catalog()
        refs = repo.images(catalog)
        head, size = repo.head(refs[Version.parse("1.5.06")])
    assert len(catalog.releases) == len(FORMATS)
    assert list(refs) == [Version.parse("1.5.06")]
    assert (head, size) == (images["1.5.06"][:HEAD_SIZE], IMAGE_SIZE)
    assert [r.path for r in mirror.log] == [MAPPING]


# --------------------------------------------------------------------------------------------
# Proxy and progress


def test_https_proxy_from_the_environment_tunnels_with_the_internal_ca(
    mirror: MirrorServer,
    bundle: Path,
    cache_dir: Path,
    tuning: Tuning,
    monkeypatch: pytest.MonkeyPatch,
    images: dict[str, bytes],
) -> None:
    with ConnectProxy() as proxy:
        monkeypatch.setenv("HTTPS_PROXY", proxy.url)
        with open_mirror(mirror, bundle, cache_dir, tuning) as repo:
            listing(repo)
            assert fetch(repo, ref_of(repo, NEWEST)) == images[NEWEST]
        tunnels = proxy.tunnels
    assert tunnels
    assert set(tunnels) == {f"127.0.0.1:{mirror.port}"}
    assert len(mirror.log) == 1 + len(FORMATS) + 1


def test_no_proxy_bypasses_the_proxy(
    mirror: MirrorServer,
    bundle: Path,
    cache_dir: Path,
    tuning: Tuning,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with ConnectProxy() as proxy:
        monkeypatch.setenv("HTTPS_PROXY", proxy.url)
        monkeypatch.setenv("NO_PROXY", "127.0.0.1")
        with open_mirror(mirror, bundle, cache_dir, tuning) as repo:
            repo.catalog()
        assert proxy.tunnels == []
    assert len(mirror.log) == 1


@pytest.mark.parametrize("interactive", [True, False], ids=["terminal", "pipe"])
def test_a_progress_bar_is_drawn_only_for_a_terminal(
    mirror: MirrorServer,
    bundle: Path,
    cache_dir: Path,
    tuning: Tuning,
    capsys: pytest.CaptureFixture[str],
    interactive: bool,
) -> None:
    from tdxupdate import log
    from tdxupdate.cli import _download_progress

    log.setup(0)  # log to this test's stderr, not to a stream an earlier test closed
    # The command line's choice: a bar on a terminal, nothing on a pipe.
    progress = _download_progress(Settings(interactive=interactive))
    assert (progress is not None) == interactive
    with open_mirror(mirror, bundle, cache_dir, tuning, progress=progress) as repo:
        listing(repo)
        fetch(repo, ref_of(repo, NEWEST))
    captured = capsys.readouterr()
    assert captured.out == ""
    if interactive:
        assert f"downloading tdx_module_{NEWEST}.blob" in captured.err
    else:
        # only the notice naming the TLS store (logged when a handler is installed), no bar
        others = [ln for ln in captured.err.splitlines() if "TLS certificates" not in ln]
        assert others == []


# --------------------------------------------------------------------------------------------
# Imports


def test_requests_is_imported_only_when_a_url_needs_it(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "from tdxupdate import inventory, sources\n"
        "from tdxupdate.sources import cache, http, local, mirror, netfail\n"
        "assert 'requests' not in sys.modules, 'imported by the modules'\n"
        "from tdxupdate.settings import Settings\n"
        f"repo = inventory.open_repo(Settings(repo={str(tmp_path)!r}))\n"
        "assert type(repo).__name__ == 'LocalRepository'\n"
        "assert 'requests' not in sys.modules, 'imported for a local repository'\n"
        f"r = mirror.open_remote('https://mirror.example/', None, mirror.MirrorOptions("
        f"cache_dir=__import__('pathlib').Path({str(tmp_path / 'c')!r}), offline=True))\n"
        "assert 'requests' not in sys.modules, 'imported for --offline'\n"
        "print('ok')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False
    )
    assert (result.returncode, result.stdout, result.stderr) == (0, "ok\n", "")


# --------------------------------------------------------------------------------------------
# End to end: the lead's actions over a mirror, onto the emulated host


@pytest.fixture(scope="module")
def sim_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The emulator's sample repository and key, made once for this module."""
    return tmp_path_factory.mktemp("sim-cache")


@contextlib.contextmanager
def emulated_host(sim_cache: Path) -> Iterator[SimHost]:
    from tdxupdate.sim import simulated_host
    from tdxupdate.sim.mount import fuse_problem

    problem = fuse_problem()
    if problem is not None:
        pytest.skip(f"the emulated host needs FUSE: {problem}")
    with simulated_host("spr", cache_dir=sim_cache) as sim:
        yield sim


def publish(server: MirrorServer, root: Path) -> dict[str, bytes]:
    """Serve a local repository's files on the mirror; returns path -> bytes."""
    published: dict[str, bytes] = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_file() and not any(part.startswith(".") for part in rel.split("/")):
            published["/" + rel] = path.read_bytes()
            server.put("/" + rel, published["/" + rel])
    return published


def mirror_settings(server: MirrorServer, bundle: Path, tmp_path: Path, **over: object) -> Settings:
    base: dict[str, object] = {
        "action": "update",
        "repo": server.url,
        "ca_bundle": bundle,
        "cache_dir": tmp_path / "cache",
        "state_dir": tmp_path / "state",
    }
    base.update(over)
    return Settings(**base)  # type: ignore[arg-type]


@pytest.mark.fuse
def test_update_from_the_mirror_onto_the_emulated_host_moves_the_image_once(
    ca: trustme.CA,
    bundle: Path,
    tmp_path: Path,
    sim_cache: Path,
    tuning: Tuning,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from tdxupdate.cli import run_action

    with_tuning(monkeypatch, tuning)
    with emulated_host(sim_cache) as sim, MirrorServer(tls=ca) as server:
        published = publish(server, sim.repo)
        settings = mirror_settings(
            server, bundle, tmp_path, sysroot=sim.sysroot, extra_signers=sim.trusted_signers
        )
        start = sim.state()["module_version"]

        plan = run_action(replace(settings, dry_run=True))
        assert plan.error is None, plan.error
        target = plan.document()["to_version"]
        path = "/" + plan.document()["selected"]["path"].removeprefix(server.url)
        assert plan.document()["selected"]["path"] == server.url + path.lstrip("/")
        # the dry run listed every image by its first two pages and read the chosen one whole
        assert server.body_bytes(path) == HEAD_SIZE + len(published[path])
        assert sim.state()["uploads"] == []
        server.reset_log()

        done = run_action(settings)
        assert done.error is None, done.error
        assert (done.document()["changed"], done.document()["to_version"]) == (True, target)
        state = sim.state()
        assert start != target
        assert state["module_version"] == target
        # the real run moved no image bytes: every image request was a revalidation (the
        # sample mapping also lists a version without an image: that one stays a 404)
        assert image_bytes(server) == 0
        assert {r.status for r in server.requests(suffix=".blob")} <= {304, 404}
        assert state["received_sha256"] == sha(
            imagebuild.convert(published[path], int(state["uploads"][-1]["format"], 16))
        )
        history = (tmp_path / "state" / "history.jsonl").read_text().splitlines()
        assert json.loads(history[-1])["image_sha256"] == sha(published[path])
        server.reset_log()

        again = run_action(settings)
        assert again.error is None
        assert again.document()["changed"] is False
        assert image_bytes(server) == 0
        assert server.body_bytes(MAPPING) == 0


@pytest.mark.fuse
@pytest.mark.parametrize(
    "faults",
    [
        [Short(5000)] * 4,
        [Status(503)] * 4,
        [Drop()] * 4,
        "impostor",
    ],
    ids=["truncated", "5xx", "dropped", "different-image"],
)
def test_a_network_fault_while_downloading_sends_nothing_to_the_kernel(
    ca: trustme.CA,
    bundle: Path,
    tmp_path: Path,
    sim_cache: Path,
    tuning: Tuning,
    monkeypatch: pytest.MonkeyPatch,
    faults: list[Fault] | str,
) -> None:
    from tdxupdate.cli import run_action

    with_tuning(monkeypatch, tuning)
    with emulated_host(sim_cache) as sim, MirrorServer(tls=ca) as server:
        published = publish(server, sim.repo)
        settings = mirror_settings(
            server, bundle, tmp_path, sysroot=sim.sysroot, extra_signers=sim.trusted_signers
        )
        plan = run_action(replace(settings, dry_run=True, cache_dir=tmp_path / "plan-cache"))
        assert plan.error is None, plan.error
        path = "/" + plan.document()["selected"]["path"].removeprefix(server.url)
        if isinstance(faults, str):  # "impostor"
            other = next(p for p in published if p.endswith(".blob") and p != path)
            injected: list[Fault] = [Pass(), Body(published[other])]
        else:
            injected = [Pass(), *faults]
        server.inject(path, *injected)

        report = run_action(settings)
        state = sim.state()
    assert report.error is not None
    assert (report.error.code, report.error.exit_code) == ("network-error", 74)
    assert report.error.message.startswith(server.url + path.lstrip("/") + ": ")
    assert state["uploads"] == []
    assert state["received_size"] == 0
    assert not (tmp_path / "state" / "history.jsonl").exists()
    assert store(tmp_path / "cache", "images") == []


# --------------------------------------------------------------------------------------------
# Waiting for the lead's side (see the issue 5 report): strict, so they fail once it lands and
# the marker must go.


def _host_settings(server: MirrorServer, bundle: Path, tmp_path: Path, **over: object) -> Settings:
    from factories.hosts import build_host_tree

    sysroot = tmp_path / "host"
    if not sysroot.exists():
        build_host_tree(sysroot, generation="G5", module="1.5.06", seamldr="1.5.00")
    return mirror_settings(
        server,
        bundle,
        tmp_path,
        action="list",
        sysroot=sysroot,
        extra_signers=trusted_signers(),
        **over,
    )


def test_list_from_a_mirror_shows_a_404_image_as_missing(
    mirror: MirrorServer,
    bundle: Path,
    tmp_path: Path,
    tuning: Tuning,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from tdxupdate.cli import run_action

    with_tuning(monkeypatch, tuning)
    mirror.remove(blob("1.5.08"))
    report = run_action(_host_settings(mirror, bundle, tmp_path))
    assert report.error is None, report.error
    by_version = {c["version"]: c for c in report.document()["candidates"]}
    assert by_version["1.5.08"]["reasons"] == ["image-missing"]
    assert by_version["1.5.08"]["path"] is None
    assert by_version["1.5.09"]["eligible"] is True


def test_list_from_the_cache_offline_carries_the_age_warning(
    mirror: MirrorServer,
    bundle: Path,
    tmp_path: Path,
    tuning: Tuning,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from tdxupdate.cli import run_action

    with_tuning(monkeypatch, tuning)
    online = run_action(_host_settings(mirror, bundle, tmp_path))
    assert online.error is None, online.error
    mirror.reset_log()
    report = run_action(_host_settings(mirror, bundle, tmp_path, offline=True))
    assert report.error is None, report.error
    assert "offline-cache" in report.warnings
    assert report.document()["candidates"] == online.document()["candidates"]
    assert mirror.log == []


def test_cli_list_json_from_a_mirror_with_the_remote_options(
    mirror: MirrorServer,
    bundle: Path,
    tmp_path: Path,
    tuning: Tuning,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from factories.hosts import build_host_tree

    from tdxupdate.cli import main

    with_tuning(monkeypatch, tuning)
    sysroot = build_host_tree(tmp_path / "host", generation="G5", module="1.5.06", seamldr="1.5.00")
    keys = tmp_path / "keys"
    keys.write_text("\n".join(sorted(trusted_signers())) + "\n")
    argv = [
        "--list", "--json", "--sysroot", str(sysroot), "--repo", mirror.url,
        "--ca-bundle", str(bundle), "--cache-dir", str(tmp_path / "cache"),
        "--trusted-keys", str(keys), "--state-dir", str(tmp_path / "state"),
    ]  # fmt: skip
    assert main(argv) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [(c["version"], c["eligible"]) for c in doc["candidates"]] == [
        ("2.0.02", False),
        ("1.5.09", True),
        ("1.5.08", True),
        ("1.5.06", False),
    ]
    mirror.reset_log()
    assert main([*argv, "--offline"]) == 0
    assert mirror.log == []
    out = capsys.readouterr()
    assert "offline-cache" in json.loads(out.out)["warnings"]
    assert "tdxupdate: warning: offline: the mapping file is the copy of" in out.err


#: A reason phrase a hostile mirror sends: a carriage return and a NEL to start a line of its
#: own that looks like a genuine summary, and escape sequences (CSI via ESC and via C1 0x9b).
FORGED_REASON = "Oops\rtdxupdate: update: 1.5.06 -> 1.5.09 result=success\x85\x1b[2J\x9b31m"


def test_a_forged_reason_phrase_is_escaped_in_the_error_and_the_log(
    mirror: MirrorServer,
    bundle: Path,
    cache_dir: Path,
    tuning: Tuning,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import io
    import logging

    from tdxupdate import log as _log

    mirror.inject(MAPPING, *[Status(404, reason=FORGED_REASON)] * 4)
    with open_mirror(mirror, bundle, cache_dir, tuning) as repo:
        error = _fails(repo)
    assert error.message.isprintable()
    assert "\\x0d" in error.message
    assert "\\x1b[2J" in error.message
    assert "\\x9b" in error.message
    stream = io.StringIO()
    logger = logging.getLogger("tdxupdate.test-forged")
    handler = logging.StreamHandler(stream)
    handler.setFormatter(_log.Formatter())
    logger.addHandler(handler)
    try:
        logger.error(error.message)
    finally:
        logger.removeHandler(handler)
    out = stream.getvalue()
    assert out.count("\n") == 1
    assert out.startswith("tdxupdate: ")
    assert "\x1b" not in out
    assert "\r" not in out
    assert "\x85" not in out
    assert "\x9b" not in out


@pytest.mark.parametrize("url", ["https://[::1/tdx/", "https://[::1]:99999/tdx/"])
def test_a_malformed_url_is_a_usage_error(cache_dir: Path, tuning: Tuning, url: str) -> None:
    with pytest.raises(UsageError) as caught:
        open_mirror(url, None, cache_dir, tuning)
    assert caught.value.exit_code == 64
    assert caught.value.message.startswith(f"--repo {url}: malformed URL (")


# --------------------------------------------------------------------------------------------
# --verify of a mirror reports every image (issue 9 item 7)


def verify_settings(server: MirrorServer, bundle: Path, tmp_path: Path) -> Settings:
    return mirror_settings(
        server, bundle, tmp_path, action="verify", extra_signers=trusted_signers()
    )


def _by_version(report: object) -> dict[str, dict[str, object]]:
    return {e["version"]: e for e in report.document()["images"]}  # type: ignore[attr-defined]


def _url_of(server: MirrorServer, version: str) -> str:
    return server.url + blob(version).lstrip("/")


def test_verify_of_a_mirror_reports_a_missing_image_and_checks_the_others(
    mirror: MirrorServer,
    bundle: Path,
    tmp_path: Path,
    tuning: Tuning,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from tdxupdate.cli import run_action

    with_tuning(monkeypatch, tuning)
    mirror.remove(blob("1.5.08"))
    report = run_action(verify_settings(mirror, bundle, tmp_path))
    assert report.error is not None
    assert (report.error.code, report.error.exit_code) == ("image-not-found", 66)
    assert report.error.message == (
        f"1 of 4 image(s) failed verification: {_url_of(mirror, '1.5.08')} (not found)"
    )
    entries = _by_version(report)
    assert list(entries) == ["2.0.02", "1.5.09", "1.5.08", "1.5.06"]
    missing = entries["1.5.08"]
    assert missing["ok"] is False
    assert missing["path"] == _url_of(mirror, "1.5.08")
    checks = missing["checks"]
    assert checks[0] == {  # type: ignore[index]
        "name": "container",
        "ok": False,
        "detail": f"{_url_of(mirror, '1.5.08')}: HTTP 404 Not Found",
    }
    assert {c["detail"] for c in checks[1:]} == {  # type: ignore[index]
        "not checked: the image could not be read"
    }
    assert all(entries[v]["ok"] for v in ("2.0.02", "1.5.09", "1.5.06"))


def test_verify_precedence_a_bad_image_over_a_network_failure_over_a_missing_one(
    mirror: MirrorServer,
    bundle: Path,
    tmp_path: Path,
    tuning: Tuning,
    images: dict[str, bytes],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from tdxupdate.cli import run_action

    with_tuning(monkeypatch, tuning)
    mirror.remove(blob("1.5.08"))
    mirror.inject(blob("1.5.06"), *[Short(5000)] * 4)
    report = run_action(verify_settings(mirror, bundle, tmp_path))
    assert report.error is not None
    assert (report.error.code, report.error.exit_code) == ("network-error", 74)
    assert report.error.message == (
        f"2 of 4 image(s) failed verification: {_url_of(mirror, '1.5.08')} (not found), "
        f"{_url_of(mirror, '1.5.06')} (not fetched)"
    )
    fetched = _by_version(report)["1.5.06"]["checks"][0]  # type: ignore[index]
    assert fetched["detail"].startswith(f"{_url_of(mirror, '1.5.06')}: body truncated")
    assert _by_version(report)["2.0.02"]["ok"] is True

    mirror.inject(blob("1.5.06"), *[Short(5000)] * 4)
    mirror.inject(blob("1.5.09"), Body(images["1.5.06"]))  # served under another name
    report = run_action(verify_settings(mirror, bundle, tmp_path / "no-cache"))
    assert (report.error.code, report.error.exit_code) == ("image-invalid", 65)
    assert len(report.document()["images"]) == 4
    assert [e["ok"] for e in report.document()["images"]] == [True, False, False, False]


@pytest.mark.parametrize(
    ("fault", "token", "code"),
    [(Status(503), "network-error", 74), (Status(404), "mapping-not-found", 66)],
    ids=["unfetchable", "missing"],
)
def test_verify_stops_when_the_mapping_cannot_be_had(
    mirror: MirrorServer,
    bundle: Path,
    tmp_path: Path,
    tuning: Tuning,
    monkeypatch: pytest.MonkeyPatch,
    fault: Status,
    token: str,
    code: int,
) -> None:
    from tdxupdate.cli import run_action

    with_tuning(monkeypatch, tuning)
    mirror.inject(MAPPING, *[fault] * 4)
    report = run_action(verify_settings(mirror, bundle, tmp_path))
    assert (report.error.code, report.error.exit_code) == (token, code)
    assert report.document()["images"] == []
    assert mirror.requests(suffix=".blob") == []


def test_cli_verify_json_of_a_mirror_agrees_with_the_exit_status(
    mirror: MirrorServer,
    bundle: Path,
    tmp_path: Path,
    tuning: Tuning,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from tdxupdate.cli import main

    with_tuning(monkeypatch, tuning)
    mirror.remove(blob("1.5.08"))
    mirror.inject(blob("1.5.06"), *[Drop()] * 4)
    keys = tmp_path / "keys"
    keys.write_text("\n".join(sorted(trusted_signers())) + "\n")
    argv = [
        "--verify", "--repo", mirror.url, "--ca-bundle", str(bundle),
        "--cache-dir", str(tmp_path / "cache"), "--trusted-keys", str(keys),
        "--state-dir", str(tmp_path / "state"),
    ]  # fmt: skip
    assert main([*argv, "--json"]) == 74
    out, err = capsys.readouterr()
    doc = json.loads(out)
    assert (doc["ok"], doc["error"]["code"], doc["error"]["exit_code"]) == (
        False,
        "network-error",
        74,
    )
    assert [e["ok"] for e in doc["images"]] == [True, True, False, False]
    assert err.count("tdxupdate: 2 of 4 image(s) failed verification: ") == 1

    mirror.inject(blob("1.5.06"), *[Drop()] * 4)
    assert main(argv) == 74
    out, err = capsys.readouterr()
    assert "1.5.08" in out
    assert "1.5.06" in out  # the text report lists every image
    errors = [line for line in err.splitlines() if "failed verification" in line]
    assert len(errors) == 1


# --------------------------------------------------------------------------------------------
# A malformed URL on the command line or in the configuration file (issue 9 item 7)

MALFORMED = "https://[::1/x"


@pytest.mark.parametrize("action", ["--verify", "--list", "--update"])
@pytest.mark.parametrize("as_json", [False, True], ids=["text", "json"])
@pytest.mark.parametrize("where", ["argv", "config", "mapping"])
def test_cli_a_malformed_url_is_a_usage_or_config_error_never_70(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    action: str,
    as_json: bool,
    where: str,
) -> None:
    from factories.hosts import build_host_tree

    from tdxupdate.cli import main

    monkeypatch.delenv("TDXUPDATE_CONFIG", raising=False)
    monkeypatch.delenv("TDXUPDATE_REPO", raising=False)
    sysroot = build_host_tree(tmp_path / "host", generation="G5", module="1.5.06", seamldr="1.5.00")
    argv = [
        action, "--sysroot", str(sysroot), "--state-dir", str(tmp_path / "state"),
        "--cache-dir", str(tmp_path / "cache"),
    ]  # fmt: skip
    conf = tmp_path / "tdxupdate.conf"
    conf.write_text("# site policy\n")
    if where == "argv":
        argv += ["--repo", MALFORMED]
        expected, token = 64, "usage"
        line = f"tdxupdate: --repo {MALFORMED}: malformed URL ("
    elif where == "mapping":
        argv += ["--repo", str(tmp_path), "--mapping", MALFORMED]
        expected, token = 64, "usage"
        line = f"tdxupdate: --mapping {MALFORMED}: malformed URL ("
    else:
        conf.write_text(f'# site policy\nrepo = "{MALFORMED}"\n')
        expected, token = 78, "config-invalid"
        line = f'tdxupdate: {conf}:2: repo: malformed URL "{MALFORMED}" ('
    argv += ["--config", str(conf)]
    if as_json:
        argv.append("--json")
    assert main(argv) == expected
    out, err = capsys.readouterr()
    lines = err.splitlines()
    assert lines[0].startswith(line), err
    assert "malformed URL" not in "".join(lines[1:]), err
    # --update adds its one-line summary for the journal; nothing else is said
    summary = [f"tdxupdate: update: from=1.5.06 to=unknown result={token} exit_code={expected}"]
    assert lines[1:] == (summary if action == "--update" and where != "config" else []), err
    if as_json:
        doc = json.loads(out)
        assert (doc["ok"], doc["error"]["code"], doc["error"]["exit_code"]) == (
            False,
            token,
            expected,
        )
    else:
        assert out == ""


def test_vv_logs_every_request_and_its_answer(
    mirror: MirrorServer,
    bundle: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``-vv``: each GET with the headers sent (a Range for a listing) and the answer, the URL
    without credentials, the server's words made safe (issue 9 item 19)."""
    from factories.hosts import build_host_tree

    from tdxupdate.cli import main

    sysroot = build_host_tree(tmp_path / "host", generation="G5", module="1.5.06", seamldr="1.5.00")
    keys = tmp_path / "keys"
    keys.write_text("\n".join(sorted(trusted_signers())) + "\n")
    argv = [
        "--list", "-vv", "--sysroot", str(sysroot), "--repo", mirror.url,
        "--ca-bundle", str(bundle), "--cache-dir", str(tmp_path / "cache"),
        "--trusted-keys", str(keys),
    ]  # fmt: skip
    assert main(argv) == 0
    err = capsys.readouterr().err.splitlines()
    gets = [line for line in err if line.startswith("tdxupdate: debug: GET ")]
    assert f"tdxupdate: debug: GET {mirror.url.rstrip('/')}{MAPPING}: HTTP 200 OK" in "\n".join(
        gets
    )
    ranged = [line for line in gets if "(Range: bytes=0-" in line and blob(NEWEST) in line]
    assert ranged
    assert "HTTP 206" in ranged[0]
    assert main([a for a in argv if a != "-vv"]) == 0
    assert "debug:" not in capsys.readouterr().err
