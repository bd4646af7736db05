"""tdxupdate/attempt.py: the pieces of the --update attempt around the stream (the whole
attempt runs against the emulator in tests/test_update.py)."""

import dataclasses
import re
from pathlib import Path
from typing import Any, cast

import pytest
from factories.hosts import build_host_tree

from tdxupdate import attempt, history
from tdxupdate import inventory as _inv
from tdxupdate.errors import TdxError, TryLater
from tdxupdate.report import Report, UpdateDoc
from tdxupdate.versions import Version


def _plan(before: Path, now: Path, state_dir: Path, **changes: Any) -> attempt.UpdatePlan:
    """A plan decided on the host tree ``before`` whose sysroot now shows ``now``. The image
    is not needed by the steps tested here, except its digest (a stand-in)."""
    facts = _inv.discover(before, cpu_signature=None)
    values: dict[str, Any] = {
        "verified": cast(Any, type("Verified", (), {"sha256": "5a" * 32})()),
        "target": Version.parse("1.5.08"),
        "running": Version.parse("1.5.06"),
        "reinstall": False,
        "facts": facts,
        "upload_dir": facts.upload_dir,
        "formats": (0x200,),
        "description": "1.5.08",
        "sysroot": now,
        "state_dir": state_dir,
        "cpu_signature": None,
        "image_format": "auto",
        "timeout": 30.0,
        "fence_timeout": 5.0,
        "hook_timeout": 5.0,
        "pre_update": None,
        "post_update": None,
    }
    values.update(changes)
    return attempt.UpdatePlan(**values)


def test_fmt_name() -> None:
    assert attempt.fmt_name(0x100) == "A (0x100)"
    assert attempt.fmt_name(0x200) == "B (0x200)"
    assert attempt.fmt_name(None) == "?"
    assert attempt.fmt_name(0x300) == "?"


def test_now_is_rfc3339_utc_to_the_second() -> None:
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", attempt.now_rfc3339())


def test_no_progress_yields_none() -> None:
    with attempt.no_progress(100) as tick:
        assert tick is None


def test_plan_properties_and_hook_environment(tmp_path: Path) -> None:
    root = build_host_tree(tmp_path / "h", remaining=7)
    plan = _plan(root, root, tmp_path / "state")
    assert plan.remaining_before == 7
    assert plan.image_sha256 == "5a" * 32
    assert plan.interface is plan.facts.upload
    assert plan.hook_env() == {
        "TDXUPDATE_FROM": "1.5.06",
        "TDXUPDATE_TO": "1.5.08",
        "TDXUPDATE_SYSROOT": str(root),
    }


def test_recheck_of_an_unchanged_host_passes(tmp_path: Path) -> None:
    root = build_host_tree(tmp_path / "h")
    attempt.recheck_preflight(_plan(root, root, tmp_path / "state"))


def test_recheck_names_every_fact_that_changed(tmp_path: Path) -> None:
    root = build_host_tree(tmp_path / "h", remaining=6, online="0-2", present="0-2")
    plan = _plan(root, root, tmp_path / "state")
    decided_on = dataclasses.replace(
        plan.facts, num_remaining_updates=7, cpus_online=frozenset(range(4))
    )
    with pytest.raises(TryLater) as caught:
        attempt.recheck_preflight(dataclasses.replace(plan, facts=decided_on))
    assert (caught.value.code, caught.value.exit_code) == ("host-changed", 75)
    assert caught.value.message == (
        "the host changed since the preflight (remaining updates 7 -> 6; online CPUs 0-3 -> "
        "0-2); nothing was written, run tdxupdate again"
    )


def test_recheck_of_a_host_that_now_fails_a_check_keeps_the_checks_token(tmp_path: Path) -> None:
    before = build_host_tree(tmp_path / "before", remaining=1)
    now = build_host_tree(tmp_path / "now", remaining=0)
    expected = attempt.preflight_error(_inv.discover(now, cpu_signature=None))
    assert expected is not None
    with pytest.raises(TdxError) as caught:
        attempt.recheck_preflight(_plan(before, now, tmp_path / "state"))
    assert type(caught.value) is type(expected)
    assert caught.value.code == expected.code == "no-remaining-updates"
    assert caught.value.message == f"the host changed before the first write: {expected.message}"


def _report() -> Report:
    return Report(action="update", update=UpdateDoc(dry_run=False))


def test_a_failed_pre_update_command_stops_the_update_and_is_recorded(tmp_path: Path) -> None:
    root = build_host_tree(tmp_path / "h")
    state = tmp_path / "state"
    plan = _plan(root, root, state, pre_update="echo not now >&2; exit 3")
    report = _report()
    with pytest.raises(TryLater) as caught:
        attempt._pre_update(report, plan, plan.hook_env())
    assert caught.value.code == "pre-update-failed"
    assert caught.value.message.endswith("; nothing was written, the update did not start")
    (record,) = history.load(state).records
    doc = record.to_json()
    assert (doc["result"], doc["attempt"], doc["from_version"], doc["to_version"]) == (
        "pre-update-failed",
        0,
        "1.5.06",
        "1.5.08",
    )
    assert doc["message"] == caught.value.message
    assert report.update is not None
    assert isinstance(report.update.pre_update, dict)


def test_a_failed_post_update_command_is_a_warning_and_a_record(tmp_path: Path) -> None:
    root = build_host_tree(tmp_path / "h")
    state = tmp_path / "state"
    out = tmp_path / "env.txt"
    command = f'echo "$TDXUPDATE_RESULT $TDXUPDATE_TO $TDXUPDATE_PHASE" > {out}; exit 4'
    plan = _plan(root, root, state, post_update=command)
    report = _report()
    attempt._post_update(report, plan, plan.hook_env(), None)
    assert report.warnings == ["post-update-failed"]
    assert report.warning_text["post-update-failed"].endswith("(after the attempt: error)")
    # no attempt: the run failed before one, and the command is told so
    assert out.read_text() == "error 1.5.08 post-update\n"
    (record,) = history.load(state).records
    assert record.to_json()["result"] == "post-update-failed"


def test_a_hook_record_that_cannot_be_written_is_a_warning(tmp_path: Path) -> None:
    root = build_host_tree(tmp_path / "h")
    state = tmp_path / "state-is-a-file"
    state.write_text("")
    plan = _plan(root, root, state)
    report = _report()
    attempt._record_hook(report, plan, plan.hook_env(), "pre-update-failed", "m")
    assert report.warnings == ["history-write-failed"]
    assert report.warning_text["history-write-failed"].startswith(
        "the pre-update-failed history record was not written ("
    )
