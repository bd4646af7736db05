"""tdxupdate.fsio: the one OSError mapper and the one atomic writer.

The mappers of fence, history, lock, metrics, cache, host and sources.local are built on
:func:`fsio.os_error`; their messages are checked in their own tests, and here for host and
the image reader byte for byte. Here too: the mapper's shape, and the writer.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest

from tdxupdate import errors, fsio, safedir
from tdxupdate.errors import IOFailure, PermissionDenied, TdxError


def oserror(number: int) -> OSError:
    return OSError(number, os.strerror(number))


# --- os_error ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("number", "cls", "message"),
    [
        (errno.EACCES, PermissionDenied, "/x: permission denied (run as root)"),
        (errno.EPERM, PermissionDenied, "/x: permission denied (run as root)"),
        (errno.ENOENT, IOFailure, "/x: does not exist"),
        (errno.EIO, IOFailure, "/x: Input/output error"),
    ],
)
def test_common_cases(number: int, cls: type[TdxError], message: str) -> None:
    err = fsio.os_error(oserror(number), Path("/x"))
    assert (type(err), err.message) == (cls, message)
    assert not hasattr(errors, "from_oserror")  # one mapper, here


def test_an_oserror_without_errno_uses_its_text() -> None:
    err = fsio.os_error(OSError("odd"), "/x")
    assert (err.code, err.message) == ("io-error", "/x: odd")


def test_own_cases_replace_the_common_ones() -> None:
    known = fsio.cases((fsio.DENIED + fsio.READ_ONLY, PermissionDenied, "no"))
    assert fsio.os_error(oserror(errno.EROFS), "w", known).message == "w: no"
    assert fsio.os_error(oserror(errno.ENOENT), "w", known).message == (
        "w: No such file or directory"
    )


def test_errno_name() -> None:
    assert fsio.errno_name(oserror(errno.EIO)) == "EIO"
    assert fsio.errno_name(OSError("odd")) == "error"


# host and sources.local map their OSErrors through fsio.os_error with their own cases; the
# messages below are the ones they always gave, byte for byte.

_LOST = "the TDX module is lost; every TD is gone; reboot needed"
_SEAMLDR_DENIED = (
    "permission denied; the P-SEAMLDR attributes are readable by root only "
    "(mode 0400 since kernel series v4): run as root"
)


@pytest.mark.parametrize(
    ("path", "number", "code", "text"),
    [
        ("tdx_host/version", errno.EACCES, "permission-denied", "permission denied: run as root"),
        ("tdx_host/version", errno.EPERM, "permission-denied", "permission denied: run as root"),
        ("tdx_host/version", errno.ENOENT, "no-tdx-host", "does not exist"),
        ("tdx_host/version", errno.ENOTDIR, "no-tdx-host", "does not exist"),
        ("tdx_host/version", errno.EIO, "io-error", "read fails with EIO (Input/output error)"),
        (
            "tdx_host/version",
            errno.ENXIO,
            "io-error",
            "read fails with ENXIO (No such device or address)",
        ),
        ("tdx_host/seamldr/version", errno.EACCES, "permission-denied", _SEAMLDR_DENIED),
        ("tdx_host/num_remaining_updates", errno.EPERM, "permission-denied", _SEAMLDR_DENIED),
        ("tdx_host/seamldr_version", errno.EACCES, "permission-denied", _SEAMLDR_DENIED),
    ],
)
def test_host_read_errors(path: str, number: int, code: str, text: str) -> None:
    from tdxupdate.host import _read_error

    where = Path("/sys/devices/faux") / path
    err = _read_error(where, oserror(number), "no-tdx-host")
    assert (err.code, err.message) == (code, f"{where}: {text}")


def test_host_read_error_without_errno() -> None:
    from tdxupdate.host import _read_error

    err = _read_error(Path("/x"), OSError("odd"), "io-error")
    assert (type(err), err.code, err.message) == (
        IOFailure,
        "io-error",
        "/x: read fails with error (odd)",
    )


def test_a_lost_module_is_a_case_of_the_version_file(tmp_path: Path) -> None:
    from factories.sysroot import FaultySysroot

    from tdxupdate.host import read_version_file

    (tmp_path / "version").write_text("1.5.06\n")
    sysroot = FaultySysroot(tmp_path).fail(tmp_path / "version", errno.ENXIO)
    with pytest.raises(TdxError) as info:
        read_version_file(tmp_path / "version", sysroot)
    assert (info.value.code, info.value.exit_code) == ("version-unreadable", 69)
    assert (
        info.value.message == f"{tmp_path / 'version'}: reading version fails with ENXIO: {_LOST}"
    )
    assert isinstance(info.value.__cause__, OSError)  # host.module_lost reads it


@pytest.mark.parametrize(
    ("number", "code", "text"),
    [
        (errno.EACCES, "permission-denied", "permission denied (run as root)"),
        (errno.ENOENT, "image-not-found", "no such image"),
        (errno.EIO, "io-error", "Input/output error"),
        (errno.EISDIR, "io-error", "Is a directory"),
    ],
)
def test_image_open_errors(tmp_path: Path, number: int, code: str, text: str) -> None:
    from tdxupdate.sources import local

    err = fsio.os_error(oserror(number), Path("/r/a.bin"), local._IMAGE_CASES)
    assert (err.code, err.message) == (code, f"/r/a.bin: {text}")


# --- write_atomically --------------------------------------------------------------------


def _dir(tmp_path: Path) -> safedir.SafeDir:
    return safedir.open_dir(tmp_path / "d", "test directory")


def test_writes_with_mode_and_leaves_no_temporary(tmp_path: Path) -> None:
    with _dir(tmp_path) as d:
        fsio.write_atomically(d, "f", b"one", mode=0o640)
        fsio.write_atomically(d, "f", b"two")
        assert sorted(d.names()) == ["f"]
    f = tmp_path / "d" / "f"
    assert f.read_bytes() == b"two"
    assert stat.S_IMODE(f.stat().st_mode) == 0o644


def test_a_planted_link_is_replaced_not_followed(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"keep")
    with _dir(tmp_path) as d:
        (tmp_path / "d" / "f").symlink_to(victim)
        fsio.write_atomically(d, "f", b"new")
    assert victim.read_bytes() == b"keep"
    assert not (tmp_path / "d" / "f").is_symlink()


def test_prefix_and_suffix_name_the_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[str] = []
    with _dir(tmp_path) as d:
        real = d.replace

        def spy(src: str, dst: str) -> None:
            seen.append(src)
            real(src, dst)

        monkeypatch.setattr(d, "replace", spy)
        fsio.write_atomically(d, "f", b"x")
        fsio.write_atomically(d, "f", b"x", prefix=".tmp-", suffix="")
    assert seen[0].startswith(".f.")
    assert seen[0].endswith(".tmp")
    assert seen[1].startswith(".tmp-")
    assert not seen[1].endswith(".tmp")


def test_default_errors_name_the_directory_then_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with _dir(tmp_path) as d:

        def full(*_args: object) -> None:
            raise oserror(errno.ENOSPC)

        monkeypatch.setattr(d, "mkstemp", full)
        with pytest.raises(IOFailure) as created:
            fsio.write_atomically(d, "f", b"x")
        assert created.value.message == f"{tmp_path / 'd'}: No space left on device"
        monkeypatch.undo()
        monkeypatch.setattr(d, "replace", full)
        with pytest.raises(IOFailure) as written:
            fsio.write_atomically(d, "f", b"x")
        assert written.value.message == f"{tmp_path / 'd' / 'f'}: No space left on device"
        assert d.names() == []  # the temporary file is gone


def test_a_failed_directory_sync_is_an_error_only_when_strict(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with _dir(tmp_path) as d:

        def broken() -> None:
            raise oserror(errno.EIO)

        monkeypatch.setattr(d, "fsync", broken)
        fsio.write_atomically(d, "f", b"lenient", strict_dir_sync=False)
        with pytest.raises(IOFailure):
            fsio.write_atomically(d, "f", b"strict")
        assert d.names() == ["f"]
    assert (tmp_path / "d" / "f").read_bytes() == b"strict"


def test_an_interruption_removes_the_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with _dir(tmp_path) as d:

        def stop(*_args: object) -> None:
            raise KeyboardInterrupt

        monkeypatch.setattr(d, "replace", stop)
        with pytest.raises(KeyboardInterrupt):
            fsio.write_atomically(d, "f", b"x", error=lambda e, s: IOFailure(f"{s}: {e}"))
        assert d.names() == []


@pytest.mark.parametrize("failing", ["mkstemp", "replace", "fsync"])
def test_fsio_can_replace_the_cache_writer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing: str
) -> None:
    """cache.atomic_write(d, name, data) is write_atomically(d, name, data, prefix=".tmp-",
    suffix=""): the same errors, the same leftovers."""
    from tdxupdate.sources import cache

    def broken(*_args: object) -> None:
        raise oserror(errno.EACCES if failing == "mkstemp" else errno.EIO)

    def attempt(write: object, where: str) -> tuple[type[TdxError], str, list[str]]:
        with safedir.open_dir(tmp_path / where, "test directory") as d:
            monkeypatch.setattr(d, failing, broken)
            with pytest.raises(TdxError) as info:
                write(d, "entry")  # type: ignore[operator]
            monkeypatch.undo()
            shown = info.value.message.replace(str(tmp_path / where), "DIR")
            return type(info.value), shown, d.names()

    got = attempt(lambda d, n: cache.atomic_write(d, n, b"x"), "cache")
    # what cache.atomic_write raised and left before it was built on fsio
    expected = {
        "mkstemp": (PermissionDenied, "DIR: permission denied (run as root)", []),
        "replace": (IOFailure, f"DIR/entry: {os.strerror(errno.EIO)}", []),
        "fsync": (IOFailure, f"DIR/entry: {os.strerror(errno.EIO)}", ["entry"]),
    }
    assert got == expected[failing]
