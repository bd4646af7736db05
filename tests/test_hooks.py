"""``pre_update`` / ``post_update`` commands (issue 10 §1, the generic fence).

The unit half runs :func:`tdxupdate.hooks.run` on real shell commands; the rest runs the real
``--update`` against the emulator and checks the contract: a failing pre-command stops the
update with nothing written (exit 75, ``pre-update-failed``) and a history record; a
post-command runs after the attempt whatever its outcome, and its failure is a warning and a
record, never a change of the kernel's outcome.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tdxupdate import history, hooks, signals
from tdxupdate.cli import main
from tdxupdate.errors import Interrupted
from tdxupdate.schemas import load_schema
from tdxupdate.sim.session import SimHost

# --- hooks.run ------------------------------------------------------------------------------


def test_success_exit_status_output_and_environment() -> None:
    r = hooks.run(
        "pre-update", 'echo "to $TDXUPDATE_TO in $TDXUPDATE_PHASE"', 10, {"TDXUPDATE_TO": "1.5.24"}
    )
    assert (r.ok, r.exit_code, r.timed_out, r.error) == (True, 0, False, None)
    assert r.output == "to 1.5.24 in pre-update\n"


def test_failure_keeps_stderr_and_names_the_last_line() -> None:
    r = hooks.run("pre-update", "echo starting; echo 'nova: host busy' >&2; exit 3", 10, {})
    assert (r.ok, r.exit_code) == (False, 3)
    assert "nova: host busy" in r.output
    assert r.describe().endswith("exited 3: nova: host busy")


def test_timeout_kills_the_whole_process_group(tmp_path: Path) -> None:
    marker = tmp_path / "child.pid"
    r = hooks.run("pre-update", f"sleep 300 & echo $! > {marker}; wait", 0.5, {})
    assert r.timed_out
    assert r.exit_code is None
    assert not r.ok
    child = int(marker.read_text())
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        time.sleep(0.02)
    else:
        pytest.fail("the command's background child survived the timeout")


def test_output_is_bounded_to_its_tail() -> None:
    r = hooks.run("post-update", "head -c 2000000 /dev/zero | tr '\\0' x; echo END", 30, {})
    assert r.ok
    assert len(r.output) == hooks.OUTPUT_KEPT
    assert r.output.endswith("xEND\n")


def test_a_command_that_cannot_start_is_a_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_args: Any, **_kwargs: Any) -> None:
        raise OSError(2, "No such file or directory")

    monkeypatch.setattr(subprocess, "Popen", refuse)
    r = hooks.run("pre-update", "true", 10, {})
    assert not r.ok
    assert r.error == "No such file or directory"
    assert "could not be started" in r.describe()


def test_a_signal_in_the_instant_the_command_is_spawned_still_ends_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The window between the fork and the code that would end the command: a signal there
    (here delivered the moment ``Popen`` returns) is held, then raised, and the command ends."""
    spawned: list[subprocess.Popen[bytes]] = []
    real_popen = subprocess.Popen

    def popen_then_signal(*args: Any, **kwargs: Any) -> subprocess.Popen[bytes]:
        proc = real_popen(*args, **kwargs)
        spawned.append(proc)
        os.kill(os.getpid(), signal.SIGTERM)  # handled at the next bytecode, still in here
        return proc

    monkeypatch.setattr(subprocess, "Popen", popen_then_signal)
    restore = signals.install()
    try:
        with pytest.raises(Interrupted) as caught:
            hooks.run("pre-update", "exec sleep 300", 600, {})
    finally:
        restore()
    assert caught.value.signum == signal.SIGTERM
    (proc,) = spawned
    assert proc.returncode == -signal.SIGTERM  # ended and reaped, not left to sleep on


# --- --update with the commands, against the emulator -------------------------------------------


def _args(host: SimHost, tmp_path: Path, *extra: str) -> list[str]:
    keys = tmp_path / "keys"
    keys.write_text("\n".join(sorted(host.trusted_signers)) + "\n")
    return [
        "--update", "--json", "--sysroot", str(host.sysroot), "--repo", str(host.repo),
        "--trusted-keys", str(keys), "--state-dir", str(tmp_path / "state"), "--timeout", "30",
        *extra,
    ]  # fmt: skip


def _run(capsys: pytest.CaptureFixture[str], argv: list[str]) -> tuple[int, dict[str, Any], str]:
    capsys.readouterr()
    code = main(argv)
    out = capsys.readouterr()
    doc = json.loads(out.out)
    import jsonschema

    jsonschema.Draft7Validator(load_schema("output.schema.json")).validate(doc)
    return code, doc, out.err


@pytest.mark.fuse
def test_failing_pre_command_writes_nothing_and_is_recorded(
    sim: Callable[..., SimHost], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    host = sim("spr")
    code, doc, err = _run(
        capsys,
        _args(host, tmp_path, "--pre-update-command", "echo 'a TD is launching' >&2; exit 4"),
    )
    assert code == 75
    assert doc["error"]["code"] == "pre-update-failed"
    assert doc["pre_update"]["exit_code"] == 4
    assert "a TD is launching" in doc["pre_update"]["output"]
    assert f"tdxupdate: {doc['error']['message']}" in err.splitlines()
    up = host.state()["upload"]
    assert up["counters"].get("loading_writes", 0) == 0
    assert host.state()["uploads"] == []
    (rec,) = history.load(tmp_path / "state").records
    assert rec.result == "pre-update-failed"
    assert rec.attempt == 0
    assert rec.pre_update is not None
    assert rec.pre_update["exit_code"] == 4


@pytest.mark.fuse
def test_post_command_runs_after_the_attempt_and_its_failure_is_only_a_warning(
    sim: Callable[..., SimHost], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    host = sim("spr")
    seen = tmp_path / "post-saw"
    code, doc, _err = _run(
        capsys,
        _args(
            host,
            tmp_path,
            "--pre-update-command", "true",
            "--post-update-command", f'echo "$TDXUPDATE_RESULT $TDXUPDATE_TO" > {seen}; exit 9',
        ),
    )  # fmt: skip
    assert code == 0
    assert doc["changed"] is True  # the kernel's outcome stays the run's
    assert "post-update-failed" in doc["warnings"]
    assert seen.read_text() == f"success {doc['to_version']}\n"
    assert host.state()["module_version"] == doc["to_version"]
    records = history.load(tmp_path / "state").records
    assert [r.result for r in records] == ["success", "post-update-failed"]
    assert records[0].pre_update is not None
    assert records[0].pre_update["exit_code"] == 0
    assert records[1].post_update is not None
    assert records[1].post_update["exit_code"] == 9


@pytest.mark.fuse
def test_post_command_runs_after_a_failed_attempt_too(
    sim: Callable[..., SimHost], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    host = sim("spr")
    host.control({"fault": "transferring:hw-error"})
    seen = tmp_path / "post-saw"
    code, doc, _err = _run(
        capsys, _args(host, tmp_path, "--post-update-command", f'echo "$TDXUPDATE_RESULT" > {seen}')
    )
    assert code == 1
    assert doc["error"]["code"] == "kernel-error"
    assert seen.read_text() == "failed\n"
    assert doc["post_update"]["exit_code"] == 0


@pytest.mark.fuse
def test_a_signal_during_the_pre_command_ends_it_and_writes_nothing(
    sim: Callable[..., SimHost], tmp_path: Path
) -> None:
    host = sim("spr")
    marker = tmp_path / "pre.pid"
    proc = subprocess.Popen(
        [sys.executable, "-m", "tdxupdate",
         *_args(host, tmp_path, "--pre-update-command", f"echo $$ > {marker}; exec sleep 300")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while not marker.exists() or not marker.read_text().strip():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"the pre-update command never started: {proc.communicate()}")
        time.sleep(0.01)
    pre_pid = int(marker.read_text())
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert json.loads(out)["error"]["code"] == "interrupted"
    with pytest.raises(ProcessLookupError):
        os.kill(pre_pid, 0)
    assert host.state()["upload"]["counters"].get("loading_writes", 0) == 0


def test_config_keys_are_checked(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    conf = tmp_path / "tdxupdate.conf"
    conf.write_text('pre_update = ""\nhook_timeout = -1\n')
    conf.chmod(0o644)
    assert main(["--config", str(conf), "--status", "--sysroot", str(tmp_path)]) == 78
    err = capsys.readouterr().err
    assert "pre_update: expected a shell command line" in err
    assert "hook_timeout: expected a number of seconds > 0" in err
