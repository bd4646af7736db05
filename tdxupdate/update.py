"""``--update [VERSION]``: the update sequence of cli-contract.md §4, in its order.

lock -> host facts -> candidates -> decision (nothing to do wins) -> preflight -> full verify ->
convert -> stream (uploader) -> watch -> error -> version read-back -> format retry -> history.
Every attempt that wrote to the upload interface gets a history record (§5).
"""

from __future__ import annotations

import contextlib
import logging
import signal
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from tdxupdate import __version__, actions, fence, history, hooks, lock, policy, signals, uploader
from tdxupdate import host as _host
from tdxupdate import image as _image
from tdxupdate.errors import (
    PERMANENT_EXIT_CODES,
    DataError,
    Interrupted,
    InvalidImage,
    KernelFailure,
    TdxError,
    TryLater,
)
from tdxupdate.settings import Settings
from tdxupdate.versions import Version

_LOG = logging.getLogger(__name__)

#: Host checks that must pass before anything is written (§4 step 4), in report order.
PREFLIGHT_CHECKS = (
    "tdx-host",
    "upload-interface",
    "module-version",
    "seamldr-version",
    "cpu-signature",
    "remaining-updates",
    "upload-idle",
    "cpus-online",
)

ProgressFactory = Callable[
    [int], contextlib.AbstractContextManager[Callable[[int, int], None] | None]
]


@contextlib.contextmanager
def _no_progress(total: int) -> Iterator[None]:
    yield None


def preflight_error(facts: _host.HostFacts) -> TdxError | None:
    """The failure to report when preflight fails: a permanent one (69, 77) wins (§2)."""
    failed = [facts.check(n) for n in PREFLIGHT_CHECKS if not facts.check(n).ok]
    if not failed:
        return None
    errors = [TdxError(c.detail, code=c.code or "no-upload-interface") for c in failed]
    permanent = [e for e in errors if e.exit_code in PERMANENT_EXIT_CODES]
    return (permanent or errors)[0]


def recheck_preflight(settings: Settings, before: _host.HostFacts) -> None:
    """Read every preflight fact again, immediately before the first write (§4 step 4).

    A download can take minutes: CPUs go offline, another tool spends an update or replaces
    the module. Any failing check, or any fact that differs from what the decision was made
    on, stops the update with nothing written.
    """
    now = actions.discover_host(settings)
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
            f"online CPUs {_host.format_cpu_list(before.cpus_online or ())} -> "
            f"{_host.format_cpu_list(now.cpus_online or ())}"
        )
    if not changed:
        _LOG.info("preflight read again before the first write: the host is unchanged")
    else:
        raise TryLater(
            "the host changed since the preflight (" + "; ".join(changed) + "); nothing was "
            "written, run tdxupdate again",
            code="host-changed",
        )


def _noting(report: actions.Report) -> Callable[[str], None]:
    """A wait worth telling people about: a note, and a log line (seen with -v and --json)."""

    def note(line: str) -> None:
        report.note(line)
        _LOG.info("%s", line)

    return note


def now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


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


def run_update(
    settings: Settings,
    report: actions.Report,
    *,
    progress: ProgressFactory = _no_progress,
) -> None:
    report.doc.update(
        {
            "selected": None,
            "dry_run": settings.dry_run,
            "changed": False,
            "from_version": None,
            "to_version": None,
            "kernel_error": None,
            "fatal": False,
        }
    )
    guard = contextlib.nullcontext() if settings.dry_run else lock.acquire(settings.state_dir)
    with guard:
        _run_locked(settings, report, progress)


def _run_locked(settings: Settings, report: actions.Report, progress: ProgressFactory) -> None:
    facts, view, inventory, candidates = actions.build_candidates(settings, report)
    report.doc["from_version"] = str(view.module_version)
    report.note(
        f"Host: TDX module {view.module_version}, P-SEAMLDR {view.seamldr_version}, CPU "
        f"{actions.fmt_hex(view.cpu_signature)}, {facts.num_remaining_updates} update(s) left; "
        f"{facts.sysfs_layout} sysfs layout ({facts.generation}), kernel takes Format "
        f"{_fmt_name(facts.image_format)}"
    )
    eligible = [str(c.version) for c in candidates if c.eligible]
    report.note(
        f"Repository {inventory.repo.location}: {len(candidates)} module(s), "
        f"{len(eligible)} eligible ({', '.join(eligible) or 'none'}); "
        "'tdxupdate --list' explains the others"
    )

    while True:
        decision = policy.choose(
            candidates,
            view.module_version,
            settings.version,
            allow_reinstall=settings.allow_reinstall,
        )
        selected = decision.selected
        report.doc["selected"] = actions.candidate_json(selected) if selected else None
        if decision.action == "refuse":
            decision.raise_if_refused()
        if decision.action == "nothing-to-do":
            report.doc["to_version"] = str(selected.version) if selected else None
            report.note(decision.message)
            return
        assert selected is not None
        report.doc["to_version"] = str(selected.version)
        report.note(f"Selected {selected.version}: {decision.message}")

        # §4 step 4: preflight, before any write (and before reading the whole image).
        error = preflight_error(facts)
        if error is not None:
            raise error
        report.note(
            f"Preflight: {facts.upload_dir} is idle, {facts.num_remaining_updates} update(s) "
            f"left, all {len(facts.cpus_present or ())} CPUs online"
        )

        # §4 step 5: read the chosen image once and judge that one buffer: every check of
        # image-formats.md §4 and every policy fact (cpuid table, debug bit, SEAMSVN, MRSEAM)
        # again, because the listing judged an earlier read of its head. Only this value is
        # converted and streamed.
        ref = inventory.refs[selected.version]
        verified = _image.verify_image(
            inventory.repo.read(ref),
            location=ref.location,
            trusted_signers=inventory.trusted,
            allow_debug=settings.allow_debug,
            expected_version=selected.version,
        )
        verification = verified.verification
        rejudged = policy.evaluate_one(
            selected.version,
            selected.release,
            actions.image_facts_from_verified(verified),
            view,
            actions.policy_options(settings),
        )
        blocking = rejudged.without("same-as-running") if decision.reinstall else rejudged.reasons
        if verification.ok and not blocking:
            signer = verified.info.sigstruct.signer
            report.doc["signer"] = signer
            if signer != _image.INTEL_PRODUCTION_SIGNER:
                report.warn(
                    "non-intel-signer",
                    f"{selected.version} is signed by {signer}, not Intel's production key: "
                    "it is trusted only because that key was added (--trusted-keys, the "
                    "configuration, or --simulate's own key)",
                )
            _LOG.info(
                "image %s: %d bytes, sha256 %s, MRSEAM %s, SEAMSVN %s, signer %s",
                ref.location,
                len(verified.data),
                verified.sha256,
                verified.mrseam,
                actions.fmt_hex(verified.info.sigstruct.seamsvn),
                signer,
            )
            report.note(
                f"Verified {ref.location}: "
                + ", ".join(c.name for c in verification.checks)
                + f" — all {len(verification.checks)} checks pass"
            )
            break
        if not verification.ok:
            failed = "; ".join(f"{c.name}: {c.detail}" for c in verification.failed)
            if settings.version is not None:
                raise InvalidImage(f"{ref.location}: {failed}", check=verification.failed[0].name)
            # The newest candidate's image is corrupt: say so and take the next eligible one.
            report.note(
                f"{selected.version} rejected: {ref.location} failed verification ({failed})"
            )
            replacement = _mark_invalid(selected, failed)
        else:
            # The image read in full is not the image the listing judged (it changed between
            # the reads): judge it as what it is now.
            why = "; ".join(f"{r}: {rejudged.details.get(r, r)}" for r in blocking)
            if settings.version is not None:
                raise DataError(
                    f"{ref.location} changed since it was listed and is not eligible now: {why}",
                    code="not-eligible",
                )
            report.note(f"{selected.version} rejected: {ref.location} is not eligible now ({why})")
            replacement = rejudged
        candidates = [replacement if c.version == selected.version else c for c in candidates]
        report.doc["candidates"] = [actions.candidate_json(c) for c in candidates]

    assert facts.image_format is not None
    image_sha256 = verified.sha256
    formats = [facts.image_format]
    if facts.image_format_fallback is not None and facts.image_format_auto:
        formats.append(facts.image_format_fallback)
    plan = (
        f"{selected.version} over {view.module_version}: {ref.location} "
        f"(Format {_fmt_name(verification.info.format if verification.info else None)}, "
        f"sha256 {image_sha256[:16]}…) sent as Format {_fmt_name(formats[0])} to "
        f"{facts.upload_dir}"
    )
    if len(formats) > 1:
        plan += (
            f", retried once as Format {_fmt_name(formats[1])} if this kernel refuses the header"
        )
    report.doc["plan"] = f"install {plan}"
    # what TDs will attest, and the no-svn-gain / td-relaunch-advised warnings, before any write
    from tdxupdate import attestation_report

    attestation_report.before_install(settings, report)
    if settings.dry_run:
        report.note(f"dry run: would install {plan}")
        return
    report.note(f"{'Reinstalling' if decision.reinstall else 'Installing'} {plan}")

    assert facts.upload_dir is not None
    remaining_before = facts.num_remaining_updates
    uploader.require_upload_filesystem(facts.upload_dir)
    with lock.acquire_host(facts.upload_dir) as host_lock:
        hook_env = {
            "TDXUPDATE_FROM": str(view.module_version),
            "TDXUPDATE_TO": str(selected.version),
            "TDXUPDATE_SYSROOT": str(settings.sysroot),
        }
        outcome: Attempt | None = None
        # The TD-build fence before the pre-update command, which stays the last step before
        # the first write; taken before signals are held, so a signal while waiting for TD
        # builds ends the run with nothing written, and the with statement releases it.
        with fence.hold(
            facts.upload_dir, timeout=settings.fence_timeout, on_wait=_noting(report)
        ) as td_fence:
            _fence_notes(report, td_fence)
            _pre_update(report, settings, hook_env, image_sha256)
            try:
                with signals.holding() as deferred:
                    outcome = _attempts(
                        report,
                        settings,
                        facts,
                        verified,
                        formats,
                        selected.version,
                        view,
                        image_sha256,
                        remaining_before,
                        progress,
                        stale_loading=host_lock.holder_died,
                        td_fence=td_fence,
                    )
            finally:
                # TD launches may go on before the post-update command (which may start them)
                td_fence.release()
                _post_update(report, settings, hook_env, image_sha256, outcome)
    if deferred:
        names = ", ".join(signal.Signals(s).name for s in deferred)
        report.warn(
            "signal-deferred",
            f"{names} arrived outside the stream; tdxupdate finished the attempt and its "
            "history record first",
        )
    _finish(report, outcome, selected.version, remaining_before)


def _fence_notes(report: actions.Report, td_fence: fence.Fence) -> None:
    for name, why in td_fence.removed:
        report.note(f"Removed the stale TD build registration {name!r}: {why}")
    if td_fence.waited_for:
        report.note(
            f"TD build(s) {', '.join(td_fence.waited_for)} finished; no TD build can start "
            "until this update is confirmed"
        )


def _pre_update(
    report: actions.Report, settings: Settings, env: dict[str, str], image_sha256: str
) -> None:
    """The configured ``pre_update`` command; its failure stops the update, nothing written."""
    if settings.pre_update is None:
        return
    report.note(f"Running the pre-update command (up to {settings.hook_timeout:g} s)")
    result = hooks.run("pre-update", settings.pre_update, settings.hook_timeout, env)
    report.doc["pre_update"] = result.to_json()
    if result.ok:
        report.note(f"The pre-update command succeeded in {result.duration_s:.1f} s")
        return
    message = f"{result.describe()}; nothing was written, the update did not start"
    _record_hook(report, settings, env, image_sha256, "pre-update-failed", message)
    raise TryLater(message, code="pre-update-failed")


def _post_update(
    report: actions.Report,
    settings: Settings,
    env: dict[str, str],
    image_sha256: str,
    outcome: Attempt | None,
) -> None:
    """The configured ``post_update`` command, after the attempt whatever it did (its failure
    is a warning and a history record: the kernel's outcome stays the run's)."""
    if settings.post_update is None:
        return
    result_token = outcome.outcome if outcome is not None else "error"
    env = {**env, "TDXUPDATE_RESULT": result_token}
    result = hooks.run("post-update", settings.post_update, settings.hook_timeout, env)
    report.doc["post_update"] = result.to_json()
    if result.ok:
        report.note(f"The post-update command succeeded in {result.duration_s:.1f} s")
        return
    message = f"{result.describe()} (after the attempt: {result_token})"
    report.warn("post-update-failed", message)
    _record_hook(report, settings, env, image_sha256, "post-update-failed", message)


def _record_hook(
    report: actions.Report,
    settings: Settings,
    env: dict[str, str],
    image_sha256: str,
    result: str,
    message: str,
) -> None:
    record = history.HistoryRecord(
        result=result,
        time=now_rfc3339(),
        from_version=env["TDXUPDATE_FROM"],
        to_version=env["TDXUPDATE_TO"],
        image_sha256=image_sha256,
        tool_version=__version__,
        attempt=0,
        message=message,
        pre_update=report.doc.get("pre_update"),
        post_update=report.doc.get("post_update"),
    )
    try:
        history.append(settings.state_dir, record)
    except TdxError as exc:
        report.warn(
            "history-write-failed", f"the {result} history record was not written ({exc.message})"
        )


def _attempts(
    report: actions.Report,
    settings: Settings,
    facts: _host.HostFacts,
    verified: _image.VerifiedImage,
    formats: list[int],
    target: Version,
    view: policy.HostView,
    image_sha256: str,
    remaining_before: int | None,
    progress: ProgressFactory,
    *,
    stale_loading: bool = False,
    td_fence: fence.Fence | None = None,
) -> Attempt:
    """Send the image (and, on a header refusal, once more in the other format); record each."""
    for attempt_no, fmt in enumerate(formats, start=1):
        payload = verified.payload(fmt)
        if verified.info.format != fmt:
            report.note(
                f"Converted Format {_fmt_name(verified.info.format)} to Format "
                f"{_fmt_name(fmt)} for this kernel ({len(payload)} bytes; sigstruct and module "
                "unchanged)"
            )
        attempt = _attempt(
            report,
            settings,
            facts,
            payload,
            fmt,
            target,
            view.module_version,
            progress,
            stale_loading=stale_loading,
            td_fence=td_fence,
        )
        report.doc["kernel_error"] = attempt.result.kernel_error if attempt.result else None
        _record(
            report,
            settings,
            facts,
            attempt,
            attempt_no,
            from_version=view.module_version,
            to_version=target,
            image_sha256=image_sha256,
            remaining_before=remaining_before,
            signer=verified.info.sigstruct,
        )
        retry = (
            attempt_no < len(formats)
            and attempt.outcome == "failed"
            and attempt.result is not None
            and attempt.result.kernel_error == "transferring:firmware-invalid"
            # the header was refused before anything was touched (§4 step 10)
            and attempt.version_after == view.module_version
            and attempt.remaining_after == remaining_before
        )
        if retry:
            report.warn(
                "format-retry",
                f"the kernel refused the Format {_fmt_name(fmt)} header before touching the "
                f"module; retrying once as Format {_fmt_name(formats[attempt_no])}",
            )
            continue
        return attempt
    raise AssertionError("unreachable: the last format never retries")


def _attempt(
    report: actions.Report,
    settings: Settings,
    facts: _host.HostFacts,
    payload: bytes,
    fmt: int,
    target: Version,
    running: Version,
    progress: ProgressFactory,
    *,
    stale_loading: bool = False,
    td_fence: fence.Fence | None = None,
) -> Attempt:
    assert facts.upload_dir is not None

    def before_write() -> None:
        if td_fence is not None:
            td_fence.recheck()
        recheck_preflight(settings, facts)

    report.note(
        f"Streaming {len(payload)} bytes (Format {_fmt_name(fmt)}); Ctrl-C aborts the upload "
        "until its last byte is committed"
    )
    try:
        with progress(len(payload)) as tick:
            result = uploader.upload(
                facts.upload_dir,
                payload,
                timeout=settings.timeout,
                progress=tick,
                before_write=before_write,
                stale_loading=stale_loading,
                on_committed=lambda written: report.note(
                    f"Streamed {written} bytes to {facts.upload_dir}/data and committed them; "
                    f"waiting for the kernel to install the module (up to {settings.timeout:g} "
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
    attempt = _judge(settings, facts, result, fmt, target, running)
    if result.signal_after_commit is not None:
        # §4 step 11: after loading=0 the kernel owns the update; say why we did not stop.
        late = (
            f"{signal.Signals(result.signal_after_commit).name} arrived after the image was "
            "committed: the kernel owned the update, so tdxupdate kept watching instead of "
            "stopping"
        )
        attempt = replace(attempt, message=f"{attempt.message} ({late})")
    return attempt


def _judge(
    settings: Settings,
    facts: _host.HostFacts,
    result: uploader.UploadResult,
    fmt: int,
    target: Version,
    running: Version,
) -> Attempt:
    """The outcome of one streamed attempt: signal, timeout, kernel error, version read-back."""
    if result.interrupted is not None and not result.touched:
        # The signal came before the first write: nothing reached the kernel, nothing to record.
        name = signal.Signals(result.interrupted).name
        raise Interrupted(
            f"interrupted by {name} before anything was written to the upload interface",
            signum=result.interrupted,
        )
    if result.interrupted is not None:
        name = signal.Signals(result.interrupted).name
        return Attempt(
            fmt,
            result,
            "interrupted",
            f"interrupted by {name} while streaming; the upload was aborted (nothing committed)",
            None,
        )
    if result.timed_out:
        return Attempt(
            fmt,
            result,
            "timeout",
            f"the kernel did not finish within {settings.timeout:g} s; the upload interface is "
            f"still '{result.final_status}' and the kernel owns the update — the next run will "
            "find it busy until it ends; check 'tdxupdate --status' later",
            None,
        )
    after = _host.discover(_host.Sysroot(settings.sysroot), cpu_signature=facts.cpu_signature)
    remaining_after = after.num_remaining_updates
    lost = _host.module_lost(after)

    def judged(outcome: str, message: str) -> Attempt:
        return Attempt(
            fmt, result, outcome, message, remaining_after, version_after=after.module_version
        )

    if result.kernel_error is not None:
        info = uploader.decode_kernel_error(result.kernel_error)
        if lost:
            return judged("module-lost", _lost_sentence(result.kernel_error))
        # The decoded sentence says the version is checked next; say what the check found.
        sentence = f"{info.sentence} {_checked(after, running, facts.num_remaining_updates)}"
        return judged("device-busy" if info.code == "device-busy" else "failed", sentence)
    if lost:
        return judged("module-lost", _lost_sentence(None))
    if after.module_version == target:
        return judged(
            "success",
            f"Confirmed: {running} -> {target}; version now reads {target}, "
            f"num_remaining_updates {facts.num_remaining_updates} -> {remaining_after}",
        )
    shown = str(after.module_version) if after.module_version is not None else "unreadable"
    return judged(
        "version-mismatch",
        f"the kernel accepted the image but the running version is {shown}, not {target}",
    )


def _checked(after: _host.HostFacts, running: Version, remaining_before: int | None) -> str:
    """What re-reading ``version`` (and the counter) after a kernel error found (§4 step 9)."""
    shown = after.module_version
    if shown == running:
        said = f"Checked: the module version still reads {running}, so the old module keeps running"
    elif shown is None:
        said = "Checked: the module version cannot be read now; see 'tdxupdate --status'"
    else:
        said = f"Checked: the module version now reads {shown}, not {running}"
    left = after.num_remaining_updates
    if remaining_before is not None and left is not None and left != remaining_before:
        said += f"; num_remaining_updates went from {remaining_before} to {left}"
    return said + "."


def _lost_sentence(kernel_error: str | None) -> str:
    said = f" (kernel error {kernel_error})" if kernel_error else ""
    return (
        f"the update failed after the old module was shut down{said}: the TDX module is lost, "
        "every running TD has been killed, and TDX is unusable until this host reboots"
    )


def _record(
    report: actions.Report,
    settings: Settings,
    facts: _host.HostFacts,
    attempt: Attempt,
    attempt_no: int,
    *,
    from_version: Version,
    to_version: Version,
    image_sha256: str,
    remaining_before: int | None,
    signer: _image.Sigstruct,
) -> None:
    r = attempt.result
    record = history.HistoryRecord(
        time=now_rfc3339(),
        from_version=str(from_version),
        to_version=str(to_version),
        image_sha256=image_sha256,
        image_format=actions.fmt_hex(attempt.image_format) or "",
        result=attempt.outcome,
        kernel_error=r.kernel_error if r else None,
        duration_s=round(r.duration_s, 3) if r else 0.0,
        remaining_before=remaining_before,
        remaining_after=attempt.remaining_after,
        tool_version=__version__,
        cpu_signature=actions.fmt_hex(facts.cpu_signature),
        seamldr_version=str(facts.seamldr_version) if facts.seamldr_version else None,
        sysfs_layout=facts.sysfs_layout,
        generation=facts.generation,
        fatal=attempt.outcome == "module-lost",
        attempt=attempt_no,
        message=attempt.message,
        signer=signer.signer,
        seamsvn=f"{signer.seamsvn:#06x}",
        mrseam=signer.seamhash.hex(),
        pre_update=report.doc.get("pre_update"),
        # what the running module attested before: Intel's release table or its image
        from_seamsvn=report.doc["host"].get("seamsvn"),
        from_mrseam=report.doc["host"].get("mrseam"),
        from_mrseam_prefix=report.doc["host"].get("mrseam_prefix"),
    )
    try:
        history.append(settings.state_dir, record)
        _LOG.info(
            "attempt %d (%s) recorded in %s",
            attempt_no,
            attempt.outcome,
            history.history_path(settings.state_dir),
        )
    except TdxError as exc:
        # The kernel's outcome decides the exit code, the JSON and the metrics; a record that
        # cannot be written is one more error line, never a replacement for what happened.
        report.warn(
            "history-write-failed",
            f"the attempt's history record was not written ({exc.message}); the outcome "
            "reported is the kernel's",
        )


def _finish(
    report: actions.Report, attempt: Attempt, target: Version, remaining_before: int | None
) -> None:
    outcome = attempt.outcome
    report.doc["remaining_after"] = attempt.remaining_after
    report.doc["fatal"] = outcome == "module-lost"
    report.doc["changed"] = outcome in ("success",)
    if outcome == "success":
        report.doc["changed"] = True
        report.note(attempt.message)
        if (
            remaining_before is not None
            and attempt.remaining_after is not None
            and attempt.remaining_after != remaining_before - 1
        ):
            report.warn(
                "remaining-updates-not-decremented",
                f"num_remaining_updates went from {remaining_before} to {attempt.remaining_after}, "
                "not down by one",
            )
        return
    if outcome == "version-mismatch":
        report.doc["changed"] = False
        raise KernelFailure(attempt.message, code="version-mismatch")
    if outcome == "module-lost":
        raise KernelFailure(attempt.message, code="module-lost")
    if outcome == "device-busy":
        raise TryLater(attempt.message, code="device-busy")
    if outcome == "timeout":
        raise TryLater(attempt.message, code="timeout")
    if outcome == "interrupted":
        assert attempt.result is not None and attempt.result.interrupted is not None
        signum = attempt.result.interrupted
        raise Interrupted(attempt.message, signum=signum)
    if attempt.error is not None:
        # The stream failed (I/O or permission error while writing); nothing was committed
        # unless the uploader says otherwise, and the interface was not left loading.
        raise attempt.error
    raise KernelFailure(attempt.message, code="kernel-error")


def _mark_invalid(c: policy.Candidate, detail: str) -> policy.Candidate:
    reasons = tuple(r for r in policy.REASONS if r in set(c.reasons) | {"image-invalid"})
    details = dict(c.details)
    details.setdefault("image-invalid", f"{c.version}: {detail}")
    return replace(c, reasons=reasons, details=details)


def _fmt_name(fmt: int | None) -> str:
    return {0x100: "A (0x100)", 0x200: "B (0x200)"}.get(fmt or 0, "?")
