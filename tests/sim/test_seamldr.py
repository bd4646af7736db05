"""The emulated P-SEAMLDR (tdxupdate.sim.seamldr): a successful update and the failures that
lose the module.

Part of the emulator's tests (tests/sim/); the shared mounts and their reset are in
tests/sim/conftest.py, the helpers in tests/sim/helpers.py.
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from typing import Any

import pytest

from sim.helpers import (
    image,
    last_upload,
    remaining_of,
    upload,
    upload_dir,
    version_of,
)
from tdxupdate.image import FORMAT_B
from tdxupdate.sim.repo import ImageSpec, SampleRepo, synthesize_image
from tdxupdate.sim.session import SimHost

pytestmark = pytest.mark.fuse


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
    assert record["fatal"] is True
    assert reason in str(record["reason"])
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
    img = synthesize_image(sample_repo.key(), "1.5.08", ImageSpec(declare_version=False))
    assert upload(upload_dir(g5), img) == "transferring:firmware-invalid\n"
    assert version_of(g5) == "1.5.06"
    assert last_upload(g5)["fatal"] is False
