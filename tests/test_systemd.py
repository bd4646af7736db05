"""contrib/systemd units and the cron example: valid, hardened as documented, runnable options.

``systemd-analyze verify`` needs the ExecStart binary to exist and the Documentation= man page
to be installed. The test copies the units to a temporary directory and changes exactly one
thing, the ExecStart path, to a wrapper that runs this checkout's ``python -m tdxupdate``;
the man page is installed into a temporary MANPATH from ``man/tdxupdate.8``.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tdxupdate.cli_options import command
from tdxupdate.errors import EXIT_CODES
from tdxupdate.settings import DEFAULT_STATE_DIR

REPO_ROOT = Path(__file__).resolve().parent.parent
UNITS = REPO_ROOT / "contrib" / "systemd"
SERVICE = UNITS / "tdxupdate.service"
TIMER = UNITS / "tdxupdate.timer"
BOOT = UNITS / "tdxupdate-boot.service"
CRON = REPO_ROOT / "contrib" / "cron" / "tdxupdate"
ADMIN_GUIDE = REPO_ROOT / "README.md"
SHIPPED_EXEC = "/usr/bin/tdxupdate"


def directives(path: Path) -> list[tuple[str, str, str]]:
    """(section, key, value) in file order; repeated keys kept (systemd allows them)."""
    out: list[tuple[str, str, str]] = []
    current = ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        out.append((current, key.strip(), value.strip()))
    return out


def values(path: Path, section: str, key: str) -> list[str]:
    return [v for s, k, v in directives(path) if s == section and k == key]


def systemd_analyze() -> str:
    path = shutil.which("systemd-analyze")
    if path is None:
        pytest.skip("systemd-analyze is not installed (Debian: apt-get install systemd)")
    return path


@pytest.fixture
def installed(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """The units in a temporary directory, ExecStart pointing at a working tdxupdate."""
    wrapper = tmp_path / "bin" / "tdxupdate"
    wrapper.parent.mkdir()
    wrapper.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -m tdxupdate "$@"\n')
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    units = tmp_path / "units"
    units.mkdir()
    text = SERVICE.read_text(encoding="utf-8")
    assert text.count(f"ExecStart={SHIPPED_EXEC} ") == 1
    (units / SERVICE.name).write_text(
        text.replace(f"ExecStart={SHIPPED_EXEC} ", f"ExecStart={wrapper} ")
    )
    shutil.copy(TIMER, units / TIMER.name)
    boot = BOOT.read_text(encoding="utf-8")
    assert boot.count(f"ExecStart=-{SHIPPED_EXEC} ") == 1
    (units / BOOT.name).write_text(
        boot.replace(f"ExecStart=-{SHIPPED_EXEC} ", f"ExecStart=-{wrapper} ")
    )
    man8 = tmp_path / "man" / "man8"
    man8.mkdir(parents=True)
    shutil.copy(REPO_ROOT / "man" / "tdxupdate.8", man8)
    env = {**os.environ, "MANPATH": str(tmp_path / "man"), "SYSTEMD_LOG_COLOR": "0"}
    return units, env


def verify(units: Path, env: dict[str, str], *names: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [systemd_analyze(), "verify", *(str(units / n) for n in names)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )


# --- systemd-analyze ------------------------------------------------------------------------


def test_units_pass_systemd_analyze_verify(installed: tuple[Path, dict[str, str]]) -> None:
    units, env = installed
    result = verify(units, env, SERVICE.name, TIMER.name, BOOT.name)
    # verify exits 0 even for unknown keys; it only warns, so any output is a failure too.
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_verify_catches_a_broken_unit(installed: tuple[Path, dict[str, str]]) -> None:
    """The harness above is able to fail: a misspelt key is reported."""
    units, env = installed
    service = units / SERVICE.name
    service.write_text(service.read_text().replace("ProtectHome=", "ProtectHomee="))
    result = verify(units, env, SERVICE.name)
    assert "Unknown key 'ProtectHomee'" in result.stdout + result.stderr


def test_timer_calendar_is_valid() -> None:
    [calendar] = values(TIMER, "Timer", "OnCalendar")
    result = subprocess.run(
        [systemd_analyze(), "calendar", calendar], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "Next elapse:" in result.stdout


def security_score() -> float:
    result = subprocess.run(
        [systemd_analyze(), "security", "--offline=true", str(SERVICE)],
        capture_output=True,
        text=True,
        env={**os.environ, "SYSTEMD_LOG_COLOR": "0", "SYSTEMD_COLORS": "0"},
        check=False,
    )
    if "--offline" in result.stderr and "unrecognized" in result.stderr:
        pytest.skip("this systemd-analyze has no --offline (systemd < 250)")
    m = re.search(r"Overall exposure level for tdxupdate\.service: (\d+\.\d)", result.stdout)
    assert m is not None, result.stdout + result.stderr
    return float(m.group(1))


def test_security_score_is_the_one_documented() -> None:
    score = security_score()
    guide = ADMIN_GUIDE.read_text(encoding="utf-8")
    m = re.search(r"rates it \*\*(\d+\.\d) OK\*\*", guide)
    assert m is not None, "README.md does not quote the systemd-analyze security score"
    assert float(m.group(1)) == score
    assert score <= 3.0  # "OK" or better; more exposure than that means hardening was lost


# --- what the service must and must not say -------------------------------------------------


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("Type", "oneshot"),
        ("ProtectSystem", "strict"),
        ("StateDirectory", "tdxupdate"),
        ("CacheDirectory", "tdxupdate"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("NoNewPrivileges", "yes"),
        ("RestrictAddressFamilies", "AF_UNIX AF_INET AF_INET6"),
        ("LockPersonality", "yes"),
        ("MemoryDenyWriteExecute", "yes"),
        ("SystemCallArchitectures", "native"),
        ("SuccessExitStatus", "75"),
    ],
)
def test_service_sets(key: str, value: str) -> None:
    assert values(SERVICE, "Service", key) == [value]


def test_service_has_a_system_call_filter() -> None:
    filters = values(SERVICE, "Service", "SystemCallFilter")
    assert "@system-service" in filters
    assert any(f.startswith("~") for f in filters)


@pytest.mark.parametrize(
    "key",
    [
        "ProtectKernelTunables",  # /sys read-only: the update is a sysfs write
        "PrivateDevices",  # drops CAP_SYS_RAWIO, which the fw_upload data write needs
        "ProcSubset",  # hides /proc/cpuinfo
        "PrivateUsers",  # capabilities in a user namespace do not count for sysfs
        "PrivateNetwork",  # remote repositories
    ],
)
def test_service_avoids_settings_that_break_the_update(key: str) -> None:
    assert [k for _, k, _ in directives(SERVICE) if k == key] == []


def test_service_keeps_cap_sys_rawio() -> None:
    [caps] = values(SERVICE, "Service", "CapabilityBoundingSet")
    assert "CAP_SYS_RAWIO" in caps.split()
    assert not caps.startswith("~")


def test_success_exit_status_is_exactly_the_try_again_later_code() -> None:
    later = {EXIT_CODES[t] for t in ("locked", "upload-busy", "device-busy", "cpus-offline")}
    assert later == {75}
    assert values(SERVICE, "Service", "SuccessExitStatus") == ["75"]


def test_state_directory_is_the_default_state_dir() -> None:
    [state] = values(SERVICE, "Service", "StateDirectory")
    assert Path("/var/lib") / state == DEFAULT_STATE_DIR


def test_exec_start_options_parse_with_the_real_cli() -> None:
    [exec_start] = values(SERVICE, "Service", "ExecStart")
    argv = shlex.split(exec_start)
    assert argv[0] == SHIPPED_EXEC
    ctx = command.make_context("tdxupdate", argv[1:])
    assert ctx.params["a_update"] is not None  # it updates


def test_timer_settings() -> None:
    assert values(TIMER, "Timer", "Persistent") == ["true"]
    assert len(values(TIMER, "Timer", "RandomizedDelaySec")) == 1
    assert values(TIMER, "Install", "WantedBy") == ["timers.target"]
    # No Unit=: the timer starts the service of the same name.
    assert values(TIMER, "Timer", "Unit") == []
    assert SERVICE.stem == TIMER.stem


# --- cron -----------------------------------------------------------------------------------


def cron_jobs() -> list[list[str]]:
    jobs = []
    for raw in CRON.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#") or re.match(r"^[A-Z_]+=", line):
            continue
        jobs.append(line.split(None, 6))
    return jobs


def test_cron_file_has_one_job_for_root_with_valid_time_fields() -> None:
    [job] = cron_jobs()
    assert len(job) == 7
    minute, hour, dom, month, dow, user, _ = job
    assert 0 <= int(minute) <= 59
    assert 0 <= int(hour) <= 23
    assert (dom, month, dow, user) == ("*", "*", "*", "root")


def test_cron_command_is_valid_shell_without_percent_signs() -> None:
    [job] = cron_jobs()
    cmd = job[6]
    assert "%" not in cmd  # cron turns % into a newline
    result = subprocess.run(["sh", "-n", "-c", cmd], capture_output=True, text=True, check=False)
    assert (result.returncode, result.stderr) == (0, "")


def test_cron_command_options_parse_with_the_real_cli() -> None:
    [job] = cron_jobs()
    argv = shlex.split(job[6].split("&&")[-1])
    assert argv[0] == "tdxupdate"
    ctx = command.make_context("tdxupdate", argv[1:])
    assert ctx.params["a_update"] is not None
    assert ctx.params["quiet"] == 1


# --- the boot unit (issue 10 §2) ---------------------------------------------------------------


def test_boot_unit_runs_before_the_hypervisors_and_never_holds_them() -> None:
    before = " ".join(values(BOOT, "Unit", "Before")).split()
    assert {"libvirtd.service", "virtqemud.service"} <= set(before)
    # Ordering only: a failed or skipped update must not stop a hypervisor from starting, and
    # the unit must not pull in (or wait for) the network at boot.
    for key in ("Requires", "Requisite", "BindsTo", "Wants", "PartOf"):
        assert values(BOOT, "Unit", key) == [], key
    after = " ".join(values(BOOT, "Unit", "After")).split()
    assert "network-online.target" not in after
    assert "network.target" not in after
    assert "systemd-modules-load.service" in after
    assert values(BOOT, "Install", "WantedBy") == ["multi-user.target"]


def test_boot_unit_failure_is_logged_not_fatal_and_bounded() -> None:
    [exec_start] = values(BOOT, "Service", "ExecStart")
    assert exec_start.startswith("-")  # a failure does not fail the unit (nor degrade boot)
    argv = shlex.split(exec_start[1:])
    assert argv[0] == SHIPPED_EXEC
    ctx = command.make_context("tdxupdate", argv[1:])
    assert ctx.params["a_update"] is not None
    assert ctx.params["offline"] is True
    timeout = ctx.params["timeout"]
    [start] = values(BOOT, "Service", "TimeoutStartSec")
    m = re.fullmatch(r"(\d+)min", start)
    assert m is not None, start
    # the kernel's wait fits, and the hypervisors wait no more than a few minutes
    assert timeout < int(m.group(1)) * 60 <= 10 * 60
    assert values(BOOT, "Service", "Type") == ["oneshot"]


def test_boot_unit_is_hardened_exactly_like_the_service() -> None:
    def hardening(path: Path) -> list[tuple[str, str, str]]:
        text = path.read_text(encoding="utf-8")
        tail = text[text.index("# --- Hardening") :]
        part = path.with_name("hardening-" + path.name)
        try:
            part.write_text("[Service]\n" + tail.split("[Install]")[0])
            return directives(part)
        finally:
            part.unlink()

    assert hardening(BOOT) == hardening(SERVICE)


def _condition_script(sysroot: Path) -> list[str]:
    """The ExecCondition= command as systemd runs it: "$$" is a literal "$", and the TDX host
    path moved under ``sysroot``."""
    [condition] = values(BOOT, "Service", "ExecCondition")
    argv = shlex.split(condition.replace("$$", "$"))
    return [a.replace("/sys/devices/faux/tdx_host", str(sysroot / "tdx_host")) for a in argv]


@pytest.mark.parametrize("present", [True, False])
def test_boot_unit_waits_for_the_tdx_host_device_then_skips(tmp_path: Path, present: bool) -> None:
    if present:
        (tmp_path / "tdx_host").mkdir()
    [wait] = values(BOOT, "Service", "Environment")[:1]
    assert wait == "TDX_HOST_WAIT=300"  # 30 s in tenths
    result = subprocess.run(
        _condition_script(tmp_path),
        env={**os.environ, "TDX_HOST_WAIT": "3"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    # ExecCondition=: 0 runs the update, 1 skips the unit without failing it
    assert result.returncode == (0 if present else 1), result.stderr
    assert ("no TDX host device" in result.stdout) is not present


def test_boot_unit_starts_the_update_when_the_device_appears_late(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        _condition_script(tmp_path),
        env={**os.environ, "TDX_HOST_WAIT": "600"},
        stdout=subprocess.PIPE,
        text=True,
    )
    (tmp_path / "tdx_host").mkdir()  # kvm_intel finished initialising TDX
    assert proc.wait(timeout=60) == 0
