"""The attempt of ``--update`` (cli-contract.md §4 steps 6-11), once the module is chosen and
verified and the plan is frozen: the host lock, the TD-build fence, the hooks, the stream
(with one format retry), the watch, the version read-back and a history record per attempt.

Everything here reads the :class:`UpdatePlan`, never the settings. The stream is the one call
into the uploader (:func:`_stream`); the read-back the one call into host discovery
(:func:`_read_back`).
"""

from __future__ import annotations

import contextlib
import logging
import signal
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from tdxupdate import (
    __version__,
    fence,
    history,
    hooks,
    imagecheck,
    lock,
    outcome,
    preflight,
    signals,
    uploader,
)
from tdxupdate import host as _host
from tdxupdate import inventory as _inv
from tdxupdate.errors import Interrupted, TdxError, TryLater
from tdxupdate.fwupload import UploadInterface, require_upload_filesystem
from tdxupdate.hostfiles import format_cpu_list
from tdxupdate.report import Report, Unset, UpdateDoc, fmt_hex
from tdxupdate.versions import Version

_LOG = logging.getLogger(__name__)

ProgressFactory = Callable[
    [int], contextlib.AbstractContextManager[Callable[[int, int], None] | None]
]


@contextlib.contextmanager
def no_progress(total: int) -> Iterator[None]:
    yield None


@dataclass(frozen=True)
class UpdatePlan:
    """Everything the attempt needs, frozen once the decision is made and the image verified."""

    #: the one buffer that was verified, and that is converted and streamed
    verified: imagecheck.VerifiedImage
    target: Version
    running: Version
    reinstall: bool
    #: the host facts the decision was made on
    facts: _host.HostFacts
    upload_dir: Path
    #: the kernel's format first, then the fallback tried once if the kernel refuses the header
    formats: tuple[int, ...]
    #: what the plan note and ``plan`` say (without the leading "install ")
    description: str
    sysroot: Path
    state_dir: Path
    cpu_signature: int | None
    image_format: str
    timeout: float
    fence_timeout: float
    hook_timeout: float
    pre_update: str | None
    post_update: str | None

    @property
    def interface(self) -> UploadInterface | Path:
        """The upload interface discovery found (through its Sysroot), else its directory."""
        return self.facts.upload or self.upload_dir

    @property
    def remaining_before(self) -> int | None:
        return self.facts.num_remaining_updates

    @property
    def image_sha256(self) -> str:
        return self.verified.sha256

    def hook_env(self) -> dict[str, str]:
        return {
            "TDXUPDATE_FROM": str(self.running),
            "TDXUPDATE_TO": str(self.target),
            "TDXUPDATE_SYSROOT": str(self.sysroot),
        }


@dataclass(frozen=True)
class Attempt:
    image_format: int
    result: uploader.UploadResult | None
    outcome: str
    message: str
    remaining_after: int | None
    #: the error the stream itself failed with (before the kernel owned the image)
    error: TdxError | None = None
    #: ``version`` as re-read after the kernel finished (None: not read, or unreadable)
    version_after: Version | None = None


def fmt_name(fmt: int | None) -> str:
    return {0x100: "A (0x100)", 0x200: "B (0x200)"}.get(fmt or 0, "?")


def now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _update_doc(report: Report) -> UpdateDoc:
    assert report.update is not None
    return report.update


# --- preflight ----------------------------------------------------------------------------


#: The failure preflight reports: a permanent one (69, 77) wins (§2; tdxupdate.preflight).
preflight_error = preflight.first_failure


def recheck_preflight(plan: UpdatePlan) -> None:
    """Read every preflight fact again, immediately before the first write (§4 step 4).

    A download can take minutes: CPUs go offline, another tool spends an update or replaces
    the module. Any failing check, or any fact that differs from what the decision was made
    on, stops the update with nothing written.
    """
    before = plan.facts
    now = _inv.discover(
        plan.sysroot, cpu_signature=plan.cpu_signature, image_format=plan.image_format
    )
    _inv.log_host(now)
    error = preflight_error(now)
    if error is not None:
        raise type(error)(
            f"the host changed before the first write: {error.message}", code=error.code
        )
    changed = [
        f"{name} {old} -> {new}"
        for name, old, new in (
            ("module version", before.module_version, now.module_version),
            ("P-SEAMLDR version", before.seamldr_version, now.seamldr_version),
            ("remaining updates", before.num_remaining_updates, now.num_remaining_updates),
            ("CPU signature", before.cpu_signature, now.cpu_signature),
            ("upload interface", before.upload_dir, now.upload_dir),
        )
        if old != new
    ]
    if before.cpus_online != now.cpus_online:
        changed.append(
            f"online CPUs {format_cpu_list(before.cpus_online or ())} -> "
            f"{format_cpu_list(now.cpus_online or ())}"
        )
    if not changed:
        _LOG.info("preflight read again before the first write: the host is unchanged")
    else:
        raise TryLater(
            "the host changed since the preflight (" + "; ".join(changed) + "); nothing was "
            "written, run tdxupdate again",
            code="host-changed",
        )


# --- the attempt, in its windows ----------------------------------------------------------


def _noting(report: Report) -> Callable[[str], None]:
    """A wait worth telling people about: a note, and a log line (seen with -v and --json)."""

    def note(line: str) -> None:
        report.note(line)
        _LOG.info("%s", line)

    return note


def execute(plan: UpdatePlan, report: Report, progress: ProgressFactory) -> Attempt:
    """Take the host lock and the fence, run the hooks around the attempts; the last attempt."""
    require_upload_filesystem(plan.interface)
    with lock.acquire_host(plan.upload_dir) as host_lock:
        env = plan.hook_env()
        result: Attempt | None = None
        # The TD-build fence before the pre-update command, which stays the last step before
        # the first write; taken before signals are held, so a signal while waiting for TD
        # builds ends the run with nothing written, and the with statement releases it.
        with fence.hold(
            plan.upload_dir, timeout=plan.fence_timeout, on_wait=_noting(report)
        ) as td_fence:
            _fence_notes(report, td_fence)
            _pre_update(report, plan, env)
            try:
                with signals.holding() as deferred:
                    result = _attempts(
                        report,
                        plan,
                        progress,
                        stale_loading=host_lock.holder_died,
                        td_fence=td_fence,
                    )
            finally:
                # TD launches may go on before the post-update command (which may start them)
                td_fence.release()
                _post_update(report, plan, env, result)
    if deferred:
        names = ", ".join(signal.Signals(s).name for s in deferred)
        report.warn(
            "signal-deferred",
            f"{names} arrived outside the stream; tdxupdate finished the attempt and its "
            "history record first",
        )
    return result


def _fence_notes(report: Report, td_fence: fence.Fence) -> None:
    for name, why in td_fence.removed:
        report.note(f"Removed the stale TD build registration {name!r}: {why}")
    if td_fence.waited_for:
        report.note(
            f"TD build(s) {', '.join(td_fence.waited_for)} finished; no TD build can start "
            "until this update is confirmed"
        )


# --- hooks --------------------------------------------------------------------------------


def _pre_update(report: Report, plan: UpdatePlan, env: dict[str, str]) -> None:
    """The configured ``pre_update`` command; its failure stops the update, nothing written."""
    if plan.pre_update is None:
        return
    report.note(f"Running the pre-update command (up to {plan.hook_timeout:g} s)")
    result = hooks.run("pre-update", plan.pre_update, plan.hook_timeout, env)
    _update_doc(report).pre_update = result.to_json()
    if result.ok:
        report.note(f"The pre-update command succeeded in {result.duration_s:.1f} s")
        return
    message = f"{result.describe()}; nothing was written, the update did not start"
    _record_hook(report, plan, env, "pre-update-failed", message)
    raise TryLater(message, code="pre-update-failed")


def _post_update(
    report: Report, plan: UpdatePlan, env: dict[str, str], attempt: Attempt | None
) -> None:
    """The configured ``post_update`` command, after the attempt whatever it did (its failure
    is a warning and a history record: the kernel's outcome stays the run's)."""
    if plan.post_update is None:
        return
    result_token = attempt.outcome if attempt is not None else "error"
    env = {**env, "TDXUPDATE_RESULT": result_token}
    result = hooks.run("post-update", plan.post_update, plan.hook_timeout, env)
    _update_doc(report).post_update = result.to_json()
    if result.ok:
        report.note(f"The post-update command succeeded in {result.duration_s:.1f} s")
        return
    message = f"{result.describe()} (after the attempt: {result_token})"
    report.warn("post-update-failed", message)
    _record_hook(report, plan, env, "post-update-failed", message)


def _hook_json(value: dict[str, object] | Unset) -> dict[str, object] | None:
    """A hook's JSON object for the history record; None when the hook did not run."""
    return None if isinstance(value, Unset) else value


def _record_hook(
    report: Report, plan: UpdatePlan, env: dict[str, str], result: str, message: str
) -> None:
    doc = _update_doc(report)
    record = history.HistoryRecord(
        result=result,
        time=now_rfc3339(),
        from_version=env["TDXUPDATE_FROM"],
        to_version=env["TDXUPDATE_TO"],
        image_sha256=plan.image_sha256,
        tool_version=__version__,
        attempt=0,
        message=message,
        pre_update=_hook_json(doc.pre_update),
        post_update=_hook_json(doc.post_update),
    )
    try:
        history.append(plan.state_dir, record)
    except TdxError as exc:
        report.warn(
            "history-write-failed", f"the {result} history record was not written ({exc.message})"
        )


# --- stream, watch, read back, record -----------------------------------------------------


def _attempts(
    report: Report,
    plan: UpdatePlan,
    progress: ProgressFactory,
    *,
    stale_loading: bool = False,
    td_fence: fence.Fence | None = None,
) -> Attempt:
    """Send the image (and, on a header refusal, once more in the other format); record each."""
    verified = plan.verified
    for attempt_no, fmt in enumerate(plan.formats, start=1):
        payload = verified.payload(fmt)
        if verified.info.format != fmt:
            report.note(
                f"Converted Format {fmt_name(verified.info.format)} to Format "
                f"{fmt_name(fmt)} for this kernel ({len(payload)} bytes; sigstruct and module "
                "unchanged)"
            )
        attempt = _attempt(
            report, plan, payload, fmt, progress, stale_loading=stale_loading, td_fence=td_fence
        )
        _update_doc(report).kernel_error = attempt.result.kernel_error if attempt.result else None
        _record(report, plan, attempt, attempt_no)
        retry = attempt_no < len(plan.formats) and outcome.format_retry(
            outcome=attempt.outcome,
            kernel_error=attempt.result.kernel_error if attempt.result is not None else None,
            running=plan.running,
            version_after=attempt.version_after,
            remaining_before=plan.remaining_before,
            remaining_after=attempt.remaining_after,
        )
        if retry:
            report.warn(
                "format-retry",
                f"the kernel refused the Format {fmt_name(fmt)} header before touching the "
                f"module; retrying once as Format {fmt_name(plan.formats[attempt_no])}",
            )
            continue
        return attempt
    raise AssertionError("unreachable: the last format never retries")


def _stream(
    plan: UpdatePlan,
    payload: bytes,
    *,
    progress: Callable[[int, int], None] | None,
    before_write: Callable[[], None],
    stale_loading: bool,
    on_committed: Callable[[int], None],
) -> uploader.UploadResult:
    """The one call into the uploader."""
    return uploader.upload(
        plan.interface,
        payload,
        timeout=plan.timeout,
        progress=progress,
        before_write=before_write,
        stale_loading=stale_loading,
        on_committed=on_committed,
    )


def _read_back(plan: UpdatePlan) -> outcome.ReadBack:
    """The host once the kernel finished: the version, the counter, whether the module is lost."""
    after = _inv.discover(plan.sysroot, cpu_signature=plan.facts.cpu_signature)
    return outcome.ReadBack(
        after.module_version, after.num_remaining_updates, _host.module_lost(after)
    )


def _attempt(
    report: Report,
    plan: UpdatePlan,
    payload: bytes,
    fmt: int,
    progress: ProgressFactory,
    *,
    stale_loading: bool = False,
    td_fence: fence.Fence | None = None,
) -> Attempt:
    def before_write() -> None:
        if td_fence is not None:
            td_fence.recheck()
        recheck_preflight(plan)

    report.note(
        f"Streaming {len(payload)} bytes (Format {fmt_name(fmt)}); Ctrl-C aborts the upload "
        "until its last byte is committed"
    )
    try:
        with progress(len(payload)) as tick:
            result = _stream(
                plan,
                payload,
                progress=tick,
                before_write=before_write,
                stale_loading=stale_loading,
                on_committed=lambda written: report.note(
                    f"Streamed {written} bytes to {plan.upload_dir}/data and committed them; "
                    f"waiting for the kernel to install the module (up to {plan.timeout:g} "
                    "s). A signal no longer stops it: the kernel owns the update now"
                ),
            )
        if result.committed and not result.timed_out:
            said = (
                f"the kernel reported {result.kernel_error}"
                if result.kernel_error
                else "the kernel reported no error"
            )
            report.note(f"The kernel finished after {result.duration_s:.2f} s; {said}")
    except TdxError as exc:
        if not uploader.interface_written(exc):
            # Refused before anything was written (busy, no access): nothing to record (§5).
            raise
        return Attempt(fmt, None, "failed", exc.message, None, error=exc)
    after = _read_back(plan) if outcome.needs_read_back(result) else None
    verdict = outcome.judge(
        result,
        running=plan.running,
        target=plan.target,
        remaining_before=plan.remaining_before,
        timeout_s=plan.timeout,
        after=after,
    )
    if verdict.outcome == outcome.NOT_WRITTEN:
        # The signal came before the first write: nothing reached the kernel, nothing to record.
        assert result.interrupted is not None
        raise Interrupted(verdict.message, signum=result.interrupted)
    return Attempt(
        fmt,
        result,
        verdict.outcome,
        outcome.late_signal(verdict.message, result.signal_after_commit),
        after.remaining if after is not None else None,
        version_after=after.version if after is not None else None,
    )


def _record(report: Report, plan: UpdatePlan, attempt: Attempt, attempt_no: int) -> None:
    r = attempt.result
    facts = plan.facts
    sig = plan.verified.info.sigstruct
    doc = _update_doc(report)
    host = report.host
    record = history.HistoryRecord(
        time=now_rfc3339(),
        from_version=str(plan.running),
        to_version=str(plan.target),
        image_sha256=plan.image_sha256,
        image_format=fmt_hex(attempt.image_format) or "",
        result=attempt.outcome,
        kernel_error=r.kernel_error if r else None,
        duration_s=round(r.duration_s, 3) if r else 0.0,
        remaining_before=plan.remaining_before,
        remaining_after=attempt.remaining_after,
        tool_version=__version__,
        cpu_signature=fmt_hex(facts.cpu_signature),
        seamldr_version=str(facts.seamldr_version) if facts.seamldr_version else None,
        sysfs_layout=facts.sysfs_layout,
        generation=facts.generation,
        fatal=attempt.outcome == "module-lost",
        attempt=attempt_no,
        message=attempt.message,
        signer=sig.signer,
        seamsvn=f"{sig.seamsvn:#06x}",
        mrseam=sig.seamhash.hex(),
        pre_update=_hook_json(doc.pre_update),
        # what the running module attested before: Intel's release table or its image
        from_seamsvn=host.seamsvn if host is not None else None,
        from_mrseam=host.mrseam if host is not None else None,
        from_mrseam_prefix=host.mrseam_prefix if host is not None else None,
    )
    try:
        history.append(plan.state_dir, record)
        _LOG.info(
            "attempt %d (%s) recorded in %s",
            attempt_no,
            attempt.outcome,
            history.history_path(plan.state_dir),
        )
    except TdxError as exc:
        # The kernel's outcome decides the exit code, the JSON and the metrics; a record that
        # cannot be written is one more error line, never a replacement for what happened.
        report.warn(
            "history-write-failed",
            f"the attempt's history record was not written ({exc.message}); the outcome "
            "reported is the kernel's",
        )
