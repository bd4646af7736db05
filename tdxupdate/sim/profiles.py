"""Named emulated hosts for ``tdxupdate --simulate PROFILE`` and ``tdxupdate-sim mount --profile``.

Each profile is a set of :class:`~tdxupdate.sim.config.SimConfig` settings over the defaults (a
G5 mainline Sapphire Rapids host running 1.5.06 with P-SEAMLDR 1.5.00 and 8 updates left).
SPR/EMR hosts carry a 1.5.x P-SEAMLDR and Sierra Forest and Granite Rapids a 2.0.x one, which
is what Intel's mapping file implies (1.5.24 needs P-SEAMLDR 1.5.x and is for SPR/EMR; 1.5.25
needs 2.0.x and is for Sierra Forest).

What the sample repository offers on each host (the reasons are the tool's, cli-contract §3):

* ``spr``/``emr``: 1.5.08 and 1.5.24 eligible, 1.5.24 chosen; 1.5.16 debug-signed; 1.5.25 for
  Sierra Forest only; 1.5.28 listed without an image; 2.0.x another stream.
* ``srf``: 1.5.08 and 1.5.25 eligible (1.5.24 is for SPR/EMR and needs P-SEAMLDR 1.5.x).
* ``gnr``: 2.0.08 and 2.0.14 eligible from 2.0.04.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from tdxupdate.errors import UsageError


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    settings: Mapping[str, Any] = field(default_factory=dict)


DEFAULT_PROFILE = "spr"

_ALL = (
    Profile(
        "spr", "Sapphire Rapids, mainline kernel (G5, Format B), module 1.5.06, 8 updates left"
    ),
    Profile("emr", "Emerald Rapids, mainline kernel, module 1.5.06", {"cpu": "0xc06f0"}),
    Profile(
        "srf",
        "Sierra Forest with P-SEAMLDR 2.0.00, module 1.5.06",
        {"cpu": "0xa06f0", "seamldr": "2.0.00"},
    ),
    Profile(
        "gnr",
        "Granite Rapids with P-SEAMLDR 2.0.00, module 2.0.04",
        {"cpu": "0xa06d0", "seamldr": "2.0.00", "module": "2.0.04"},
    ),
    Profile(
        "legacy-g2",
        "v3 kernel (G2): seamldr/ attributes, seamldr_upload, Format A with checksum",
        {"kernel": "v3"},
    ),
    Profile(
        "legacy-g3",
        "v7 kernel (G3): seamldr/ attributes (0400), tdx_module, Format A",
        {"kernel": "v7"},
    ),
    Profile(
        "flat-v8",
        "v8 kernel (G4): flat attributes but Format A (Format B is refused harmlessly)",
        {"kernel": "v8"},
    ),
    Profile("exhausted", "no updates left: num_remaining_updates is 0", {"remaining": 0}),
    Profile("offline-cpus", "CPUs 6-7 of 0-7 are offline", {"online": "0-5"}),
    Profile(
        "busy-td-build",
        "a TD build is running: the module refuses the shutdown (device-busy, v10 kernel)",
        {"kernel": "v10", "faults": ["device-busy"]},
    ),
    Profile(
        "module-loss",
        "the update fails after the shutdown: the module is lost, version reads ENXIO",
        {"faults": ["transferring:firmware-invalid:fatal"]},
    ),
    Profile(
        "wrong-version",
        "the kernel reports success but the old version keeps running",
        {"faults": ["wrong-version"]},
    ),
    Profile(
        "hung-upload",
        "an upload never leaves transferring (use --timeout)",
        {"faults": ["hang:transferring"]},
    ),
    Profile(
        "erratum",
        "CPU bug seamret_invd_vmcs: the kernel offers no update interface",
        {"erratum": True},
    ),
    Profile(
        "no-tdx-host",
        "the tdx_host device is missing (tdx-host.ko not loaded)",
        {"tdx_host": False},
    ),
)

PROFILES: Mapping[str, Profile] = MappingProxyType({p.name: p for p in _ALL})


def get_profile(name: str) -> Profile:
    """The profile called ``name``; UsageError listing the known ones otherwise."""
    profile = PROFILES.get(name.strip().lower())
    if profile is None:
        raise UsageError(
            f"unknown simulation profile {name!r}; known profiles: {', '.join(PROFILES)}"
        )
    return profile
