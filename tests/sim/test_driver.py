"""tdxupdate.sim.driver: the TDX driver's errno -> fw_upload error token table per series.

What the driver does to an upload is shown end to end through the kernel model
(tests/sim/test_kernel.py) and the emulator (tests/test_update.py, every token at every stage).
"""

from __future__ import annotations

import errno

import pytest

from tdxupdate.sim.driver import error_token


@pytest.mark.parametrize(
    ("series", "err", "token"),
    [
        ("v3", errno.ENOSPC, "flash-wearout"),
        ("v3", errno.EIO, "hw-error"),
        ("v7", errno.ENOSPC, "firmware-invalid"),
        ("v7", errno.ENOMEM, "read-write-error"),
        ("v8", errno.EIO, "firmware-invalid"),
        ("v10", errno.EBUSY, "device-busy"),
        ("ml", errno.EBUSY, "firmware-invalid"),
        ("v1", errno.EBUSY, "firmware-invalid"),
    ],
)
def test_error_tokens_follow_the_kernel_series(series: str, err: int, token: str) -> None:
    assert error_token(series, err) == token
