"""The fleet report filter on facts that carry SEAMSVN and MRSEAM (newer tdxupdate output)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[2]
FILTER = ROOT / "contrib/ansible/ansible_collections/tdxupdate/tdx/plugins/filter/fleet.py"


def load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("tdx_fleet_filter", FILTER)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fact(
    version: str, svn: str | None, mrseam: str | None, plan: dict[str, object]
) -> dict[str, object]:
    return {"module_version": version, "seamsvn": svn, "mrseam": mrseam, "plan": plan}


def test_union_and_fleet_minimum_svn() -> None:
    fleet = load()
    report = fleet.tdx_fleet_report(
        {
            "a": fact(
                "1.5.06", "0x0106", "aa", {"version": "1.5.24", "seamsvn": "0x010d", "mrseam": "dd"}
            ),
            "b": fact(
                "1.5.08", "0x0107", "bb", {"version": "1.5.24", "seamsvn": "0x010d", "mrseam": "dd"}
            ),
            "c": fact("1.5.24", "0x010d", "dd", {}),
        }
    )
    assert report["min_seamsvn"] == "0x0106"
    assert report["min_seamsvn_after_rollout"] == "0x010d"
    assert report["reference_values"]["after_rollout"] == [
        {"version": "1.5.24", "seamsvn": "0x010d", "mrseam": "dd"}
    ]
    assert len(report["reference_values"]["during_rollout"]) == 3
    assert report["svn_unknown"] == []
    markdown = fleet.tdx_report_markdown(report)
    assert "Fleet minimum SEAMSVN now: 0x0106; after the rollout: 0x010d" in markdown


def test_unknown_svn_is_never_a_minimum() -> None:
    fleet = load()
    report = fleet.tdx_fleet_report(
        {"a": fact("1.5.06", None, None, {}), "b": fact("1.5.08", "0x0107", None, {})}
    )
    assert report["min_seamsvn"] is None
    assert report["svn_unknown"] == ["a"]
    assert "SEAMSVN unknown on: a" in fleet.tdx_report_markdown(report)


def test_hosts_off_the_mapping_or_without_svn_gain_are_named() -> None:
    fleet = load()
    facts = {
        "a": fact(
            "1.5.06",
            "0x0106",
            "aa",
            {"version": "1.5.24", "seamsvn": "0x010d", "would_change": True, "svn_gain": True},
        ),
        "b": fact(
            "1.5.23",
            "0x010d",
            "bb",
            {"version": "1.5.24", "seamsvn": "0x010d", "would_change": True, "svn_gain": False},
        ),
        "c": fact("9.9.99", "0x0110", "cc", {"would_change": False, "svn_gain": None}),
    }
    facts["a"].update(module_identity="TDX_01", identity_source="published", in_mapping=True)
    facts["c"].update(in_mapping=False, identity_source=None)
    report = fleet.tdx_fleet_report(facts)
    rows = {row["host"]: row for row in report["rows"]}
    assert rows["a"]["module_identity"] == "TDX_01"
    assert rows["a"]["identity_source"] == "published"
    assert rows["a"]["target_svn_gain"] is True
    assert rows["b"]["target_svn_gain"] is False
    assert rows["c"]["target_svn_gain"] is None  # nothing to install: no gain to speak of
    assert report["not_in_mapping"] == ["c"]
    assert report["no_svn_gain"] == ["b"]
    markdown = fleet.tdx_report_markdown(report)
    assert "Running a version the mapping file does not list: c" in markdown
    assert "Update raises no SEAMSVN (TDs attest no newer TCB) on: b" in markdown
    header = fleet.tdx_report_csv(report).splitlines()[0].split(",")
    assert header[-4:] == ["module_identity", "identity_source", "in_mapping", "target_svn_gain"]


def test_a_fleet_without_the_new_keys_reports_them_unknown() -> None:
    fleet = load()
    report = fleet.tdx_fleet_report({"a": fact("1.5.06", "0x0106", "aa", {})})
    assert report["not_in_mapping"] == []
    assert report["no_svn_gain"] == []
    assert report["rows"][0]["in_mapping"] is None
    assert "mapping file does not list" not in fleet.tdx_report_markdown(report)
