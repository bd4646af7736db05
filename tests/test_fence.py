"""The TD-build fence (tdxupdate.fence) and the emulator's TD builds it protects.

The protocol tests run in this process against a fence directory under ``tmp_path`` (flock
conflicts between two open files of one process, so a thread plays the other party). The
emulator tests run real ``--update`` runs (tests/test_update.py's tools) against mounted hosts.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import test_update
from test_update import (
    DEADLINE,
    SLOW_WRITE_MS,
    TARGET,
    Tool,
    assert_fails,
    assert_ok,
    assert_untouched,
    finish,
    wait_for,
)

from tdxupdate import fence, lock
from tdxupdate.errors import EXIT_CODES, TryLater

# tests/test_update.py's repository, emulated hosts (one mount per series) and tools
repo = test_update.repo
hosts = test_update.hosts
tool_for = test_update.tool_for


@pytest.fixture
def upload_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An upload interface of its own, and a /run/tdxupdate of its own."""
    monkeypatch.setattr(lock, "HOST_LOCK_DIR", tmp_path / "run")
    path = tmp_path / "sys" / "class" / "firmware" / "tdx_module"
    path.mkdir(parents=True)
    return path


def wait_event(event: threading.Event, what: str) -> None:
    if not event.wait(DEADLINE):
        pytest.fail(f"never happened within {DEADLINE:g} s: {what}")


class Holder:
    """``fence.hold`` in a thread, kept until :meth:`release` (what ``--update`` does)."""

    def __init__(self, upload_dir: Path, timeout: float = DEADLINE) -> None:
        self.waiting = threading.Event()
        self.entered = threading.Event()
        self._release = threading.Event()
        self.error: BaseException | None = None
        self.messages: list[str] = []
        self.removed: list[tuple[str, str]] = []

        def on_wait(line: str) -> None:
            self.messages.append(line)
            self.waiting.set()

        def run() -> None:
            try:
                with fence.hold(upload_dir, timeout=timeout, on_wait=on_wait) as held:
                    self.removed = list(held.removed)
                    self.entered.set()
                    self._release.wait(DEADLINE)
            except BaseException as exc:
                self.error = exc
            finally:
                self.waiting.set()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    def release(self) -> None:
        self._release.set()
        self.thread.join(DEADLINE)
        assert not self.thread.is_alive()


@pytest.fixture
def holders() -> Iterator[Callable[..., Holder]]:
    made: list[Holder] = []

    def make(upload_dir: Path, timeout: float = DEADLINE) -> Holder:
        made.append(Holder(upload_dir, timeout))
        return made[-1]

    yield make
    for h in made:
        h.release()


# --- the protocol ------------------------------------------------------------------------------


def test_a_registered_build_holds_the_update_until_it_is_unregistered(
    upload_dir: Path, holders: Callable[..., Holder]
) -> None:
    fence.register(upload_dir, "td1")
    holder = holders(upload_dir)
    wait_event(holder.waiting, "the update to say it waits")
    assert holder.messages == [
        f"Waiting up to {DEADLINE:g} s for 1 TD build(s) in progress to finish: td1 (a module "
        "update during a TD build corrupts its measurement)"
    ]
    assert not holder.entered.is_set()
    assert fence.update_running(upload_dir)  # new builds are already kept out
    assert fence.unregister(upload_dir, "td1") is True
    wait_event(holder.entered, "the update to take the fence")
    assert holder.error is None
    assert holder.removed == []


def test_builds_outlasting_the_timeout_are_td_build_in_progress_and_the_fence_is_released(
    upload_dir: Path,
) -> None:
    fence.register(upload_dir, "td1")
    with pytest.raises(TryLater) as caught, fence.hold(upload_dir, timeout=0.2):
        pytest.fail("the update went ahead during a TD build")
    assert caught.value.code == "td-build-in-progress"
    assert caught.value.exit_code == 75
    assert caught.value.message == (
        f"{upload_dir}: TD build(s) td1 still in progress after 0.2 s; nothing was written, run "
        "tdxupdate again once they have finished (--fence-timeout waits longer)"
    )
    assert not fence.update_running(upload_dir)
    fence.register(upload_dir, "td2", wait=0.01)  # nothing was left holding the fence


def test_no_build_registers_while_an_update_holds_the_fence(
    upload_dir: Path, holders: Callable[..., Holder]
) -> None:
    holder = holders(upload_dir)
    wait_event(holder.entered, "the update to take the fence")
    with pytest.raises(TryLater) as caught:
        fence.register(upload_dir, "td1", wait=0.2)
    assert caught.value.code == "locked"
    assert caught.value.exit_code == 75
    assert "a TDX module update is running; TD td1 was not started" in caught.value.message
    assert fence.registrations(upload_dir) == []


def test_a_build_waiting_for_the_update_registers_once_it_is_released(
    upload_dir: Path, holders: Callable[..., Holder]
) -> None:
    holder = holders(upload_dir)
    wait_event(holder.entered, "the update to take the fence")
    said = threading.Event()
    done: list[Path] = []

    def launch() -> None:
        done.append(fence.register(upload_dir, "td1", on_wait=lambda _line: said.set()))

    thread = threading.Thread(target=launch, daemon=True)
    thread.start()
    wait_event(said, "the build to say it waits")
    assert done == []
    assert fence.registrations(upload_dir) == []
    holder.release()
    thread.join(DEADLINE)
    assert [r.name for r in fence.registrations(upload_dir)] == ["td1"]
    assert done == [fence.fence_dir(upload_dir) / "build-td1"]


def test_an_expired_registration_never_blocks(upload_dir: Path) -> None:
    fence.register(upload_dir, "td1", max_build=0.001)
    wait_for(lambda: fence.registrations(upload_dir)[0].expires < fence.now(), "expiry")
    with fence.hold(upload_dir, timeout=DEADLINE) as held:
        assert [name for name, _ in held.removed] == ["td1"]
        assert held.removed[0][1].startswith("it expired")
    assert fence.registrations(upload_dir) == []


def test_a_registration_whose_process_is_gone_never_blocks(upload_dir: Path) -> None:
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], check=True,
                          capture_output=True, text=True)  # fmt: skip
    gone = int(proc.stdout)
    fence.register(upload_dir, "gone", pid=gone)
    with fence.hold(upload_dir, timeout=DEADLINE) as held:
        assert held.removed == [("gone", f"its process {gone} is gone")]


def test_a_registration_of_a_running_process_blocks(upload_dir: Path) -> None:
    fence.register(upload_dir, "mine", pid=os.getpid())
    with pytest.raises(TryLater), fence.hold(upload_dir, timeout=0.2):
        pytest.fail("the update went ahead during a TD build")


def test_an_unreadable_registration_is_stale(upload_dir: Path) -> None:
    fence.register(upload_dir, "td1")
    (fence.fence_dir(upload_dir) / "build-td1").write_text("not json")
    with fence.hold(upload_dir, timeout=DEADLINE) as held:
        assert [name for name, _ in held.removed] == ["td1"]


def test_domain_names_become_one_file_name_each(upload_dir: Path) -> None:
    for name in ("a/b c", "..", "x" * 300):
        path = fence.register(upload_dir, name)
        assert path.parent == fence.fence_dir(upload_dir)
    assert sorted(r.name for r in fence.registrations(upload_dir)) == sorted(
        ["a/b c", "..", "x" * 300]
    )
    for name in ("a/b c", "..", "x" * 300):
        assert fence.unregister(upload_dir, name) is True
    assert fence.unregister(upload_dir, "..") is False
    assert fence.registrations(upload_dir) == []


def test_the_fence_directory_is_roots_and_keyed_like_the_host_lock(upload_dir: Path) -> None:
    fence.register(upload_dir, "td1")
    directory = fence.fence_dir(upload_dir)
    key = lock.host_lock_path(upload_dir).name.removeprefix("upload-").removesuffix(".lock")
    assert directory.name == f"fence-{key}"
    assert directory.stat().st_mode & 0o777 == 0o700
    doc = json.loads((directory / "build-td1").read_text())
    assert set(doc) == {"name", "started", "expires"}
    assert doc["name"] == "td1"


def test_forget_removes_the_interfaces_lock_and_fence_and_nothing_else(upload_dir: Path) -> None:
    """What an emulated host leaves under /run/tdxupdate goes with it (fence.forget)."""
    other = upload_dir.parent / "seamldr_upload"
    other.mkdir()
    for interface in (upload_dir, other):
        lock.acquire_host(interface).release()
        fence.register(interface, "td1")
    run = lock.HOST_LOCK_DIR
    assert len(list(run.iterdir())) == 4
    fence.forget(upload_dir)
    assert sorted(p.name for p in run.iterdir()) == sorted(
        [lock.host_lock_path(other).name, fence.fence_dir(other).name]
    )
    assert [r.name for r in fence.registrations(other)] == ["td1"]
    fence.forget(upload_dir)  # nothing left to remove: not an error


def test_forget_never_raises_where_the_lock_directory_cannot_be_searched(
    upload_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A build user's test run meets root's 0700 /run/tdxupdate: even a stat in it fails with
    EACCES. Root passes every permission check, so as root a child process becomes nobody."""
    base = Path(tempfile.mkdtemp(prefix="tdxupdate-fence-"))
    run = base / "run"
    try:
        base.chmod(0o755)
        run.mkdir(mode=0o700)
        monkeypatch.setattr(lock, "HOST_LOCK_DIR", run)
        fence.fence_dir(upload_dir).mkdir()
        run.chmod(0)
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                if os.geteuid() == 0:
                    os.setgroups([])
                    os.setgid(65534)
                    os.setuid(65534)
                fence.forget(upload_dir)
                code = 0
            finally:
                os._exit(code)
        _, wait_status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(wait_status) == 0, "fence.forget raised"
        run.chmod(0o700)
        assert fence.fence_dir(upload_dir).is_dir()  # and it removed nothing
    finally:
        run.chmod(0o700)
        shutil.rmtree(base)


def test_forget_never_follows_a_symlink_in_place_of_the_fence(
    upload_dir: Path, tmp_path: Path
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "precious").write_text("kept")
    lock.HOST_LOCK_DIR.mkdir(mode=0o700)
    fence.fence_dir(upload_dir).symlink_to(elsewhere)
    fence.forget(upload_dir)
    assert (elsewhere / "precious").read_text() == "kept"


def test_fences_of_two_upload_interfaces_are_independent(
    upload_dir: Path, holders: Callable[..., Holder]
) -> None:
    other = upload_dir.parent / "seamldr_upload"
    other.mkdir()
    holder = holders(upload_dir)
    wait_event(holder.entered, "the update to take the fence")
    fence.register(other, "td1", wait=0.01)  # not kept out by the first interface's update
    assert fence.registrations(upload_dir) == []
    with pytest.raises(TryLater), fence.hold(other, timeout=0.2):
        pytest.fail("the other interface's build was not waited for")


def test_a_td_build_registered_behind_the_fences_back_stops_the_first_write(
    upload_dir: Path,
) -> None:
    with fence.hold(upload_dir, timeout=DEADLINE) as held:
        # a registrant that ignored the protocol's lock
        (fence.fence_dir(upload_dir) / "build-rogue").write_text(
            json.dumps({"name": "rogue", "started": fence.now(), "expires": fence.now() + 60})
        )
        with pytest.raises(TryLater) as caught:
            held.recheck()
    assert caught.value.code == "td-build-in-progress"


def test_the_token_is_documented_with_exit_75() -> None:
    assert EXIT_CODES["td-build-in-progress"] == 75


# --- the emulator's TD builds, and --update on them ----------------------------------------------

SYS_UPLOAD = "sys/class/firmware/tdx_module"


def iface(tool: Tool) -> Path:
    return Path(tool.host.sysroot) / SYS_UPLOAD


@pytest.mark.fuse
def test_emulator_an_update_during_a_build_corrupts_the_td_on_mainline(
    tool_for: Callable[[str], Tool],
) -> None:
    """The hazard the fence exists for: the emulator alone, nobody registered the build."""
    tool = tool_for("ml")
    tool.host.control({"td_build": "start", "name": "td1"})
    assert tool.host.state()["td_builds"] == ["td1"]
    assert_ok(tool("--update", "--json"))  # mainline says nothing
    state = tool.host.state()
    assert state["corrupted_tds"] == ["td1"]
    assert state["module_version"] == TARGET
    tool.host.control({"td_build": "finish", "name": "td1"})
    assert tool.host.state()["td_builds"] == []
    assert tool.host.state()["corrupted_tds"] == ["td1"]


@pytest.mark.fuse
def test_emulator_a_guarded_kernel_answers_device_busy_during_a_build(
    tool_for: Callable[[str], Tool],
) -> None:
    tool = tool_for("v10")
    tool.host.control({"td_build": "start", "name": "td1"})
    assert_fails(tool("--update", "--json"), 75, "device-busy")
    state = tool.host.state()
    assert state["corrupted_tds"] == []
    assert state["module_version"] != TARGET


@pytest.mark.fuse
def test_emulator_td_build_commands_are_checked(tool_for: Callable[[str], Tool]) -> None:
    tool = tool_for("ml")
    for bad, reason in (
        ({"td_build": "finish", "name": "td1"}, "TD 'td1' is not being built"),
        ({"td_build": "begin", "name": "td1"}, 'expected "start" or "finish" and a name'),
        ({"td_build": "start"}, "needs a name, and name goes with td_build only"),
        ({"name": "td1"}, "needs a name, and name goes with td_build only"),
    ):
        with pytest.raises(ValueError, match=f"control td_build: {reason}"):
            tool.host.control(bad)
    tool.host.control({"td_build": "start", "name": "td1"})
    with pytest.raises(ValueError, match="already being built"):
        tool.host.control({"td_build": "start", "name": "td1"})
    tool.host.control({"reset": True})
    assert tool.host.state()["td_builds"] == []


@pytest.mark.fuse
def test_update_waits_for_a_registered_build_and_never_corrupts_it(
    tool_for: Callable[[str], Tool],
) -> None:
    tool = tool_for("ml")
    fence.register(iface(tool), "td1")
    tool.host.control({"td_build": "start", "name": "td1"})
    proc = tool.start("--update", "--json", "--fence-timeout", str(DEADLINE))
    wait_for(lambda: fence.update_running(iface(tool)), "the update to hold the fence")
    assert tool.host.state()["uploads"] == []  # it waits: nothing written during the build
    tool.host.control({"td_build": "finish", "name": "td1"})
    fence.unregister(iface(tool), "td1")
    res = finish(proc)
    assert_ok(res)
    state = tool.host.state()
    assert state["corrupted_tds"] == []
    assert state["module_version"] == TARGET
    assert not fence.update_running(iface(tool))


@pytest.mark.fuse
def test_update_exits_75_when_a_build_outlasts_the_fence_timeout(
    tool_for: Callable[[str], Tool],
) -> None:
    tool = tool_for("ml")
    fence.register(iface(tool), "td1")
    tool.host.control({"td_build": "start", "name": "td1"})
    try:
        doc = assert_fails(tool("--update", "--json", "--fence-timeout", "0.3"), 75,
                           "td-build-in-progress")  # fmt: skip
        assert "TD build(s) td1 still in progress after 0.3 s" in doc["error"]["message"]
        assert_untouched(tool.host)
        assert tool.records() == []
        assert not fence.update_running(iface(tool))
    finally:
        fence.unregister(iface(tool), "td1")


@pytest.mark.fuse
def test_a_signal_while_waiting_for_builds_releases_the_fence(
    tool_for: Callable[[str], Tool],
) -> None:
    import signal

    tool = tool_for("ml")
    fence.register(iface(tool), "td1")
    try:
        proc = tool.start("--update", "--json", "--fence-timeout", str(DEADLINE))
        wait_for(lambda: fence.update_running(iface(tool)), "the update to hold the fence")
        proc.send_signal(signal.SIGTERM)
        res = finish(proc)
        assert res.code == 128 + signal.SIGTERM
        assert res.doc["error"]["code"] == "interrupted"
        assert not fence.update_running(iface(tool))
        assert_untouched(tool.host)
    finally:
        fence.unregister(iface(tool), "td1")


@pytest.mark.fuse
def test_no_build_can_register_while_the_update_streams(tool_for: Callable[[str], Tool]) -> None:
    from test_update import wait_streaming

    tool = tool_for("ml")
    tool.host.control({"fault": f"slow-write={SLOW_WRITE_MS}"})
    proc = tool.start("--update", "--json")
    wait_streaming(tool.host, proc)
    with pytest.raises(TryLater):
        fence.register(iface(tool), "td1", wait=0.1)
    assert_ok(finish(proc))
    fence.register(iface(tool), "td1", wait=0.1)  # released after the confirmation
    fence.unregister(iface(tool), "td1")
