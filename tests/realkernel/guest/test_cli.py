"""``tdxupdate --update`` against Linux's own fw_upload (issue 4; cli-contract.md §2–§5).

The sysroot is a plain-file host tree (versions, remaining updates, CPUs) whose upload
directory is a symlink to a real fw_upload device registered through lib/test_firmware.c.
There is no P-SEAMLDR behind test_firmware: an upload the kernel accepts leaves the running
version unchanged, which the CLI must report as such. Kernel failures are injected with the
tier's ``upload_inject_next`` (the image itself is a real, signed one and cannot start with
``inject:``).
"""

from __future__ import annotations

import hashlib
from typing import Any

import pytest

from realkernel.guest import kfw
from realkernel.guest.conftest import CliRun, UpdateHost
from tdxupdate.image import FORMAT_A, FORMAT_B, MAX_KERNEL_IMAGE_SIZE
from tdxupdate.imagebuild import convert

pytestmark = pytest.mark.realkernel

RUNNING = "1.5.06"
TARGET = "1.5.07"
#: A P-SEAMLDR the target's default mapping entry accepts (min_seamldr_versions 1.5.00).
SEAMLDR = "1.5.01"


def image(fmt: int, *, full: bool) -> bytes:
    from factories.images import make_image

    data = make_image(TARGET, fmt=fmt, module_pages=496 if full else 2)
    if full:
        assert len(data) == MAX_KERNEL_IMAGE_SIZE
    return data


def expect(run: CliRun, exit_code: int, code: str | None) -> dict[str, Any]:
    doc = run.doc
    assert run.returncode == exit_code, run.describe()
    assert doc["action"] == "update", run.describe()
    if code is None:
        assert doc["ok"] is True, run.describe()
        assert doc["error"] is None, run.describe()
    else:
        assert doc["ok"] is False, run.describe()
        assert doc["error"]["code"] == code, run.describe()
        assert doc["error"]["exit_code"] == exit_code, run.describe()
    return doc


@pytest.mark.parametrize(
    ("generation", "stored", "sent", "subprocess"),
    [
        ("G5", FORMAT_B, FORMAT_B, True),
        ("G5", FORMAT_A, FORMAT_B, False),
        ("G2", FORMAT_B, FORMAT_A, False),
    ],
    ids=[
        "G5-tdx_module-B-python-m-tdxupdate",
        "G5-tdx_module-A-sent-as-B",
        "G2-seamldr_upload-B-sent-as-A",
    ],
)
def test_accepted_but_version_unchanged(
    make_update_host: Any, generation: str, stored: int, sent: int, subprocess: bool
) -> None:
    stored_image = image(stored, full=True)
    host: UpdateHost = make_update_host(
        generation, {TARGET: stored_image}, module=RUNNING, seamldr=SEAMLDR, remaining=3
    )

    run = host.cli(subprocess=subprocess)

    doc = expect(run, 1, "version-mismatch")
    message = doc["error"]["message"]
    assert "accepted" in message, message
    assert RUNNING in message, message
    assert TARGET in message, message
    assert doc["changed"] is False
    assert doc["kernel_error"] is None
    assert doc["fatal"] is False
    assert (doc["from_version"], doc["to_version"]) == (RUNNING, TARGET)
    assert doc["host"]["image_format"] == f"{sent:#x}"
    # what the kernel got: the whole image, in the format this layout takes
    payload = convert(stored_image, sent)
    assert kfw.status(host.device) == "idle"
    assert kfw.error(host.device) == ""
    assert kfw.remaining_size(host.device) == 0
    assert kfw.upload_read(host.name) == payload[: kfw.UPLOAD_READ_MAX]
    (record,) = host.history()
    assert record["result"] == "version-mismatch"
    assert record["kernel_error"] is None
    assert (record["from_version"], record["to_version"]) == (RUNNING, TARGET)
    assert record["image_format"] == f"{sent:#x}"
    assert record["image_sha256"] == hashlib.sha256(stored_image).hexdigest()
    assert record["remaining_before"] == 3


ERROR_CASES = [(s, e) for s in kfw.STAGES for e in kfw.INJECTABLE_ERRORS]


@pytest.mark.parametrize(("stage", "error"), ERROR_CASES, ids=[f"{s}:{e}" for s, e in ERROR_CASES])
def test_kernel_error_outcome(make_update_host: Any, stage: str, error: str) -> None:
    host: UpdateHost = make_update_host(
        "G5", {TARGET: image(FORMAT_B, full=False)}, module=RUNNING, seamldr=SEAMLDR
    )
    kfw.inject_next(f"inject:{stage}:{error}")

    run = host.cli()

    assert kfw.pending_injection() == "", "the CLI's upload did not reach the kernel"
    busy = error == "device-busy"
    doc = expect(run, 75 if busy else 1, "device-busy" if busy else "kernel-error")
    assert doc["kernel_error"] == f"{stage}:{error}"
    assert doc["changed"] is False
    assert error in doc["error"]["message"]
    (record,) = host.history()
    assert record["result"] == ("device-busy" if busy else "failed")
    assert record["kernel_error"] == f"{stage}:{error}"
    assert kfw.error(host.device) == f"{stage}:{error}\n"


@pytest.mark.parametrize("stage", kfw.STAGES)
def test_timeout_while_the_kernel_holds_the_update(make_update_host: Any, stage: str) -> None:
    host: UpdateHost = make_update_host(
        "G5", {TARGET: image(FORMAT_B, full=False)}, module=RUNNING, seamldr=SEAMLDR
    )
    kfw.inject_next(f"inject:{stage}:user-abort")

    run = host.cli(timeout=2.0)

    doc = expect(run, 75, "timeout")
    message = doc["error"]["message"]
    # truthful: it gave up waiting, the kernel still has the update, in this stage
    assert "2 s" in message, message
    assert stage in message, message
    assert "kernel" in message, message
    assert doc["changed"] is False
    assert doc["kernel_error"] is None
    (record,) = host.history()
    assert record["result"] == "timeout"
    assert record["kernel_error"] is None
    assert kfw.status(host.device) == stage

    # the next run finds the interface busy and refuses before writing
    again = host.cli()
    expect(again, 75, "upload-busy")
    assert len(host.history()) == 1

    kfw.cancel(host.device)
    assert kfw.status(host.device) == "idle"
    assert kfw.error(host.device) == f"{stage}:user-abort\n"


@pytest.mark.parametrize("stage", kfw.STAGES)
def test_refuses_while_the_kernel_is_busy(make_update_host: Any, stage: str) -> None:
    host: UpdateHost = make_update_host(
        "G5", {TARGET: image(FORMAT_B, full=True)}, module=RUNNING, seamldr=SEAMLDR
    )
    held = kfw.hold(host.device, stage)

    run = host.cli()

    doc = expect(run, 75, "upload-busy")
    assert doc["kernel_error"] is None
    assert host.history() == []  # refusals before any write are not recorded (§5)
    # the upload that was running is untouched: still in its stage, ends as it would have
    assert kfw.status(host.device) == stage
    kfw.cancel(host.device)
    assert kfw.error(host.device) == f"{stage}:user-abort\n"
    assert len(kfw.upload_read(host.name)) == len(held)


def test_stale_error_is_not_the_result_of_the_next_update(make_update_host: Any) -> None:
    host: UpdateHost = make_update_host(
        "G5", {TARGET: image(FORMAT_B, full=True)}, module=RUNNING, seamldr=SEAMLDR
    )
    kfw.inject_next("inject:programming:hw-error")
    first = host.cli()
    expect(first, 1, "kernel-error")
    assert kfw.error(host.device) == "programming:hw-error\n"
    # an aborted load in between starts no upload and leaves the text in place
    kfw.write_attr(host.device / "loading", "1")
    kfw.write_attr(host.device / "loading", "-1")
    assert kfw.error(host.device) == "programming:hw-error\n"

    second = host.cli()

    doc = expect(second, 1, "version-mismatch")
    assert doc["kernel_error"] is None
    assert "hw-error" not in doc["error"]["message"]
    records = host.history()
    assert [r["result"] for r in records] == ["failed", "version-mismatch"]
    assert [r["kernel_error"] for r in records] == ["programming:hw-error", None]
    assert kfw.error(host.device) == ""
