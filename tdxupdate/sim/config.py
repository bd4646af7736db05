"""What an emulated TDX host is: kernel series, versions, CPUs, trust, timings, faults.

The kernel series are the generations of kernel-abi.md §1 at the resolution the emulator needs
(§3 and §4 differ inside a generation): ``v1`` (G1), ``v2``/``v3`` (G2), ``v4``–``v7`` (G3),
``v8`` (G4), ``v9``/``v10``/``ml`` (G5, ``ml`` = merged mainline). A generation name picks its
default series: G1→v1, G2→v3, G3→v7, G4→v8, G5→ml.

:meth:`SimConfig.from_settings` takes loose values (``"1.5.06"``, ``"0x806f8"``, ``"0-7"``,
``"G3"``) from the command line, a profile or a test and returns a validated, frozen config;
:meth:`SimConfig.to_json` / :meth:`SimConfig.from_json` carry it to the FUSE daemon process.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tdxupdate.hostfiles import format_cpu_list
from tdxupdate.imagecheck import INTEL_PRODUCTION_SIGNER
from tdxupdate.sim.faults import parse_fault
from tdxupdate.versions import Version

#: Every kernel series the emulator knows, oldest first (kernel-abi.md §0 tags V1..V10, ML).
SERIES = ("v1", "v2", "v3", "v4", "v5", "v6", "v7", "v8", "v9", "v10", "ml")

#: kernel-abi.md §1: the sysfs generation of each series.
GENERATION_OF = {
    "v1": "G1",
    "v2": "G2",
    "v3": "G2",
    "v4": "G3",
    "v5": "G3",
    "v6": "G3",
    "v7": "G3",
    "v8": "G4",
    "v9": "G5",
    "v10": "G5",
    "ml": "G5",
}

#: The series a bare generation name stands for: the latest of each, mainline for G5.
DEFAULT_SERIES = {"G1": "v1", "G2": "v3", "G3": "v7", "G4": "v8", "G5": "ml"}

#: ``uname -r`` of each series when none is configured. Invented but plausible: each series
#: was posted against the release named here; only mainline (7.2) is a real kernel version.
DEFAULT_OSRELEASE = {
    "v1": "6.15.0-rc7-tdx-v1",
    "v2": "6.17.0-tdx-v2",
    "v3": "6.19.0-rc6-tdx-v3",
    "v4": "7.0.0-rc1-tdx-v4",
    "v5": "7.0.0-rc3-tdx-v5",
    "v6": "7.0.0-rc5-tdx-v6",
    "v7": "7.0.0-rc6-tdx-v7",
    "v8": "7.1.0-rc1-tdx-v8",
    "v9": "7.1.0-rc3-tdx-v9",
    "v10": "7.1.0-rc4-tdx-v10",
    "ml": "7.2.0",
}

#: TDX_FEATURES0 bit 1: TD-preserving update supported (kernel-abi.md §1 G3 visibility).
TD_PRESERVING_BIT = 1 << 1
#: TDX_FEATURES0 bit 47: update compatibility (v3's ``compat_capable``).
UPDATE_COMPAT_BIT = 1 << 47

_CPU_LIST_RE = re.compile(r"^\d+(-\d+)?(,\d+(-\d+)?)*$")


def resolve_series(name: str) -> str:
    """``G1``..``G5`` or a series (``v2``..``v10``, ``ml``/``mainline``) -> the series."""
    text = name.strip().lower()
    if text == "mainline":
        text = "ml"
    if text in SERIES:
        return text
    if text.upper() in DEFAULT_SERIES:
        return DEFAULT_SERIES[text.upper()]
    choices = ", ".join([*DEFAULT_SERIES, *SERIES])
    raise ValueError(f"unknown kernel generation {name!r}; expected one of {choices}")


def parse_cpu_list(text: str) -> frozenset[int]:
    """The kernel's cpulist format (``0-3,5``), as in ``/sys/devices/system/cpu/online``."""
    body = text.strip()
    if body == "":
        return frozenset()
    if not _CPU_LIST_RE.match(body):
        raise ValueError(f"{text!r} is not a CPU list like 0-7 or 0-3,5")
    cpus: set[int] = set()
    for part in body.split(","):
        first, _, last = part.partition("-")
        lo, hi = int(first), int(last or first)
        if hi < lo:
            raise ValueError(f"{text!r}: range {part} runs backwards")
        cpus.update(range(lo, hi + 1))
    return frozenset(cpus)


def parse_cpu_signature(value: str | int) -> int:
    """CPUID.1.EAX as ``0x806f8``, ``806f8`` or an int."""
    if isinstance(value, int):
        sig = value
    else:
        text = value.strip().lower()
        text = text[2:] if text.startswith("0x") else text
        try:
            sig = int(text, 16)
        except ValueError:
            raise ValueError(f"{value!r} is not a CPU signature like 0x806f8") from None
    if not 0 < sig <= 0xFFFFFFFF:
        raise ValueError(f"CPU signature {value!r} is out of range")
    return sig


def _version(value: str | Version, what: str) -> Version:
    if isinstance(value, Version):
        return value
    try:
        return Version.parse(str(value))
    except ValueError as exc:
        raise ValueError(f"{what}: {exc}") from None


def _fingerprint(value: str) -> str:
    text = value.strip().lower()
    if not re.fullmatch(r"[0-9a-f]{64}", text):
        raise ValueError(f"trusted key {value!r} is not a SHA-256 fingerprint (64 hex digits)")
    return text


@dataclass(frozen=True)
class StageDurations:
    """How long each fw_upload stage lasts (milliseconds), so tests can watch ``status``.

    ``receiving`` is the delay before the worker runs (``system_long_wq``); ``transferring`` is
    the whole TDX update, which runs inside the driver's ``write`` op (kernel-abi.md §3).
    """

    receiving: float = 1.0
    preparing: float = 5.0
    transferring: float = 20.0
    programming: float = 2.0

    def replace(self, changes: Mapping[str, Any]) -> StageDurations:
        known = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise ValueError(f"unknown stage {unknown[0]!r}; expected one of {sorted(known)}")
        values = {}
        for name, value in changes.items():
            if not isinstance(value, int | float) or isinstance(value, bool) or value < 0:
                raise ValueError(f"duration of {name}: {value!r} is not a number of ms >= 0")
            values[name] = float(value)
        return dataclasses.replace(self, **values)


@dataclass(frozen=True)
class SimConfig:
    """One emulated host. Every field has a default: a G5 (mainline) Sapphire Rapids host."""

    #: kernel series, see :data:`SERIES`
    kernel: str = "ml"
    #: running TDX module (``tdx_host/version``)
    module: Version = Version(1, 5, 6)  # noqa: RUF009 (an immutable NamedTuple)
    #: running P-SEAMLDR
    seamldr: Version = Version(1, 5, 0)  # noqa: RUF009
    #: CPUID.1.EAX; shown through /proc/cpuinfo, checked against the sigstruct cpuid table
    cpu: int = 0x806F8
    vendor: str = "GenuineIntel"
    #: P-SEAMLDR's remaining-update counter
    remaining: int = 8
    present: frozenset[int] = frozenset(range(8))
    #: None: every present CPU is online
    online: frozenset[int] | None = None
    #: None: :data:`DEFAULT_OSRELEASE` of the series
    osrelease: str | None = None
    #: CPU bug ``seamret_invd_vmcs`` (kernel-abi.md §1 G3/G5 visibility)
    erratum: bool = False
    #: False: the tdx_host device does not exist (tdx-host.ko not loaded / TDX not initialised)
    tdx_host: bool = True
    #: TDX_FEATURES0 of the running module; None: the mapping's ``tdx_feature0`` for it, else
    #: just the TD-preserving bit
    tdx_features: int | None = None
    #: signer fingerprints P-SEAMLDR accepts
    trusted_signers: frozenset[str] = frozenset({INTEL_PRODUCTION_SIGNER})
    #: mapping file giving P-SEAMLDR its compatibility facts (min_seamldr_versions, TD-preserving)
    mapping: Path | None = None
    #: a debug platform: P-SEAMLDR loads debug-signed modules
    debug_platform: bool = False
    #: fault specs (see :mod:`tdxupdate.sim.faults`), applied at start-up
    faults: tuple[str, ...] = ()
    durations: StageDurations = field(default_factory=StageDurations)
    #: gap between the end of an upload and ``status`` reading idle again, in which a new
    #: commit gets EBUSY (kernel-abi.md §2 ``fw_upload_start``); 0 in a real kernel, almost
    idle_lag_ms: float = 0.0

    @property
    def generation(self) -> str:
        return GENERATION_OF[self.kernel]

    @property
    def kernel_release(self) -> str:
        return self.osrelease if self.osrelease is not None else DEFAULT_OSRELEASE[self.kernel]

    @property
    def online_cpus(self) -> frozenset[int]:
        return self.present if self.online is None else self.online

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any] | None = None, **more: Any) -> SimConfig:
        """Build a config from loose values; ValueError naming the setting on bad input.

        Keys are the field names, plus ``generation`` (an alias of ``kernel``), ``cpus``
        (sets ``present``), ``trusted_keys`` (alias of ``trusted_signers``), ``fault`` (one
        more fault) and ``durations`` as a mapping of stage -> ms.
        """
        values: dict[str, Any] = {**(settings or {}), **more}
        kwargs: dict[str, Any] = {}
        for key, value in values.items():
            if value is None and key not in ("online", "osrelease", "tdx_features", "mapping"):
                continue
            name = {"generation": "kernel", "trusted_keys": "trusted_signers"}.get(key, key)
            kwargs[name] = value
        return cls._validated(kwargs)

    @classmethod
    def _validated(cls, kw: dict[str, Any]) -> SimConfig:
        out: dict[str, Any] = {}
        for key, value in kw.items():
            setting = _SETTINGS.get(key)
            if setting is None:
                known = sorted(f.name for f in dataclasses.fields(cls))
                raise ValueError(f"unknown emulator setting {key!r}; known: {', '.join(known)}")
            name, convert = setting
            converted = convert(value, key)
            if name == "faults":  # "fault" adds to "faults"
                converted = (*out.get("faults", ()), *converted)
            out[name] = converted
        config = cls(**out)
        if config.online is not None and not config.online <= config.present:
            raise ValueError(
                f"online CPUs {format_cpu_list(config.online)} are not all present "
                f"({format_cpu_list(config.present)})"
            )
        if not config.present:
            raise ValueError("present: at least one CPU must be present")
        return config

    def to_json(self) -> dict[str, Any]:
        return {
            "kernel": self.kernel,
            "module": str(self.module),
            "seamldr": str(self.seamldr),
            "cpu": f"{self.cpu:#x}",
            "vendor": self.vendor,
            "remaining": self.remaining,
            "present": format_cpu_list(self.present),
            "online": None if self.online is None else format_cpu_list(self.online),
            "osrelease": self.osrelease,
            "erratum": self.erratum,
            "tdx_host": self.tdx_host,
            "tdx_features": None if self.tdx_features is None else hex(self.tdx_features),
            "trusted_signers": sorted(self.trusted_signers),
            "mapping": None if self.mapping is None else str(self.mapping),
            "debug_platform": self.debug_platform,
            "faults": list(self.faults),
            "durations": dataclasses.asdict(self.durations),
            "idle_lag_ms": self.idle_lag_ms,
        }

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> SimConfig:
        return cls.from_settings(obj)


def _cpus(value: Any, what: str) -> frozenset[int]:
    if isinstance(value, str):
        try:
            return parse_cpu_list(value)
        except ValueError as exc:
            raise ValueError(f"{what}: {exc}") from None
    if isinstance(value, int) and not isinstance(value, bool):
        return frozenset(range(value))
    return frozenset(int(v) for v in value)


def _int(value: Any, what: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    try:
        return int(str(value), 0)
    except ValueError:
        raise ValueError(f"{what}: {value!r} is not a number") from None


def _series(value: Any, what: str) -> str:
    return resolve_series(str(value))


def _signature(value: Any, what: str) -> int:
    return parse_cpu_signature(value)


def _remaining(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(f"remaining: {value!r} is not a number")
    number = _int(value, "remaining")
    if not 0 <= number <= 0xFFFFFFFF:
        raise ValueError(f"remaining: {value!r} is out of range")
    return number


def _cpus_or_none(value: Any, what: str) -> frozenset[int] | None:
    return value if value is None else _cpus(value, what)


def _signers(value: Any, what: str) -> frozenset[str]:
    items = [value] if isinstance(value, str) else list(value)
    return frozenset(_fingerprint(v) for v in items)


def _path_or_none(value: Any, what: str) -> Path | None:
    return None if value is None else Path(value)


def _fault_specs(value: Any, what: str) -> tuple[str, ...]:
    items = [value] if isinstance(value, str) else list(value)
    for spec in items:
        parse_fault(spec)  # ValueError early, naming the bad spec
    return tuple(items)


def _durations(value: Any, what: str) -> StageDurations:
    base = value if isinstance(value, StageDurations) else None
    return base or StageDurations().replace(dict(value))


def _int_or_none(value: Any, what: str) -> int | None:
    return None if value is None else _int(value, what)


def _flag(value: Any, what: str) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{what}: expected true or false, got {value!r}")
    return value


def _text_or_none(value: Any, what: str) -> str | None:
    return value if value is None else str(value).strip()


def _float(value: Any, what: str) -> float:
    return float(value)


#: setting -> (the field it sets, how its value is checked and converted); ValueError names
#: the setting
_SETTINGS: dict[str, tuple[str, Callable[[Any, str], Any]]] = {
    "kernel": ("kernel", _series),
    "module": ("module", _version),
    "seamldr": ("seamldr", _version),
    "cpu": ("cpu", _signature),
    "remaining": ("remaining", _remaining),
    "present": ("present", _cpus_or_none),
    "online": ("online", _cpus_or_none),
    "cpus": ("present", _cpus_or_none),
    "trusted_signers": ("trusted_signers", _signers),
    "mapping": ("mapping", _path_or_none),
    "faults": ("faults", _fault_specs),
    "fault": ("faults", _fault_specs),
    "durations": ("durations", _durations),
    "tdx_features": ("tdx_features", _int_or_none),
    "erratum": ("erratum", _flag),
    "tdx_host": ("tdx_host", _flag),
    "debug_platform": ("debug_platform", _flag),
    "osrelease": ("osrelease", _text_or_none),
    "vendor": ("vendor", _text_or_none),
    "idle_lag_ms": ("idle_lag_ms", _float),
}
