"""Attestation in every report: what TDs see before and after (issue 10 §3).

Run once an action has filled its JSON document (:func:`annotate`, from ``cli.run_action``),
so it sees the candidates and the selection as the action left them (``--update`` re-judges and
re-lists them) and adds, from that document alone:

- to each candidate: ``module_identity``, ``svn_gain`` and ``tcb_status``;
- to ``--update`` (dry runs too): ``from_seamsvn``/``from_mrseam``/``to_seamsvn``/``to_mrseam``,
  ``svn_gain``, the ``no-svn-gain`` warning, and the sentences saying what running TDs will
  report and what TDs launched from now on will measure;
- with ``--tcb-info``: ``tcb`` (the running and target SVN's tcbStatus and the
  ``TDRelaunchAdvised`` prediction) and the ``td-relaunch-advised`` warning.
"""

from __future__ import annotations

from typing import Any

from tdxupdate.attestation import (
    ModuleValues,
    TcbInfo,
    candidate_values,
    fmt_svn,
    module_identity,
    relaunch_advised,
)
from tdxupdate.report import UNSET, CandidateDoc, HostDoc, Report, TcbDoc, UpdateDoc
from tdxupdate.settings import Settings
from tdxupdate.versions import try_parse


def running_from_host(host: HostDoc) -> ModuleValues:
    """The running module's values as :func:`tdxupdate.inventory.set_running_identity` put
    them in the host document."""
    svn = host.seamsvn
    return ModuleValues(
        try_parse(str(host.module_version or "")),
        int(svn, 16) if isinstance(svn, str) else None,
        host.mrseam,
        host.mrseam_prefix,
        host.identity_source,
    )


def svn_gain(before: ModuleValues, after: ModuleValues) -> bool | None:
    if before.seamsvn is None or after.seamsvn is None:
        return None
    return after.seamsvn > before.seamsvn


def annotate(settings: Settings, report: Report) -> None:
    host = report.host
    if host is None:
        return
    running = running_from_host(host)
    tcb = settings.tcb_levels
    selected = report.update.selected if report.update is not None else None
    for c in [*(report.candidates or ()), selected]:
        if c is not None:
            _annotate_candidate(c, running, tcb)
    if tcb is not None and report.tcb is None:
        report.tcb = TcbDoc(
            file=str(tcb.path),
            fmspc=tcb.fmspc,
            running=tcb.status(running.seamsvn, running.version),
        )
    if report.action == "update" and report.update is not None:
        _annotate_update(report, report.update, running, tcb)
    elif report.action == "reference-values":
        _annotate_reference_values(report, tcb)


def _annotate_candidate(c: CandidateDoc, running: ModuleValues, tcb: TcbInfo | None) -> None:
    values = candidate_values(c.to_json()) if c.seamsvn else ModuleValues(try_parse(c.version))
    c.module_identity = module_identity(values.version, values.seamsvn)
    c.svn_gain = svn_gain(running, values) if c.seamsvn else None
    c.tcb_status = (
        tcb.status(values.seamsvn, values.version) if tcb is not None and c.seamsvn else None
    )


def _short(values: ModuleValues) -> str:
    return values.mrseam_text(16) if values.mrseam else values.mrseam_text()


def _target(doc: UpdateDoc) -> ModuleValues:
    selected = doc.selected
    if selected is not None and doc.to_version == selected.version:
        return candidate_values(selected.to_json())
    return ModuleValues(None)


def _set_update_keys(doc: UpdateDoc, running: ModuleValues, target: ModuleValues) -> None:
    doc.from_seamsvn = fmt_svn(running.seamsvn)
    doc.from_mrseam = running.mrseam
    doc.from_mrseam_prefix = running.mrseam_prefix
    doc.to_seamsvn = fmt_svn(target.seamsvn)
    doc.to_mrseam = target.mrseam
    doc.svn_gain = svn_gain(running, target) if target.version is not None else None


def before_install(settings: Settings, report: Report) -> None:
    """``--update``, once the module to install is verified and before anything is written (a
    dry run stops right after): what TDs will attest, and the warnings that say the update may
    not be worth its cost (``no-svn-gain``) or will change verdicts (``td-relaunch-advised``)."""
    doc = report.update
    if report.host is None or doc is None:
        return
    running, target = running_from_host(report.host), _target(doc)
    if target.version is None:
        return
    _set_update_keys(doc, running, target)
    before_svn = fmt_svn(running.seamsvn) or "unknown"
    after_svn = fmt_svn(target.seamsvn) or "unknown"
    tcb = settings.tcb_levels
    if tcb is not None:
        running_status = tcb.status(running.seamsvn, running.version)
        target_status = tcb.status(target.seamsvn, target.version)
        advised = relaunch_advised(running_status, target_status)
        report.tcb = TcbDoc(
            file=str(tcb.path),
            fmspc=tcb.fmspc,
            running=running_status,
            target=target_status,
            td_relaunch_advised=advised,
        )
        report.note(
            f"TCB ({tcb.path}): running SEAMSVN {before_svn} is {running_status or 'not rated'}, "
            f"{target.version}'s {after_svn} is {target_status or 'not rated'}"
        )
        if advised:
            report.warn(
                "td-relaunch-advised",
                f"TDs launched under the running {running.version} (rated {running_status}) "
                f"will be rated TDRelaunchAdvised by Intel's quote verification once "
                f"{target.version} runs; verifier policies that reject it need those TDs "
                "relaunched",
            )
    if doc.svn_gain is False and target.version != running.version:
        same = target.seamsvn == running.seamsvn
        report.warn(
            "no-svn-gain",
            f"{target.version} {'has the same SEAMSVN' if same else 'has a lower SEAMSVN'} "
            f"({after_svn}) as the running {running.version} ({before_svn}): it brings no TCB "
            "gain and changes MRSEAM for TDs launched from now on (update verifiers' "
            "allowlists first: tdxupdate --reference-values)",
        )
    would = "would " if settings.dry_run else "will "
    report.note(
        f"Attestation: running TDs {would}report TEE_TCB_SVN2 {after_svn} (now {before_svn}) "
        f"and keep TEE_TCB_SVN; TDs launched afterwards {would}measure MRSEAM "
        f"{_short(target)} (now {_short(running)})"
    )


def _annotate_update(
    report: Report, doc: UpdateDoc, running: ModuleValues, tcb: TcbInfo | None
) -> None:
    target = _target(doc)
    if doc.svn_gain is UNSET:  # before_install did not run: nothing was (or would be) installed
        _set_update_keys(doc, running, target)
        if tcb is not None and target.version is not None and report.tcb is not None:
            report.tcb.target = tcb.status(target.seamsvn, target.version)
            report.tcb.td_relaunch_advised = relaunch_advised(report.tcb.running, report.tcb.target)
    if doc.dry_run or not doc.changed or target.version is None:
        return
    before_svn = fmt_svn(running.seamsvn) or "unknown"
    report.note(
        f"Attestation: running TDs keep TEE_TCB_SVN (the module they launched under, "
        f"{before_svn} for TDs launched under {running.version}) and now report TEE_TCB_SVN2 "
        f"{fmt_svn(target.seamsvn) or 'unknown'}; TDs launched from now on measure MRSEAM "
        f"{_short(target)} (module identity {target.identity or 'unknown'})"
    )


def _annotate_reference_values(report: Report, tcb: TcbInfo | None) -> None:
    values = report.reference_values
    if values is None:
        return
    entries: list[dict[str, Any]] = [values.running]
    if values.target is not None:
        entries.append(values.target)
    for entry in entries:
        svn = entry.get("seamsvn")
        version = try_parse(str(entry.get("version") or ""))
        entry["tcb_status"] = (
            tcb.status(int(svn, 16), version) if tcb is not None and svn is not None else None
        )
    if tcb is not None and values.target is not None and report.tcb is not None:
        report.tcb.target = values.target["tcb_status"]
        report.tcb.td_relaunch_advised = relaunch_advised(report.tcb.running, report.tcb.target)
