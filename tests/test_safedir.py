"""State, cache and metrics directories are created and opened safely (issue 9, item 12).

A local user must not be able to steer root's writes (a symbolic link planted as the lock or
the history) or what ``--offline`` installs (a rewritten cache index or image): directories
are created with explicit modes whatever the umask, refused when someone else could write
them, and nothing inside them is reached through a symbolic link.
"""

from __future__ import annotations

import json
import os
import stat
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from factories.hosts import build_host_tree
from factories.images import mapping_document, trusted_signers

from tdxupdate import history, lock, metrics
from tdxupdate.cli import main
from tdxupdate.errors import PermissionDenied
from tdxupdate.report import Report
from tdxupdate.schemas import load_schema
from tdxupdate.sources.cache import Cache, Entry

OTHER_UID = 12345
MIRROR = "https://mirror.invalid/"
MAPPING_URL = MIRROR + "mapping_file.json"


def record() -> history.HistoryRecord:
    return history.HistoryRecord(result="success", time="2026-11-26T04:05:06Z")


def mode_of(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


@pytest.fixture
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


def needs_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("giving a directory to another uid needs root (os.chown)")


def make_unsafe(path: Path, how: str) -> None:
    """Make ``path`` someone else's, or writable by others."""
    if how == "other-owner":
        needs_root()
        os.chown(path, OTHER_UID, OTHER_UID)
    else:
        os.chmod(path, int(how, 8))


UNSAFE = ["other-owner", "0777", "0775", "1777"]


def cli(capsys: pytest.CaptureFixture[str], *args: str | Path) -> tuple[int, dict[str, Any], str]:
    import jsonschema

    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    doc = json.loads(captured.out)
    jsonschema.Draft7Validator(load_schema("output.schema.json")).validate(doc)
    return code, doc, captured.err


# ------------------------------------------------------------------------ modes, whatever umask


@pytest.mark.parametrize("umask", [0o000, 0o077], indirect=True)
def test_created_directories_and_files_have_explicit_modes(tmp_path: Path, umask: int) -> None:
    state = tmp_path / "var" / "lib" / "tdxupdate"
    history.append(state, record())
    with lock.acquire(state):
        pass
    cache_root = tmp_path / "cache" / "tdxupdate" / "remote"
    cache = Cache(cache_root)
    digest = cache.store("images", b"image bytes")
    cache.put_entry(Entry(MIRROR + "x.bin", sha256=digest))

    for directory in (tmp_path / "var", tmp_path / "var" / "lib", state):
        assert mode_of(directory) == 0o755, directory
    assert mode_of(state / history.HISTORY_FILE) == 0o644
    assert mode_of(state / lock.LOCK_FILE) == 0o644
    for directory in (
        tmp_path / "cache",
        cache_root.parent,
        cache_root,
        cache_root / "index",
        cache_root / "images",
        cache_root / "images" / "sha256",
    ):
        assert mode_of(directory) == 0o755, directory
    assert mode_of(cache_root / "images" / "sha256" / digest) == 0o644
    (index_file,) = (cache_root / "index").iterdir()
    assert mode_of(index_file) == 0o644


# ------------------------------------------------------------------------ unsafe directories


@pytest.mark.parametrize("how", UNSAFE)
def test_an_unsafe_state_dir_is_refused_by_history(
    tmp_path: Path, how: str, capsys: pytest.CaptureFixture[str]
) -> None:
    state = tmp_path / "state"
    history.append(state, record())
    make_unsafe(state, how)
    code, doc, err = cli(capsys, "--history", "--json", "--state-dir", state)
    assert code == 77
    assert doc["ok"] is False
    assert doc["error"]["exit_code"] == 77
    assert doc["error"]["code"] == "permission-denied"
    assert err.count("\n") == 1, err
    assert err.startswith(f"tdxupdate: {state}: refusing the state directory: it is ")
    with pytest.raises(PermissionDenied, match="refusing the state directory"):
        history.append(state, record())
    with pytest.raises(PermissionDenied, match="refusing the state directory"):
        lock.acquire(state)
    with pytest.raises(PermissionDenied, match="refusing the state directory"):
        history.load(state)


def test_a_sticky_world_writable_dir_is_no_state_dir(tmp_path: Path) -> None:
    state = tmp_path / "tmp"
    state.mkdir()
    os.chmod(state, 0o1777)
    with pytest.raises(PermissionDenied) as info:
        lock.acquire(state)
    assert info.value.exit_code == 77
    assert info.value.message == (
        f"{state}: refusing the state directory: it is writable by group or others (mode 1777) "
        "(make it owned by root and not writable by group or others, or choose another "
        "directory)"
    )
    assert list(state.iterdir()) == []


def test_a_state_dir_symlink_chosen_by_the_admin_is_accepted_when_its_target_is_safe(
    tmp_path: Path,
) -> None:
    target = tmp_path / "srv"
    target.mkdir(mode=0o755)
    link = tmp_path / "state"
    link.symlink_to(target)
    history.append(link, record())
    assert (target / history.HISTORY_FILE).is_file()
    os.chmod(target, 0o777)
    with pytest.raises(PermissionDenied, match="writable by group or others"):
        history.append(link, record())


@pytest.mark.parametrize("how", UNSAFE)
def test_an_unsafe_cache_dir_is_refused_through_the_cli(
    tmp_path: Path, how: str, capsys: pytest.CaptureFixture[str]
) -> None:
    cache_dir = tmp_path / "cache"
    Cache(cache_dir / "remote")
    make_unsafe(cache_dir / "remote", how)
    code, doc, err = cli(capsys, *list_offline(tmp_path, cache_dir))
    assert (code, doc["error"]["exit_code"], doc["error"]["code"]) == (77, 77, "permission-denied")
    assert err.count("\n") == 1, err
    assert f"{cache_dir / 'remote'}: refusing the cache directory: it is " in err


@pytest.mark.parametrize("sub", ["index", "images/sha256"])
def test_an_unsafe_directory_inside_the_cache_is_refused(tmp_path: Path, sub: str) -> None:
    root = tmp_path / "remote"
    Cache(root)
    os.chmod(root / sub, 0o777)
    with pytest.raises(PermissionDenied, match=f"{root / sub}: refusing the cache directory"):
        Cache(root)


def test_the_metrics_dir_may_not_be_writable_by_others(tmp_path: Path) -> None:
    textfiles = tmp_path / "node-exporter"
    textfiles.mkdir()
    os.chmod(textfiles, 0o777)
    target = textfiles / "tdxupdate.prom"
    with pytest.raises(PermissionDenied) as info:
        metrics.write_textfile(target, Report("status"), duration_s=0.1, now=1.0)
    assert info.value.message.startswith(
        f"{textfiles}: refusing the metrics directory: it is writable by group or others"
    )
    assert list(textfiles.iterdir()) == []


def test_the_metrics_dir_may_belong_to_the_exporter(tmp_path: Path) -> None:
    needs_root()
    textfiles = tmp_path / "node-exporter"
    textfiles.mkdir(mode=0o755)
    os.chown(textfiles, OTHER_UID, OTHER_UID)  # Debian's belongs to "prometheus"
    metrics.write_textfile(textfiles / "t.prom", Report("status"), duration_s=0.1, now=1.0)
    assert "tdxupdate_last_exit_code 0" in (textfiles / "t.prom").read_text()


# ------------------------------------------------------------------------ planted symlinks


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    path = tmp_path / "root-owned"
    path.write_bytes(b"precious\n")
    return path


def test_a_history_symlink_is_not_written_through(
    tmp_path: Path, victim: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / history.HISTORY_FILE).symlink_to(victim)
    with pytest.raises(PermissionDenied) as info:
        history.append(state, record())
    assert info.value.message == (
        f"{state / history.HISTORY_FILE}: refusing a file in the state directory: it is a "
        "symbolic link; it is not followed"
    )
    code, doc, err = cli(capsys, "--history", "--json", "--state-dir", state)
    assert (code, doc["error"]["code"]) == (77, "permission-denied")
    assert err.count("\n") == 1
    assert victim.read_bytes() == b"precious\n"


def test_a_lock_symlink_is_not_followed(tmp_path: Path, victim: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / lock.LOCK_FILE).symlink_to(victim)
    with pytest.raises(PermissionDenied, match="symbolic link; it is not followed"):
        lock.acquire(state)
    assert victim.read_bytes() == b"precious\n"  # not truncated, no pid written


@pytest.mark.parametrize("name", [lock.LOCK_FILE, history.HISTORY_FILE])
def test_a_fifo_in_place_of_a_state_file_is_refused(tmp_path: Path, name: str) -> None:
    state = tmp_path / "state"
    state.mkdir()
    os.mkfifo(state / name)
    write: Callable[[], object] = (
        (lambda: lock.acquire(state))
        if name == lock.LOCK_FILE
        else (lambda: history.append(state, record()))
    )
    with pytest.raises(PermissionDenied, match="is not a regular file"):
        write()
    # Reading one must not block waiting for a writer either.
    os.rename(state / name, state / history.HISTORY_FILE)
    with pytest.raises(PermissionDenied, match="is not a regular file"):
        history.load(state)


def test_a_metrics_symlink_is_replaced_not_written_through(tmp_path: Path, victim: Path) -> None:
    target = tmp_path / "textfiles" / "tdxupdate.prom"
    target.parent.mkdir()
    target.symlink_to(victim)
    metrics.write_textfile(target, Report("status"), duration_s=0.1, now=1.0)
    assert not target.is_symlink()
    assert "tdxupdate_last_result" in target.read_text()
    assert victim.read_bytes() == b"precious\n"


def test_a_symlinked_cache_subdirectory_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "remote"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    root.mkdir()
    (root / "index").symlink_to(elsewhere)
    with pytest.raises(PermissionDenied, match="symbolic link; it is not followed"):
        Cache(root)


# ------------------------------------------------------------------------ planted cache entries


def plant_mapping(cache_root: Path) -> tuple[Path, Path]:
    """A cached mapping for MIRROR, as an earlier run would have left it: (index, content)."""
    cache = Cache(cache_root)
    data = json.dumps(mapping_document(["1.5.06"])).encode()
    digest = cache.store("mappings", data)
    now = time.time()
    cache.put_entry(Entry(MAPPING_URL, sha256=digest, fetched_at=now, validated_at=now))
    (index,) = (cache_root / "index").iterdir()
    return index, cache_root / "mappings" / "sha256" / digest


def list_offline(tmp_path: Path, cache_dir: Path) -> list[str | Path]:
    host = tmp_path / "host"
    if not host.exists():
        build_host_tree(host, generation="G5", module="1.5.06", seamldr="1.5.00")
    keys = tmp_path / "keys"
    keys.write_text("\n".join(sorted(trusted_signers())) + "\n")
    return [
        "--list", "--json", "--offline", "--repo", MIRROR, "--cache-dir", cache_dir,
        "--sysroot", host, "--trusted-keys", keys, "--state-dir", tmp_path / "state",
    ]  # fmt: skip


def test_a_good_cache_is_used_offline(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plant_mapping(tmp_path / "cache" / "remote")
    code, doc, _ = cli(capsys, *list_offline(tmp_path, tmp_path / "cache"))
    assert code == 0, doc
    assert [c["version"] for c in doc["candidates"]] == ["1.5.06"]


@pytest.mark.parametrize("what", ["index", "content"])
@pytest.mark.parametrize("how", ["other-owner", "0666", "0664", "symlink"])
def test_a_planted_cache_file_is_not_used_offline(
    tmp_path: Path, what: str, how: str, capsys: pytest.CaptureFixture[str]
) -> None:
    cache_dir = tmp_path / "cache"
    planted = plant_mapping(cache_dir / "remote")[0 if what == "index" else 1]
    if how == "symlink":
        real = tmp_path / "real"
        os.rename(planted, real)
        planted.symlink_to(real)
    else:
        make_unsafe(planted, how)
    code, doc, err = cli(capsys, *list_offline(tmp_path, cache_dir))
    assert code != 0
    assert "candidates" not in doc
    assert doc["error"]["code"] == "mapping-not-found", doc
    assert f"{MAPPING_URL}: not in the cache" in err
    assert not os.path.lexists(planted)  # treated as corrupt: removed, never served
    if how == "symlink":
        assert (tmp_path / "real").exists()  # what it pointed to is left alone


# (A FIFO in the cache is refused as well; it is not a case here because the old code
# blocked forever opening one.)
@pytest.mark.parametrize("how", ["other-owner", "0666", "symlink"])
def test_a_planted_cached_image_is_never_loaded(tmp_path: Path, how: str) -> None:
    cache = Cache(tmp_path / "remote")
    data = b"an older image"
    digest = cache.store("images", data)
    path = cache.path("images", digest)
    if how == "symlink":
        real = tmp_path / "real"
        os.rename(path, real)
        path.symlink_to(real)
    else:
        make_unsafe(path, how)
    assert cache.load("images", digest) is None
    assert not os.path.lexists(path)
