"""The shipped libvirt hook (contrib/libvirt/tdxupdate-qemu-hook -> tdxupdate-libvirt-hook).

Every test runs the hook exactly as libvirt does: ``HOOK <domain> <operation> <sub-op> <extra>``,
the domain XML on stdin, the answer in the exit status, pointed at an emulated host through
``TDXUPDATE_SYSROOT`` and at a configuration file through ``TDXUPDATE_CONFIG``. The races are
with real ``tdxupdate --update`` processes on the emulator's mainline generation, which has no
TD-build guard: there an update during a TD build corrupts the TD (tests/test_fence.py shows
the emulator doing so when nobody registers the build).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import test_update
from test_update import DEADLINE, SLOW_WRITE_MS, TARGET, Tool, assert_ok, finish, wait_for
from test_update import wait_streaming as _wait_streaming

from tdxupdate import fence
from tdxupdate.libvirt_hook import is_tdx_domain

# tests/test_update.py's repository, emulated hosts (one mount per series) and tools
repo = test_update.repo
hosts = test_update.hosts
tool_for = test_update.tool_for

HOOK = Path(__file__).resolve().parents[1] / "contrib" / "libvirt" / "tdxupdate-qemu-hook"
BIN = Path(sys.executable).parent  # where tdxupdate-libvirt-hook is installed with the package

TDX_XML = b"""<domain type='kvm'>
  <name>{name}</name>
  <memory unit='GiB'>4</memory>
  <os><type arch='x86_64' machine='q35'>hvm</type></os>
  <launchSecurity type='tdx'>
    <policy>0x10000000</policy>
  </launchSecurity>
</domain>
"""
PLAIN_XML = b"""<domain type='kvm'>
  <name>{name}</name>
  <memory unit='GiB'>4</memory>
  <launchSecurity type='sev-snp'><policy>0x30000</policy></launchSecurity>
</domain>
"""
#: what libvirt passes after the domain name (qemu hook operations, libvirt's hooks.html)
OPERATIONS = {
    "prepare": ("begin", "-"),
    "start": ("begin", "-"),
    "started": ("begin", "-"),
    "stopped": ("end", "-"),
    "release": ("end", "-"),
    "migrate": ("begin", "-"),
    "restore": ("begin", "-"),
    "reconnect": ("begin", "-"),
    "attach": ("begin", "-"),
}


@dataclass
class Hook:
    tool: Tool
    config: Path

    @property
    def upload_dir(self) -> Path:
        return Path(self.tool.host.sysroot) / "sys/class/firmware/tdx_module"

    def env(self) -> dict[str, str]:
        return {
            "PATH": f"{BIN}:/usr/bin:/bin",
            "TDXUPDATE_SYSROOT": str(self.tool.host.sysroot),
            "TDXUPDATE_CONFIG": str(self.config),
        }

    def start(self, domain: str, operation: str) -> subprocess.Popen[bytes]:
        sub, extra = OPERATIONS[operation]
        return subprocess.Popen(
            [str(HOOK), domain, operation, sub, extra],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=self.env(),
        )

    def __call__(
        self, domain: str, operation: str, xml: bytes | None = None
    ) -> subprocess.CompletedProcess[str]:
        proc = self.start(domain, operation)
        return self.finish(proc, TDX_XML.replace(b"{name}", domain.encode()) if xml is None
                           else xml)  # fmt: skip

    @staticmethod
    def finish(
        proc: subprocess.Popen[bytes], xml: bytes | None = None
    ) -> subprocess.CompletedProcess[str]:
        try:
            out, err = proc.communicate(xml, timeout=DEADLINE)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            pytest.fail(f"the hook did not exit within {DEADLINE:g} s")
        assert out == b""
        return subprocess.CompletedProcess(proc.args, proc.returncode, "", err.decode())

    def registered(self) -> list[str]:
        return [r.name for r in fence.registrations(self.upload_dir)]


@pytest.fixture
def hook_for(tool_for: Callable[[str], Tool], tmp_path: Path) -> Callable[..., Hook]:
    def make(series: str = "ml", *, wait: float = DEADLINE, max_build: float = 600) -> Hook:
        config = tmp_path / f"tdxupdate-{series}.conf"
        config.write_text(f"td_build_wait = {wait}\ntd_build_max = {max_build}\n")
        config.chmod(0o644)
        h = Hook(tool_for(series), config)
        for name in h.registered():  # what an earlier failed test left behind
            fence.unregister(h.upload_dir, name)
        return h

    return make


def xml_of(template: bytes, name: str) -> bytes:
    return template.replace(b"{name}", name.encode())


# --- what the hook does on its own ---------------------------------------------------------------


@pytest.mark.parametrize("operation", list(OPERATIONS))
def test_other_domains_are_ignored_at_every_operation(
    hook_for: Callable[..., Hook], operation: str
) -> None:
    hook = hook_for(wait=0.1)
    with fence.hold(hook.upload_dir, timeout=DEADLINE):  # an update runs: still no effect
        res = hook("plain", operation, xml_of(PLAIN_XML, "plain"))
    assert (res.returncode, res.stderr) == (0, "")
    assert hook.registered() == []


@pytest.mark.parametrize("end", ["started", "stopped", "release"])
def test_a_tdx_domain_is_registered_from_prepare_until_it_is_started_or_gone(
    hook_for: Callable[..., Hook], end: str
) -> None:
    hook = hook_for()
    res = hook("td1", "prepare")
    assert (res.returncode, res.stderr) == (0, "")
    assert hook.registered() == ["td1"]
    for operation in ("start", "reconnect"):  # operations that do not end the build
        assert hook("td1", operation).returncode == 0
    assert hook.registered() == ["td1"]
    res = hook("td1", end)
    assert (res.returncode, res.stderr) == (0, "")
    assert hook.registered() == []


def test_prepare_is_refused_while_an_update_holds_the_fence(hook_for: Callable[..., Hook]) -> None:
    hook = hook_for(wait=0.2)
    with fence.hold(hook.upload_dir, timeout=DEADLINE):
        res = hook("td1", "prepare")
    assert res.returncode == 75
    lines = res.stderr.splitlines()
    assert lines[-1] == (
        f"tdxupdate-libvirt-hook: {hook.upload_dir}: a TDX module update is running; TD td1 was "
        "not started (waited 0.2 s); try again once it has finished"
    )
    assert hook.registered() == []


@pytest.mark.parametrize(
    "xml",
    [
        b"<!DOCTYPE d [<!ENTITY x 'tdx'>]><domain><launchSecurity type='&x;'/></domain>",
        b"<domain><launchSecurity type='tdx'>",
        b"<network><launchSecurity type='tdx'/></network>",
        b"",
    ],
    ids=["entities", "truncated", "not-a-domain", "empty"],
)
def test_xml_it_cannot_trust_refuses_prepare_and_never_blocks_the_end(
    hook_for: Callable[..., Hook], xml: bytes
) -> None:
    hook = hook_for()
    res = hook("td1", "prepare", xml)
    assert res.returncode == 65
    assert res.stderr.startswith("tdxupdate-libvirt-hook: domain XML: ")
    assert len(res.stderr.splitlines()) == 1
    assert hook.registered() == []
    assert hook("td1", "stopped", xml).returncode == 0


def test_a_broken_configuration_is_said_and_the_builtin_waits_used(
    hook_for: Callable[..., Hook],
) -> None:
    hook = hook_for()
    hook.config.write_text("td_build_wait = -1\n")
    res = hook("td1", "prepare")
    assert res.returncode == 0
    assert "warning" in res.stderr
    assert "td_build_wait" in res.stderr
    assert hook.registered() == ["td1"]
    assert hook("td1", "started").returncode == 0


def test_is_tdx_domain_reads_only_the_launch_security_of_the_domain() -> None:
    assert is_tdx_domain(xml_of(TDX_XML, "a"))
    assert not is_tdx_domain(xml_of(PLAIN_XML, "a"))
    assert not is_tdx_domain(b"<domain><devices><launchSecurity type='tdx'/></devices></domain>")


def test_without_the_entry_point_the_script_refuses_prepare_only(tmp_path: Path) -> None:
    env = {"PATH": str(tmp_path), "TDXUPDATE_SYSROOT": str(tmp_path)}
    if any(Path(d, "tdxupdate-libvirt-hook").exists() for d in ("/usr/bin", "/usr/local/bin")):
        pytest.skip("tdxupdate-libvirt-hook is installed system-wide")
    for operation, want in (("prepare", 69), ("started", 0)):
        res = subprocess.run([str(HOOK), "td1", operation, "begin", "-"], env=env,
                             input=b"", capture_output=True, timeout=DEADLINE)  # fmt: skip
        assert res.returncode == want


def test_the_script_is_executable() -> None:
    assert os.access(HOOK, os.X_OK)


# --- racing real updates on the mainline generation (no kernel guard) ---------------------------


def test_an_update_racing_a_hook_registered_build_waits_and_never_corrupts_it(
    hook_for: Callable[..., Hook],
) -> None:
    hook = hook_for("ml")
    host = hook.tool.host
    # libvirt: prepare (the hook registers), then QEMU builds the TD
    assert hook("td1", "prepare").returncode == 0
    host.control({"td_build": "start", "name": "td1"})
    proc = hook.tool.start("--update", "--json", "--fence-timeout", str(DEADLINE))
    wait_for(lambda: fence.update_running(hook.upload_dir), "the update to hold the fence")
    assert host.state()["uploads"] == []
    # the build ends, libvirt reports the domain started
    host.control({"td_build": "finish", "name": "td1"})
    assert hook("td1", "started").returncode == 0
    assert_ok(finish(proc))
    state = host.state()
    assert state["corrupted_tds"] == []
    assert state["module_version"] == TARGET


def test_an_update_exits_75_when_the_hooks_build_outlasts_its_fence_timeout(
    hook_for: Callable[..., Hook],
) -> None:
    hook = hook_for("ml")
    host = hook.tool.host
    assert hook("td1", "prepare").returncode == 0
    host.control({"td_build": "start", "name": "td1"})
    res = finish(hook.tool.start("--update", "--json", "--fence-timeout", "0.5"))
    assert res.code == 75
    assert res.doc["error"]["code"] == "td-build-in-progress"
    state = host.state()
    assert state["uploads"] == []
    assert state["corrupted_tds"] == []
    host.control({"td_build": "finish", "name": "td1"})
    assert hook("td1", "started").returncode == 0
    assert_ok(hook.tool("--update", "--json"))  # the build is over: the next run updates
    assert host.state()["corrupted_tds"] == []


def test_a_td_launch_during_an_update_is_refused(hook_for: Callable[..., Hook]) -> None:
    hook = hook_for("ml", wait=0.2)
    host = hook.tool.host
    host.control({"fault": f"slow-write={SLOW_WRITE_MS}"})
    proc = hook.tool.start("--update", "--json")
    _wait_streaming(host, proc)
    res = hook("td1", "prepare")
    assert res.returncode == 75  # libvirt does not start the domain: QEMU builds nothing
    assert hook.registered() == []
    assert_ok(finish(proc))
    assert host.state()["corrupted_tds"] == []


def test_a_td_launch_during_an_update_waits_for_it_then_builds(
    hook_for: Callable[..., Hook],
) -> None:
    hook = hook_for("ml")
    host = hook.tool.host
    host.control({"fault": f"slow-write={SLOW_WRITE_MS}"})
    proc = hook.tool.start("--update", "--json")
    _wait_streaming(host, proc)
    launch = hook.start("td1", "prepare")
    assert launch.stdin is not None
    launch.stdin.write(xml_of(TDX_XML, "td1"))
    launch.stdin.close()
    launch.stdin = None
    assert_ok(finish(proc))
    res = Hook.finish(launch)
    assert res.returncode == 0
    assert "a TDX module update holds the TD-build fence; waiting up to" in res.stderr
    assert hook.registered() == ["td1"]
    host.control({"td_build": "start", "name": "td1"})  # only now does QEMU build the TD
    host.control({"td_build": "finish", "name": "td1"})
    assert hook("td1", "started").returncode == 0
    state = host.state()
    assert state["corrupted_tds"] == []
    assert state["module_version"] == TARGET


def test_a_stale_registration_left_by_a_crashed_launch_never_blocks_updates(
    hook_for: Callable[..., Hook],
) -> None:
    hook = hook_for("ml", max_build=0.001)
    assert hook("td1", "prepare").returncode == 0  # and libvirt never called started
    wait_for(lambda: fence.registrations(hook.upload_dir)[0].expires < fence.now(),
             "the registration to expire")  # fmt: skip
    doc = assert_ok(hook.tool("--update", "--json"))
    assert doc["to_version"] == TARGET
    assert hook.registered() == []


# --- with the generic pre_update / post_update commands ------------------------------------------


def launch_command(hook: Hook, name: str, tmp_path: Path) -> str:
    """A shell command that starts TD ``name`` through the hook, as a pre/post command would."""
    xml = tmp_path / f"{name}.xml"
    xml.write_bytes(xml_of(TDX_XML, name))
    return f"{HOOK} {name} prepare begin - < {xml}"


def test_the_fence_is_already_held_while_the_pre_update_command_runs(
    hook_for: Callable[..., Hook], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hook = hook_for("ml", wait=0.2)
    for name, value in hook.env().items():
        monkeypatch.setenv(name, value)
    res = hook.tool("--update", "--json", "--pre-update-command",
                    launch_command(hook, "td1", tmp_path))  # fmt: skip
    doc = res.doc
    assert res.code == 75
    assert doc["error"]["code"] == "pre-update-failed"
    assert doc["pre_update"]["exit_code"] == 75  # the launch was refused: the fence was held
    assert "a TDX module update is running; TD td1 was not started" in doc["pre_update"]["output"]
    assert hook.registered() == []
    assert hook.tool.host.state()["uploads"] == []


def test_the_fence_is_released_before_the_post_update_command_runs(
    hook_for: Callable[..., Hook], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hook = hook_for("ml", wait=0.2)
    for name, value in hook.env().items():
        monkeypatch.setenv(name, value)
    doc = assert_ok(hook.tool("--update", "--json", "--post-update-command",
                              launch_command(hook, "td1", tmp_path)))  # fmt: skip
    assert doc["post_update"]["exit_code"] == 0  # TD launches resume once the update is confirmed
    assert doc["to_version"] == TARGET
    assert hook.registered() == ["td1"]
    assert hook("td1", "started").returncode == 0
