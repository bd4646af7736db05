"""Keeps the in-guest tests out of host sessions; the host fixture that runs the VM.

``tests/realkernel/guest/`` holds tests that only make sense inside the VM (they register
devices with lib/test_firmware.c and write the real fw_upload files). The runner sets
``TDXUPDATE_RK_GUEST=1`` in the guest; anywhere else the directory is not even collected, so
a plain ``python -m pytest`` never imports them. The host side of the tier is
``test_tier.py`` (marked ``realkernel``): its tests share one VM run through the
``realkernel_run`` fixture below, which boots the VM only when one of them actually runs.
"""

from __future__ import annotations

import os
from typing import Any

import pytest

IN_GUEST = os.environ.get("TDXUPDATE_RK_GUEST") == "1"

if not IN_GUEST:
    collect_ignore = ["guest"]


@pytest.fixture(scope="session")
def realkernel_run(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """Build or reuse the kernel and run every guest test once: a ``runner.Session``."""
    if IN_GUEST:
        pytest.fail("realkernel_run is a host fixture; it was requested inside the VM")
    from realkernel import runner

    return runner.run_session(tmp_path_factory.mktemp("realkernel-share"))
