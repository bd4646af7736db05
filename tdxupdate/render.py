"""Text for people, from the same JSON document ``--json`` prints (cli-contract.md §3)."""

from __future__ import annotations

from typing import Any

from tdxupdate.report import (
    CandidateDoc,
    HostDoc,
    ReferenceValuesDoc,
    Report,
    TcbDoc,
    VerifiedImageDoc,
)

REASON_WORDS = {
    "not-in-mapping": "not in the mapping file",
    "image-missing": "no image in the repository",
    "image-invalid": "image failed verification",
    "signature-invalid": "signature does not verify",
    "untrusted-signer": "signed by an untrusted key",
    "major-minor-mismatch": "different major.minor than the running module",
    "older-than-running": "older than the running module",
    "same-as-running": "the running version",
    "below-min-td-preserving": "running module too old for a TD-preserving update",
    "seamldr-incompatible": "P-SEAMLDR incompatible",
    "cpu-unsupported": "CPU not supported",
    "debug-module": "debug-signed",
    "not-strict-compatible": "not strictly compatible with the running module",
    "not-allowlisted": "MRSEAM not in the allowlist",
    "seamsvn-below-minimum": "SEAMSVN below the allowlist's minimum",
}

_SOURCE_WORDS = {
    "published": "Intel's published release",
    "repository": "the repository's image of this version",
}


def render_identity(values: dict[str, Any], indent: str = "  ") -> list[str]:
    """SEAMSVN, MRSEAM and module identity of one module (host JSON or reference values)."""
    svn = values.get("seamsvn")
    version = _fmt(values.get("module_version") or values.get("version"))
    source = values.get("identity_source") or values.get("source")
    if svn is None:
        why = (
            f"{version} is not in Intel's published release table and the repository has no "
            "image of it that passed its checks"
        )
        return [
            f"{indent}module identity      {_fmt(values.get('module_identity'))}",
            f"{indent}SEAMSVN              unknown ({why})",
            f"{indent}MRSEAM               unknown",
        ]
    mrseam = values.get("mrseam")
    if mrseam is None and values.get("mrseam_prefix"):
        mrseam = f"{values['mrseam_prefix']}… (first 8 digits; the rest is not published)"
    lines = [
        f"{indent}module identity      {_fmt(values.get('module_identity'))}",
        f"{indent}SEAMSVN              {svn} (TEE_TCB_SVN2 major {values.get('seamsvn_major')}, "
        f"minor {values.get('seamsvn_minor')}; from {_SOURCE_WORDS.get(source or '', 'unknown')})",
        f"{indent}MRSEAM               {_fmt(mrseam)}",
    ]
    if values.get("tcb_status") is not None:
        lines.append(f"{indent}TCB status           {values['tcb_status']}")
    return lines


def _fmt(value: object) -> str:
    return "unknown" if value is None else str(value)


def render_host(host: HostDoc) -> list[str]:
    fmt = host.image_format
    fallback = host.image_format_fallback
    fmt_text = _fmt(fmt) + (
        f" (falls back to {fallback} if the kernel refuses it)" if fallback else ""
    )
    layout = host.sysfs_layout
    if layout and host.generation:
        layout = f"{layout} ({host.generation}, kernel {_fmt(host.kernel_release)})"
    lines = [
        "TDX host",
        f"  module version       {_fmt(host.module_version)}",
        f"  P-SEAMLDR version    {_fmt(host.seamldr_version)}",
        f"  remaining updates    {_fmt(host.num_remaining_updates)}",
        f"  CPU signature        {_fmt(host.cpu_signature)}",
        f"  sysfs layout         {_fmt(layout)}",
        f"  upload interface     {_fmt(host.upload_dir)}",
        f"  image format         {fmt_text}",
        *render_identity(host.to_json()),
    ]
    if host.in_mapping is False:
        lines.append(
            f"  mapping file         running module {_fmt(host.module_version)} is not in "
            "the mapping file"
        )
    lines.append("Checks")
    width = max((len(c["name"]) for c in host.checks), default=0)
    for c in host.checks:
        lines.append(f"  {'PASS' if c['ok'] else 'FAIL'}  {c['name']:<{width}}  {c['detail']}")
    return lines


def render_candidates(candidates: list[CandidateDoc]) -> list[str]:
    if not candidates:
        return ["The repository offers no modules."]
    vwidth = max(len("VERSION"), *(len(c.version) for c in candidates))
    lines = [f"{'VERSION':<{vwidth}}  ELIGIBLE  FORMAT  SEAMSVN  MRSEAM     WHY"]
    indent = " " * (vwidth + 40)
    for c in candidates:
        fmt = c.image_format or "-"
        if c.eligible:
            whys = ["eligible" + (" (debug-signed, allowed)" if c.debug else "")]
        else:
            details = c.details or [REASON_WORDS.get(r, r) for r in c.reasons]
            whys = [_without_version(c.version, d) for d in details]
        eligible = "yes" if c.eligible else "no"
        svn = c.seamsvn or "-"  # four digits: the width of the column
        mrseam = (c.mrseam or "")[:8] or "-"
        if c.eligible and c.svn_gain is False:
            whys[0] += " (no SVN gain: same SEAMSVN as the running module)"
        if isinstance(c.tcb_status, str) and c.tcb_status:
            whys[0] += f" [TCB {c.tcb_status}]"
        lines.append(
            f"{c.version:<{vwidth}}  {eligible:<8}  {fmt:<6}  {svn:<7}  {mrseam:<9}  {whys[0]}"
        )
        lines += [f"{indent}{why}" for why in whys[1:]]
    return lines


def _without_version(version: str, detail: str) -> str:
    """The row already names the version: ``1.5.25 needs …`` reads ``needs …`` in the table."""
    for prefix in (f"{version}: ", f"{version} "):
        if detail.startswith(prefix):
            return detail[len(prefix) :]
    return detail


def render_images(images: list[VerifiedImageDoc]) -> list[str]:
    lines: list[str] = []
    for img in images:
        status = "OK" if img.ok else "FAILED"
        lines.append(
            f"{img.path}: {status} (version {_fmt(img.version)}, format {_fmt(img.image_format)})"
        )
        for c in img.checks:
            lines.append(f"  {'PASS' if c['ok'] else 'FAIL'}  {c['name']:<14}  {c['detail']}")
    return lines


def render_history(records: list[dict[str, Any]]) -> list[str]:
    if not records:
        return ["No update attempts recorded on this host."]
    lines = []
    for r in records:
        err = f" [{r['kernel_error']}]" if r.get("kernel_error") else ""
        lines.append(
            f"{r.get('time', '?')}  {r.get('from_version', '?')} -> {r.get('to_version', '?')}  "
            f"{r.get('result', '?')}{err}  format {r.get('image_format', '?')}  "
            f"{r.get('duration_s', '?')} s  remaining {r.get('remaining_before', '?')} -> "
            f"{r.get('remaining_after', '?')}"
        )
        if r.get("seamsvn") or r.get("from_seamsvn"):
            # on the same line: one line per attempt, for grep
            before = r.get("from_mrseam") or r.get("from_mrseam_prefix")
            after = r.get("mrseam")
            lines[-1] += (
                f"  SEAMSVN {r.get('from_seamsvn') or 'unknown'} -> "
                f"{r.get('seamsvn') or 'unknown'}  "
                f"MRSEAM {before[:8] if before else 'unknown'} -> "
                f"{after[:8] if after else 'unknown'}"
            )
    return lines


def render_reference_values(values: ReferenceValuesDoc, tcb: TcbDoc | None) -> list[str]:
    lines = ["Reference values for attestation verifiers (TD quote: TEE_TCB_SVN2, MRSEAM)"]
    running = values.running
    if running:
        lines.append(f"Running module {_fmt(running.get('version'))}")
        lines += render_identity(running)
        if running.get("in_mapping") is False:
            lines.append(f"  running module {running.get('version')} is not in the mapping file")
    target = values.target
    if target:
        lines.append(f"Module an update would install: {_fmt(target.get('version'))}")
        lines += render_identity(target)
    else:
        lines.append(f"No update would be installed: {_fmt(values.target_reason)}")
    if tcb and tcb.td_relaunch_advised:
        lines.append(
            "TDs launched under the running module will be rated TDRelaunchAdvised after the update"
        )
    return lines


def render(report: Report) -> list[str]:
    """Lines for stdout (the report); warnings and errors go to stderr separately."""
    lines: list[str] = []
    if report.action == "status" and report.host is not None:
        lines += render_host(report.host)
        tcb = report.tcb
        if tcb:
            lines.insert(
                lines.index("Checks"),
                f"  TCB status           {tcb.running or 'not rated'} ({tcb.file})",
            )
    elif report.action == "list" and report.candidates is not None:
        host = report.host
        mrseam = host.mrseam or host.mrseam_prefix if host is not None else None
        lines.append(
            f"Running module {_fmt(host.module_version if host else None)} (SEAMSVN "
            f"{_fmt(host.seamsvn if host else None)}, MRSEAM {_fmt(mrseam and mrseam[:8])}), "
            f"P-SEAMLDR {_fmt(host.seamldr_version if host else None)}, CPU "
            f"{_fmt(host.cpu_signature if host else None)}"
        )
        lines += render_candidates(report.candidates)
    elif report.action == "update":
        chose_badly = report.error is not None and report.error.code in (
            "not-eligible",
            "version-unknown",
        )
        dry_run = report.update is not None and report.update.dry_run
        if report.candidates is not None and (dry_run or chose_badly):
            lines += render_candidates(report.candidates)
        if report.live is None:
            lines += report.notes
    elif report.action == "reference-values" and report.reference_values is not None:
        lines += render_reference_values(report.reference_values, report.tcb)
    elif report.action == "verify" and report.images is not None:
        lines += render_images(report.images)
    elif report.action == "history" and report.history is not None:
        lines += render_history(report.history.records)
    if report.action != "update":
        lines += report.notes
    return lines
