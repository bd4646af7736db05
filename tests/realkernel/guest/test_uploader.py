"""``tdxupdate.uploader`` against Linux's own fw_upload (issue 4; cli-contract.md §4 steps 6–8).

Each test drives a real ``/sys/class/firmware/<name>`` registered through lib/test_firmware.c
and checks the driver's result against what the kernel itself shows (``error``,
``remaining_size``, ``status``, the bytes in ``data`` and ``upload_read``).
"""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from realkernel.guest import kfw
from tdxupdate import kernel_errors, uploader
from tdxupdate.errors import TryLater
from tdxupdate.image import FORMAT_A, FORMAT_B, MAX_KERNEL_IMAGE_SIZE

pytestmark = pytest.mark.realkernel


def full_size_image(fmt: int) -> bytes:
    from factories.images import make_image

    image = make_image("1.5.07", fmt=fmt, module_pages=496)
    assert len(image) == MAX_KERNEL_IMAGE_SIZE == 2_039_808
    return image


@pytest.mark.parametrize(
    ("name", "fmt"),
    [("tdx_module", FORMAT_B), ("tdx_module", FORMAT_A), ("seamldr_upload", FORMAT_A)],
    ids=["tdx_module-0x200", "tdx_module-0x100", "seamldr_upload-0x100"],
)
def test_full_size_image_streams_and_is_accepted(
    devices: dict[str, Path], name: str, fmt: int
) -> None:
    fw = devices[name]
    image = full_size_image(fmt)
    calls: list[tuple[int, int]] = []
    before_commit: dict[str, object] = {}

    def progress(done: int, total: int) -> None:
        calls.append((done, total))
        if done == total:
            # Still loading=1: what the kernel holds in its buffer, before loading=0.
            before_commit["loading"] = kfw.read_attr(fw / "loading").strip()
            before_commit["data"] = kfw.read_bytes(fw / "data")

    result = uploader.upload(fw, image, timeout=120.0, progress=progress)

    assert before_commit["loading"] == "1"
    assert before_commit["data"] == image
    # the kernel takes a page per write(): one progress call per page, in order
    assert calls[-1] == (len(image), len(image))
    assert [d for d, _ in calls] == sorted({d for d, _ in calls})
    assert len(calls) >= len(image) // kfw.PAGE_SIZE
    assert result.committed
    assert not result.timed_out
    assert result.interrupted is None
    assert result.accepted
    assert result.kernel_error is None
    assert result.final_status == "idle"
    assert result.bytes_written == len(image)
    assert result.remaining_size == 0
    # the kernel's own view agrees
    assert kfw.status(fw) == "idle"
    assert kfw.error(fw) == ""
    assert kfw.remaining_size(fw) == 0
    assert kfw.upload_read(name) == image[: kfw.UPLOAD_READ_MAX]


ERROR_CASES = [(s, e) for s in kfw.STAGES for e in kfw.INJECTABLE_ERRORS]


@pytest.mark.parametrize(("stage", "error"), ERROR_CASES, ids=[f"{s}:{e}" for s, e in ERROR_CASES])
def test_injected_error_is_decoded(tdx_module: Path, stage: str, error: str) -> None:
    payload = f"inject:{stage}:{error}".encode() + b"\0" * 100
    result = uploader.upload(tdx_module, payload, timeout=60.0)

    assert result.committed
    assert not result.timed_out
    assert not result.accepted
    assert result.kernel_error == f"{stage}:{error}"
    assert kfw.error(tdx_module) == f"{stage}:{error}\n"
    assert result.remaining_size == kfw.remaining_size(tdx_module)
    decoded = kernel_errors.decode_kernel_error(result.kernel_error)
    assert (decoded.stage, decoded.error) == (stage, error)
    if error == "device-busy":
        # a TD build or migration was running: nothing changed, try later (§4 step 8)
        assert (decoded.code, decoded.exit_code) == ("device-busy", 75)
        assert isinstance(decoded.to_error(), TryLater)
    else:
        assert (decoded.code, decoded.exit_code) == ("kernel-error", 1)
    assert error in decoded.sentence
    assert decoded.to_error().exit_code == decoded.exit_code


@pytest.mark.parametrize("stage", kfw.STAGES)
def test_timeout_while_the_kernel_holds_the_upload(tdx_module: Path, stage: str) -> None:
    payload = f"inject:{stage}:user-abort".encode() + b"\0" * 100
    result = uploader.upload(tdx_module, payload, timeout=1.0)

    assert result.committed
    assert result.timed_out
    assert result.kernel_error is None  # nothing was read: the kernel had not finished
    assert result.final_status == stage
    # the upload belongs to the kernel now: it is still running
    assert kfw.status(tdx_module) == stage
    with pytest.raises(OSError, match="Device or resource busy") as exc:
        kfw.error(tdx_module)
    assert exc.value.errno == errno.EBUSY

    kfw.cancel(tdx_module)
    assert kfw.status(tdx_module) == "idle"
    assert kfw.error(tdx_module) == f"{stage}:user-abort\n"


@pytest.mark.parametrize("stage", kfw.STAGES)
def test_second_upload_refused_while_busy(tdx_module: Path, stage: str) -> None:
    held = kfw.hold(tdx_module, stage)
    image = full_size_image(FORMAT_B)
    calls: list[int] = []

    with pytest.raises(TryLater) as exc:
        uploader.upload(tdx_module, image, timeout=10.0, progress=lambda d, t: calls.append(d))

    assert exc.value.code == "upload-busy"
    assert exc.value.exit_code == 75
    assert calls == []  # not one byte was streamed
    # the running upload was not disturbed: same stage, and it ends as the held one would
    assert kfw.status(tdx_module) == stage
    kfw.cancel(tdx_module)
    assert kfw.error(tdx_module) == f"{stage}:user-abort\n"
    received = kfw.upload_read("tdx_module")
    assert len(received) == len(held)
    assert image[:16] not in received


def test_stale_error_after_abort_is_not_reported(tdx_module: Path) -> None:
    err, _ = kfw.raw_upload(tdx_module, b"inject:programming:hw-error")
    assert err == "programming:hw-error\n"
    # neither an aborted load nor an empty commit starts an upload: the text stays
    kfw.write_attr(tdx_module / "loading", "1")
    kfw.write_data(tdx_module, b"partial")
    kfw.write_attr(tdx_module / "loading", "-1")
    kfw.write_attr(tdx_module / "loading", "1")
    kfw.write_attr(tdx_module / "loading", "0")
    assert kfw.error(tdx_module) == "programming:hw-error\n"

    image = full_size_image(FORMAT_B)
    result = uploader.upload(tdx_module, image, timeout=120.0)

    assert result.accepted
    assert result.kernel_error is None
    assert kfw.error(tdx_module) == ""


def test_stale_error_is_replaced_by_the_new_one(tdx_module: Path) -> None:
    err, _ = kfw.raw_upload(tdx_module, b"inject:preparing:flash-wearout")
    assert err == "preparing:flash-wearout\n"
    kfw.inject_next("inject:programming:read-write-error")
    from factories.images import make_image

    result = uploader.upload(tdx_module, make_image("1.5.07"), timeout=60.0)

    assert result.kernel_error == "programming:read-write-error"


def test_fast_success_seen_idle_at_once_is_fresh(tdx_module: Path) -> None:
    # A small upload is finished before the first status read (real-kernel-tier.md §6.5);
    # the stale text from before must not be taken for its result.
    for _ in range(20):
        err, _ = kfw.raw_upload(tdx_module, b"inject:transferring:timeout")
        assert err == "transferring:timeout\n"
        result = uploader.upload(tdx_module, b"\x5a" * 1024, timeout=30.0)
        assert result.kernel_error is None, result
        assert result.remaining_size == 0
