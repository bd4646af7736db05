"""``--metrics-file PATH``: a Prometheus node-exporter textfile (issue 6, "Metrics").

The node exporter's textfile collector reads every ``*.prom`` file in its directory on each
scrape, in the Prometheus text exposition format 0.0.4. The file is built from the JSON
document of any action (cli-contract.md §3) and replaced atomically: written to a temporary
file in the same directory (a name not ending in ``.prom``, so a scrape never reads it half
written), fsynced, renamed over the old file, directory fsynced. A failure leaves the old file
in place and no temporary file behind.

Info-style metrics (``*_info{version="…"} 1``) are gauges, because the 0.0.4 text format has
no ``info`` type. A metric whose value this run did not learn is left out rather than written
as 0, so "unknown" never reads as "none".
"""

from __future__ import annotations

import errno
import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from tdxupdate import fsio, safedir
from tdxupdate.errors import IOFailure, PermissionDenied, TdxError
from tdxupdate.versions import try_parse

PREFIX = "tdxupdate"


def result_of(doc: Mapping[str, Any]) -> str:
    """The outcome of a run as one token.

    ``success`` (the running version changed), ``nothing-to-do``, ``dry-run`` (a plan to install
    something) for ``--update``;
    ``ok`` for the other actions; otherwise the error token (``device-busy``, ``locked``,
    ``module-lost`` …, cli-contract.md §2).
    """
    error = doc.get("error")
    if error:
        return str(error.get("code") or "error")
    if doc.get("action") == "update":
        if doc.get("changed"):
            return "success"
        target = doc.get("to_version")
        if doc.get("dry_run") and target is not None and target != doc.get("from_version"):
            return "dry-run"  # a plan was made; with nothing to install it is nothing-to-do
        return "nothing-to-do"
    return "ok"


def exit_code_of(doc: Mapping[str, Any]) -> int:
    error = doc.get("error")
    if not error:
        return 0
    code = error.get("exit_code")
    return code if isinstance(code, int) else 1


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _number(value: float) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


class _Family:
    def __init__(self, name: str, help_text: str):
        self.name = f"{PREFIX}_{name}"
        self.help = help_text
        self.samples: list[tuple[dict[str, str], float]] = []

    def add(self, value: float, **labels: str) -> None:
        self.samples.append((labels, value))

    def lines(self) -> Iterable[str]:
        yield f"# HELP {self.name} {_escape_help(self.help)}"
        yield f"# TYPE {self.name} gauge"
        for labels, value in self.samples:
            text = ",".join(f'{k}="{_escape_label(v)}"' for k, v in sorted(labels.items()))
            shown = f"{self.name}{{{text}}}" if text else self.name
            yield f"{shown} {_number(value)}"


def _running_version(doc: Mapping[str, Any], host: Mapping[str, Any]) -> str | None:
    """The module running *after* this run: the target when an update changed it."""
    if doc.get("action") == "update":
        if doc.get("fatal"):
            return None
        if doc.get("changed") and doc.get("to_version"):
            return str(doc["to_version"])
    version = host.get("module_version")
    return str(version) if version else None


def _running_identity(
    doc: Mapping[str, Any], host: Mapping[str, Any], running: str
) -> tuple[str, str]:
    """SEAMSVN and MRSEAM of the module running after this run, ``unknown`` when not known."""
    if doc.get("action") == "update" and running == doc.get("to_version") and doc.get("changed"):
        svn, mrseam = doc.get("to_seamsvn"), doc.get("to_mrseam")
    else:
        svn, mrseam = host.get("seamsvn"), host.get("mrseam") or host.get("mrseam_prefix")
    return (str(svn) if svn else "unknown", str(mrseam) if mrseam else "unknown")


#: Error tokens after which the kernel may have spent an update (§4 steps 7–9): the count read
#: before the attempt can no longer be trusted.
_COUNT_UNCERTAIN = frozenset({"kernel-error", "version-mismatch", "module-lost", "timeout"})


def _remaining(doc: Mapping[str, Any], host: Mapping[str, Any]) -> int | None:
    """``num_remaining_updates`` after this run, when it is known."""
    before = host.get("num_remaining_updates")
    before = before if isinstance(before, int) and not isinstance(before, bool) else None
    if doc.get("action") != "update":
        return before
    after = doc.get("remaining_after")
    if isinstance(after, int) and not isinstance(after, bool):
        return after
    if doc.get("changed"):
        warned = "remaining-updates-not-decremented" in (doc.get("warnings") or ())
        if before is not None and before > 0 and not warned:
            # kernel-abi.md §1 G5: "After each successful update, the number reduces by one",
            # and the orchestrator warns when it did not.
            return before - 1
        return None
    error = doc.get("error") or {}
    if error.get("code") in _COUNT_UNCERTAIN:
        return None
    return before


def _update_available(doc: Mapping[str, Any], running: str | None) -> bool | None:
    candidates = doc.get("candidates")
    if not isinstance(candidates, list):
        return None
    current = try_parse(running) if running else None
    for c in candidates:
        if not c.get("eligible"):
            continue
        version = try_parse(str(c.get("version", "")))
        if current is None or (version is not None and version > current):
            return True
    return False


def render_textfile(doc: Mapping[str, Any], *, duration_s: float, now: float) -> str:
    """The textfile for one run's JSON document ``doc`` (any action)."""
    host = doc.get("host") or {}
    families: list[_Family] = []

    def family(name: str, help_text: str) -> _Family:
        f = _Family(name, help_text)
        families.append(f)
        return f

    running = _running_version(doc, host)
    if running:
        seamsvn, mrseam = _running_identity(doc, host, running)
        family(
            "module_info",
            "The TDX module running on this host: version, SEAMSVN and MRSEAM (what TDs "
            "attest; 8 hex digits when only those are published; unknown when not known).",
        ).add(1, version=running, seamsvn=seamsvn, mrseam=mrseam)
    seamldr = host.get("seamldr_version")
    if seamldr:
        family("seamldr_info", "The P-SEAMLDR version on this host.").add(1, version=str(seamldr))
    remaining = _remaining(doc, host)
    if remaining is not None:
        family(
            "remaining_updates",
            "Runtime TDX module updates the P-SEAMLDR allows before the next reboot.",
        ).add(remaining)
    available = _update_available(doc, running)
    if available is not None:
        family(
            "update_available",
            "1 when the repository holds a newer module eligible for this host "
            "(known after --list and --update).",
        ).add(1 if available else 0)
    host_lost = isinstance(host, Mapping) and host.get("module_lost") is True
    if (doc.get("action") == "update" and "fatal" in doc) or "module_lost" in host:
        # A state of the host: 1 from the update that lost the module until a reboot brings
        # it back, on every run that reads the host, not only the one that lost it.
        family(
            "module_lost",
            "1 while the TDX module is lost (every TD was killed; reboot needed).",
        ).add(1 if doc.get("fatal") or host_lost else 0)
    family("last_run_timestamp_seconds", "When the last tdxupdate run ended (Unix time).").add(now)
    family(
        "last_result",
        "The result of the last run: success, nothing-to-do, dry-run, ok, or the error token.",
    ).add(1, action=str(doc.get("action") or "none"), result=result_of(doc))
    family("last_exit_code", "The exit code of the last run (see tdxupdate(8)).").add(
        exit_code_of(doc)
    )
    family("last_run_duration_seconds", "How long the last tdxupdate run took.").add(
        round(duration_s, 6)
    )
    lines = [line for f in families for line in f.lines()]
    return "\n".join(lines) + "\n"


def _write_error(exc: OSError, path: Path) -> TdxError:
    what = f"{path}: cannot write the metrics file"
    known = fsio.cases(
        (fsio.MISSING, IOFailure, f"directory {path.parent} does not exist"),
        (fsio.DENIED, PermissionDenied, "permission denied"),
        (
            fsio.READ_ONLY,
            IOFailure,
            f"read-only file system (under systemd, list {path.parent} in ReadWritePaths=)",
        ),
    )
    return fsio.os_error(exc, what, known)


def write_atomically(path: Path, data: bytes, *, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data`` so readers see the old or the new file, never a mix.

    The directory must exist and must not be writable by group or others (it may belong to
    the exporter's user); the file is replaced through the directory's descriptor
    (:func:`tdxupdate.fsio.write_atomically`), so a symbolic link planted as ``path`` is
    replaced, never written through.
    """
    path = Path(path)
    try:
        directory = safedir.open_existing(path.parent, "metrics directory", any_owner=True)
    except OSError as exc:
        raise _write_error(exc, path) from exc
    if directory is None:
        raise _write_error(FileNotFoundError(errno.ENOENT, "No such file or directory"), path)
    with directory:
        # The exporter runs as another user and must read it.
        fsio.write_atomically(
            directory,
            path.name,
            data,
            mode=mode,
            error=lambda exc, _stage: _write_error(exc, path),
            strict_dir_sync=False,
        )


def write_textfile(
    path: Path, report_doc: Mapping[str, Any], *, duration_s: float, now: float
) -> None:
    """Write the textfile for ``report_doc`` to ``path`` atomically, mode 0644.

    Raises :class:`IOFailure` (74) or :class:`PermissionDenied` (77) naming ``path``.
    """
    text = render_textfile(report_doc, duration_s=duration_s, now=now)
    write_atomically(Path(path), text.encode("utf-8"))
