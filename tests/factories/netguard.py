"""The test session's network guard: nothing connects beyond this machine's loopback.

Every test server (tests/factories/httpserver.py) listens on 127.0.0.1; a test that reached
out to a real mirror or DNS would be slow, flaky and could fetch something else than it
checks. While the guard is installed (tests/conftest.py, for the whole session) a
``connect``/``connect_ex`` of any socket and ``socket.create_connection`` to an address that
is not loopback (127.0.0.0/8, ::1, ``localhost``) raise :class:`NonLoopbackConnection`, and
the attempt is recorded so that the test fails even when the code under test swallows the
error (it is an OSError, as a refused connection would be). AF_UNIX and other local families
are not judged. Subprocesses are not affected: the guard patches this process only.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
from collections.abc import Iterator
from typing import Any

__all__ = ["NonLoopbackConnection", "guard", "is_loopback", "refused"]

#: Every refused destination since the list was last cleared (tests/conftest.py clears it
#: per test and fails the test when it is not empty).
refused: list[str] = []


class NonLoopbackConnection(OSError):
    """A test tried to reach beyond loopback."""


def is_loopback(host: object) -> bool:
    """Whether ``host`` (a literal address, or a name) stays on this machine."""
    if isinstance(host, bytes):
        host = host.decode("ascii", "replace")
    if not isinstance(host, str):
        return False
    name = host.strip("[]").split("%", 1)[0]
    if name.lower() in ("localhost", "localhost.localdomain", "ip6-localhost"):
        return True
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        return False  # a name would need DNS: refused
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def _refuse(address: Any) -> NonLoopbackConnection:
    shown = f"{address[0]}:{address[1]}" if isinstance(address, tuple) else repr(address)
    refused.append(shown)
    return NonLoopbackConnection(
        f"test network guard: connection to {shown} refused: tests may reach only "
        "127.0.0.0/8, ::1 or AF_UNIX (tests/factories/netguard.py)"
    )


def _check(sock: socket.SocketType, address: Any) -> None:
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        host = address[0] if isinstance(address, tuple) and address else address
        if not is_loopback(host):
            raise _refuse(address)


@contextlib.contextmanager
def guard() -> Iterator[None]:
    """Install the guard for the duration of the block."""
    real_connect = socket.socket.connect
    real_connect_ex = socket.socket.connect_ex
    real_create_connection = socket.create_connection

    # The methods live on the C base class (socket.SocketType), so that is the type of self.
    def connect(self: socket.SocketType, address: Any) -> None:
        _check(self, address)
        real_connect(self, address)

    def connect_ex(self: socket.SocketType, address: Any) -> int:
        _check(self, address)
        return real_connect_ex(self, address)

    def create_connection(address: Any, *args: Any, **kwargs: Any) -> socket.socket:
        # checked before the name is resolved: a refused name never reaches DNS
        if not is_loopback(address[0]):
            raise _refuse(address)
        return real_create_connection(address, *args, **kwargs)

    socket.socket.connect = connect  # type: ignore[method-assign]
    socket.socket.connect_ex = connect_ex  # type: ignore[method-assign]
    socket.create_connection = create_connection
    try:
        yield
    finally:
        socket.socket.connect = real_connect  # type: ignore[method-assign]
        socket.socket.connect_ex = real_connect_ex  # type: ignore[method-assign]
        socket.create_connection = real_create_connection
