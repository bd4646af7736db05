"""``--metrics-file PATH``: a Prometheus node-exporter textfile (issue 6, "Metrics").

The node exporter's textfile collector reads every ``*.prom`` file in its directory on each
scrape, in the Prometheus text exposition format 0.0.4. The file is built from the JSON
document of any action (cli-contract.md §3) and replaced atomically: written to a temporary
file in the same directory (a name not ending in ``.prom``, so a scrape never reads it half
written), fsynced, renamed over the old file, directory fsynced. A failure leaves the old file
in place and no temporary file behind.

Info-style metrics (``*_info{version="…"} 1``) are gauges, because the 0.0.4 text format has
no ``info`` type. A metric whose value this run did not learn is left out rather than written
as 0, so "unknown" never reads as "none". The values are read from the typed
:class:`~tdxupdate.report.Report` of the run, the same one the JSON document is made of.
"""

from __future__ import annotations

import errno
import math
from collections.abc import Iterable
from pathlib import Path

from tdxupdate import fsio, safedir
from tdxupdate.errors import IOFailure, PermissionDenied, TdxError
from tdxupdate.report import UNSET, HostDoc, Report, UpdateDoc
from tdxupdate.versions import try_parse

PREFIX = "tdxupdate"


def _update(report: Report) -> UpdateDoc | None:
    """The ``--update`` keys of the run, None for other actions or before they were known."""
    return report.update if report.action == "update" else None


def _known(value: object) -> object:
    return None if value is UNSET else value


def result_of(report: Report) -> str:
    """The outcome of a run as one token.

    ``success`` (the running version changed), ``nothing-to-do``, ``dry-run`` (a plan to install
    something) for ``--update``;
    ``ok`` for the other actions; otherwise the error token (``device-busy``, ``locked``,
    ``module-lost`` …, cli-contract.md §2).
    """
    if report.error is not None:
        return report.error.code or "error"
    if report.action == "update":
        update = report.update
        if update is not None and update.changed:
            return "success"
        target = update.to_version if update is not None else None
        if update is not None and update.dry_run and target not in (None, update.from_version):
            return "dry-run"  # a plan was made; with nothing to install it is nothing-to-do
        return "nothing-to-do"
    return "ok"


def exit_code_of(report: Report) -> int:
    return 0 if report.error is None else report.error.exit_code


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


def _running_version(report: Report, host: HostDoc | None) -> str | None:
    """The module running *after* this run: the target when an update changed it."""
    update = _update(report)
    if update is not None:
        if update.fatal:
            return None
        if update.changed and update.to_version:
            return str(update.to_version)
    version = host.module_version if host is not None else None
    return str(version) if version else None


def _running_identity(report: Report, host: HostDoc | None, running: str) -> tuple[str, str]:
    """SEAMSVN and MRSEAM of the module running after this run, ``unknown`` when not known."""
    update = _update(report)
    svn: object
    mrseam: object
    if update is not None and running == update.to_version and update.changed:
        svn, mrseam = _known(update.to_seamsvn), _known(update.to_mrseam)
    elif host is not None:
        svn, mrseam = host.seamsvn, host.mrseam or host.mrseam_prefix
    else:
        svn = mrseam = None
    return (str(svn) if svn else "unknown", str(mrseam) if mrseam else "unknown")


#: Error tokens after which the kernel may have spent an update (§4 steps 7–9): the count read
#: before the attempt can no longer be trusted.
_COUNT_UNCERTAIN = frozenset({"kernel-error", "version-mismatch", "module-lost", "timeout"})


def _count(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _remaining(report: Report, host: HostDoc | None) -> int | None:
    """``num_remaining_updates`` after this run, when it is known."""
    before = _count(host.num_remaining_updates) if host is not None else None
    if report.action != "update":
        return before
    update = report.update
    after = _count(_known(update.remaining_after)) if update is not None else None
    if after is not None:
        return after
    if update is not None and update.changed:
        warned = "remaining-updates-not-decremented" in report.warnings
        if before is not None and before > 0 and not warned:
            # kernel-abi.md §1 G5: "After each successful update, the number reduces by one",
            # and the orchestrator warns when it did not.
            return before - 1
        return None
    if report.error is not None and report.error.code in _COUNT_UNCERTAIN:
        return None
    return before


def _update_available(report: Report, running: str | None) -> bool | None:
    if report.candidates is None:
        return None
    current = try_parse(running) if running else None
    for c in report.candidates:
        if not c.eligible:
            continue
        version = try_parse(str(c.version))
        if current is None or (version is not None and version > current):
            return True
    return False


def render_textfile(report: Report, *, duration_s: float, now: float) -> str:
    """The textfile for one run's ``report`` (any action)."""
    host = report.host
    families: list[_Family] = []

    def family(name: str, help_text: str) -> _Family:
        f = _Family(name, help_text)
        families.append(f)
        return f

    running = _running_version(report, host)
    if running:
        seamsvn, mrseam = _running_identity(report, host, running)
        family(
            "module_info",
            "The TDX module running on this host: version, SEAMSVN and MRSEAM (what TDs "
            "attest; 8 hex digits when only those are published; unknown when not known).",
        ).add(1, version=running, seamsvn=seamsvn, mrseam=mrseam)
    seamldr = host.seamldr_version if host is not None else None
    if seamldr:
        family("seamldr_info", "The P-SEAMLDR version on this host.").add(1, version=str(seamldr))
    remaining = _remaining(report, host)
    if remaining is not None:
        family(
            "remaining_updates",
            "Runtime TDX module updates the P-SEAMLDR allows before the next reboot.",
        ).add(remaining)
    available = _update_available(report, running)
    if available is not None:
        family(
            "update_available",
            "1 when the repository holds a newer module eligible for this host "
            "(known after --list and --update).",
        ).add(1 if available else 0)
    update = _update(report)
    host_lost = host is not None and host.module_lost is True
    if update is not None or host is not None:
        # A state of the host: 1 from the update that lost the module until a reboot brings
        # it back, on every run that reads the host, not only the one that lost it.
        family(
            "module_lost",
            "1 while the TDX module is lost (every TD was killed; reboot needed).",
        ).add(1 if (report.update is not None and report.update.fatal) or host_lost else 0)
    family("last_run_timestamp_seconds", "When the last tdxupdate run ended (Unix time).").add(now)
    family(
        "last_result",
        "The result of the last run: success, nothing-to-do, dry-run, ok, or the error token.",
    ).add(1, action=report.action or "none", result=result_of(report))
    family("last_exit_code", "The exit code of the last run (see tdxupdate(8)).").add(
        exit_code_of(report)
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


def write_textfile(path: Path, report: Report, *, duration_s: float, now: float) -> None:
    """Write the textfile for ``report`` to ``path`` atomically, mode 0644.

    Raises :class:`IOFailure` (74) or :class:`PermissionDenied` (77) naming ``path``.
    """
    text = render_textfile(report, duration_s=duration_s, now=now)
    write_atomically(Path(path), text.encode("utf-8"))
