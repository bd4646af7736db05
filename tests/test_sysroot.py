"""tdxupdate.sysroot: the one door to the host, and the FaultySysroot the tests use."""

from __future__ import annotations

import errno
import os
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from factories.sysroot import FaultySysroot

from tdxupdate import host
from tdxupdate.sysroot import ATTR_LIMIT, Sysroot

T = "/sys/devices/faux/tdx_host"


# --------------------------------------------------------------------------- Sysroot


def test_sysroot_path_prefixes_the_root(tmp_path: Path) -> None:
    assert Sysroot(tmp_path).path(f"{T}/version") == tmp_path / "sys/devices/faux/tdx_host/version"
    assert Sysroot(str(tmp_path)).root == tmp_path


def test_sysroot_default_root_is_slash() -> None:
    assert Sysroot().path("/proc/cpuinfo") == Path("/proc/cpuinfo")


def test_sysroot_path_relative_raises_value_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not an absolute path"):
        Sysroot(tmp_path).path("sys/x")


# --------------------------------------------------------------------------- operations


def test_read_stops_at_the_limit(tmp_path: Path) -> None:
    (tmp_path / "big").write_bytes(b"x" * 200_000)
    assert len(Sysroot(tmp_path).read(tmp_path / "big", 100_000)) == 100_000
    assert Sysroot(tmp_path).read(tmp_path / "big") == b"x" * ATTR_LIMIT


def test_read_once_is_one_read(tmp_path: Path) -> None:
    (tmp_path / "attr").write_bytes(b"idle\n")
    sysroot = FaultySysroot(tmp_path)
    assert sysroot.read_once(tmp_path / "attr") == b"idle\n"
    assert [op for op, _ in sysroot.calls] == ["open", "read"]


def test_write_does_not_truncate(tmp_path: Path) -> None:
    # sysfs ignores O_TRUNC, and an emulator need not implement it: the door never asks.
    (tmp_path / "loading").write_bytes(b"0000")
    Sysroot(tmp_path).write(tmp_path / "loading", b"1")
    assert (tmp_path / "loading").read_bytes() == b"1000"


def test_open_writer_streams_into_one_open_file(tmp_path: Path) -> None:
    (tmp_path / "data").write_bytes(b"")
    with Sysroot(tmp_path).open_writer(tmp_path / "data") as writer:
        assert writer.write(b"abc") == 3
        assert writer.write(memoryview(b"defg")[1:]) == 3
    assert (tmp_path / "data").read_bytes() == b"abcefg"


def test_open_writer_of_a_missing_file_raises_and_creates_nothing(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        Sysroot(tmp_path).open_writer(tmp_path / "data")
    assert not (tmp_path / "data").exists()


def test_directory_queries(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "b").write_text("")
    (tmp_path / "d" / "a").write_text("")
    (tmp_path / "link").symlink_to("d")
    (tmp_path / "dangling").symlink_to("nowhere")
    sysroot = Sysroot(tmp_path)
    assert sysroot.listdir(tmp_path / "d") == ["a", "b"]
    assert sysroot.is_dir(tmp_path / "link")
    assert not sysroot.is_dir(tmp_path / "d" / "a")
    assert sysroot.exists(tmp_path / "dangling")
    assert not sysroot.exists(tmp_path / "none")
    assert sysroot.realpath(tmp_path / "link") == os.path.realpath(tmp_path / "d")
    assert sysroot.stat(tmp_path / "d" / "a").st_size == 0


def test_sysroot_equality_and_repr(tmp_path: Path) -> None:
    assert Sysroot(tmp_path) == Sysroot(str(tmp_path))
    assert hash(Sysroot(tmp_path)) == hash(Sysroot(tmp_path))
    assert Sysroot(tmp_path) != Sysroot("/")
    assert repr(Sysroot("/x")) == "Sysroot('/x')"
    assert "Sysroot" not in host.__all__  # one door: tdxupdate.sysroot


# --------------------------------------------------------------------------- FaultySysroot


def test_faulty_sysroot_fails_the_chosen_path_and_operation_only(tmp_path: Path) -> None:
    root = tmp_path
    (root / "sys").mkdir()
    (root / "sys" / "a").write_text("1\n")
    (root / "sys" / "b").write_text("2\n")
    sysroot = FaultySysroot(root).fail("/sys/a", errno.ENXIO)
    with pytest.raises(OSError, match="No such device or address") as info:
        sysroot.read(root / "sys" / "a")
    assert info.value.errno == errno.ENXIO
    assert sysroot.read(root / "sys" / "b") == b"2\n"
    sysroot.write(root / "sys" / "a", b"3")  # writes are not affected
    assert sysroot.stat(root / "sys" / "a").st_size == 2


@pytest.mark.parametrize("op", ["open", "read", "write", "stat"])
def test_faulty_sysroot_every_operation_can_fail_a_given_number_of_times(
    tmp_path: Path, op: str
) -> None:
    path = tmp_path / "attr"
    path.write_text("0\n")
    sysroot = FaultySysroot(tmp_path).fail(path, errno.EBUSY, op=op, times=1)
    actions: dict[str, Callable[[], object]] = {
        "open": lambda: sysroot.read(path),
        "read": lambda: sysroot.read(path),
        "write": lambda: sysroot.write(path, b"1"),
        "stat": lambda: sysroot.stat(path),
    }
    action = actions[op]
    with pytest.raises(OSError, match="Device or resource busy") as info:
        action()
    assert info.value.errno == errno.EBUSY
    action()  # the second time it works


def test_faulty_sysroot_rejects_an_unknown_operation(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown operation"):
        FaultySysroot(tmp_path).fail("/x", errno.EIO, op="chmod")


def test_faulty_sysroot_short_writes(tmp_path: Path) -> None:
    path = tmp_path / "data"
    path.write_bytes(b"")
    sysroot = FaultySysroot(tmp_path).short_writes("/data", 2)
    with sysroot.open_writer(path) as writer:
        assert writer.write(b"abcdef") == 2
    assert path.read_bytes() == b"ab"
    with FaultySysroot(tmp_path).short_writes(path, 0).open_writer(path) as writer:
        assert writer.write(b"x") == 0


def test_faulty_sysroot_hang_blocks_a_read_until_released(tmp_path: Path) -> None:
    path = tmp_path / "status"
    path.write_text("idle\n")
    release = threading.Event()
    sysroot = FaultySysroot(tmp_path).hang(path, release)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(sysroot.read_once(path)))
    reader.start()
    reader.join(0.05)
    assert reader.is_alive()
    assert got == []
    release.set()
    reader.join(5)
    assert got == [b"idle\n"]
