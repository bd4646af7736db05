"""The emulated fw_upload interface (tdxupdate.sim.fwupload): short writes, data, loading,
status, cancel.

Part of the emulator's tests (tests/sim/); the shared mounts and their reset are in
tests/sim/conftest.py, the helpers in tests/sim/helpers.py.
"""

from __future__ import annotations

import errno
import os
import subprocess
import time

import pytest

from sim.helpers import (
    commit,
    image,
    last_upload,
    read,
    read_errno,
    status,
    upload,
    upload_dir,
    version_of,
    wait_hung,
    wait_idle,
    write_attr,
    write_data,
    write_errno,
)
from tdxupdate.sim.fwupload import kstrtobool, simple_strtol
from tdxupdate.sim.repo import SampleRepo
from tdxupdate.sim.session import SimHost

pytestmark = pytest.mark.fuse


# --- fw_upload: short writes, data, loading ----------------------------------------------------


def test_data_write_is_short_one_page_per_call(g5: SimHost) -> None:
    udir = upload_dir(g5)
    write_attr(udir / "loading", "1")
    fd = os.open(udir / "data", os.O_WRONLY)
    try:
        assert os.write(fd, b"A" * 10000) == 4096
        assert os.write(fd, b"B" * 10000) == 4096
        assert os.pwrite(fd, b"C" * 10, 20000) == 10
    finally:
        os.close(fd)
    data = (udir / "data").read_bytes()
    assert data == b"A" * 4096 + b"B" * 4096 + bytes(20000 - 8192) + b"C" * 10
    # a new open() writes from offset 0 again and overwrites
    fd = os.open(udir / "data", os.O_WRONLY)
    try:
        os.write(fd, b"ZZ")
    finally:
        os.close(fd)
    assert (udir / "data").read_bytes()[:4] == b"ZZAA"
    write_attr(udir / "loading", "-1")


def test_short_write_fault_sets_the_page_size(g5: SimHost) -> None:
    udir = upload_dir(g5)
    g5.control({"fault": "short-write=1000"})
    write_attr(udir / "loading", "1")
    fd = os.open(udir / "data", os.O_WRONLY)
    try:
        assert os.write(fd, b"x" * 5000) == 1000
    finally:
        os.close(fd)
    write_attr(udir / "loading", "-1")


def test_slow_write_fault_delays_each_page(g5: SimHost) -> None:
    udir = upload_dir(g5)
    g5.control({"fault": "slow-write=150"})
    write_attr(udir / "loading", "1")
    fd = os.open(udir / "data", os.O_WRONLY)
    try:
        started = time.monotonic()
        assert os.write(fd, b"x" * 4096) == 4096
        assert time.monotonic() - started >= 0.15  # a lower bound: the fault's own delay
    finally:
        os.close(fd)
    assert g5.state()["slow_write_ms"] == 150
    write_attr(udir / "loading", "-1")


def test_loading_values_and_aborts(g5: SimHost, sample_repo: SampleRepo) -> None:
    udir = upload_dir(g5)
    assert read(udir / "loading") == "0\n"
    assert write_attr(udir / "loading", "1") == 1
    assert read(udir / "loading") == "1\n"
    # a second loading=1 discards the partial buffer
    write_data(udir, b"old" * 100)
    write_attr(udir / "loading", "1")
    assert (udir / "data").read_bytes() == b""
    uploads_before = len(g5.state()["uploads"])
    for stray in ("2", "-1", "-5"):
        write_attr(udir / "loading", "1")
        write_data(udir, b"partial")
        assert write_attr(udir / "loading", stray) == len(stray)  # "succeeds"
        assert read(udir / "loading") == "0\n"
        # after an abort, loading=0 is a stray 0 and starts nothing
        assert write_attr(udir / "loading", "0") == 1
        assert status(udir) == "idle"
    # data written without loading=1 is accepted and then thrown away
    write_data(udir, image(sample_repo, "1.5.08"))
    write_attr(udir / "loading", "0")
    assert status(udir) == "idle"
    assert len(g5.state()["uploads"]) == uploads_before
    assert version_of(g5) == "1.5.06"
    # simple_strtol reads "abc" as 0: while loading it commits like "0"
    write_attr(udir / "loading", "1")
    write_data(udir, image(sample_repo, "1.5.08"))
    assert write_attr(udir / "loading", "abc") == 3
    wait_idle(udir)
    assert version_of(g5) == "1.5.08"


def test_empty_commit_starts_nothing(g5: SimHost) -> None:
    udir = upload_dir(g5)
    write_attr(udir / "loading", "1")
    assert write_attr(udir / "loading", "0") == 1
    assert status(udir) == "idle"
    assert g5.state()["uploads"] == []


def test_receiving_is_set_inside_the_commit(g5: SimHost, sample_repo: SampleRepo) -> None:
    udir = upload_dir(g5)
    g5.control({"fault": "hang:receiving"})
    commit(udir, image(sample_repo, "1.5.08"))
    assert status(udir) == "receiving"
    g5.control({"unhang": True})
    wait_idle(udir)
    assert read(udir / "error") == ""


def test_status_walks_every_stage(g5: SimHost, sample_repo: SampleRepo) -> None:
    udir = upload_dir(g5)
    for stage in ("receiving", "preparing", "transferring", "programming"):
        g5.control({"fault": f"hang:{stage}"})
    commit(udir, image(sample_repo, "1.5.08"))
    seen = []
    for stage in ("receiving", "preparing", "transferring", "programming"):
        wait_hung(g5, stage)
        seen.append(status(udir))
        g5.control({"unhang": True})
    wait_idle(udir)
    assert seen == ["receiving", "preparing", "transferring", "programming"]
    assert read(udir / "error") == ""
    assert version_of(g5) == "1.5.08"


def test_busy_upload_refuses_error_data_and_ignores_loading(
    g5: SimHost, sample_repo: SampleRepo
) -> None:
    udir = upload_dir(g5)
    img = image(sample_repo, "1.5.08")
    g5.control({"fault": "hang:transferring"})
    commit(udir, img)
    wait_hung(g5, "transferring")
    assert status(udir) == "transferring"
    assert read_errno(udir / "error") == errno.EBUSY
    assert read_errno(udir / "data") == errno.ENODEV
    assert write_errno(udir / "data", b"x") == errno.ENODEV
    assert read(udir / "loading") == "0\n"
    assert write_attr(udir / "loading", "1") == 1  # silently ignored
    assert read(udir / "loading") == "0\n"
    assert read(udir / "remaining_size") == f"{len(img)}\n"
    # mainline ignores cancel: the write succeeds, nothing happens
    assert write_attr(udir / "cancel", "1") == 1
    assert status(udir) == "transferring"
    assert g5.state()["upload"]["counters"]["loading_ignored"] == 1
    g5.control({"unhang": True})
    wait_idle(udir)
    assert read(udir / "error") == ""
    assert read(udir / "remaining_size") == "0\n"
    assert version_of(g5) == "1.5.08"


def test_shell_redirection_works_on_attributes(g5: SimHost) -> None:
    # ``echo 1 > loading`` opens with O_TRUNC, which sysfs ignores
    result = subprocess.run(
        ["sh", "-c", "echo 1 > loading && cat loading && echo -1 > loading && cat loading"],
        cwd=upload_dir(g5),
        capture_output=True,
        text=True,
        check=True,
    )
    assert result.stdout == "1\n0\n"


def test_cancel_values(g5: SimHost) -> None:
    udir = upload_dir(g5)
    assert write_errno(udir / "cancel", b"1") == errno.ENODEV  # idle
    assert write_errno(udir / "cancel", b"0") == errno.EINVAL
    assert write_errno(udir / "cancel", b"maybe") == errno.EINVAL


def test_commit_while_the_last_upload_winds_down_is_ebusy(
    g5: SimHost, sample_repo: SampleRepo
) -> None:
    udir = upload_dir(g5)
    img = image(sample_repo, "1.5.08")
    g5.control({"idle_lag_ms": 60000})
    commit(udir, img)
    wait_hung(g5, "idle-lag")
    assert status(udir) == "programming"
    write_attr(udir / "loading", "1")  # the loader is free again ...
    write_data(udir, img)
    assert write_errno(udir / "loading", b"0") == errno.EBUSY  # ... the upload is not
    g5.control({"unhang": True})
    wait_idle(udir)
    assert len(g5.state()["uploads"]) == 1


def test_error_persists_until_the_next_real_upload(g5: SimHost, sample_repo: SampleRepo) -> None:
    udir = upload_dir(g5)
    img = image(sample_repo, "1.5.08")
    g5.control({"fault": "transferring:hw-error", "times": 1})
    assert upload(udir, img) == "transferring:hw-error\n"
    assert read(udir / "remaining_size") == f"{len(img)}\n"
    write_attr(udir / "loading", "-1")
    write_attr(udir / "loading", "1")
    write_attr(udir / "loading", "0")  # empty commit
    write_attr(udir / "loading", "0")  # stray
    assert read(udir / "error") == "transferring:hw-error\n"
    assert upload(udir, img) == ""
    assert version_of(g5) == "1.5.08"


def test_received_bytes_are_what_was_written(g5: SimHost, sample_repo: SampleRepo) -> None:
    udir = upload_dir(g5)
    img = image(sample_repo, "1.5.24")
    assert upload(udir, img) == ""
    assert g5.received() == img
    record = last_upload(g5)
    assert record["size"] == len(img)
    assert record["format"] == "0x200"


def test_parsers_follow_the_kernel() -> None:
    assert [simple_strtol(b) for b in (b"1\n", b"-1", b"abc", b" 12x", b"+3")] == [1, -1, 0, 12, 3]
    assert [kstrtobool(b) for b in (b"1", b"Y", b"on", b"0", b"off", b"x")] == [
        True, True, True, False, False, None,
    ]  # fmt: skip
