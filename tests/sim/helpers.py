"""Helpers of the emulator tests: plain ``os`` calls on a mounted emulator, as any program makes."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tdxupdate.image import FORMAT_A, FORMAT_B, checksum16
from tdxupdate.imagebuild import convert
from tdxupdate.sim.repo import SampleRepo
from tdxupdate.sim.session import SimHost

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


def mounts_under(path: Path) -> list[str]:
    with open("/proc/mounts", encoding="utf-8") as f:
        return [line for line in f if str(path) in line]
