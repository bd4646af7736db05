"""The local repository (tdxupdate.sources.local): the only reads of image and mapping files.

Moved here with the readers from test_image.py ("the only I/O: bounded reads") and
test_catalog.py ("load_catalog: the file system"); the messages are the ones those modules gave.
"""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path
from typing import Any

import pytest
from factories.images import make_image

from tdxupdate.errors import DataError, InvalidImage, NotFound, TdxError
from tdxupdate.image import HEAD_SIZE, MAX_IMAGE_SIZE, inspect
from tdxupdate.imagecheck import verify
from tdxupdate.sources.local import load_catalog, read_head, read_image

SAMPLES = Path(__file__).resolve().parent.parent / "mapping_samples"


def doc() -> str:
    return json.dumps({"Header": {"Version": "1.0"}, "tdx_module_releases": []})


# --------------------------------------------------------------------------------------------
# Images: bounded reads


def test_read_head_returns_the_head_and_the_size(tmp_path: Path) -> None:
    image = make_image(module_pages=4)
    path = tmp_path / "tdx_module_1.5.06.blob"
    path.write_bytes(image)
    head, size = read_head(path)
    assert (head, size) == (image[:HEAD_SIZE], len(image))
    assert inspect(head, size) == verify(image, trusted_signers=()).info
    assert read_image(path) == image


def test_read_image_refuses_an_oversized_file_before_reading_it(tmp_path: Path) -> None:
    path = tmp_path / "huge.blob"
    with path.open("wb") as f:
        f.truncate(MAX_IMAGE_SIZE + 1)  # sparse: nothing to read
    with pytest.raises(InvalidImage) as exc:
        read_image(path)
    assert str(exc.value) == (
        f"{path}: {MAX_IMAGE_SIZE + 1} bytes, larger than the largest image "
        f"({MAX_IMAGE_SIZE} bytes)"
    )
    with pytest.raises(InvalidImage):
        read_image(tmp_path / "huge.blob", max_size=100)


def test_read_of_a_missing_image_is_image_not_found(tmp_path: Path) -> None:
    path = tmp_path / "missing.blob"
    for reader in (read_head, read_image):
        with pytest.raises(NotFound) as exc:
            reader(path)
        assert exc.value.code == "image-not-found"
        assert str(exc.value) == f"{path}: no such image"


def test_read_of_a_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    path = tmp_path / "fifo.blob"
    os.mkfifo(path)
    for reader in (read_head, read_image):
        with pytest.raises(InvalidImage) as exc:
            reader(path)
        assert str(exc.value) == f"{path}: not a regular file"


# --------------------------------------------------------------------------------------------
# The mapping file: load_catalog


def test_missing_file_is_mapping_not_found(tmp_path: Path) -> None:
    with pytest.raises(TdxError) as info:
        load_catalog(tmp_path / "mapping_file.json")
    assert (info.value.code, info.value.exit_code) == ("mapping-not-found", 66)
    assert str(info.value) == f"{tmp_path / 'mapping_file.json'}: no such file"


def test_parent_that_is_a_file_is_mapping_not_found(tmp_path: Path) -> None:
    (tmp_path / "repo").write_text("")
    with pytest.raises(TdxError) as info:
        load_catalog(tmp_path / "repo" / "mapping_file.json")
    assert info.value.code == "mapping-not-found"


def test_directory_is_mapping_not_found(tmp_path: Path) -> None:
    with pytest.raises(TdxError) as info:
        load_catalog(tmp_path)
    assert (info.value.code, info.value.exit_code) == ("mapping-not-found", 66)
    assert str(info.value) == f"{tmp_path}: is a directory, not a mapping file"


def test_permission_denied_exits_77(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The suite runs as root, which chmod cannot lock out; raise what the kernel would.
    target = tmp_path / "mapping_file.json"
    target.write_text(doc())

    def denied(path: Any, flags: int, mode: int = 0o777) -> int:
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr(os, "open", denied)
    with pytest.raises(TdxError) as info:
        load_catalog(target)
    assert (info.value.code, info.value.exit_code) == ("permission-denied", 77)
    assert str(info.value).startswith(f"{target}: permission denied")


def test_read_error_is_io_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "mapping_file.json"
    target.write_text(doc())

    def broken(fd: int, n: int) -> bytes:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "read", broken)
    with pytest.raises(TdxError) as info:
        load_catalog(target)
    assert (info.value.code, info.value.exit_code) == ("io-error", 74)
    assert str(info.value) == f"{target}: Input/output error"


def test_endless_device_is_cut_at_the_size_cap() -> None:
    with pytest.raises(DataError) as info:
        load_catalog(Path("/dev/zero"))
    assert str(info.value) == "/dev/zero: larger than 1 MiB, not a mapping file"


def test_pipe_is_read_like_a_file() -> None:
    # `--mapping <(curl ...)` hands over a pipe with no size.
    data = (SAMPLES / "mapping_file.json").read_bytes()
    r, w = os.pipe()
    try:
        os.write(w, data)
        os.close(w)
        cat = load_catalog(f"/proc/self/fd/{r}")
    finally:
        os.close(r)
    assert len(cat.releases) == 20
