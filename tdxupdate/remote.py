"""Module repositories behind a URL: an https mirror with a verified, content-addressed cache.

Implements issue 5 and the remote half of cli-contract.md §1 (``--repo URL``, ``--mapping URL``,
``--cache-dir``, ``--offline``, ``--ca-bundle``, ``--allow-insecure-http``) and §2
(``network-error`` 74, ``mapping-not-found``/``image-not-found`` 66). A mirror has Intel's layout
(image-formats.md §1): ``mapping_file.json`` and ``joined_files/<M>.<m>/tdx_module_<v>.blob``
under a base URL. :func:`open_remote` is what :func:`tdxupdate.sources.open_repository` calls for
a URL; the object it returns implements :class:`tdxupdate.sources.Repository`.

How bytes move (the point of this module):

* :meth:`RemoteRepository.catalog`: one GET of the mapping file, conditional (``If-None-Match``
  / ``If-Modified-Since``) when a copy is cached, so an unchanged mapping costs one 304.
* :meth:`RemoteRepository.images`: no request (HTTP has no directory listing): one ref per
  mapping entry; a 404 on the image surfaces from :meth:`head` as ``image-not-found``.
* :meth:`RemoteRepository.head`: ``Range: bytes=0-8191`` (the header page and the sigstruct's
  first page, all the policy needs), conditional when cached; a server that ignores Range answers
  200 with the whole image, which is then verified and cached so it is never fetched twice.
* :meth:`RemoteRepository.read`: the whole image, conditional when cached, capped at
  :data:`tdxupdate.image.MAX_IMAGE_SIZE`, streamed to a temporary file in the cache.
  A second run against an unchanged mirror therefore moves no image bytes: every request is
  answered 304.

What enters the cache, and what the caller still checks: a body enters the cache only when it
has exactly the announced length and, for an image, when the checks of image-formats.md §4 that
do not depend on local policy pass (container, checksum, SEAMHASH, RSA signature). The trust
list, the version cross-check, the debug bit and the CPU table stay with the caller
(``image.verify`` in ``--update`` and ``--verify``), which sees the same bytes: :meth:`read` also
returns an image that failed those integrity checks (uncached), so the caller reports precisely
which check failed and ``--update`` moves on to the next candidate. What :meth:`read` refuses
outright (``network-error``) is a body that is not what was listed: a different size or different
first 8 KiB than :meth:`head` returned in this run, because the policy decided on those bytes.

Transport rules: one ``requests.Session``; connect and read timeouts; retries with exponential
backoff on connection failures, timeouts, truncated bodies and HTTP 429/5xx, honouring
``Retry-After``; two deadlines the read timeout alone cannot give (a mirror sending one byte every
few seconds never trips it): one per attempt, body included, and one for all the requests, retries
and waits of a run, after which the mirror is given up (``network-error``; a watchdog shuts the
socket when a deadline passes inside a blocking read, the socket timeouts never exceed the time
left, and no wait between retries reaches past the run's deadline); TLS verification always on
(``--ca-bundle`` adds an internal CA); proxies from the environment (``HTTPS_PROXY``,
``NO_PROXY``); ``Accept-Encoding: identity`` so lengths and ranges are byte-exact. Plain ``http``
is refused for the mapping file *and* the images unless ``--allow-insecure-http``: the mapping
decides what is safe to load, and the 1.5.x images carry no version in their sigstruct, so over
plain http an older Intel-signed image could be served under a newer name and pass every signature
check (a silent downgrade).
"""

from __future__ import annotations

import contextlib
import email.utils
import http
import logging
import re
import socket
import ssl
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urljoin, urlsplit, urlunsplit

from tdxupdate import __version__
from tdxupdate import catalog as _catalog
from tdxupdate import image as _image
from tdxupdate import log as _log
from tdxupdate.cache import Cache, Entry, Staged, sha256_hex
from tdxupdate.errors import IOFailure, NotFound, UsageError
from tdxupdate.sources import ImageRef, LocalRepository, blob_relpath, local_path
from tdxupdate.versions import Version

_LOG = logging.getLogger(__name__)

if TYPE_CHECKING:  # pragma: no cover
    import requests

#: Statuses worth another attempt (RFC 9110: the server says "later", or a proxy failed).
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
#: Checks an image must pass to enter the cache (image-formats.md §4.1–§4.3): facts about the
#: bytes themselves, independent of the trust list and the host.
INTEGRITY_CHECKS = ("container", "checksum", "seamhash", "signature")
MAPPING_NAME = "mapping_file.json"


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


DEFAULT_TUNING = Tuning()


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


def _web_url(text: str, option: str) -> str:
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


def _base_url(text: str) -> str:
    """The repository URL as a base for relative references: it must end with a slash."""
    parts = urlsplit(text)
    path = parts.path if parts.path.endswith("/") else parts.path + "/"
    return urlunsplit(parts._replace(path=path))


def _is_plain_http(url: str | None) -> bool:
    return url is not None and urlsplit(url).scheme.lower() == "http"


# ---------------------------------------------------------------------------------------------
# Transport


class NetworkFailure(Exception):
    """One failed attempt: ``cause`` is the half-sentence shown after the URL."""

    def __init__(self, cause: str, *, retryable: bool, retry_after: float | None = None):
        # Causes quote what the server or the network stack said: made printable here, once,
        # so no caller can put a server's text on the terminal or into the log unescaped.
        cause = _log.remote_text(cause, limit=500)
        super().__init__(cause)
        self.cause = cause
        self.retryable = retryable
        self.retry_after = retry_after


@dataclass
class Response:
    """A response whose body (if any) was read completely and has the announced length."""

    status: int
    reason: str
    headers: Mapping[str, str]
    body: bytes
    url: str
    #: for a 200 when the caller asked for it: the body, also in a temporary cache file
    staged: Staged | None = None

    @property
    def etag(self) -> str | None:
        return self.headers.get("ETag") or None

    @property
    def last_modified(self) -> str | None:
        return self.headers.get("Last-Modified") or None

    @property
    def status_text(self) -> str:
        return f"HTTP {self.status} {self.reason}".rstrip()

    def discard(self) -> None:
        if self.staged is not None:
            self.staged.discard()


Progress = Callable[[int, int | None], None]


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


def _exception_chain(exc: BaseException) -> list[BaseException]:
    """Every exception behind ``exc``: causes, contexts, urllib3's ``reason``, wrapped args."""
    seen: list[BaseException] = []
    stack: list[BaseException | None] = [exc]
    while stack:
        current = stack.pop()
        if current is None or any(current is s for s in seen):
            continue
        seen.append(current)
        stack.extend((current.__cause__, current.__context__))
        reason = getattr(current, "reason", None)
        if isinstance(reason, BaseException):
            stack.append(reason)
        stack.extend(a for a in current.args if isinstance(a, BaseException))
    return seen


def describe(exc: BaseException, tuning: Tuning, host: str) -> tuple[str, bool]:
    """(cause, retryable) for an exception raised by requests/urllib3 or the socket layer.

    Works from the exception chain and its text, because the wrapping differs between urllib3
    1.26 (Debian 12) and 2.x.
    """
    import requests

    chain = _exception_chain(exc)
    text = " ".join(str(e) for e in chain)

    def has(*types: type[BaseException]) -> bool:
        return any(isinstance(e, types) for e in chain)

    verify = [e for e in chain if isinstance(e, ssl.SSLCertVerificationError)]
    # urllib3 1.26 matches host names itself and raises its own CertificateError (a ValueError).
    mismatch = [e for e in chain if type(e).__name__ == "CertificateError" and e not in verify]
    if mismatch:
        return (f"TLS certificate is not valid for host {host!r} ({_one_line(mismatch[0])})", False)
    if verify or "CERTIFICATE_VERIFY_FAILED" in text:
        detail = next((e.verify_message for e in verify if e.verify_message), "")
        if not detail:
            m = re.search(r"certificate verify failed: ([^()\]'\"]+)", text)
            detail = m.group(1).strip() if m else ""
        if "mismatch" in detail.lower() or "doesn't match" in text:
            return (f"TLS certificate is not valid for host {host!r} ({detail})", False)
        detail = f"{detail}; " if detail else ""
        return (
            f"TLS certificate verify failed ({detail}use --ca-bundle for an internal CA)",
            False,
        )
    cause, retryable = _basic_cause(chain, text, has, tuning, host, requests)
    if has(requests.exceptions.ProxyError):
        cause = f"through the proxy: {cause}"
    return cause, retryable


def _basic_cause(
    chain: list[BaseException],
    text: str,
    has: Callable[..., bool],
    tuning: Tuning,
    host: str,
    requests: Any,
) -> tuple[str, bool]:
    import urllib3.exceptions as u3

    if has(requests.exceptions.TooManyRedirects):
        return ("too many redirects", False)
    if has(
        requests.exceptions.InvalidURL,
        requests.exceptions.InvalidSchema,
        requests.exceptions.MissingSchema,
        u3.LocationParseError,
    ):
        return (f"invalid URL ({chain[-1]})", False)
    # Before the timeouts: urllib3 2.x makes NewConnectionError (refused, DNS) a subclass of
    # ConnectTimeoutError.
    if has(ConnectionRefusedError) or "Connection refused" in text:
        return ("connection refused", True)
    resolve_words = (
        "Name or service not known",
        "Temporary failure in name resolution",
        "Failed to resolve",
        "nodename nor servname",
        "No address associated",
        "getaddrinfo failed",
    )
    if has(socket.gaierror) or any(w in text for w in resolve_words):
        return (f"cannot resolve host name {host!r}", True)
    connect_timeout = any(
        isinstance(e, u3.ConnectTimeoutError) and not isinstance(e, u3.NewConnectionError)
        for e in chain
    )
    if connect_timeout or has(requests.exceptions.ConnectTimeout):
        return (f"connection timed out after {tuning.connect_timeout:g} s", True)
    if has(requests.exceptions.ReadTimeout, u3.ReadTimeoutError, TimeoutError, socket.timeout):
        return (f"read timed out: no data for {tuning.read_timeout:g} s", True)
    if has(ssl.SSLEOFError, ssl.SSLZeroReturnError) or "EOF occurred in violation" in text:
        return ("the connection closed during the TLS handshake", True)
    ssl_errors = [e for e in chain if isinstance(e, ssl.SSLError)]
    if ssl_errors:
        err = ssl_errors[0]
        return (f"TLS error ({getattr(err, 'reason', None) or err})", False)
    if (
        has(ConnectionResetError, ConnectionAbortedError, BrokenPipeError)
        or "RemoteDisconnected" in text
        or "Connection aborted" in text
        or "closed connection without response" in text
    ):
        return (_CLOSED, True)
    if has(u3.ProtocolError, requests.exceptions.ChunkedEncodingError):
        return (f"broken response ({_one_line(chain[-1])})", True)
    last = chain[-1]
    return (f"{type(last).__name__}: {_one_line(last)}", True)


_CLOSED = "the server closed the connection without a response"


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:300]


class HttpClient:
    """One ``requests.Session`` with the timeouts, retries and TLS rules of this module."""

    def __init__(
        self,
        *,
        ca_bundle: Path | None = None,
        allow_insecure_http: bool = False,
        tuning: Tuning = DEFAULT_TUNING,
    ):
        import requests
        from requests.adapters import HTTPAdapter

        self.tuning = tuning
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
        stage: Callable[[], Staged] | None = None,
        progress: Progress | None = None,
    ) -> Response:
        """GET ``url`` with retries. Returns 200/206 (body complete), 304, 404, 410 and 416;
        anything else, a failure after the last retry, or a deadline passed (see
        :class:`Tuning`) raises ``network-error``."""
        clock = self.tuning.clock
        started = clock()
        try:
            return self._fetch(url, headers or {}, limit, what, stage, progress, started)
        finally:
            self.spent += max(0.0, clock() - started)

    def _fetch(
        self,
        url: str,
        headers: Mapping[str, str],
        limit: int,
        what: str,
        stage: Callable[[], Staged] | None,
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
                return self._attempt(url, headers, limit, what, stage, progress, run_end)
            except _DeadlinePassed as exc:
                received += exc.received
                if exc.run:
                    failure = NetworkFailure(
                        f"gave up after {tuning.run_deadline:g} s, the time one run may spend "
                        f"on the network (the mirror sent {_size(received)} for this request "
                        f"in {_seconds(clock() - started)} s)",
                        retryable=False,
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
        stage: Callable[[], Staged] | None,
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
            resp = self.session.get(
                url,
                headers=dict(headers),
                stream=True,
                # never longer than the time left, so a stall cannot outlast a deadline
                timeout=(min(tuning.connect_timeout, left), min(tuning.read_timeout, left)),
                verify=self.verify,
                allow_redirects=True,
            )
        except (requests.RequestException, OSError, ValueError) as exc:
            deadline.check(0, slack=_SLACK)
            cause, retryable = describe(exc, tuning, host)
            raise NetworkFailure(cause, retryable=retryable) from exc
        with contextlib.closing(resp):
            if _is_plain_http(resp.url) and not self.allow_insecure_http:
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
            staged = stage() if stage is not None and status == 200 else None
            try:
                with _Watchdog(_socket_of(resp), deadline.left()):
                    body = self._read_body(resp, limit, what, host, staged, progress, deadline)
            except BaseException:
                if staged is not None:
                    staged.discard()
                raise
            return Response(status, reason, resp.headers, body, resp.url, staged)

    def _read_body(
        self,
        resp: requests.Response,
        limit: int,
        what: str,
        host: str,
        staged: Staged | None,
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
                if staged is not None:
                    staged.write(chunk)
                if progress is not None:
                    progress(len(body), declared)
        except (requests.RequestException, OSError) as exc:
            # The watchdog shut the socket, or a read timeout cut to the time left expired.
            deadline.check(_received(exc, len(body)), slack=_SLACK)
            raise NetworkFailure(
                _truncation(exc, len(body), declared, self.tuning, host), retryable=True
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
    """An attempt ran out of time; ``run`` when it was the run's deadline, not the request's."""

    def __init__(self, *, run: bool, received: int):
        super().__init__("deadline passed")
        self.run = run
        self.received = received


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


def _incomplete(exc: BaseException) -> list[BaseException]:
    import http.client

    import urllib3.exceptions as u3

    return [
        e
        for e in _exception_chain(exc)
        if isinstance(e, u3.IncompleteRead | http.client.IncompleteRead)
    ]


def _received(exc: BaseException, received: int) -> int:
    """Body bytes that arrived, counting those of a chunk that broke off: urllib3 2.x raises
    before handing the partial chunk over (it knows the count); http.client keeps the bytes."""
    for e in _incomplete(exc):
        partial = getattr(e, "partial", None)
        if isinstance(partial, int):
            received = max(received, partial)
        elif isinstance(partial, bytes | bytearray):
            received = max(received, len(partial))
    return received


def _truncation(
    exc: BaseException, received: int, declared: int | None, tuning: Tuning, host: str
) -> str:
    """The cause for a body that broke off: how much came, and why it stopped when known."""
    incomplete = _incomplete(exc)
    received = _received(exc, received)
    cause = None if incomplete else describe(exc, tuning, host)[0]
    if cause == _CLOSED:
        cause = None  # "truncated" already says the connection ended early
    of = f" of {declared}" if declared is not None else ""
    text = f"body truncated: received {received}{of} bytes"
    return f"{text} ({cause})" if cause else text


def _content_length(resp: requests.Response) -> int | None:
    """The announced body length, when it is the length of the bytes we will see."""
    encoding = resp.headers.get("Content-Encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        return None
    value = resp.headers.get("Content-Length")
    if value is None or not value.strip().isdigit():
        return None
    return int(value.strip())


class _Bar:
    """A download progress bar on stderr (only created when a terminal is watching)."""

    def __init__(self, label: str):
        self.label = label
        self._bar: Any = None
        self._done = 0

    def __call__(self, done: int, total: int | None) -> None:
        if total is None or total <= 0:
            return
        if self._bar is not None and done < self._done:  # a retry starts again
            self.close()
        if self._bar is None:
            import click

            self._bar = click.progressbar(length=total, label=self.label, file=sys.stderr)
            self._bar.__enter__()
        self._bar.update(done - self._done)
        self._done = done

    def close(self) -> None:
        if self._bar is not None:
            self._bar.__exit__(None, None, None)
        self._bar = None
        self._done = 0


# ---------------------------------------------------------------------------------------------
# The repository


def integrity_failure(data: bytes) -> _image.Check | None:
    """The first failed check among :data:`INTEGRITY_CHECKS`, or None when the image is sound."""
    result = _image.verify(data, trusted_signers=(), allow_debug=True)
    for check in result.checks:
        if check.name in INTEGRITY_CHECKS and not check.ok:
            return check
    return None


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
        interactive: bool = False,
        clock: Callable[[], float] = time.time,
    ):
        self.location = location
        self.cache = cache
        self.client = client
        self.base_url = base_url
        self.local = local
        self.mapping_url = mapping_url
        self.mapping_path = mapping_path
        self.interactive = interactive
        self.clock = clock
        self.warnings: list[tuple[str, str]] = []
        #: displayed location -> the URL to fetch (they differ when the URL holds a password)
        self._urls: dict[str, str] = {}
        #: image key -> (sha256 of the head returned by head(), image size), this run
        self._listed: dict[str, tuple[str, int]] = {}

    @property
    def offline(self) -> bool:
        return self.client is None

    def warn(self, token: str, sentence: str) -> None:
        if all(t != token for t, _ in self.warnings):
            self.warnings.append((token, sentence))

    def close(self) -> None:
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
            return _catalog.load_catalog(self.mapping_path)
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
            stage=lambda: self.cache.begin("images"),
        )
        try:
            if resp.status == 304 and entry is not None and cached is not None:
                self.cache.touch(entry)
                return self._seen(key, *cached)
            if resp.status == 206:
                head, total = self._partial(key, resp)
                digest = self.cache.store("heads", head)
                self._remember(key, resp, size=total, head_sha256=digest)
                return self._seen(key, head, total)
            if resp.status == 200:
                # The server ignored Range: the whole image came; keep it (verified).
                self._admit(key, resp)
                return self._seen(key, resp.body[: _image.HEAD_SIZE], len(resp.body))
            if resp.status == 416:
                m = _UNSATISFIED_RANGE.match(resp.headers.get("Content-Range", ""))
                if m is not None and int(m.group(1)) == 0:
                    self.cache.drop_entry(key)
                    return self._seen(key, b"", 0)  # an empty file: inspect() says why
            if resp.status in (404, 410):
                self.cache.drop_entry(key)
                raise NotFound(f"{key}: {resp.status_text}", code="image-not-found")
            raise IOFailure(
                f"{key}: unexpected {resp.status_text} to a request for bytes "
                f"0-{_image.HEAD_SIZE - 1}",
                code="network-error",
            )
        finally:
            resp.discard()

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

    def _admit(self, key: str, resp: Response) -> bool:
        """Cache a whole image that passed the integrity checks; anything else is not kept."""
        data = resp.body
        if integrity_failure(data) is not None or resp.staged is None:
            resp.discard()
            self.cache.drop_entry(key)
            return False
        digest = resp.staged.commit()
        head_digest = self.cache.store("heads", data[: _image.HEAD_SIZE])
        self._remember(key, resp, size=len(data), sha256=digest, head_sha256=head_digest)
        return True

    def _remember(
        self,
        key: str,
        resp: Response,
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
        """The whole image: from the cache after a 304, or downloaded, checked and cached.

        Returns an image that fails the integrity checks too (not cached): the caller's
        ``image.verify`` then names the failed check.
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
        headers = entry.validators() if entry is not None and cached is not None else {}
        bar = _Bar(f"downloading {key.rsplit('/', 1)[-1]}") if self.interactive else None
        try:
            resp = self._fetch(
                url,
                headers=headers,
                limit=_image.MAX_IMAGE_SIZE,
                what="image",
                stage=lambda: self.cache.begin("images"),
                progress=bar,
            )
        finally:
            if bar is not None:
                bar.close()
        try:
            if resp.status == 304 and entry is not None and cached is not None:
                self.cache.touch(entry)
                self._same_as_listed(key, cached)
                return cached
            if resp.status == 200:
                self._same_as_listed(key, resp.body)
                self._admit(key, resp)
                return resp.body
            if resp.status in (404, 410):
                self.cache.drop_entry(key)
                raise NotFound(f"{key}: {resp.status_text}", code="image-not-found")
            raise IOFailure(f"{key}: unexpected {resp.status_text} to a GET", code="network-error")
        finally:
            resp.discard()


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


def _check_ca_bundle(path: Path) -> None:
    try:
        ssl.create_default_context(cafile=str(path))
    except FileNotFoundError as exc:
        raise UsageError(f"--ca-bundle {path}: no such file") from exc
    except (ssl.SSLError, OSError) as exc:
        raise UsageError(
            f"--ca-bundle {path}: not a PEM certificate bundle ({_one_line(exc)})"
        ) from exc


def open_remote(
    repo: str,
    mapping: str | None = None,
    *,
    cache_dir: Path | None = None,
    offline: bool = False,
    ca_bundle: Path | None = None,
    allow_insecure_http: bool = False,
    interactive: bool = False,
    tuning: Tuning | None = None,
    clock: Callable[[], float] = time.time,
) -> RemoteRepository:
    """The repository for ``--repo``/``--mapping`` when at least one of them is a URL.

    A ``file://`` URL or a path on either side is read locally; ``https`` (or ``http`` with
    ``allow_insecure_http``) through the cache under ``<cache_dir>/remote`` (default
    :func:`tdxupdate.settings.default_cache_dir`). With ``offline`` nothing is fetched.
    """
    from tdxupdate.settings import default_cache_dir

    repo_path = local_path(repo)
    base_url = None if repo_path is not None else _base_url(_web_url(repo, "--repo"))
    mapping_path = local_path(mapping) if mapping is not None else None
    mapping_url: str | None = None
    if mapping is None:
        if base_url is not None:
            mapping_url = urljoin(base_url, MAPPING_NAME)
        else:
            assert repo_path is not None
            mapping_path = repo_path / MAPPING_NAME
    elif mapping_path is None:
        mapping_url = _web_url(mapping, "--mapping")

    insecure = [u for u in (mapping_url, base_url) if u is not None and _is_plain_http(u)]
    if insecure and not allow_insecure_http:
        raise UsageError(
            f"{redact(insecure[0])}: refusing plain http: the mapping file decides what is safe "
            "to install and the images' names decide their versions (use https, a file, or "
            "--allow-insecure-http for a lab mirror)"
        )
    if ca_bundle is not None:
        _check_ca_bundle(ca_bundle)

    local = LocalRepository(repo_path, mapping_path) if repo_path is not None else None
    cache = Cache(
        (cache_dir if cache_dir is not None else default_cache_dir()) / "remote", clock=clock
    )
    client = (
        None
        if offline
        else HttpClient(
            ca_bundle=ca_bundle,
            allow_insecure_http=allow_insecure_http,
            tuning=tuning if tuning is not None else DEFAULT_TUNING,
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
        interactive=interactive,
        clock=clock,
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
