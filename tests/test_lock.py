"""The per-host update lock (tdxupdate.lock, cli-contract.md §4 step 1)."""

from __future__ import annotations

import errno
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tdxupdate.errors import PermissionDenied, TryLater
from tdxupdate.lock import LOCK_FILE, acquire

HOLDER = """
import sys
from pathlib import Path
from tdxupdate.lock import acquire
with acquire(Path(sys.argv[1])):
    print("held", flush=True)
    sys.stdin.readline()  # hold until the test says so
"""

TRY = """
import sys
from pathlib import Path
from tdxupdate.errors import TryLater
from tdxupdate.lock import acquire
try:
    with acquire(Path(sys.argv[1])):
        print("acquired")
except TryLater as exc:
    print(exc.code, exc.exit_code, exc.message)
"""


def python(code: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", code, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def try_in_child(state: Path) -> str:
    child = python(TRY, str(state))
    out, err = child.communicate()
    assert child.returncode == 0, err
    return out.strip()


def test_lock_held_here_refuses_another_process_naming_our_pid(tmp_path: Path) -> None:
    with acquire(tmp_path) as lock:
        assert lock.held
        assert (tmp_path / LOCK_FILE).read_text() == f"{os.getpid()}\n"
        answer = try_in_child(tmp_path)
    assert answer == (
        f"locked 75 {tmp_path / LOCK_FILE}: another tdxupdate (pid {os.getpid()}) "
        "is updating this host; try again later"
    )
    assert not lock.held
    assert try_in_child(tmp_path) == "acquired"  # released on exit


def test_lock_held_by_another_process_is_refused_then_free_after_it_exits(
    tmp_path: Path,
) -> None:
    holder = python(HOLDER, str(tmp_path))
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline() == "held\n"
        with pytest.raises(TryLater) as info:
            acquire(tmp_path)
        assert info.value.code == "locked"
        assert info.value.exit_code == 75
        assert f"another tdxupdate (pid {holder.pid}) is updating this host" in info.value.message
    finally:
        _, err = holder.communicate("\n")
    assert holder.returncode == 0, err
    with acquire(tmp_path) as lock:
        assert lock.held


def test_lock_of_a_killed_holder_is_free(tmp_path: Path) -> None:
    holder = python(HOLDER, str(tmp_path))
    assert holder.stdout is not None
    assert holder.stdout.readline() == "held\n"
    holder.kill()  # no chance to clean up
    holder.communicate()
    assert (tmp_path / LOCK_FILE).read_text() == f"{holder.pid}\n"  # left behind
    with acquire(tmp_path):
        assert (tmp_path / LOCK_FILE).read_text() == f"{os.getpid()}\n"


def test_second_acquire_in_the_same_process_is_refused(tmp_path: Path) -> None:
    with acquire(tmp_path), pytest.raises(TryLater, match=rf"\(pid {os.getpid()}\)"):
        acquire(tmp_path)


def test_stale_lock_file_without_holder_is_acquired(tmp_path: Path) -> None:
    (tmp_path / LOCK_FILE).write_text("999999999\n")
    with acquire(tmp_path):
        assert (tmp_path / LOCK_FILE).read_text() == f"{os.getpid()}\n"
    assert (tmp_path / LOCK_FILE).exists()  # flock lock files stay


def test_unknown_pid_when_the_holder_wrote_none(tmp_path: Path) -> None:
    import fcntl

    path = tmp_path / LOCK_FILE
    path.write_text("")
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a holder that wrote nothing yet
        with pytest.raises(TryLater, match=r"another tdxupdate \(unknown pid\) is updating"):
            acquire(tmp_path)
    finally:
        os.close(fd)


def test_acquire_creates_the_state_dir(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        state = tmp_path / "var" / "lib" / "tdxupdate"
        with acquire(state) as lock:
            assert lock.path == state / LOCK_FILE
    finally:
        os.umask(old)
    assert stat.S_IMODE(state.stat().st_mode) == 0o755


def test_release_is_idempotent(tmp_path: Path) -> None:
    lock = acquire(tmp_path)
    lock.release()
    lock.release()
    assert not lock.held
    with acquire(tmp_path):
        pass


def test_permission_error_names_the_lock_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_open = os.open
    target = tmp_path / LOCK_FILE

    def denying_open(path, flags, mode=0o777, *, dir_fd=None):  # type: ignore[no-untyped-def]
        # opened relative to the state directory's descriptor (tdxupdate.safedir)
        if Path(os.fsdecode(path)).name == LOCK_FILE:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        return real_open(path, flags, mode, dir_fd=dir_fd)

    monkeypatch.setattr(os, "open", denying_open)
    with pytest.raises(PermissionDenied) as info:
        acquire(tmp_path)
    assert info.value.exit_code == 77
    assert info.value.message == (
        f"{target}: cannot open the update lock: permission denied "
        "(run as root or choose another --state-dir)"
    )
