"""A threaded HTTP/HTTPS module mirror on 127.0.0.1 for the mirror tests (issue 5).

    ca = trustme.CA()
    with MirrorServer(tls=ca) as mirror:            # port 0: the kernel picks a free port
        mirror.put_repo({"1.5.06": image})          # Intel's layout, as write_repo lays it out
        mirror.url                                  # "https://127.0.0.1:PORT/"
        mirror.inject("/mapping_file.json", Status(500), Pass())   # one fault per request
        mirror.log                                  # every request: headers, status, body bytes

The server speaks enough HTTP/1.1 for a mirror: keep-alive, ``ETag`` / ``Last-Modified``,
conditional GETs (``If-None-Match`` wins over ``If-Modified-Since``, RFC 9110 §13.2.2), a single
``Range`` (206, 416), and it counts every request and every body byte it sends. Each of
``etags``, ``last_modified`` and ``ranges`` can be switched off to play a simpler server.

Faults are queued per path (``"*"`` matches every path) and each request takes the next one:
:class:`Drop` (close without answering), :class:`Stall` (stop sending, before the headers or
mid-body), :class:`Status` (an error status, optionally with ``Retry-After``), :class:`Short`
(announce the length, send less, close), :class:`Body` (serve other bytes, "a different
image"), :class:`Oversize` (an endless body, with or without a length), :class:`IgnoreRange`,
:class:`BadRange` (a 206 for the wrong bytes), :class:`Redirect`, :class:`Pass` (no fault).

:class:`ConnectProxy` is an HTTP CONNECT proxy (what ``HTTPS_PROXY`` points at) that counts the
tunnels it opens.
"""

from __future__ import annotations

import contextlib
import email.utils
import hashlib
import selectors
import socket
import ssl
import threading
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from socketserver import BaseRequestHandler, BaseServer, ThreadingTCPServer
from typing import Any

import trustme

from factories.images import blob_path, mapping_document

#: Last-Modified of the first file put; each later put is a minute newer.
EPOCH = 1_767_225_600  # 2026-01-01T00:00:00Z


# ---------------------------------------------------------------------------------------------
# Faults


@dataclass(frozen=True)
class Pass:
    """Serve normally (a placeholder in a fault queue)."""


@dataclass(frozen=True)
class Drop:
    """Read the request, then close the connection without a byte of answer."""


@dataclass(frozen=True)
class Stall:
    """Stop sending for ``seconds`` (or until the server stops): before the status line, or
    after the headers and ``after_bytes`` body bytes when ``mid_body``."""

    seconds: float = 30.0
    mid_body: bool = False
    after_bytes: int = 0


@dataclass(frozen=True)
class Status:
    code: int
    retry_after: str | None = None
    body: bytes = b"error\n"
    #: the reason phrase on the status line (the standard one when None)
    reason: str | None = None


@dataclass(frozen=True)
class Short:
    """Announce the full length, send only ``keep`` body bytes, close."""

    keep: int


@dataclass(frozen=True)
class Body:
    """Serve ``data`` instead of the file (with matching length headers and the file's ETag)."""

    data: bytes


@dataclass(frozen=True)
class Oversize:
    """A body that never ends: zeros until the client hangs up. ``declare`` sends a
    Content-Length of ``total`` (else the body is delimited by closing the connection)."""

    total: int = 64 * 1024 * 1024
    declare: bool = True


@dataclass(frozen=True)
class IgnoreRange:
    """Answer 200 with the whole file even when a Range was asked for."""


@dataclass(frozen=True)
class BadRange:
    """Answer a Range request with 206 and this Content-Range, sending those bytes."""

    start: int
    end: int


@dataclass(frozen=True)
class Redirect:
    location: str
    code: int = 302


Fault = Pass | Drop | Stall | Status | Short | Body | Oversize | IgnoreRange | BadRange | Redirect


# ---------------------------------------------------------------------------------------------
# Bookkeeping


@dataclass
class Served:
    """One request as the server saw it."""

    method: str
    path: str
    headers: dict[str, str]  # lower-case names
    status: int | None = None
    body_bytes: int = 0
    fault: str | None = None


@dataclass
class Resource:
    data: bytes
    etag: str
    last_modified: int


def http_date(when: float) -> str:
    return email.utils.formatdate(when, usegmt=True)


# ---------------------------------------------------------------------------------------------
# The server


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server
    timeout = 20  # a keep-alive connection idle this long is closed

    def setup(self) -> None:
        if isinstance(self.request, ssl.SSLSocket):
            self.request.settimeout(10)
            self.request.do_handshake()  # in this thread: a stalled client never blocks accept()
        super().setup()

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def do_HEAD(self) -> None:
        self._serve(head_only=True)

    def do_GET(self) -> None:
        self._serve(head_only=False)

    # --- helpers --------------------------------------------------------------------------

    def _record(self) -> Served:
        entry = Served(self.command, self.path, {k.lower(): v for k, v in self.headers.items()})
        with self.server.lock:
            self.server.log.append(entry)
        return entry

    def _send(
        self,
        rec: Served,
        status: int,
        headers: Mapping[str, str],
        body: bytes = b"",
        *,
        head_only: bool = False,
        reason: str | None = None,
    ) -> None:
        rec.status = status
        self.send_response(status, reason)
        for name, value in headers.items():
            self.send_header(name, value)
        if "Content-Length" not in headers:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body and not head_only:
            self._write(rec, body)

    def _write(self, rec: Served, data: bytes) -> None:
        self.wfile.write(data)
        self.wfile.flush()
        rec.body_bytes += len(data)

    def _hang_up(self) -> None:
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.wfile.flush()
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)

    def _serve(self, *, head_only: bool) -> None:
        rec = self._record()
        server = self.server
        path = self.path.split("?", 1)[0]
        fault = server.next_fault(path)
        rec.fault = type(fault).__name__ if fault is not None else None
        if self._answer_fault(rec, fault, head_only=head_only):
            return

        with server.lock:
            resource = server.files.get(path)
        if resource is None:
            self._send(rec, 404, {"Content-Type": "text/plain"}, b"not found\n")
            return
        headers = self._resource_headers(resource)
        if self._not_modified(resource):
            self._send_not_modified(rec, headers)
            return
        if isinstance(fault, Oversize):
            self._send_endless(rec, fault, headers)
            return

        data = fault.data if isinstance(fault, Body) else resource.data
        selected = self._select_range(data, fault, headers)
        if selected is None:
            self._send(rec, 416, headers, head_only=head_only)
            return
        status, body = selected
        if isinstance(fault, Short):
            self._send_part(rec, status, headers, body, fault.keep)
            self._hang_up()
        elif isinstance(fault, Stall):  # mid-body
            self._send_part(rec, status, headers, body, fault.after_bytes)
            server.stopping.wait(fault.seconds)
            self._hang_up()
        else:
            self._send(rec, status, headers, body, head_only=head_only)

    def _answer_fault(self, rec: Served, fault: Fault | None, *, head_only: bool) -> bool:
        """Answer a request whose fault needs no resource; False if there is none."""
        if isinstance(fault, Drop):
            self._hang_up()
        elif isinstance(fault, Stall) and not fault.mid_body:
            self.server.stopping.wait(fault.seconds)
            self._hang_up()
        elif isinstance(fault, Status):
            headers = {"Content-Type": "text/plain"}
            if fault.retry_after is not None:
                headers["Retry-After"] = fault.retry_after
            self._send(
                rec, fault.code, headers, fault.body, head_only=head_only, reason=fault.reason
            )
        elif isinstance(fault, Redirect):
            self._send(rec, fault.code, {"Location": fault.location}, head_only=head_only)
        else:
            return False
        return True

    def _resource_headers(self, resource: Resource) -> dict[str, str]:
        server = self.server
        headers = {"Content-Type": "application/octet-stream"}
        if server.etags:
            headers["ETag"] = resource.etag
        if server.last_modified:
            headers["Last-Modified"] = http_date(resource.last_modified)
        if server.ranges:
            headers["Accept-Ranges"] = "bytes"
        return headers

    def _send_not_modified(self, rec: Served, headers: Mapping[str, str]) -> None:
        rec.status = 304
        self.send_response(304)
        for name in ("ETag", "Last-Modified"):
            if name in headers:
                self.send_header(name, headers[name])
        self.end_headers()

    def _select_range(
        self, data: bytes, fault: Fault | None, headers: dict[str, str]
    ) -> tuple[int, bytes] | None:
        """The status and body to send (adding Content-Range to ``headers``); None: 416."""
        wanted = self.headers.get("Range")
        if isinstance(fault, BadRange):
            headers["Content-Range"] = f"bytes {fault.start}-{fault.end}/{len(data)}"
            return 206, data[fault.start : fault.end + 1]
        if wanted and self.server.ranges and not isinstance(fault, IgnoreRange):
            parsed = _parse_range(wanted, len(data))
            if parsed is None:
                headers["Content-Range"] = f"bytes */{len(data)}"
                return None
            start, end = parsed
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
            return 206, data[start : end + 1]
        return 200, data

    def _send_part(
        self, rec: Served, status: int, headers: dict[str, str], body: bytes, sent: int
    ) -> None:
        """Announce all of ``body``, then write only its first ``sent`` bytes."""
        headers["Content-Length"] = str(len(body))
        rec.status = status
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self._write(rec, body[:sent])

    def _not_modified(self, resource: Resource) -> bool:
        server = self.server
        inm = self.headers.get("If-None-Match")
        if inm is not None and server.etags:
            tags = [t.strip() for t in inm.split(",")]
            return "*" in tags or resource.etag in tags
        ims = self.headers.get("If-Modified-Since")
        if ims is not None and server.last_modified:
            try:
                when = email.utils.parsedate_to_datetime(ims).timestamp()
            except (TypeError, ValueError):
                return False
            return resource.last_modified <= when
        return False

    def _send_endless(self, rec: Served, fault: Oversize, headers: dict[str, str]) -> None:
        rec.status = 200
        self.send_response(200)
        for name, value in headers.items():
            self.send_header(name, value)
        if fault.declare:
            self.send_header("Content-Length", str(fault.total))
        else:
            self.send_header("Connection", "close")
        self.end_headers()
        chunk = bytes(64 * 1024)
        sent = 0
        try:
            while sent < fault.total and not self.server.stopping.is_set():
                n = min(len(chunk), fault.total - sent)
                self._write(rec, chunk[:n])
                sent += n
        except OSError:
            pass  # the client hung up: that is the point
        self._hang_up()


def _parse_range(value: str, size: int) -> tuple[int, int] | None:
    """A single ``bytes=a-b`` / ``bytes=a-`` / ``bytes=-n`` range; None when unsatisfiable."""
    value = value.strip()
    if not value.startswith("bytes=") or "," in value:
        return (0, size - 1) if size else None
    first, _, last = value[len("bytes=") :].partition("-")
    if not first:
        n = int(last)
        return (max(0, size - n), size - 1) if size and n else None
    start = int(first)
    end = int(last) if last else size - 1
    if start >= size:
        return None
    return start, min(end, size - 1)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, context: ssl.SSLContext | None):
        self.context = context
        self.lock = threading.Lock()
        self.log: list[Served] = []
        self.files: dict[str, Resource] = {}
        self.faults: dict[str, deque[Fault]] = {}
        self.errors: list[BaseException] = []
        self.stopping = threading.Event()
        self.etags = True
        self.last_modified = True
        self.ranges = True
        super().__init__(("127.0.0.1", 0), _Handler)

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, addr = super().get_request()
        if self.context is not None:
            sock = self.context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return sock, addr

    def next_fault(self, path: str) -> Fault | None:
        with self.lock:
            for key in (path, "*"):
                queue = self.faults.get(key)
                if queue:
                    return queue.popleft()
        return None

    def handle_error(self, request: Any, client_address: Any) -> None:
        import sys

        exc = sys.exc_info()[1]
        if exc is not None:
            with self.lock:
                self.errors.append(exc)


def tls_context(ca: trustme.CA, hostnames: tuple[str, ...] = ()) -> ssl.SSLContext:
    """A server's TLS context: a certificate from ``ca`` for ``hostnames`` (by default
    127.0.0.1 and localhost)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(*(hostnames or ("127.0.0.1", "localhost"))).configure_cert(context)
    return context


class ServerThread:
    """Serves ``server`` from a daemon thread between :meth:`start` and :meth:`stop`.

    ``stopping`` is the event the server's handlers watch: it is set first, so a handler that
    stalls or trickles on purpose gives up and the shutdown does not wait for it.
    """

    def __init__(self, server: BaseServer, stopping: threading.Event) -> None:
        self._server, self._stopping = server, stopping
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def clear_proxy_env(monkeypatch: Any) -> None:
    """Talk to 127.0.0.1 directly and trust only what the test passes: no proxy or CA bundle
    from the environment."""
    for name in ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    for name in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        monkeypatch.delenv(name, raising=False)


class MirrorServer:
    """A module mirror on 127.0.0.1 (HTTPS when ``tls`` is a trustme CA). Use as a context.

    ``repo`` publishes those images at once, as :meth:`put_repo` does.
    """

    def __init__(
        self,
        *,
        tls: trustme.CA | None = None,
        hostnames: tuple[str, ...] = (),
        repo: Mapping[str, bytes] | None = None,
    ):
        self._server = _Server(None if tls is None else tls_context(tls, hostnames))
        self._thread = ServerThread(self._server, self._server.stopping)
        self._clock = EPOCH
        scheme = "https" if tls is not None else "http"
        self.port = self._server.server_address[1]
        self.url = f"{scheme}://127.0.0.1:{self.port}/"
        if repo is not None:
            self.put_repo(repo)

    # --- lifecycle --------------------------------------------------------------------------

    def start(self) -> MirrorServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._thread.stop()

    def __enter__(self) -> MirrorServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- content ----------------------------------------------------------------------------

    def put(self, path: str, data: bytes) -> None:
        """Publish ``data`` at ``path`` (a new ETag and a later Last-Modified when it changed)."""
        with self._server.lock:
            old = self._server.files.get(path)
            if old is not None and old.data == data:
                return
            self._clock += 60
            etag = '"' + hashlib.sha256(data).hexdigest()[:20] + '"'
            self._server.files[path] = Resource(data, etag, self._clock)

    def remove(self, path: str) -> None:
        with self._server.lock:
            self._server.files.pop(path, None)

    def put_repo(
        self,
        images: Mapping[str, bytes],
        mapping: Mapping[str, Any] | bytes | None = None,
        prefix: str = "/",
    ) -> None:
        """Intel's layout under ``prefix``: the images and a mapping (default: one release per
        image, as :func:`factories.images.write_repo` writes it)."""
        from tdxupdate.versions import Version

        for version, data in images.items():
            rel = blob_path(Path("/"), version).as_posix().lstrip("/")
            self.put(prefix + rel, data)
        if isinstance(mapping, bytes):
            doc = mapping
        else:
            import json

            versions: list[str] = sorted(images, key=Version.parse)
            obj = mapping_document(versions) if mapping is None else mapping
            doc = (json.dumps(obj, indent=2) + "\n").encode()
        self.put(prefix + "mapping_file.json", doc)

    def path_of(self, version: str) -> str:
        return blob_path(Path("/"), version).as_posix()

    # --- behaviour --------------------------------------------------------------------------

    def inject(self, path: str, *faults: Fault) -> None:
        """Queue faults for the next requests to ``path`` (``"*"``: any path), one each."""
        with self._server.lock:
            self._server.faults.setdefault(path, deque()).extend(faults)

    def configure(
        self,
        *,
        etags: bool | None = None,
        last_modified: bool | None = None,
        ranges: bool | None = None,
    ) -> None:
        if etags is not None:
            self._server.etags = etags
        if last_modified is not None:
            self._server.last_modified = last_modified
        if ranges is not None:
            self._server.ranges = ranges

    # --- counters ---------------------------------------------------------------------------

    @property
    def log(self) -> list[Served]:
        with self._server.lock:
            return list(self._server.log)

    def requests(self, path: str | None = None, *, suffix: str | None = None) -> list[Served]:
        return [
            r
            for r in self.log
            if (path is None or r.path == path) and (suffix is None or r.path.endswith(suffix))
        ]

    def body_bytes(self, path: str | None = None, *, suffix: str | None = None) -> int:
        return sum(r.body_bytes for r in self.requests(path, suffix=suffix))

    def reset_log(self) -> None:
        with self._server.lock:
            self._server.log.clear()

    @property
    def errors(self) -> list[BaseException]:
        with self._server.lock:
            return list(self._server.errors)


# ---------------------------------------------------------------------------------------------
# A CONNECT proxy


class _ProxyHandler(BaseRequestHandler):
    server: _ProxyServer

    def handle(self) -> None:
        conn: socket.socket = self.request
        conn.settimeout(10)
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = conn.recv(4096)
            if not chunk:
                return
            head += chunk
            if len(head) > 65536:
                return
        request_line = head.split(b"\r\n", 1)[0].decode("latin-1")
        method, _, rest = request_line.partition(" ")
        target = rest.rsplit(" ", 1)[0]
        with self.server.lock:
            self.server.requests.append(request_line)
        if method.upper() != "CONNECT":
            conn.sendall(b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n")
            return
        host, _, port = target.rpartition(":")
        try:
            upstream = socket.create_connection((host.strip("[]"), int(port)), timeout=10)
        except OSError:
            conn.sendall(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
            return
        with self.server.lock:
            self.server.tunnels.append(target)
        conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
        self._relay(conn, upstream)

    def _relay(self, a: socket.socket, b: socket.socket) -> None:
        sel = selectors.DefaultSelector()
        sel.register(a, selectors.EVENT_READ, b)
        sel.register(b, selectors.EVENT_READ, a)
        try:
            while not self.server.stopping.is_set():
                for key, _ in sel.select(timeout=0.1):
                    src: socket.socket = key.fileobj  # type: ignore[assignment]
                    dst: socket.socket = key.data
                    try:
                        data = src.recv(65536)
                    except OSError:
                        return
                    if not data:
                        return
                    dst.sendall(data)
        finally:
            sel.close()
            b.close()


class _ProxyServer(ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests: list[str] = []
        self.tunnels: list[str] = []
        self.stopping = threading.Event()
        super().__init__(("127.0.0.1", 0), _ProxyHandler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass


@dataclass
class ConnectProxy:
    """An HTTP CONNECT proxy on 127.0.0.1; ``url`` is what HTTPS_PROXY takes."""

    _server: _ProxyServer = field(default_factory=_ProxyServer)

    def __post_init__(self) -> None:
        self._thread = ServerThread(self._server, self._server.stopping)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    @property
    def tunnels(self) -> list[str]:
        with self._server.lock:
            return list(self._server.tunnels)

    def __enter__(self) -> ConnectProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._thread.stop()


def ca_bundle(ca: trustme.CA, directory: Path) -> Path:
    """The CA's certificate as a PEM file (what ``--ca-bundle`` takes)."""
    path = directory / "internal-ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return path


def with_tuning(monkeypatch: Any, tuning: Any) -> None:
    """Runs that go through the command line or ``run_action`` reach the mirror with
    ``tuning`` (a :class:`tdxupdate.sources.http.Tuning`): the options the lead's actions build
    (:func:`tdxupdate.inventory.mirror_options`) carry it, nothing else changes."""
    from dataclasses import replace

    from tdxupdate import inventory

    real = inventory.mirror_options
    monkeypatch.setattr(inventory, "mirror_options", lambda s: replace(real(s), tuning=tuning))
