"""The generations of the kernel's TDX module update interface, as one table (kernel-abi.md §1).

Each :class:`Generation` says where its attributes live, which fw_upload firmware name it
registers, how it is told apart from the others (kernel-abi.md §6), which image formats it
takes (image-formats.md; cli-contract.md §4 step 10) and whether the kernel refuses an update
while a TD is being built. :func:`detect` walks :data:`GENERATIONS` with what a host shows.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

__all__ = [
    "CLASS_FIRMWARE",
    "FIRMWARE_NAMES",
    "FLAT",
    "FORMAT_A",
    "FORMAT_B",
    "FORMAT_B_KERNEL",
    "G1",
    "G1_TDX_TSM",
    "GENERATIONS",
    "LAYOUT_PATHS",
    "SEAMLDR_DIR",
    "TDX_HOST",
    "Generation",
    "Probe",
    "by_name",
    "detect",
    "image_formats",
]

#: The faux device created by tdx-host.ko, generations G2–G5 (kernel-abi.md §1).
TDX_HOST = "/sys/devices/faux/tdx_host"
#: The v1 (G1) interface, obsolete and unsupported (kernel-abi.md §1, §6 step 1).
G1_TDX_TSM = "/sys/devices/virtual/tdx/tdx_tsm"
#: fw_upload class devices: ``/sys/class/firmware/<name>`` (kernel-abi.md §1, §2).
CLASS_FIRMWARE = "/sys/class/firmware"

#: Container formats (image-formats.md); kept here so host.py does not depend on image.py.
FORMAT_A = 0x100
FORMAT_B = 0x200
#: Mainline releases from this one on carry G5 and accept only Format B (kernel-abi.md §6 step 5).
FORMAT_B_KERNEL = (7, 2)

#: P-SEAMLDR attribute layouts: a ``seamldr/`` directory (G2, G3) or flat files (G4, G5).
SEAMLDR_DIR = "seamldr-dir"
FLAT = "flat"

Release = tuple[int, int]


@dataclass(frozen=True)
class Probe:
    """What :func:`detect` may look at: the directory entries found, and the release.

    ``seamldr_world_readable`` is asked only for a seamldr-dir host without a firmware dir (it
    stats ``seamldr/version``); it answers None when the stat fails.
    """

    firmware_name: str | None
    layout: str | None
    release: Release | None
    compat_capable: bool
    seamldr_world_readable: Callable[[], bool | None]


@dataclass(frozen=True)
class Generation:
    """One generation of the sysfs interface (kernel-abi.md §1).

    ``td_build_guard``: True when the kernel answers ``device-busy`` to an update during a TD
    build, False when it goes ahead (Linux 7.2 merged the interface without the guard), None
    when it depends on the module (TDX_FEATURES0 bit 47 on the v3–v7 series).
    """

    name: str
    supported: bool
    #: the device directory the attributes hang off
    device: str
    #: the fw_upload name registered under /sys/class/firmware (None: no upload interface)
    firmware_name: str | None
    layout: str | None
    #: in-device paths of the P-SEAMLDR attributes
    seamldr_version: str | None
    num_remaining_updates: str | None
    #: mode of the P-SEAMLDR attributes (0444 until the v4 series, 0400 from it on)
    seamldr_mode: int
    #: only the v3 series shows ``compat_capable``
    compat_capable: bool
    #: release bounds that tell same-looking generations apart: [min_release, max_release)
    min_release: Release | None
    max_release: Release | None
    #: accepted image formats, the one sent first first; a second one is a retry (§4 step 10)
    image_formats: tuple[int, ...]
    td_build_guard: bool | None

    def matches_release(self, release: Release | None) -> bool:
        if self.min_release is not None and (release is None or release < self.min_release):
            return False
        return self.max_release is None or release is None or release < self.max_release


G1 = Generation(
    name="G1",
    supported=False,
    device=G1_TDX_TSM,
    firmware_name="seamldr_upload",
    layout=None,
    seamldr_version=None,
    num_remaining_updates=None,
    seamldr_mode=0o444,
    compat_capable=False,
    min_release=None,
    max_release=None,
    image_formats=(FORMAT_A,),
    td_build_guard=False,
)

#: The supported generations, in detection order (kernel-abi.md §6 steps 3–5).
GENERATIONS: tuple[Generation, ...] = (
    Generation(
        name="G2",
        supported=True,
        device=TDX_HOST,
        firmware_name="seamldr_upload",
        layout=SEAMLDR_DIR,
        seamldr_version="seamldr/version",
        num_remaining_updates="seamldr/num_remaining_updates",
        seamldr_mode=0o444,
        compat_capable=True,
        min_release=None,
        max_release=None,
        image_formats=(FORMAT_A,),
        td_build_guard=None,
    ),
    Generation(
        name="G3",
        supported=True,
        device=TDX_HOST,
        firmware_name="tdx_module",
        layout=SEAMLDR_DIR,
        seamldr_version="seamldr/version",
        num_remaining_updates="seamldr/num_remaining_updates",
        seamldr_mode=0o400,
        compat_capable=False,
        min_release=None,
        max_release=None,
        image_formats=(FORMAT_A,),
        td_build_guard=None,
    ),
    # G4 and G5 have the same sysfs; only a mainline release >= 7.2 is surely G5.
    Generation(
        name="G5",
        supported=True,
        device=TDX_HOST,
        firmware_name="tdx_module",
        layout=FLAT,
        seamldr_version="seamldr_version",
        num_remaining_updates="num_remaining_updates",
        seamldr_mode=0o400,
        compat_capable=False,
        min_release=FORMAT_B_KERNEL,
        max_release=None,
        image_formats=(FORMAT_B,),
        td_build_guard=False,
    ),
    Generation(
        name="G4/G5",
        supported=True,
        device=TDX_HOST,
        firmware_name="tdx_module",
        layout=FLAT,
        seamldr_version="seamldr_version",
        num_remaining_updates="num_remaining_updates",
        seamldr_mode=0o400,
        compat_capable=False,
        min_release=None,
        max_release=FORMAT_B_KERNEL,
        image_formats=(FORMAT_B, FORMAT_A),
        td_build_guard=False,
    ),
)

#: Firmware names in the order of kernel-abi.md §6: ``seamldr_upload`` (G2), ``tdx_module`` (G3+).
FIRMWARE_NAMES: tuple[str, ...] = tuple(
    dict.fromkeys(g.firmware_name for g in GENERATIONS if g.firmware_name is not None)
)
#: Layout -> in-device (seamldr_version, num_remaining_updates), in the order they are looked
#: for (kernel-abi.md §6 step 4): the seamldr/ directory first, then the flat files.
LAYOUT_PATHS: dict[str, tuple[str, str]] = {
    g.layout: (g.seamldr_version, g.num_remaining_updates)
    for g in GENERATIONS
    if g.layout is not None and g.seamldr_version is not None and g.num_remaining_updates
}

#: Formats of a tdx_host device whose generation is unknown: Format B, Format A as a retry.
UNKNOWN_FORMATS = (FORMAT_B, FORMAT_A)


def by_name(name: str) -> Generation:
    for g in (G1, *GENERATIONS):
        if g.name == name:
            return g
    raise KeyError(name)


def detect(probe: Probe) -> Generation | None:
    """The generation of a host with a tdx_host device (kernel-abi.md §6 steps 3–5), or None.

    The firmware name decides when one generation registers it; otherwise the layout, then
    (seamldr-dir) v3's ``compat_capable`` or the attribute mode, then (flat) the release.
    """
    candidates = GENERATIONS
    if probe.firmware_name is not None:
        candidates = tuple(g for g in candidates if g.firmware_name == probe.firmware_name)
        if len(candidates) == 1:
            return candidates[0]
    if probe.layout is None:
        return None
    candidates = tuple(g for g in candidates if g.layout == probe.layout)
    if len(candidates) > 1 and probe.layout == SEAMLDR_DIR:
        if probe.compat_capable:
            candidates = tuple(g for g in candidates if g.compat_capable)
        else:
            readable = probe.seamldr_world_readable()
            if readable is None:
                return None
            candidates = tuple(g for g in candidates if bool(g.seamldr_mode & 0o004) == readable)
    candidates = tuple(g for g in candidates if g.matches_release(probe.release))
    return candidates[0] if candidates else None


def image_formats(
    forced: int | None, tdx_host: bool, generation: Generation | None, release: Release | None
) -> tuple[int | None, int | None]:
    """(format sent first, the other one when cli-contract.md §4 step 10 may retry it)."""
    if forced is not None:
        return forced, None
    if not tdx_host:
        return None, None
    if generation is not None:
        formats = generation.image_formats
    elif release is not None and release >= FORMAT_B_KERNEL:
        # Only a release >= 7.2 is known to take Format B alone (kernel-abi.md §6 step 5).
        formats = (FORMAT_B,)
    else:
        formats = UNKNOWN_FORMATS
    return formats[0], (formats[1] if len(formats) > 1 else None)
