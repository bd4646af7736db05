"""The emulated sysfs and /proc trees (tdxupdate.sim.sysfs): paths, modes and formats per
kernel generation.

Part of the emulator's tests (tests/sim/); the shared mounts and their reset are in
tests/sim/conftest.py, the helpers in tests/sim/helpers.py.
"""

from __future__ import annotations

import os
import stat
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from sim.helpers import (
    TDX_HOST,
    bugs,
    read,
    upload_dir,
)
from tdxupdate.hostfiles import cpu_signature_from_cpuinfo
from tdxupdate.sim.session import SimHost

pytestmark = pytest.mark.fuse


# --- sysfs tree per generation -------------------------------------------------------------------

EXPECTED_TREE = {
    "v1": {
        "sys/devices/virtual/tdx/tdx_tsm/version": (0o444, "1.5.06\n"),
        "sys/devices/virtual/tdx/seamldr/version": (0o444, "1.5.0\n"),
        "sys/devices/virtual/tdx/seamldr/num_remaining_updates": (0o444, "8\n"),
    },
    "v2": {
        f"{TDX_HOST}/version": (0o444, "1.5.06\n"),
        f"{TDX_HOST}/seamldr/version": (0o444, "1.5.0\n"),
        f"{TDX_HOST}/seamldr/num_remaining_updates": (0o444, "8\n"),
    },
    "v3": {
        f"{TDX_HOST}/version": (0o444, "1.5.06\n"),
        f"{TDX_HOST}/seamldr/version": (0o444, "1.5.00\n"),
        f"{TDX_HOST}/seamldr/num_remaining_updates": (0o444, "8\n"),
        # 1.5.06's tdx_feature0 0x2E1F0FBF lacks bit 47
        f"{TDX_HOST}/compat_capable": (0o444, "0\n"),
    },
    **{
        s: {
            f"{TDX_HOST}/version": (0o444, "1.5.06\n"),
            f"{TDX_HOST}/seamldr/version": (0o400, "1.5.00\n"),
            f"{TDX_HOST}/seamldr/num_remaining_updates": (0o400, "8\n"),
        }
        for s in ("v4", "v7")
    },
    **{
        s: {
            f"{TDX_HOST}/version": (0o444, "1.5.06\n"),
            f"{TDX_HOST}/seamldr_version": (0o400, "1.5.00\n"),
            f"{TDX_HOST}/num_remaining_updates": (0o400, "8\n"),
        }
        for s in ("v8", "v10", "ml")
    },
}

FIRMWARE = {
    "v1": ("seamldr_upload", "../../devices/virtual/tdx/seamldr/seamldr_upload"),
    "v2": ("seamldr_upload", "../../devices/faux/tdx_host/firmware/seamldr_upload"),
    "v3": ("seamldr_upload", "../../devices/faux/tdx_host/firmware/seamldr_upload"),
}
FW_MODES = {
    "loading": 0o644,
    "data": 0o644,
    "status": 0o444,
    "error": 0o444,
    "remaining_size": 0o444,
    "cancel": 0o200,
}


def test_tree_paths_modes_and_formats_per_generation(series_host: SimHost) -> None:
    series = series_host.config.kernel
    root = series_host.sysroot
    for rel, (mode, content) in EXPECTED_TREE[series].items():
        st = os.stat(root / rel)
        assert stat.S_ISREG(st.st_mode), rel
        assert stat.S_IMODE(st.st_mode) == mode, rel
        assert read(root / rel) == content, rel
    if series != "v1":
        expected = {Path(p).relative_to(TDX_HOST).parts[0] for p in EXPECTED_TREE[series]}
        assert set(os.listdir(root / TDX_HOST)) == expected | {"firmware"}
    name, target = FIRMWARE.get(
        series, ("tdx_module", "../../devices/faux/tdx_host/firmware/tdx_module")
    )
    link = root / "sys/class/firmware" / name
    assert os.readlink(link) == target
    assert sorted(os.listdir(root / "sys/class/firmware")) == [name]
    for attr, mode in FW_MODES.items():
        st = os.stat(link / attr)
        assert stat.S_IMODE(st.st_mode) == mode, attr
    assert os.stat(link / "data").st_size == 0
    assert read(root / "sys/devices/system/cpu/online") == "0-7\n"
    assert read(root / "sys/devices/system/cpu/present") == "0-7\n"


def test_write_only_and_read_only_attributes_refuse_the_other_direction(g5: SimHost) -> None:
    udir = upload_dir(g5)
    with pytest.raises(PermissionError):
        (udir / "cancel").read_bytes()
    for name in ("status", "error", "remaining_size"):
        with pytest.raises(PermissionError):
            os.open(udir / name, os.O_WRONLY)
    with pytest.raises(PermissionError):
        os.open(g5.sysroot / TDX_HOST / "version", os.O_WRONLY)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another user")
def test_seamldr_attributes_are_root_only_on_g3_and_later(g5: SimHost) -> None:
    def cat_as_nobody(name: str) -> subprocess.CompletedProcess[str]:
        # cwd is entered before the uid drops, so the (root-only) pytest tmp dirs above the
        # mount do not get in the way; only the emulator's own modes are tested
        return subprocess.run(
            ["cat", name],
            cwd=g5.sysroot / TDX_HOST,
            user=65534,
            group=65534,
            capture_output=True,
            text=True,
            check=False,
        )

    assert cat_as_nobody("version").stdout == "1.5.06\n"
    denied = cat_as_nobody("seamldr_version")
    assert denied.returncode != 0
    assert "Permission denied" in denied.stderr


def test_proc_files_describe_the_configured_cpu(g5: SimHost) -> None:
    cpuinfo = read(g5.sysroot / "proc/cpuinfo")
    assert cpu_signature_from_cpuinfo(cpuinfo) == 0x806F8
    assert cpuinfo.count("processor\t:") == 8
    assert "seamret_invd_vmcs" not in bugs(cpuinfo)
    assert "spectre_v1" in bugs(cpuinfo)
    assert read(g5.sysroot / "proc/sys/kernel/osrelease") == "7.2.0\n"
    g5.control({"cpu": "0xa06d0", "online": "0-3"})
    cpuinfo = read(g5.sysroot / "proc/cpuinfo")
    assert cpu_signature_from_cpuinfo(cpuinfo) == 0xA06D0
    assert cpuinfo.count("processor\t:") == 4


def test_erratum_hides_the_update_interface(sim: Callable[..., SimHost]) -> None:
    host = sim("erratum")
    tdx = host.sysroot / TDX_HOST
    assert read(tdx / "version") == "1.5.06\n"
    assert not (tdx / "seamldr_version").exists()
    assert not (tdx / "firmware").exists()
    assert os.listdir(host.sysroot / "sys/class/firmware") == []
    assert "seamret_invd_vmcs" in bugs(read(host.sysroot / "proc/cpuinfo"))


def test_no_tdx_host_profile_has_no_device(sim: Callable[..., SimHost]) -> None:
    host = sim("no-tdx-host")
    assert not (host.sysroot / TDX_HOST).exists()
    assert (host.sysroot / "proc/cpuinfo").exists()
