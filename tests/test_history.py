"""The update history (tdxupdate.history, cli-contract.md §5)."""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from tdxupdate.errors import IOFailure, PermissionDenied
from tdxupdate.history import (
    HISTORY_FILE,
    RESULTS,
    HistoryRecord,
    append,
    format_time,
    load,
    utc_now,
)
from tdxupdate.versions import Version

FIXTURES = Path(__file__).parent / "fixtures" / "history"
SHA = "ab" * 32


def record(result: str = "success", **kwargs: object) -> HistoryRecord:
    values: dict[str, object] = {
        "time": "2026-11-26T04:05:06Z",
        "from_version": "1.5.06",
        "to_version": "1.5.08",
        "image_sha256": SHA,
        "image_format": "0x200",
        "kernel_error": None,
        "duration_s": 1.25,
        "remaining_before": 3,
        "remaining_after": 2,
        "tool_version": "0.1.0",
    }
    values.update(kwargs)
    return HistoryRecord(result=result, **values)  # type: ignore[arg-type]


def lines_of(state_dir: Path) -> list[bytes]:
    return (state_dir / HISTORY_FILE).read_bytes().split(b"\n")


def run_python(code: str, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-c", code, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )


# ----------------------------------------------------------------------------- round trip


def test_append_then_load_round_trips_every_field(tmp_path: Path) -> None:
    records = [
        record(),
        record(
            "failed",
            kernel_error="transferring:firmware-invalid",
            cpu_signature="0x806f8",
            seamldr_version="1.5.02",
            sysfs_layout="flat",
            generation="G4",
            fatal=False,
            attempt=1,
            message="header refused",
        ),
        record("module-lost", fatal=True, remaining_after=None, attempt=2),
    ]
    for r in records:
        append(tmp_path, r)
    loaded, skipped = load(tmp_path)
    assert skipped == []
    assert loaded == records
    assert len(lines_of(tmp_path)) == 4
    assert lines_of(tmp_path)[-1] == b""


def test_record_line_is_compact_json_with_contract_keys(tmp_path: Path) -> None:
    append(tmp_path, record())
    (line,) = [x for x in lines_of(tmp_path) if x]
    assert json.loads(line) == {
        "format": 1,
        "time": "2026-11-26T04:05:06Z",
        "from_version": "1.5.06",
        "to_version": "1.5.08",
        "image_sha256": SHA,
        "image_format": "0x200",
        "result": "success",
        "kernel_error": None,
        "duration_s": 1.25,
        "remaining_before": 3,
        "remaining_after": 2,
        "tool_version": "0.1.0",
        "attempt": 1,
    }
    assert b" " not in line


def test_record_accepts_versions_and_integer_formats() -> None:
    r = HistoryRecord(
        result="success",
        from_version=Version(1, 5, 6),  # type: ignore[arg-type]
        to_version=Version(1, 5, 8),  # type: ignore[arg-type]
        image_format=0x100,  # type: ignore[arg-type]
        cpu_signature=0x806F8,  # type: ignore[arg-type]
        duration_s=0.123456,
    )
    assert (r.from_version, r.to_version, r.image_format, r.cpu_signature) == (
        "1.5.06",
        "1.5.08",
        "0x100",
        "0x806f8",
    )
    assert r.to_json()["duration_s"] == 0.123
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", r.time)


def test_time_helpers_write_rfc3339_utc() -> None:
    moment = datetime(2026, 11, 26, 5, 5, 6, 789, tzinfo=timezone(timedelta(hours=1)))
    assert format_time(moment) == "2026-11-26T04:05:06Z"
    with pytest.raises(ValueError, match="timezone-aware"):
        format_time(datetime(2026, 11, 26))
    before = datetime.now(UTC).replace(microsecond=0)
    text = utc_now()
    after = datetime.now(UTC)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", text)
    assert before <= datetime.fromisoformat(text) <= after  # UTC, not local time


@pytest.mark.parametrize("result", sorted(RESULTS))
def test_every_contract_result_is_writable(tmp_path: Path, result: str) -> None:
    # a pre/post-update command's record belongs to no kernel attempt: attempt 0
    rec = record(result)
    if result.endswith("-update-failed"):
        rec = replace(rec, attempt=0)
    append(tmp_path, rec)
    assert [r.result for r in load(tmp_path).records] == [result]


@pytest.mark.parametrize(
    ("kwargs", "problem"),
    [
        ({"result": "ok"}, "result 'ok' is not one of"),
        ({"time": "2026-11-26 04:05:06"}, "is not RFC 3339 UTC"),
        ({"time": "2026-11-26T05:05:06+01:00"}, "is not RFC 3339 UTC"),
        ({"attempt": 3}, "attempt must be 1 or 2"),
        ({"remaining_after": "2"}, "remaining_after must be an integer"),
        ({"duration_s": "1s"}, "duration_s must be a number"),
        ({"fatal": 1}, "fatal must be true, false or null"),
        ({"kernel_error": 5}, "kernel_error must be a string"),
    ],
)
def test_append_refuses_records_that_break_the_contract(
    tmp_path: Path, kwargs: dict[str, object], problem: str
) -> None:
    result = kwargs.pop("result", "success")
    with pytest.raises(ValueError, match=re.escape(problem)):
        append(tmp_path, record(str(result), **kwargs))
    assert not (tmp_path / HISTORY_FILE).exists()


# ----------------------------------------------------------------------------- files


def test_load_of_missing_file_or_dir_is_empty(tmp_path: Path) -> None:
    assert load(tmp_path) == ([], [])
    assert load(tmp_path / "missing") == ([], [])
    assert not (tmp_path / "missing").exists()


def test_append_creates_state_dir_0755_and_file_0644(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        state = tmp_path / "var" / "lib" / "tdxupdate"
        append(state, record())
    finally:
        os.umask(old)
    assert stat.S_IMODE(state.stat().st_mode) == 0o755
    assert stat.S_IMODE((state / HISTORY_FILE).stat().st_mode) == 0o644
    assert len(load(state).records) == 1


def test_append_fsyncs_file_and_new_directory_entries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[str] = []
    real_fsync = os.fsync

    def counting_fsync(fd: int) -> None:
        synced.append("dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", counting_fsync)
    state = tmp_path / "state"
    append(state, record())  # new dir: its parent; new file: the file and its dir
    assert sorted(synced) == ["dir", "dir", "file"]
    synced.clear()
    append(state, record())
    assert synced == ["file"]


def test_torn_last_line_is_skipped_and_fenced_off_by_next_append(tmp_path: Path) -> None:
    append(tmp_path, record(message="one"))
    append(tmp_path, record(message="two"))
    with open(tmp_path / HISTORY_FILE, "ab") as f:
        f.write(b'{"format":1,"time":"2026-11-26T04:0')  # the crash happened here
    records, skipped = load(tmp_path)
    assert [r.message for r in records] == ["one", "two"]
    assert [(s.line, s.reason) for s in skipped] == [(3, "incomplete last line")]
    assert str(skipped[0]) == f"{tmp_path / HISTORY_FILE}:3: skipped: incomplete last line"

    append(tmp_path, record(message="three"))
    records, skipped = load(tmp_path)
    assert [r.message for r in records] == ["one", "two", "three"]
    assert [s.line for s in skipped] == [3]
    assert skipped[0].reason.startswith("not a JSON record")
    assert lines_of(tmp_path)[2] == b'{"format":1,"time":"2026-11-26T04:0'


def test_unreadable_lines_are_skipped_with_line_numbers(tmp_path: Path) -> None:
    good = json.dumps(record().to_json())
    content = "\n".join(
        [
            good,
            "not json",
            "[1, 2]",
            json.dumps({"time": "2026-11-26T04:05:06Z"}),
            json.dumps({**record().to_json(), "time": "yesterday"}),
            json.dumps({**record().to_json(), "remaining_after": "two"}),
            "",
            "   ",
            good,
        ]
    )
    (tmp_path / HISTORY_FILE).write_bytes(content.encode() + b"\n\xff\xfe\n")
    records, skipped = load(tmp_path)
    assert len(records) == 2
    assert [(s.line, s.reason.split(" (")[0]) for s in skipped] == [
        (2, "not a JSON record"),
        (3, "expected a JSON object, got list"),
        (4, "result is missing or not a string"),
        (5, "time 'yesterday' is not an RFC 3339 time"),
        (6, "remaining_after must be an integer, got str"),
        (10, "not a JSON record"),
    ]


def test_newer_writers_keys_and_results_are_kept(tmp_path: Path) -> None:
    newer = {**record().to_json(), "format": 2, "result": "skipped", "new_field": {"a": 1}}
    (tmp_path / HISTORY_FILE).write_text(json.dumps(newer) + "\n")
    (loaded,) = load(tmp_path).records
    assert (loaded.format, loaded.result, dict(loaded.extra)) == (
        2,
        "skipped",
        {"new_field": {"a": 1}},
    )
    assert loaded.to_json() == newer


# ----------------------------------------------------------------------------- old formats


def test_format0_fixture_loads_and_is_normalised(tmp_path: Path) -> None:
    shutil.copy(FIXTURES / "format0.jsonl", tmp_path / HISTORY_FILE)
    records, skipped = load(tmp_path)
    assert skipped == []
    assert [r.format for r in records] == [0, 0, 0]
    assert [r.time for r in records] == [
        "2026-03-02T10:11:12Z",
        "2026-03-09T08:00:01Z",
        "2026-03-09T08:30:00Z",
    ]
    assert [r.image_format for r in records] == ["0x100", "0x100", "0x200"]
    assert [r.result for r in records] == ["success", "device-busy", "failed"]
    assert records[2].kernel_error == "transferring:firmware-invalid"
    assert all(r.tool_version is None and r.attempt == 1 for r in records)
    assert (records[0].remaining_before, records[0].remaining_after) == (3, 2)


def test_appending_to_an_old_format_file_keeps_old_records(tmp_path: Path) -> None:
    shutil.copy(FIXTURES / "format0.jsonl", tmp_path / HISTORY_FILE)
    before = load(tmp_path).records
    append(tmp_path, record(message="new"))
    records, skipped = load(tmp_path)
    assert skipped == []
    assert records[:3] == before
    assert (records[3].format, records[3].message) == (1, "new")


def test_format1_fixture_loads_and_reserialises_identically(tmp_path: Path) -> None:
    shutil.copy(FIXTURES / "format1.jsonl", tmp_path / HISTORY_FILE)
    records, skipped = load(tmp_path)
    assert skipped == []
    assert [(r.attempt, r.image_format, r.result) for r in records] == [
        (1, "0x200", "failed"),
        (2, "0x100", "success"),
    ]
    assert records[0].fatal is False
    assert records[1].fatal is None
    originals = [json.loads(x) for x in (FIXTURES / "format1.jsonl").read_text().splitlines()]
    assert [r.to_json() for r in records] == originals


# ----------------------------------------------------------------------------- errors


def test_append_permission_error_names_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_open = os.open
    target = tmp_path / HISTORY_FILE

    def denying_open(path, flags, mode=0o777, *, dir_fd=None):  # type: ignore[no-untyped-def]
        # opened relative to the state directory's descriptor (tdxupdate.safedir)
        if Path(os.fsdecode(path)).name == HISTORY_FILE:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        return real_open(path, flags, mode, dir_fd=dir_fd)

    monkeypatch.setattr(os, "open", denying_open)
    with pytest.raises(PermissionDenied) as info:
        append(tmp_path, record())
    assert info.value.exit_code == 77
    assert info.value.message == (
        f"{target}: cannot write the update history: permission denied "
        "(run as root or choose another --state-dir)"
    )


def test_load_permission_error_names_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    append(tmp_path, record())

    real_open = os.open

    def denied(path, flags, mode=0o777, *, dir_fd=None):  # type: ignore[no-untyped-def]
        if Path(os.fsdecode(path)).name == HISTORY_FILE:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        return real_open(path, flags, mode, dir_fd=dir_fd)

    monkeypatch.setattr(os, "open", denied)
    with pytest.raises(PermissionDenied) as info:
        load(tmp_path)
    assert info.value.message.startswith(f"{tmp_path / HISTORY_FILE}: cannot read")


def test_state_dir_that_is_a_file_is_an_io_error(tmp_path: Path) -> None:
    blocker = tmp_path / "state"
    blocker.write_text("not a directory")
    with pytest.raises(IOFailure) as info:
        append(blocker, record())
    assert info.value.exit_code == 74
    assert info.value.message.startswith(f"{blocker / HISTORY_FILE}: cannot write")


# ----------------------------------------------------------------------------- processes

WRITER = """
import sys
from pathlib import Path
from tdxupdate.history import HistoryRecord, append
state, tag, count = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
i = 0
while count < 0 or i < count:
    append(state, HistoryRecord(result="success", message=f"{tag}-{i}-" + "x" * 3000))
    i += 1
"""


def test_killed_writer_leaves_every_complete_record_loadable(tmp_path: Path) -> None:
    writer = run_python(WRITER, str(tmp_path), "w", "-1")
    try:
        for _ in range(3000):  # bounded wait for the writer to get going
            if len(load(tmp_path).records) >= 30 or writer.poll() is not None:
                break
            time.sleep(0.01)
    finally:
        writer.send_signal(signal.SIGKILL)
        _, err = writer.communicate()
    assert writer.returncode == -signal.SIGKILL, err.decode()
    records, skipped = load(tmp_path)
    assert len(records) >= 30
    assert [r.message for r in records] == [f"w-{i}-" + "x" * 3000 for i in range(len(records))]
    # Only the very last line can be torn.
    assert all(s.line == len(lines_of(tmp_path)) for s in skipped)

    append(tmp_path, record(message="after the crash"))
    after, _ = load(tmp_path)
    assert after[:-1] == records
    assert after[-1].message == "after the crash"


def test_concurrent_appends_keep_every_line_intact(tmp_path: Path) -> None:
    writers = [run_python(WRITER, str(tmp_path), f"p{n}", "50") for n in range(4)]
    for w in writers:
        _, err = w.communicate()
        assert w.returncode == 0, err.decode()
    records, skipped = load(tmp_path)
    assert skipped == []
    assert len(records) == 200
    expected = {f"p{n}-{i}-" + "x" * 3000 for n in range(4) for i in range(50)}
    assert {r.message for r in records} == expected
    # Each writer's own records stay in its order.
    for n in range(4):
        mine = [r.message for r in records if r.message and r.message.startswith(f"p{n}-")]
        assert mine == [f"p{n}-{i}-" + "x" * 3000 for i in range(50)]
