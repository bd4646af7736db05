"""The FUSE operations of the emulator (tdxupdate.sim.fs): files, modes and errors of the model.

Most tests call :class:`SimFilesystem`'s operations directly on a :class:`SimKernel` (no mount
needed, only mfusepy); the few marked ``fuse`` check the same through a mounted host.

Part of the emulator's tests (tests/sim/); the shared mounts are in tests/sim/conftest.py.
"""

from __future__ import annotations

import errno
import json
import os
import stat
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from sim.helpers import DEADLINE, TDX_HOST, image, read
from tdxupdate.sim.config import SimConfig
from tdxupdate.sim.kernel import SimKernel
from tdxupdate.sim.repo import SampleRepo
from tdxupdate.sim.session import SimHost
from tdxupdate.sim.sysfs import PAGE, Attribute

mfusepy = pytest.importorskip(
    "mfusepy", reason="the emulator's FUSE operations need mfusepy (pip install mfusepy)"
)
from tdxupdate.sim.fs import SimFilesystem, serve  # noqa: E402  (needs mfusepy)

UPLOAD = f"{TDX_HOST}/firmware/tdx_module"


@pytest.fixture
def kernel(sample_repo: SampleRepo) -> Iterator[SimKernel]:
    config = SimConfig.from_settings(
        mapping=sample_repo.mapping_path, trusted_signers=sample_repo.trusted_signers
    )
    k = SimKernel(config)
    try:
        yield k
    finally:
        k.shutdown()


@pytest.fixture
def ops(kernel: SimKernel) -> SimFilesystem:
    return SimFilesystem(kernel)


def errno_of(call: Callable[[], object]) -> int:
    """The errno the operation fails with (it must fail, and as a FuseOSError)."""
    with pytest.raises(mfusepy.FuseOSError) as info:
        call()
    code = info.value.errno
    assert isinstance(code, int)
    return code


def read_all(ops: SimFilesystem, path: str) -> bytes:
    fh = ops.open(path, os.O_RDONLY)
    try:
        data: bytes = ops.read(path, 65536, 0, fh)
        return data
    finally:
        ops.release(path, fh)


def store(ops: SimFilesystem, path: str, data: bytes) -> int:
    fh = ops.open(path, os.O_WRONLY)
    try:
        count: int = ops.write(path, data, 0, fh)
        return count
    finally:
        ops.release(path, fh)


def privileged(monkeypatch: pytest.MonkeyPatch, uid: int) -> None:
    """Make the FUSE request look as if ``uid`` sent it."""
    monkeypatch.setattr(mfusepy, "fuse_get_context", lambda: (uid, uid, 4242))


# --- getattr, readdir, readlink ------------------------------------------------------------------


def test_directories_are_0755_owned_by_the_mounting_user(ops: SimFilesystem) -> None:
    root = ops.getattr("/")
    assert root["st_mode"] == stat.S_IFDIR | 0o755
    assert root["st_nlink"] == 2 + 3  # .tdxsim, proc, sys
    assert (root["st_uid"], root["st_gid"]) == (os.getuid(), os.getgid())
    assert ops.getattr(f"/{TDX_HOST}/firmware")["st_mode"] == stat.S_IFDIR | 0o755
    assert ops.getattr("/sys/class/firmware/")["st_nlink"] == 2  # trailing slash is the same


@pytest.mark.parametrize(
    ("path", "mode", "size"),
    [
        (f"{TDX_HOST}/version", 0o444, PAGE),
        (f"{TDX_HOST}/seamldr_version", 0o400, PAGE),
        (f"{UPLOAD}/loading", 0o644, PAGE),
        (f"{UPLOAD}/data", 0o644, 0),
        (f"{UPLOAD}/cancel", 0o200, PAGE),
        ("proc/cpuinfo", 0o444, 0),
        (".tdxsim/control", 0o600, 0),
    ],
)
def test_files_report_their_sysfs_mode_and_size(
    ops: SimFilesystem, path: str, mode: int, size: int
) -> None:
    attrs = ops.getattr(f"/{path}")
    assert attrs["st_mode"] == stat.S_IFREG | mode
    assert attrs["st_size"] == size
    assert attrs["st_nlink"] == 1
    assert attrs["st_mtime"] == ops.time_ns  # use_ns: nanosecond timestamps


def test_the_firmware_class_entry_is_a_symlink_to_the_device(ops: SimFilesystem) -> None:
    target = "../../devices/faux/tdx_host/firmware/tdx_module"
    attrs = ops.getattr("/sys/class/firmware/tdx_module")
    assert attrs["st_mode"] == stat.S_IFLNK | 0o777
    assert attrs["st_size"] == len(target)
    assert ops.readlink("/sys/class/firmware/tdx_module") == target


def test_readdir_lists_dot_entries_then_sorted_names(ops: SimFilesystem) -> None:
    assert ops.readdir("/", 0) == [".", "..", ".tdxsim", "proc", "sys"]
    assert ops.readdir(f"/{UPLOAD}", 0) == [
        ".",
        "..",
        "cancel",
        "data",
        "error",
        "loading",
        "remaining_size",
        "status",
    ]


def test_lookup_errors_carry_the_kernels_errno(ops: SimFilesystem) -> None:
    assert errno_of(lambda: ops.getattr("/sys/nope")) == errno.ENOENT
    assert errno_of(lambda: ops.readdir(f"/{TDX_HOST}/version", 0)) == errno.ENOTDIR
    assert errno_of(lambda: ops.readdir("/nope", 0)) == errno.ENOTDIR
    assert errno_of(lambda: ops.readlink(f"/{TDX_HOST}/version")) == errno.EINVAL
    assert errno_of(lambda: ops.readlink("/sys")) == errno.EISDIR
    assert errno_of(lambda: ops.open("/sys", os.O_RDONLY)) == errno.EISDIR
    assert errno_of(lambda: ops.open("/sys/nope", os.O_RDONLY)) == errno.ENOENT
    assert errno_of(lambda: ops.truncate("/sys/nope", 0)) == errno.ENOENT


def test_a_host_without_tdx_host_has_no_such_files(sample_repo: SampleRepo) -> None:
    k = SimKernel(SimConfig.from_settings(tdx_host=False, mapping=sample_repo.mapping_path))
    try:
        ops = SimFilesystem(k)
        assert errno_of(lambda: ops.getattr(f"/{TDX_HOST}/version")) == errno.ENOENT
        assert "faux" not in ops.readdir("/sys/devices", 0)
    finally:
        k.shutdown()


# --- open, read, write ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "flags"),
    [
        (f"{UPLOAD}/cancel", os.O_RDONLY),  # no show
        (f"{UPLOAD}/cancel", os.O_RDWR),
        (f"{TDX_HOST}/version", os.O_WRONLY),  # no store
        (f"{UPLOAD}/status", os.O_RDWR),
        (".tdxsim/received", os.O_WRONLY),
        (".tdxsim/control", os.O_RDONLY),
    ],
)
def test_opening_without_show_or_store_is_eacces(ops: SimFilesystem, path: str, flags: int) -> None:
    assert errno_of(lambda: ops.open(f"/{path}", flags)) == errno.EACCES


def test_open_hands_out_distinct_handles(ops: SimFilesystem) -> None:
    handles = {
        ops.open(f"/{UPLOAD}/loading", os.O_RDWR),
        ops.open(f"/{UPLOAD}/cancel", os.O_WRONLY),
        ops.open(f"/{UPLOAD}/data", os.O_RDWR),
        ops.open(f"/{TDX_HOST}/version", os.O_RDONLY),
    }
    assert len(handles) == 4


def test_reads_show_the_model(ops: SimFilesystem) -> None:
    assert read_all(ops, f"/{TDX_HOST}/version") == b"1.5.06\n"
    assert read_all(ops, f"/{TDX_HOST}/num_remaining_updates") == b"8\n"
    assert read_all(ops, f"/{UPLOAD}/status") == b"idle\n"
    assert read_all(ops, "/sys/devices/system/cpu/online") == b"0-7\n"
    fh = ops.open(f"/{TDX_HOST}/version", os.O_RDONLY)
    assert ops.read(f"/{TDX_HOST}/version", 3, 2, fh) == b"5.0"
    assert ops.read(f"/{TDX_HOST}/version", 10, 7, fh) == b""


def test_a_read_continues_in_the_snapshot_of_its_open_file(ops: SimFilesystem) -> None:
    path = "/.tdxsim/state"
    fh = ops.open(path, os.O_RDONLY)
    head = ops.read(path, 16, 0, fh)
    first = ops.read(path, 1 << 20, 0, fh)
    assert first.startswith(head)
    assert json.loads(first)["num_remaining_updates"] == 8
    assert store(ops, "/.tdxsim/control", b'{"remaining": 3}\n') == len(b'{"remaining": 3}\n')
    # later offsets of the same open file read the old snapshot: one consistent document
    assert head + ops.read(path, 1 << 20, len(head), fh) == first
    # a read at offset 0 is a fresh show
    assert json.loads(ops.read(path, 1 << 20, 0, fh))["num_remaining_updates"] == 3
    ops.release(path, fh)
    assert fh not in ops._snapshots


def test_a_store_gets_at_most_one_page_per_write(
    ops: SimFilesystem, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[bytes] = []

    def take(buf: bytes) -> int:
        seen.append(buf)
        return len(buf)

    ops.nodes["probe"] = Attribute(0o644, None, take)
    assert ops.write("/probe", b"x" * (PAGE + 100), 0, 1) == PAGE
    assert seen == [b"x" * PAGE]
    # and a real attribute: loading takes the page and reports it taken
    assert store(ops, f"/{UPLOAD}/loading", b"-1" + b" " * (2 * PAGE)) == PAGE


@pytest.mark.parametrize(
    ("raised", "expected"),
    [
        (OSError(errno.EBUSY, "busy"), errno.EBUSY),
        (OSError(errno.ENXIO, "gone"), errno.ENXIO),
        (OSError("no errno"), errno.EIO),
    ],
)
def test_model_errors_become_the_callers_errno(
    ops: SimFilesystem, raised: OSError, expected: int
) -> None:
    def fail(*args: object) -> Any:
        raise raised

    ops.nodes["probe"] = Attribute(0o644, fail, fail)
    fh = ops.open("/probe", os.O_RDWR)
    assert errno_of(lambda: ops.read("/probe", 10, 0, fh)) == expected
    assert errno_of(lambda: ops.write("/probe", b"1", 0, fh)) == expected


def test_the_models_own_refusals_reach_the_caller(ops: SimFilesystem) -> None:
    # cancel with nothing to cancel: ENODEV (kernel-abi.md §2)
    fh = ops.open(f"/{UPLOAD}/cancel", os.O_WRONLY)
    assert errno_of(lambda: ops.write(f"/{UPLOAD}/cancel", b"1\n", 0, fh)) == errno.ENODEV
    assert errno_of(lambda: ops.write(f"/{UPLOAD}/cancel", b"maybe", 0, fh)) == errno.EINVAL
    # a control command the emulator refuses: EINVAL, and the reason kept in its state
    fh = ops.open("/.tdxsim/control", os.O_WRONLY)
    assert errno_of(lambda: ops.write("/.tdxsim/control", b'{"bogus": 1}\n', 0, fh)) == (
        errno.EINVAL
    )
    assert "bogus" in json.loads(read_all(ops, "/.tdxsim/state"))["control_error"]


def test_symlinks_cannot_be_read_or_written(ops: SimFilesystem) -> None:
    link = "/sys/class/firmware/tdx_module"
    assert errno_of(lambda: ops.read(link, 10, 0, 1)) == errno.EINVAL
    assert errno_of(lambda: ops.write(link, b"1", 0, 1)) == errno.EINVAL


def test_writing_data_needs_the_mounting_user_or_root(
    ops: SimFilesystem, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = f"/{UPLOAD}/data"
    assert store(ops, f"/{UPLOAD}/loading", b"1\n") == 2
    fh = ops.open(data, os.O_WRONLY)
    privileged(monkeypatch, os.getuid() + 1000)
    assert errno_of(lambda: ops.write(data, b"\0" * 10, 0, fh)) == errno.EPERM
    privileged(monkeypatch, 0)
    assert ops.write(data, b"\1" * 10, 0, fh) == 10
    privileged(monkeypatch, os.getuid())
    # one page per write(), as kernfs hands it over
    assert ops.write(data, b"\2" * (PAGE + 1), 10, fh) == PAGE
    assert ops.read(data, 12, 0, fh) == b"\1" * 10 + b"\2" * 2


def test_a_whole_upload_through_the_operations_updates_the_module(
    ops: SimFilesystem, sample_repo: SampleRepo, monkeypatch: pytest.MonkeyPatch
) -> None:
    privileged(monkeypatch, os.getuid())
    blob = image(sample_repo, "1.5.08")
    assert store(ops, f"/{UPLOAD}/loading", b"1") == 1
    fh = ops.open(f"/{UPLOAD}/data", os.O_WRONLY)
    offset = 0
    while offset < len(blob):
        offset += ops.write(f"/{UPLOAD}/data", blob[offset:], offset, fh)
    ops.release(f"/{UPLOAD}/data", fh)
    assert store(ops, f"/{UPLOAD}/loading", b"0") == 1
    deadline = time.monotonic() + DEADLINE
    while read_all(ops, f"/{UPLOAD}/status") != b"idle\n":
        assert time.monotonic() < deadline, "the upload never ended"
        time.sleep(0.005)
    assert read_all(ops, f"/{UPLOAD}/error") == b""
    assert read_all(ops, f"/{TDX_HOST}/version") == b"1.5.08\n"
    assert read_all(ops, f"/{TDX_HOST}/num_remaining_updates") == b"7\n"
    assert ops.read("/.tdxsim/received", len(blob) + 1, 0, 0) == blob
    assert ops.read("/.tdxsim/received", 4, 2, 0) == blob[2:6]


def test_truncate_is_ignored_and_modes_and_owners_are_fixed(ops: SimFilesystem) -> None:
    loading = f"/{UPLOAD}/loading"
    assert ops.truncate(loading, 0) == 0
    assert read_all(ops, loading) == b"0\n"
    assert errno_of(lambda: ops.chmod(loading, 0o777)) == errno.EPERM
    assert errno_of(lambda: ops.chown(loading, 0, 0)) == errno.EPERM


# --- lifecycle and serve -------------------------------------------------------------------------


def test_init_reports_ready_and_destroy_stops_the_kernel(kernel: SimKernel) -> None:
    ready: list[bool] = []
    ops = SimFilesystem(kernel, on_ready=lambda: ready.append(True))
    ops.init("/")
    assert ready == [True]
    assert not kernel.stopping.is_set()
    ops.destroy("/")
    assert kernel.stopping.is_set()
    SimFilesystem(kernel).init("/")  # without a callback: nothing to report


@pytest.mark.parametrize("euid", [0, 1000])
def test_serve_mounts_direct_io_and_stops_the_kernel_when_done(
    kernel: SimKernel, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, euid: int
) -> None:
    calls: list[tuple[SimFilesystem, str, dict[str, Any]]] = []

    def fake_fuse(ops: SimFilesystem, mountpoint: str, **options: Any) -> None:
        calls.append((ops, mountpoint, options))
        raise RuntimeError("fuse_main failed")

    monkeypatch.setattr("tdxupdate.sim.fs.mfusepy.FUSE", fake_fuse)
    monkeypatch.setattr("tdxupdate.sim.fs.os.geteuid", lambda: euid)
    ready = lambda: None  # noqa: E731
    with pytest.raises(RuntimeError, match="fuse_main failed"):
        serve(kernel, str(tmp_path), on_ready=ready)
    assert kernel.stopping.is_set()  # even when the mount fails
    [(ops, mountpoint, options)] = calls
    assert ops.kernel is kernel
    assert ops.on_ready is ready
    assert mountpoint == str(tmp_path)
    expected = {
        "foreground": True,
        "direct_io": True,
        "default_permissions": True,
        "fsname": "tdxsim",
        "subtype": "tdxsim",
        "attr_timeout": 0,
        "entry_timeout": 0,
        "negative_timeout": 0,
    }
    if euid == 0:
        expected["allow_other"] = True
    assert options == expected


# --- through a mount -----------------------------------------------------------------------------


@pytest.mark.fuse
def test_a_mounted_host_serves_the_same_tree(g5: SimHost) -> None:
    root = g5.sysroot
    assert sorted(os.listdir(root)) == [".tdxsim", "proc", "sys"]
    assert stat.S_IMODE(os.stat(root / TDX_HOST / "seamldr_version").st_mode) == 0o400
    assert os.readlink(root / "sys/class/firmware/tdx_module") == (
        "../../devices/faux/tdx_host/firmware/tdx_module"
    )
    assert read(root / TDX_HOST / "version") == "1.5.06\n"
    with pytest.raises(PermissionError):
        os.chmod(root / TDX_HOST / "version", 0o666)
    with pytest.raises(PermissionError):  # EACCES even for root
        (root / UPLOAD / "cancel").read_bytes()
    with pytest.raises(FileNotFoundError):
        os.stat(root / "sys/nope")
    # direct_io: one write() on data takes one page
    assert (root / UPLOAD / "loading").write_text("1") == 1
    fd = os.open(root / UPLOAD / "data", os.O_WRONLY)
    try:
        assert os.write(fd, b"\0" * (3 * PAGE)) == PAGE
    finally:
        os.close(fd)
    assert (root / UPLOAD / "loading").write_text("-1") == 2
