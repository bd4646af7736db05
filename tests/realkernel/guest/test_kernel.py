"""The VM itself: the kernel under test is the one the tier built, with the ABI it relies on.

Raw sysfs writes only, no tdxupdate: if these fail, the tier's kernel or patch is wrong, not
the tool. Facts checked are those of real-kernel-tier.md §6 that the other guest tests build on.
"""

from __future__ import annotations

import errno
import os
import sys
from pathlib import Path

import pytest

from realkernel.guest import kfw

pytestmark = pytest.mark.realkernel

FULL_SIZE = 2_039_808  # the largest Format B image (kernel-abi.md §4)


def test_guest_environment() -> None:
    # The host's root is mounted read-only and this interpreter is the host's.
    assert Path("/proc/self/mountinfo").read_text().count(" 9p ") >= 2
    with pytest.raises(OSError, match="Read-only file system") as exc:
        Path(__file__).with_name("probe-write").write_text("x")
    assert exc.value.errno == errno.EROFS
    assert os.environ["TDXUPDATE_RK_PYTHON"] == sys.executable
    assert os.uname().release.startswith("6.1.")
    assert kfw.TEST_FIRMWARE.is_dir()


def test_device_attributes(tdx_module: Path, seamldr_upload: Path) -> None:
    for fw in (tdx_module, seamldr_upload):
        assert fw.is_symlink()
        assert Path(os.path.realpath(fw)).parent == kfw.TEST_FIRMWARE
        assert {"loading", "data", "status", "error", "remaining_size", "cancel"} <= set(
            os.listdir(fw)
        )
        assert kfw.status(fw) == "idle"


def test_small_upload_round_trip(tdx_module: Path) -> None:
    data = bytes(range(256)) * 8
    err, remaining = kfw.raw_upload(tdx_module, data)
    assert (err, remaining) == ("", 0)
    assert kfw.upload_read("tdx_module") == data


def test_upload_limit_raised_for_full_size_images(tdx_module: Path) -> None:
    # Stock test_firmware refuses anything over 2048 bytes (pitfall 8).
    data = os.urandom(FULL_SIZE)
    err, remaining = kfw.raw_upload(tdx_module, data)
    assert (err, remaining) == ("", 0)
    # upload_read returns the first page (minus the byte sysfs reserves) of a large upload.
    assert kfw.upload_read("tdx_module") == data[: kfw.UPLOAD_READ_MAX]
    err, remaining = kfw.raw_upload(tdx_module, b"\x01" * (4 * 1024 * 1024 + 1))
    assert err == "preparing:invalid-file-size\n"


def test_data_reads_back_before_commit(tdx_module: Path) -> None:
    data = os.urandom(600 * 1024)
    kfw.write_attr(tdx_module / "loading", "1")
    assert kfw.write_data(tdx_module, data) == len(data)
    assert kfw.read_bytes(tdx_module / "data") == data
    kfw.write_attr(tdx_module / "loading", "-1")
    assert kfw.status(tdx_module) == "idle"


@pytest.mark.parametrize("stage", kfw.STAGES)
def test_inline_injection(tdx_module: Path, stage: str) -> None:
    payload = f"inject:{stage}:hw-error".encode()
    err, remaining = kfw.raw_upload(tdx_module, payload)
    assert err == f"{stage}:hw-error\n"
    # remaining_size keeps its value at the failure point (real-kernel-tier.md §6.4)
    assert remaining == (0 if stage == "programming" else len(payload))


def test_inject_next_applies_to_one_real_upload(tdx_module: Path) -> None:
    kfw.inject_next("inject:transferring:flash-wearout")
    assert kfw.pending_injection() == "inject:transferring:flash-wearout"
    data = os.urandom(8192)
    err, _ = kfw.raw_upload(tdx_module, data)
    assert err == "transferring:flash-wearout\n"
    assert kfw.pending_injection() == ""
    err, remaining = kfw.raw_upload(tdx_module, data)
    assert (err, remaining) == ("", 0)


def test_hold_and_cancel(tdx_module: Path) -> None:
    kfw.hold(tdx_module, "transferring")
    with pytest.raises(OSError, match="Device or resource busy") as exc:
        kfw.error(tdx_module)
    assert exc.value.errno == errno.EBUSY
    kfw.cancel(tdx_module)
    assert kfw.error(tdx_module) == "transferring:user-abort\n"


def test_busy_device_ignores_a_new_load(tdx_module: Path) -> None:
    # Why the uploader checks status before loading=1: while an upload runs, loading=1 and
    # loading=0 "succeed" without doing anything, and data writes fail with ENODEV
    # (real-kernel-tier.md §6.3, §6.8).
    held = kfw.hold(tdx_module, "preparing")
    assert kfw.write_attr(tdx_module / "loading", "1") == 1
    assert kfw.read_attr(tdx_module / "loading").strip() == "0"
    with pytest.raises(OSError, match="No such device") as exc:
        kfw.write_data(tdx_module, b"second image")
    assert exc.value.errno == errno.ENODEV
    assert kfw.write_attr(tdx_module / "loading", "0") == 1
    assert kfw.status(tdx_module) == "preparing"
    kfw.cancel(tdx_module)
    assert kfw.error(tdx_module) == "preparing:user-abort\n"
    assert len(kfw.upload_read("tdx_module")) == len(held)
