"""HTTP transport for module mirrors: one session, its timeouts, retries and deadlines.

Implements the transport half of issue 5 and cli-contract.md §1 (``--ca-bundle``,
``--allow-insecure-http``) and §2 (``network-error`` 74); :mod:`tdxupdate.sources.mirror` is
the repository built on it.

Transport rules: one ``requests.Session``; connect and read timeouts; retries with exponential
backoff on connection failures, timeouts, truncated bodies and HTTP 429/5xx, honouring
``Retry-After``; two deadlines the read timeout alone cannot give (a mirror sending one byte every
few seconds never trips it): one per attempt, from the TLS handshake through the headers to the
last body byte, and one for all the requests, retries and waits of a run, after which the mirror
is given up (``network-error``; a request that has not got its headers by the deadline is
abandoned, a watchdog shuts the socket when a deadline passes inside a blocking read of the body,
the socket timeouts never exceed the time left, and no wait between retries reaches past the
run's deadline); TLS verification always on
(``--ca-bundle`` adds an internal CA); proxies from the environment (``HTTPS_PROXY``,
``NO_PROXY``); ``Accept-Encoding: identity`` so lengths and ranges are byte-exact. Plain ``http``
is refused unless ``--allow-insecure-http`` (:mod:`tdxupdate.sources.mirror` says why), also
after a redirect.

How a failed attempt is put into words is :mod:`tdxupdate.sources.netfail`. Nothing here imports
``requests`` until a client is made.
"""

from __future__ import annotations

import contextlib
import email.utils
import http
import logging
import socket
import ssl
import time
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

from tdxupdate import __version__
from tdxupdate import log as _log
from tdxupdate.errors import IOFailure, UsageError
from tdxupdate.sources.netfail import (
    NetworkFailure,
    describe,
    one_line,
    received_bytes,
    truncation,
)

_LOG = logging.getLogger(__name__)

if TYPE_CHECKING:  # pragma: no cover
    import requests

#: Statuses worth another attempt (RFC 9110: the server says "later", or a proxy failed).
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})


@dataclass(frozen=True)
class Tuning:
    """Timeouts and retry schedule; tests shrink them (and record ``sleep`` instead of sleeping)."""

    connect_timeout: float = 10.0
    read_timeout: float = 30.0
    #: attempts after the first one
    retries: int = 3
    #: the first wait; it doubles with each retry, up to ``max_backoff``
    backoff: float = 1.0
    max_backoff: float = 30.0
    #: a ``Retry-After`` longer than this is not waited for: the failure is reported instead
    max_retry_after: float = 120.0
    chunk_size: int = 64 * 1024
    #: one attempt, from sending the request to the last body byte: the read timeout starts
    #: again with every byte, so a mirror trickling one byte at a time never trips it; this does
    request_deadline: float = 60.0
    #: every request of one run (one :class:`HttpClient`) with its retries and waits: a mirror
    #: that trickles or keeps failing is given up within this much time spent on the network
    run_deadline: float = 120.0
    sleep: Callable[[float], None] = field(default=time.sleep)
    #: the clock the deadlines are measured with (monotonic; tests inject a fake one)
    clock: Callable[[], float] = field(default=time.monotonic)


def user_agent() -> str:
    import requests

    return f"tdxupdate/{__version__} python-requests/{requests.__version__}"


# ---------------------------------------------------------------------------------------------
# URLs


def redact(url: str) -> str:
    """``url`` without a password, for messages and cache keys (never written to disk)."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
    except ValueError:  # not a URL at all (a malformed IPv6 literal): nothing to redact
        return url
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def web_url(text: str, option: str) -> str:
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 - raises ValueError for a port out of range or not a number
    except ValueError as exc:
        # urllib raises ValueError for "https://[::1/x" or "https://h:99999/": a usage error
        # like any other URL that cannot be used, never an internal one.
        raise UsageError(f"{option} {text}: malformed URL ({exc})") from None
    if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
        raise UsageError(
            f"{option} {redact(text)}: unsupported URL (use https://…, http://… with "
            "--allow-insecure-http, file://… or a directory)"
        )
    return text


def as_base_url(text: str) -> str:
    """The repository URL as a base for relative references: it must end with a slash."""
    parts = urlsplit(text)
    path = parts.path if parts.path.endswith("/") else parts.path + "/"
    return urlunsplit(parts._replace(path=path))


def is_plain_http(url: str | None) -> bool:
    return url is not None and urlsplit(url).scheme.lower() == "http"


@dataclass
class Response:
    """A response whose body (if any) was read completely and has the announced length."""

    status: int
    reason: str
    headers: Mapping[str, str]
    body: bytes
    url: str

    @property
    def etag(self) -> str | None:
        return self.headers.get("ETag") or None

    @property
    def last_modified(self) -> str | None:
        return self.headers.get("Last-Modified") or None

    @property
    def status_text(self) -> str:
        return f"HTTP {self.status} {self.reason}".rstrip()


#: Told (bytes received so far, bytes announced or None) as a body arrives; a count smaller
#: than the last one means a retry started the body again.
Progress = Callable[[int, int | None], None]
#: Given an image's file name, a context for one download that yields the :data:`Progress` to
#: tell (or None: nothing to tell). The command line draws its bar with it
#: (``tdxupdate.cli``); sources draw nothing themselves.
DownloadProgress = Callable[[str], AbstractContextManager[Progress | None]]


def _reason(status: int, given: str | None) -> str:
    if given:
        return _log.remote_text(given, limit=80)
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return ""


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delay-seconds or an HTTP-date)."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None or when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - now)


class HttpClient:
    """One ``requests.Session`` with the timeouts, retries and TLS rules of this module."""

    def __init__(
        self,
        *,
        ca_bundle: Path | None = None,
        allow_insecure_http: bool = False,
        tuning: Tuning | None = None,
    ):
        import requests
        from requests.adapters import HTTPAdapter

        self.tuning = tuning if tuning is not None else Tuning()
        #: seconds this client has spent in :meth:`fetch` (retries and waits included), of
        #: ``tuning.run_deadline``
        self.spent = 0.0
        self.allow_insecure_http = allow_insecure_http
        self.verify: str | bool = str(ca_bundle) if ca_bundle is not None else True
        announce_trust_store(ca_bundle)
        session = requests.Session()
        # trust_env (the default) takes HTTPS_PROXY/NO_PROXY from the environment.
        session.headers["User-Agent"] = user_agent()
        # Byte-exact lengths and ranges: no transparent compression (images do not compress).
        session.headers["Accept-Encoding"] = "identity"
        session.max_redirects = 5
        # Retries are ours (they cover the body too, and honour Retry-After the same way on
        # every urllib3 version).
        adapter = HTTPAdapter(max_retries=0)
        session.mount("https://", adapter)
        session.mount("http://", adapter)
        self.session = session

    def close(self) -> None:
        self.session.close()

    def fetch(
        self,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        limit: int,
        what: str,
        progress: Progress | None = None,
    ) -> Response:
        """GET ``url`` with retries. Returns 200/206 (body complete), 304, 404, 410 and 416;
        anything else, a failure after the last retry, or a deadline passed (see
        :class:`Tuning`) raises ``network-error``."""
        clock = self.tuning.clock
        started = clock()
        try:
            return self._fetch(url, headers or {}, limit, what, progress, started)
        finally:
            self.spent += max(0.0, clock() - started)

    def _fetch(
        self,
        url: str,
        headers: Mapping[str, str],
        limit: int,
        what: str,
        progress: Progress | None,
        started: float,
    ) -> Response:
        tuning = self.tuning
        clock = tuning.clock
        run_end = started + max(0.0, tuning.run_deadline - self.spent)
        attempts = tuning.retries + 1
        attempt = 0
        received = 0
        failure = NetworkFailure("no attempt made", retryable=False)
        while attempt < attempts:
            attempt += 1
            try:
                return self._attempt(url, headers, limit, what, progress, run_end)
            except _DeadlinePassed as exc:
                received += exc.received
                if exc.run:
                    failure = NetworkFailure(
                        f"gave up after {tuning.run_deadline:g} s, the time one run may spend "
                        f"on the network (the mirror sent {_size(received)} for this request "
                        f"in {_seconds(clock() - started)} s)",
                        retryable=False,
                    )
                elif exc.in_headers:
                    failure = NetworkFailure(
                        f"gave up after {tuning.request_deadline:g} s (the mirror had not sent "
                        "its response headers in that time)",
                        retryable=True,
                    )
                else:
                    failure = NetworkFailure(
                        f"gave up after {tuning.request_deadline:g} s (the mirror sent "
                        f"{_size(exc.received)} in that time)",
                        retryable=True,
                    )
            except NetworkFailure as exc:
                failure = exc
            if not failure.retryable or attempt >= attempts:
                break
            retry_after = failure.retry_after
            if retry_after is not None:
                if retry_after > tuning.max_retry_after:
                    failure = NetworkFailure(
                        f"{failure.cause}; the server asks to retry after {retry_after:g} s",
                        retryable=False,
                    )
                    break
                delay = retry_after
            else:
                delay = min(tuning.backoff * 2 ** (attempt - 1), tuning.max_backoff)
            if clock() + delay >= run_end:
                # Waiting would end past the run's deadline: say so now instead of sleeping.
                failure = NetworkFailure(
                    f"{failure.cause}; not retried: the next attempt would start after the "
                    f"{tuning.run_deadline:g} s one run may spend on the network",
                    retryable=False,
                )
                break
            tuning.sleep(delay)
        tries = f" (after {attempt} attempts)" if attempt > 1 else ""
        raise IOFailure(f"{redact(url)}: {failure.cause}{tries}", code="network-error")

    def _attempt(
        self,
        url: str,
        headers: Mapping[str, str],
        limit: int,
        what: str,
        progress: Progress | None,
        run_end: float,
    ) -> Response:
        import requests

        tuning = self.tuning
        start = tuning.clock()
        end = min(start + tuning.request_deadline, run_end)
        deadline = _Deadline(end, run=end >= run_end, clock=tuning.clock)
        deadline.check(0)
        host = urlsplit(url).hostname or ""
        left = deadline.left()
        try:
            resp = _within(
                deadline,
                lambda: self.session.get(
                    url,
                    headers=dict(headers),
                    stream=True,
                    # never longer than the time left, so a stall cannot outlast a deadline
                    timeout=(min(tuning.connect_timeout, left), min(tuning.read_timeout, left)),
                    verify=self.verify,
                    allow_redirects=True,
                ),
            )
        except (requests.RequestException, OSError, ValueError) as exc:
            deadline.check(0, slack=_SLACK)
            cause, retryable = describe(exc, tuning, host)
            raise NetworkFailure(cause, retryable=retryable) from exc
        with contextlib.closing(resp):
            if is_plain_http(resp.url) and not self.allow_insecure_http:
                raise NetworkFailure(
                    f"redirected to {redact(resp.url)}, which is plain http "
                    "(refused; --allow-insecure-http lifts this for a lab mirror)",
                    retryable=False,
                )
            status = resp.status_code
            reason = _reason(status, resp.reason)
            _LOG.debug(
                "GET %s%s: HTTP %d %s, %s bytes announced",
                redact(url),
                f" ({', '.join(f'{k}: {v}' for k, v in headers.items())})" if headers else "",
                status,
                reason,
                _log.remote_text(resp.headers.get("Content-Length", "no length")),
            )
            if status in RETRY_STATUSES:
                raise NetworkFailure(
                    f"HTTP {status} {reason}".rstrip(),
                    retryable=True,
                    retry_after=parse_retry_after(resp.headers.get("Retry-After"), time.time()),
                )
            if status in (304, 404, 410, 416):
                return Response(status, reason, resp.headers, b"", resp.url)
            if status not in (200, 206):
                raise NetworkFailure(f"HTTP {status} {reason}".rstrip(), retryable=False)
            with _Watchdog(_socket_of(resp), deadline.left()):
                body = self._read_body(resp, limit, what, host, progress, deadline)
            return Response(status, reason, resp.headers, body, resp.url)

    def _read_body(
        self,
        resp: requests.Response,
        limit: int,
        what: str,
        host: str,
        progress: Progress | None,
        deadline: _Deadline,
    ) -> bytes:
        import requests

        declared = _content_length(resp)
        too_big = f"larger than the largest {what} ({limit} bytes)"
        if declared is not None and declared > limit:
            raise NetworkFailure(
                f"the response announces {declared} bytes, {too_big}", retryable=False
            )
        body = bytearray()
        if progress is not None:
            progress(0, declared)
        try:
            for chunk in resp.iter_content(self.tuning.chunk_size):
                body += chunk
                deadline.check(len(body))
                if len(body) > limit:
                    raise NetworkFailure(f"the body is {too_big}", retryable=False)
                if progress is not None:
                    progress(len(body), declared)
        except (requests.RequestException, OSError) as exc:
            # The watchdog shut the socket, or a read timeout cut to the time left expired.
            deadline.check(received_bytes(exc, len(body)), slack=_SLACK)
            raise NetworkFailure(
                truncation(exc, len(body), declared, self.tuning, host), retryable=True
            ) from exc
        if declared is not None and len(body) != declared:
            raise NetworkFailure(
                f"body truncated: received {len(body)} of {declared} bytes", retryable=True
            )
        return bytes(body)


#: A failure this close to a deadline is the deadline's doing (a socket timeout cut to the time
#: left, or the watchdog's shutdown), not a fault of its own.
_SLACK = 0.05


class _DeadlinePassed(Exception):
    """An attempt ran out of time; ``run`` when it was the run's deadline, not the request's;
    ``in_headers`` when the response had not got past its status line and headers."""

    def __init__(self, *, run: bool, received: int, in_headers: bool = False):
        super().__init__("deadline passed")
        self.run = run
        self.received = received
        self.in_headers = in_headers


@dataclass(frozen=True)
class _Deadline:
    """When the current attempt must be over, on ``clock``."""

    end: float
    run: bool
    clock: Callable[[], float]

    def left(self) -> float:
        return max(0.0, self.end - self.clock())

    def check(self, received: int, *, slack: float = 0.0) -> None:
        if self.clock() >= self.end - slack:
            raise _DeadlinePassed(run=self.run, received=received)


def _within(deadline: _Deadline, request: Callable[[], requests.Response]) -> requests.Response:
    """``request()`` (a streamed GET, which returns once the headers are in), given up when
    ``deadline`` passes.

    Until the headers are in there is no socket for the watchdog to shut, and the read timeout
    starts again with every byte: a mirror trickling its TLS handshake, status line or headers
    (up to 100 lines of 64 KiB each) would otherwise hold the run for as long as it liked. The
    request runs in a worker thread; past the deadline it is abandoned (a response that still
    comes is closed) and the attempt has run out of time (:class:`_DeadlinePassed`). What it
    raised is raised here."""
    import threading

    guard = threading.Lock()
    done = threading.Event()  # set, under guard, when the outcome is in
    abandoned = threading.Event()  # set, under guard, when the caller stopped waiting
    outcome: list[requests.Response | BaseException] = []

    def run() -> None:
        result: requests.Response | BaseException
        try:
            result = request()
        except BaseException as exc:  # raised again in the caller's thread
            result = exc
        with guard:
            if not abandoned.is_set():
                outcome.append(result)
                done.set()
                return
        if not isinstance(result, BaseException):
            with contextlib.suppress(Exception):
                result.close()

    worker = threading.Thread(target=run, name="tdxupdate-http", daemon=True)
    try:
        worker.start()  # waits for the worker to begin: a signal can land here too
        done.wait(deadline.left())
    finally:
        # A signal (raised here as Interrupted) abandons the request just as the deadline does.
        with guard:
            if not done.is_set():
                abandoned.set()
    if not outcome:
        raise _DeadlinePassed(run=deadline.run, received=0, in_headers=True)
    if isinstance(outcome[0], BaseException):
        raise outcome[0]
    return outcome[0]


def _socket_of(resp: requests.Response) -> socket.socket | None:
    """The socket a streamed response reads from (the same attributes on urllib3 1.26 and 2.x),
    or None when it cannot be found (then only the per-chunk check and the timeouts apply)."""
    raw = resp.raw
    sock = getattr(getattr(raw, "_connection", None), "sock", None)
    if not isinstance(sock, socket.socket):
        # http.client's buffered reader over socket.SocketIO
        sock = getattr(
            getattr(getattr(getattr(raw, "_fp", None), "fp", None), "raw", None), "_sock", None
        )
    return sock if isinstance(sock, socket.socket) else None


class _Watchdog:
    """Shuts ``sock`` down when ``seconds`` pass: a read of a 64 KiB chunk from a mirror that
    trickles blocks until the chunk is full, far past any deadline checked between chunks."""

    def __init__(self, sock: socket.socket | None, seconds: float):
        import threading

        self._sock = sock
        self._lock = threading.Lock()
        self._done = False
        self._timer = threading.Timer(max(0.0, seconds), self._fire)
        self._timer.daemon = True

    def _fire(self) -> None:
        with self._lock:
            if self._done or self._sock is None:
                return
            with contextlib.suppress(OSError):
                # The plain socket's shutdown, also for TLS: the SSL layer is busy in the
                # reading thread; the reader then sees the end of the stream.
                socket.socket.shutdown(self._sock, socket.SHUT_RDWR)

    def __enter__(self) -> _Watchdog:
        if self._sock is not None:
            self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            self._done = True
        self._timer.cancel()


def _seconds(value: float) -> str:
    return f"{value:.0f}" if value >= 10 else f"{value:.1f}"


def _size(count: int) -> str:
    """A byte count for people: "812 bytes", "1.2 kB", "3.4 MB"."""
    if count < 1000:
        return f"{count} byte" if count == 1 else f"{count} bytes"
    if count < 1_000_000:
        return f"{count / 1000:.1f} kB"
    return f"{count / 1_000_000:.1f} MB"


def _content_length(resp: requests.Response) -> int | None:
    """The announced body length, when it is the length of the bytes we will see."""
    encoding = resp.headers.get("Content-Encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        return None
    value = resp.headers.get("Content-Length")
    if value is None or not value.strip().isdigit():
        return None
    return int(value.strip())


# ---------------------------------------------------------------------------------------------
# Opening


def trust_store(ca_bundle: Path | None, environ: Mapping[str, str] | None = None) -> str | None:
    """Where TLS certificates are verified from when that is not the system's store.

    ``--ca-bundle`` replaces the system store (an internal mirror's CA only). Without it,
    requests honours ``REQUESTS_CA_BUNDLE`` and then ``CURL_CA_BUNDLE``, which also replace it.
    None means the system's store.
    """
    import os

    env = os.environ if environ is None else environ
    if ca_bundle is not None:
        return f"--ca-bundle {ca_bundle}"
    for name in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        if env.get(name):
            return f"{name}={_log.remote_text(env[name])}"
    return None


def announce_trust_store(ca_bundle: Path | None) -> None:
    store = trust_store(ca_bundle)
    if store is not None:
        _log.notice(f"TLS certificates are verified against {store} only, not the system's store")


def check_ca_bundle(path: Path) -> None:
    try:
        ssl.create_default_context(cafile=str(path))
    except FileNotFoundError as exc:
        raise UsageError(f"--ca-bundle {path}: no such file") from exc
    except (ssl.SSLError, OSError) as exc:
        raise UsageError(
            f"--ca-bundle {path}: not a PEM certificate bundle ({one_line(exc)})"
        ) from exc
