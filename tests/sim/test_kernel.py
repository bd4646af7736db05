"""The kernel model (tdxupdate.sim.kernel): behaviour per kernel series, in process without FUSE.

Part of the emulator's tests (tests/sim/); the shared mounts and their reset are in
tests/sim/conftest.py, the helpers in tests/sim/helpers.py.
"""

from __future__ import annotations

import errno

import pytest

from sim.helpers import (
    DEADLINE,
    SERIES_FORMAT,
    commit,
    image,
    last_upload,
    read,
    remaining_of,
    upload,
    upload_dir,
    version_of,
    wait_hung,
    wait_idle,
    write_attr,
)
from tdxupdate.image import FORMAT_A, FORMAT_B
from tdxupdate.sim.config import SimConfig
from tdxupdate.sim.kernel import SimKernel, cpu_fields
from tdxupdate.sim.repo import SampleRepo
from tdxupdate.sim.session import SimHost

pytestmark = pytest.mark.fuse


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
        assert offset == len(img)
        assert fw.counters["data_writes"] == len(img) // 4096
        fw.store_loading(b"0\n")
        assert fw.wait_idle(DEADLINE)
        assert fw.show_error() == b""
        assert kernel.show_module_version() == b"1.5.08\n"
        assert kernel.show_remaining() == b"7\n"
    finally:
        kernel.shutdown()


def test_cpu_fields_follow_the_kernel() -> None:
    assert cpu_fields(0x806F8) == (6, 143, 8)
    assert cpu_fields(0xA06D0) == (6, 173, 0)
