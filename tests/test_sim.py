"""The emulator (tdxupdate.sim) behaves like the kernel of kernel-abi.md.

Most tests talk to a mounted emulator with plain ``os`` calls, the way the tool and any other
program would. Mounts are shared per module (one per kernel series, one G5 host for the
fw_upload state machine); each test leaves its host as it found it (``{"reset": true}``).
A few pure tests cover the kernel's header rules and the parsers without FUSE.
"""

from __future__ import annotations

import errno
import json
import os
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from factories import sim as sim_fixtures
from factories.sim import mount_sim, require_fuse

from tdxupdate.errors import TdxError
from tdxupdate.host import cpu_signature_from_cpuinfo
from tdxupdate.image import FORMAT_A, FORMAT_B, checksum16, convert
from tdxupdate.sim import mount as sim_mount
from tdxupdate.sim.blob import ImageRejected, parse_for_kernel
from tdxupdate.sim.cli import main as sim_main
from tdxupdate.sim.config import SimConfig
from tdxupdate.sim.faults import parse_fault
from tdxupdate.sim.fwupload import kstrtobool, simple_strtol
from tdxupdate.sim.kernel import SimKernel, cpu_fields, error_token
from tdxupdate.sim.profiles import PROFILES
from tdxupdate.sim.repo import SampleRepo, synthesize_image
from tdxupdate.sim.session import SimHost

pytestmark = pytest.mark.fuse

# The emulator fixtures (harmless if tests/conftest.py imports them as well).
sim_cache = sim_fixtures.sim_cache
sample_repo = sim_fixtures.sample_repo
sim = sim_fixtures.sim

TDX_HOST = "sys/devices/faux/tdx_host"
DEADLINE = 30.0  # generous bound so a broken emulator fails instead of hanging the run


# --- helpers -------------------------------------------------------------------------------------


def bugs(cpuinfo: str) -> set[str]:
    """The first ``bugs`` line of /proc/cpuinfo."""
    line = next(ln for ln in cpuinfo.splitlines() if ln.startswith("bugs"))
    return set(line.partition(":")[2].split())


def upload_dir(host: SimHost) -> Path:
    name = host.state()["firmware_name"]
    assert isinstance(name, str), "this host registered no firmware upload device"
    return host.sysroot / "sys/class/firmware" / name


def read(path: Path) -> str:
    return path.read_bytes().decode()


def read_errno(path: Path) -> int | None:
    try:
        path.read_bytes()
    except OSError as exc:
        return exc.errno
    return None


def write_attr(path: Path, text: str) -> int:
    fd = os.open(path, os.O_WRONLY)
    try:
        return os.write(fd, text.encode())
    finally:
        os.close(fd)


def write_errno(path: Path, payload: bytes) -> int | None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, payload)
    except OSError as exc:
        return exc.errno
    finally:
        os.close(fd)
    return None


def write_data(udir: Path, image: bytes) -> int:
    """Loop over short writes on one fd; return how many write() calls it took."""
    fd = os.open(udir / "data", os.O_WRONLY)
    try:
        offset = calls = 0
        while offset < len(image):
            offset += os.write(fd, image[offset:])
            calls += 1
        return calls
    finally:
        os.close(fd)


def wait_until(predicate: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"emulator never reached: {what}")
        time.sleep(0.002)


def status(udir: Path) -> str:
    return read(udir / "status").strip()


def wait_idle(udir: Path) -> None:
    wait_until(lambda: status(udir) == "idle", "status idle")


def wait_hung(host: SimHost, stage: str) -> None:
    """Wait until a hang fault holds the upload in ``stage``."""

    def hung() -> bool:
        return bool(host.state()["upload"]["hung_stage"] == stage)

    wait_until(hung, f"an upload hung in {stage}")


def commit(udir: Path, image: bytes) -> None:
    assert write_attr(udir / "loading", "1") == 1
    write_data(udir, image)
    assert write_attr(udir / "loading", "0") == 1


def upload(udir: Path, image: bytes) -> str:
    """The robust sequence of kernel-abi.md §6; returns what ``error`` reads afterwards."""
    commit(udir, image)
    wait_idle(udir)
    return read(udir / "error")


G1_HOST = "sys/devices/virtual/tdx"


def version_of(host: SimHost) -> str | int:
    """The running version, or the errno reading it fails with."""
    path = host.sysroot / TDX_HOST / "version"
    if host.config.generation == "G1":
        path = host.sysroot / G1_HOST / "tdx_tsm/version"
    try:
        return read(path).strip()
    except OSError as exc:
        return exc.errno or -1


def remaining_of(host: SimHost) -> int:
    state = host.state()
    flat = host.sysroot / TDX_HOST / "num_remaining_updates"
    nested = host.sysroot / TDX_HOST / "seamldr/num_remaining_updates"
    path = flat if flat.exists() else nested
    if host.config.generation == "G1":
        path = host.sysroot / G1_HOST / "seamldr/num_remaining_updates"
    value = int(read(path))
    assert value == state["num_remaining_updates"]
    return value


def image(repo: SampleRepo, version: str, fmt: int | None = None) -> bytes:
    data = repo.image_path(version).read_bytes()
    return data if fmt is None else convert(data, fmt)


def with_checksum(data: bytes) -> bytes:
    """Recompute the 16-bit checksum so only the intended damage remains."""
    out = bytearray(data)
    out[2:4] = b"\0\0"
    out[2:4] = ((0x10000 - checksum16(out)) & 0xFFFF).to_bytes(2, "little")
    return bytes(out)


def last_upload(host: SimHost) -> dict[str, object]:
    uploads = host.state()["uploads"]
    assert uploads, "the emulator saw no upload"
    record: dict[str, object] = uploads[-1]
    return record


def tidy(host: SimHost) -> None:
    """Release anything a test left running and restore the mount-time state."""
    host.control({"clear_faults": True})
    if host.state()["firmware_name"]:
        wait_idle(upload_dir(host))
    host.control({"reset": True})


# --- shared mounts -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shared_g5(tmp_path_factory: pytest.TempPathFactory, sim_cache: Path) -> Iterator[SimHost]:
    with mount_sim(tmp_path_factory.mktemp("g5"), "spr", cache_dir=sim_cache) as host:
        yield host


@pytest.fixture
def g5(shared_g5: SimHost) -> Iterator[SimHost]:
    tidy(shared_g5)
    yield shared_g5
    tidy(shared_g5)


SERIES_FORMAT = {
    "v1": FORMAT_A,
    "v2": FORMAT_A,
    "v3": FORMAT_A,
    "v4": FORMAT_A,
    "v7": FORMAT_A,
    "v8": FORMAT_A,
    "v10": FORMAT_B,
    "ml": FORMAT_B,
}


@pytest.fixture(scope="module", params=list(SERIES_FORMAT))
def series_shared(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, sim_cache: Path
) -> Iterator[SimHost]:
    series = request.param
    with mount_sim(
        tmp_path_factory.mktemp(f"series-{series}"), "spr", cache_dir=sim_cache, kernel=series
    ) as host:
        yield host


@pytest.fixture
def series_host(series_shared: SimHost) -> Iterator[SimHost]:
    tidy(series_shared)
    yield series_shared
    tidy(series_shared)


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
        assert stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == mode, rel
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
    assert denied.returncode != 0 and "Permission denied" in denied.stderr


def test_proc_files_describe_the_configured_cpu(g5: SimHost) -> None:
    cpuinfo = read(g5.sysroot / "proc/cpuinfo")
    assert cpu_signature_from_cpuinfo(cpuinfo) == 0x806F8
    assert cpuinfo.count("processor\t:") == 8
    assert "seamret_invd_vmcs" not in bugs(cpuinfo) and "spectre_v1" in bugs(cpuinfo)
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
    assert record["size"] == len(img) and record["format"] == "0x200"


# --- success and the P-SEAMLDR rules -------------------------------------------------------------


def test_success_changes_version_and_decrements_remaining(
    g5: SimHost, sample_repo: SampleRepo
) -> None:
    udir = upload_dir(g5)
    assert upload(udir, image(sample_repo, "1.5.08")) == ""
    assert version_of(g5) == "1.5.08"
    assert remaining_of(g5) == 7
    assert upload(udir, image(sample_repo, "1.5.24")) == ""
    assert version_of(g5) == "1.5.24"
    assert remaining_of(g5) == 6
    assert last_upload(g5)["result"] == "success"


def _tamper_module(data: bytes) -> bytes:
    out = bytearray(data)
    out[-1] ^= 0xFF
    return bytes(out)


def _tamper_signature(data: bytes) -> bytes:
    out = bytearray(data)
    out[0x1000 + 600] ^= 0x01
    return bytes(out)


FatalCase = tuple[dict[str, Any], Callable[[SampleRepo], bytes], str]
FATAL_CASES: dict[str, FatalCase] = {
    "signature": ({}, lambda r: _tamper_signature(image(r, "1.5.08")), "signature"),
    "untrusted-signer": ({"trusted_signers": ["0" * 64]}, lambda r: image(r, "1.5.08"), "trusted"),
    "seamhash": ({}, lambda r: _tamper_module(image(r, "1.5.08")), "SEAMHASH"),
    "debug-signed": ({}, lambda r: image(r, "1.5.16", FORMAT_B), "debug"),
    "cpu": ({}, lambda r: image(r, "1.5.25"), "cpuid"),
    "seamldr": ({"seamldr": "2.0.00"}, lambda r: image(r, "1.5.24"), "P-SEAMLDR"),
    "stream": ({}, lambda r: synthesize_image(r.key(), "1.6.00"), "Z-stream"),
    "downgrade": ({"module": "1.5.24"}, lambda r: image(r, "1.5.08"), "older"),
    "td-preserving": (
        {"module": "2.0.02", "cpu": "0xa06d0", "seamldr": "2.0.00"},
        lambda r: image(r, "2.0.08"),
        "preserves TDs",
    ),
    "remaining-0": ({"remaining": 0}, lambda r: image(r, "1.5.08"), "no updates remain"),
    "offline-cpus": ({"online": "0-6"}, lambda r: image(r, "1.5.08"), "online"),
}


@pytest.mark.parametrize("case", list(FATAL_CASES))
def test_p_seamldr_failure_is_fatal(g5: SimHost, sample_repo: SampleRepo, case: str) -> None:
    setup, build, reason = FATAL_CASES[case]
    udir = upload_dir(g5)
    if setup:
        g5.control(setup)
    remaining = remaining_of(g5)
    assert upload(udir, build(sample_repo)) == "transferring:firmware-invalid\n"
    assert version_of(g5) == errno.ENXIO
    record = last_upload(g5)
    assert record["fatal"] is True and reason in str(record["reason"])
    assert remaining_of(g5) == remaining
    # the module is gone: a good image cannot bring it back (only a reboot can)
    assert upload(udir, image(sample_repo, "1.5.08")) == "transferring:firmware-invalid\n"
    assert version_of(g5) == errno.ENXIO
    g5.control({"reboot": True})
    assert version_of(g5) == "1.5.06"


def test_debug_platform_loads_debug_modules(g5: SimHost, sample_repo: SampleRepo) -> None:
    g5.control({"debug_platform": True})
    assert upload(upload_dir(g5), image(sample_repo, "1.5.16", FORMAT_B)) == ""
    assert version_of(g5) == "1.5.16"


def test_image_without_declared_version_is_refused_harmlessly(
    g5: SimHost, sample_repo: SampleRepo
) -> None:
    img = synthesize_image(sample_repo.key(), "1.5.08", declare_version=False)
    assert upload(upload_dir(g5), img) == "transferring:firmware-invalid\n"
    assert version_of(g5) == "1.5.06"
    assert last_upload(g5)["fatal"] is False


# --- faults ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fault",
    [
        "preparing:hw-error",
        "preparing:flash-wearout",
        "transferring:timeout",
        "transferring:skip",
        "programming:hw-error",
        "programming:firmware-duplicate",
    ],
)
def test_injected_stage_errors_change_nothing(
    g5: SimHost, sample_repo: SampleRepo, fault: str
) -> None:
    udir = upload_dir(g5)
    img = image(sample_repo, "1.5.08")
    g5.control({"fault": fault})
    assert upload(udir, img) == f"{fault}\n"
    assert version_of(g5) == "1.5.06"
    assert remaining_of(g5) == 8
    expected_remaining = 0 if fault.startswith("programming") else len(img)
    assert read(udir / "remaining_size") == f"{expected_remaining}\n"


def test_fatal_fault_loses_the_module(g5: SimHost, sample_repo: SampleRepo) -> None:
    g5.control({"fault": "transferring:hw-error:fatal"})
    assert upload(upload_dir(g5), image(sample_repo, "1.5.08")) == "transferring:hw-error\n"
    assert version_of(g5) == errno.ENXIO
    assert g5.state()["module_lost"] is True


def test_wrong_version_fault_reports_success_and_keeps_the_version(
    g5: SimHost, sample_repo: SampleRepo
) -> None:
    g5.control({"fault": "wrong-version"})
    assert upload(upload_dir(g5), image(sample_repo, "1.5.08")) == ""
    assert version_of(g5) == "1.5.06"
    assert remaining_of(g5) == 7


def test_module_lost_and_offline_faults(g5: SimHost) -> None:
    g5.control({"fault": "offline=2,5"})
    assert read(g5.sysroot / "sys/devices/system/cpu/online") == "0-1,3-4,6-7\n"
    g5.control({"fault": "module-lost"})
    assert version_of(g5) == errno.ENXIO


def test_faults_limited_to_n_uploads(g5: SimHost, sample_repo: SampleRepo) -> None:
    udir = upload_dir(g5)
    g5.control({"fault": "preparing:hw-error", "times": 2})
    assert upload(udir, image(sample_repo, "1.5.08")) == "preparing:hw-error\n"
    assert g5.state()["faults"] == [{"fault": "preparing:hw-error", "times": 1}]
    assert upload(udir, image(sample_repo, "1.5.08")) == "preparing:hw-error\n"
    assert upload(udir, image(sample_repo, "1.5.08")) == ""
    assert g5.state()["faults"] == []


def test_device_busy_on_mainline_reads_firmware_invalid(
    g5: SimHost, sample_repo: SampleRepo
) -> None:
    g5.control({"fault": "device-busy"})
    assert upload(upload_dir(g5), image(sample_repo, "1.5.08")) == (
        "transferring:firmware-invalid\n"
    )
    assert version_of(g5) == "1.5.06"
    assert remaining_of(g5) == 8


# --- control file --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"not json\n", "not JSON"),
        (b'{"frobnicate": 1}\n', "unknown command"),
        (b'{"fault": "transferring"}\n', "expected <stage>"),
        (b'{"remaining": -1}\n', "whole number"),
        (b'{"times": 2}\n', "only valid together with fault"),
    ],
)
def test_control_refuses_bad_commands(g5: SimHost, payload: bytes, reason: str) -> None:
    assert write_errno(g5.sysroot / ".tdxsim/control", payload) == errno.EINVAL
    assert reason in g5.state()["control_error"]
    with pytest.raises(ValueError, match="emulator control"):
        g5.control(json.loads(payload) if payload.startswith(b"{") else {"x": 1})


def test_control_takes_several_lines_per_write(g5: SimHost) -> None:
    payload = b'{"remaining": 3}\n\n{"seamldr": "1.5.02"}\n'
    assert write_errno(g5.sysroot / ".tdxsim/control", payload) is None
    assert remaining_of(g5) == 3
    assert read(g5.sysroot / TDX_HOST / "seamldr_version") == "1.5.02\n"


# --- per kernel series ---------------------------------------------------------------------------


def test_series_accepts_its_format_and_refuses_the_other_harmlessly(
    series_host: SimHost, sample_repo: SampleRepo
) -> None:
    series = series_host.config.kernel
    native = SERIES_FORMAT[series]
    other = FORMAT_B if native == FORMAT_A else FORMAT_A
    udir = upload_dir(series_host)
    assert upload(udir, image(sample_repo, "1.5.08", other)) == "transferring:firmware-invalid\n"
    assert version_of(series_host) == "1.5.06"
    assert remaining_of(series_host) == 8
    assert last_upload(series_host)["fatal"] is False
    assert upload(udir, image(sample_repo, "1.5.08", native)) == ""
    assert version_of(series_host) == "1.5.08"
    assert remaining_of(series_host) == 7


# (kernel checks it itself -> non-fatal token, or P-SEAMLDR fails -> fatal token)
LIMIT_OUTCOME = {
    "v1": ("firmware-invalid", "firmware-invalid", False),
    "v2": ("firmware-invalid", "firmware-invalid", False),
    "v3": ("flash-wearout", "device-busy", False),
    "v4": ("flash-wearout", "device-busy", False),
    "v7": ("hw-error", "hw-error", True),
    "v8": ("firmware-invalid", "firmware-invalid", True),
    "v10": ("firmware-invalid", "firmware-invalid", True),
    "ml": ("firmware-invalid", "firmware-invalid", True),
}


@pytest.mark.parametrize("condition", ["remaining-0", "offline"])
def test_update_limit_and_offline_cpus_per_series(
    series_host: SimHost, sample_repo: SampleRepo, condition: str
) -> None:
    series = series_host.config.kernel
    limit_token, offline_token, fatal = LIMIT_OUTCOME[series]
    series_host.control({"remaining": 0} if condition == "remaining-0" else {"online": "1-7"})
    token = limit_token if condition == "remaining-0" else offline_token
    img = image(sample_repo, "1.5.08", SERIES_FORMAT[series])
    assert upload(upload_dir(series_host), img) == f"transferring:{token}\n"
    assert last_upload(series_host)["fatal"] is fatal
    assert version_of(series_host) == (errno.ENXIO if fatal else "1.5.06")


DEVICE_BUSY = {"v1": "firmware-invalid", "v2": "firmware-invalid", "ml": "firmware-invalid"}


def test_device_busy_and_cancel_per_series(series_host: SimHost, sample_repo: SampleRepo) -> None:
    series = series_host.config.kernel
    udir = upload_dir(series_host)
    img = image(sample_repo, "1.5.08", SERIES_FORMAT[series])
    series_host.control({"fault": "device-busy", "times": 1})
    assert upload(udir, img) == f"transferring:{DEVICE_BUSY.get(series, 'device-busy')}\n"
    assert version_of(series_host) == "1.5.06"
    series_host.control({"fault": "hang:transferring", "times": 1})
    commit(udir, img)
    wait_hung(series_host, "transferring")
    assert write_attr(udir / "cancel", "1") == 1
    if series in ("v1", "v2", "v3"):
        wait_idle(udir)
        assert read(udir / "error") == "transferring:user-abort\n"
        assert version_of(series_host) == "1.5.06"
    else:  # a no-op from v4 on
        assert series_host.state()["upload"]["hung_stage"] == "transferring"
        series_host.control({"unhang": True})
        wait_idle(udir)
        assert read(udir / "error") == ""


# --- kernel header rules (pure, no FUSE) ---------------------------------------------------------


@pytest.fixture(scope="module")
def blob_a(sample_repo: SampleRepo) -> bytes:
    return image(sample_repo, "1.5.08", FORMAT_A)


def _set(data: bytes, offset: int, value: bytes, checksum: bool = True) -> bytes:
    out = bytearray(data)
    out[offset : offset + len(value)] = value
    return with_checksum(bytes(out)) if checksum else bytes(out)


@pytest.mark.parametrize(
    ("damage", "refused_by"),
    [
        ("checksum", {"v1", "v2", "v3"}),
        ("length", {"v1", "v2", "v3", "v4", "v5", "v6", "v7"}),
        ("reserved", {"v1", "v2", "v3", "v4", "v5", "v6", "v7", "v8"}),
        ("two-sig-pages", {"v1", "v2"}),
        ("unaligned-size", {"v1", "v2", "v3", "v4", "v7"}),
    ],
)
def test_format_a_header_rules_per_series(blob_a: bytes, damage: str, refused_by: set[str]) -> None:
    if damage == "checksum":
        bad = _set(blob_a, 2, b"\x12\x34", checksum=False)
    elif damage == "length":
        bad = _set(blob_a, 16, (len(blob_a) + 4096).to_bytes(4, "little"))
    elif damage == "reserved":
        bad = _set(blob_a, 100, b"\x01")
    elif damage == "two-sig-pages":
        # sigstruct area of two pages: offset_of_module 0x3000
        body = blob_a[:0x2000] + bytes(4096) + blob_a[0x2000:]
        body = _set(body, 4, (0x3000).to_bytes(4, "little"), checksum=False)
        bad = _set(body, 16, len(body).to_bytes(4, "little"))
    else:
        grown = blob_a + b"\0" * 100
        bad = _set(grown, 16, len(grown).to_bytes(4, "little"))
    for series in ("v1", "v2", "v3", "v4", "v5", "v6", "v7", "v8"):
        if series in refused_by:
            with pytest.raises(ImageRejected):
                parse_for_kernel(series, bad)
        else:
            parse_for_kernel(series, bad)
    assert parse_for_kernel("v3", blob_a).module == blob_a[0x2000:]


def test_format_b_header_rules(sample_repo: SampleRepo) -> None:
    good = image(sample_repo, "1.5.08", FORMAT_B)
    parsed = parse_for_kernel("ml", good)
    assert parsed.sigstruct_area == good[0x1000:0x2000] and parsed.module == good[0x2000:]
    for bad in (
        good + bytes(4096),  # size does not match the page counts
        _set(good, 0x0C, (2).to_bytes(4, "little")),  # two sigstruct pages
        _set(good, 0x20, b"\x01"),  # reserved byte
        good[:100],
    ):
        with pytest.raises(ImageRejected):
            parse_for_kernel("v10", bad)


# --- the model without FUSE ----------------------------------------------------------------------


def test_kernel_model_runs_in_process(sample_repo: SampleRepo) -> None:
    kernel = SimKernel(
        SimConfig.from_settings(
            trusted_signers=sample_repo.trusted_signers, mapping=sample_repo.mapping_path
        )
    )
    try:
        fw = kernel.fw
        assert fw is not None
        img = image(sample_repo, "1.5.08")
        fw.store_loading(b"1\n")
        offset = 0
        while offset < len(img):
            offset += kernel.write_data(img[offset:], offset)
        assert offset == len(img) and fw.counters["data_writes"] == len(img) // 4096
        fw.store_loading(b"0\n")
        assert fw.wait_idle(DEADLINE)
        assert fw.show_error() == b""
        assert kernel.show_module_version() == b"1.5.08\n"
        assert kernel.show_remaining() == b"7\n"
    finally:
        kernel.shutdown()


# --- small parsers and tables (pure) -----------------------------------------------------------


def test_parsers_follow_the_kernel() -> None:
    assert [simple_strtol(b) for b in (b"1\n", b"-1", b"abc", b" 12x", b"+3")] == [1, -1, 0, 12, 3]
    assert [kstrtobool(b) for b in (b"1", b"Y", b"on", b"0", b"off", b"x")] == [
        True, True, True, False, False, None,
    ]  # fmt: skip
    assert cpu_fields(0x806F8) == (6, 143, 8)
    assert cpu_fields(0xA06D0) == (6, 173, 0)
    assert error_token("v3", errno.ENOSPC) == "flash-wearout"
    assert error_token("v7", errno.ENOSPC) == "firmware-invalid"
    assert error_token("ml", errno.EBUSY) == "firmware-invalid"


@pytest.mark.parametrize(
    "spec",
    ["bogus", "transferring", "preparing:Bad Token", "hang:idle", "slow-write=x", "short-write=0"],
)
def test_bad_fault_specs_are_refused(spec: str) -> None:
    with pytest.raises(ValueError, match="fault"):
        parse_fault(spec)


def test_every_profile_is_a_valid_config() -> None:
    for profile in PROFILES.values():
        config = SimConfig.from_settings(profile.settings)
        assert config.generation in ("G2", "G3", "G4", "G5")
    assert SimConfig.from_settings(generation="G3").kernel == "v7"
    with pytest.raises(ValueError, match="online CPUs"):
        SimConfig.from_settings(present="0-3", online="0-5")


# --- mounting: CLI, cleanliness, FUSE missing ----------------------------------------------------


def _mounts_under(path: Path) -> list[str]:
    with open("/proc/mounts", encoding="utf-8") as f:
        return [line for line in f if str(path) in line]


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
        assert state["kernel"] == "v7" and state["faults"][0]["fault"] == "device-busy"
    finally:
        assert sim_main(["umount", str(target)]) == 0
    assert _mounts_under(target) == []
    assert sim_main(["umount", str(target)]) == 74


def test_simulated_host_unmounts_even_on_error(tmp_path: Path, sim_cache: Path) -> None:
    with pytest.raises(RuntimeError), mount_sim(tmp_path, "legacy-g3", cache_dir=sim_cache) as host:
        assert (host.sysroot / TDX_HOST / "seamldr").is_dir()
        raise RuntimeError("boom")
    assert _mounts_under(tmp_path) == []


def test_missing_fuse_is_one_line_and_exit_69(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sim_mount, "DEV_FUSE", tmp_path / "no-fuse")
    assert sim_main(["mount", str(tmp_path / "host")]) == 69
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "FUSE is unavailable" in err and "no-fuse does not exist" in err
    with pytest.raises(TdxError) as info:
        sim_mount.require_fuse()
    assert info.value.code == "fuse-unavailable" and info.value.exit_code == 69


def test_cli_rejects_bad_settings_with_64(capsys: pytest.CaptureFixture[str]) -> None:
    assert sim_main(["mount", "/nonexistent/x", "--module", "one"]) == 64
    assert "module" in capsys.readouterr().err
    assert sim_main(["mount", "/nonexistent/x", "--profile", "nope"]) == 64


def test_no_emulator_mount_is_left(tmp_path_factory: pytest.TempPathFactory) -> None:
    # runs last in this module: every test so far has unmounted what it mounted
    base = tmp_path_factory.getbasetemp()
    leftovers = [
        line for line in _mounts_under(base) if "/g5" not in line and "/series-" not in line
    ]
    assert leftovers == []
