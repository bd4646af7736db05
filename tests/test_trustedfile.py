"""The configuration and trusted-keys files: bounded reads and a safe owner (issue 9, 10/14)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tdxupdate import config, keyring
from tdxupdate.errors import DataError

FPR = "a" * 64


def _file(tmp_path: Path, name: str, text: str, mode: int = 0o644) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    path.chmod(mode)
    return path


@pytest.mark.parametrize("mode", [0o666, 0o664, 0o646])
def test_a_config_file_writable_by_group_or_others_is_refused(tmp_path: Path, mode: int) -> None:
    path = _file(tmp_path, "tdxupdate.conf", 'repo = "/srv/tdx"\n', mode)
    with pytest.raises(config.ConfigError) as caught:
        config.load_config(path, required=True)
    assert caught.value.exit_code == 78
    assert "writable by group or others" in caught.value.message


@pytest.mark.parametrize("mode", [0o666, 0o620])
def test_a_trusted_keys_file_writable_by_group_or_others_is_refused(
    tmp_path: Path, mode: int
) -> None:
    path = _file(tmp_path, "keys.txt", FPR + "\n", mode)
    with pytest.raises(DataError) as caught:
        keyring.load_trusted_keys(path)
    assert caught.value.code == "trusted-keys-invalid"
    assert "writable by group or others" in caught.value.message


def _other_owner(path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("changing a file's owner needs root")
    os.chown(path, 12345, 12345)


def test_files_owned_by_another_user_are_refused(tmp_path: Path) -> None:
    conf = _file(tmp_path, "tdxupdate.conf", 'repo = "/srv/tdx"\n')
    keys = _file(tmp_path, "keys.txt", FPR + "\n")
    _other_owner(conf)
    _other_owner(keys)
    with pytest.raises(config.ConfigError) as caught:
        config.load_config(conf, required=True)
    assert "owned by uid 12345" in caught.value.message
    with pytest.raises(DataError) as kcaught:
        keyring.load_trusted_keys(keys)
    assert "owned by uid 12345" in kcaught.value.message


def test_safe_files_are_read(tmp_path: Path) -> None:
    conf = _file(tmp_path, "tdxupdate.conf", 'repo = "/srv/tdx"\n', 0o600)
    keys = _file(tmp_path, "keys.txt", FPR + "\n", 0o644)
    assert config.load_config(conf, required=True) == {"repo": "/srv/tdx"}
    assert keyring.load_trusted_keys(keys) == frozenset({FPR})
    # /dev/null is a world-writable device: named by the caller, it is only bounded
    assert config.load_config(Path("/dev/null"), required=True) == {}


def test_dev_zero_is_refused_after_a_bounded_read() -> None:
    with pytest.raises(config.ConfigError) as caught:
        config.load_config(Path("/dev/zero"), required=True)
    assert "larger than 64 KiB" in caught.value.message
    with pytest.raises(DataError) as kcaught:
        keyring.load_trusted_keys(Path("/dev/zero"))
    assert "larger than 1 MiB" in kcaught.value.message


def test_a_file_just_over_the_cap_is_refused(tmp_path: Path) -> None:
    big = _file(tmp_path, "tdxupdate.conf", "#" * config.MAX_CONFIG_SIZE + "\n")
    with pytest.raises(config.ConfigError):
        config.load_config(big, required=True)
