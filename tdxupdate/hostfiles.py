"""The host files discovery reads besides tdx_host, and the parsers of their content.

Implements cli-contract.md §1: the CPU signature formula (from /proc/cpuinfo) and CPU lists
compared as sets; and the ``--image-format`` / ``--cpu-signature`` argument parsers. Pure
functions: the reads go through :class:`tdxupdate.sysroot.Sysroot` in :mod:`tdxupdate.host`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

from tdxupdate.errors import (
    IOFailure,
    PermissionDenied,
    TdxError,
    TryLater,
    Unavailable,
    UsageError,
)

CPUINFO = "/proc/cpuinfo"
OSRELEASE = "/proc/sys/kernel/osrelease"
CPUS_ONLINE = "/sys/devices/system/cpu/online"
CPUS_PRESENT = "/sys/devices/system/cpu/present"
#: The CPU bug that makes the kernel hide the update interface (kernel-abi.md §1 G3, G5).
ERRATUM = "seamret_invd_vmcs"

#: /proc/cpuinfo is read only far enough for CPU 0.
CPUINFO_LIMIT = 256 * 1024
#: Highest CPU number accepted in a CPU list: bounds the set built from a garbage file.
MAX_CPU = 65535

_SIGNATURE_RE = re.compile(r"(?:0[xX])?([0-9a-fA-F]{1,8})")
_CPU_RANGE_RE = re.compile(r"(\d{1,5})(?:-(\d{1,5}))?", re.ASCII)
_RELEASE_RE = re.compile(r"(\d{1,4})\.(\d{1,4})", re.ASCII)
_DECIMAL_RE = re.compile(r"\d{1,4}", re.ASCII)


def show(data: bytes, limit: int = 40) -> str:
    """Quote file content for a message: printable ASCII kept, everything else escaped."""
    data = data.strip()
    out: list[str] = []
    for b in data[:limit]:
        if b in (0x22, 0x5C):
            out.append("\\" + chr(b))
        elif 0x20 <= b < 0x7F:
            out.append(chr(b))
        elif b == 0x0A:
            out.append("\\n")
        elif b == 0x09:
            out.append("\\t")
        else:
            out.append(f"\\x{b:02x}")
    shown = '"' + "".join(out) + '"'
    if len(data) > limit:
        shown += f"… ({len(data)} bytes)"
    return shown


_CLASSES: dict[str, type[TdxError]] = {
    "permission-denied": PermissionDenied,
    "io-error": IOFailure,
    "upload-busy": TryLater,
    "cpus-offline": TryLater,
}


def error_for_code(code: str, message: str) -> TdxError:
    return _CLASSES.get(code, Unavailable)(message, code=code)


def parse_cpu_signature(text: str) -> int:
    """``"0x806f8"`` / ``"806F8"`` -> 0x806f8 (CPUID.1.EAX, at most 32 bits); else ValueError."""
    m = _SIGNATURE_RE.fullmatch(text.strip())
    if m is None:
        raise ValueError(
            f"{text.strip()!r} is not a CPU signature (CPUID.1.EAX in hex, e.g. 0x806f8)"
        )
    return int(m[1], 16)


def format_cpu_signature(sig: int) -> str:
    return f"0x{sig:x}"


def _cpuinfo_first_block(text: str) -> dict[str, str]:
    """The ``key : value`` lines of the first processor entry (entries end at a blank line)."""
    fields: dict[str, str] = {}
    for line in text.split("\n"):
        if not line.strip():
            if fields:
                break
            continue
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip(), value.strip())
    return fields


def _cpuinfo_number(fields: Mapping[str, str], key: str, maximum: int) -> int:
    if key not in fields:
        raise ValueError(f"the first processor entry has no {key!r} line")
    value = fields[key]
    if not _DECIMAL_RE.fullmatch(value) or int(value) > maximum:
        raise ValueError(f"{key} is {show(value.encode())}, not a number from 0 to {maximum}")
    return int(value)


def cpu_signature_from_cpuinfo(text: str) -> int:
    """CPUID.1.EAX from the first processor entry of /proc/cpuinfo (cli-contract.md §1).

    ``EAX = stepping | (model & 0xF) << 4 | family' << 8 | (model >> 4) << 16 | ext << 20`` with
    family' = min(family, 15) and ext = max(family - 15, 0): the CPUID encoding Linux decodes
    ``cpu family`` from. For every family up to 15 this is the contract's ``family & 0xF``.
    Raises ValueError naming the missing or bad field, or a vendor other than GenuineIntel.
    """
    fields = _cpuinfo_first_block(text)
    if not fields:
        raise ValueError("no processor entry")
    vendor = fields.get("vendor_id")
    if vendor is None:
        raise ValueError("the first processor entry has no 'vendor_id' line")
    if vendor != "GenuineIntel":
        raise ValueError(f"vendor_id is {show(vendor.encode())}, not GenuineIntel")
    family = _cpuinfo_number(fields, "cpu family", 15 + 0xFF)
    model = _cpuinfo_number(fields, "model", 0xFF)
    stepping = _cpuinfo_number(fields, "stepping", 0xF)
    return (
        stepping
        | (model & 0xF) << 4
        | min(family, 15) << 8
        | (model >> 4) << 16
        | max(family - 15, 0) << 20
    )


def cpuinfo_bugs(text: str) -> frozenset[str]:
    """The words of the ``bugs`` line of the first processor entry (empty when there is none)."""
    return frozenset(_cpuinfo_first_block(text).get("bugs", "").split())


def parse_cpu_list(text: str) -> frozenset[int]:
    """Linux CPU list (``0-3,5``; empty means none) -> set of CPU numbers; else ValueError."""
    text = text.strip()
    if not text:
        return frozenset()
    cpus: set[int] = set()
    for item in text.split(","):
        m = _CPU_RANGE_RE.fullmatch(item.strip())
        if m is None:
            raise ValueError(f"{item.strip()!r} is not a CPU number or range")
        first = int(m[1])
        last = int(m[2]) if m[2] is not None else first
        if last < first:
            raise ValueError(f"{item.strip()!r} is a reversed range")
        if last > MAX_CPU:
            raise ValueError(f"CPU {last} is beyond {MAX_CPU}")
        cpus.update(range(first, last + 1))
    return frozenset(cpus)


def format_cpu_list(cpus: Iterable[int]) -> str:
    """The kernel's notation: ``{0, 1, 2, 3, 5}`` -> ``"0-3,5"``."""
    ordered = sorted(set(cpus))
    parts: list[str] = []
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
            j += 1
        parts.append(str(ordered[i]) if i == j else f"{ordered[i]}-{ordered[j]}")
        i = j + 1
    return ",".join(parts)


def parse_kernel_release(text: str) -> tuple[int, int]:
    """Leading ``X.Y`` of a kernel release (``7.2.0-rc1+`` -> (7, 2)); ValueError otherwise."""
    m = _RELEASE_RE.match(text.strip())
    if m is None:
        raise ValueError(f"{text.strip()!r} does not start with major.minor")
    return (int(m[1]), int(m[2]))


def parse_image_format(text: str) -> int | None:
    """``--image-format``: ``auto`` -> None, ``0x100`` -> 0x100, ``0x200`` -> 0x200."""
    value = text.strip().lower()
    if value == "auto":
        return None
    if value in ("0x100", "0x200"):
        return int(value, 16)
    raise UsageError(f"--image-format: {text!r} is not one of auto, 0x100, 0x200")


# --------------------------------------------------------------------------- discovery
