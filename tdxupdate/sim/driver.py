"""The TDX driver's fw_upload ops in the emulated kernel (kernel-abi.md §3).

The whole update runs inside ``write``, so driver errors read ``transferring:<error>``: the
per-series kernel pre-checks (offline CPUs -> EBUSY, no updates left -> ENOSPC, v1–v4 only),
the header checks of §4 (:mod:`tdxupdate.sim.blob`, EINVAL), the shutdown (a TD build in
progress -> EBUSY), then P-SEAMLDR (:mod:`tdxupdate.sim.seamldr`, EIO), whose failures are
fatal; errno -> token per series as in §3's table; ``cancel`` works in v1–v3 only. The state
it acts on is :class:`tdxupdate.sim.kernel.SimKernel`'s, under its lock.
"""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING

from tdxupdate.sim.blob import ImageRejected, parse_for_kernel
from tdxupdate.sim.config import TD_PRESERVING_BIT
from tdxupdate.sim.faults import Fault
from tdxupdate.sim.seamldr import InstallFailed, InstallRequest, declared_version

if TYPE_CHECKING:
    from tdxupdate.sim.kernel import SimKernel

PAGE = 4096

#: kernel-abi.md §3: errno -> fw_upload error token, per series; anything else is
#: firmware-invalid. v4 is "presumably v7 plus ENOSPC" (UNCONFIRMED there, followed here).
_ERRNO_TOKENS: dict[str, dict[int, str]] = {
    "v1": {},
    "v2": {},
    "v3": {
        errno.EBUSY: "device-busy",
        errno.EIO: "hw-error",
        errno.ENOSPC: "flash-wearout",
        errno.ENOMEM: "read-write-error",
    },
    "v4": {
        errno.EBUSY: "device-busy",
        errno.EIO: "hw-error",
        errno.ENOSPC: "flash-wearout",
        errno.ENOMEM: "read-write-error",
    },
    **{
        s: {errno.EBUSY: "device-busy", errno.EIO: "hw-error", errno.ENOMEM: "read-write-error"}
        for s in ("v5", "v6", "v7")
    },
    **{s: {errno.EBUSY: "device-busy"} for s in ("v8", "v9", "v10")},
    "ml": {},
}

#: series whose driver honours ``cancel`` (kernel-abi.md §1: a no-op from v4 on)
_CANCEL_SERIES = frozenset({"v1", "v2", "v3"})
#: series whose kernel checks offline CPUs and the update limit itself (§3)
_PRECHECK_SERIES = frozenset({"v1", "v2", "v3", "v4"})


def error_token(series: str, err: int) -> str:
    """kernel-abi.md §3: what ``error`` shows for a driver errno on this series."""
    return _ERRNO_TOKENS[series].get(err, "firmware-invalid")


class TdxDriver:
    """tdx-host's fw_upload ops (kernel-abi.md §3), with the emulator's fault injection."""

    def __init__(self, kernel: SimKernel):
        self.k = kernel

    # --- hooks ---------------------------------------------------------------------------------

    def started(self, data: bytes) -> None:
        self.k._upload_started(data)

    def finished(self, error: str | None) -> None:
        self.k._upload_finished(error)

    # --- helpers -------------------------------------------------------------------------------

    def _sleep(self, ms: float) -> None:
        if ms:
            self.k.stopping.wait(ms / 1000)

    def _fault(self, kind: str, stage: str | None = None) -> Fault | None:
        for fault in self.k._current_faults:
            if fault.kind == kind and (stage is None or fault.stage == stage):
                return fault
        return None

    def _hang(self, stage: str) -> str | None:
        """Block while a ``hang`` fault holds this stage; "user-abort" when cancelled.

        Each ``{"unhang": true}`` releases one hang: the one in progress, or else the next one
        of this upload (so an unhang sent a moment early is not lost).
        """
        if self._fault("hang", stage) is None:
            return None
        k = self.k
        with k.cond:
            k.hung_stage = stage
            k.cond.notify_all()
            try:
                while True:
                    if k.stopping.is_set():
                        k._note("the emulator was unmounted during a hang")
                        return "user-abort"
                    if k.series in _CANCEL_SERIES and k.cancel_pending:
                        k._note("cancelled")
                        return "user-abort"
                    if k.release_all:
                        return None
                    if k.unhang_pending:
                        k.unhang_pending -= 1
                        return None
                    k.cond.wait()
            finally:
                k.hung_stage = None

    def _injected(self, stage: str) -> str | None:
        fault = self._fault("error", stage)
        if fault is None:
            return None
        assert fault.error is not None
        if fault.fatal:
            self.k._lose_module(f"injected fault {fault.spec}")
        else:
            self.k._note(f"injected fault {fault.spec}")
        return fault.error

    def _errno(self, err: int, reason: str) -> str:
        self.k._note(reason)
        return error_token(self.k.series, err)

    # --- ops -----------------------------------------------------------------------------------

    def queued(self) -> None:
        self._sleep(self.k.durations.receiving)
        # a hang here keeps the upload in "receiving" (a busy system_long_wq); not cancellable
        if self._fault("hang", "receiving") is not None:
            self._hang("receiving")

    def settle(self) -> None:
        """The emulator's idle lag: the loader accepts a new commit, status is not yet idle."""
        k = self.k
        with k.cond:
            lag = k.idle_lag_ms
            if lag:
                k.hung_stage = "idle-lag"
                k.cond.wait_for(
                    lambda: k.unhang_pending or k.release_all or k.stopping.is_set(), lag / 1000
                )
                k.unhang_pending = max(0, k.unhang_pending - 1)
                k.hung_stage = None

    def prepare(self, data: bytes) -> str | None:
        self._sleep(self.k.durations.preparing)
        failure = self._hang("preparing") or self._injected("preparing")
        if failure:
            return failure
        if self.k.series in ("v1", "v2") and self.k.cancel_pending:
            self.k._note("cancelled")
            return "user-abort"
        return None

    def write(self, data: bytes, offset: int, size: int) -> tuple[str | None, int]:
        k = self.k
        self._sleep(k.durations.transferring)
        failure = self._hang("transferring")
        if failure:
            return failure, 0
        if k.series in _CANCEL_SERIES and k.cancel_pending:
            k._note("cancelled")
            return "user-abort", 0
        failure = self._injected("transferring")
        if failure:
            return failure, 0
        if k.module_lost:
            return self._errno(errno.EIO, "the TDX module is lost; only a reboot helps"), 0
        if k.series in _PRECHECK_SERIES:
            if k.online != k.present:
                return self._errno(errno.EBUSY, "kernel pre-check: not every CPU is online"), 0
            if k.remaining == 0:
                return self._errno(errno.ENOSPC, "kernel pre-check: no updates remain"), 0
        try:
            image = parse_for_kernel(k.series, data)
        except ImageRejected as exc:
            return self._errno(errno.EINVAL, f"kernel header check: {exc}"), 0
        k._record_format(image.format)
        if declared_version(image.sigstruct_area) is None:
            reason = "emulator: the sigstruct declares no version at offset 1000"
            return self._errno(errno.EINVAL, reason), 0
        if not k.tdx_features & TD_PRESERVING_BIT:
            return self._errno(errno.EOPNOTSUPP, "the running module cannot be updated"), 0
        refused = self._shutdown()
        if refused:
            return refused, 0
        # TDH.SYS.SHUTDOWN succeeded: the old module is gone, every failure is now fatal.
        request = InstallRequest(
            sigstruct_area=image.sigstruct_area,
            module=image.module,
            running=k.module,
            seamldr=k.seamldr_version,
            cpu=k.cpu,
            remaining=k.remaining,
            all_cpus_online=k.online == k.present,
        )
        try:
            new = k.seamldr.install(request)
        except InstallFailed as exc:
            k._lose_module(f"P-SEAMLDR: {exc}")
            return error_token(k.series, errno.EIO), 0
        if self._fault("error", "programming") is not None:
            # an injected programming-stage error is non-fatal: the new module is not committed
            k._note(f"{new} passed P-SEAMLDR but a programming fault keeps it uncommitted")
        else:
            k._installed(new, keep_old=self._fault("wrong-version") is not None)
        return None, size

    def _shutdown(self) -> str | None:
        """TDH.SYS.SHUTDOWN: refused (EBUSY) by a fault or while a TD is built on a guarded
        kernel; None when the old module is shut down."""
        k = self.k
        if self._fault("device-busy") is not None:
            reason = "TDH.SYS.SHUTDOWN refused: a TD build or migration is in progress"
            return self._errno(errno.EBUSY, reason)
        building = k.building()
        if building and k.guarded():
            reason = f"TDH.SYS.SHUTDOWN refused: TD build(s) {', '.join(building)} in progress"
            return self._errno(errno.EBUSY, reason)
        if building:
            # No guard (mainline, mainline-and-attestation.md §1): the shutdown goes ahead
            # and the measurement of every TD being built is corrupted.
            k._corrupt(building)
        return None

    def poll_complete(self) -> str | None:
        self._sleep(self.k.durations.programming)
        return self._hang("programming") or self._injected("programming")

    def cancel(self) -> None:
        # Called with the lock held. v4+ made the op a no-op (kernel-abi.md §1 G3).
        if self.k.series in _CANCEL_SERIES:
            self.k.cancel_pending = True
