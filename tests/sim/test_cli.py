"""tdxupdate-sim's command line (tdxupdate.sim.cli): mount, umount, bad settings.

Part of the emulator's tests (tests/sim/); the shared mounts and their reset are in
tests/sim/conftest.py, the helpers in tests/sim/helpers.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from factories.sim import require_fuse

from sim.helpers import (
    TDX_HOST,
    mounts_under,
    read,
)
from tdxupdate import fence, lock
from tdxupdate.sim.cli import main as sim_main

pytestmark = pytest.mark.fuse


def test_cli_mount_and_umount_leave_nothing_behind(tmp_path: Path) -> None:
    require_fuse()
    target = tmp_path / "host"
    rc = subprocess.run(
        [sys.executable, "-m", "tdxupdate.sim", "mount", str(target), "--generation", "G3",
         "--module", "1.5.08", "--remaining", "3", "--fault", "device-busy"],
        check=False,
    ).returncode  # fmt: skip
    assert rc == 0
    try:
        assert read(target / TDX_HOST / "seamldr/num_remaining_updates") == "3\n"
        assert read(target / TDX_HOST / "version") == "1.5.08\n"
        state = json.loads((target / ".tdxsim/state").read_bytes())
        assert state["kernel"] == "v7"
        assert state["faults"][0]["fault"] == "device-busy"
    finally:
        assert sim_main(["umount", str(target)]) == 0
    assert mounts_under(target) == []
    assert sim_main(["umount", str(target)]) == 74


def test_cli_umount_removes_the_hosts_lock_and_fence(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What updates of the mounted host left under /run/tdxupdate goes with it, as for a
    session's host: ``unmount`` itself forgets them."""
    require_fuse()
    run = tmp_path / "run"
    monkeypatch.setattr(lock, "HOST_LOCK_DIR", run)
    target = tmp_path / "host"
    rc = subprocess.run([sys.executable, "-m", "tdxupdate.sim", "mount", str(target)], check=False)
    assert rc.returncode == 0
    try:
        [interface] = (target / "sys/class/firmware").iterdir()
        lock.acquire_host(interface).release()
        fence.register(interface, "td1")
        assert len(list(run.iterdir())) == 2
    finally:
        assert sim_main(["umount", str(target)]) == 0
    assert list(run.iterdir()) == []


def test_cli_rejects_bad_settings_with_64(capsys: pytest.CaptureFixture[str]) -> None:
    assert sim_main(["mount", "/nonexistent/x", "--module", "one"]) == 64
    assert "module" in capsys.readouterr().err
    assert sim_main(["mount", "/nonexistent/x", "--profile", "nope"]) == 64
