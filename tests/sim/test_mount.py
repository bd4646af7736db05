"""Mounting (tdxupdate.sim.mount): cleanliness on error, FUSE missing, nothing left mounted.

Part of the emulator's tests (tests/sim/); the shared mounts and their reset are in
tests/sim/conftest.py, the helpers in tests/sim/helpers.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from factories.sim import mount_sim

from sim.helpers import (
    TDX_HOST,
    mounts_under,
)
from tdxupdate.errors import TdxError
from tdxupdate.sim import mount as sim_mount
from tdxupdate.sim.cli import main as sim_main

pytestmark = pytest.mark.fuse


def test_simulated_host_unmounts_even_on_error(tmp_path: Path, sim_cache: Path) -> None:
    def fail_while_mounted() -> None:
        with mount_sim(tmp_path, "legacy-g3", cache_dir=sim_cache) as host:
            assert (host.sysroot / TDX_HOST / "seamldr").is_dir()
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        fail_while_mounted()
    assert mounts_under(tmp_path) == []


def test_missing_fuse_is_one_line_and_exit_69(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sim_mount, "DEV_FUSE", tmp_path / "no-fuse")
    assert sim_main(["mount", str(tmp_path / "host")]) == 69
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "FUSE is unavailable" in err
    assert "no-fuse does not exist" in err
    with pytest.raises(TdxError) as info:
        sim_mount.require_fuse()
    assert info.value.code == "fuse-unavailable"
    assert info.value.exit_code == 69


def test_no_emulator_mount_is_left(tmp_path_factory: pytest.TempPathFactory) -> None:
    # every emulator test that ran before this one unmounted what it mounted (tests/sim/conftest.py
    # checks the whole package once its shared mounts are gone)
    base = tmp_path_factory.getbasetemp()
    leftovers = [
        line for line in mounts_under(base) if "/g5" not in line and "/series-" not in line
    ]
    assert leftovers == []
