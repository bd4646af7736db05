"""The emulator's control file (tdxupdate.sim.control).

Part of the emulator's tests (tests/sim/); the shared mounts and their reset are in
tests/sim/conftest.py, the helpers in tests/sim/helpers.py.
"""

from __future__ import annotations

import errno
import json

import pytest

from sim.helpers import (
    TDX_HOST,
    read,
    remaining_of,
    write_errno,
)
from tdxupdate.sim.session import SimHost

pytestmark = pytest.mark.fuse


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
