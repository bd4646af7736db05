"""tdxupdate.fsio: the one OSError mapper and the one atomic writer.

The mappers of fence, history, lock and metrics are built on :func:`fsio.os_error`; their
messages are checked in their own tests. Here: the mapper's shape, that it can express the
mappers still kept elsewhere (host, image) byte for byte, and the writer.
"""

from __future__ import annotations

import errno
import functools
import os
import stat
from pathlib import Path

import pytest

from tdxupdate import fsio, safedir
from tdxupdate.errors import (
    IOFailure,
    NotFound,
    PermissionDenied,
    TdxError,
    Unavailable,
    from_oserror,
)


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
    assert (
        type(from_oserror(oserror(number), "/x")),
        from_oserror(oserror(number), "/x").message,
    ) == (
        cls,
        message,
    )


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


def _host_like(path: Path, exc: OSError, missing_code: str) -> TdxError:
    """host._os_error expressed with fsio (the recipe for switching it), minus its P-SEAMLDR
    wording, which host keeps as a case it computes from the path."""
    from tdxupdate.hostfiles import error_for_code as _error

    known = fsio.cases(
        (fsio.DENIED, PermissionDenied, "permission denied: run as root"),
        ((errno.ENOENT, errno.ENOTDIR), functools.partial(_error, missing_code), "does not exist"),
    )
    return fsio.os_error(
        exc, path, known, other=lambda e: f"read fails with {fsio.errno_name(e)} ({fsio.reason(e)})"
    )


@pytest.mark.parametrize("number", [errno.EACCES, errno.ENOENT, errno.ENOTDIR, errno.EIO])
def test_fsio_can_express_host_os_error(number: int) -> None:
    from tdxupdate.host import _os_error

    path = Path("/sys/firmware/tdx/tdx_module/version")
    want = _os_error(path, oserror(number), "no-tdx-host")
    got = _host_like(path, oserror(number), "no-tdx-host")
    assert (type(got), got.code, got.message) == (type(want), want.code, want.message)
    if number == errno.ENOENT:
        assert isinstance(got, Unavailable)


@pytest.mark.parametrize("number", [errno.EACCES, errno.ENOENT, errno.EIO])
def test_fsio_can_express_image_open_error(number: int) -> None:
    from tdxupdate.sources.local import _open_error

    missing = functools.partial(NotFound, code="image-not-found")
    known = {**fsio.COMMON, **fsio.cases((fsio.MISSING, missing, "no such image"))}
    want = _open_error(oserror(number), Path("/r/a.bin"))
    got = fsio.os_error(oserror(number), Path("/r/a.bin"), known)
    assert isinstance(want, TdxError)
    assert (type(got), got.code, got.message) == (type(want), want.code, want.message)


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
