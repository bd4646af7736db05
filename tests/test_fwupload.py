"""tdxupdate.fwupload: the UploadInterface handle and the guard against plain-file trees."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest
from factories.hosts import build_host_tree
from factories.sysroot import FaultySysroot

from tdxupdate import host, uploader
from tdxupdate.errors import TdxError
from tdxupdate.fwupload import filesystem_type, require_upload_filesystem


def test_the_filesystem_type_comes_from_mountinfo(tmp_path: Path) -> None:
    info = tmp_path / "mountinfo"
    info.write_text(
        "22 1 8:1 / / rw - ext4 /dev/sda1 rw\n"
        "23 22 0:21 / /sys rw - sysfs sysfs rw\n"
        "60 22 0:50 / /tmp/my\\040host rw - fuse.tdxsim tdxsim rw\n"
    )
    assert filesystem_type(Path("/sys/class/firmware"), info) == "sysfs"
    assert filesystem_type(Path("/tmp/my host/sys"), info) == "fuse.tdxsim"
    assert filesystem_type(Path("/srv/x"), info) == "ext4"
    assert filesystem_type(Path("/systemd"), info) == "ext4"  # not under /sys


def test_the_guard_has_one_door() -> None:
    assert not hasattr(uploader, "filesystem_type")
    assert not hasattr(uploader, "require_upload_filesystem")
    assert not hasattr(uploader, "UPLOAD_FILESYSTEMS")
    assert "UploadInterface" not in uploader.__all__


def test_discover_hands_over_the_upload_interface(tmp_path: Path) -> None:
    root = build_host_tree(tmp_path / "host")
    sysroot = FaultySysroot(root)
    facts = host.discover(sysroot)
    iface = facts.upload
    assert iface is not None
    assert iface.sysroot is sysroot
    assert iface.dir == facts.upload_dir == root / "sys/class/firmware/tdx_module"
    assert iface.firmware_name == "tdx_module"
    assert (iface.loading, iface.data, iface.status, iface.error, iface.remaining_size) == tuple(
        iface.dir / n for n in ("loading", "data", "status", "error", "remaining_size")
    )
    assert str(iface) == str(iface.dir)
    assert iface.read(iface.status) == "idle"
    assert iface.read_remaining() == 0


def test_no_upload_interface_no_handle(tmp_path: Path) -> None:
    facts = host.discover(build_host_tree(tmp_path / "host", firmware=False))
    assert facts.upload is None
    assert facts.upload_dir is None


def test_the_handle_reads_through_its_sysroot(tmp_path: Path) -> None:
    root = build_host_tree(tmp_path / "host")
    status = "/sys/class/firmware/tdx_module/status"
    sysroot = FaultySysroot(root).fail(status, errno.EIO)
    facts = host.discover(sysroot)
    assert facts.upload is not None
    with pytest.raises(OSError, match="Input/output error") as info:
        facts.upload.read(facts.upload.status)
    assert info.value.errno == errno.EIO
    sysroot.fail("/sys/class/firmware/tdx_module/remaining_size", errno.ENXIO)
    assert facts.upload.read_remaining() is None  # informational only


def test_a_plain_tree_is_refused_through_the_handle(tmp_path: Path) -> None:
    facts = host.discover(build_host_tree(tmp_path / "host"))
    assert facts.upload is not None
    with pytest.raises(TdxError) as info:
        require_upload_filesystem(facts.upload)
    assert info.value.code == "no-upload-interface"
    assert "not sysfs" in info.value.message
