"""A pure-Python, thread-safe model of a TDX host's kernel: tdx_host, fw_upload, P-SEAMLDR.

No FUSE here: :mod:`tdxupdate.sim.sysfs` maps files onto these methods and
:mod:`tdxupdate.sim.fs` serves them. One lock (a :class:`threading.Condition`) stands for the
kernel's ``fw_lock`` and ``fwlp->lock``; upload workers sleep without holding it.

What the model follows:

* kernel-abi.md §1: which tdx_host attributes and firmware device exist per series, decided
  once at "probe" (construction), and their formats (v1/v2 print the P-SEAMLDR version
  unpadded);
* §2: the fw_upload state machine (:mod:`tdxupdate.sim.fwupload`);
* §3: the TDX driver ops, in :mod:`tdxupdate.sim.driver` (the whole update runs inside
  ``write``; the per-series pre-checks, the header checks, the shutdown, P-SEAMLDR);
* success sets the new version (sigstruct offset 1000) and decrements the counter.

Emulator rule: an image whose sigstruct carries no version at offset 1000 is refused by the
emulated kernel before the shutdown (``transferring:firmware-invalid``, non-fatal), because the
emulator cannot know what it would install (real 1.5.x blobs have zeros there; the sample
repository's and the tests' images always carry it).
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tdxupdate.hostfiles import format_cpu_list
from tdxupdate.sim.config import (
    TD_PRESERVING_BIT,
    UPDATE_COMPAT_BIT,
    SimConfig,
    StageDurations,
    parse_cpu_list,
)
from tdxupdate.sim.driver import TdxDriver
from tdxupdate.sim.faults import UPLOAD_KINDS, Fault, parse_fault
from tdxupdate.sim.fwupload import FwUpload, _oserror
from tdxupdate.sim.seamldr import (
    PSeamldr,
    ReleaseFacts,
)
from tdxupdate.versions import Version

PAGE = 4096

#: series whose shutdown always asks the module to refuse during a TD build (kernel-abi.md §3)
_GUARD_SERIES = frozenset({"v8", "v9", "v10"})
#: series that ask only when the running module has the feature (TDX_FEATURES0 bit 47)
_GUARD_IF_COMPAT_SERIES = frozenset({"v3", "v4", "v5", "v6", "v7"})

_MODEL_NAMES = {
    0x806F0: "Intel(R) Xeon(R) Platinum 8480+",
    0xC06F0: "Intel(R) Xeon(R) Platinum 8592+",
    0xA06F0: "Intel(R) Xeon(R) 6780E",
    0xA06D0: "Intel(R) Xeon(R) 6980P",
    0xA06E0: "Intel(R) Xeon(R) 6787P",
}


def cpu_fields(signature: int) -> tuple[int, int, int]:
    """(family, model, stepping) of a CPUID.1.EAX value, as /proc/cpuinfo prints them."""
    stepping = signature & 0xF
    base_model = (signature >> 4) & 0xF
    base_family = (signature >> 8) & 0xF
    ext_model = (signature >> 16) & 0xF
    ext_family = (signature >> 20) & 0xFF
    family = base_family + ext_family if base_family == 0xF else base_family
    model = (ext_model << 4) | base_model if base_family in (6, 0xF) else base_model
    return family, model, stepping


@dataclass
class UploadRecord:
    """What the emulated kernel saw of one upload (``.tdxsim/state`` ``uploads``)."""

    number: int
    size: int
    sha256: str
    from_version: str | None
    format: str | None = None
    result: str = "running"  # running | success | failed
    error: str | None = None
    fatal: bool = False
    to_version: str | None = None
    reason: str | None = None
    faults: tuple[str, ...] = ()


@dataclass
class _ActiveFault:
    fault: Fault
    #: uploads left before it expires; None = every upload
    times: int | None = None


class SimKernel:
    """The emulated host. Build it from a :class:`SimConfig`; call :meth:`shutdown` at the end."""

    def __init__(self, config: SimConfig):
        self.config = config
        self.series = config.kernel
        self.cond = threading.Condition()
        self.stopping = threading.Event()
        self.releases = load_releases(config.mapping)
        self.durations: StageDurations = config.durations
        self.idle_lag_ms = config.idle_lag_ms
        self.seamldr = PSeamldr(
            trusted_signers=config.trusted_signers,
            debug_platform=config.debug_platform,
            releases=self.releases,
        )
        self.osrelease = config.kernel_release
        self._boot(config)
        self.faults: list[_ActiveFault] = []
        self.slow_write_ms = 0.0
        self.short_write = PAGE
        self.uploads: list[UploadRecord] = []
        self.received = b""
        self.cancel_pending = False
        #: unhang commands not yet consumed by a hang; release_all: clear_faults was sent
        self.unhang_pending = 0
        self.release_all = False
        self.hung_stage: str | None = None
        self._current_faults: tuple[Fault, ...] = ()
        self.control_error: str | None = None
        self.controls = 0
        #: TDs being built now (control ``td_build``), and those whose build an update
        #: corrupted, in order
        self.td_builds: list[str] = []
        self.corrupted_tds: list[str] = []
        for spec in config.faults:
            self.add_fault(parse_fault(spec))
        self._probe()

    def _boot(self, config: SimConfig) -> None:
        """The state a (re)boot gives: the BIOS-loaded module and a fresh update counter."""
        self.module = config.module
        self.module_lost = False
        self.seamldr_version = config.seamldr
        self.remaining = config.remaining
        self.cpu = config.cpu
        self.present = config.present
        self.online = config.online_cpus
        self.tdx_features = self._features_of(config.module, config.tdx_features)

    def _features_of(self, version: Version, configured: int | None = None) -> int:
        if configured is not None:
            return configured
        facts = None if self.releases is None else self.releases.get(version)
        if facts is not None and facts.tdx_feature0 is not None:
            return facts.tdx_feature0
        return TD_PRESERVING_BIT

    def _probe(self) -> None:
        """What the driver registers at probe time, once (kernel-abi.md §1)."""
        cfg = self.config
        updatable = bool(self.tdx_features & TD_PRESERVING_BIT)
        self.tdx_host = cfg.tdx_host
        self.seamldr_visible = cfg.tdx_host
        name: str | None = "tdx_module"
        if self.series == "v1":
            name = "seamldr_upload"
        elif self.series == "v2":
            name = "seamldr_upload" if updatable and self.remaining != 0 else None
        elif self.series == "v3":
            name = "seamldr_upload"
        else:
            self.seamldr_visible = cfg.tdx_host and updatable and not cfg.erratum
            if not self.seamldr_visible:
                name = None
        if not cfg.tdx_host:
            name = None
        self.firmware_name = name
        self.fw: FwUpload | None = None
        if name is not None:
            self.fw = FwUpload(name, TdxDriver(self), self.cond)

    # --- tdx_host attributes -------------------------------------------------------------------

    def show_module_version(self) -> bytes:
        with self.cond:
            if self.module_lost:
                raise _oserror(errno.ENXIO)
            return f"{self.module}\n".encode()

    def show_seamldr_version(self) -> bytes:
        v = self.seamldr_version
        if self.series in ("v1", "v2"):
            return f"{v.major}.{v.minor}.{v.update}\n".encode()
        return f"{v}\n".encode()

    def show_remaining(self) -> bytes:
        with self.cond:
            return f"{self.remaining}\n".encode()

    def show_compat_capable(self) -> bytes:
        return b"1\n" if self.tdx_features & UPDATE_COMPAT_BIT else b"0\n"

    def show_online(self) -> bytes:
        with self.cond:
            return f"{format_cpu_list(self.online)}\n".encode()

    def show_present(self) -> bytes:
        with self.cond:
            return f"{format_cpu_list(self.present)}\n".encode()

    def show_osrelease(self) -> bytes:
        return f"{self.osrelease}\n".encode()

    def show_cpuinfo(self) -> bytes:
        with self.cond:
            cpus = sorted(self.online)
            signature = self.cpu
        family, model, stepping = cpu_fields(signature)
        name = _MODEL_NAMES.get(signature & ~0xF, "Intel(R) Xeon(R) CPU")
        bugs = "spectre_v1 spectre_v2 spec_store_bypass swapgs eibrs_pbrsb bhi"
        if self.config.erratum:
            bugs += " seamret_invd_vmcs"
        flags = (
            "fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush "
            "dts acpi mmx fxsr sse sse2 ss ht tm pbe syscall nx pdpe1gb rdtscp lm constant_tsc "
            "vmx smx est tm2 ssse3 sdbg fma cx16 xtpr pdcm pcid dca sse4_1 sse4_2 x2apic movbe "
            "popcnt aes xsave avx f16c rdrand lahf_lm abm 3dnowprefetch tdx_host_platform"
        )
        blocks = []
        for cpu in cpus:
            blocks.append(
                f"processor\t: {cpu}\n"
                f"vendor_id\t: {self.config.vendor}\n"
                f"cpu family\t: {family}\n"
                f"model\t\t: {model}\n"
                f"model name\t: {name} (tdxupdate-sim)\n"
                f"stepping\t: {stepping}\n"
                f"microcode\t: 0x2b000620\n"
                f"cpu MHz\t\t: 2000.000\n"
                f"physical id\t: 0\n"
                f"siblings\t: {len(self.present)}\n"
                f"core id\t\t: {cpu}\n"
                f"cpu cores\t: {len(self.present)}\n"
                f"apicid\t\t: {cpu * 2}\n"
                f"fpu\t\t: yes\n"
                f"flags\t\t: {flags}\n"
                f"bugs\t\t: {bugs}\n"
                f"bogomips\t: 4000.00\n"
                f"address sizes\t: 52 bits physical, 57 bits virtual\n"
                f"power management:\n"
            )
        return "\n".join(blocks).encode() + b"\n"

    # --- data (kernfs write path) ----------------------------------------------------------------

    def write_data(self, chunk: bytes, offset: int) -> int:
        """A ``write()`` on ``data``: at most one page (or the short-write fault's size)."""
        assert self.fw is not None
        with self.cond:
            cap, slow = self.short_write, self.slow_write_ms
        chunk = chunk[:cap]
        if slow and chunk:
            self.stopping.wait(slow * -(-len(chunk) // PAGE) / 1000)
        return self.fw.write_data(chunk, offset)

    # --- upload bookkeeping (called by the driver, lock held or not as noted) --------------------

    def _upload_started(self, data: bytes) -> None:
        """At commit, lock held: snapshot the faults for this upload and record it."""
        self.cancel_pending = False
        self.unhang_pending = 0
        self.release_all = False
        self.received = data
        current = []
        for active in list(self.faults):
            if active.fault.kind not in UPLOAD_KINDS:
                continue
            current.append(active.fault)
            if active.times is not None:
                active.times -= 1
                if active.times <= 0:
                    self.faults.remove(active)
        self._current_faults = tuple(current)
        self.uploads.append(
            UploadRecord(
                number=len(self.uploads) + 1,
                size=len(data),
                sha256=hashlib.sha256(data).hexdigest(),
                from_version=None if self.module_lost else str(self.module),
                faults=tuple(f.spec for f in current),
            )
        )

    def _upload_finished(self, error: str | None) -> None:
        """The worker is done, lock held."""
        record = self.uploads[-1]
        record.error = error
        record.result = "failed" if error else "success"
        self._current_faults = ()

    def _note(self, reason: str) -> None:
        with self.cond:
            if self.uploads and self.uploads[-1].reason is None:
                self.uploads[-1].reason = reason

    def _record_format(self, fmt: int) -> None:
        with self.cond:
            self.uploads[-1].format = f"{fmt:#x}"

    def _lose_module(self, reason: str) -> None:
        with self.cond:
            self.module_lost = True
            if self.uploads:
                self.uploads[-1].fatal = True
            self._note(reason)

    def _installed(self, new: Version, *, keep_old: bool) -> None:
        with self.cond:
            self.remaining -= 1
            if keep_old:
                self._note("wrong-version fault: success reported, old version kept")
            else:
                self.module = new
                self.tdx_features = self._features_of(new)
            self.uploads[-1].to_version = str(new)

    # --- TD builds --------------------------------------------------------------------------------

    def guarded(self) -> bool:
        """Whether this kernel's shutdown refuses while a TD build runs (EBUSY, kernel-abi.md
        §3): v8–v10 always, v3–v7 when the module has Update Compatibility (bit 47), never
        v1, v2 or mainline."""
        if self.series in _GUARD_SERIES:
            return True
        return self.series in _GUARD_IF_COMPAT_SERIES and bool(
            self.tdx_features & UPDATE_COMPAT_BIT
        )

    def building(self) -> list[str]:
        with self.cond:
            return list(self.td_builds)

    def td_build(self, action: str, name: str) -> None:
        """Control ``td_build``: a TD build of ``name`` starts or finishes."""
        with self.cond:
            if action == "start":
                if name in self.td_builds:
                    raise ValueError(f"control td_build: TD {name!r} is already being built")
                self.td_builds.append(name)
            else:
                if name not in self.td_builds:
                    raise ValueError(f"control td_build: TD {name!r} is not being built")
                self.td_builds.remove(name)

    def _corrupt(self, names: list[str]) -> None:
        with self.cond:
            for name in names:
                if name not in self.corrupted_tds:
                    self.corrupted_tds.append(name)
            self._note(f"no TD-build guard: the update corrupted TD build(s) {', '.join(names)}")

    # --- faults and control ----------------------------------------------------------------------

    def add_fault(self, fault: Fault, times: int | None = None) -> None:
        with self.cond:
            if fault.kind == "slow-write":
                self.slow_write_ms = float(fault.amount or 0)
            elif fault.kind == "short-write":
                self.short_write = int(fault.amount or PAGE)
            elif fault.kind == "offline":
                assert fault.cpus is not None
                self.online = self.present - parse_cpu_list(fault.cpus)
            elif fault.kind == "module-lost":
                self.module_lost = True
            else:
                self.faults.append(_ActiveFault(fault, times))
            self.cond.notify_all()

    def clear_faults(self) -> None:
        with self.cond:
            self.faults.clear()
            self._current_faults = ()
            self.slow_write_ms = 0.0
            self.short_write = PAGE
            self.release_all = True
            self.cond.notify_all()

    def control(self, command: Mapping[str, Any]) -> None:
        """Apply one control command (see :mod:`tdxupdate.sim.control`); ValueError if bad."""
        from tdxupdate.sim.control import apply_command

        try:
            with self.cond:
                apply_command(self, command)
                self.controls += 1
                self.control_error = None
                self.cond.notify_all()
        except ValueError as exc:
            with self.cond:
                self.control_error = str(exc)
            raise

    def reboot(self) -> None:
        with self.cond:
            if self.fw is not None and self.fw.progress != "idle":
                raise ValueError("reboot: an upload is in progress")
            self._boot(self.config)

    def set_module(self, version: Version) -> None:
        """Control ``module``: this version runs (and a lost module is back)."""
        with self.cond:
            self.module = version
            self.module_lost = False

    def reset(self) -> None:
        """As freshly mounted: reboot, the configured faults, timings and trust, no history."""
        with self.cond:
            if self.fw is not None and self.fw.progress != "idle":
                raise ValueError("reset: an upload is in progress")
            if self.fw is not None:
                self.fw.reset()
            self._boot(self.config)
            self.uploads.clear()
            self.td_builds.clear()
            self.corrupted_tds.clear()
            self.received = b""
            self.cancel_pending = False
            self.control_error = None
            self.faults.clear()
            self.slow_write_ms = 0.0
            self.short_write = PAGE
            self.durations = self.config.durations
            self.idle_lag_ms = self.config.idle_lag_ms
            self.seamldr.trusted_signers = self.config.trusted_signers
            self.seamldr.debug_platform = self.config.debug_platform
            for spec in self.config.faults:
                self.add_fault(parse_fault(spec))

    # --- observation -----------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        """Everything a test may want to know, as JSON-ready data (``.tdxsim/state``)."""
        with self.cond:
            fw = self.fw
            upload: dict[str, Any] | None = None
            if fw is not None:
                upload = {
                    "name": fw.name,
                    "status": fw.progress,
                    "loading": fw.state == "loading",
                    "loader_state": fw.state,
                    "buffer_size": fw.buffer_size,
                    "remaining_size": fw.remaining_size,
                    "error": fw.error_text().strip(),
                    "hung_stage": self.hung_stage,
                    "cancel_pending": self.cancel_pending,
                    "counters": dict(fw.counters),
                }
            return {
                "kernel": self.series,
                "generation": self.config.generation,
                "osrelease": self.osrelease,
                "module_version": None if self.module_lost else str(self.module),
                "module_lost": self.module_lost,
                "seamldr_version": str(self.seamldr_version),
                "num_remaining_updates": self.remaining,
                "cpu_signature": f"{self.cpu:#x}",
                "online": format_cpu_list(self.online),
                "present": format_cpu_list(self.present),
                "tdx_features": hex(self.tdx_features),
                "tdx_host": self.tdx_host,
                "seamldr_visible": self.seamldr_visible,
                "firmware_name": self.firmware_name,
                "upload": upload,
                "uploads": [dataclasses.asdict(r) for r in self.uploads],
                "faults": [{"fault": a.fault.spec, "times": a.times} for a in self.faults],
                "slow_write_ms": self.slow_write_ms,
                "short_write": self.short_write,
                "durations_ms": dataclasses.asdict(self.durations),
                "idle_lag_ms": self.idle_lag_ms,
                "trusted_signers": sorted(self.seamldr.trusted_signers),
                "debug_platform": self.seamldr.debug_platform,
                "mapping": None if self.config.mapping is None else str(self.config.mapping),
                "controls": self.controls,
                "td_builds": list(self.td_builds),
                "corrupted_tds": list(self.corrupted_tds),
                "control_error": self.control_error,
                "received_size": len(self.received),
                "received_sha256": hashlib.sha256(self.received).hexdigest()
                if self.received
                else None,
            }

    def shutdown(self) -> None:
        """Unregister: wake every waiting worker (a hung upload ends with ``user-abort``)."""
        self.stopping.set()
        with self.cond:
            self.cond.notify_all()


def load_releases(mapping: Any) -> dict[Version, ReleaseFacts] | None:
    """Release facts from a mapping file (TdxError mapping-not-found/-invalid), or None."""
    if mapping is None:
        return None
    from tdxupdate.sources.local import load_catalog

    catalog = load_catalog(mapping)
    return {
        r.version: ReleaseFacts(
            min_seamldr_versions=r.min_seamldr_versions,
            min_td_preserving=r.min_td_preserving,
            tdx_feature0=r.tdx_feature0,
        )
        for r in catalog.releases
    }
