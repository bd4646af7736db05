"""tdxupdate/render.py: the text lines people read, built from the typed documents of
tdxupdate/report.py (the same documents --json prints)."""

from typing import Any

from tdxupdate import render
from tdxupdate.errors import DataError
from tdxupdate.report import (
    CandidateDoc,
    HistoryDoc,
    HostDoc,
    ReferenceValuesDoc,
    Report,
    TcbDoc,
    UpdateDoc,
    VerifiedImageDoc,
)

MRSEAM = "ab" * 48


def _host(**changes: Any) -> HostDoc:
    values: dict[str, Any] = {
        "module_version": "1.5.06",
        "seamldr_version": "1.5.01",
        "num_remaining_updates": 7,
        "cpu_signature": "0x806f8",
        "sysfs_layout": "tdx_host",
        "upload_dir": "/sys/class/firmware/seamldr_upload",
        "image_format": "sigstruct-v2",
        "image_format_fallback": None,
        "generation": None,
        "kernel_release": None,
        "checks": [
            {"name": "tdx", "ok": True, "detail": "enabled"},
            {"name": "remaining-updates", "ok": False, "detail": "none left"},
        ],
        "module_lost": False,
    }
    values.update(changes)
    return HostDoc(**values)


def _candidate(version: str, *, eligible: bool = True, **changes: Any) -> CandidateDoc:
    values: dict[str, Any] = {
        "version": version,
        "eligible": eligible,
        "reasons": [],
        "details": [],
        "debug": False,
        "path": None,
        "image_format": "v2",
        "seamsvn": "0106",
        "mrseam": MRSEAM,
        "pinned": None,
    }
    values.update(changes)
    return CandidateDoc(**values)


# --- identity ---------------------------------------------------------------------------------


def test_identity_of_a_known_module() -> None:
    lines = render.render_identity(
        {
            "module_identity": "TDX_1.5.06",
            "seamsvn": "0106",
            "seamsvn_major": 1,
            "seamsvn_minor": 6,
            "mrseam": MRSEAM,
            "identity_source": "published",
            "tcb_status": "UpToDate",
        }
    )
    assert lines == [
        "  module identity      TDX_1.5.06",
        "  SEAMSVN              0106 (TEE_TCB_SVN2 major 1, minor 6; "
        "from Intel's published release)",
        f"  MRSEAM               {MRSEAM}",
        "  TCB status           UpToDate",
    ]


def test_identity_with_only_the_published_prefix_of_mrseam() -> None:
    lines = render.render_identity(
        {"seamsvn": "0106", "mrseam": None, "mrseam_prefix": "abcd1234", "source": "repository"},
        indent="",
    )
    assert lines[1].endswith("from the repository's image of this version)")
    assert lines[2] == (
        "MRSEAM               abcd1234… (first 8 digits; the rest is not published)"
    )
    assert len(lines) == 3  # no TCB status line without one


def test_identity_of_an_unknown_module_says_why() -> None:
    assert render.render_identity({"version": "1.5.99", "seamsvn": None}) == [
        "  module identity      unknown",
        "  SEAMSVN              unknown (1.5.99 is not in Intel's published release table and "
        "the repository has no image of it that passed its checks)",
        "  MRSEAM               unknown",
    ]


# --- status -----------------------------------------------------------------------------------


def test_host_lines_and_aligned_checks() -> None:
    lines = render.render_host(_host())
    assert lines[:9] == [
        "TDX host",
        "  module version       1.5.06",
        "  P-SEAMLDR version    1.5.01",
        "  remaining updates    7",
        "  CPU signature        0x806f8",
        "  sysfs layout         tdx_host",
        "  upload interface     /sys/class/firmware/seamldr_upload",
        "  image format         sigstruct-v2",
        "  module identity      unknown",
    ]
    assert lines[-3:] == [
        "Checks",
        "  PASS  tdx                enabled",
        "  FAIL  remaining-updates  none left",
    ]


def test_host_unknowns_fallback_generation_and_not_in_mapping() -> None:
    host = _host(
        module_version=None,
        num_remaining_updates=None,
        image_format_fallback="sigstruct-v1",
        generation="G5",
        kernel_release="6.18.0",
        in_mapping=False,
        checks=[],
    )
    lines = render.render_host(host)
    assert "  module version       unknown" in lines
    assert "  remaining updates    unknown" in lines
    assert "  sysfs layout         tdx_host (G5, kernel 6.18.0)" in lines
    assert (
        "  image format         sigstruct-v2 (falls back to sigstruct-v1 if the kernel refuses it)"
        in lines
    )
    assert "  mapping file         running module unknown is not in the mapping file" in lines
    assert lines[-1] == "Checks"


def test_status_puts_the_tcb_line_before_the_checks_and_the_notes_last() -> None:
    report = Report(
        action="status",
        host=_host(),
        tcb=TcbDoc(file="/etc/tcb.json", fmspc=None, running=None),
        notes=["a note"],
    )
    lines = render.render(report)
    at = lines.index("Checks")
    assert lines[at - 1] == "  TCB status           not rated (/etc/tcb.json)"
    assert lines[-1] == "a note"


# --- list -------------------------------------------------------------------------------------


def test_no_candidates() -> None:
    assert render.render_candidates([]) == ["The repository offers no modules."]


def test_candidate_table_columns_line_up() -> None:
    rows = [
        _candidate("1.5.100", debug=True, svn_gain=False, tcb_status="UpToDate"),
        _candidate(
            "1.5.07",
            eligible=False,
            reasons=["older-than-running", "made-up-token"],
            image_format=None,
            seamsvn=None,
            mrseam=None,
        ),
        _candidate(
            "1.5.08",
            eligible=False,
            reasons=["below-min-td-preserving"],
            details=["1.5.08 needs 1.5.05 or later", "1.5.08: second detail", "third"],
        ),
    ]
    lines = render.render_candidates(rows)
    why = lines[0].index("WHY")
    assert why == len("1.5.100") + 40
    assert lines[0] == "VERSION  ELIGIBLE  FORMAT  SEAMSVN  MRSEAM     WHY"
    assert lines[1] == (
        "1.5.100  yes       v2      0106     abababab   eligible (debug-signed, allowed)"
        " (no SVN gain: same SEAMSVN as the running module) [TCB UpToDate]"
    )
    assert (
        lines[2] == "1.5.07   no        -       -        -          older than the running module"
    )
    assert lines[3] == " " * why + "made-up-token"  # an unknown token is shown as it is
    assert lines[4][why:] == "needs 1.5.05 or later"  # the row names the version already
    assert lines[5] == " " * why + "second detail"
    assert lines[6] == " " * why + "third"
    assert len(lines) == 7


def test_every_reason_has_words() -> None:
    for token, words in render.REASON_WORDS.items():
        assert words, token
        assert words != token


def test_list_headline_from_the_host() -> None:
    report = Report(
        action="list",
        host=_host(seamsvn="0106", mrseam=None, mrseam_prefix="12345678"),
        candidates=[],
        notes=["n"],
    )
    assert render.render(report) == [
        "Running module 1.5.06 (SEAMSVN 0106, MRSEAM 12345678), P-SEAMLDR 1.5.01, CPU 0x806f8",
        "The repository offers no modules.",
        "n",
    ]
    bare = render.render(Report(action="list", candidates=[]))
    assert bare[0] == (
        "Running module unknown (SEAMSVN unknown, MRSEAM unknown), P-SEAMLDR unknown, CPU unknown"
    )


# --- update -----------------------------------------------------------------------------------


def test_update_shows_the_table_only_for_a_dry_run_or_a_bad_choice() -> None:
    rows = [_candidate("1.5.07")]
    table = render.render_candidates(rows)
    real = Report(action="update", candidates=rows, update=UpdateDoc(dry_run=False))
    assert render.render(real) == []
    dry = Report(action="update", candidates=rows, update=UpdateDoc(dry_run=True))
    assert render.render(dry) == table
    bad = Report(
        action="update",
        candidates=rows,
        error=DataError("no", code="not-eligible"),
        notes=["why not"],
    )
    assert render.render(bad) == [*table, "why not"]


def test_update_notes_already_shown_live_are_not_repeated() -> None:
    report = Report(action="update", notes=["progress"], live=lambda _line: None)
    assert render.render(report) == []


# --- verify, history, reference values --------------------------------------------------------


def test_verified_images() -> None:
    images = [
        VerifiedImageDoc(
            path="/r/a.blob",
            ok=False,
            version=None,
            image_format=None,
            checks=[{"name": "signature", "ok": False, "detail": "bad"}],
        )
    ]
    assert render.render(Report(action="verify", images=images)) == [
        "/r/a.blob: FAILED (version unknown, format unknown)",
        "  FAIL  signature       bad",
    ]


def test_history() -> None:
    assert render.render_history([]) == ["No update attempts recorded on this host."]
    record = {
        "time": "2026-01-01T00:00:00Z",
        "from_version": "1.5.06",
        "to_version": "1.5.08",
        "result": "failed",
        "kernel_error": "transferring:hw-error",
        "image_format": "v2",
        "duration_s": 1.5,
        "remaining_before": 7,
        "remaining_after": 6,
        "from_seamsvn": "0106",
        "mrseam": "cd" * 48,
    }
    assert render.render(Report(action="history", history=HistoryDoc(records=[record, {}]))) == [
        "2026-01-01T00:00:00Z  1.5.06 -> 1.5.08  failed [transferring:hw-error]  format v2  "
        "1.5 s  remaining 7 -> 6  SEAMSVN 0106 -> unknown  MRSEAM unknown -> cdcdcdcd",
        "?  ? -> ?  ?  format ?  ? s  remaining ? -> ?",
    ]


def test_reference_values_without_a_target() -> None:
    values = ReferenceValuesDoc(
        running={"version": "1.5.06", "seamsvn": None, "in_mapping": False},
        target=None,
        target_reason="already the newest",
    )
    tcb = TcbDoc(file="f", fmspc=None, running=None, td_relaunch_advised=True)
    lines = render.render(Report(action="reference-values", reference_values=values, tcb=tcb))
    assert lines[0] == (
        "Reference values for attestation verifiers (TD quote: TEE_TCB_SVN2, MRSEAM)"
    )
    assert lines[1] == "Running module 1.5.06"
    assert "  running module 1.5.06 is not in the mapping file" in lines
    assert lines[-2:] == [
        "No update would be installed: already the newest",
        "TDs launched under the running module will be rated TDRelaunchAdvised after the update",
    ]


def test_reference_values_with_a_target() -> None:
    values = ReferenceValuesDoc(
        running={},
        target={"version": "1.5.08", "seamsvn": "0108", "mrseam": MRSEAM, "source": "published"},
        target_reason="",
    )
    lines = render.render_reference_values(values, None)
    assert lines[1] == "Module an update would install: 1.5.08"
    assert lines[-1] == f"  MRSEAM               {MRSEAM}"
