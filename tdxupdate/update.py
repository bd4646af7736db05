"""``--update [VERSION]``: the update sequence of cli-contract.md §4, in its order.

lock -> host facts -> candidates -> decision (nothing to do wins) -> preflight -> full verify ->
plan -> (:mod:`tdxupdate.attempt`) convert -> stream -> watch -> error -> version read-back ->
format retry -> history. Every attempt that wrote to the upload interface gets a history
record (§5). The settings are read up to the plan; the attempt reads only the plan.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import replace

from tdxupdate import attestation_report, imagecheck, lock, outcome, policy
from tdxupdate import inventory as _inv
from tdxupdate.attempt import (
    Attempt,
    ProgressFactory,
    UpdatePlan,
    execute,
    fmt_name,
    no_progress,
    preflight_error,
)
from tdxupdate.errors import DataError, Interrupted, InvalidImage
from tdxupdate.report import Report, UpdateDoc, fmt_hex
from tdxupdate.settings import Settings
from tdxupdate.versions import Version

_LOG = logging.getLogger(__name__)


def run_update(
    settings: Settings, report: Report, *, progress: ProgressFactory = no_progress
) -> None:
    report.update = UpdateDoc(dry_run=settings.dry_run)
    guard = contextlib.nullcontext() if settings.dry_run else lock.acquire(settings.state_dir)
    with guard:
        plan = _plan(settings, report)
        if plan is None:
            return
        # what TDs will attest, and the no-svn-gain / td-relaunch-advised warnings, before any write
        attestation_report.before_install(settings, report)
        if settings.dry_run:
            report.note(f"dry run: would install {plan.description}")
            return
        report.note(f"{'Reinstalling' if plan.reinstall else 'Installing'} {plan.description}")
        _finish(report, execute(plan, report, progress), plan)


def _plan(settings: Settings, report: Report) -> UpdatePlan | None:
    """Candidates, decision, preflight and the full verification: the frozen plan, or None
    when there is nothing to do."""
    doc = report.update
    assert doc is not None
    facts, view, inventory, candidates = _inv.build_candidates(settings, report)
    doc.from_version = str(view.module_version)
    report.note(
        f"Host: TDX module {view.module_version}, P-SEAMLDR {view.seamldr_version}, CPU "
        f"{fmt_hex(view.cpu_signature)}, {facts.num_remaining_updates} update(s) left; "
        f"{facts.sysfs_layout} sysfs layout ({facts.generation}), kernel takes Format "
        f"{fmt_name(facts.image_format)}"
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
        doc.selected = _inv.candidate_doc(selected) if selected else None
        if decision.action == "refuse":
            decision.raise_if_refused()
        if decision.action == "nothing-to-do":
            doc.to_version = str(selected.version) if selected else None
            report.note(decision.message)
            return None
        assert selected is not None
        doc.to_version = str(selected.version)
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
        verified = imagecheck.verify_image(
            inventory.repo.read(ref),
            location=ref.location,
            trusted_signers=inventory.trusted,
            allow_debug=settings.allow_debug,
            expected_version=selected.version,
        )
        # A mirror caches the image when its integrity checks passed; nothing is verified twice.
        inventory.repo.admit(ref, verified)
        verification = verified.verification
        rejudged = policy.evaluate_one(
            selected.version,
            selected.release,
            _inv.image_facts_from_verified(verified),
            view,
            _inv.policy_options(settings),
        )
        blocking = rejudged.without("same-as-running") if decision.reinstall else rejudged.reasons
        if verification.ok and not blocking:
            _verified(report, verified, selected.version)
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
        report.candidates = [_inv.candidate_doc(c) for c in candidates]

    assert facts.image_format is not None
    assert facts.upload_dir is not None
    formats = [facts.image_format]
    if facts.image_format_fallback is not None and facts.image_format_auto:
        formats.append(facts.image_format_fallback)
    description = (
        f"{selected.version} over {view.module_version}: {ref.location} "
        f"(Format {fmt_name(verification.info.format if verification.info else None)}, "
        f"sha256 {verified.sha256[:16]}…) sent as Format {fmt_name(formats[0])} to "
        f"{facts.upload_dir}"
    )
    if len(formats) > 1:
        description += (
            f", retried once as Format {fmt_name(formats[1])} if this kernel refuses the header"
        )
    doc.plan = f"install {description}"
    return UpdatePlan(
        verified=verified,
        target=selected.version,
        running=view.module_version,
        reinstall=decision.reinstall,
        facts=facts,
        upload_dir=facts.upload_dir,
        formats=tuple(formats),
        description=description,
        sysroot=settings.sysroot,
        state_dir=settings.state_dir,
        cpu_signature=settings.cpu_signature,
        image_format=settings.image_format,
        timeout=settings.timeout,
        fence_timeout=settings.fence_timeout,
        hook_timeout=settings.hook_timeout,
        pre_update=settings.pre_update,
        post_update=settings.post_update,
    )


def _verified(report: Report, verified: imagecheck.VerifiedImage, version: Version) -> None:
    """The chosen image passed every check: its signer, a log line, the note."""
    assert report.update is not None
    signer = verified.info.sigstruct.signer
    report.update.signer = signer
    if signer != imagecheck.INTEL_PRODUCTION_SIGNER:
        report.warn(
            "non-intel-signer",
            f"{version} is signed by {signer}, not Intel's production key: "
            "it is trusted only because that key was added (--trusted-keys, the "
            "configuration, or --simulate's own key)",
        )
    _LOG.info(
        "image %s: %d bytes, sha256 %s, MRSEAM %s, SEAMSVN %s, signer %s",
        verified.location,
        len(verified.data),
        verified.sha256,
        verified.mrseam,
        fmt_hex(verified.info.sigstruct.seamsvn),
        signer,
    )
    checks = verified.verification.checks
    report.note(
        f"Verified {verified.location}: "
        + ", ".join(c.name for c in checks)
        + f" — all {len(checks)} checks pass"
    )


def _finish(report: Report, attempt: Attempt, plan: UpdatePlan) -> None:
    """The run's result from the last attempt's outcome (:data:`tdxupdate.outcome.OUTCOMES`)."""
    doc = report.update
    assert doc is not None
    doc.remaining_after = attempt.remaining_after
    doc.fatal = attempt.outcome == "module-lost"
    doc.changed = attempt.outcome == "success"
    remaining_before = plan.remaining_before
    if attempt.outcome == "success":
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
    if attempt.outcome == "interrupted":
        assert attempt.result is not None
        assert attempt.result.interrupted is not None
        raise Interrupted(attempt.message, signum=attempt.result.interrupted)
    if attempt.error is not None:
        # The stream failed (I/O or permission error while writing); nothing was committed
        # unless the uploader says otherwise, and the interface was not left loading.
        raise attempt.error
    error = outcome.error_for(attempt.outcome, attempt.message)
    assert error is not None
    raise error


def _mark_invalid(c: policy.Candidate, detail: str) -> policy.Candidate:
    reasons = tuple(r for r in policy.REASONS if r in set(c.reasons) | {"image-invalid"})
    details = dict(c.details)
    details.setdefault("image-invalid", f"{c.version}: {detail}")
    return replace(c, reasons=reasons, details=details)
