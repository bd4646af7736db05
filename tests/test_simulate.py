"""``--simulate`` keeps to itself (issue 9 item 18): its lock and history never go into a real
state directory, and a signal at any moment leaves no temporary directory behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from factories.sim import require_fuse

pytestmark = pytest.mark.fuse

DEADLINE = 60.0


def simulate(tmp_path: Path, sim_cache: Path, *args: str) -> subprocess.Popen[str]:
    require_fuse()
    cache = tmp_path / "cache"
    cache.mkdir(exist_ok=True)
    if not (cache / "sim").exists():
        (cache / "sim").symlink_to(sim_cache)
    tmp = tmp_path / "tmp"
    tmp.mkdir(exist_ok=True)
    env = dict(os.environ, TMPDIR=str(tmp), TDXUPDATE_STATE_DIR=str(tmp_path / "real-state"))
    return subprocess.Popen(
        [sys.executable, "-m", "tdxupdate", "--simulate", "--cache-dir", str(cache), *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def test_simulate_never_writes_into_the_configured_state_dir(
    tmp_path: Path, sim_cache: Path
) -> None:
    proc = simulate(tmp_path, sim_cache, "--update")
    _out, err = proc.communicate(timeout=DEADLINE)
    assert proc.returncode == 0, err
    real = tmp_path / "real-state"
    assert not real.exists() or list(real.iterdir()) == []
    assert list((tmp_path / "tmp").iterdir()) == []


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_a_signal_during_simulate_leaves_no_temporary_directory(
    tmp_path: Path, sim_cache: Path, signum: signal.Signals
) -> None:
    proc = simulate(tmp_path, sim_cache, "--update", "--timeout", "30")
    tmp = tmp_path / "tmp"
    deadline = time.monotonic() + DEADLINE
    while not any(tmp.iterdir()) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.send_signal(signum)
    _out, err = proc.communicate(timeout=DEADLINE)
    # interrupted (128 + signal), or finished first when the signal came during the stream
    assert proc.returncode in (0, 128 + signum), err
    assert "Traceback" not in err
    assert list(tmp.iterdir()) == []
