"""What the host and the repository offer (:mod:`tdxupdate.inventory`), without the CLI: the
host document, the repository's inventory and the candidate documents."""

from __future__ import annotations

from pathlib import Path

from factories.hosts import build_host_tree
from factories.images import Release, make_image, mapping_document, test_key, write_repo

from tdxupdate import image as _image
from tdxupdate import imagecheck, inventory, policy
from tdxupdate.report import UNSET, Report
from tdxupdate.settings import Settings
from tdxupdate.sources import ImageRef
from tdxupdate.sources.local import load_catalog
from tdxupdate.versions import Version

TRUSTED = frozenset({test_key().fingerprint})


def release(version: str) -> Release:
    return Release(version, min_seamldr_versions=("1.5.00", "2.0.00"))


def repo(root: Path, *versions: str) -> Path:
    images = {v: make_image(v) for v in versions}
    return write_repo(root, images, mapping_document([release(v) for v in versions]))


def test_the_head_and_the_whole_image_give_the_policy_the_same_facts() -> None:
    img = make_image("1.5.09", seamsvn=0x0109)
    ref = ImageRef(Version.parse("1.5.09"), "x")
    head = inventory.image_facts_from_head(ref, img[: _image.HEAD_SIZE], len(img), TRUSTED)
    verified = imagecheck.verify_image(img, location="x", trusted_signers=TRUSTED)
    whole = inventory.image_facts_from_verified(verified)
    assert head == whole
    assert (whole.seamsvn, whole.signer, whole.failures) == (0x0109, test_key().fingerprint, ())


def test_an_untrusted_head_is_a_failure_not_an_exception() -> None:
    img = make_image("1.5.09")
    ref = ImageRef(Version.parse("1.5.09"), "x")
    facts = inventory.image_facts_from_head(ref, img[: _image.HEAD_SIZE], len(img), frozenset())
    assert [name for name, _ in facts.failures] == ["trusted-signer"]
    assert facts.failures[0][1].startswith("1.5.09: ")


def test_the_host_document_carries_the_published_identity_and_no_mapping_verdict(
    tmp_path: Path,
) -> None:
    root = build_host_tree(tmp_path / "host", module="1.5.06", remaining=3)
    facts = inventory.discover_host(Settings(sysroot=root))
    doc = inventory.host_doc(facts)
    assert (doc.module_version, doc.num_remaining_updates, doc.generation) == ("1.5.06", 3, "G5")
    assert doc.in_mapping is UNSET
    assert "in_mapping" not in doc.to_json()
    assert doc.identity_source in ("published", None)
    assert [c["name"] for c in doc.checks] == [c.name for c in facts.checks]


def test_host_warnings_say_whether_the_running_module_is_in_the_mapping(tmp_path: Path) -> None:
    root = build_host_tree(tmp_path / "host", module="1.5.06")
    facts = inventory.discover_host(Settings(sysroot=root))
    listed = load_catalog(repo(tmp_path / "listed", "1.5.06", "1.5.09") / "mapping_file.json")
    unlisted = load_catalog(repo(tmp_path / "unlisted", "1.5.09") / "mapping_file.json")
    for catalog, in_mapping, warned in (
        (listed, True, False),
        (unlisted, False, True),
        (None, None, False),
    ):
        report = Report("status", host=inventory.host_doc(facts))
        inventory.host_warnings(report, facts, catalog)
        assert report.host is not None
        assert report.host.in_mapping is in_mapping
        assert ("running-not-in-mapping" in report.warnings) is warned


def test_candidates_are_built_into_the_report_newest_first(tmp_path: Path) -> None:
    root = build_host_tree(tmp_path / "host", module="1.5.06", cpu=0x806F8)
    settings = Settings(
        sysroot=root,
        repo=str(repo(tmp_path / "repo", "1.5.06", "1.5.08", "1.5.09")),
        extra_signers=TRUSTED,
    )
    report = Report("list")
    _facts, view, inv, candidates = inventory.build_candidates(settings, report)
    assert view.module_version == Version.parse("1.5.06")
    assert set(inv.refs) == {Version.parse(v) for v in ("1.5.06", "1.5.08", "1.5.09")}
    assert report.candidates is not None
    assert [c.version for c in report.candidates] == ["1.5.09", "1.5.08", "1.5.06"]
    assert [c.eligible for c in report.candidates] == [c.eligible for c in candidates]
    same = next(c for c in report.candidates if c.version == "1.5.06")
    assert same.reasons == ["same-as-running"]
    assert len(same.details) == 1


def test_a_candidate_document_lists_a_detail_per_reason() -> None:
    c = policy.Candidate(
        Version.parse("1.5.30"),
        None,
        None,
        ("not-in-mapping", "image-missing"),
        {"not-in-mapping": "1.5.30 is not listed", "image-missing": "no file"},
    )
    doc = inventory.candidate_doc(c)
    assert doc.details == ["1.5.30 is not listed", "no file"]
    assert (doc.path, doc.seamsvn, doc.pinned, doc.debug) == (None, None, None, None)
