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

Every file is read through the :class:`~tdxupdate.sysroot.Sysroot` (one capped read per fact).
Tests run as root, which never gets EACCES from a plain file and never gets ENXIO at all, so they
pass a Sysroot that makes a single path fail the way the kernel would. The generations are the
table of :mod:`tdxupdate.kernels`; the checks are :mod:`tdxupdate.preflight`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import functools
import logging
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from tdxupdate import fsio, kernels, preflight
from tdxupdate.errors import IOFailure, PermissionDenied, TdxError, Unavailable, UsageError
from tdxupdate.fwupload import UploadInterface
from tdxupdate.hostfiles import (
    CPUINFO,
    CPUINFO_LIMIT,
    CPUS_ONLINE,
    CPUS_PRESENT,
    ERRATUM,
    OSRELEASE,
    cpu_signature_from_cpuinfo,
    cpuinfo_bugs,
    error_for_code,
    parse_cpu_list,
    parse_image_format,
    parse_kernel_release,
    show,
)
from tdxupdate.kernels import (
    CLASS_FIRMWARE,
    FIRMWARE_NAMES,
    G1_TDX_TSM,
    SEAMLDR_DIR,
    TDX_HOST,
)
from tdxupdate.preflight import CHECK_NAMES, HostCheck
from tdxupdate.sysroot import ATTR_LIMIT, Sysroot
from tdxupdate.versions import Version

__all__ = [
    "HostFacts",
    "discover",
    "find_upload_dir",
    "module_lost",
    "read_version_file",
]

_T = TypeVar("_T")
_LOG = logging.getLogger(__name__)

_MODULE_LOST = (
    "reading version fails with ENXIO: the TDX module is lost; every TD is gone; reboot needed"
)

_VERSION_RE = re.compile(rb"\s*(\d{1,5})\.(\d{1,5})\.(\d{1,5})\s*")
_COUNT_RE = re.compile(rb"\s*(\d{1,10})\s*")


@dataclass(frozen=True)
class HostFacts:
    """Everything :func:`discover` learned about the host; None where a fact could not be read.

    For every optional fact that is None (except ``compat_capable``, absent on most kernels,
    and the values that are None by design: ``generation``, ``kernel``, ``sysfs_layout``,
    ``firmware_name``, ``image_format_fallback``), ``problems`` holds the error saying why.
    ``upload`` is None exactly when ``upload_dir`` is.
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
    #: the handle the uploader drives; None exactly when ``upload_dir`` is None
    upload: UploadInterface | None = field(default=None, compare=False)
    #: the row of :data:`tdxupdate.kernels.GENERATIONS` (or G1) ``generation`` names
    kernel: kernels.Generation | None = field(default=None, compare=False)

    def check(self, name: str) -> HostCheck:
        for c in self.checks:
            if c.name == name:
                return c
        raise KeyError(f"no host check named {name!r}; the checks are {', '.join(CHECK_NAMES)}")

    @property
    def failed(self) -> tuple[HostCheck, ...]:
        return tuple(c for c in self.checks if not c.ok)


# --------------------------------------------------------------------------- low-level reads


def _is_seamldr_attribute(path: Path) -> bool:
    return (
        path.name in ("seamldr_version", "num_remaining_updates") or path.parent.name == "seamldr"
    )


_DENIED = "permission denied: run as root"
_SEAMLDR_DENIED = (
    "permission denied; the P-SEAMLDR attributes are readable by root only "
    "(mode 0400 since kernel series v4): run as root"
)
_MISSING = (errno.ENOENT, errno.ENOTDIR)
#: ENXIO from ``version``: the module is lost after a failed update (kernel-abi.md §3).
_LOST: fsio.Cases = fsio.cases(
    ((errno.ENXIO,), functools.partial(Unavailable, code="version-unreadable"), _MODULE_LOST)
)


def _read_fails(exc: OSError) -> str:
    return f"read fails with {fsio.errno_name(exc)} ({fsio.reason(exc)})"


def _read_error(
    path: Path, exc: OSError, missing_code: str, extra: fsio.Cases | None = None
) -> TdxError:
    """An OSError from reading ``path`` as the documented error (cli-contract.md §2):
    ``missing_code`` names what a missing file means, ``extra`` adds the file's own cases."""
    denied = _SEAMLDR_DENIED if _is_seamldr_attribute(path) else _DENIED
    known = fsio.cases(
        (fsio.DENIED, PermissionDenied, denied),
        (_MISSING, functools.partial(error_for_code, missing_code), "does not exist"),
    )
    return fsio.os_error(exc, path, {**known, **(extra or {})}, other=_read_fails)


def _read_attr(sysroot: Sysroot, path: Path, missing_code: str, limit: int = ATTR_LIMIT) -> bytes:
    try:
        data = sysroot.read(path, limit)
    except OSError as exc:
        _LOG.debug("read %s: %s", path, exc.strerror or exc)
        raise _read_error(path, exc, missing_code) from exc
    _LOG.debug("read %s: %s", path, show(data))
    return data


# --------------------------------------------------------------------------- public parsers


def read_version_file(path: Path, sysroot: Sysroot | None = None) -> Version:
    """Read a sysfs version attribute (``M.m.uu``, or ``M.m.u`` from the v2 series).

    Raises a :class:`TdxError`: ``version-unreadable`` when the file is missing, empty or garbage,
    or when the read fails with ENXIO (the module is lost after a failed update, kernel-abi.md §3);
    ``permission-denied`` on EACCES/EPERM (0400 P-SEAMLDR attributes); ``io-error`` otherwise.
    """
    try:
        data = (sysroot or Sysroot()).read(path)
    except OSError as exc:
        raise _read_error(path, exc, "version-unreadable", _LOST) from exc
    if not data.strip():
        raise Unavailable(
            f"{path}: empty (expected a version major.minor.update)", code="version-unreadable"
        )
    m = _VERSION_RE.fullmatch(data)
    if m is None:
        raise Unavailable(
            f"{path}: {show(data)} is not a version (expected major.minor.update)",
            code="version-unreadable",
        )
    return Version(int(m[1]), int(m[2]), int(m[3]))


# --------------------------------------------------------------------------- discovery


@dataclass
class _Interface:
    """Where the tdx_host attributes of this kernel generation live (kernel-abi.md §1, §6)."""

    kernel: kernels.Generation | None = None
    layout: str | None = None
    firmware_name: str | None = None
    upload_dir: Path | None = None
    seamldr_version: Path | None = None
    num_remaining_updates: Path | None = None

    @property
    def generation(self) -> str | None:
        return self.kernel.name if self.kernel is not None else None


def find_upload_dir(sysroot: Sysroot) -> tuple[str, Path] | None:
    """The firmware name and upload directory of this host, or None (kernel-abi.md §6 step 3).

    Reads nothing but directory entries: the libvirt hook calls it on every TD launch."""
    host = sysroot.path(TDX_HOST)
    for name in FIRMWARE_NAMES:
        # The class path is a symlink to the device path on a real host; a plain tree may hold
        # either one, and the class path is the one the kernel documents.
        for candidate in (sysroot.path(f"{CLASS_FIRMWARE}/{name}"), host / "firmware" / name):
            if sysroot.is_dir(candidate):
                return name, candidate
    return None


def _find_interface(sysroot: Sysroot, release: tuple[int, int] | None) -> _Interface:
    """Steps 3–5 of kernel-abi.md §6, for a host whose tdx_host device exists."""
    host = sysroot.path(TDX_HOST)
    found = _Interface()
    located = find_upload_dir(sysroot)
    if located is not None:
        found.firmware_name, found.upload_dir = located

    for layout, (version_path, remaining_path) in kernels.LAYOUT_PATHS.items():
        version, remaining = host / version_path, host / remaining_path
        present = (
            sysroot.is_dir(version.parent)
            if layout == SEAMLDR_DIR
            else sysroot.exists(version) or sysroot.exists(remaining)
        )
        if present:
            found.layout = layout
            found.seamldr_version, found.num_remaining_updates = version, remaining
            break

    def world_readable() -> bool | None:
        try:
            mode = sysroot.stat(host / "seamldr" / "version").st_mode
        except OSError:
            return None
        return bool(mode & 0o004)

    found.kernel = kernels.detect(
        kernels.Probe(
            firmware_name=found.firmware_name,
            layout=found.layout,
            release=release,
            compat_capable=sysroot.exists(host / "compat_capable"),
            seamldr_world_readable=world_readable,
        )
    )
    return found


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


def _read_cpuinfo(sysroot: Sysroot, path: Path) -> str:
    raw = _read_attr(sysroot, path, "cpu-unknown", CPUINFO_LIMIT)
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


def _read_cpu_list(sysroot: Sysroot, path: Path) -> frozenset[int]:
    data = _read_attr(sysroot, path, "io-error")
    if not data.strip():
        raise IOFailure(f"{path}: empty (expected a CPU list like 0-3)")
    try:
        return parse_cpu_list(data.decode("ascii"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise IOFailure(f"{path}: {show(data)} is not a CPU list like 0-3,5") from exc


def _read_release(sysroot: Sysroot, path: Path) -> str:
    data = _read_attr(sysroot, path, "io-error")
    text = data.strip()
    if not text:
        raise IOFailure(f"{path}: empty (expected a kernel release like 7.2.0)")
    if not all(0x20 < b < 0x7F for b in text):
        raise IOFailure(f"{path}: {show(data)} is not a kernel release")
    return text.decode("ascii")


def _read_count(sysroot: Sysroot, path: Path) -> int:
    data = _read_attr(sysroot, path, "no-remaining-updates")
    if not data.strip():
        raise Unavailable(f"{path}: empty (expected a number)", code="no-remaining-updates")
    m = _COUNT_RE.fullmatch(data)
    if m is None:
        raise Unavailable(f"{path}: {show(data)} is not a number", code="no-remaining-updates")
    return int(m[1])


def _read_flag(sysroot: Sysroot, path: Path) -> bool:
    data = _read_attr(sysroot, path, "io-error").strip()
    if data not in (b"0", b"1"):
        raise IOFailure(f"{path}: {show(data)} is neither 0 nor 1")
    return data == b"1"


def _read_status(sysroot: Sysroot, path: Path) -> str:
    return _read_attr(sysroot, path, "io-error").decode("utf-8", "replace").strip()


def _probe_device(
    sysroot: Sysroot, release: tuple[int, int] | None
) -> tuple[TdxError | None, _Interface]:
    """Steps 1–2 of kernel-abi.md §6: the error when there is no usable tdx_host device."""
    g1_path = sysroot.path(G1_TDX_TSM)
    host_path = sysroot.path(TDX_HOST)
    if sysroot.exists(g1_path):
        return Unavailable(
            f"{g1_path} exists: this kernel has the obsolete v1 update interface (May 2025 "
            f"patch series), and tdxupdate needs {TDX_HOST} from the v2 series or mainline 7.2",
            code="unsupported-kernel",
        ), _Interface(kernel=kernels.G1)
    if not sysroot.is_dir(host_path):
        return Unavailable(
            f"{host_path} does not exist: the tdx-host driver is not loaded or the TDX module is "
            "not initialized (try: modprobe kvm_intel tdx=1; modprobe tdx-host)",
            code="no-tdx-host",
        ), _Interface()
    return None, _find_interface(sysroot, release)


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
    cpuinfo = attempt("erratum_seamret_invd_vmcs", _read_cpuinfo, sysroot, cpuinfo_path)
    sig = cpu_signature
    if sig is None:
        if cpuinfo is None:
            problems["cpu_signature"] = problems["erratum_seamret_invd_vmcs"]
        else:
            sig = attempt("cpu_signature", _signature_of, cpuinfo_path, cpuinfo)
    erratum = cpuinfo is not None and ERRATUM in cpuinfo_bugs(cpuinfo)
    online = attempt("cpus_online", _read_cpu_list, sysroot, sysroot.path(CPUS_ONLINE))
    present = attempt("cpus_present", _read_cpu_list, sysroot, sysroot.path(CPUS_PRESENT))
    kernel_release = attempt("kernel_release", _read_release, sysroot, sysroot.path(OSRELEASE))
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
        module_version = attempt(
            "module_version", read_version_file, host_path / "version", sysroot
        )
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
            seamldr_version = attempt(
                "seamldr_version", read_version_file, iface.seamldr_version, sysroot
            )
            remaining = attempt(
                "num_remaining_updates", _read_count, sysroot, iface.num_remaining_updates
            )
        if sysroot.exists(host_path / "compat_capable"):
            compat_capable = attempt(
                "compat_capable", _read_flag, sysroot, host_path / "compat_capable"
            )
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
            upload_status = attempt(
                "upload_status", _read_status, sysroot, iface.upload_dir / "status"
            )

    fmt, fallback = kernels.image_formats(forced_format, host_error is None, iface.kernel, release)
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
        upload=(
            UploadInterface(iface.upload_dir, iface.firmware_name, sysroot)
            if iface.upload_dir is not None
            else None
        ),
        kernel=iface.kernel,
    )
    checks = preflight.run_checks(facts, sysroot, cpu_signature is not None)
    return dataclasses.replace(facts, checks=checks)
