"""Read-only view of the kernel's TDX module update interface, under a sysroot.

Implements:

- kernel-abi.md §1: the sysfs paths, modes and formats of every ABI generation (G1–G5);
- kernel-abi.md §2: the fw_upload ``status`` attribute of ``/sys/class/firmware/<name>/``;
- kernel-abi.md §6: how the generation is detected, and why the upload interface may be missing;
- cli-contract.md §1: the CPU signature formula and CPU lists compared as sets;
- cli-contract.md §2: the error tokens each failed check maps to;
- cli-contract.md §4 step 10: which image format is sent first and when the other one is retried.

:func:`discover` never raises on bad sysfs content. Every file that is missing, empty, garbage or
unreadable becomes a failed :class:`HostCheck` whose detail names the file and the problem, and an
entry in :attr:`HostFacts.problems` for the fact that could not be read.

Every file is read by :func:`_read_bytes`, the one low-level read. Tests run as root, which never
gets EACCES from a plain file and never gets ENXIO at all, so they patch that function to make a
single path fail the way the kernel would.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import logging
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from tdxupdate.errors import (
    IOFailure,
    PermissionDenied,
    TdxError,
    TryLater,
    Unavailable,
    UsageError,
)
from tdxupdate.versions import Version

#: The faux device created by tdx-host.ko, generations G2–G5 (kernel-abi.md §1).
TDX_HOST = "/sys/devices/faux/tdx_host"
#: The v1 (G1) interface, obsolete and unsupported (kernel-abi.md §1, §6 step 1).
G1_TDX_TSM = "/sys/devices/virtual/tdx/tdx_tsm"
#: fw_upload class devices: ``/sys/class/firmware/<name>`` (kernel-abi.md §1, §2).
CLASS_FIRMWARE = "/sys/class/firmware"
#: Firmware names in the order of kernel-abi.md §6: ``seamldr_upload`` (G2), ``tdx_module`` (G3+).
FIRMWARE_NAMES = ("seamldr_upload", "tdx_module")
CPUINFO = "/proc/cpuinfo"
OSRELEASE = "/proc/sys/kernel/osrelease"
CPUS_ONLINE = "/sys/devices/system/cpu/online"
CPUS_PRESENT = "/sys/devices/system/cpu/present"
#: The CPU bug that makes the kernel hide the update interface (kernel-abi.md §1 G3, G5).
ERRATUM = "seamret_invd_vmcs"

#: Container formats (image-formats.md); kept here so host.py does not depend on image.py.
FORMAT_A = 0x100
FORMAT_B = 0x200
#: Mainline releases from this one on carry G5 and accept only Format B (kernel-abi.md §6 step 5).
FORMAT_B_KERNEL = (7, 2)

SEAMLDR_DIR = "seamldr-dir"
FLAT = "flat"

#: Preflight check names, in report order (team brief; cli-contract.md §3).
CHECK_NAMES = (
    "tdx-host",
    "upload-interface",
    "upload-idle",
    "remaining-updates",
    "cpus-online",
    "module-version",
    "seamldr-version",
    "cpu-signature",
    "erratum-seamret-invd-vmcs",
)

#: sysfs attributes are at most a page; /proc/cpuinfo is read only far enough for CPU 0.
_ATTR_LIMIT = 4096
_CPUINFO_LIMIT = 256 * 1024
#: Highest CPU number accepted in a CPU list: bounds the set built from a garbage file.
MAX_CPU = 65535

_T = TypeVar("_T")
_LOG = logging.getLogger(__name__)

_MODULE_LOST = (
    "reading version fails with ENXIO: the TDX module is lost; every TD is gone; reboot needed"
)
_NOT_CHECKED = "not checked: no tdx_host device"

_VERSION_RE = re.compile(rb"\s*(\d{1,5})\.(\d{1,5})\.(\d{1,5})\s*")
_COUNT_RE = re.compile(rb"\s*(\d{1,10})\s*")
_SIGNATURE_RE = re.compile(r"(?:0[xX])?([0-9a-fA-F]{1,8})")
_CPU_RANGE_RE = re.compile(r"(\d{1,5})(?:-(\d{1,5}))?", re.ASCII)
_RELEASE_RE = re.compile(r"(\d{1,4})\.(\d{1,4})", re.ASCII)
_DECIMAL_RE = re.compile(r"\d{1,4}", re.ASCII)


class Sysroot:
    """The root every ``/sys`` and ``/proc`` path is resolved under (``--sysroot``, contract §1)."""

    __slots__ = ("root",)

    def __init__(self, root: str | os.PathLike[str] = "/") -> None:
        self.root = Path(root)

    def path(self, path: str) -> Path:
        """``Sysroot("/tmp/h").path("/sys/x")`` -> ``/tmp/h/sys/x``; root ``/`` -> ``/sys/x``."""
        if not path.startswith("/"):
            raise ValueError(f"{path!r} is not an absolute path")
        return self.root / path.lstrip("/")

    def __repr__(self) -> str:
        return f"Sysroot({str(self.root)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Sysroot) and other.root == self.root

    def __hash__(self) -> int:
        return hash(self.root)


@dataclass(frozen=True)
class HostCheck:
    """One preflight check; ``code`` is the cli-contract.md §2 token of a failure, else None."""

    name: str
    ok: bool
    detail: str
    code: str | None


@dataclass(frozen=True)
class HostFacts:
    """Everything :func:`discover` learned about the host; None where a fact could not be read.

    For every optional fact that is None (except ``compat_capable``, absent on most kernels,
    and the values that are None by design: ``generation``, ``sysfs_layout``, ``firmware_name``,
    ``image_format_fallback``), ``problems`` holds the error saying why.
    """

    sysroot: Path
    tdx_host: bool
    generation: str | None  # "G1" | "G2" | "G3" | "G4/G5" | "G5"
    sysfs_layout: str | None  # "seamldr-dir" | "flat"
    firmware_name: str | None  # "seamldr_upload" | "tdx_module"
    upload_dir: Path | None  # sysroot-prefixed; the class path when it exists, else the device path
    module_version: Version | None
    seamldr_version: Version | None
    num_remaining_updates: int | None
    cpu_signature: int | None
    cpus_online: frozenset[int] | None
    cpus_present: frozenset[int] | None
    kernel_release: str | None
    image_format: int | None
    image_format_fallback: int | None
    image_format_auto: bool
    upload_status: str | None
    erratum_seamret_invd_vmcs: bool
    checks: tuple[HostCheck, ...]
    problems: Mapping[str, TdxError]
    compat_capable: bool | None = None  # v3 kernels only (kernel-abi.md §1 G2)

    def check(self, name: str) -> HostCheck:
        for c in self.checks:
            if c.name == name:
                return c
        raise KeyError(f"no host check named {name!r}; the checks are {', '.join(CHECK_NAMES)}")

    @property
    def failed(self) -> tuple[HostCheck, ...]:
        return tuple(c for c in self.checks if not c.ok)


# --------------------------------------------------------------------------- low-level reads


def _read_bytes(path: Path, limit: int = _ATTR_LIMIT) -> bytes:
    """Read at most ``limit`` bytes of ``path``: the only place this module reads a file."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        chunks: list[bytes] = []
        total = 0
        while total < limit:
            chunk = os.read(fd, min(65536, limit - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def _exists(path: Path) -> bool:
    # os.path (not Path.exists, which raises on EACCES in 3.11): a path we cannot see is absent.
    return os.path.lexists(path)


def _is_dir(path: Path) -> bool:
    return os.path.isdir(path)


def _show(data: bytes, limit: int = 40) -> str:
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


def _error(code: str, message: str) -> TdxError:
    return _CLASSES.get(code, Unavailable)(message, code=code)


def _is_seamldr_attribute(path: Path) -> bool:
    return (
        path.name in ("seamldr_version", "num_remaining_updates") or path.parent.name == "seamldr"
    )


def _os_error(path: Path, exc: OSError, missing_code: str) -> TdxError:
    """An OSError from reading ``path`` as the documented error (cli-contract.md §2)."""
    if exc.errno in (errno.EACCES, errno.EPERM):
        if _is_seamldr_attribute(path):
            return PermissionDenied(
                f"{path}: permission denied; the P-SEAMLDR attributes are readable by root only "
                "(mode 0400 since kernel series v4): run as root"
            )
        return PermissionDenied(f"{path}: permission denied: run as root")
    if exc.errno in (errno.ENOENT, errno.ENOTDIR):
        return _error(missing_code, f"{path}: does not exist")
    name = errno.errorcode.get(exc.errno or 0, "error")
    return IOFailure(f"{path}: read fails with {name} ({exc.strerror or exc})")


def _read_attr(path: Path, missing_code: str, limit: int = _ATTR_LIMIT) -> bytes:
    try:
        data = _read_bytes(path, limit)
    except OSError as exc:
        _LOG.debug("read %s: %s", path, exc.strerror or exc)
        raise _os_error(path, exc, missing_code) from exc
    _LOG.debug("read %s: %s", path, _show(data))
    return data


# --------------------------------------------------------------------------- public parsers


def read_version_file(path: Path) -> Version:
    """Read a sysfs version attribute (``M.m.uu``, or ``M.m.u`` from the v2 series).

    Raises a :class:`TdxError`: ``version-unreadable`` when the file is missing, empty or garbage,
    or when the read fails with ENXIO (the module is lost after a failed update, kernel-abi.md §3);
    ``permission-denied`` on EACCES/EPERM (0400 P-SEAMLDR attributes); ``io-error`` otherwise.
    """
    try:
        data = _read_bytes(path)
    except OSError as exc:
        if exc.errno == errno.ENXIO:
            raise Unavailable(f"{path}: {_MODULE_LOST}", code="version-unreadable") from exc
        raise _os_error(path, exc, "version-unreadable") from exc
    if not data.strip():
        raise Unavailable(
            f"{path}: empty (expected a version major.minor.update)", code="version-unreadable"
        )
    m = _VERSION_RE.fullmatch(data)
    if m is None:
        raise Unavailable(
            f"{path}: {_show(data)} is not a version (expected major.minor.update)",
            code="version-unreadable",
        )
    return Version(int(m[1]), int(m[2]), int(m[3]))


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
        raise ValueError(f"{key} is {_show(value.encode())}, not a number from 0 to {maximum}")
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
        raise ValueError(f"vendor_id is {_show(vendor.encode())}, not GenuineIntel")
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


@dataclass
class _Interface:
    """Where the tdx_host attributes of this kernel generation live (kernel-abi.md §1, §6)."""

    generation: str | None = None
    layout: str | None = None
    firmware_name: str | None = None
    upload_dir: Path | None = None
    seamldr_version: Path | None = None
    num_remaining_updates: Path | None = None


def find_upload_dir(sysroot: Sysroot) -> tuple[str, Path] | None:
    """The firmware name and upload directory of this host, or None (kernel-abi.md §6 step 3).

    Reads nothing but directory entries: the libvirt hook calls it on every TD launch."""
    host = sysroot.path(TDX_HOST)
    for name in FIRMWARE_NAMES:
        # The class path is a symlink to the device path on a real host; a plain tree may hold
        # either one, and the class path is the one the kernel documents.
        for candidate in (sysroot.path(f"{CLASS_FIRMWARE}/{name}"), host / "firmware" / name):
            if _is_dir(candidate):
                return name, candidate
    return None


def _find_interface(sysroot: Sysroot, release: tuple[int, int] | None) -> _Interface:
    """Steps 3–5 of kernel-abi.md §6, for a host whose tdx_host device exists."""
    host = sysroot.path(TDX_HOST)
    found = _Interface()
    located = find_upload_dir(sysroot)
    if located is not None:
        found.firmware_name, found.upload_dir = located

    if _is_dir(host / "seamldr"):
        found.layout = SEAMLDR_DIR
        found.seamldr_version = host / "seamldr" / "version"
        found.num_remaining_updates = host / "seamldr" / "num_remaining_updates"
    elif _exists(host / "seamldr_version") or _exists(host / "num_remaining_updates"):
        found.layout = FLAT
        found.seamldr_version = host / "seamldr_version"
        found.num_remaining_updates = host / "num_remaining_updates"

    if found.firmware_name == "seamldr_upload":
        found.generation = "G2"
    elif found.layout == SEAMLDR_DIR:
        found.generation = "G3" if found.firmware_name else _seamldr_dir_generation(host)
    elif found.layout == FLAT:
        # G4 and G5 have the same sysfs; only a mainline release >= 7.2 is surely G5.
        found.generation = "G5" if release is not None and release >= FORMAT_B_KERNEL else "G4/G5"
    return found


def _seamldr_dir_generation(host: Path) -> str | None:
    """G2 or G3 when no firmware dir tells: v3's compat_capable, or world-readable attributes."""
    if _exists(host / "compat_capable"):
        return "G2"
    try:
        mode = os.stat(host / "seamldr" / "version").st_mode
    except OSError:
        return None
    return "G2" if mode & 0o004 else "G3"


def _missing_upload_reason(
    erratum: bool | None, remaining: int | None, layout: str | None, generation: str | None
) -> str:
    """Why the kernel offers no upload interface (kernel-abi.md §1 visibility rules, §6 step 6)."""
    if erratum:
        return (
            f"the CPU has erratum {ERRATUM} (/proc/cpuinfo bugs), "
            "so the kernel offers no runtime update"
        )
    if remaining == 0 and generation == "G2":
        return (
            "num_remaining_updates is 0, and this kernel registers the interface "
            "only while updates remain"
        )
    causes = ["the running TDX module does not support TD-preserving updates (TDX_FEATURES0 bit 1)"]
    if erratum is None:
        causes.append(f"the CPU has erratum {ERRATUM}")
    causes.append("or the kernel predates runtime TDX module updates")
    hidden = "" if layout is not None else "the P-SEAMLDR attributes are hidden too; "
    return hidden + "likely causes: " + ", ".join(causes)


# Readers of single files: each returns the value or raises the TdxError saying what is wrong.


def _read_cpuinfo(path: Path) -> str:
    raw = _read_attr(path, "cpu-unknown", _CPUINFO_LIMIT)
    if not raw.strip():
        raise Unavailable(f"{path}: empty", code="cpu-unknown")
    return raw.decode("utf-8", "replace")


def _signature_of(path: Path, cpuinfo: str) -> int:
    try:
        return cpu_signature_from_cpuinfo(cpuinfo)
    except ValueError as exc:
        raise Unavailable(
            f"{path}: {exc}; give the signature with --cpu-signature", code="cpu-unknown"
        ) from exc


def _read_cpu_list(path: Path) -> frozenset[int]:
    data = _read_attr(path, "io-error")
    if not data.strip():
        raise IOFailure(f"{path}: empty (expected a CPU list like 0-3)")
    try:
        return parse_cpu_list(data.decode("ascii"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise IOFailure(f"{path}: {_show(data)} is not a CPU list like 0-3,5") from exc


def _read_release(path: Path) -> str:
    data = _read_attr(path, "io-error")
    text = data.strip()
    if not text:
        raise IOFailure(f"{path}: empty (expected a kernel release like 7.2.0)")
    if not all(0x20 < b < 0x7F for b in text):
        raise IOFailure(f"{path}: {_show(data)} is not a kernel release")
    return text.decode("ascii")


def _read_count(path: Path) -> int:
    data = _read_attr(path, "no-remaining-updates")
    if not data.strip():
        raise Unavailable(f"{path}: empty (expected a number)", code="no-remaining-updates")
    m = _COUNT_RE.fullmatch(data)
    if m is None:
        raise Unavailable(f"{path}: {_show(data)} is not a number", code="no-remaining-updates")
    return int(m[1])


def _read_flag(path: Path) -> bool:
    data = _read_attr(path, "io-error").strip()
    if data not in (b"0", b"1"):
        raise IOFailure(f"{path}: {_show(data)} is neither 0 nor 1")
    return data == b"1"


def _read_status(path: Path) -> str:
    return _read_attr(path, "io-error").decode("utf-8", "replace").strip()


def _probe_device(
    sysroot: Sysroot, release: tuple[int, int] | None
) -> tuple[TdxError | None, _Interface]:
    """Steps 1–2 of kernel-abi.md §6: the error when there is no usable tdx_host device."""
    g1_path = sysroot.path(G1_TDX_TSM)
    host_path = sysroot.path(TDX_HOST)
    if _exists(g1_path):
        return Unavailable(
            f"{g1_path} exists: this kernel has the obsolete v1 update interface (May 2025 "
            f"patch series), and tdxupdate needs {TDX_HOST} from the v2 series or mainline 7.2",
            code="unsupported-kernel",
        ), _Interface(generation="G1")
    if not _is_dir(host_path):
        return Unavailable(
            f"{host_path} does not exist: the tdx-host driver is not loaded or the TDX module is "
            "not initialized (try: modprobe kvm_intel tdx=1; modprobe tdx-host)",
            code="no-tdx-host",
        ), _Interface()
    return None, _find_interface(sysroot, release)


def _image_format(
    forced: int | None, tdx_host: bool, generation: str | None, release: tuple[int, int] | None
) -> tuple[int | None, int | None]:
    """(format sent first, the other one when cli-contract.md §4 step 10 may retry it)."""
    if forced is not None:
        return forced, None
    if not tdx_host:
        return None, None
    if generation in ("G2", "G3"):
        return FORMAT_A, None
    # Flat (G4/G5): only a release >= 7.2 is known to take Format B alone (kernel-abi.md §6 5).
    if release is not None and release >= FORMAT_B_KERNEL:
        return FORMAT_B, None
    return FORMAT_B, FORMAT_A


def module_lost(facts: HostFacts) -> bool:
    """``version`` fails with ENXIO: the module is gone (kernel-abi.md §3), every TD was killed,
    and only a reboot brings TDX back. A state of the host, not of the last update."""
    problem = facts.problems.get("module_version")
    cause = problem.__cause__ if problem is not None else None
    return isinstance(cause, OSError) and cause.errno == errno.ENXIO


def discover(
    sysroot: Sysroot | str | os.PathLike[str],
    *,
    cpu_signature: int | None = None,
    image_format: str = "auto",
) -> HostFacts:
    """Read the host facts and run the preflight checks; never raises on bad sysfs content.

    ``cpu_signature`` replaces the value computed from /proc/cpuinfo (``--cpu-signature``);
    ``image_format`` is ``--image-format`` (``auto``, ``0x100`` or ``0x200``; UsageError else).
    """
    if not isinstance(sysroot, Sysroot):
        sysroot = Sysroot(sysroot)
    forced_format = parse_image_format(image_format)
    if cpu_signature is not None and not 0 <= cpu_signature <= 0xFFFFFFFF:
        raise UsageError(f"--cpu-signature: {cpu_signature:#x} does not fit CPUID.1.EAX (32 bits)")
    problems: dict[str, TdxError] = {}

    def attempt(fact: str, read: Callable[..., _T], *args: Any) -> _T | None:
        try:
            return read(*args)
        except TdxError as exc:
            problems[fact] = exc
            return None

    # CPU facts need no tdx_host device.
    cpuinfo_path = sysroot.path(CPUINFO)
    cpuinfo = attempt("erratum_seamret_invd_vmcs", _read_cpuinfo, cpuinfo_path)
    sig = cpu_signature
    if sig is None:
        if cpuinfo is None:
            problems["cpu_signature"] = problems["erratum_seamret_invd_vmcs"]
        else:
            sig = attempt("cpu_signature", _signature_of, cpuinfo_path, cpuinfo)
    erratum = cpuinfo is not None and ERRATUM in cpuinfo_bugs(cpuinfo)
    online = attempt("cpus_online", _read_cpu_list, sysroot.path(CPUS_ONLINE))
    present = attempt("cpus_present", _read_cpu_list, sysroot.path(CPUS_PRESENT))
    kernel_release = attempt("kernel_release", _read_release, sysroot.path(OSRELEASE))
    release: tuple[int, int] | None = None
    if kernel_release is not None:
        with contextlib.suppress(ValueError):  # unparseable: §4 step 10's fallback covers it
            release = parse_kernel_release(kernel_release)

    host_error, iface = _probe_device(sysroot, release)
    module_version: Version | None = None
    seamldr_version: Version | None = None
    remaining: int | None = None
    upload_status: str | None = None
    compat_capable: bool | None = None
    if host_error is not None:
        # Each fact the device would give is unknown for the device's reason.
        for fact in ("tdx_host", "module_version", "seamldr_version", "num_remaining_updates"):
            problems[fact] = host_error
        problems["upload_dir"] = problems["upload_status"] = host_error
    else:
        host_path = sysroot.path(TDX_HOST)
        module_version = attempt("module_version", read_version_file, host_path / "version")
        if iface.seamldr_version is None or iface.num_remaining_updates is None:
            hidden = "the kernel shows the P-SEAMLDR attributes only when the module can be updated"
            problems["seamldr_version"] = Unavailable(
                f"neither {host_path}/seamldr_version nor {host_path}/seamldr/version exists; "
                + hidden,
                code="version-unreadable",
            )
            problems["num_remaining_updates"] = Unavailable(
                f"neither {host_path}/num_remaining_updates nor "
                f"{host_path}/seamldr/num_remaining_updates exists; " + hidden,
                code="no-remaining-updates",
            )
        else:
            seamldr_version = attempt("seamldr_version", read_version_file, iface.seamldr_version)
            remaining = attempt("num_remaining_updates", _read_count, iface.num_remaining_updates)
        if _exists(host_path / "compat_capable"):
            compat_capable = attempt("compat_capable", _read_flag, host_path / "compat_capable")
        if iface.upload_dir is None:
            cls = sysroot.path(CLASS_FIRMWARE)
            known_erratum = None if cpuinfo is None else erratum
            problems["upload_dir"] = problems["upload_status"] = Unavailable(
                f"no firmware upload interface: {cls}/tdx_module and {cls}/seamldr_upload do not "
                "exist; "
                + _missing_upload_reason(known_erratum, remaining, iface.layout, iface.generation),
                code="no-upload-interface",
            )
        else:
            upload_status = attempt("upload_status", _read_status, iface.upload_dir / "status")

    fmt, fallback = _image_format(forced_format, host_error is None, iface.generation, release)
    facts = HostFacts(
        sysroot=sysroot.root,
        tdx_host=host_error is None,
        generation=iface.generation,
        sysfs_layout=iface.layout,
        firmware_name=iface.firmware_name,
        upload_dir=iface.upload_dir,
        module_version=module_version,
        seamldr_version=seamldr_version,
        num_remaining_updates=remaining,
        cpu_signature=sig,
        cpus_online=online,
        cpus_present=present,
        kernel_release=kernel_release,
        image_format=fmt,
        image_format_fallback=fallback,
        image_format_auto=forced_format is None,
        upload_status=upload_status,
        erratum_seamret_invd_vmcs=erratum,
        checks=(),
        problems=problems,
        compat_capable=compat_capable,
    )
    return dataclasses.replace(facts, checks=_checks(facts, sysroot, cpu_signature is not None))


def _checks(facts: HostFacts, sysroot: Sysroot, signature_given: bool) -> tuple[HostCheck, ...]:
    """The preflight checks, in CHECK_NAMES order, from the facts and their problems."""
    problems = facts.problems
    checks: list[HostCheck] = []

    def add(name: str, failure: TdxError | None, ok_detail: str) -> None:
        if failure is None:
            checks.append(HostCheck(name, True, ok_detail, None))
        else:
            checks.append(HostCheck(name, False, failure.message, failure.code))

    host_error = problems.get("tdx_host")

    def needs_device(failure: TdxError | None) -> TdxError | None:
        if host_error is not None:
            return _error(host_error.code, _NOT_CHECKED)
        return failure

    host_path = sysroot.path(TDX_HOST)
    layout = facts.sysfs_layout or "no P-SEAMLDR attributes"
    add("tdx-host", host_error, f"{host_path} present: interface {facts.generation}, {layout}")

    add(
        "upload-interface",
        needs_device(problems.get("upload_dir")),
        f"{facts.upload_dir} (firmware {facts.firmware_name})",
    )

    status_path = f"{facts.upload_dir}/status"
    idle_failure = problems.get("upload_status")
    if facts.upload_dir is None:
        idle_failure = _error("no-upload-interface", "not checked: no upload interface")
    elif idle_failure is None and facts.upload_status != "idle":
        idle_failure = TryLater(
            f'{status_path} is {_show((facts.upload_status or "").encode())}, not "idle": '
            "another upload is in progress; try again when it finishes",
            code="upload-busy",
        )
    add("upload-idle", needs_device(idle_failure), f"{status_path} is idle")

    remaining_failure = problems.get("num_remaining_updates")
    if facts.num_remaining_updates == 0:
        remaining_failure = Unavailable(
            "num_remaining_updates is 0: no update possible until reboot",
            code="no-remaining-updates",
        )
    add(
        "remaining-updates",
        needs_device(remaining_failure),
        f"num_remaining_updates is {facts.num_remaining_updates}",
    )

    online, present = facts.cpus_online, facts.cpus_present
    cpus_failure = problems.get("cpus_online") or problems.get("cpus_present")
    if online is not None and present is not None:
        if present - online:
            cpus_failure = TryLater(
                f"{len(online & present)} of {len(present)} CPUs online "
                f"(offline: {format_cpu_list(present - online)}); "
                "the update needs every present CPU online",
                code="cpus-offline",
            )
        elif online - present:
            cpus_failure = IOFailure(
                f"{sysroot.path(CPUS_ONLINE)} lists CPUs {format_cpu_list(online - present)} "
                f"that {sysroot.path(CPUS_PRESENT)} does not: the CPU lists are inconsistent"
            )
    add(
        "cpus-online",
        cpus_failure,
        f"all {len(present or ())} present CPUs are online ({format_cpu_list(present or ())})",
    )

    add(
        "module-version",
        needs_device(problems.get("module_version")),
        f"TDX module {facts.module_version}",
    )
    add(
        "seamldr-version",
        needs_device(problems.get("seamldr_version")),
        f"P-SEAMLDR {facts.seamldr_version}",
    )

    signature = format_cpu_signature(facts.cpu_signature or 0)
    cpuinfo_path = sysroot.path(CPUINFO)
    add(
        "cpu-signature",
        problems.get("cpu_signature"),
        f"{signature} (given; /proc/cpuinfo not used)"
        if signature_given
        else f"{signature} from {cpuinfo_path}",
    )

    cpuinfo_error = problems.get("erratum_seamret_invd_vmcs")
    erratum_failure: TdxError | None = None
    if cpuinfo_error is not None:
        erratum_failure = _error(cpuinfo_error.code, f"not checked: {cpuinfo_error.message}")
    elif facts.erratum_seamret_invd_vmcs:
        erratum_failure = Unavailable(
            f"{cpuinfo_path}: the bugs line lists {ERRATUM}: this CPU cannot update the TDX "
            "module at runtime; updates need a reboot",
            code="no-upload-interface",
        )
    add(
        "erratum-seamret-invd-vmcs",
        erratum_failure,
        f"{cpuinfo_path}: the bugs line does not list {ERRATUM}",
    )
    return tuple(checks)
