"""Verdicts kept across runs (issue 14): what a listing may skip, and what it may never.

Behaviour only: hits, misses, poisoning, an unusable cache. Nothing here times anything.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from factories.hosts import build_host_tree
from factories.images import Release, make_image, mapping_document, test_key, write_repo

from tdxupdate import catalog, config, image, imagecheck, verdicts
from tdxupdate.cli import main

SPR = (0x806F8, 0xC06F0)
GOOD = "1.5.08"
BAD = "1.5.24"  # newest: its signature does not verify


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No site configuration, and fresh in-process memos for every run of the tool: what the
    store does is then the only thing carried from one run to the next."""
    monkeypatch.setattr(config, "DEFAULT_CONFIG", tmp_path / "etc-tdxupdate.conf")
    for name in ("TDXUPDATE_CONFIG", "TDXUPDATE_REPO", "TDXUPDATE_STATE_DIR", "JOURNAL_STREAM"):
        monkeypatch.delenv(name, raising=False)


class Counters:
    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.rsa = 0
        self.schema = 0
        self.monkeypatch = monkeypatch
        real_decode = imagecheck._decode_signature
        real_schema = catalog._schema_problems

        def decode(sig: image.Sigstruct) -> bytes | None:
            self.rsa += 1
            return real_decode(sig)

        def schema(doc: object) -> Any:
            self.schema += 1
            return real_schema(doc)

        monkeypatch.setattr(imagecheck, "_decode_signature", decode)
        monkeypatch.setattr(catalog, "_schema_problems", schema)

    def fresh_process(self) -> None:
        """What a new process starts with: empty memos, counters at zero."""
        self.monkeypatch.setattr(imagecheck, "_signature_checks", {})
        self.monkeypatch.setattr(image, "_inspected", {})
        self.rsa = self.schema = 0


@pytest.fixture
def counters(monkeypatch: pytest.MonkeyPatch) -> Counters:
    return Counters(monkeypatch)


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    path = tmp_path / "trusted-keys"
    path.write_text(f"{test_key().fingerprint}\n")
    return path


def _repo(root: Path, images: dict[str, bytes]) -> Path:
    rel = [Release(v, min_seamldr_versions=("1.5.00", "2.0.00")) for v in images]
    return write_repo(root, images, mapping_document(rel))


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return _repo(
        tmp_path / "repo",
        {
            "1.5.06": make_image("1.5.06", cpuids=SPR),
            GOOD: make_image(GOOD, cpuids=SPR),
            "1.5.09": make_image("1.5.09", cpuids=SPR),
        },
    )


@pytest.fixture
def host(tmp_path: Path) -> Path:
    return build_host_tree(tmp_path / "host", generation="G5", module="1.5.06", remaining=3)


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return tmp_path / "cache"


Run = Callable[..., tuple[int, dict[str, Any]]]


@pytest.fixture
def run(
    capsys: pytest.CaptureFixture[str], counters: Counters, host: Path, keys: Path, cache: Path
) -> Run:
    def _run(action: str, repo: Path, *extra: str | Path) -> tuple[int, dict[str, Any]]:
        counters.fresh_process()
        args = [
            *action.split(),
            "--json",
            "--sysroot",
            host,
            "--repo",
            repo,
            "--trusted-keys",
            keys,
        ]
        code = main([str(a) for a in [*args, "--cache-dir", cache, *extra]])
        out = capsys.readouterr().out
        return code, json.loads(out)

    return _run


def _eligible(doc: dict[str, Any]) -> dict[str, bool]:
    return {c["version"]: c["eligible"] for c in doc["candidates"]}


def _store_file(cache: Path) -> Path:
    return cache / verdicts.DIR_NAME / verdicts.FILE_NAME


def _forge(cache: Path, kind: str, *judged: bytes) -> None:
    """Put a verdict in the store as whoever can write the cache directory could."""
    store = verdicts.VerdictStore(cache)
    store.add(kind, *judged)
    store.flush()


def _sigstruct_parts(data: bytes) -> tuple[bytes, bytes, bytes]:
    sig = image.inspect(data[: image.HEAD_SIZE], len(data)).sigstruct
    return sig.raw, sig.modulus, sig.signature


# --- hits and misses ---------------------------------------------------------------------------


def test_second_listing_reuses_the_mapping_and_signature_verdicts(
    run: Run, repo: Path, cache: Path, counters: Counters
) -> None:
    code, first = run("--list", repo)
    assert code == 0
    assert (counters.rsa, counters.schema) == (3, 1)
    assert _store_file(cache).is_file()

    code, second = run("--list", repo)
    assert code == 0
    assert (counters.rsa, counters.schema) == (0, 0)
    assert second == first  # the same document, word for word


def test_status_reuses_the_mapping_verdict(run: Run, repo: Path, counters: Counters) -> None:
    run("--list", repo)
    code, _ = run("--status", repo)
    assert code == 0
    assert counters.schema == 0


def test_update_and_verify_compute_every_verdict(run: Run, repo: Path, counters: Counters) -> None:
    run("--list", repo)
    code, doc = run("--update --dry-run", repo)
    assert code == 0
    assert doc["to_version"] == "1.5.09"
    assert counters.schema == 1  # the mapping file validated again
    assert counters.rsa >= 3  # every head while choosing, then the chosen image in full
    code, _ = run("--verify", repo)
    assert counters.rsa >= 3


def test_changed_mapping_bytes_are_validated_again(
    run: Run, repo: Path, counters: Counters
) -> None:
    run("--list", repo)
    mapping = repo / "mapping_file.json"
    mapping.write_text(mapping.read_text() + "\n")  # same document, other bytes
    run("--list", repo)
    assert counters.schema == 1


def test_a_mapping_verdict_never_admits_other_bytes(run: Run, repo: Path, cache: Path) -> None:
    run("--list", repo)
    mapping = repo / "mapping_file.json"
    doc = json.loads(mapping.read_text())
    doc["tdx_module_releases"][0]["version"] = "1.5.6x"
    mapping.write_text(json.dumps(doc))
    code, out = run("--list", repo)
    assert code == 65
    assert out["error"]["code"] == "mapping-invalid"


def test_a_forged_mapping_verdict_for_an_invalid_file_is_not_believed_past_decoding(
    run: Run, repo: Path, cache: Path
) -> None:
    mapping = repo / "mapping_file.json"
    mapping.write_text('{"Header": {"Version": "1.0"}, "tdx_module_releases": [{}]}')
    _forge(cache, "mapping", mapping.read_bytes())
    code, out = run("--list", repo)
    assert code == 65
    assert out["error"]["code"] == "mapping-invalid"


# --- poisoning -----------------------------------------------------------------------------------


@pytest.fixture
def bad_repo(tmp_path: Path) -> Path:
    """The newest image's signature is broken; everything else about it is right."""
    return _repo(
        tmp_path / "bad-repo",
        {
            "1.5.06": make_image("1.5.06", cpuids=SPR),
            GOOD: make_image(GOOD, cpuids=SPR),
            BAD: make_image(BAD, cpuids=SPR, tamper="signature-byte"),
        },
    )


def test_a_poisoned_store_cannot_make_update_install_a_bad_image(
    run: Run, bad_repo: Path, cache: Path, counters: Counters
) -> None:
    data = (bad_repo / "joined_files/1.5/tdx_module_1.5.24.blob").read_bytes()
    # A verdict for the bad image's exact bytes, as an attacker with the cache would write it.
    _forge(cache, "signature", *_sigstruct_parts(data))
    code, listed = run("--list", bad_repo)
    assert code == 0  # the listing believes its own store (its one and only use of it)...
    assert _eligible(listed)[BAD] is True
    code, doc = run(f"--update {BAD} --dry-run", bad_repo)
    assert code != 0
    assert doc["error"]["code"] == "not-eligible"  # ...--update never does
    assert "signature" in doc["error"]["message"]
    assert doc["changed"] is False
    code, doc = run("--update --dry-run", bad_repo)
    assert code == 0
    assert doc["to_version"] == GOOD  # the newest image that truly verifies


def test_full_verification_ignores_the_store_even_while_listing(
    bad_repo: Path, cache: Path, counters: Counters
) -> None:
    data = (bad_repo / "joined_files/1.5/tdx_module_1.5.24.blob").read_bytes()
    _forge(cache, "signature", *_sigstruct_parts(data))
    counters.fresh_process()
    with verdicts.listing(cache) as store:
        assert store is not None
        head = image.inspect(data[: image.HEAD_SIZE], len(data))
        listed = imagecheck.header_checks(
            head,
            trusted_signers={test_key().fingerprint},
            allow_debug=False,
            expected_version=None,
        )
        verified = imagecheck.verify_image(
            data, location="bad", trusted_signers={test_key().fingerprint}
        )
    assert [c.name for c in verified.verification.failed] == ["signature"]
    assert listed[0].ok  # the head-only listing check is the store's one customer
    # and the listing's borrowed verdict did not reach the process memo
    assert all(check.ok is False for check in imagecheck._signature_checks.values())


def test_a_verdict_for_other_bytes_cannot_make_a_bad_signature_eligible(
    run: Run, repo: Path, tmp_path: Path, cache: Path
) -> None:
    code, doc = run("--list", repo)
    assert _eligible(doc)["1.5.09"] is True
    # The store now holds a verdict for 1.5.09's sigstruct; damage that image's signature.
    blob = repo / "joined_files/1.5/tdx_module_1.5.09.blob"
    damaged = make_image("1.5.09", cpuids=SPR, tamper="signature-byte")
    blob.write_bytes(damaged)
    code, doc = run("--list", repo)
    assert code == 0
    assert _eligible(doc)["1.5.09"] is False
    entry = next(c for c in doc["candidates"] if c["version"] == "1.5.09")
    assert "signature-invalid" in entry["reasons"]


def test_a_verdict_made_by_another_tool_version_is_a_miss(
    run: Run, bad_repo: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = (bad_repo / "joined_files/1.5/tdx_module_1.5.24.blob").read_bytes()
    monkeypatch.setattr(verdicts, "__version__", "0.0.0-other")
    verdicts.context.cache_clear()
    _forge(cache, "signature", *_sigstruct_parts(data))
    monkeypatch.undo()
    verdicts.context.cache_clear()
    _, doc = run("--list", bad_repo)
    assert _eligible(doc)[BAD] is False


@pytest.mark.parametrize(
    "spoil",
    [
        pytest.param(lambda f: f.write_bytes(b"garbage"), id="garbage"),
        pytest.param(lambda f: f.write_bytes(f.read_bytes() + b"x"), id="torn"),
        pytest.param(lambda f: os.chmod(f, 0o666), id="world-writable"),
        pytest.param(lambda f: _replace_with_link(f), id="symlink"),
    ],
)
def test_an_unsafe_or_unreadable_store_is_a_miss(
    run: Run, repo: Path, cache: Path, counters: Counters, spoil: Callable[[Path], None]
) -> None:
    _, first = run("--list", repo)
    spoil(_store_file(cache))
    code, again = run("--list", repo)
    assert code == 0
    assert again == first
    assert (counters.rsa, counters.schema) == (3, 1)


def _replace_with_link(path: Path) -> None:
    target = path.with_name("elsewhere")
    target.write_bytes(path.read_bytes())
    path.unlink()
    path.symlink_to(target)


def test_an_unusable_cache_directory_lists_uncached(
    run: Run, repo: Path, cache: Path, counters: Counters
) -> None:
    cache.mkdir(mode=0o777)
    os.chmod(cache, 0o777)  # writable by others: refused, and so not used
    code, first = run("--list", repo)
    code2, second = run("--list", repo)
    assert code == code2 == 0
    assert first == second
    assert (counters.rsa, counters.schema) == (3, 1)
    assert not (cache / verdicts.DIR_NAME).exists()


def test_the_store_is_bounded_and_keeps_the_newest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(verdicts, "MAX_ENTRIES", 4)
    root = tmp_path / "cache"
    for i in range(6):
        _forge(root, "signature", bytes([i]))
    size = _store_file(root).stat().st_size
    assert size == len(verdicts._MAGIC) + 32 * (1 + 4)
    store = verdicts.VerdictStore(root)
    assert [store.known("signature", bytes([i])) for i in range(6)] == [False] * 2 + [True] * 4


def test_the_store_file_is_written_with_safe_permissions(run: Run, repo: Path, cache: Path) -> None:
    run("--list", repo)
    mode = _store_file(cache).stat().st_mode & 0o777
    assert mode == 0o644
    assert (_store_file(cache).parent.stat().st_mode & 0o777) == 0o755
    assert [p.name for p in _store_file(cache).parent.iterdir()] == [verdicts.FILE_NAME]
