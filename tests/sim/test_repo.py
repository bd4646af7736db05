"""The sample repository of ``--simulate`` (tdxupdate.sim.repo): Intel's layout, images that
verify against the sample key, generated once and reused, regenerated when stale.

Part of the emulator's tests (tests/sim/); none of these needs FUSE. Each test gets its own cache
directory seeded with the session's key (generating one in pure Python takes seconds).
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import threading
from collections.abc import Callable
from importlib import resources
from pathlib import Path

import pytest
from factories.sim import seed_key

from tdxupdate.image import FORMAT_A, FORMAT_B, inspect_image
from tdxupdate.imagecheck import verify
from tdxupdate.signing import RsaKey
from tdxupdate.sim import repo as sim_repo
from tdxupdate.sim.repo import (
    DEFAULT_SPEC,
    KEY_FILE,
    REPO_DIR,
    TRUSTED_KEYS_FILE,
    ImageSpec,
    SampleRepo,
    ensure_sample_repo,
    is_cached,
    sample_images,
    synthesize_image,
    synthetic_module,
)
from tdxupdate.sources.local import load_catalog
from tdxupdate.versions import Version

MARKER = ".tdxsim-sample.json"
FORMATS = {"0x100": FORMAT_A, "0x200": FORMAT_B}


@pytest.fixture
def cache(tmp_path: Path, sim_cache: Path) -> Path:
    """An empty cache directory holding only the session's sample key."""
    out = tmp_path / "cache"
    out.mkdir()
    shutil.copy(sim_cache / KEY_FILE, out / KEY_FILE)
    return out


@pytest.fixture(scope="module")
def other_key(tmp_path_factory: pytest.TempPathFactory) -> RsaKey:
    """A second RSA-3072 key, made quickly."""
    where = tmp_path_factory.mktemp("other-key")
    seed_key(where)
    return RsaKey.from_json((where / KEY_FILE).read_text(encoding="utf-8"))


def snapshot(root: Path) -> dict[str, tuple[int, int, bytes]]:
    """Every file under ``root``: (inode, mtime_ns, bytes) by relative path."""
    out = {}
    for path in sorted(root.rglob("*")):
        if path.is_file():
            st = path.stat()
            out[str(path.relative_to(root))] = (st.st_ino, st.st_mtime_ns, path.read_bytes())
    return out


def contents(shot: dict[str, tuple[int, int, bytes]]) -> dict[str, bytes]:
    return {name: data for name, (_, _, data) in shot.items()}


def expected_files() -> set[str]:
    names = {"mapping_file.json", MARKER}
    for entry in sample_images():
        v = Version.parse(entry["version"])
        names.add(f"joined_files/{v.major}.{v.minor}/tdx_module_{v}.blob")
    return names


# --- layout and content --------------------------------------------------------------------------


def test_first_use_writes_intels_layout(cache: Path) -> None:
    assert not is_cached(cache)
    repo = ensure_sample_repo(cache)
    assert is_cached(cache)
    assert repo.path == cache / REPO_DIR
    assert repo.mapping_path == repo.path / "mapping_file.json"
    assert repo.key_path == cache / KEY_FILE
    assert repo.trusted_keys_path == cache / TRUSTED_KEYS_FILE
    assert set(snapshot(repo.path)) == expected_files()
    mapping = resources.files("tdxupdate.sim").joinpath("data", "sample-mapping.json")
    assert repo.mapping_path.read_bytes() == mapping.read_bytes()
    assert repo.image_path("1.5.24") == repo.path / "joined_files/1.5/tdx_module_1.5.24.blob"
    assert repo.image_path(Version(2, 0, 14)) == repo.image_path("2.0.14")
    # nothing else is left in the cache: no staging directory, no temporary key
    assert sorted(p.name for p in cache.iterdir()) == sorted(
        [".sample.lock", KEY_FILE, REPO_DIR, TRUSTED_KEYS_FILE]
    )


def test_the_trusted_keys_file_names_the_key_and_only_it(sample_repo: SampleRepo) -> None:
    repo = sample_repo
    key = repo.key()
    assert repo.trusted_signers == frozenset({key.fingerprint})
    lines = repo.trusted_keys_path.read_text(encoding="utf-8").splitlines()
    assert [ln for ln in lines if not ln.startswith("#")] == [key.fingerprint]


@pytest.mark.parametrize("entry", sample_images(), ids=lambda e: str(e["version"]))
def test_each_image_verifies_against_the_sample_key_with_its_facts(
    sample_repo: SampleRepo, entry: dict[str, object]
) -> None:
    repo = sample_repo
    version = Version.parse(str(entry["version"]))
    data = repo.image_path(version).read_bytes()
    debug = bool(entry.get("debug", False))
    result = verify(
        data, trusted_signers=repo.trusted_signers, allow_debug=debug, expected_version=version
    )
    assert result.ok, result.failed
    assert result.info is not None
    sig = result.info.sigstruct
    assert result.info.format == FORMATS[str(entry["format"])]
    assert sig.version == version
    assert sig.is_debug is debug
    assert sig.date == int(str(entry["date"]), 16)
    assert sig.seamsvn == int(str(entry["seamsvn"]), 16)
    assert isinstance(entry["cpuid_table"], list)
    assert sig.cpuid_table[: len(entry["cpuid_table"])] == tuple(
        int(c, 16) for c in entry["cpuid_table"]
    )
    # nothing but the sample key signs it
    untrusted = verify(data, trusted_signers={"00" * 32}, allow_debug=True)
    assert [c.name for c in untrusted.failed] == ["trusted-signer"]
    if debug:
        assert [c.name for c in verify(data, trusted_signers=repo.trusted_signers).failed] == [
            "debug"
        ]


def test_every_image_is_a_release_of_the_mapping_file(sample_repo: SampleRepo) -> None:
    repo = sample_repo
    listed = {r.version for r in load_catalog(repo.mapping_path).releases}
    imaged = {Version.parse(e["version"]) for e in sample_images()}
    assert imaged <= listed
    # 1.5.28 is listed without an image (the tool reports it as such)
    assert listed - imaged == {Version(1, 5, 28)}
    assert not repo.image_path("1.5.28").exists()


# --- reuse ---------------------------------------------------------------------------------------


def test_a_second_call_reuses_the_repository_without_rewriting_it(cache: Path) -> None:
    first = ensure_sample_repo(cache)
    before = snapshot(cache)
    second = ensure_sample_repo(cache)
    assert second == first
    assert second.key().fingerprint == first.key().fingerprint
    assert snapshot(cache) == before  # same inodes, mtimes and bytes: nothing rewritten
    assert is_cached(cache)


def test_concurrent_first_uses_generate_the_repository_once(
    cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    writes: list[Path] = []
    real: Callable[[Path, RsaKey], None] = sim_repo._write_repo

    def counting(target: Path, key: RsaKey) -> None:
        writes.append(target)
        real(target, key)

    monkeypatch.setattr(sim_repo, "_write_repo", counting)
    results: list[SampleRepo] = []
    threads = [
        threading.Thread(target=lambda: results.append(ensure_sample_repo(cache))) for _ in range(3)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(results) == 3
    assert len(set(results)) == 1
    assert len(writes) == 1
    assert is_cached(cache)


# --- stale or damaged caches ---------------------------------------------------------------------


def _drop_marker(repo: Path) -> None:
    (repo / MARKER).unlink()


def _garble_marker(repo: Path) -> None:
    (repo / MARKER).write_text("{not json", encoding="utf-8")


def _old_spec(repo: Path) -> None:
    marker = json.loads((repo / MARKER).read_text(encoding="utf-8"))
    marker["spec"] = "0" * 64
    (repo / MARKER).write_text(json.dumps(marker) + "\n", encoding="utf-8")


def _old_layout(repo: Path) -> None:
    marker = json.loads((repo / MARKER).read_text(encoding="utf-8"))
    marker["layout"] -= 1
    (repo / MARKER).write_text(json.dumps(marker) + "\n", encoding="utf-8")


def _other_fingerprint(repo: Path) -> None:
    marker = json.loads((repo / MARKER).read_text(encoding="utf-8"))
    marker["fingerprint"] = "ab" * 32
    (repo / MARKER).write_text(json.dumps(marker) + "\n", encoding="utf-8")


@pytest.mark.parametrize(
    "make_stale", [_drop_marker, _garble_marker, _old_spec, _old_layout, _other_fingerprint]
)
def test_a_stale_repository_is_regenerated(cache: Path, make_stale: Callable[[Path], None]) -> None:
    repo = ensure_sample_repo(cache)
    (repo.path / "joined_files/2.0/stray.blob").write_bytes(b"left over")
    make_stale(repo.path)
    before = snapshot(repo.path)
    assert not is_cached(cache)

    again = ensure_sample_repo(cache)
    assert again == repo
    assert is_cached(cache)
    after = snapshot(repo.path)
    assert set(after) == expected_files()  # the stray file went with the old repository
    for name in expected_files() - {MARKER}:
        assert after[name][0] != before[name][0], f"{name} was not rewritten"
        assert after[name][2] == before[name][2]  # same key, same (deterministic) images


def test_a_layout_bump_regenerates_the_repository(
    cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = ensure_sample_repo(cache)
    before = snapshot(repo.path)
    monkeypatch.setattr(sim_repo, "LAYOUT_VERSION", sim_repo.LAYOUT_VERSION + 1)
    assert not is_cached(cache)
    ensure_sample_repo(cache)
    after = snapshot(repo.path)
    assert after["mapping_file.json"][0] != before["mapping_file.json"][0]
    assert json.loads(after[MARKER][2])["layout"] == sim_repo.LAYOUT_VERSION
    assert is_cached(cache)


def test_a_replaced_key_regenerates_the_repository_and_its_trust(
    cache: Path, other_key: RsaKey
) -> None:
    old = ensure_sample_repo(cache)
    (cache / KEY_FILE).write_text(other_key.to_json(), encoding="utf-8")
    assert not is_cached(cache)

    new = ensure_sample_repo(cache)
    assert new.trusted_signers == frozenset({other_key.fingerprint}) != old.trusted_signers
    assert other_key.fingerprint in new.trusted_keys_path.read_text(encoding="utf-8")
    assert next(iter(old.trusted_signers)) not in new.trusted_keys_path.read_text(encoding="utf-8")
    data = new.image_path("1.5.24").read_bytes()
    assert verify(data, trusted_signers=new.trusted_signers).ok
    assert not verify(data, trusted_signers=old.trusted_signers).ok


@pytest.mark.parametrize("damage", ["", "not json", '{"type": "rsa-private-key"}'])
def test_a_damaged_key_is_replaced_by_a_new_private_one(
    cache: Path, other_key: RsaKey, monkeypatch: pytest.MonkeyPatch, damage: str
) -> None:
    old = ensure_sample_repo(cache)
    made: list[int] = []

    def fast_key(bits: int) -> RsaKey:
        made.append(bits)
        return other_key

    monkeypatch.setattr(sim_repo, "generate_key", fast_key)
    (cache / KEY_FILE).write_text(damage, encoding="utf-8")

    new = ensure_sample_repo(cache)
    assert made == [3072]
    assert new.key() == other_key
    assert new.trusted_signers == frozenset({other_key.fingerprint}) != old.trusted_signers
    assert stat.S_IMODE(os.stat(cache / KEY_FILE).st_mode) == 0o600
    assert verify(new.image_path("1.5.08").read_bytes(), trusted_signers=new.trusted_signers).ok
    assert not list(cache.glob(f".{KEY_FILE}*"))  # no temporary key left behind


def test_a_new_key_is_written_private_even_with_a_permissive_umask(
    tmp_path: Path, other_key: RsaKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sim_repo, "generate_key", lambda bits: other_key)
    old = os.umask(0)
    try:
        repo = ensure_sample_repo(tmp_path / "fresh" / "cache")
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(repo.key_path).st_mode) == 0o600
    assert repo.key() == other_key


def test_a_tampered_trusted_keys_file_is_rewritten_and_a_correct_one_left_alone(
    cache: Path,
) -> None:
    repo = ensure_sample_repo(cache)
    good = repo.trusted_keys_path.read_text(encoding="utf-8")
    before = os.stat(repo.trusted_keys_path)
    ensure_sample_repo(cache)
    after = os.stat(repo.trusted_keys_path)
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)

    repo.trusted_keys_path.write_text("ab" * 32 + "\n", encoding="utf-8")
    ensure_sample_repo(cache)
    assert repo.trusted_keys_path.read_text(encoding="utf-8") == good


def test_a_failed_generation_leaves_no_repository_and_no_staging(
    cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: object, **kwargs: object) -> bytes:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(sim_repo, "synthesize_image", broken)
    with pytest.raises(OSError, match="No space left"):
        ensure_sample_repo(cache)
    assert sorted(p.name for p in cache.iterdir()) == [".sample.lock", KEY_FILE]
    assert not is_cached(cache)
    monkeypatch.undo()
    ensure_sample_repo(cache)
    assert is_cached(cache)


def test_a_failed_regeneration_keeps_the_old_repository_in_place(
    cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = ensure_sample_repo(cache)
    _old_spec(repo.path)
    before = snapshot(repo.path)

    def broken(*args: object, **kwargs: object) -> bytes:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(sim_repo, "synthesize_image", broken)
    with pytest.raises(OSError, match="Input/output"):
        ensure_sample_repo(cache)
    assert snapshot(repo.path) == before
    assert not [p for p in cache.iterdir() if p.name.startswith(".sample-repo-")]


@pytest.mark.parametrize("damage", ["flip-a-byte", "delete", "empty-mapping"])
def test_a_tampered_repository_is_regenerated_never_served(cache: Path, damage: str) -> None:
    repo = ensure_sample_repo(cache)
    good = contents(snapshot(repo.path))
    target = repo.image_path("1.5.24")
    if damage == "flip-a-byte":
        data = bytearray(target.read_bytes())
        data[-1] ^= 0xFF
        target.write_bytes(bytes(data))
    elif damage == "delete":
        target.unlink()
    else:
        repo.mapping_path.write_bytes(b"")
    ensure_sample_repo(cache)
    assert contents(snapshot(repo.path)) == good
    assert is_cached(cache)


def test_is_cached_is_false_without_a_usable_key(cache: Path, tmp_path: Path) -> None:
    assert not is_cached(tmp_path / "absent")
    ensure_sample_repo(cache)
    assert is_cached(cache)
    (cache / KEY_FILE).write_text("garbage", encoding="utf-8")
    assert not is_cached(cache)
    (cache / KEY_FILE).unlink()
    assert not is_cached(cache)


# --- synthetic images ----------------------------------------------------------------------------


def test_synthesize_image_says_what_its_spec_says(sample_repo: SampleRepo) -> None:
    key = sample_repo.key()
    spec = ImageSpec(cpuid_table=(0xA06D0,), debug=True, date=0x20261203, seamsvn=0x0242)
    data = synthesize_image(key, "2.0.99", spec, fmt=FORMAT_A, module_pages=3)
    info = inspect_image(memoryview(data))
    assert info.format == FORMAT_A
    assert info.module_pages == 3
    assert data[info.module_offset :] == synthetic_module(Version(2, 0, 99), 3)
    sig = info.sigstruct
    assert sig.version == Version(2, 0, 99)
    assert sig.is_debug
    assert (sig.date, sig.seamsvn) == (0x20261203, 0x0242)
    assert sig.cpuid_table[:1] == (0xA06D0,)
    assert sig.signer == key.fingerprint
    assert verify(data, trusted_signers={key.fingerprint}, allow_debug=True).ok
    # deterministic: the same inputs give the same bytes
    assert synthesize_image(key, Version(2, 0, 99), spec, fmt=FORMAT_A, module_pages=3) == data


def test_synthesize_image_defaults_and_an_undeclared_version(sample_repo: SampleRepo) -> None:
    key = sample_repo.key()
    data = synthesize_image(key, "1.5.30")
    info = inspect_image(memoryview(data))
    assert info.format == FORMAT_B
    assert info.module_pages == 2
    sig = info.sigstruct
    assert sig.version == Version(1, 5, 30)
    assert not sig.is_debug
    assert (sig.date, sig.seamsvn) == (DEFAULT_SPEC.date, DEFAULT_SPEC.seamsvn)
    assert sig.cpuid_table[:3] == DEFAULT_SPEC.cpuid_table

    silent = synthesize_image(key, "1.5.30", ImageSpec(declare_version=False))
    assert inspect_image(memoryview(silent)).sigstruct.version is None


def test_synthesize_image_carries_a_given_module(sample_repo: SampleRepo) -> None:
    key = sample_repo.key()
    module = bytes(range(256)) * 16  # one page
    data = synthesize_image(key, "1.5.30", module=module)
    info = inspect_image(memoryview(data))
    assert data[info.module_offset :] == module
    assert verify(data, trusted_signers={key.fingerprint}).ok


def test_synthetic_module_is_whole_pages_and_depends_on_the_version() -> None:
    one = synthetic_module(Version(1, 5, 6), pages=3)
    assert len(one) == 3 * 4096
    assert one.startswith(b"tdxupdate-sim synthetic TDX module 1.5.06\n")
    assert synthetic_module(Version(1, 5, 6), pages=3) == one
    assert synthetic_module(Version(1, 5, 8), pages=3) != one


def test_image_spec_from_a_sample_entry() -> None:
    entry = {
        "version": "1.5.16",
        "format": "0x100",
        "date": "0x20250219",
        "seamsvn": "0x010b",
        "cpuid_table": ["0x806f8", "0xc06f0"],
        "debug": True,
    }
    assert ImageSpec.from_sample(entry) == ImageSpec(
        cpuid_table=(0x806F8, 0xC06F0), debug=True, date=0x20250219, seamsvn=0x010B
    )
    del entry["debug"]
    assert ImageSpec.from_sample(entry).debug is False


def test_sample_images_lists_unique_versions_in_both_formats() -> None:
    images = sample_images()
    versions = [e["version"] for e in images]
    assert len(set(versions)) == len(versions) == 8
    assert {e["format"] for e in images} == set(FORMATS)
    assert [e["version"] for e in images if e.get("debug")] == ["1.5.16"]
    assert sample_images() == images
    assert sample_images() is not images  # a fresh copy each time
