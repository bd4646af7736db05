"""A mirror that trickles is given up (issue 9 item 13): per-attempt and per-run deadlines.

The read timeout starts again with every byte, so a mirror sending one byte every few seconds
never trips it; :class:`tdxupdate.sources.http.Tuning` adds a deadline per attempt (body
included) and one for all the requests, retries and waits of a run. The loopback tests shrink
the deadlines to a second or two and trickle one byte every 0.2 s; each runs the client in a
thread that must finish well within a generous bound, so a regression fails the test instead of
hanging it.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

import pytest
import trustme
from factories.httpserver import (
    MirrorServer,
    ServerThread,
    Status,
    ca_bundle,
    clear_proxy_env,
    tls_context,
    with_tuning,
)
from factories.images import make_image, mapping_document, trusted_signers

from tdxupdate import lock
from tdxupdate.errors import TdxError
from tdxupdate.sources.http import Tuning, parse_retry_after, trust_store
from tdxupdate.sources.mirror import MirrorOptions, open_remote
from tdxupdate.versions import Version

pytestmark = pytest.mark.network

VERSION = "1.5.06"
BLOB = "/joined_files/1.5/tdx_module_1.5.06.blob"
MAPPING = "/mapping_file.json"
#: far beyond every deadline below; far below the ~70 s the trickled mapping takes in full
HANG_GUARD = 30.0
T = TypeVar("T")


# ---------------------------------------------------------------------------------------------
# A mirror that trickles


class _TrickleHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _TrickleServer

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def do_GET(self) -> None:
        server = self.server
        path = self.path.split("?", 1)[0]
        data = server.files.get(path)
        if data is None:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if path in server.slow_headers:
            self._trickle_headers(data)
            return
        self.send_response(200)  # Range ignored: the whole file, as a simple server does
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        try:
            if path not in server.trickle:
                self.wfile.write(data)
                self.wfile.flush()
                return
            self.close_connection = True
            for i in range(len(data)):
                if server.stopping.wait(server.interval):
                    return
                self.wfile.write(data[i : i + 1])
                self.wfile.flush()
                with server.lock:
                    server.sent[path] = server.sent.get(path, 0) + 1
        except OSError:
            pass  # the client gave up: that is the point

    def _trickle_headers(self, data: bytes) -> None:
        """The status line and headers one byte per ``interval`` (a long header among them, so
        they alone take far longer than HANG_GUARD), then the body at once."""
        server = self.server
        self.close_connection = True
        head = (
            f"HTTP/1.1 200 OK\r\nX-Padding: {'p' * 400}\r\nContent-Length: {len(data)}\r\n\r\n"
        ).encode()
        try:
            for i in range(len(head)):
                if server.stopping.wait(server.interval):
                    return
                self.wfile.write(head[i : i + 1])
                self.wfile.flush()
                with server.lock:
                    server.sent[self.path] = server.sent.get(self.path, 0) + 1
            self.wfile.write(data)
            self.wfile.flush()
        except OSError:
            pass


class _TrickleServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, context: Any) -> None:
        self.context = context
        self.files: dict[str, bytes] = {}
        self.trickle: set[str] = set()
        self.slow_headers: set[str] = set()
        self.interval = 0.2
        self.sent: dict[str, int] = {}
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        super().__init__(("127.0.0.1", 0), _TrickleHandler)

    def get_request(self) -> tuple[Any, Any]:
        sock, addr = super().get_request()
        return self.context.wrap_socket(sock, server_side=True), addr


@dataclass
class TrickleMirror:
    """An https mirror on 127.0.0.1 whose ``trickle`` paths send one byte per ``interval``."""

    ca: trustme.CA
    _server: _TrickleServer = field(init=False)

    def __post_init__(self) -> None:
        self._server = _TrickleServer(tls_context(self.ca, ("127.0.0.1",)))
        self.url = f"https://127.0.0.1:{self._server.server_address[1]}/"
        self._thread = ServerThread(self._server, self._server.stopping)

    def put(
        self, path: str, data: bytes, *, trickle: bool = False, slow_headers: bool = False
    ) -> None:
        self._server.files[path] = data
        if trickle:
            self._server.trickle.add(path)
        if slow_headers:
            self._server.slow_headers.add(path)

    def sent(self, path: str) -> int:
        with self._server.lock:
            return self._server.sent.get(path, 0)

    def __enter__(self) -> TrickleMirror:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._thread.stop()


def _mapping() -> bytes:
    return (json.dumps(mapping_document([VERSION]), indent=2) + "\n").encode()


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def bundle(ca: trustme.CA, tmp_path: Path) -> Path:
    return ca_bundle(ca, tmp_path)


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    clear_proxy_env(monkeypatch)


def _mapping_mirror(ca: trustme.CA, **slow: bool) -> Iterator[TrickleMirror]:
    """A mirror whose mapping is served as ``slow`` says; the image is served at once."""
    with TrickleMirror(ca) as mirror:
        mirror.put(MAPPING, _mapping(), **slow)
        mirror.put(BLOB, make_image(VERSION))
        yield mirror


@pytest.fixture
def trickling(ca: trustme.CA) -> Iterator[TrickleMirror]:
    """The mapping's body trickles."""
    yield from _mapping_mirror(ca, trickle=True)


@pytest.fixture
def slow_headers(ca: trustme.CA) -> Iterator[TrickleMirror]:
    """The mapping's status line and headers trickle (its body would then come at once)."""
    yield from _mapping_mirror(ca, slow_headers=True)


def bounded(call: Callable[[], T]) -> T:
    """``call()`` in a thread; the test fails (instead of hanging) when it does not return."""
    outcome: list[Any] = []

    def run() -> None:
        try:
            outcome.append(("ok", call()))
        except BaseException as exc:  # re-raised in the test's thread
            outcome.append(("raised", exc))

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(HANG_GUARD)
    if worker.is_alive():
        pytest.fail(f"still waiting on the trickling mirror after {HANG_GUARD:g} s")
    kind, value = outcome[0]
    if kind == "raised":
        raise value
    return value  # type: ignore[no-any-return]


def small(**over: Any) -> Tuning:
    base: dict[str, Any] = {
        "connect_timeout": 5,
        "read_timeout": 5,
        "retries": 3,
        "backoff": 0.05,
        "request_deadline": 1.0,
        "run_deadline": 1.5,
    }
    base.update(over)
    return Tuning(**base)


def _catalog_of(mirror: TrickleMirror, bundle: Path, tmp_path: Path, tuning: Tuning) -> object:
    """The catalog of ``mirror``, fetched with ``tuning``."""
    with open_remote(
        mirror.url,
        None,
        MirrorOptions(cache_dir=tmp_path / "cache", ca_bundle=bundle, tuning=tuning),
    ) as repo:
        return repo.catalog()


def store(cache_dir: Path, kind: str) -> list[str]:
    directory = cache_dir / "remote" / kind / "sha256"
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


# ---------------------------------------------------------------------------------------------
# The repository


def test_a_trickling_mapping_is_given_up_at_the_run_deadline(
    trickling: TrickleMirror, bundle: Path, tmp_path: Path
) -> None:
    sleeps: list[float] = []
    tuning = small(sleep=sleeps.append)
    with pytest.raises(TdxError) as caught:
        bounded(lambda: _catalog_of(trickling, bundle, tmp_path, tuning))
    error = caught.value
    assert (error.code, error.exit_code) == ("network-error", 74)
    # the first attempt hit the 1 s request deadline and was retried; the second ran into the
    # 1.5 s of the run
    assert error.message.startswith(
        f"{trickling.url}mapping_file.json: gave up after 1.5 s, the time one run may spend on "
        "the network (the mirror sent "
    )
    assert error.message.endswith(" (after 2 attempts)")
    assert sleeps == [0.05]
    assert 0 < trickling.sent(MAPPING) < len(_mapping())
    assert store(tmp_path / "cache", "mappings") == []


def test_one_attempt_is_cut_at_the_request_deadline_and_says_what_came(
    trickling: TrickleMirror, bundle: Path, tmp_path: Path
) -> None:
    tuning = small(retries=0, request_deadline=1.0, run_deadline=30.0)
    with pytest.raises(TdxError) as caught:
        bounded(lambda: _catalog_of(trickling, bundle, tmp_path, tuning))
    message = caught.value.message
    assert caught.value.code == "network-error"
    prefix = f"{trickling.url}mapping_file.json: gave up after 1 s (the mirror sent "
    assert message.startswith(prefix)
    assert message.endswith(" bytes in that time)")
    assert message.isprintable()
    assert "\n" not in message
    # the bytes of the chunk the watchdog cut short are counted too
    assert int(message[len(prefix) :].split()[0]) > 0


def test_trickled_headers_are_cut_at_the_request_deadline(
    slow_headers: TrickleMirror, bundle: Path, tmp_path: Path
) -> None:
    """Before the headers are in there is no socket to shut: the read timeout alone, which
    starts again with every byte, let a mirror hold the run for as long as it liked."""
    tuning = small(retries=0, request_deadline=1.0, run_deadline=30.0)
    with pytest.raises(TdxError) as caught:
        bounded(lambda: _catalog_of(slow_headers, bundle, tmp_path, tuning))
    assert caught.value.code == "network-error"
    assert caught.value.message == (
        f"{slow_headers.url}mapping_file.json: gave up after 1 s (the mirror had not sent its "
        "response headers in that time)"
    )
    assert slow_headers.sent(MAPPING) > 0
    assert store(tmp_path / "cache", "mappings") == []


def test_trickled_headers_are_retried_then_given_up_at_the_run_deadline(
    slow_headers: TrickleMirror, bundle: Path, tmp_path: Path
) -> None:
    sleeps: list[float] = []
    tuning = small(sleep=sleeps.append)
    with pytest.raises(TdxError) as caught:
        bounded(lambda: _catalog_of(slow_headers, bundle, tmp_path, tuning))
    assert caught.value.code == "network-error"
    assert caught.value.message.startswith(
        f"{slow_headers.url}mapping_file.json: gave up after 1.5 s, the time one run may spend "
        "on the network"
    )
    assert caught.value.message.endswith(" (after 2 attempts)")
    assert sleeps == [0.05]


def test_a_trickling_image_leaves_nothing_in_the_cache(
    ca: trustme.CA, bundle: Path, tmp_path: Path
) -> None:
    image = make_image(VERSION)
    cache_dir = tmp_path / "cache"
    with TrickleMirror(ca) as mirror:
        mirror.put(MAPPING, _mapping())
        mirror.put(BLOB, image, trickle=True)

        def read() -> bytes:
            with open_remote(
                mirror.url,
                None,
                MirrorOptions(cache_dir=cache_dir, ca_bundle=bundle, tuning=small(retries=0)),
            ) as repo:
                refs = repo.images(repo.catalog())
                return repo.read(refs[Version.parse(VERSION)])

        with pytest.raises(TdxError) as caught:
            bounded(read)
        assert 0 < mirror.sent(BLOB) < len(image)
    assert caught.value.code == "network-error"
    assert caught.value.message.startswith(f"{mirror.url}{BLOB.lstrip('/')}: gave up after 1 s")
    # the temporary file the body was streamed into is gone, and no index entry names it
    assert store(cache_dir, "images") == []
    index = cache_dir / "remote" / "index"
    assert not index.exists() or all(BLOB not in p.read_text() for p in index.iterdir())


# ---------------------------------------------------------------------------------------------
# The command line


def _cli(argv: list[str]) -> int:
    from tdxupdate.cli import main

    return bounded(lambda: main(argv))


@pytest.mark.parametrize("as_json", [False, True], ids=["text", "json"])
def test_cli_verify_against_a_trickling_mirror_exits_74_with_one_line(
    trickling: TrickleMirror,
    bundle: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    as_json: bool,
) -> None:
    with_tuning(monkeypatch, small())
    argv = [
        "--verify", "--repo", trickling.url, "--ca-bundle", str(bundle),
        "--cache-dir", str(tmp_path / "cache"), "--state-dir", str(tmp_path / "state"),
    ]  # fmt: skip
    code = _cli([*argv, "--json"] if as_json else argv)
    out, err = capsys.readouterr()
    assert code == 74
    lines = [line for line in err.splitlines() if "TLS certificates are verified" not in line]
    assert len(lines) == 1, err
    assert lines[0].startswith(f"tdxupdate: {trickling.url}mapping_file.json: gave up after 1.5 s")
    if as_json:
        doc = json.loads(out)
        assert (doc["ok"], doc["error"]["code"], doc["error"]["exit_code"]) == (
            False,
            "network-error",
            74,
        )
    else:
        assert out == ""


def test_cli_update_gives_up_and_releases_the_lock(
    trickling: TrickleMirror,
    bundle: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from factories.hosts import build_host_tree

    with_tuning(monkeypatch, small())
    sysroot = build_host_tree(tmp_path / "host", generation="G5", module="1.5.06", seamldr="1.5.00")
    keys = tmp_path / "keys"
    keys.write_text("\n".join(sorted(trusted_signers())) + "\n")
    state = tmp_path / "state"
    argv = [
        "--update", "--json", "--sysroot", str(sysroot), "--repo", trickling.url,
        "--ca-bundle", str(bundle), "--cache-dir", str(tmp_path / "cache"),
        "--trusted-keys", str(keys), "--state-dir", str(state),
    ]  # fmt: skip
    assert _cli(argv) == 74
    doc = json.loads(capsys.readouterr().out)
    assert (doc["ok"], doc["error"]["code"], doc["error"]["exit_code"]) == (
        False,
        "network-error",
        74,
    )
    with lock.acquire(state):  # not held any more
        pass
    assert store(tmp_path / "cache", "mappings") == []


# ---------------------------------------------------------------------------------------------
# Retries against the run's deadline, on a fake clock


class FakeClock:
    """Time moves only when the client sleeps."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


@pytest.fixture
def mirror(ca: trustme.CA) -> Iterator[MirrorServer]:
    with MirrorServer(tls=ca, repo={VERSION: make_image(VERSION)}) as server:
        yield server


def test_retries_stop_before_a_wait_would_pass_the_run_deadline(
    mirror: MirrorServer, bundle: Path, tmp_path: Path
) -> None:
    clock = FakeClock()
    tuning = Tuning(retries=10, backoff=1.0, run_deadline=10.0, sleep=clock.sleep, clock=clock)
    mirror.inject(MAPPING, *[Status(503)] * 11)
    with (
        open_remote(
            mirror.url,
            None,
            MirrorOptions(cache_dir=tmp_path / "cache", ca_bundle=bundle, tuning=tuning),
        ) as repo,
        pytest.raises(TdxError) as caught,
    ):
        repo.catalog()
    # 1 + 2 + 4 = 7 s waited; another 8 would end past the 10 s of the run
    assert clock.sleeps == [1.0, 2.0, 4.0]
    assert len(mirror.requests(MAPPING)) == 4
    assert caught.value.code == "network-error"
    assert caught.value.message == (
        f"{mirror.url}mapping_file.json: HTTP 503 Service Unavailable; not retried: the next "
        "attempt would start after the 10 s one run may spend on the network (after 4 attempts)"
    )


def test_a_retry_after_past_the_run_deadline_is_not_waited_for(
    mirror: MirrorServer, bundle: Path, tmp_path: Path
) -> None:
    clock = FakeClock()
    tuning = Tuning(retries=3, run_deadline=10.0, sleep=clock.sleep, clock=clock)
    mirror.inject(MAPPING, Status(503, retry_after="20"))
    with (
        open_remote(
            mirror.url,
            None,
            MirrorOptions(cache_dir=tmp_path / "cache", ca_bundle=bundle, tuning=tuning),
        ) as repo,
        pytest.raises(TdxError) as caught,
    ):
        repo.catalog()
    assert clock.sleeps == []
    assert "not retried: the next attempt would start after the 10 s" in caught.value.message


def test_the_run_deadline_is_shared_by_every_request_of_the_run(
    mirror: MirrorServer, bundle: Path, tmp_path: Path
) -> None:
    clock = FakeClock()
    tuning = Tuning(retries=5, backoff=1.0, run_deadline=4.0, sleep=clock.sleep, clock=clock)
    mirror.inject(MAPPING, Status(503), Status(503))
    mirror.inject(BLOB, Status(503), Status(503))
    with open_remote(
        mirror.url,
        None,
        MirrorOptions(cache_dir=tmp_path / "cache", ca_bundle=bundle, tuning=tuning),
    ) as repo:
        refs = repo.images(repo.catalog())  # 1 + 2 s of waiting: 1 s of the run is left
        assert clock.sleeps == [1.0, 2.0]
        with pytest.raises(TdxError) as caught:
            repo.head(refs[Version.parse(VERSION)])
    # alone, the image would have been retried after 1 s (and arrived); the run had no time left
    assert clock.sleeps == [1.0, 2.0]
    assert len(mirror.requests(BLOB)) == 1
    assert "not retried: the next attempt would start after the 4 s" in caught.value.message


def test_a_passed_run_deadline_fails_the_next_request_without_sending_it(
    mirror: MirrorServer, bundle: Path, tmp_path: Path
) -> None:
    clock = FakeClock()
    tuning = Tuning(retries=3, run_deadline=5.0, sleep=clock.sleep, clock=clock)
    with open_remote(
        mirror.url,
        None,
        MirrorOptions(cache_dir=tmp_path / "cache", ca_bundle=bundle, tuning=tuning),
    ) as repo:
        assert repo.client is not None
        repo.client.spent = 5.0  # the run already spent its time on the network
        with pytest.raises(TdxError) as caught:
            repo.catalog()
    assert mirror.requests(MAPPING) == []
    assert caught.value.message.startswith(
        f"{mirror.url}mapping_file.json: gave up after 5 s, the time one run may spend on the "
        "network (the mirror sent 0 bytes"
    )


# --------------------------------------------------------------------------------------------
# Headers and the trust store


def test_parse_retry_after_takes_seconds_and_http_dates() -> None:
    now = 1_767_225_600.0  # Thu, 01 Jan 2026 00:00:00 GMT
    assert parse_retry_after("120", now) == 120.0
    assert parse_retry_after("Thu, 01 Jan 2026 00:00:30 GMT", now) == 30.0
    assert parse_retry_after("Wed, 31 Dec 2025 23:00:00 GMT", now) == 0.0
    assert parse_retry_after("soon", now) is None
    assert parse_retry_after(None, now) is None


def test_the_trust_store_in_use_is_named_when_it_is_not_the_systems() -> None:
    assert trust_store(None, {}) is None
    assert trust_store(Path("/etc/ca.pem"), {}) == "--ca-bundle /etc/ca.pem"
    assert trust_store(None, {"CURL_CA_BUNDLE": "/x.pem"}) == "CURL_CA_BUNDLE=/x.pem"
    env = {"REQUESTS_CA_BUNDLE": "/r.pem", "CURL_CA_BUNDLE": "/c.pem"}
    assert trust_store(None, env) == "REQUESTS_CA_BUNDLE=/r.pem"


# ---------------------------------------------------------------------------------------------
# Up to the headers: the request in a worker, given up at the deadline


class _Late:
    """A response that arrives after the caller gave up on it."""

    def __init__(self) -> None:
        self.closed = threading.Event()

    def close(self) -> None:
        self.closed.set()


def _deadline(seconds: float) -> Any:
    import time

    from tdxupdate.sources import http as transport

    return transport._Deadline(time.monotonic() + seconds, run=False, clock=time.monotonic)


def test_within_returns_the_response_and_raises_what_the_request_raised() -> None:
    from tdxupdate.sources import http as transport

    answer: Any = _Late()
    assert transport._within(_deadline(5), lambda: answer) is answer

    def refused() -> Any:
        raise ConnectionRefusedError("refused")

    with pytest.raises(ConnectionRefusedError, match="refused"):
        transport._within(_deadline(5), refused)


def test_within_gives_up_at_the_deadline_and_closes_a_response_that_comes_later() -> None:
    from tdxupdate.sources import http as transport

    release = threading.Event()
    late = _Late()

    def stalled() -> Any:
        release.wait(HANG_GUARD)
        return late

    with pytest.raises(transport._DeadlinePassed) as caught:
        transport._within(_deadline(0.2), stalled)
    assert (caught.value.in_headers, caught.value.received, caught.value.run) == (True, 0, False)
    release.set()
    assert late.closed.wait(HANG_GUARD), "the abandoned response was never closed"


def test_a_signal_while_waiting_for_the_headers_abandons_the_request() -> None:
    """The signal's exception leaves the wait; a response that comes afterwards is closed."""
    import os
    import signal

    from tdxupdate.sources import http as transport

    class Stop(Exception):
        pass

    def stop(_signum: int, _frame: object) -> None:
        raise Stop

    release = threading.Event()
    late = _Late()

    def stalled() -> Any:
        os.kill(os.getpid(), signal.SIGUSR1)  # to the main thread, waiting on the outcome
        release.wait(HANG_GUARD)
        return late

    previous = signal.signal(signal.SIGUSR1, stop)
    try:
        with pytest.raises(Stop):
            transport._within(_deadline(HANG_GUARD), stalled)
    finally:
        signal.signal(signal.SIGUSR1, previous)
    release.set()
    assert late.closed.wait(HANG_GUARD), "the abandoned response was never closed"
