"""The image that is judged is the image that is sent (issue 9 items 1 and 2).

1. ``--update`` reads the chosen image once and judges that buffer again, policy facts
   included: an image replaced between the listing's read and the full read is judged as what
   it is now, and the bytes the kernel receives are the bytes verified. In one ``--update`` the
   chosen image's header parse, checksum and RSA check each run once.
2. Every image is bound to the version it is offered as: an image signed by the release table's
   key and offered as a published version must carry that release's SEAMSVN and MRSEAM
   (``release-mismatch``); any other image must not have a SEAMSVN below the running module's
   (``seamsvn-below-running``).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from factories.images import Release, make_image, mapping_document, test_key, write_repo
from factories.sim import mount_sim

from tdxupdate import image as _image
from tdxupdate import imagebuild, imagecheck, policy, releases, sources
from tdxupdate.cli import main
from tdxupdate.image import FORMAT_A, FORMAT_B
from tdxupdate.imagebuild import convert
from tdxupdate.sim.session import SimHost
from tdxupdate.versions import Version

RUNNING = "1.5.06"
OLDER = "1.5.08"
TARGET = "1.5.09"
FEATURES = "0x800000000002"
CPU = 0x806F8
OTHER_CPU = 0xA06D0


def write_test_repo(root: Path, files: dict[str, bytes]) -> tuple[Path, Path]:
    rel = [Release(v, min_seamldr_versions=("1.5.00",), tdx_feature0=FEATURES) for v in files]
    repo = write_repo(root / "repo", files, mapping_document(rel))
    keys = root / "trusted-keys"
    keys.write_text(f"{test_key().fingerprint}\n")
    return repo, keys


@contextlib.contextmanager
def host(tmp_path: Path, sim_cache: Path, repo: Path) -> Iterator[SimHost]:
    with mount_sim(
        tmp_path / "host",
        "spr",
        cache_dir=sim_cache,
        kernel="ml",
        module=RUNNING,
        seamldr="1.5.00",
        cpu=f"{CPU:#x}",
        remaining=8,
        mapping=repo / "mapping_file.json",
        trusted_signers=[test_key().fingerprint],
    ) as h:
        yield h


def run(
    capsys: pytest.CaptureFixture[str], h: SimHost, repo: Path, keys: Path, state: Path, *a: str
) -> tuple[int, dict[str, Any]]:
    capsys.readouterr()
    code = main(
        [
            "--sysroot",
            str(h.sysroot),
            "--repo",
            str(repo),
            "--trusted-keys",
            str(keys),
            "--state-dir",
            str(state),
            "--timeout",
            "30",
            "--json",
            *a,
        ]
    )
    out = capsys.readouterr().out
    return code, json.loads(out)


@pytest.fixture
def swapped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path, bytes]:
    """A repository whose TARGET image is replaced, between the listing and the full read, by
    a correctly signed TARGET for another CPU (a FUSE view serving other bytes on the second
    open does the same)."""
    files = {
        RUNNING: make_image(RUNNING, fmt=FORMAT_A),
        OLDER: make_image(OLDER, fmt=FORMAT_A),
        TARGET: make_image(TARGET, fmt=FORMAT_B),
    }
    repo, keys = write_test_repo(tmp_path, files)
    other_cpu = make_image(TARGET, fmt=FORMAT_B, cpuids=(OTHER_CPU,))
    target_path = repo / sources.blob_relpath(Version.parse(TARGET))
    real_read = sources.LocalRepository.read

    def swap_then_read(self: sources.LocalRepository, ref: sources.ImageRef) -> bytes:
        if Path(ref.location) == target_path:
            target_path.write_bytes(other_cpu)
        return real_read(self, ref)

    monkeypatch.setattr(sources.LocalRepository, "read", swap_then_read)
    return repo, keys, files[OLDER]


@pytest.mark.fuse
def test_an_image_swapped_after_listing_is_judged_as_what_it_is_now(
    tmp_path: Path,
    sim_cache: Path,
    capsys: pytest.CaptureFixture[str],
    swapped: tuple[Path, Path, bytes],
) -> None:
    repo, keys, older = swapped
    with host(tmp_path, sim_cache, repo) as h:
        code, doc = run(capsys, h, repo, keys, tmp_path / "state", "--update", TARGET)
        assert code == 65, doc
        assert doc["error"]["code"] == "not-eligible", doc
        assert "cpu-unsupported" in doc["error"]["message"]
        state = h.state()
        assert state["uploads"] == []
        assert state["received_size"] == 0
        assert state["module_version"] == RUNNING

        # Without a version, the newest eligible one that is still eligible is taken instead,
        # and the kernel receives exactly its verified bytes.
        code, doc = run(capsys, h, repo, keys, tmp_path / "state", "--update")
        assert code == 0, doc
        assert doc["to_version"] == OLDER, doc
        rejected = next(c for c in doc["candidates"] if c["version"] == TARGET)
        assert "cpu-unsupported" in rejected["reasons"]
        assert h.received() == convert(older, FORMAT_B)
        assert h.state()["module_version"] == OLDER


@pytest.mark.fuse
def test_one_update_parses_checksums_and_rsa_checks_the_chosen_image_once(
    tmp_path: Path,
    sim_cache: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    files = {RUNNING: make_image(RUNNING), TARGET: make_image(TARGET, fmt=FORMAT_A)}
    repo, keys = write_test_repo(tmp_path, files)
    target = files[TARGET]
    expected = convert(target, FORMAT_B)
    _image._inspected.clear()
    imagecheck._signature_checks.clear()
    counts = {"parse": 0, "checksum": 0, "rsa": 0}
    real_parse, real_checksum = _image._parse_head, _image.checksum16
    real_rsa = imagecheck._compute_signature_check

    def parse(view: memoryview, size: int) -> _image.ImageInfo:
        if bytes(view[:64]) == target[:64]:
            counts["parse"] += 1
        return real_parse(view, size)

    def checksum(data: Any) -> int:
        if bytes(memoryview(data)[:64]) == target[:64] and len(data) == len(target):
            counts["checksum"] += 1
        return real_checksum(data)

    def rsa(sig: _image.Sigstruct) -> imagecheck.Check:
        if sig.raw == _image.inspect(target[: _image.HEAD_SIZE], len(target)).sigstruct.raw:
            counts["rsa"] += 1
        return real_rsa(sig)

    with host(tmp_path, sim_cache, repo) as h:
        monkeypatch.setattr(_image, "_parse_head", parse)
        for module in (_image, imagecheck, imagebuild):  # every module that sums an image
            monkeypatch.setattr(module, "checksum16", checksum)
        monkeypatch.setattr(imagecheck, "_compute_signature_check", rsa)
        code, doc = run(capsys, h, repo, keys, tmp_path / "state", "--update")
        assert code == 0, doc
        assert doc["changed"] is True, doc
        received = h.received()
    assert counts == {"parse": 1, "checksum": 1, "rsa": 1}
    # converted A -> B for this kernel, from the verified buffer, without parsing it again
    assert received == expected


# --- binding an image to its version (policy, pure) ---------------------------------------


def mrseam(img: bytes) -> str:
    return _image.inspect(img[: _image.HEAD_SIZE], len(img)).sigstruct.seamhash.hex()


def table_for_test_key(entries: dict[str, tuple[int, bytes]]) -> releases.ReleaseTable:
    """A release table as if the test key were Intel's: version -> (SEAMSVN, image)."""
    doc = {
        "signer": test_key().fingerprint,
        "releases": [
            {
                "version": v,
                "seamsvn": f"{svn:#06x}",
                "mrseam": _image.inspect(
                    img[: _image.HEAD_SIZE], len(img)
                ).sigstruct.seamhash.hex(),
            }
            for v, (svn, img) in entries.items()
        ],
    }
    return releases.parse_table(doc)


def facts(img: bytes) -> policy.ImageFacts:
    from tdxupdate import inventory

    verified = imagecheck.verify_image(img, location="x", trusted_signers=[test_key().fingerprint])
    return inventory.image_facts_from_verified(verified)


HOST = policy.HostView(Version.parse(RUNNING), Version.parse("1.5.00"), CPU)


def judge(version: str, img: bytes, table: releases.ReleaseTable | None) -> policy.Candidate:
    release = Release(version, min_seamldr_versions=("1.5.00",), tdx_feature0=FEATURES)
    from tdxupdate.catalog import parse_catalog

    parsed = parse_catalog(json.dumps(mapping_document([release])), "test").releases[0]
    return policy.evaluate_one(
        Version.parse(version), parsed, facts(img), HOST, policy.Options(releases=table)
    )


def test_a_published_version_must_carry_its_published_seamsvn_and_mrseam() -> None:
    genuine_06 = make_image(RUNNING, version_in_sigstruct=False, seamsvn=0x0106)
    genuine_09 = make_image(TARGET, version_in_sigstruct=False, seamsvn=0x0108)
    table = table_for_test_key({RUNNING: (0x0106, genuine_06), TARGET: (0x0108, genuine_09)})

    ok = judge(TARGET, genuine_09, table)
    assert "release-mismatch" not in ok.reasons
    assert policy.pinned(ok.version, facts(genuine_09), table)

    # 1.5.06's genuine image saved as 1.5.09: no version in the sigstruct, valid signature,
    # and yet not 1.5.09
    renamed = judge(TARGET, genuine_06, table)
    assert "release-mismatch" in renamed.reasons
    assert "SEAMSVN 0x0106, published 0x0108" in renamed.details["release-mismatch"]
    # without the table the same image looked like an upgrade: the defect this fixes
    assert judge(TARGET, genuine_06, None).reasons == ()

    # the same SVN with another module (1.5.24/1.5.25 share one): MRSEAM tells them apart
    same_svn = make_image(TARGET, version_in_sigstruct=False, seamsvn=0x0108, module_pages=3)
    assert "MRSEAM" in judge(TARGET, same_svn, table).details["release-mismatch"]


def test_an_unpinned_image_may_not_go_below_the_running_seamsvn() -> None:
    genuine_06 = make_image(RUNNING, version_in_sigstruct=False, seamsvn=0x0106)
    table = table_for_test_key({RUNNING: (0x0106, genuine_06)})
    # 1.5.30 is not in the table: unpinned
    low = judge("1.5.30", make_image("1.5.30", version_in_sigstruct=False, seamsvn=0x0105), table)
    assert low.reasons == ("seamsvn-below-running",)
    assert "0x0105" in low.details["seamsvn-below-running"]
    equal = judge("1.5.30", make_image("1.5.30", seamsvn=0x0106), table)
    assert equal.reasons == ()
    assert not policy.pinned(equal.version, facts(make_image("1.5.30")), table)


def test_intels_table_holds_every_published_release_and_its_full_digests() -> None:
    table = releases.intel_releases()
    assert table.signer == imagecheck.INTEL_PRODUCTION_SIGNER
    assert len(table.releases) == 19
    assert table.get(Version.parse("1.5.08")) == releases.PublishedRelease(
        Version.parse("1.5.08"), 0x0107, table.releases[Version.parse("1.5.08")].mrseam
    )
    full = [r for r in table.releases.values() if len(r.mrseam) == 96]
    assert len(full) == 11
    assert table.seamsvn_floor(Version.parse("1.5.07")) == 0x0106
    assert table.seamsvn_floor(Version.parse("2.0.05")) == 0x0304


@pytest.mark.fuse
def test_list_explains_a_renamed_image(
    tmp_path: Path,
    sim_cache: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    genuine_06 = make_image(RUNNING, version_in_sigstruct=False, seamsvn=0x0106)
    genuine_09 = make_image(TARGET, version_in_sigstruct=False, seamsvn=0x0108)
    table = table_for_test_key({RUNNING: (0x0106, genuine_06), TARGET: (0x0108, genuine_09)})
    monkeypatch.setattr(releases, "intel_releases", lambda: table)
    repo, keys = write_test_repo(tmp_path, {RUNNING: genuine_06, TARGET: genuine_06})
    with host(tmp_path, sim_cache, repo) as h:
        code, doc = run(capsys, h, repo, keys, tmp_path / "state", "--list")
        assert code == 0
        listed = {c["version"]: c for c in doc["candidates"]}
        assert listed[TARGET]["reasons"] == ["release-mismatch"]
        assert listed[TARGET]["pinned"] is True
        assert listed[TARGET]["seamsvn"] == "0x0106"
        code, doc = run(capsys, h, repo, keys, tmp_path / "state", "--update", TARGET)
        assert code == 65
        assert doc["error"]["code"] == "not-eligible"
        assert h.state()["uploads"] == []
