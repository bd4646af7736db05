"""Text for people, from the same JSON document ``--json`` prints (cli-contract.md §3)."""

from __future__ import annotations

from typing import Any

from tdxupdate.actions import Report

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
}


def _fmt(value: object) -> str:
    return "unknown" if value is None else str(value)


def render_host(host: dict[str, Any]) -> list[str]:
    fmt = host.get("image_format")
    fallback = host.get("image_format_fallback")
    fmt_text = _fmt(fmt) + (
        f" (falls back to {fallback} if the kernel refuses it)" if fallback else ""
    )
    layout = host.get("sysfs_layout")
    if layout and host.get("generation"):
        layout = f"{layout} ({host['generation']}, kernel {_fmt(host.get('kernel_release'))})"
    lines = [
        "TDX host",
        f"  module version       {_fmt(host.get('module_version'))}",
        f"  P-SEAMLDR version    {_fmt(host.get('seamldr_version'))}",
        f"  remaining updates    {_fmt(host.get('num_remaining_updates'))}",
        f"  CPU signature        {_fmt(host.get('cpu_signature'))}",
        f"  sysfs layout         {_fmt(layout)}",
        f"  upload interface     {_fmt(host.get('upload_dir'))}",
        f"  image format         {fmt_text}",
        "Checks",
    ]
    width = max((len(c["name"]) for c in host.get("checks", [])), default=0)
    for c in host.get("checks", []):
        lines.append(f"  {'PASS' if c['ok'] else 'FAIL'}  {c['name']:<{width}}  {c['detail']}")
    return lines


def render_candidates(candidates: list[dict[str, Any]]) -> list[str]:
    if not candidates:
        return ["The repository offers no modules."]
    vwidth = max(len("VERSION"), *(len(c["version"]) for c in candidates))
    lines = [f"{'VERSION':<{vwidth}}  ELIGIBLE  FORMAT  WHY"]
    indent = " " * (vwidth + 20)
    for c in candidates:
        fmt = c.get("image_format") or "-"
        if c["eligible"]:
            whys = ["eligible" + (" (debug-signed, allowed)" if c.get("debug") else "")]
        else:
            details = c.get("details") or [REASON_WORDS.get(r, r) for r in c["reasons"]]
            whys = [_without_version(c["version"], d) for d in details]
        eligible = "yes" if c["eligible"] else "no"
        lines.append(f"{c['version']:<{vwidth}}  {eligible:<8}  {fmt:<6}  {whys[0]}")
        lines += [f"{indent}{why}" for why in whys[1:]]
    return lines


def _without_version(version: str, detail: str) -> str:
    """The row already names the version: ``1.5.25 needs …`` reads ``needs …`` in the table."""
    for prefix in (f"{version}: ", f"{version} "):
        if detail.startswith(prefix):
            return detail[len(prefix) :]
    return detail


def render_images(images: list[dict[str, Any]]) -> list[str]:
    lines: list[str] = []
    for img in images:
        status = "OK" if img["ok"] else "FAILED"
        lines.append(
            f"{img['path']}: {status} (version {_fmt(img.get('version'))}, "
            f"format {_fmt(img.get('image_format'))})"
        )
        for c in img["checks"]:
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
    return lines


def render(report: Report) -> list[str]:
    """Lines for stdout (the report); warnings and errors go to stderr separately."""
    doc = report.doc
    lines: list[str] = []
    if report.action == "status" and "host" in doc:
        lines += render_host(doc["host"])
    elif report.action == "list" and "candidates" in doc:
        host = doc.get("host", {})
        lines.append(
            f"Running module {_fmt(host.get('module_version'))}, P-SEAMLDR "
            f"{_fmt(host.get('seamldr_version'))}, CPU {_fmt(host.get('cpu_signature'))}"
        )
        lines += render_candidates(doc["candidates"])
    elif report.action == "update":
        chose_badly = report.error is not None and report.error.code in (
            "not-eligible",
            "version-unknown",
        )
        if "candidates" in doc and (doc.get("dry_run") or chose_badly):
            lines += render_candidates(doc["candidates"])
        if report.live is None:
            lines += report.notes
    elif report.action == "verify" and "images" in doc:
        lines += render_images(doc["images"])
    elif report.action == "history" and "history" in doc:
        lines += render_history(doc["history"])
    if report.action != "update":
        lines += report.notes
    return lines
