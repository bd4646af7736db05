"""The throw-away emulated host of ``--simulate`` (tdxupdate.sim.session): mounted with the
profile's settings and the sample repository, controllable, and gone after the context, errors
included.

Part of the emulator's tests (tests/sim/); the mounted ones carry the ``fuse`` mark and skip
(with the reason) where FUSE is unavailable.
"""

from __future__ import annotations

import errno
import os
import signal
import tempfile
from pathlib import Path
from typing import Any

import pytest
from factories.sim import require_fuse

from sim.helpers import TDX_HOST, image, mounts_under, read, read_errno, upload, upload_dir
from tdxupdate import fence, lock
from tdxupdate.errors import IOFailure, TdxError, UsageError
from tdxupdate.hostfiles import cpu_signature_from_cpuinfo
from tdxupdate.sim import mount as sim_mount
from tdxupdate.sim import session as sim_session
from tdxupdate.sim.mount import is_mounted, unmount, wait_exit
from tdxupdate.sim.repo import KEY_FILE, REPO_DIR, SampleRepo
from tdxupdate.sim.session import SimHost, host_controls, simulated_host
from tdxupdate.versions import Version


@pytest.fixture
def temp_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Where the session's own temporary directory goes, so a test can see it come and go."""
    root = tmp_path / "tmp"
    root.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(root))
    return root


@pytest.fixture
def fuse() -> None:
    require_fuse()


def gone(pid: int) -> bool:
    """The daemon has ended and been reaped (it is our child: no zombie left)."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return True
    return False


def assert_torn_down(host: SimHost, temp_root: Path) -> None:
    assert not is_mounted(host.sysroot)
    assert mounts_under(temp_root) == []
    assert list(temp_root.iterdir()) == []  # the temporary directory is gone
    assert gone(host.pid)


# --- a mounted host ------------------------------------------------------------------------------


@pytest.mark.fuse
@pytest.mark.usefixtures("fuse")
def test_a_profiles_host_is_mounted_with_the_sample_repository(
    temp_root: Path, sim_cache: Path, sample_repo: SampleRepo
) -> None:
    with simulated_host(" GNR ", cache_dir=sim_cache) as host:
        assert host.profile == "gnr"
        assert host.sysroot.parent.parent == temp_root
        assert host.sysroot.name == "host"
        assert is_mounted(host.sysroot)
        # the profile's host: Granite Rapids, module 2.0.04, P-SEAMLDR 2.0.00
        assert read(host.sysroot / TDX_HOST / "version") == "2.0.04\n"
        assert read(host.sysroot / TDX_HOST / "seamldr_version") == "2.0.00\n"
        assert cpu_signature_from_cpuinfo(read(host.sysroot / "proc/cpuinfo")) == 0xA06D0
        assert host.config.module == Version(2, 0, 4)
        assert host.config.seamldr == Version(2, 0, 0)
        # ... trusting the sample repository under the cache directory
        assert host.repo == sim_cache / REPO_DIR == sample_repo.path
        assert host.mapping == sample_repo.mapping_path == host.config.mapping
        assert host.trusted_signers == sample_repo.trusted_signers == host.config.trusted_signers
        assert host.state()["num_remaining_updates"] == 8
    assert_torn_down(host, temp_root)


@pytest.mark.fuse
@pytest.mark.usefixtures("fuse")
def test_control_and_state_drive_the_mounted_emulator(temp_root: Path, sim_cache: Path) -> None:
    with simulated_host("spr", cache_dir=sim_cache, remaining=5) as host:
        assert host.config.remaining == 5
        assert host.state()["num_remaining_updates"] == 5
        host.control({"remaining": 2})
        assert host.state()["num_remaining_updates"] == 2
        assert read(host.sysroot / TDX_HOST / "num_remaining_updates") == "2\n"
        with pytest.raises(ValueError, match=r'^emulator control \{"remaining": -1\}: ') as info:
            host.control({"remaining": -1})
        assert "\n" not in str(info.value)
        assert "remaining" in str(host.state()["control_error"])
        # host_controls gives the same callables for any mounted emulator
        control, state = host_controls(host.sysroot)
        control({"reset": True})
        assert state()["num_remaining_updates"] == 5
        assert state() == host.state()
    assert_torn_down(host, temp_root)


@pytest.mark.fuse
@pytest.mark.usefixtures("fuse")
def test_received_is_the_image_an_upload_started_with(
    temp_root: Path, sim_cache: Path, sample_repo: SampleRepo
) -> None:
    blob = image(sample_repo, "1.5.08")
    with simulated_host(cache_dir=sim_cache) as host:
        assert host.profile == "spr"
        assert host.received() == b""
        assert upload(upload_dir(host), blob) == ""
        assert host.received() == blob
        assert read(host.sysroot / TDX_HOST / "version") == "1.5.08\n"
    assert_torn_down(host, temp_root)


# --- teardown ------------------------------------------------------------------------------------


@pytest.mark.fuse
@pytest.mark.usefixtures("fuse")
def test_an_error_in_the_body_still_unmounts_and_removes_the_directory(
    temp_root: Path, sim_cache: Path
) -> None:
    seen: list[SimHost] = []

    def fail_while_mounted() -> None:
        with simulated_host("legacy-g3", cache_dir=sim_cache) as host:
            seen.append(host)
            assert (host.sysroot / TDX_HOST / "seamldr").is_dir()
            raise KeyError("from the body")

    with pytest.raises(KeyError, match="from the body"):
        fail_while_mounted()
    [host] = seen
    assert_torn_down(host, temp_root)


@pytest.mark.fuse
@pytest.mark.usefixtures("fuse")
def test_a_daemon_that_died_is_still_cleaned_up(temp_root: Path, sim_cache: Path) -> None:
    with simulated_host(cache_dir=sim_cache) as host:
        os.kill(host.pid, signal.SIGKILL)
        os.waitpid(host.pid, 0)
        # the mount is left without its server
        assert read_errno(host.sysroot / TDX_HOST / "version") == errno.ENOTCONN
    assert_torn_down(host, temp_root)


@pytest.mark.fuse
@pytest.mark.usefixtures("fuse")
def test_a_given_workdir_is_kept_and_only_the_mount_point_removed(
    tmp_path: Path, temp_root: Path, sim_cache: Path
) -> None:
    workdir = tmp_path / "work"
    with simulated_host(cache_dir=sim_cache, workdir=workdir) as host:
        assert host.sysroot == workdir / "host"
        (workdir / "mine").write_text("kept", encoding="utf-8")
    assert not is_mounted(workdir / "host")
    assert sorted(p.name for p in workdir.iterdir()) == ["mine"]
    assert list(temp_root.iterdir()) == []  # no temporary directory was made
    assert gone(host.pid)


@pytest.mark.fuse
@pytest.mark.usefixtures("fuse")
def test_the_host_lock_and_fence_of_the_hosts_interface_go_with_it(
    temp_root: Path, sim_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each session's host has a path of its own: what an update of it left under
    /run/tdxupdate would otherwise stay there, two entries a run, until the next boot."""
    run = tmp_path / "run"
    monkeypatch.setattr(lock, "HOST_LOCK_DIR", run)
    with simulated_host(cache_dir=sim_cache) as host:
        interface = upload_dir(host)
        lock.acquire_host(interface).release()
        fence.register(interface, "td1")
        assert len(list(run.iterdir())) == 2
    assert list(run.iterdir()) == []
    assert_torn_down(host, temp_root)


@pytest.mark.fuse
@pytest.mark.usefixtures("fuse")
def test_a_mount_that_cannot_be_removed_is_reported_and_never_deleted_through(
    temp_root: Path, sim_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(mountpoint: Path, **kwargs: object) -> None:
        raise IOFailure(f"{mountpoint}: cannot unmount: Device or resource busy")

    monkeypatch.setattr(sim_session, "unmount", refuse)
    monkeypatch.setattr(sim_session, "wait_exit", lambda pid: True)
    seen: list[SimHost] = []

    def leave_the_body() -> None:
        with simulated_host(cache_dir=sim_cache) as host:
            seen.append(host)

    try:
        with pytest.raises(IOFailure, match="cannot unmount"):
            leave_the_body()
        [host] = seen
        # still mounted: the work directory was left alone rather than removed through it
        assert is_mounted(host.sysroot)
        assert read(host.sysroot / TDX_HOST / "version") == "1.5.06\n"
        assert host.sysroot.parent.is_dir()
    finally:
        for h in seen:
            if is_mounted(h.sysroot):
                unmount(h.sysroot)
            wait_exit(h.pid)
            h.sysroot.rmdir()
            h.sysroot.parent.rmdir()
    assert_torn_down(seen[0], temp_root)


# --- refusals before anything is mounted ---------------------------------------------------------


def test_without_fuse_nothing_is_made(
    tmp_path: Path, temp_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sim_mount, "DEV_FUSE", tmp_path / "no-fuse")
    cache = tmp_path / "cache"
    with pytest.raises(TdxError) as info, simulated_host(cache_dir=cache):
        pytest.fail("the body ran without FUSE")
    assert info.value.code == "fuse-unavailable"
    assert info.value.exit_code == 69
    assert "no-fuse does not exist" in info.value.message
    assert not cache.exists()  # not even the sample repository was generated
    assert list(temp_root.iterdir()) == []


@pytest.mark.fuse
@pytest.mark.usefixtures("fuse")
def test_an_unknown_profile_is_a_usage_error_before_anything_is_made(
    tmp_path: Path, temp_root: Path
) -> None:
    cache = tmp_path / "cache"
    with (
        pytest.raises(UsageError, match="unknown simulation profile 'sapphire'") as info,
        simulated_host("sapphire", cache_dir=cache),
    ):
        pytest.fail("the body ran for an unknown profile")
    assert info.value.exit_code == 64
    assert not cache.exists()
    assert list(temp_root.iterdir()) == []


@pytest.mark.fuse
@pytest.mark.usefixtures("fuse")
@pytest.mark.parametrize(
    ("override", "detail"),
    [
        ({"bogus": 1}, "unknown emulator setting 'bogus'"),
        ({"remaining": "many"}, "remaining: 'many' is not a number"),
        ({"online": "0-9"}, "not all present"),
    ],
)
def test_a_bad_override_is_a_usage_error_naming_the_profile(
    temp_root: Path, sim_cache: Path, override: dict[str, Any], detail: str
) -> None:
    with pytest.raises(UsageError) as info, simulated_host("emr", cache_dir=sim_cache, **override):
        pytest.fail("the body ran with a bad setting")
    assert info.value.exit_code == 64
    assert info.value.message.startswith("simulation profile emr: ")
    assert detail in info.value.message
    assert "\n" not in info.value.message
    assert list(temp_root.iterdir()) == []
    assert mounts_under(temp_root) == []


@pytest.fixture
def cache_with_key(tmp_path: Path, sim_cache: Path) -> Path:
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / KEY_FILE).write_bytes((sim_cache / KEY_FILE).read_bytes())
    return cache


@pytest.mark.fuse
@pytest.mark.usefixtures("fuse")
def test_the_sample_repository_is_made_in_the_given_cache(
    temp_root: Path, cache_with_key: Path
) -> None:
    with simulated_host("srf", cache_dir=cache_with_key) as host:
        assert host.repo == cache_with_key / REPO_DIR
        assert (host.repo / "mapping_file.json").is_file()
        assert read(host.sysroot / TDX_HOST / "seamldr_version") == "2.0.00\n"
    assert_torn_down(host, temp_root)
    assert (cache_with_key / REPO_DIR / "mapping_file.json").is_file()  # kept for the next run
