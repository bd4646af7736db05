"""Injected faults (tdxupdate.sim.faults): stage errors, fatal and wrong-version faults,
their specs.

Part of the emulator's tests (tests/sim/); the shared mounts and their reset are in
tests/sim/conftest.py, the helpers in tests/sim/helpers.py.
"""

from __future__ import annotations

import errno

import pytest

from sim.helpers import (
    image,
    read,
    remaining_of,
    upload,
    upload_dir,
    version_of,
)
from tdxupdate.sim.faults import parse_fault
from tdxupdate.sim.repo import SampleRepo
from tdxupdate.sim.session import SimHost

pytestmark = pytest.mark.fuse


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


@pytest.mark.parametrize(
    "spec",
    ["bogus", "transferring", "preparing:Bad Token", "hang:idle", "slow-write=x", "short-write=0"],
)
def test_bad_fault_specs_are_refused(spec: str) -> None:
    with pytest.raises(ValueError, match="fault"):
        parse_fault(spec)
