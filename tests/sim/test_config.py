"""The emulator's settings (tdxupdate.sim.config) and the bundled profiles (tdxupdate.sim.profiles).

Part of the emulator's tests (tests/sim/); the shared mounts and their reset are in
tests/sim/conftest.py, the helpers in tests/sim/helpers.py.
"""

from __future__ import annotations

import pytest

from tdxupdate.sim.config import SimConfig
from tdxupdate.sim.profiles import PROFILES

pytestmark = pytest.mark.fuse


def test_every_profile_is_a_valid_config() -> None:
    for profile in PROFILES.values():
        config = SimConfig.from_settings(profile.settings)
        assert config.generation in ("G2", "G3", "G4", "G5")
    assert SimConfig.from_settings(generation="G3").kernel == "v7"
    with pytest.raises(ValueError, match="online CPUs"):
        SimConfig.from_settings(present="0-3", online="0-5")
