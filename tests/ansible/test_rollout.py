"""The Ansible collection (contrib/ansible) driven by the real ansible-playbook.

Eight emulated hosts (each its own FUSE sysroot, state directory and upload interface) form the
inventory group ``tdx_hosts`` with ``ansible_connection: local``; the playbooks run against
them and the emulators' own counters prove what was (not) written.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from factories.sim import mount_sim

from tdxupdate import fence, lock
from tdxupdate.sim.repo import TRUSTED_KEYS_FILE
from tdxupdate.sim.session import SimHost

ROOT = Path(__file__).resolve().parents[2]
COLLECTION = ROOT / "contrib/ansible/ansible_collections/tdxupdate/tdx"
BIN = Path(sys.executable).parent
ANSIBLE_PLAYBOOK = BIN / "ansible-playbook"
ANSIBLE_GALAXY = BIN / "ansible-galaxy"
TDXUPDATE = BIN / "tdxupdate"
NEWEST = "1.5.24"  # newest eligible for the spr profile in the sample repository
FLEET = 8

pytestmark = [
    pytest.mark.fuse,
    pytest.mark.skipif(
        not ANSIBLE_PLAYBOOK.exists(),
        reason="ansible-core is not installed in this environment (pip install '.[ansible]')",
    ),
]


@dataclass
class Fleet:
    hosts: dict[str, SimHost]
    inventory: Path
    env: dict[str, str]
    record: Path

    def writes(self, name: str) -> int:
        counters = self.hosts[name].state()["upload"]["counters"]
        return int(counters.get("data_writes", 0)) + int(counters.get("loading_writes", 0))

    def uploads(self, name: str) -> int:
        return len(self.hosts[name].state()["uploads"])

    def version(self, name: str) -> str:
        return str(self.hosts[name].state()["module_version"])

    def play(self, playbook: str, *args: str, check: bool = True) -> Run:
        cmd = [str(ANSIBLE_PLAYBOOK), f"tdxupdate.tdx.{playbook}", "-i", str(self.inventory)]
        proc = subprocess.run(
            [*cmd, *args], env=self.env, capture_output=True, text=True, timeout=300
        )
        run = Run(proc.returncode, proc.stdout, proc.stderr)
        if check and proc.returncode != 0:
            pytest.fail(f"ansible-playbook exit {proc.returncode}\n{run.output}")
        return run


@dataclass
class Run:
    rc: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    def recap(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for line in self.stdout.splitlines():
            m = re.match(r"^(\S+)\s+:\s+(ok=.*)$", line)
            if m:
                out[m.group(1)] = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", m.group(2))}
        return out


@pytest.fixture(scope="module")
def collections_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The collection installed the way an operator installs it."""
    target = tmp_path_factory.mktemp("collections")
    env = {**os.environ, "ANSIBLE_HOME": str(target / "home")}
    subprocess.run(
        [str(ANSIBLE_GALAXY), "collection", "install", str(COLLECTION), "-p", str(target)],
        check=True,
        capture_output=True,
        env=env,
        timeout=120,
    )
    assert (target / "ansible_collections/tdxupdate/tdx/playbooks/rolling_update.yml").exists()
    return target


def make_fleet(
    tmp_path: Path, cache: Path, collections: Path, special: dict[str, dict[str, Any]]
) -> contextlib.AbstractContextManager[Fleet]:
    @contextlib.contextmanager
    def manage() -> Iterator[Fleet]:
        with contextlib.ExitStack() as stack:
            hosts: dict[str, SimHost] = {}
            inv_hosts: dict[str, dict[str, Any]] = {}
            for i in range(1, FLEET + 1):
                name = f"h{i}"
                hosts[name] = stack.enter_context(
                    mount_sim(tmp_path, "spr", cache_dir=cache, **special.get(name, {}))
                )
                inv_hosts[name] = {
                    "ansible_connection": "local",
                    "ansible_python_interpreter": sys.executable,
                    "tdxupdate_executable": str(TDXUPDATE),
                    "tdxupdate_sysroot": str(hosts[name].sysroot),
                    "tdxupdate_repo": str(hosts[name].repo),
                    "tdxupdate_state_dir": str(tmp_path / f"state-{name}"),
                    "tdxupdate_trusted_keys": str(cache / TRUSTED_KEYS_FILE),
                    "tdxupdate_config": "/dev/null",
                }
            inventory = tmp_path / "inventory.json"
            inventory.write_text(
                json.dumps({"all": {"children": {"tdx_hosts": {"hosts": inv_hosts}}}})
            )
            home = tmp_path / "home"
            home.mkdir(exist_ok=True)
            record = tmp_path / "rollout.json"
            env = {
                **os.environ,
                "HOME": str(home),
                "ANSIBLE_HOME": str(home / ".ansible"),
                "ANSIBLE_COLLECTIONS_PATH": str(collections),
                "ANSIBLE_LOCAL_TEMP": str(tmp_path / "ansible-tmp"),
                "ANSIBLE_NOCOLOR": "1",
                "ANSIBLE_FORCE_COLOR": "0",
                "ANSIBLE_RETRY_FILES_ENABLED": "0",
                "ANSIBLE_FORKS": "8",
                "ANSIBLE_DEPRECATION_WARNINGS": "0",
                "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            }
            for key in ("TDXUPDATE_SYSROOT", "TDXUPDATE_REPO", "TDXUPDATE_STATE_DIR"):
                env.pop(key, None)
            yield Fleet(hosts, inventory, env, record)

    return manage()


@pytest.fixture
def fleet_factory(
    tmp_path: Path, sim_cache: Path, collections_path: Path, sample_repo: Any
) -> Iterator[Any]:
    with contextlib.ExitStack() as stack:

        def make(special: dict[str, dict[str, Any]] | None = None) -> Fleet:
            return stack.enter_context(
                make_fleet(tmp_path, sim_cache, collections_path, special or {})
            )

        yield make


def rollout_args(fleet: Fleet, *more: str) -> list[str]:
    return ["-e", json.dumps({"tdxupdate_rollout_record": str(fleet.record)}), *more]


def test_fleet_rolls_to_newest_and_second_run_changes_nothing(fleet_factory: Any) -> None:
    fleet = fleet_factory()
    run = fleet.play("rolling_update", *rollout_args(fleet))
    recap = run.recap()
    assert set(recap) == {f"h{i}" for i in range(1, FLEET + 1)}, run.output
    for name in fleet.hosts:
        assert fleet.version(name) == NEWEST
        assert fleet.uploads(name) == 1
        assert recap[name]["changed"] == 1, run.output
        assert recap[name]["failed"] == 0
    writes = {name: fleet.writes(name) for name in fleet.hosts}

    again = fleet.play("rolling_update", *rollout_args(fleet))
    for counts in again.recap().values():
        assert counts["changed"] == 0, again.output
    assert {name: fleet.writes(name) for name in fleet.hosts} == writes
    assert "skipped: no change" in again.output
    assert "completed on every host" in fleet.record.read_text()


def test_fault_on_one_host_stops_the_rollout_before_later_batches(fleet_factory: Any) -> None:
    # Batches: [h1], [h2, h3], [h4..h8]; h2 refuses the image (non-fatal kernel error).
    fleet = fleet_factory({"h2": {"faults": ["transferring:hw-error"]}})
    run = fleet.play("rolling_update", *rollout_args(fleet), check=False)
    assert run.rc != 0
    assert fleet.version("h1") == NEWEST
    assert fleet.version("h2") == "1.5.06"
    # the sibling in the failing batch was still updated and confirmed by its own task
    assert fleet.version("h3") == NEWEST
    for i in range(4, FLEET + 1):
        assert fleet.writes(f"h{i}") == 0, f"h{i} was written to"
        assert fleet.uploads(f"h{i}") == 0
    assert "ROLLOUT STOPPED at h2" in run.output
    record = json.loads(fleet.record.read_text())
    assert record["stopped_at"] == "h2"
    assert "hw-error" in record["reason"] or "exit 1" in run.output

    # fixed host, re-run: the updated hosts are skipped, the rest move
    fleet.hosts["h2"].control({"clear_faults": True})
    again = fleet.play("rolling_update", *rollout_args(fleet))
    assert "the last rollout stopped at h2" in again.output
    recap = again.recap()
    assert recap["h1"]["changed"] == 0
    assert recap["h3"]["changed"] == 0
    for name in fleet.hosts:
        assert fleet.version(name) == NEWEST


def test_check_mode_writes_nothing_and_says_what_would_change(fleet_factory: Any) -> None:
    fleet = fleet_factory()
    run = fleet.play("rolling_update", *rollout_args(fleet, "--check", "--diff"))
    for name in fleet.hosts:
        assert fleet.writes(name) == 0
        assert fleet.version(name) == "1.5.06"
    assert run.output.count(f"+module_version: {NEWEST}") == FLEET, run.output
    assert all(counts["changed"] == 1 for counts in run.recap().values()), run.output
    assert not fleet.record.exists()


def test_try_again_later_is_retried_and_the_rollout_continues(fleet_factory: Any) -> None:
    # h1 (the canary) runs a kernel with the TD-build guard; a build refuses the first upload.
    fleet = fleet_factory({"h1": {"generation": "v10"}})
    fleet.hosts["h1"].control({"fault": "device-busy", "times": 1})
    run = fleet.play("rolling_update", *rollout_args(fleet, "-e", "tdxupdate_busy_delay=0.2", "-v"))
    assert fleet.uploads("h1") == 2
    assert fleet.hosts["h1"].state()["uploads"][0]["result"] != "success"
    assert "device-busy" in run.output
    for name in fleet.hosts:
        assert fleet.version(name) == NEWEST


def test_fleet_report_has_every_host_and_the_reference_values(fleet_factory: Any) -> None:
    fleet = fleet_factory({"h8": {"module": "1.5.08"}})
    out = fleet.record.parent / "report"
    fleet.play("fleet_report", "-e", f"tdxupdate_report_dir={out}")
    report = json.loads((out / "fleet-report.json").read_text())
    assert report["hosts"] == FLEET
    rows = {row["host"]: row for row in report["rows"]}
    assert rows["h1"]["module_version"] == "1.5.06"
    assert rows["h8"]["module_version"] == "1.5.08"
    assert all(row["target_version"] == NEWEST for row in rows.values())
    assert all(row["module_lost"] is False for row in rows.values())
    after = [ref["version"] for ref in report["reference_values"]["after_rollout"]]
    assert after == [NEWEST]
    during = {ref["version"] for ref in report["reference_values"]["during_rollout"]}
    assert during == {"1.5.06", "1.5.08", NEWEST}
    csv_lines = (out / "fleet-report.csv").read_text().splitlines()
    assert csv_lines[0].startswith("host,module_version,seamsvn,mrseam")
    assert len(csv_lines) == FLEET + 1
    markdown = (out / "fleet-report.md").read_text()
    assert "| h8 | 1.5.08 |" in markdown
    assert "Module lost on: none" in markdown
    for name in fleet.hosts:
        assert fleet.writes(name) == 0


def test_lost_module_on_the_canary_fails_distinctly_and_touches_no_other_host(
    fleet_factory: Any,
) -> None:
    fleet = fleet_factory({"h1": {"faults": ["transferring:hw-error:fatal"]}})
    run = fleet.play("rolling_update", *rollout_args(fleet), check=False)
    assert run.rc != 0
    assert "ROLLOUT STOPPED at h1 (MODULE LOST - reboot this host)" in run.output
    assert "TDX MODULE LOST on this host (fatal)" in run.output
    record = json.loads(fleet.record.read_text())
    assert record["stopped_at"] == "h1"
    for i in range(2, FLEET + 1):
        assert fleet.writes(f"h{i}") == 0
    out = fleet.record.parent / "report"
    fleet.play("fleet_report", "-e", f"tdxupdate_report_dir={out}")
    report = json.loads((out / "fleet-report.json").read_text())
    assert report["module_lost"] == ["h1"]


def test_pre_update_command_runs_on_every_host_before_its_update(
    fleet_factory: Any, tmp_path: Path
) -> None:
    """``tdxupdate_pre_update_command`` reaches tdxupdate as --pre-update-command (issue 10 §1):
    it runs once per host, with the host's versions in its environment, before that host's
    first write, and a host whose command fails is not written to."""
    fleet = fleet_factory()
    log = tmp_path / "pre-update.log"
    h5 = fleet.hosts["h5"].sysroot
    command = (
        f'echo "$TDXUPDATE_SYSROOT $TDXUPDATE_FROM $TDXUPDATE_TO" >> {log}; '
        f'test "$TDXUPDATE_SYSROOT" != "{h5}"'
    )
    run = fleet.play(
        "rolling_update",
        *rollout_args(
            fleet, "-e", json.dumps({"tdxupdate_pre_update_command": command}),
            "-e", "tdxupdate_busy_retries=0",
        ),
        check=False,
    )  # fmt: skip
    lines = sorted(log.read_text().splitlines())
    ran = {line.split()[0] for line in lines}
    assert all(line.split()[1:] == ["1.5.06", NEWEST] for line in lines), lines
    # h5 is in the last batch: every host before and beside it ran the command and updated
    assert str(h5) in ran
    assert fleet.writes("h5") == 0
    assert fleet.version("h5") == "1.5.06"
    assert "pre-update-failed" in run.output, run.output
    for name in ("h1", "h2", "h3", "h4"):
        assert str(fleet.hosts[name].sysroot) in ran
        assert fleet.version(name) == NEWEST


def test_a_held_lock_is_retried_with_back_off_and_the_rollout_continues(
    fleet_factory: Any, tmp_path: Path
) -> None:
    """Another tdxupdate holding the canary's lock is exit 75 (``locked``): the module retries
    it with back-off, the update goes through once the lock is free, and the rollout goes on."""
    fleet = fleet_factory()
    calls = tmp_path / "h1-calls.log"
    wrapper = tmp_path / "tdxupdate-h1"
    wrapper.write_text(
        f'#!/bin/sh\n"{TDXUPDATE}" "$@"\nrc=$?\necho "$* rc=$rc" >> "{calls}"\nexit $rc\n'
    )
    wrapper.chmod(0o755)
    inventory = json.loads(fleet.inventory.read_text())
    inventory["all"]["children"]["tdx_hosts"]["hosts"]["h1"]["tdxupdate_executable"] = str(wrapper)
    fleet.inventory.write_text(json.dumps(inventory))

    held = lock.acquire(tmp_path / "state-h1")
    refused = threading.Event()

    def release_after_a_refusal() -> None:
        # Free the lock only once h1's real --update has been refused with 75.
        while not refused.is_set():
            lines = calls.read_text().splitlines() if calls.exists() else []
            if any("--update --json rc=75" in line for line in lines):
                refused.set()
            else:
                refused.wait(0.05)
        held.release()

    watcher = threading.Thread(target=release_after_a_refusal, daemon=True)
    watcher.start()
    try:
        run = fleet.play(
            "rolling_update", *rollout_args(fleet, "-e", "tdxupdate_busy_delay=0.5", "-v")
        )
    finally:
        refused.set()
        watcher.join(10)
        held.release()
    updates = [
        line.rsplit(" rc=", 1)[1]
        for line in calls.read_text().splitlines()
        if "--update" in line and "--dry-run" not in line
    ]
    # refused (75) while the lock was held, at least once, then one run that went through
    assert len(updates) >= 2, updates
    assert set(updates[:-1]) == {"75"}, updates
    assert updates[-1] == "0", updates
    assert '"error_code": "locked"' in run.output, run.output
    assert fleet.uploads("h1") == 1  # the refused run never reached the kernel
    for name in fleet.hosts:
        assert fleet.version(name) == NEWEST


def test_fence_and_hook_options_reach_tdxupdate(fleet_factory: Any, tmp_path: Path) -> None:
    """``tdxupdate_fence_timeout`` is --fence-timeout: a TD build on the canary outlasting it
    is td-build-in-progress, nothing is written anywhere; ``tdxupdate_post_update_command``
    runs after the attempt."""
    fleet = fleet_factory()
    upload_dir = Path(fleet.hosts["h1"].sysroot) / "sys/class/firmware/tdx_module"
    log = tmp_path / "post-update.log"
    fence.register(upload_dir, "td1")
    try:
        run = fleet.play(
            "rolling_update",
            *rollout_args(
                fleet,
                "-e",
                json.dumps(
                    {
                        "tdxupdate_fence_timeout": 0.3,
                        "tdxupdate_busy_retries": 0,
                        "tdxupdate_post_update_command": f"echo done >> {log}",
                        "tdxupdate_hook_timeout": 10,
                    }
                ),
            ),
            check=False,
        )
    finally:
        fence.unregister(upload_dir, "td1")
    assert run.rc != 0
    assert "td-build-in-progress" in run.output, run.output
    assert "still in progress after 0.3 s" in run.output, run.output
    for name in fleet.hosts:
        assert fleet.writes(name) == 0, f"{name} was written to"
    assert not log.exists()  # the fence refused before any attempt: no post-update command

    again = fleet.play(
        "rolling_update",
        *rollout_args(
            fleet, "-e", json.dumps({"tdxupdate_post_update_command": f"echo done >> {log}"})
        ),
    )
    assert again.rc == 0
    assert log.read_text().splitlines() == ["done"] * FLEET
    for name in fleet.hosts:
        assert fleet.version(name) == NEWEST


def test_facts_carry_the_attestation_keys(fleet_factory: Any) -> None:
    fleet = fleet_factory({"h8": {"module": "1.5.08"}})
    out = fleet.record.parent / "report"
    fleet.play("fleet_report", "-e", f"tdxupdate_report_dir={out}")
    report = json.loads((out / "fleet-report.json").read_text())
    rows = {row["host"]: row for row in report["rows"]}
    for row in rows.values():
        assert row["in_mapping"] is True
        assert row["identity_source"] == "published"
        assert row["module_identity"] == "TDX_01"
        assert row["target_svn_gain"] is True
    assert report["not_in_mapping"] == []
    assert report["no_svn_gain"] == []
