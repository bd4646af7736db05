"""Named emulated hosts (tdxupdate.sim.profiles): every profile builds a valid host, describes
itself, and an unknown name is a one-line usage error listing the known ones.

Part of the emulator's tests (tests/sim/); none of these needs FUSE.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest

from tdxupdate.errors import TdxError, UsageError
from tdxupdate.sim.config import SimConfig
from tdxupdate.sim.profiles import DEFAULT_PROFILE, PROFILES, Profile, get_profile
from tdxupdate.sim.repo import sample_images
from tdxupdate.versions import Version

#: CPUID.1.EAX of each platform the module docstring names
SPR, EMR, SRF, GNR = 0x806F8, 0xC06F0, 0xA06F0, 0xA06D0


def config_of(profile: Profile) -> SimConfig:
    return SimConfig.from_settings(profile.settings)


@pytest.mark.parametrize("name", list(PROFILES))
def test_every_profile_yields_a_valid_config(name: str) -> None:
    profile = PROFILES[name]
    assert profile.name == name
    config = config_of(profile)
    # the config round-trips, so a daemon started from it runs the same host
    assert SimConfig.from_json(json.loads(json.dumps(config.to_json()))) == config


@pytest.mark.parametrize("name", list(PROFILES))
def test_every_profile_describes_itself_in_one_line(name: str) -> None:
    description = PROFILES[name].description
    assert description.strip() == description
    assert description
    assert "\n" not in description


@pytest.mark.parametrize("name", [n for n in PROFILES if PROFILES[n].settings])
def test_every_setting_of_a_profile_changes_the_host(name: str) -> None:
    """A profile's settings are not silently dropped: each moves its field off the default."""
    config, default = config_of(PROFILES[name]), SimConfig()
    for key in PROFILES[name].settings:
        assert getattr(config, key) != getattr(default, key), key


def test_the_default_profile_is_the_default_host() -> None:
    assert DEFAULT_PROFILE in PROFILES
    assert PROFILES[DEFAULT_PROFILE].settings == {}
    assert config_of(PROFILES[DEFAULT_PROFILE]) == SimConfig()


def test_profile_names_are_canonical_and_unique() -> None:
    names = [p.name for p in PROFILES.values()]
    assert len(set(names)) == len(names)
    for name in names:
        assert name == name.strip().lower()
        assert " " not in name


def test_profiles_cannot_be_changed() -> None:
    table: Any = PROFILES
    with pytest.raises(TypeError):
        table["mine"] = Profile("mine", "added at run time")
    with pytest.raises(dataclasses.FrozenInstanceError):
        PROFILES["spr"].name = "other"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("name", "cpu", "seamldr_major", "module"),
    [
        ("spr", SPR, 1, "1.5.06"),
        ("emr", EMR, 1, "1.5.06"),
        ("srf", SRF, 2, "1.5.06"),
        ("gnr", GNR, 2, "2.0.04"),
    ],
)
def test_platform_profiles_carry_their_platform_facts(
    name: str, cpu: int, seamldr_major: int, module: str
) -> None:
    """SPR/EMR carry a 1.5.x P-SEAMLDR, Sierra Forest and Granite Rapids a 2.0.x one."""
    config = config_of(get_profile(name))
    assert config.cpu == cpu
    assert config.seamldr.major == seamldr_major
    assert config.module == Version.parse(module)
    # the sample repository has images for this CPU, and one of the running version
    cpus = {int(c, 16) for entry in sample_images() for c in entry["cpuid_table"]}
    assert cpu in cpus
    assert module in {entry["version"] for entry in sample_images()}


@pytest.mark.parametrize(
    ("name", "field", "value"),
    [
        ("exhausted", "remaining", 0),
        ("offline-cpus", "online", frozenset(range(6))),
        ("erratum", "erratum", True),
        ("no-tdx-host", "tdx_host", False),
        ("legacy-g2", "generation", "G2"),
        ("legacy-g3", "generation", "G3"),
        ("flat-v8", "generation", "G4"),
        ("busy-td-build", "faults", ("device-busy",)),
        ("hung-upload", "faults", ("hang:transferring",)),
    ],
)
def test_scenario_profiles_set_what_they_describe(name: str, field: str, value: object) -> None:
    assert getattr(config_of(get_profile(name)), field) == value


@pytest.mark.parametrize("spelling", ["gnr", "GNR", " Gnr\n", "\tgnr "])
def test_get_profile_ignores_case_and_surrounding_space(spelling: str) -> None:
    assert get_profile(spelling) is PROFILES["gnr"]


@pytest.mark.parametrize("name", ["nope", "", "spr2", "sp r"])
def test_unknown_profile_is_a_one_line_usage_error_listing_the_known_ones(name: str) -> None:
    with pytest.raises(UsageError) as info:
        get_profile(name)
    error: TdxError = info.value
    assert error.code == "usage"
    assert error.exit_code == 64
    message = str(error.message)
    assert "\n" not in message
    assert message.startswith(f"unknown simulation profile {name!r}")
    assert message.endswith("known profiles: " + ", ".join(PROFILES))
