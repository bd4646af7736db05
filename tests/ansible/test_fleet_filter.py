"""The fleet report filter on facts that carry SEAMSVN and MRSEAM (newer tdxupdate output)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[2]
FILTER = ROOT / "contrib/ansible/ansible_collections/tdxupdate/tdx/plugins/filter/fleet.py"


def load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("tdx_fleet_filter", FILTER)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fact(version: str, svn: str | None, mrseam: str | None, plan: dict[str, object]) -> dict:
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
