"""Plain-file sysroot trees shaped like each kernel generation of kernel-abi.md §1.

``build_host_tree(root, generation="G5", ...)`` writes what a host with the tdx_host driver shows
under ``/sys`` and ``/proc``: the tdx_host attributes with the generation's paths, formats and
modes, the fw_upload directory (``firmware/<name>`` under the device, and the
``/sys/class/firmware/<name>`` symlink a real host has), the CPU lists, /proc/cpuinfo and the
kernel release. ``overrides`` then replace (str/bytes) or delete (None) single files, and
``modes`` chmods them.

Tests run as root, and root reads a mode-000 file without trouble; ``fail_reads`` gives a
:class:`~factories.sysroot.FaultySysroot` whose reads of chosen paths raise an OSError instead
(EACCES for an unprivileged reader, ENXIO for a lost module).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict, Unpack

from factories.sysroot import FaultySysroot
from tdxupdate import host, hostfiles, kernels
from tdxupdate.sysroot import ATTR_LIMIT, Sysroot
from tdxupdate.versions import Version

GENERATIONS = ("G1", "G2", "G3", "G4", "G5")

T = kernels.TDX_HOST
G1_TSM = kernels.G1_TDX_TSM
G1_SEAMLDR = "/sys/devices/virtual/tdx/seamldr"

#: The kernel release each generation shipped on (kernel-abi.md §1): v8 (G4) sat on 7.1-rc1,
#: the merged interface (G5) arrived in 7.2.
DEFAULT_OSRELEASE = {
    "G1": "6.15.0-rc7",
    "G2": "6.17.0",
    "G3": "7.0.0",
    "G4": "7.1.0-rc1",
    "G5": "7.2.0",
}

#: Real Xeon CPUs: (family, model, stepping) -> model name.
CPU_NAMES = {
    (6, 143, 8): "Intel(R) Xeon(R) Platinum 8480+",  # Sapphire Rapids, 0x806f8
    (6, 207, 2): "INTEL(R) XEON(R) PLATINUM 8592+",  # Emerald Rapids, 0xc06f2
    (6, 175, 3): "Intel(R) Xeon(R) 6780E",  # Sierra Forest, 0xa06f3
    (6, 173, 1): "Intel(R) Xeon(R) 6980P",  # Granite Rapids, 0xa06d1
}

_BASE_BUGS = "spectre_v1 spectre_v2 spec_store_bypass swapgs eibrs_pbrsb bhi"
_FLAGS = (
    "fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush dts acpi "
    "mmx fxsr sse sse2 ss ht tm pbe syscall nx pdpe1gb rdtscp lm constant_tsc art arch_perfmon "
    "pebs bts "
    "rep_good nopl xtopology nonstop_tsc cpuid aperfmperf tsc_known_freq pni pclmulqdq dtes64 "
    "monitor ds_cpl vmx smx est tm2 ssse3 sdbg fma cx16 xtpr pdcm pcid dca sse4_1 sse4_2 x2apic "
    "movbe popcnt tsc_deadline_timer aes xsave avx f16c rdrand lahf_lm abm 3dnowprefetch "
    "cpuid_fault epb cat_l3 cat_l2 cdp_l3 intel_ppin cdp_l2 ssbd mba ibrs ibpb stibp "
    "ibrs_enhanced tpr_shadow flexpriority ept vpid ept_ad fsgsbase tsc_adjust bmi1 hle avx2 smep "
    "bmi2 erms invpcid rtm cqm rdt_a avx512f avx512dq rdseed adx smap avx512ifma clflushopt clwb "
    "intel_pt avx512cd sha_ni avx512bw avx512vl xsaveopt xsavec xgetbv1 xsaves cqm_llc "
    "cqm_occup_llc cqm_mbm_total cqm_mbm_local split_lock_detect avx_vnni avx512_bf16 wbnoinvd "
    "dtherm ida arat pln pts hfi vnmi avx512vbmi umip pku ospke waitpkg avx512_vbmi2 gfni vaes "
    "vpclmulqdq avx512_vnni avx512_bitalg tme avx512_vpopcntdq la57 rdpid bus_lock_detect "
    "cldemote movdiri movdir64b enqcmd fsrm md_clear serialize tsxldtrk pconfig arch_lbr "
    "ibt amx_bf16 avx512_fp16 amx_tile amx_int8 flush_l1d arch_capabilities"
)


def signature_to_cpu(sig: int) -> tuple[int, int, int]:
    """CPUID.1.EAX -> (family, model, stepping) the way Linux decodes it for /proc/cpuinfo."""
    base_family = (sig >> 8) & 0xF
    family = base_family + ((sig >> 20) & 0xFF) if base_family == 0xF else base_family
    model = (sig >> 4) & 0xF
    if base_family in (6, 0xF):
        model |= ((sig >> 16) & 0xF) << 4
    return family, model, sig & 0xF


def cpuinfo_text(
    cpu: tuple[int, int, int] | int = (6, 143, 8),
    *,
    vendor: str = "GenuineIntel",
    bugs: str = "",
    cpus: int = 4,
) -> str:
    """/proc/cpuinfo of an Intel server with ``cpus`` entries (as a 4.x–7.x kernel prints it)."""
    family, model, stepping = signature_to_cpu(cpu) if isinstance(cpu, int) else cpu
    name = CPU_NAMES.get((family, model, stepping), f"Intel(R) Xeon(R) CPU family {family}")
    bug_line = f"{_BASE_BUGS} {bugs}".strip()
    blocks = []
    for n in range(max(cpus, 1)):
        blocks.append(
            f"processor\t: {n}\n"
            f"vendor_id\t: {vendor}\n"
            f"cpu family\t: {family}\n"
            f"model\t\t: {model}\n"
            f"model name\t: {name}\n"
            f"stepping\t: {stepping}\n"
            "microcode\t: 0x2b000603\n"
            "cpu MHz\t\t: 2000.000\n"
            "cache size\t: 107520 KB\n"
            "physical id\t: 0\n"
            f"siblings\t: {cpus}\n"
            f"core id\t\t: {n}\n"
            f"cpu cores\t: {cpus}\n"
            f"apicid\t\t: {2 * n}\n"
            f"initial apicid\t: {2 * n}\n"
            "fpu\t\t: yes\n"
            "fpu_exception\t: yes\n"
            "cpuid level\t: 32\n"
            "wp\t\t: yes\n"
            f"flags\t\t: {_FLAGS}\n"
            f"bugs\t\t: {bug_line}\n"
            "bogomips\t: 4000.00\n"
            "clflush size\t: 64\n"
            "cache_alignment\t: 64\n"
            "address sizes\t: 52 bits physical, 57 bits virtual\n"
            "power management:\n"
        )
    return "\n".join(blocks) + "\n"


def host_paths(generation: str = "G5") -> dict[str, str]:
    """In-sysroot path of each fact's file for ``generation``, as the factory writes them."""
    if generation not in GENERATIONS:
        raise ValueError(f"unknown generation {generation!r}; expected one of {GENERATIONS}")
    paths = {
        "cpuinfo": hostfiles.CPUINFO,
        "osrelease": hostfiles.OSRELEASE,
        "online": hostfiles.CPUS_ONLINE,
        "present": hostfiles.CPUS_PRESENT,
    }
    if generation == "G1":
        name = "seamldr_upload"
        paths |= {
            "module_version": f"{G1_TSM}/version",
            "seamldr_version": f"{G1_SEAMLDR}/version",
            "num_remaining_updates": f"{G1_SEAMLDR}/num_remaining_updates",
            "upload_dir": f"{kernels.CLASS_FIRMWARE}/{name}",
        }
    else:
        name = "seamldr_upload" if generation == "G2" else "tdx_module"
        seamldr_dir = generation in ("G2", "G3")
        paths |= {
            "module_version": f"{T}/version",
            "seamldr_version": f"{T}/seamldr/version" if seamldr_dir else f"{T}/seamldr_version",
            "num_remaining_updates": (
                f"{T}/seamldr/num_remaining_updates"
                if seamldr_dir
                else f"{T}/num_remaining_updates"
            ),
            "compat_capable": f"{T}/compat_capable",
            "upload_dir": f"{T}/firmware/{name}",
        }
    paths["class_upload_dir"] = f"{kernels.CLASS_FIRMWARE}/{name}"
    paths["status"] = f"{paths['class_upload_dir']}/status"
    return paths


def _write(root: Path, abspath: str, content: str | bytes, mode: int = 0o644) -> Path:
    path = root / abspath.lstrip("/")
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_symlink() or path.is_file():
        path.unlink()
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    path.chmod(mode)
    return path


def _remove(root: Path, abspath: str) -> None:
    path = root / abspath.lstrip("/")
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)


def _fw_upload_dir(root: Path, abspath: str, status: str) -> None:
    """The attributes of kernel-abi.md §2, idle after no upload (or as ``status`` says)."""
    _write(root, f"{abspath}/loading", "0\n")
    _write(root, f"{abspath}/data", b"")
    _write(root, f"{abspath}/status", f"{status}\n", 0o444)
    _write(root, f"{abspath}/error", b"", 0o444)
    _write(root, f"{abspath}/remaining_size", "0\n", 0o444)
    _write(root, f"{abspath}/cancel", b"", 0o200)


class HostOptions(TypedDict, total=False):
    """The keyword arguments of :func:`build_host_tree` (the fields of :class:`HostTree`)."""

    generation: str
    module: str
    seamldr: str
    remaining: int
    cpu: tuple[int, int, int] | int
    vendor: str
    online: str
    present: str
    osrelease: str | None
    status: str
    bugs: str
    firmware: bool | str
    compat_capable: bool | int | None
    v3: bool
    overrides: Mapping[str, str | bytes | None] | None
    modes: Mapping[str, int] | None


@dataclass(frozen=True)
class HostTree:
    """What a host tree shows; :meth:`build` writes it.

    - ``module``/``seamldr``: versions, printed the generation's way (G1 and G2 without v3 print
      the P-SEAMLDR update field unpadded, ``1.5.0``).
    - ``osrelease``: None means the generation's own release (:data:`DEFAULT_OSRELEASE`).
    - ``firmware``: True = device dir plus the class symlink (a real host); ``"device"`` = the
      device dir only; ``"class"`` = a plain class dir only; False = no upload interface.
    - ``v3`` (G2): the v3 series: padded P-SEAMLDR version and ``compat_capable``
      (``compat_capable`` or 1). ``compat_capable`` alone writes that file in any generation.
    - ``overrides``: in-sysroot path -> new content, or None to delete the file (or directory).
    - ``modes``: in-sysroot path -> mode, applied last.
    """

    generation: str = "G5"
    module: str = "1.5.06"
    seamldr: str = "2.0.00"
    remaining: int = 1
    cpu: tuple[int, int, int] | int = (6, 143, 8)
    vendor: str = "GenuineIntel"
    online: str = "0-3"
    present: str = "0-3"
    osrelease: str | None = None
    status: str = "idle"
    bugs: str = ""
    firmware: bool | str = True
    compat_capable: bool | int | None = None
    v3: bool = False
    overrides: Mapping[str, str | bytes | None] | None = None
    modes: Mapping[str, int] | None = None

    def build(self, root: Path) -> Path:
        """Write the tree under ``root`` and return ``root``."""
        paths = host_paths(self.generation)
        root.mkdir(parents=True, exist_ok=True)
        self._write_tdx_host(root, paths)
        if self.firmware:
            self._write_upload_interface(root, paths)
        self._write_cpus_and_release(root)
        for abspath, content in (self.overrides or {}).items():
            if content is None:
                _remove(root, abspath)
            else:
                _write(root, abspath, content)
        for abspath, mode in (self.modes or {}).items():
            (root / abspath.lstrip("/")).chmod(mode)
        return root

    def _write_tdx_host(self, root: Path, paths: Mapping[str, str]) -> None:
        generation = self.generation
        module_v = Version.parse(self.module)
        seamldr_v = Version.parse(self.seamldr)
        unpadded = generation == "G1" or (generation == "G2" and not self.v3)
        seamldr_text = (
            f"{seamldr_v.major}.{seamldr_v.minor}.{seamldr_v.update}"
            if unpadded
            else str(seamldr_v)
        )
        # 0400 P-SEAMLDR attributes from the v4 series on (kernel-abi.md §1 G3, G4).
        seamldr_mode = 0o444 if generation in ("G1", "G2") else 0o400

        module_text = (
            f"{module_v.major}.{module_v.minor}.{module_v.update}"
            if generation == "G1"
            else str(module_v)
        )
        _write(root, paths["module_version"], f"{module_text}\n", 0o444)
        _write(root, paths["seamldr_version"], f"{seamldr_text}\n", seamldr_mode)
        _write(root, paths["num_remaining_updates"], f"{self.remaining}\n", seamldr_mode)
        compat_capable = self.compat_capable
        if generation == "G2" and self.v3:
            compat_capable = 1 if compat_capable is None else compat_capable
        if compat_capable is not None and generation != "G1":
            _write(root, paths["compat_capable"], f"{int(compat_capable)}\n", 0o444)

    def _write_upload_interface(self, root: Path, paths: Mapping[str, str]) -> None:
        device_dir, class_dir = paths["upload_dir"], paths["class_upload_dir"]
        if self.generation == "G1" or self.firmware == "class":
            _fw_upload_dir(root, class_dir, self.status)
            return
        _fw_upload_dir(root, device_dir, self.status)
        if self.firmware is True:
            link = root / class_dir.lstrip("/")
            link.parent.mkdir(parents=True, exist_ok=True)
            # Relative, as on a real host, so the tree can be moved or committed.
            os.symlink(os.path.relpath(root / device_dir.lstrip("/"), link.parent), link)

    def _write_cpus_and_release(self, root: Path) -> None:
        try:
            ncpus = len(hostfiles.parse_cpu_list(self.online)) or 1
        except ValueError:
            ncpus = 1
        cpuinfo = cpuinfo_text(self.cpu, vendor=self.vendor, bugs=self.bugs, cpus=min(ncpus, 8))
        _write(root, hostfiles.CPUINFO, cpuinfo)
        _write(root, hostfiles.CPUS_ONLINE, f"{self.online}\n", 0o444)
        _write(root, hostfiles.CPUS_PRESENT, f"{self.present}\n", 0o444)
        release = DEFAULT_OSRELEASE[self.generation] if self.osrelease is None else self.osrelease
        _write(root, hostfiles.OSRELEASE, f"{release}\n", 0o444)


def build_host_tree(root: Path, **options: Unpack[HostOptions]) -> Path:
    """Write a host tree for ``generation`` under ``root`` and return ``root``.

    ``options`` are the fields of :class:`HostTree` (which says what each one means).
    """
    return HostTree(**options).build(root)


def at(root: Path, abspath: str) -> Path:
    """The resolved path of an in-sysroot path: ``at(root, "/sys/x")`` -> ``root/sys/x``."""
    return root / abspath.lstrip("/")


def host_facts(tmp_path: Path, **kwargs: Unpack[HostOptions]) -> tuple[Path, host.HostFacts]:
    """Build a tree under ``tmp_path/host`` (``kwargs`` as for :func:`build_host_tree`) and
    discover it."""
    root = build_host_tree(tmp_path / "host", **kwargs)
    return root, host.discover(Sysroot(root))


def faulty_reads(root: Path, failures: Mapping[str, int]) -> FaultySysroot:
    """A Sysroot of ``root`` whose reads of the given in-sysroot paths fail with the errno.

    This is the honest way to see EACCES (root reads any plain file) and ENXIO (only a kernel
    returns it): the one door to the host raises the OSError the kernel would.
    """
    sysroot = FaultySysroot(root)
    for abspath, code in failures.items():
        sysroot.fail(abspath, code)
    return sysroot


def fail_reads(monkeypatch: Any, root: Path, failures: Mapping[str, int]) -> None:
    """Make every Sysroot's reads of the given in-sysroot paths fail with the given errno.

    For tests that go through the CLI, which builds its own Sysroot from ``--sysroot``; a
    test that calls :func:`tdxupdate.host.discover` passes :func:`faulty_reads` instead.
    """
    failing = {os.fspath(root / p.lstrip("/")): e for p, e in failures.items()}
    real_read = Sysroot.read

    def read(self: Sysroot, path: Path, limit: int = ATTR_LIMIT) -> bytes:
        code = failing.get(os.fspath(path))
        if code is not None:
            raise OSError(code, os.strerror(code), os.fspath(path))
        return real_read(self, path, limit)

    monkeypatch.setattr(Sysroot, "read", read)


__all__ = [
    "CPU_NAMES",
    "DEFAULT_OSRELEASE",
    "GENERATIONS",
    "HostOptions",
    "HostTree",
    "at",
    "build_host_tree",
    "cpuinfo_text",
    "fail_reads",
    "faulty_reads",
    "host_facts",
    "host_paths",
    "signature_to_cpu",
]


# --- reading and writing the tree as root would, from an unprivileged test run -------------
# Debian builds (and runs these tests) as an unprivileged user; the trees carry the kernel's
# modes (0200 "cancel", 0400 P-SEAMLDR attributes), which root ignores and the owner does not.


def _with_owner_access(path: Path, action: Any) -> Any:
    if os.geteuid() == 0 or os.access(path, os.R_OK | os.W_OK):
        return action()
    mode = path.stat().st_mode & 0o7777
    path.chmod(mode | 0o600)
    try:
        return action()
    finally:
        path.chmod(mode)


def read_as_root(path: Path) -> bytes:
    """``path.read_bytes()`` whatever its mode (the owner may lend itself read access)."""
    return bytes(_with_owner_access(path, path.read_bytes))


def write_as_root(path: Path, data: bytes) -> None:
    """``path.write_bytes(data)`` whatever its mode, keeping the mode."""
    _with_owner_access(path, lambda: path.write_bytes(data))


def copy_as_root(src: str, dst: str) -> str:
    """A ``shutil.copytree`` copy function that copies files of any mode, keeping the mode."""
    Path(dst).write_bytes(read_as_root(Path(src)))
    shutil.copymode(src, dst)
    return dst
