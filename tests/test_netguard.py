"""The session's network guard (tests/factories/netguard.py, installed by tests/conftest.py)."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from factories import netguard


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(4)
        yield server


def _take(refused: list[str]) -> list[str]:
    """The refusals recorded so far, cleared so that this test (which provokes them) passes."""
    taken, refused[:] = list(refused), []
    return taken


@pytest.mark.parametrize("address", [("192.0.2.1", 9), ("2001:db8::1", 9), ("example.com", 80)])
def test_connect_beyond_loopback_is_refused_and_recorded(address: tuple[str, int]) -> None:
    family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
    with socket.socket(family) as s, pytest.raises(netguard.NonLoopbackConnection) as info:
        s.connect(address)
    assert f"connection to {address[0]}:{address[1]} refused" in str(info.value)
    with socket.socket(family) as s, pytest.raises(netguard.NonLoopbackConnection):
        s.connect_ex(address)
    with pytest.raises(netguard.NonLoopbackConnection):
        socket.create_connection(address, timeout=1)
    assert _take(netguard.refused) == [f"{address[0]}:{address[1]}"] * 3


def test_a_swallowed_refusal_is_still_recorded() -> None:
    # what code under test with retries and a network-error would do
    with socket.socket() as s, contextlib.suppress(OSError):
        s.connect(("192.0.2.1", 443))
    assert _take(netguard.refused) == ["192.0.2.1:443"]


def test_loopback_is_allowed(listener: socket.socket) -> None:
    port = listener.getsockname()[1]
    with socket.create_connection(("127.0.0.1", port), timeout=5):
        pass
    with socket.socket() as s:
        s.connect(("127.0.0.1", port))
    with socket.socket() as s:
        assert s.connect_ex(("localhost", port)) == 0
    assert netguard.refused == []


def test_unix_sockets_are_allowed(tmp_path: Path) -> None:
    path = str(tmp_path / "s")
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(path)
        server.listen(1)
        with socket.socket(socket.AF_UNIX) as client:
            client.connect(path)
    assert netguard.refused == []


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.255.0.9", True),
        ("::1", True),
        ("[::1]", True),
        ("::ffff:127.0.0.1", True),
        ("localhost", True),
        ("192.0.2.1", False),
        ("10.0.0.1", False),
        ("0.0.0.0", False),
        ("example.com", False),
        (None, False),
    ],
)
def test_is_loopback(host: object, loopback: bool) -> None:
    assert netguard.is_loopback(host) is loopback


def test_subprocesses_are_not_guarded() -> None:
    code = "import socket; print(socket.socket.connect.__qualname__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "socket.connect"
    assert socket.socket.connect.__qualname__ != "socket.connect"
