"""tdxupdate/attestation_report.py: the attestation facts added to a finished report (what TDs
report before and after an update), from the document alone."""

import dataclasses
from typing import Any

import pytest

from tdxupdate import attestation_report as ar
from tdxupdate.attestation import ModuleValues
from tdxupdate.report import UNSET, CandidateDoc, HostDoc, Report, UpdateDoc
from tdxupdate.settings import Settings
from tdxupdate.versions import Version

RUN_MRSEAM = "11" * 48
NEW_MRSEAM = "22" * 48


def _host(seamsvn: str | None = "0x0106", mrseam: str | None = RUN_MRSEAM) -> HostDoc:
    return HostDoc(
        module_version="1.5.06",
        seamldr_version=None,
        num_remaining_updates=None,
        cpu_signature=None,
        sysfs_layout=None,
        upload_dir=None,
        image_format=None,
        image_format_fallback=None,
        generation=None,
        kernel_release=None,
        checks=[],
        module_lost=False,
        seamsvn=seamsvn,
        mrseam=mrseam,
        identity_source="repository",
    )


def _candidate(version: str, seamsvn: str | None, mrseam: str | None = NEW_MRSEAM) -> CandidateDoc:
    return CandidateDoc(
        version=version,
        eligible=True,
        reasons=[],
        details=[],
        debug=False,
        path=None,
        image_format="v2",
        seamsvn=seamsvn,
        mrseam=mrseam if seamsvn else None,
        pinned=None,
    )


def _v(text: str) -> Version:
    return Version.parse(text)


def test_svn_gain() -> None:
    low, high = ModuleValues(_v("1.5.06"), 0x0106), ModuleValues(_v("1.5.08"), 0x0107)
    assert ar.svn_gain(low, high) is True
    assert ar.svn_gain(high, low) is False
    assert ar.svn_gain(low, low) is False
    assert ar.svn_gain(low, ModuleValues(_v("1.5.08"))) is None
    assert ar.svn_gain(ModuleValues(None), high) is None


def test_running_from_host() -> None:
    values = ar.running_from_host(_host())
    assert values == ModuleValues(_v("1.5.06"), 0x0106, RUN_MRSEAM, None, "repository")
    unknown = ar.running_from_host(dataclasses.replace(_host(seamsvn=None), module_version=None))
    assert (unknown.version, unknown.seamsvn) == (None, None)


def test_annotate_without_a_host_changes_nothing() -> None:
    report = Report(action="list", candidates=[_candidate("1.5.08", "0x0107")])
    ar.annotate(Settings(), report)
    assert report.candidates is not None
    assert report.candidates[0].svn_gain is UNSET


def test_annotate_gives_each_candidate_identity_and_svn_gain() -> None:
    gain, same, unknown = (
        _candidate("1.5.08", "0x0107"),
        _candidate("1.5.07", "0x0106"),
        _candidate("2.0.99", None),
    )
    report = Report(action="list", host=_host(), candidates=[gain, same, unknown])
    ar.annotate(Settings(), report)
    assert (gain.module_identity, gain.svn_gain, gain.tcb_status) == ("TDX_01", True, None)
    assert (same.svn_gain, same.tcb_status) == (False, None)
    # no image facts: the identity comes from the version's stream, the gain is unknown
    assert (unknown.module_identity, unknown.svn_gain) == ("TDX_03", None)
    assert report.tcb is None  # no --tcb-info


def _update(dry_run: bool, target: CandidateDoc, **changes: Any) -> Report:
    doc = UpdateDoc(dry_run=dry_run, selected=target, to_version=target.version, **changes)
    return Report(action="update", host=_host(), update=doc)


@pytest.mark.parametrize(("dry_run", "word"), [(True, "would"), (False, "will")])
def test_before_install_sets_the_keys_and_says_what_tds_will_see(dry_run: bool, word: str) -> None:
    report = _update(dry_run, _candidate("1.5.08", "0x0107"))
    ar.before_install(Settings(dry_run=dry_run), report)
    doc = report.update
    assert doc is not None
    assert (doc.from_seamsvn, doc.to_seamsvn, doc.svn_gain) == ("0x0106", "0x0107", True)
    assert (doc.from_mrseam, doc.to_mrseam) == (RUN_MRSEAM, NEW_MRSEAM)
    assert report.warnings == []
    assert report.notes == [
        f"Attestation: running TDs {word} report TEE_TCB_SVN2 0x0107 (now 0x0106) and keep "
        f"TEE_TCB_SVN; TDs launched afterwards {word} measure MRSEAM {NEW_MRSEAM[:16]}… "
        f"(now {RUN_MRSEAM[:16]}…)"
    ]


@pytest.mark.parametrize(("svn", "words"), [("0x0106", "the same"), ("0x0105", "a lower")])
def test_no_svn_gain_is_warned(svn: str, words: str) -> None:
    report = _update(True, _candidate("1.5.08", svn))
    ar.before_install(Settings(dry_run=True), report)
    assert report.warnings == ["no-svn-gain"]
    assert report.warning_text["no-svn-gain"].startswith(
        f"1.5.08 has {words} SEAMSVN ({svn}) as the running 1.5.06 (0x0106): it brings no TCB gain"
    )


def test_before_install_without_a_target_changes_nothing() -> None:
    doc = UpdateDoc(dry_run=True, selected=_candidate("1.5.08", "0x0107"), to_version=None)
    report = Report(action="update", host=_host(), update=doc)
    ar.before_install(Settings(), report)
    assert (doc.svn_gain, report.notes, report.warnings) == (UNSET, [], [])


def test_annotate_after_a_change_says_what_running_tds_now_report() -> None:
    target = _candidate("1.5.08", "0x0107")
    report = _update(False, target, changed=True, from_version="1.5.06")
    ar.annotate(Settings(), report)
    doc = report.update
    assert doc is not None
    assert (doc.from_seamsvn, doc.to_seamsvn, doc.svn_gain) == ("0x0106", "0x0107", True)
    assert report.notes == [
        "Attestation: running TDs keep TEE_TCB_SVN (the module they launched under, 0x0106 for "
        "TDs launched under 1.5.06) and now report TEE_TCB_SVN2 0x0107; TDs launched from now "
        f"on measure MRSEAM {NEW_MRSEAM[:16]}… (module identity TDX_01)"
    ]


def test_annotate_of_an_update_that_changed_nothing_adds_no_note() -> None:
    report = _update(False, _candidate("1.5.08", "0x0107"), changed=False)
    ar.annotate(Settings(), report)
    assert report.notes == []
    assert report.update is not None
    assert report.update.svn_gain is True  # the keys are still filled in
