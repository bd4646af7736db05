"""Putting a failed HTTP attempt into words: what the network stack or the server said.

Every cause is one half-sentence shown after the URL (cli-contract.md §2 ``network-error``),
made printable once, here. Works from the exception chain and its text, because the wrapping
differs between urllib3 1.26 (Debian 12) and 2.x. Imports ``requests`` only when asked to
describe one of its exceptions.
"""

from __future__ import annotations

import re
import socket
import ssl
from collections.abc import Callable
from typing import Any, Protocol

from tdxupdate import log as _log


class Timeouts(Protocol):
    """The two socket timeouts a cause may quote (:class:`tdxupdate.sources.http.Tuning`)."""

    @property
    def connect_timeout(self) -> float: ...

    @property
    def read_timeout(self) -> float: ...


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


def describe(exc: BaseException, tuning: Timeouts, host: str) -> tuple[str, bool]:
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
        return (f"TLS certificate is not valid for host {host!r} ({one_line(mismatch[0])})", False)
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
    tuning: Timeouts,
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
        return (f"broken response ({one_line(chain[-1])})", True)
    last = chain[-1]
    return (f"{type(last).__name__}: {one_line(last)}", True)


_CLOSED = "the server closed the connection without a response"


def one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:300]


def _incomplete(exc: BaseException) -> list[BaseException]:
    import http.client

    import urllib3.exceptions as u3

    return [
        e
        for e in _exception_chain(exc)
        if isinstance(e, u3.IncompleteRead | http.client.IncompleteRead)
    ]


def received_bytes(exc: BaseException, received: int) -> int:
    """Body bytes that arrived, counting those of a chunk that broke off: urllib3 2.x raises
    before handing the partial chunk over (it knows the count); http.client keeps the bytes."""
    for e in _incomplete(exc):
        partial = getattr(e, "partial", None)
        if isinstance(partial, int):
            received = max(received, partial)
        elif isinstance(partial, bytes | bytearray):
            received = max(received, len(partial))
    return received


def truncation(
    exc: BaseException, received: int, declared: int | None, tuning: Timeouts, host: str
) -> str:
    """The cause for a body that broke off: how much came, and why it stopped when known."""
    incomplete = _incomplete(exc)
    received = received_bytes(exc, received)
    cause = None if incomplete else describe(exc, tuning, host)[0]
    if cause == _CLOSED:
        cause = None  # "truncated" already says the connection ended early
    of = f" of {declared}" if declared is not None else ""
    text = f"body truncated: received {received}{of} bytes"
    return f"{text} ({cause})" if cause else text
