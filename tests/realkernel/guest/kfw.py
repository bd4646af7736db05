"""Raw access to Linux's fw_upload files and to lib/test_firmware.c, inside the VM.

The kernel facts used here were measured in real-kernel-tier.md §6: test devices are
registered by name through ``upload_register`` (names must not be prefixes of each other,
no trailing newline); ``data`` takes at most a page per ``write()``; ``inject:<stage>:<error>``
at the start of an upload makes test_firmware fail in that stage, and ``user-abort`` holds the
upload there until ``cancel``. The tier's kernel patch (tests/realkernel/test_firmware.patch)
adds ``upload_inject_next`` (the same injection for the next upload whose data is a real
image), raises the upload limit to 4 MiB and makes ``upload_read`` return the first
``PAGE_SIZE - 1`` bytes of a larger upload.

These helpers are deliberately independent of ``tdxupdate``: they are the test's own view of
the kernel, against which the tool's behaviour is checked.
"""

from __future__ import annotations

import errno
import os
import time
from pathlib import Path

TEST_FIRMWARE = Path("/sys/devices/virtual/misc/test_firmware")
CLASS_FIRMWARE = Path("/sys/class/firmware")
PAGE_SIZE = 4096
#: What ``upload_read`` returns at most: a sysfs show() buffer minus the terminating byte.
UPLOAD_READ_MAX = PAGE_SIZE - 1
#: Every stage test_firmware can fail in, and every error it can inject (lib/test_firmware.c).
STAGES = ("preparing", "transferring", "programming")
INJECTABLE_ERRORS = (
    "hw-error",
    "timeout",
    "device-busy",
    "invalid-file-size",
    "read-write-error",
    "flash-wearout",
)


def write_attr(path: Path, value: str | bytes) -> int:
    raw = value.encode() if isinstance(value, str) else value
    fd = os.open(path, os.O_WRONLY)
    try:
        return os.write(fd, raw)
    finally:
        os.close(fd)


def read_bytes(path: Path) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def read_attr(path: Path) -> str:
    return read_bytes(path).decode()


def register(name: str) -> Path:
    """Register a fw_upload test device (idempotent) and return its class directory."""
    class_dir = CLASS_FIRMWARE / name
    if not class_dir.exists():
        try:
            write_attr(TEST_FIRMWARE / "upload_register", name)
        except OSError as exc:
            raise OSError(exc.errno, f"registering {name!r}: {exc.strerror}") from exc
    return class_dir


def status(fw: Path) -> str:
    return read_attr(fw / "status").strip()


def error(fw: Path) -> str:
    """The raw ``error`` text (may be stale; EBUSY while an upload runs)."""
    return read_attr(fw / "error")


def remaining_size(fw: Path) -> int:
    return int(read_attr(fw / "remaining_size"))


def wait_status(fw: Path, want: str, timeout: float = 30.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        now = status(fw)
        if now == want:
            return now
        if time.monotonic() > deadline:
            raise AssertionError(f"{fw}/status stayed {now!r}, expected {want!r} within {timeout}s")
        time.sleep(0.002)


def write_data(fw: Path, image: bytes) -> int:
    """Stream ``image`` into ``data`` through one fd (short writes of a page each)."""
    fd = os.open(fw / "data", os.O_WRONLY)
    try:
        view = memoryview(image)
        off = 0
        while off < len(image):
            n = os.write(fd, view[off:])
            assert n > 0, f"write to {fw}/data accepted no bytes at offset {off}"
            off += n
        return off
    finally:
        os.close(fd)


def start_upload(fw: Path, image: bytes) -> None:
    """``loading=1``, the image, ``loading=0``: the kernel now owns the upload."""
    write_attr(fw / "loading", "1")
    write_data(fw, image)
    write_attr(fw / "loading", "0")


def raw_upload(fw: Path, image: bytes, timeout: float = 30.0) -> tuple[str, int]:
    """Upload without tdxupdate; return (``error`` text, ``remaining_size``) after idle."""
    start_upload(fw, image)
    wait_status(fw, "idle", timeout)
    return error(fw), remaining_size(fw)


def hold(fw: Path, stage: str) -> bytes:
    """Start an upload that test_firmware holds in ``stage`` until it is cancelled.

    Returns the payload sent (an upload held in ``preparing`` never gets it to the driver).
    """
    payload = f"inject:{stage}:user-abort".encode() + b"\0" * 64
    start_upload(fw, payload)
    wait_status(fw, stage, timeout=30.0)
    return payload


def cancel(fw: Path, timeout: float = 30.0) -> None:
    """Cancel a running upload and wait until the interface is idle (ENODEV: already idle)."""
    try:
        write_attr(fw / "cancel", "1")
    except OSError as exc:
        if exc.errno != errno.ENODEV:
            raise
    wait_status(fw, "idle", timeout)


def upload_read(name: str) -> bytes:
    """What the test driver received in its last upload (first ``UPLOAD_READ_MAX`` bytes)."""
    write_attr(TEST_FIRMWARE / "config_upload_name", name)
    return read_bytes(TEST_FIRMWARE / "upload_read")


def inject_next(text: str) -> None:
    """Make the next upload whose data is not an ``inject:`` string fail (or hold) as told.

    ``""`` clears it: sysfs never passes an empty write to the driver, so a lone newline
    (which is no injection) is written instead.
    """
    write_attr(TEST_FIRMWARE / "upload_inject_next", text or "\n")


def pending_injection() -> str:
    """The injection still waiting for an upload, or ``""``."""
    return read_attr(TEST_FIRMWARE / "upload_inject_next").strip()


def reset(fw: Path) -> None:
    """Leave ``fw`` idle, not loading, with no injection pending."""
    if status(fw) != "idle":
        cancel(fw)
    if read_attr(fw / "loading").strip() == "1":
        write_attr(fw / "loading", "-1")
    inject_next("")
