"""tdxupdate/settings.py: the frozen settings object and its documented defaults."""

import contextlib
import dataclasses
import os
from pathlib import Path

import pytest

from tdxupdate import settings
from tdxupdate.settings import Settings
from tdxupdate.versions import Version


def test_defaults_are_the_documented_ones() -> None:
    # cli-contract.md §1: --repo, --timeout and --state-dir defaults
    s = Settings()
    assert s.repo == "/usr/share/tdx-module-binaries" == settings.DEFAULT_REPO
    assert s.state_dir == Path("/var/lib/tdxupdate")
    assert s.timeout == 300.0
    assert s.fence_timeout == 300.0
    assert s.hook_timeout == 300.0
    assert (s.action, s.sysroot, s.image_format) == ("status", Path("/"), "auto")
    assert (s.version, s.verify_path, s.mapping, s.cache_dir) == (None, None, None, None)
    flags = (s.dry_run, s.json, s.allow_debug, s.allow_reinstall, s.offline, s.strict_compat)
    assert flags == (False,) * 6
    assert (s.allow_insecure_http, s.interactive) == (False, False)
    assert (s.trusted_keys, s.extra_signers, s.verbosity) == ((), frozenset(), 0)


def test_settings_are_frozen_and_replaced_not_changed() -> None:
    s = Settings()
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.action = "update"  # type: ignore[misc]
    t = dataclasses.replace(s, action="update", version=Version.parse("1.5.06"))
    assert (s.action, t.action, t.version) == ("status", "update", Version.parse("1.5.06"))
    assert hash(t) == hash(dataclasses.replace(s, action="update", version=Version.parse("1.5.6")))


def test_the_download_progress_callback_is_not_part_of_equality() -> None:
    s = Settings()

    def progress(_url: str) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()

    with_progress = dataclasses.replace(s, download_progress=progress)
    assert with_progress == s
    assert "download_progress" not in repr(with_progress)


def test_cache_dir_of_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setenv("XDG_CACHE_HOME", "/elsewhere")
    assert settings.default_cache_dir() == Path("/var/cache/tdxupdate")


def test_cache_dir_of_a_user(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_CACHE_HOME", "/xdg")
    assert settings.default_cache_dir() == Path("/xdg/tdxupdate")
    monkeypatch.setenv("XDG_CACHE_HOME", "")  # empty: as if unset
    assert settings.default_cache_dir() == tmp_path / ".cache" / "tdxupdate"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert settings.default_cache_dir() == tmp_path / ".cache" / "tdxupdate"
