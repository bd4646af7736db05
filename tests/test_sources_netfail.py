"""tdxupdate/sources/netfail.py: a failed HTTP attempt put into one printable half-sentence."""

import http.client
import socket
import ssl
from dataclasses import dataclass

import pytest
import requests
import urllib3.exceptions as u3

from tdxupdate.sources import netfail

HOST = "mirror.example.test"


@dataclass(frozen=True)
class Tuning:
    connect_timeout: float = 5.0
    read_timeout: float = 30.0


def _chained(outer: BaseException, inner: BaseException) -> BaseException:
    """``outer`` raised ``from inner``, as requests wraps what urllib3 and sockets raise."""
    try:
        try:
            raise inner
        except BaseException as exc:
            raise outer from exc
    except BaseException as caught:
        return caught


def _describe(exc: BaseException, tuning: Tuning | None = None) -> tuple[str, bool]:
    return netfail.describe(exc, tuning or Tuning(), HOST)


def test_refused() -> None:
    exc = _chained(requests.exceptions.ConnectionError("x"), ConnectionRefusedError(111, "no"))
    assert _describe(exc) == ("connection refused", True)


def test_refused_from_the_text_alone() -> None:
    exc = requests.exceptions.ConnectionError(
        "HTTPConnectionPool: Max retries exceeded ([Errno 111] Connection refused)"
    )
    assert _describe(exc) == ("connection refused", True)


def test_a_new_connection_error_that_failed_to_resolve_is_not_a_timeout() -> None:
    # urllib3 2.x makes NewConnectionError a ConnectTimeoutError: resolution must win.
    inner = u3.NewConnectionError(None, f"Failed to resolve '{HOST}'")  # type: ignore[arg-type]
    exc = _chained(requests.exceptions.ConnectionError("x"), inner)
    assert _describe(exc) == (f"cannot resolve host name {HOST!r}", True)


def test_gaierror_is_a_name_resolution_failure() -> None:
    exc = _chained(requests.exceptions.ConnectionError("x"), socket.gaierror(-2, "whatever"))
    assert _describe(exc) == (f"cannot resolve host name {HOST!r}", True)


def test_connect_and_read_timeouts_quote_their_setting() -> None:
    tuning = Tuning(connect_timeout=2.5, read_timeout=30.0)
    connect = requests.exceptions.ConnectTimeout("x")
    assert _describe(connect, tuning) == ("connection timed out after 2.5 s", True)
    read = requests.exceptions.ReadTimeout("x")
    assert _describe(read, tuning) == ("read timed out: no data for 30 s", True)
    assert _describe(TimeoutError(), tuning) == ("read timed out: no data for 30 s", True)


def test_too_many_redirects_is_not_retried() -> None:
    assert _describe(requests.exceptions.TooManyRedirects("x")) == ("too many redirects", False)


def test_an_invalid_url_is_not_retried() -> None:
    cause, retryable = _describe(requests.exceptions.InvalidURL("bad host"))
    assert (cause, retryable) == ("invalid URL (bad host)", False)


def test_certificate_verify_failure_names_the_reason_and_the_remedy() -> None:
    err = ssl.SSLCertVerificationError(1, "certificate verify failed")
    err.verify_message = "self-signed certificate"
    exc = _chained(requests.exceptions.SSLError("x"), err)
    assert _describe(exc) == (
        "TLS certificate verify failed (self-signed certificate; "
        "use --ca-bundle for an internal CA)",
        False,
    )


def test_certificate_verify_failure_from_the_text_alone() -> None:
    exc = requests.exceptions.SSLError(
        "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: unable to get local "
        "issuer certificate (_ssl.c:1006)"
    )
    assert _describe(exc) == (
        "TLS certificate verify failed (unable to get local issuer certificate; "
        "use --ca-bundle for an internal CA)",
        False,
    )


def test_a_host_name_mismatch_is_its_own_cause() -> None:
    err = ssl.SSLCertVerificationError(1, "certificate verify failed")
    err.verify_message = f"Hostname mismatch, certificate is not valid for '{HOST}'."
    exc = _chained(requests.exceptions.SSLError("x"), err)
    cause, retryable = _describe(exc)
    assert cause.startswith(f"TLS certificate is not valid for host {HOST!r} (Hostname mismatch")
    assert retryable is False


def test_a_handshake_cut_short_is_retried() -> None:
    exc = _chained(requests.exceptions.SSLError("x"), ssl.SSLEOFError(8, "eof"))
    assert _describe(exc) == ("the connection closed during the TLS handshake", True)


@pytest.mark.parametrize(
    "inner",
    [ConnectionResetError(104, "reset"), BrokenPipeError(32, "pipe"), ConnectionAbortedError()],
)
def test_a_connection_closed_without_response(inner: BaseException) -> None:
    exc = _chained(requests.exceptions.ConnectionError("x"), inner)
    assert _describe(exc) == ("the server closed the connection without a response", True)


def test_a_proxy_failure_says_so() -> None:
    exc = _chained(requests.exceptions.ProxyError("x"), ConnectionRefusedError(111, "no"))
    assert _describe(exc) == ("through the proxy: connection refused", True)


def test_a_broken_chunked_response() -> None:
    exc = requests.exceptions.ChunkedEncodingError("Invalid chunk\nlength")
    assert _describe(exc) == ("broken response (Invalid chunk length)", True)


def test_anything_else_is_named_by_its_type_on_one_line() -> None:
    assert _describe(ValueError("odd\n  thing")) == ("ValueError: odd thing", True)


def test_the_exception_chain_survives_a_cycle() -> None:
    a = RuntimeError("a")
    b = ConnectionRefusedError(111, "refused")
    a.__context__ = b
    b.__context__ = a
    assert _describe(a) == ("connection refused", True)


def test_network_failure_makes_the_cause_printable_and_bounded() -> None:
    failure = netfail.NetworkFailure("HTTP 503 \x1b[2Jfake\nline", retryable=True, retry_after=4)
    assert "\x1b" not in failure.cause
    assert "\n" not in failure.cause
    assert failure.cause.startswith("HTTP 503 ")
    assert str(failure) == failure.cause
    assert (failure.retryable, failure.retry_after) == (True, 4)
    long = netfail.NetworkFailure("x" * 2000, retryable=False)
    assert long.cause == "x" * 500 + "..."
    assert long.retry_after is None


def test_one_line_collapses_whitespace_and_cuts_at_300() -> None:
    assert netfail.one_line(ValueError(" a\n\tb  c ")) == "a b c"
    assert len(netfail.one_line(ValueError("y" * 1000))) == 300


def test_received_bytes_counts_a_partial_chunk() -> None:
    from_urllib3 = _chained(requests.exceptions.ChunkedEncodingError("x"), u3.IncompleteRead(7, 3))
    assert netfail.received_bytes(from_urllib3, 5) == 7
    assert netfail.received_bytes(from_urllib3, 9) == 9  # never fewer than already counted
    from_http = _chained(
        requests.exceptions.ChunkedEncodingError("x"), http.client.IncompleteRead(b"abcd")
    )
    assert netfail.received_bytes(from_http, 1) == 4
    assert netfail.received_bytes(ValueError("no partial"), 12) == 12


def test_truncation_of_an_incomplete_read_gives_only_the_counts() -> None:
    exc = _chained(requests.exceptions.ChunkedEncodingError("x"), u3.IncompleteRead(7, 93))
    assert netfail.truncation(exc, 5, 100, Tuning(), HOST) == (
        "body truncated: received 7 of 100 bytes"
    )


def test_truncation_by_a_closed_connection_does_not_say_it_twice() -> None:
    exc = _chained(requests.exceptions.ConnectionError("x"), ConnectionResetError(104, "r"))
    assert netfail.truncation(exc, 5, 100, Tuning(), HOST) == (
        "body truncated: received 5 of 100 bytes"
    )


def test_truncation_by_a_timeout_names_it_and_copes_without_a_length() -> None:
    exc = requests.exceptions.ReadTimeout("x")
    assert netfail.truncation(exc, 5, None, Tuning(read_timeout=3), HOST) == (
        "body truncated: received 5 bytes (read timed out: no data for 3 s)"
    )


def test_the_chain_follows_wrapped_args_and_urllib3_reasons() -> None:
    # requests raises ConnectionError(MaxRetryError(...)) without chaining: the cause is in
    # args, and urllib3 keeps its own in ``reason``.
    inner = ConnectionRefusedError(111, "Connection refused")
    retries = u3.MaxRetryError(None, "/repo/mapping_file.json", reason=inner)  # type: ignore[arg-type]
    exc = requests.exceptions.ConnectionError(retries)
    chain = netfail._exception_chain(exc)
    assert chain[0] is exc
    assert retries in chain
    assert inner in chain
    timeout = u3.ConnectTimeoutError(None, "timed out")
    wrapped = requests.exceptions.ConnectionError(
        u3.MaxRetryError(None, "/x", reason=timeout)  # type: ignore[arg-type]
    )
    assert _describe(wrapped) == ("connection timed out after 5 s", True)
