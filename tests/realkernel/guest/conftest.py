"""Fixtures of the in-guest tests: real fw_upload devices, sysroots around them, the CLI.

Collected only inside the VM (``tests/realkernel/conftest.py`` ignores this directory
elsewhere); if it is imported anyway outside the VM, every test fails at setup saying so —
these tests write kernel interfaces and must never run on a developer's host.

Devices: ``tdx_module`` (the name of every generation from v4 on) and ``seamldr_upload`` (the
v2/v3 name), registered once per session through lib/test_firmware.c. Before and after every
test both are reset, and a test that leaves an upload running or an injection pending fails.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import subprocess as _subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from realkernel.guest import kfw

NAMES = ("tdx_module", "seamldr_upload")


@pytest.fixture(scope="session", autouse=True)
def _inside_the_vm() -> None:
    if os.environ.get("TDXUPDATE_RK_GUEST") != "1" or not kfw.TEST_FIRMWARE.is_dir():
        pytest.fail(
            "the tests in tests/realkernel/guest/ run only inside the real-kernel VM "
            "(python -m pytest -m realkernel starts it); "
            f"{kfw.TEST_FIRMWARE} is missing here",
            pytrace=False,
        )
    if os.geteuid() != 0:
        pytest.fail("the real-kernel guest tests must run as root", pytrace=False)


@pytest.fixture(scope="session")
def devices() -> dict[str, Path]:
    """Both test devices, registered once (a name can be registered only once per boot)."""
    return {name: kfw.register(name) for name in NAMES}


@pytest.fixture(autouse=True)
def _idle_interfaces(devices: dict[str, Path]) -> Iterator[None]:
    for fw in devices.values():
        kfw.reset(fw)
    yield
    problems = []
    pending = kfw.pending_injection()
    if pending:
        problems.append(f"injection {pending!r} was left pending")
    for name, fw in devices.items():
        state = kfw.status(fw)
        if state != "idle":
            problems.append(f"{name} was left {state!r}")
        kfw.reset(fw)
    if problems:
        pytest.fail("the test left the kernel busy: " + "; ".join(problems), pytrace=False)


@pytest.fixture
def tdx_module(devices: dict[str, Path]) -> Path:
    return devices["tdx_module"]


@pytest.fixture
def seamldr_upload(devices: dict[str, Path]) -> Path:
    return devices["seamldr_upload"]


# --------------------------------------------------------------------------- sysroots


def make_sysroot(root: Path, *, generation: str, **host: Any) -> Path:
    """A plain-file host tree whose upload directory is the real kernel's fw_upload device.

    The tdx_host attributes (versions, remaining updates, CPU lists, cpuinfo) stay plain
    files; ``sys/class/firmware/<name>`` becomes a symlink to ``/sys/class/firmware/<name>``
    and the plain device directory is replaced by the same link, so every upload file the
    tool touches is the kernel's own.
    """
    from factories.hosts import build_host_tree, host_paths

    build_host_tree(root, generation=generation, firmware=True, **host)
    paths = host_paths(generation)
    name = Path(paths["class_upload_dir"]).name
    real = kfw.CLASS_FIRMWARE / name
    if not real.is_dir():
        raise AssertionError(f"{real} is not registered")
    for key in ("class_upload_dir", "upload_dir"):
        link = root / paths[key].lstrip("/")
        if link.is_symlink() or link.is_file():
            link.unlink()
        elif link.is_dir():
            for child in link.iterdir():
                child.unlink()
            link.rmdir()
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(real)
    return root


# --------------------------------------------------------------------------- the CLI


@dataclass(frozen=True)
class CliRun:
    args: list[str]
    returncode: int
    doc: dict[str, Any]
    stderr: str

    def describe(self) -> str:
        return (
            f"tdxupdate {' '.join(self.args)} -> exit {self.returncode}\n"
            f"stdout JSON: {json.dumps(self.doc, indent=1)[:4000]}\nstderr: {self.stderr[-3000:]}"
        )


@dataclass(frozen=True)
class UpdateHost:
    """A sysroot around a real fw_upload device, a repository, keys and a state dir."""

    sysroot: Path
    repo: Path
    state_dir: Path
    trusted_keys: Path
    device: Path  # the real /sys/class/firmware/<name>
    name: str

    def cli(self, *extra: str, timeout: float = 60.0, subprocess: bool = False) -> CliRun:
        args = [
            "--update",
            *extra,
            "--sysroot",
            str(self.sysroot),
            "--repo",
            str(self.repo),
            "--state-dir",
            str(self.state_dir),
            "--trusted-keys",
            str(self.trusted_keys),
            "--timeout",
            f"{timeout:g}",
            "--json",
        ]
        return run_cli(args, subprocess=subprocess)

    def history(self) -> list[dict[str, Any]]:
        path = self.state_dir / "history.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def run_cli(args: list[str], *, subprocess: bool = False) -> CliRun:
    """The CLI on ``args``: ``tdxupdate.cli.main`` in this process, or ``python -m tdxupdate``.

    In-process is the default because a Python start costs ~8 s under TCG (the imports of the
    CLI alone ~3 s); the code run is the same ``main`` the entry point calls, and every
    concurrent party in these tests is the kernel, not a second process. At least one test
    goes through ``python -m tdxupdate`` to cover the entry point.
    """
    if subprocess:
        returncode, stdout, stderr = _cli_subprocess(args)
    else:
        returncode, stdout, stderr = _cli_in_process(args)
    try:
        doc = json.loads(stdout)
    except json.JSONDecodeError:
        raise AssertionError(
            f"tdxupdate {' '.join(args)} -> exit {returncode}, stdout is not one JSON "
            f"document: {stdout[:2000]!r}\nstderr: {stderr[-3000:]}"
        ) from None
    return CliRun(args, returncode, doc, stderr)


def _cli_in_process(args: list[str]) -> tuple[int, str, str]:
    from tdxupdate import cli

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            returncode = cli.main(args)
        except SystemExit as exc:
            returncode = exc.code if isinstance(exc.code, int) else 1
    return returncode, out.getvalue(), err.getvalue()


def _cli_subprocess(args: list[str]) -> tuple[int, str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TDXUPDATE_")}
    python = os.environ.get("TDXUPDATE_RK_PYTHON", sys.executable)
    proc = _subprocess.run(
        [python, "-m", "tdxupdate", *args],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        check=False,
    )
    return proc.returncode, proc.stdout, proc.stderr


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def make_update_host(tmp_path: Path, devices: dict[str, Path]) -> Any:
    """``make_update_host(generation, images={"1.5.07": bytes}, module="1.5.06")``."""
    from factories.images import test_key, write_repo

    def make(generation: str, images: dict[str, bytes], **host: Any) -> UpdateHost:
        sysroot = make_sysroot(tmp_path / "sysroot", generation=generation, **host)
        repo = write_repo(tmp_path / "repo", images)
        keys = tmp_path / "trusted-keys"
        keys.write_text(f"# the session's test key\n{test_key().fingerprint}\n")
        state = tmp_path / "state"
        state.mkdir()
        name = "seamldr_upload" if generation in ("G1", "G2") else "tdx_module"
        return UpdateHost(sysroot, repo, state, keys, devices[name], name)

    return make
