"""tdxupdate/signals.py: the process-wide policy for terminating signals, exercised with real
signals sent to this process (handlers are always put back)."""

import os
import signal
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from tdxupdate import signals
from tdxupdate.errors import TERMINATING_SIGNALS, Interrupted


def _kill(signum: int) -> None:
    """Send ``signum`` to this process; Python runs the handler before the next bytecode."""
    os.kill(os.getpid(), signum)


@pytest.fixture
def pristine() -> Iterator[dict[int, Any]]:
    """Save every terminating signal's handler and put it back whatever the test did."""
    saved = {s: signal.getsignal(s) for s in TERMINATING_SIGNALS}
    try:
        yield saved
    finally:
        for signum, handler in saved.items():
            signal.signal(signum, handler)


@pytest.fixture
def installed(pristine: dict[int, Any]) -> Iterator[None]:
    restore = signals.install()
    try:
        yield
    finally:
        restore()


@pytest.mark.usefixtures("installed")
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1])
def test_under_install_a_signal_raises_interrupted_with_its_number(signum: int) -> None:
    with pytest.raises(Interrupted) as caught:
        _kill(signum)
    assert caught.value.signum == signum
    assert caught.value.exit_code == 128 + signum
    assert caught.value.message == f"interrupted by {signal.Signals(signum).name}"


@pytest.mark.usefixtures("installed")
def test_inside_critical_a_signal_is_held_and_raised_when_the_block_ends() -> None:
    steps: list[str] = []

    def two_signals_in_a_critical_block() -> None:
        with signals.critical():
            _kill(signal.SIGTERM)
            steps.append("after the first signal")
            _kill(signal.SIGHUP)
            steps.append("after the second signal")

    with pytest.raises(Interrupted) as caught:
        two_signals_in_a_critical_block()
    assert steps == ["after the first signal", "after the second signal"]
    assert caught.value.signum == signal.SIGTERM  # the first to arrive
    assert signals.held() == ()  # consumed by the block, not left as held
    with pytest.raises(Interrupted):  # interruptible again after the block
        _kill(signal.SIGTERM)


@pytest.mark.usefixtures("installed")
def test_critical_without_a_signal_ends_quietly() -> None:
    with signals.critical():
        pass
    with pytest.raises(Interrupted):
        _kill(signal.SIGTERM)


@pytest.mark.usefixtures("installed")
def test_after_hold_signals_are_recorded_in_order_and_never_raised() -> None:
    signals.hold()
    _kill(signal.SIGTERM)
    _kill(signal.SIGUSR2)
    assert signals.held() == (signal.SIGTERM, signal.SIGUSR2)
    with signals.critical():  # already holding: critical changes nothing
        _kill(signal.SIGHUP)
    assert signals.held() == (signal.SIGTERM, signal.SIGUSR2, signal.SIGHUP)


@pytest.mark.usefixtures("installed")
def test_holding_under_install_yields_the_signals_of_the_block_and_keeps_holding() -> None:
    signals.hold()
    _kill(signal.SIGUSR1)  # before the block: not the block's
    with signals.holding() as received:
        _kill(signal.SIGTERM)
    assert received == [signal.SIGTERM]
    _kill(signal.SIGHUP)  # the phase does not end with the block
    assert signals.held() == (signal.SIGUSR1, signal.SIGTERM, signal.SIGHUP)


def test_install_clears_what_an_earlier_run_held(pristine: dict[int, Any]) -> None:
    restore = signals.install()
    try:
        signals.hold()
        _kill(signal.SIGTERM)
        assert signals.held() == (signal.SIGTERM,)
    finally:
        restore()
    restore = signals.install()
    try:
        assert signals.held() == ()
        with pytest.raises(Interrupted):  # interruptible again, not holding
            _kill(signal.SIGTERM)
    finally:
        restore()


def test_restore_puts_the_previous_handlers_back(pristine: dict[int, Any]) -> None:
    def mine(_signum: int, _frame: object) -> None:
        pass

    signal.signal(signal.SIGUSR1, mine)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    before = {s: signal.getsignal(s) for s in TERMINATING_SIGNALS}
    restore = signals.install()
    try:
        assert signal.getsignal(signal.SIGUSR1) is not mine
        assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL
    finally:
        restore()
    assert {s: signal.getsignal(s) for s in TERMINATING_SIGNALS} == before
    with signals.critical():  # not installed any more: no holding, no change
        pass


def test_an_ignored_signal_stays_ignored(pristine: dict[int, Any]) -> None:
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    restore = signals.install()
    try:
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
        _kill(signal.SIGHUP)  # nothing happens
        assert signals.held() == ()
    finally:
        restore()
    assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN


def test_outside_the_main_thread_nothing_is_installed(pristine: dict[int, Any]) -> None:
    before = {s: signal.getsignal(s) for s in TERMINATING_SIGNALS}
    seen: dict[str, object] = {}

    def worker() -> None:
        restore = signals.install()
        seen["during"] = {s: signal.getsignal(s) for s in TERMINATING_SIGNALS}
        with signals.holding() as received, signals.critical():
            seen["received"] = received
        signals.ignore_until_exit()
        seen["after-ignore"] = {s: signal.getsignal(s) for s in TERMINATING_SIGNALS}
        restore()

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join(timeout=10)
    assert not thread.is_alive()
    assert seen == {"during": before, "received": [], "after-ignore": before}
    assert {s: signal.getsignal(s) for s in TERMINATING_SIGNALS} == before


def test_holding_without_install_records_and_then_restores(pristine: dict[int, Any]) -> None:
    def mine(_signum: int, _frame: object) -> None:
        raise AssertionError("the caller's handler ran inside holding()")

    signal.signal(signal.SIGUSR1, mine)
    with signals.holding() as received:
        _kill(signal.SIGUSR1)
        _kill(signal.SIGTERM)
    assert received == [signal.SIGUSR1, signal.SIGTERM]
    assert signal.getsignal(signal.SIGUSR1) is mine
    assert signal.getsignal(signal.SIGTERM) is pristine[signal.SIGTERM]


def test_ignore_until_exit_ignores_exactly_the_trapped_signals(pristine: dict[int, Any]) -> None:
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    restore = signals.install()
    try:
        signals.ignore_until_exit()
        for signum in TERMINATING_SIGNALS:
            assert signal.getsignal(signum) is signal.SIG_IGN, signum
        _kill(signal.SIGTERM)  # ignored: neither raised nor held
        assert signals.held() == ()
    finally:
        restore()
    assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
    assert signal.getsignal(signal.SIGTERM) is pristine[signal.SIGTERM]


@pytest.mark.usefixtures("installed")
def test_a_signal_held_in_a_critical_block_that_fails_is_not_lost() -> None:
    def fails_after_a_signal() -> None:
        with signals.critical():
            _kill(signal.SIGTERM)
            raise OSError(28, "No space left on device")

    with pytest.raises(Interrupted) as caught:
        fails_after_a_signal()
    assert caught.value.signum == signal.SIGTERM
    assert isinstance(caught.value.__context__, OSError)  # the block's own error, kept


def test_holding_without_install_leaves_ignored_signals_ignored(pristine: dict[int, Any]) -> None:
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    with signals.holding() as received:
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
        _kill(signal.SIGHUP)  # ignored: not recorded either
        _kill(signal.SIGTERM)
    assert received == [signal.SIGTERM]
    assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
