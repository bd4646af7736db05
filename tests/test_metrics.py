"""tdxupdate.metrics: the node-exporter textfile, checked with prometheus_client's parser."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tdxupdate import metrics, safedir
from tdxupdate.errors import TdxError
from tdxupdate.report import CandidateDoc, HostDoc, Report, UpdateDoc

NOW = 1_764_129_600.5


def host(**extra: Any) -> HostDoc:
    h: dict[str, Any] = {
        "module_version": "1.5.06",
        "seamldr_version": "1.5.02",
        "num_remaining_updates": 3,
        "cpu_signature": "0x806f8",
        "sysfs_layout": "flat",
        "upload_dir": None,
        "image_format": None,
        "image_format_fallback": None,
        "generation": None,
        "kernel_release": None,
        "checks": [],
        "module_lost": False,
    }
    h.update(extra)
    return HostDoc(**h)


def candidate(version: str, eligible: bool) -> CandidateDoc:
    reasons = [] if eligible else ["x"]
    return CandidateDoc(version, eligible, reasons, [], None, None, None, None, None, None)


def doc(action: str, **extra: Any) -> Report:
    """The report of one run: ``host``, ``candidates``, ``warnings`` and ``error`` are the
    report's; any other key is one of the ``--update`` keys (:class:`UpdateDoc`)."""
    report = Report(
        action,
        host=extra.pop("host", None),
        candidates=extra.pop("candidates", None),
        warnings=list(extra.pop("warnings", [])),
        error=extra.pop("error", None),
    )
    if extra:
        report.update = UpdateDoc(**extra)
    return report


#: the SEAMSVN and MRSEAM labels of a module whose values the document does not carry
UNKNOWN = {"seamsvn": "unknown", "mrseam": "unknown"}


def update_doc(**extra: Any) -> Report:
    base: dict[str, Any] = {
        "host": host(),
        "candidates": [
            candidate("1.5.25", False),
            candidate("1.5.24", True),
            candidate("1.5.20", True),
            candidate("1.5.06", False),
        ],
        "selected": None,
        "dry_run": False,
        "changed": False,
        "from_version": "1.5.06",
        "to_version": "1.5.24",
        "kernel_error": None,
        "fatal": False,
    }
    base.update(extra)
    return doc("update", **base)


def failed(code: str, exit_code: int) -> dict[str, Any]:
    error = TdxError("…", code=code)
    assert error.exit_code == exit_code
    return {"error": error}


Samples = dict[str, list[tuple[dict[str, str], float]]]


def parse(text: str) -> Samples:
    """name -> samples, through the real Prometheus text parser; every family a gauge."""
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        assert family.type == "gauge", family.name
        assert family.documentation, family.name
        out[family.name] = [(dict(s.labels), s.value) for s in family.samples]
    return out


def render(d: Report, duration: float = 2.25) -> Samples:
    return parse(metrics.render_textfile(d, duration_s=duration, now=NOW))


def value(m: Samples, name: str) -> float:
    [(labels, v)] = m[f"tdxupdate_{name}"]
    assert labels == {}
    return v


# --- content --------------------------------------------------------------------------------


def test_successful_update_reports_the_new_module() -> None:
    m = render(update_doc(changed=True))
    assert m["tdxupdate_module_info"] == [({"version": "1.5.24", **UNKNOWN}, 1.0)]
    assert m["tdxupdate_seamldr_info"] == [({"version": "1.5.02"}, 1.0)]
    assert value(m, "remaining_updates") == 2  # kernel ABI: one fewer after a success
    assert value(m, "update_available") == 0  # 1.5.20 is eligible but older than 1.5.24
    assert value(m, "module_lost") == 0
    assert value(m, "last_run_timestamp_seconds") == NOW
    assert m["tdxupdate_last_result"] == [({"action": "update", "result": "success"}, 1.0)]
    assert value(m, "last_exit_code") == 0
    assert value(m, "last_run_duration_seconds") == 2.25


def test_remaining_after_in_the_document_wins() -> None:
    m = render(update_doc(changed=True, remaining_after=7))
    assert value(m, "remaining_updates") == 7


def test_remaining_left_out_when_the_kernel_did_not_decrement() -> None:
    d = update_doc(changed=True, warnings=["remaining-updates-not-decremented"])
    assert "tdxupdate_remaining_updates" not in render(d)


def test_dry_run_keeps_running_version_and_sees_the_update() -> None:
    m = render(update_doc(dry_run=True))
    assert m["tdxupdate_module_info"] == [({"version": "1.5.06", **UNKNOWN}, 1.0)]
    assert value(m, "remaining_updates") == 3
    assert value(m, "update_available") == 1
    assert m["tdxupdate_last_result"] == [({"action": "update", "result": "dry-run"}, 1.0)]


def test_nothing_to_do() -> None:
    d = update_doc(
        candidates=[candidate("1.5.06", False), candidate("1.5.05", False)], to_version=None
    )
    m = render(d)
    assert value(m, "update_available") == 0
    assert m["tdxupdate_last_result"] == [({"action": "update", "result": "nothing-to-do"}, 1.0)]
    assert m["tdxupdate_module_info"] == [({"version": "1.5.06", **UNKNOWN}, 1.0)]


def test_device_busy_keeps_the_count_and_reports_75() -> None:
    d = update_doc(kernel_error="transferring:device-busy", **failed("device-busy", 75))
    m = render(d)
    assert value(m, "remaining_updates") == 3
    assert value(m, "update_available") == 1
    assert m["tdxupdate_last_result"] == [({"action": "update", "result": "device-busy"}, 1.0)]
    assert value(m, "last_exit_code") == 75


@pytest.mark.parametrize("code", ["kernel-error", "version-mismatch", "timeout"])
def test_count_left_out_when_the_kernel_may_have_spent_an_update(code: str) -> None:
    exit_code = 75 if code == "timeout" else 1
    m = render(update_doc(kernel_error="transferring:hw-error", **failed(code, exit_code)))
    assert "tdxupdate_remaining_updates" not in m
    assert value(m, "last_exit_code") == exit_code


def test_module_lost() -> None:
    d = update_doc(
        fatal=True, kernel_error="transferring:firmware-invalid", **failed("module-lost", 1)
    )
    m = render(d)
    assert "tdxupdate_module_info" not in m
    assert "tdxupdate_remaining_updates" not in m
    assert value(m, "module_lost") == 1
    assert m["tdxupdate_last_result"] == [({"action": "update", "result": "module-lost"}, 1.0)]


def test_refused_before_reading_the_host_has_only_run_metrics() -> None:
    m = render(doc("update", **failed("locked", 75)))
    assert set(m) == {
        "tdxupdate_last_run_timestamp_seconds",
        "tdxupdate_last_result",
        "tdxupdate_last_exit_code",
        "tdxupdate_last_run_duration_seconds",
    }
    assert m["tdxupdate_last_result"] == [({"action": "update", "result": "locked"}, 1.0)]


def test_status_reports_the_host_but_not_availability() -> None:
    m = render(doc("status", host=host()))
    assert m["tdxupdate_module_info"] == [({"version": "1.5.06", **UNKNOWN}, 1.0)]
    assert value(m, "remaining_updates") == 3
    assert "tdxupdate_update_available" not in m
    # A state of the host, known whenever the host was read (every host document has it).
    assert value(m, "module_lost") == 0
    assert m["tdxupdate_last_result"] == [({"action": "status", "result": "ok"}, 1.0)]


def test_status_without_a_tdx_host() -> None:
    h = host(module_version=None, seamldr_version=None, num_remaining_updates=None)
    m = render(doc("status", host=h, **failed("no-tdx-host", 69)))
    assert "tdxupdate_module_info" not in m
    assert "tdxupdate_seamldr_info" not in m
    assert "tdxupdate_remaining_updates" not in m
    assert value(m, "last_exit_code") == 69


def test_list_reports_availability() -> None:
    d = doc("list", host=host(), candidates=[candidate("1.5.24", True)])
    assert value(render(d), "update_available") == 1


@pytest.mark.parametrize("action", ["verify", "history"])
def test_other_actions_report_the_run(action: str) -> None:
    m = render(doc(action))
    assert m["tdxupdate_last_result"] == [({"action": action, "result": "ok"}, 1.0)]


def test_label_values_are_escaped() -> None:
    weird = 'a"b\\c\nd'
    m = render(doc("status", host=host(module_version=weird)))
    assert m["tdxupdate_module_info"] == [({"version": weird, **UNKNOWN}, 1.0)]


def test_help_and_type_precede_every_family() -> None:
    text = metrics.render_textfile(update_doc(changed=True), duration_s=1.0, now=NOW)
    lines = text.splitlines()
    assert text.endswith("\n")
    for i, line in enumerate(lines):
        if line.startswith("# HELP "):
            name = line.split()[2]
            assert lines[i + 1] == f"# TYPE {name} gauge"
            assert lines[i + 2].startswith(name)


@pytest.mark.parametrize(
    ("d", "result"),
    [
        (update_doc(changed=True), "success"),
        (update_doc(), "nothing-to-do"),
        (update_doc(dry_run=True), "dry-run"),
        (update_doc(dry_run=True, to_version=None), "nothing-to-do"),
        (update_doc(dry_run=True, to_version="1.5.06"), "nothing-to-do"),
        (update_doc(dry_run=True, **failed("not-eligible", 65)), "not-eligible"),
        (doc("list"), "ok"),
        (doc("verify", **failed("image-invalid", 65)), "image-invalid"),
    ],
    ids=[
        "success",
        "nothing",
        "dry-run",
        "dry-run-nothing",
        "dry-run-already-running",
        "dry-run-refused",
        "list",
        "verify-failed",
    ],
)
def test_result_of(d: Report, result: str) -> None:
    assert metrics.result_of(d) == result


# --- writing --------------------------------------------------------------------------------


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name != "tdxupdate.prom")


def test_write_textfile_writes_0644_atomically(tmp_path: Path) -> None:
    target = tmp_path / "tdxupdate.prom"
    old_umask = os.umask(0o077)
    try:
        metrics.write_textfile(target, update_doc(changed=True), duration_s=1.5, now=NOW)
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    assert target.read_text() == metrics.render_textfile(
        update_doc(changed=True), duration_s=1.5, now=NOW
    )
    assert leftovers(tmp_path) == []


def test_write_textfile_replaces_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "tdxupdate.prom"
    target.write_text("old\n")
    with open(target, encoding="utf-8") as reader:  # a scrape in progress keeps the old file
        metrics.write_textfile(target, doc("status", host=host()), duration_s=0.1, now=NOW)
        assert reader.read() == "old\n"
    assert "tdxupdate_module_info" in parse(target.read_text())
    assert leftovers(tmp_path) == []


def test_missing_directory_is_an_io_error(tmp_path: Path) -> None:
    target = tmp_path / "absent" / "tdxupdate.prom"
    with pytest.raises(TdxError) as info:
        metrics.write_textfile(target, doc("status"), duration_s=0.1, now=NOW)
    assert info.value.code == "io-error"
    assert info.value.exit_code == 74
    assert info.value.message == (
        f"{target}: cannot write the metrics file: directory {target.parent} does not exist"
    )


def test_failed_rename_leaves_old_state_and_no_temp_file(tmp_path: Path) -> None:
    target = tmp_path / "tdxupdate.prom"
    target.mkdir()  # rename(2) cannot replace a directory
    (target / "keep").write_text("x")
    with pytest.raises(TdxError) as info:
        metrics.write_textfile(target, doc("status"), duration_s=0.1, now=NOW)
    assert info.value.code == "io-error"
    assert info.value.message.startswith(f"{target}: cannot write the metrics file: ")
    assert leftovers(tmp_path) == []
    assert (target / "keep").read_text() == "x"


def test_failed_fsync_keeps_the_old_file_and_removes_the_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "tdxupdate.prom"
    target.write_text("old\n")

    def broken_fsync(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(TdxError) as info:
        metrics.write_textfile(target, doc("status"), duration_s=0.1, now=NOW)
    assert info.value.message == f"{target}: cannot write the metrics file: Input/output error"
    assert target.read_text() == "old\n"
    assert leftovers(tmp_path) == []


def test_interrupted_write_removes_the_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "tdxupdate.prom"

    def interrupted(*args: Any, **kwargs: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        metrics.write_textfile(target, doc("status"), duration_s=0.1, now=NOW)
    assert list(tmp_path.iterdir()) == []


def test_read_only_file_system_hint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "tdxupdate.prom"

    def read_only(*args: Any, **kwargs: Any) -> tuple[int, str]:
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(safedir.SafeDir, "mkstemp", read_only)
    with pytest.raises(TdxError) as info:
        metrics.write_textfile(target, doc("status"), duration_s=0.1, now=NOW)
    assert info.value.message == (
        f"{target}: cannot write the metrics file: read-only file system "
        f"(under systemd, list {tmp_path} in ReadWritePaths=)"
    )


def test_module_info_carries_what_tds_attest_before_and_after_an_update() -> None:
    """Issue 10 §3: ``tdxupdate_module_info{version,seamsvn,mrseam}``; after an update the
    target's values, otherwise the running module's (a published prefix when that is all)."""
    before = host(seamsvn="0x010d", mrseam=None, mrseam_prefix="489e585f")
    m = render(doc("status", host=before))
    assert m["tdxupdate_module_info"] == [
        ({"version": "1.5.06", "seamsvn": "0x010d", "mrseam": "489e585f"}, 1.0)
    ]
    full = "ab" * 48
    m = render(update_doc(changed=True, to_seamsvn="0x010e", to_mrseam=full))
    assert m["tdxupdate_module_info"] == [
        ({"version": "1.5.24", "seamsvn": "0x010e", "mrseam": full}, 1.0)
    ]
