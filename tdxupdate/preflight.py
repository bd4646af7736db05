"""The preflight checks: what must hold on the host before an update writes (contract §3, §4).

:func:`run_checks` turns the facts :func:`tdxupdate.host.discover` read into one
:class:`HostCheck` per name of :data:`REPORT_ORDER`; :func:`first_failure` picks the failure
an update reports, from the checks of :data:`UPDATE_ORDER`, a permanent one (exit 69 or 77,
:data:`PERMANENT_FIRST`) before a transient one (75) (cli-contract.md §2).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from tdxupdate.errors import PERMANENT_EXIT_CODES, IOFailure, TdxError, TryLater, Unavailable
from tdxupdate.hostfiles import (
    CPUINFO,
    CPUS_ONLINE,
    CPUS_PRESENT,
    ERRATUM,
    error_for_code,
    format_cpu_list,
    format_cpu_signature,
    show,
)
from tdxupdate.kernels import TDX_HOST
from tdxupdate.sysroot import Sysroot

if TYPE_CHECKING:
    from tdxupdate.host import HostFacts

__all__ = [
    "CHECK_NAMES",
    "PERMANENT_FIRST",
    "REPORT_ORDER",
    "UPDATE_ORDER",
    "HostCheck",
    "first_failure",
    "run_checks",
]

#: Preflight check names, in report order (team brief; cli-contract.md §3).
REPORT_ORDER = (
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
CHECK_NAMES = REPORT_ORDER

#: Host checks that must pass before anything is written (§4 step 4), in the order their
#: failures are considered.
UPDATE_ORDER = (
    "tdx-host",
    "upload-interface",
    "module-version",
    "seamldr-version",
    "cpu-signature",
    "remaining-updates",
    "upload-idle",
    "cpus-online",
)

#: Exit codes whose failure is reported before any other: permanent (69 unavailable, 77 no
#: permission) beats transient (75 try later), whatever the check order (cli-contract.md §2).
PERMANENT_FIRST = PERMANENT_EXIT_CODES

_NOT_CHECKED = "not checked: no tdx_host device"


@dataclass(frozen=True)
class HostCheck:
    """One preflight check; ``code`` is the cli-contract.md §2 token of a failure, else None."""

    name: str
    ok: bool
    detail: str
    code: str | None


def first_failure(facts: HostFacts) -> TdxError | None:
    """The failure to report when preflight fails: a permanent one (69, 77) wins (§2)."""
    failed = [facts.check(n) for n in UPDATE_ORDER if not facts.check(n).ok]
    if not failed:
        return None
    errors = [TdxError(c.detail, code=c.code or "no-upload-interface") for c in failed]
    permanent = [e for e in errors if e.exit_code in PERMANENT_FIRST]
    return (permanent or errors)[0]


def run_checks(facts: HostFacts, sysroot: Sysroot, signature_given: bool) -> tuple[HostCheck, ...]:
    """The preflight checks, in :data:`REPORT_ORDER`, from the facts and their problems."""
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
            return error_for_code(host_error.code, _NOT_CHECKED)
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
        idle_failure = error_for_code("no-upload-interface", "not checked: no upload interface")
    elif idle_failure is None and facts.upload_status != "idle":
        idle_failure = TryLater(
            f'{status_path} is {show((facts.upload_status or "").encode())}, not "idle": '
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
        erratum_failure = error_for_code(
            cpuinfo_error.code, f"not checked: {cpuinfo_error.message}"
        )
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
