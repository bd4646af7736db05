"""Shared pytest fixtures (factories live in tests/factories/)."""

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from factories import netguard
from factories.sim import sample_repo, sim, sim_cache  # noqa: F401

from tdxupdate import fence, verdicts
from tdxupdate.errors import TERMINATING_SIGNALS


@pytest.fixture(scope="session")
def _verdict_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("verdict-cache")


@pytest.fixture(autouse=True)
def _no_real_verdict_store(_verdict_dir: Path) -> Iterator[None]:
    """A listing without --cache-dir keeps its verdicts here, never in /var/cache/tdxupdate or
    the user's ~/.cache (entries are keyed by content, so one directory serves every test)."""
    real = verdicts.default_dir
    verdicts.default_dir = lambda: _verdict_dir
    try:
        yield
    finally:
        verdicts.default_dir = real


@pytest.fixture(scope="session", autouse=True)
def _default_signal_dispositions() -> Iterator[None]:
    """The suite runs with the dispositions a terminal gives: a signal ignored at entry stays
    ignored under tdxupdate (the nohup convention, tested in test_signals.py), so a suite
    started under ``nohup`` or by a runner that ignores SIGHUP would otherwise see the tests
    that deliver it fail. Subprocesses inherit the reset."""
    ignored = [s for s in TERMINATING_SIGNALS if signal.getsignal(s) is signal.SIG_IGN]
    for signum in ignored:
        signal.signal(signum, signal.SIG_DFL)
    try:
        yield
    finally:
        for signum in ignored:
            signal.signal(signum, signal.SIG_IGN)


@pytest.fixture(scope="session", autouse=True)
def _no_host_lock_left_behind(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Every emulated host a test updates takes its lock and fence under /run/tdxupdate, keyed
    by its upload directory. The session removes those of the host trees in its own temporary
    tree (an emulator removes its own as it unmounts), and nothing else: not the real
    interface's, not those of another test session running on this machine at the same time."""
    yield
    for upload_dir in tmp_path_factory.getbasetemp().glob("**/sys/class/firmware/*"):
        fence.forget(upload_dir)


@pytest.fixture(scope="session", autouse=True)
def _network_guard() -> Iterator[None]:
    """No test connects beyond loopback (tests/factories/netguard.py), for the whole session."""
    with netguard.guard():
        yield


@pytest.fixture(autouse=True)
def _no_connection_beyond_loopback(_network_guard: None) -> Iterator[None]:
    """Fail a test that tried, even when the code under test swallowed the refusal."""
    netguard.refused.clear()
    yield
    attempts, netguard.refused[:] = list(netguard.refused), []
    if attempts:
        pytest.fail(
            f"this test tried to connect beyond loopback: {', '.join(attempts)} "
            "(tests reach only 127.0.0.0/8, ::1 and AF_UNIX)",
            pytrace=False,
        )
