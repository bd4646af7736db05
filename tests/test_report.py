"""The typed JSON document (:mod:`tdxupdate.report`): every dataclass's fields are the keys
the published output schema names for it, and the document keeps its key order."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest
from factories.cli import validate

from tdxupdate import __version__
from tdxupdate.attestation import ModuleValues
from tdxupdate.errors import TryLater
from tdxupdate.report import (
    SCHEMA_VERSION,
    UNSET,
    CandidateDoc,
    HistoryDoc,
    HostDoc,
    ReferenceValuesDoc,
    Report,
    TcbDoc,
    UpdateDoc,
    VerifiedImageDoc,
)
from tdxupdate.schemas import load_schema
from tdxupdate.versions import Version

SCHEMA = load_schema("output.schema.json")
#: the keys every document has, whatever the action (not document dataclasses of their own)
BASE = ["schema_version", "action", "ok", "error", "warnings", "tool_version"]
#: the Report fields that are JSON documents (the others are for text rendering)
DOCUMENTS = ["host", "candidates", "update", "images", "history", "reference_values", "tcb"]


def names(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def schema_keys(definition: str) -> set[str]:
    return set(SCHEMA["definitions"][definition]["properties"])


@pytest.mark.parametrize(
    ("cls", "definition"),
    [
        (HostDoc, "host"),
        (CandidateDoc, "candidate"),
        (VerifiedImageDoc, "verified_image"),
    ],
)
def test_each_document_has_exactly_the_fields_of_its_schema_definition(
    cls: type, definition: str
) -> None:
    assert names(cls) == schema_keys(definition)


def test_the_tcb_and_reference_values_documents_match_their_schema_objects() -> None:
    props = SCHEMA["properties"]
    assert names(TcbDoc) == set(props["tcb"]["properties"])
    assert names(ReferenceValuesDoc) == set(props["reference_values"]["properties"])


def test_the_top_level_keys_are_the_base_the_documents_and_the_update_keys() -> None:
    report_documents = names(Report) & set(DOCUMENTS)
    assert report_documents == set(DOCUMENTS)  # a document renamed in Report fails here
    top = set(BASE) | (set(DOCUMENTS) - {"update"}) | names(UpdateDoc)
    assert top == set(SCHEMA["properties"])


def test_the_update_key_groups_cover_every_update_field_once() -> None:
    groups = UpdateDoc.HEAD + UpdateDoc.PLAN + UpdateDoc.ATTESTATION + UpdateDoc.ATTEMPT
    assert sorted(groups) == sorted(names(UpdateDoc))
    # the keys the schema requires of every --update document are the head, always written
    required = next(
        rule["then"]["required"]
        for rule in SCHEMA["allOf"]
        if rule["if"]["properties"].get("action", {}).get("const") == "update"
    )
    assert set(required) == set(UpdateDoc.HEAD)


def host() -> HostDoc:
    return HostDoc(
        module_version="1.5.06",
        seamldr_version="1.5.01",
        num_remaining_updates=3,
        cpu_signature="0x806f8",
        sysfs_layout="seamldr-dir",
        upload_dir="/sys/class/firmware/seamldr_upload",
        image_format="0x100",
        image_format_fallback=None,
        generation="G5",
        kernel_release="6.16.0",
        checks=[{"name": "tdx-host", "ok": True, "detail": "TDX is enabled"}],
        module_lost=False,
    )


def candidate(version: str = "1.5.09") -> CandidateDoc:
    return CandidateDoc(
        version=version,
        eligible=True,
        reasons=[],
        details=[],
        debug=False,
        path=f"/repo/TDX-SEAM_{version}.bin",
        image_format="0x100",
        seamsvn="0x0109",
        mrseam="ab" * 48,
        pinned=False,
    )


def test_every_field_of_a_filled_document_is_in_its_json_in_field_order() -> None:
    h = host()
    h.in_mapping = True
    assert list(h.to_json()) == [f.name for f in dataclasses.fields(HostDoc)]
    c = candidate()
    c.module_identity, c.svn_gain, c.tcb_status = "TDX_01", True, None
    assert list(c.to_json()) == [f.name for f in dataclasses.fields(CandidateDoc)]


def test_a_key_not_written_is_left_out_and_null_is_kept() -> None:
    h = host()
    assert "in_mapping" not in h.to_json()
    h.in_mapping = None
    assert h.to_json()["in_mapping"] is None
    c = candidate()
    assert {"module_identity", "svn_gain", "tcb_status"}.isdisjoint(c.to_json())
    doc = UpdateDoc(dry_run=True)
    assert list(doc.to_json()) == list(UpdateDoc.HEAD)
    doc.remaining_after = None
    assert doc.to_json()["remaining_after"] is None
    assert doc.signer is UNSET


def test_an_update_document_keeps_the_order_it_has_always_had() -> None:
    report = Report("update", update=UpdateDoc(dry_run=False))
    report.host = host()
    report.candidates = [candidate()]
    assert report.update is not None
    report.update.selected = candidate()
    report.update.plan = "install 1.5.09 over 1.5.06"
    report.update.svn_gain = True
    report.tcb = TcbDoc(file="tcb.json", fmspc=None, running="UpToDate")
    report.update.remaining_after = 2
    report.error = TryLater("busy", code="device-busy")
    doc = report.document()
    assert list(doc) == [
        *BASE,
        *UpdateDoc.HEAD,
        "host",
        "candidates",
        "plan",
        "svn_gain",
        "tcb",
        "remaining_after",
    ]
    # without a plan (nothing to do), the attestation keys come once the action is done
    report.update.plan = UNSET
    tail = ["host", "candidates", "tcb", "svn_gain", "remaining_after"]
    assert list(report.document())[-len(tail) :] == tail
    assert doc["schema_version"] == SCHEMA_VERSION
    assert doc["tool_version"] == __version__
    assert doc["ok"] is False
    assert doc["error"]["code"] == "device-busy"
    assert doc["selected"] == candidate().to_json()


@pytest.mark.parametrize(
    "report",
    [
        Report("status", host=host()),
        Report("list", host=host(), candidates=[candidate(), candidate("1.5.08")]),
        Report(
            "verify",
            images=[VerifiedImageDoc("/repo/x.bin", True, "1.5.09", "0x100", [])],
        ),
        Report("history", history=HistoryDoc([])),
        Report(
            "reference-values",
            host=host(),
            candidates=[],
            reference_values=ReferenceValuesDoc(
                ModuleValues(Version.parse("1.5.06")).to_json() | {"in_mapping": True},
                None,
                "nothing newer",
            ),
        ),
        Report("update", update=UpdateDoc(dry_run=True)),
    ],
    ids=lambda r: r.action,
)
def test_each_actions_document_validates_against_the_schema(report: Report) -> None:
    doc: dict[str, Any] = report.document()
    validate(doc)


def test_warnings_are_kept_once_and_shown_live_once() -> None:
    shown: list[str] = []
    report = Report("list", live_warn=shown.append)
    report.warn("format-retry", "first")
    report.warn("format-retry", "second")
    assert report.warnings == ["format-retry"]
    assert shown == ["first"]
    assert report.shown == {"format-retry"}
    assert report.warning_text["format-retry"] == "first"


def test_the_dead_exit_code_is_gone() -> None:
    assert "exit_code" not in names(Report)


@pytest.mark.parametrize("shown", ["1.5.06", "1.5.6\n"])
def test_attestation_input_holds_the_running_versions_candidates_only(shown: str) -> None:
    from tdxupdate.attestation import running_values

    doc = Report("list", host=host())
    assert doc.host is not None
    doc.host.module_version = shown
    running = candidate("1.5.06")
    running.mrseam = "cd" * 48
    doc.candidates = [candidate("1.5.09"), running, candidate("1.5.07")]
    given = doc.attestation_input()
    assert given["host"] == doc.host.to_json()
    assert given["candidates"] == [running.to_json()]
    # what running_values makes of it is what it makes of every candidate
    everything = {"host": doc.host.to_json(), "candidates": doc.candidates_json()}
    assert running_values(given) == running_values(everything)
    doc.host.module_version = None
    assert doc.attestation_input()["candidates"] == []


ODD_VALUES: list[Any] = [
    {},
    [],
    "",
    0,
    -7,
    2**70,
    1.5,
    -0.0,
    1e300,
    None,
    True,
    False,
    'é\n"\\\t\u2028 \U0001f600',
    {"a": [], "b": {}, "c": [[], [{}], {"d": None}]},
    [1, [2, [3, [4]]], {"x": {"y": {"z": "w"}}}],
    float("nan"),
    float("inf"),
    {"n": -float("inf")},
    {1: "int key"},
    {None: 1, True: 2, 2.5: 3},
    (1, 2),
    {"t": ("a", ["b"])},
]


@pytest.mark.parametrize("value", ODD_VALUES, ids=repr)
def test_dumps_is_json_dumps_indent_2(value: Any) -> None:
    from tdxupdate.report import dumps

    assert dumps(value) == json.dumps(value, indent=2)


def test_dumps_gives_json_dumps_errors() -> None:
    from tdxupdate.report import dumps

    loop: list[Any] = []
    loop.append(loop)
    with pytest.raises(ValueError, match="Circular reference"):
        dumps(loop)
    with pytest.raises(TypeError, match="not JSON serializable"):
        dumps({"a": object()})
    with pytest.raises(TypeError, match="not JSON serializable"):
        dumps({"a": UNSET})


def test_a_reports_json_text_is_its_document_indented() -> None:
    doc = Report("list", host=host(), candidates=[candidate("1.5.09"), candidate("1.5.07")])
    doc.warn("non-intel-signer", "signed by another key")
    assert doc.json_text() == json.dumps(doc.document(), indent=2)
