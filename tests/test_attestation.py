"""Issue 10 §3: what an update changes for attestation, before and after.

SEAMSVN, MRSEAM and module identity of the running module and of every candidate in every
output; ``--reference-values``; the ``--allowlist`` gate; ``--tcb-info`` ratings. The facts
compared against are ``tests/data/release-notes.json`` and ``tests/data/published-blobs.json``
(copies of Intel's release facts, independent of the table the package ships).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from factories.cli import Result, runner, validate
from factories.hosts import build_host_tree
from factories.images import Release, make_image, mapping_document, module_bytes, test_key
from factories.images import write_repo as _write_repo
from factories.outcome import returned_or_raised
from hypothesis import given, settings
from hypothesis import strategies as st

from tdxupdate import attestation
from tdxupdate.cli import main
from tdxupdate.config import ConfigError
from tdxupdate.versions import Version

DATA = Path(__file__).resolve().parent / "data"
NOTES = json.loads((DATA / "release-notes.json").read_text())["releases"]
BLOBS = {b["version"]: b for b in json.loads((DATA / "published-blobs.json").read_text())["blobs"]}
#: releases whose SEAMSVN and MRSEAM Intel published (1.5.34 has no release note)
PUBLISHED = [r for r in NOTES if r["seamsvn"] is not None]
UNPUBLISHED = [r["version"] for r in NOTES if r["seamsvn"] is None]


@pytest.fixture
def run(capsys: pytest.CaptureFixture[str]) -> Callable[..., Result]:
    return runner(capsys, prefix=("--config", "/dev/null"))


def release(version: str) -> Release:
    return Release(version, min_seamldr_versions=("1.5.00", "2.0.00"))


def write_repo(root: Path, images: dict[str, bytes], listed: list[str] | None = None) -> Path:
    versions = sorted(listed if listed is not None else images, key=Version.parse)
    return _write_repo(root, images, mapping_document([release(v) for v in versions]))


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    path = tmp_path / "trusted-keys"
    path.write_text(f"{test_key().fingerprint}\n")
    return path


def args(tmp_path: Path, module: str, repo: Path, keys: Path) -> list[str | Path]:
    host = tmp_path / f"host-{module}"
    if not host.exists():
        build_host_tree(host, module=module, seamldr="1.5.02")
    return ["--sysroot", host, "--repo", repo, "--trusted-keys", keys, "--state-dir",
            tmp_path / "state"]  # fmt: skip


def mrseam_of(version: str, pages: int = 2) -> str:
    """SHA-384 of the module pages the factory builds: computed here, not read back."""
    return hashlib.sha384(module_bytes(Version.parse(version), pages)).hexdigest()


def operator_file(path: Path, text: str) -> Path:
    path.write_text(text)
    os.chmod(path, 0o644)
    return path


# --- pure pieces ----------------------------------------------------------------------------


def test_svn_bytes_are_major_high_minor_low() -> None:
    # mainline-and-attestation.md §4: TEE_TCB_SVN2 byte [0] minor, byte [1] major
    assert attestation.svn_bytes(0x010D) == (1, 13)
    assert attestation.svn_bytes(0x0309) == (3, 9)


@pytest.mark.parametrize(
    ("version", "svn", "identity"),
    [("1.5.24", 0x010D, "TDX_01"), ("2.0.18", 0x0309, "TDX_03"), ("1.5.34", None, "TDX_01"),
     ("2.0.99", None, "TDX_03"), ("3.1.00", None, None)],
)  # fmt: skip
def test_module_identity(version: str, svn: int | None, identity: str | None) -> None:
    assert attestation.module_identity(Version.parse(version), svn) == identity


# --- --reference-values: the running module, against Intel's facts ---------------------------


@pytest.mark.parametrize("notes", PUBLISHED, ids=[r["version"] for r in PUBLISHED])
def test_reference_values_of_every_published_running_version(
    run: Callable[..., Result], tmp_path: Path, keys: Path, notes: dict[str, Any]
) -> None:
    """A host running each published release: SEAMSVN, MRSEAM and identity are Intel's."""
    version = notes["version"]
    repo = write_repo(tmp_path / "repo", {}, listed=[version])
    res = run("--reference-values", "--json", *args(tmp_path, version, repo, keys))
    assert res.code == 0, res.err
    running = res.doc["reference_values"]["running"]
    assert int(running["seamsvn"], 16) == int(notes["seamsvn"], 16)
    major, minor = int(notes["seamsvn"], 16) >> 8, int(notes["seamsvn"], 16) & 0xFF
    assert (running["seamsvn_major"], running["seamsvn_minor"]) == (major, minor)
    assert running["mrseam_prefix"] == notes["mrseam_prefix"]
    expected_full = BLOBS[version]["module_sha384"] if version in BLOBS else None
    assert running["mrseam"] == expected_full
    assert running["module_identity"] == ("TDX_01" if version.startswith("1.5.") else "TDX_03")
    assert running["source"] == "published"
    assert res.doc["reference_values"]["target"] is None
    # the host block says the same
    assert res.doc["host"]["seamsvn"] == running["seamsvn"]


@pytest.mark.parametrize("version", UNPUBLISHED)
def test_a_running_version_without_published_facts_says_unknown(
    run: Callable[..., Result], tmp_path: Path, keys: Path, version: str
) -> None:
    repo = write_repo(tmp_path / "repo", {}, listed=[version])
    res = run("--reference-values", "--json", *args(tmp_path, version, repo, keys))
    running = res.doc["reference_values"]["running"]
    assert (running["seamsvn"], running["mrseam"], running["source"]) == (None, None, None)
    text = run("--reference-values", *args(tmp_path, version, repo, keys)).out
    assert "  SEAMSVN              unknown (" in text
    assert "  MRSEAM               unknown" in text


def test_a_running_version_known_only_from_the_repository_image(
    run: Callable[..., Result], tmp_path: Path, keys: Path
) -> None:
    """1.5.34 has no release note: its image in the repository tells, in every output."""
    image = make_image("1.5.34", seamsvn=0x010F)
    repo = write_repo(tmp_path / "repo", {"1.5.34": image})
    for action in ("--status", "--list", "--reference-values"):
        res = run(action, "--json", *args(tmp_path, "1.5.34", repo, keys))
        host = res.doc["host"]
        assert (host["seamsvn"], host["mrseam"]) == ("0x010f", mrseam_of("1.5.34")), action
        assert host["identity_source"] == "repository"


@pytest.mark.parametrize(
    "notes",
    PUBLISHED,
    ids=lambda r: r["version"],
)
def test_reference_values_of_the_target_are_its_images(
    run: Callable[..., Result], tmp_path: Path, keys: Path, notes: dict[str, Any]
) -> None:
    """The module an update would install: the SEAMSVN and MRSEAM of the image it would send
    (the factory builds each release with Intel's SEAMSVN; MRSEAM is computed here)."""
    version = notes["version"]
    stream = [r["version"] for r in PUBLISHED if r["version"][:4] == version[:4]]
    # the release before it; for the first of a stream, its .00 (which Intel never published)
    index = stream.index(version)
    running = stream[index - 1] if index else f"{version[:4]}00"
    repo = write_repo(tmp_path / "repo", {version: make_image(version)}, [running, version])
    res = run("--reference-values", "--json", *args(tmp_path, running, repo, keys))
    assert res.code == 0, res.err
    target = res.doc["reference_values"]["target"]
    assert target["version"] == version
    assert int(target["seamsvn"], 16) == int(notes["seamsvn"], 16)
    assert target["mrseam"] == mrseam_of(version)
    assert target["module_identity"] == ("TDX_01" if version.startswith("1.5.") else "TDX_03")
    text = run("--reference-values", *args(tmp_path, running, repo, keys)).out
    assert f"Module an update would install: {version}" in text
    assert f"  MRSEAM               {mrseam_of(version)}" in text


def test_reference_values_text_without_an_update(
    run: Callable[..., Result], tmp_path: Path, keys: Path
) -> None:
    repo = write_repo(tmp_path / "repo", {}, listed=["1.5.24"])
    res = run("--reference-values", *args(tmp_path, "1.5.24", repo, keys))
    assert res.code == 0
    assert "Running module 1.5.24" in res.out
    assert "  module identity      TDX_01" in res.out
    assert "  SEAMSVN              0x010d (TEE_TCB_SVN2 major 1, minor 13;" in res.out
    assert "No update would be installed: nothing to do" in res.out


# --- the same values in --status, --list and --update -----------------------------------------


@pytest.fixture
def same_svn_repo(tmp_path: Path) -> Path:
    """1.5.24 -> 1.5.25: Intel gave both SEAMSVN 0x010d."""
    return write_repo(tmp_path / "repo", {"1.5.24": make_image("1.5.24"),
                                          "1.5.25": make_image("1.5.25")})  # fmt: skip


def test_status_text_names_the_running_modules_values(
    run: Callable[..., Result], tmp_path: Path, keys: Path, same_svn_repo: Path
) -> None:
    res = run("--status", *args(tmp_path, "1.5.24", same_svn_repo, keys))
    assert "  module identity      TDX_01" in res.out
    assert "  MRSEAM               489e585f… (first 8 digits; the rest is not published)" in (
        res.out
    )


def test_update_plan_carries_before_and_after_and_flags_no_svn_gain(
    run: Callable[..., Result], tmp_path: Path, keys: Path, same_svn_repo: Path
) -> None:
    res = run("--update", "--dry-run", "--json", *args(tmp_path, "1.5.24", same_svn_repo, keys))
    assert res.code == 0, res.err
    doc = res.doc
    assert doc["to_version"] == "1.5.25"
    assert (doc["from_seamsvn"], doc["from_mrseam"], doc["from_mrseam_prefix"]) == (
        "0x010d",
        None,
        "489e585f",
    )
    assert (doc["to_seamsvn"], doc["to_mrseam"]) == ("0x010d", mrseam_of("1.5.25"))
    assert doc["svn_gain"] is False
    assert "no-svn-gain" in doc["warnings"]
    assert doc["selected"]["module_identity"] == "TDX_01"
    assert any("brings no TCB gain" in ln for ln in res.err.splitlines())
    text = run("--update", "--dry-run", *args(tmp_path, "1.5.24", same_svn_repo, keys))
    assert "Attestation: running TDs would report TEE_TCB_SVN2 0x010d (now 0x010d)" in text.out
    assert "eligible (no SVN gain: same SEAMSVN as the running module)" in text.out


def test_same_svn_in_the_2_0_stream(run: Callable[..., Result], tmp_path: Path, keys: Path) -> None:
    repo = write_repo(tmp_path / "repo", {"2.0.05": make_image("2.0.05")}, ["2.0.04", "2.0.05"])
    host = build_host_tree(tmp_path / "h", module="2.0.04", seamldr="2.0.00")
    res = run("--update", "--dry-run", "--json", "--sysroot", host, "--repo", repo,
              "--trusted-keys", keys)  # fmt: skip
    assert res.doc["from_seamsvn"] == res.doc["to_seamsvn"] == "0x0304"
    assert "no-svn-gain" in res.doc["warnings"]


def test_an_svn_raising_update_is_not_flagged(
    run: Callable[..., Result], tmp_path: Path, keys: Path
) -> None:
    repo = write_repo(tmp_path / "repo", {"1.5.28": make_image("1.5.28")}, ["1.5.24", "1.5.28"])
    res = run("--update", "--dry-run", "--json", *args(tmp_path, "1.5.24", repo, keys))
    assert res.doc["svn_gain"] is True
    assert "no-svn-gain" not in res.doc["warnings"]
    listed = run("--list", "--json", *args(tmp_path, "1.5.24", repo, keys)).doc["candidates"]
    assert listed[0]["svn_gain"] is True
    assert listed[0]["seamsvn"] == "0x010e"


def test_running_version_missing_from_the_mapping_is_said_plainly(
    run: Callable[..., Result], tmp_path: Path, keys: Path
) -> None:
    """A BIOS shipped 1.5.28 while the repository listed up to 1.5.25."""
    repo = write_repo(tmp_path / "repo", {"1.5.25": make_image("1.5.25")})
    for action in ("--status", "--list", "--update", "--reference-values"):
        res = run(action, "--json", *args(tmp_path, "1.5.28", repo, keys))
        assert res.code == 0, (action, res.err)
        assert "running-not-in-mapping" in res.doc["warnings"], action
        assert res.doc["host"]["in_mapping"] is False
        assert "running module 1.5.28 is not in the mapping file" in res.err
    text = run("--status", *args(tmp_path, "1.5.28", repo, keys)).out
    assert "running module 1.5.28 is not in the mapping file" in text


# --- the allowlist gate ---------------------------------------------------------------------


@pytest.fixture
def two_targets(tmp_path: Path) -> Path:
    images = {"1.5.25": make_image("1.5.25"), "1.5.28": make_image("1.5.28")}
    return write_repo(tmp_path / "repo", images, ["1.5.24", "1.5.25", "1.5.28"])


def test_allowlisted_mrseam_is_eligible_and_others_are_not(
    run: Callable[..., Result], tmp_path: Path, keys: Path, two_targets: Path
) -> None:
    allow = operator_file(tmp_path / "allow", f"# verifiers' MRSEAMs\n{mrseam_of('1.5.25')}\n")
    res = run(
        "--list", "--json", "--allowlist", allow, *args(tmp_path, "1.5.24", two_targets, keys)
    )
    got = {c["version"]: c for c in res.doc["candidates"]}
    assert got["1.5.25"]["eligible"] is True
    assert got["1.5.28"]["reasons"] == ["not-allowlisted"]
    assert str(allow) in got["1.5.28"]["details"][0]
    res = run("--update", "--dry-run", "--json", "--allowlist", allow,
              *args(tmp_path, "1.5.24", two_targets, keys))  # fmt: skip
    assert res.doc["to_version"] == "1.5.25"
    res = run("--update", "1.5.28", "--dry-run", "--json", "--allowlist", allow,
              *args(tmp_path, "1.5.24", two_targets, keys))  # fmt: skip
    assert (res.code, res.doc["error"]["code"]) == (65, "not-eligible")


def test_minimum_seamsvn_per_identity(
    run: Callable[..., Result], tmp_path: Path, keys: Path, two_targets: Path
) -> None:
    allow = operator_file(tmp_path / "allow", "min_seamsvn TDX_01 0x010e\nmin_seamsvn 0x0309\n")
    res = run(
        "--list", "--json", "--allowlist", allow, *args(tmp_path, "1.5.24", two_targets, keys)
    )
    got = {c["version"]: c for c in res.doc["candidates"]}
    assert got["1.5.25"]["reasons"] == ["seamsvn-below-minimum"]
    assert got["1.5.28"]["eligible"] is True  # 0x010e: TDX_01's minimum, not the global one


def test_allowlist_from_the_configuration_file(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, keys: Path, two_targets: Path
) -> None:
    allow = operator_file(tmp_path / "allow", "min_seamsvn 0x010e\n")
    conf = operator_file(tmp_path / "tdxupdate.conf", f'allowlist = "{allow}"\n')
    code = main(["--config", str(conf), "--list", "--json",
                 *map(str, args(tmp_path, "1.5.24", two_targets, keys))])  # fmt: skip
    doc = json.loads(capsys.readouterr().out)
    assert code == 0
    assert {c["version"]: c["eligible"] for c in doc["candidates"]} == {
        "1.5.28": True,
        "1.5.25": False,
        "1.5.24": False,
    }


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        ("# ok\n" + "ab" * 48 + "\nab12\n", 3, "is neither an MRSEAM"),
        ("min_seamsvn TDX_1 0x010d\n", 1, "is not a module identity"),
        ("\n\nmin_seamsvn 0x1000d\n", 3, "is not a SEAMSVN"),
        ("min_seamsvn 0x010d\nmin_seamsvn 0x010e\n", 2, "a second min_seamsvn"),
        ("# nothing\n", None, "allows nothing"),
    ],
)
def test_a_malformed_allowlist_is_config_invalid_and_writes_nothing(
    run: Callable[..., Result],
    tmp_path: Path,
    keys: Path,
    two_targets: Path,
    text: str,
    line: int | None,
    words: str,
) -> None:
    allow = operator_file(tmp_path / "allow", text)
    argv = args(tmp_path, "1.5.24", two_targets, keys)
    res = run("--update", "--json", "--allowlist", allow, *argv)
    assert (res.code, res.doc["error"]["code"]) == (78, "config-invalid")
    where = f"{allow}:{line}: " if line is not None else f"{allow}: "
    assert res.doc["error"]["message"].startswith(where)
    assert words in res.doc["error"]["message"]
    assert res.err.splitlines() == [f"tdxupdate: {res.doc['error']['message']}"]  # one line
    assert not (tmp_path / "state").exists()  # no lock, no history


def test_an_allowlist_others_can_write_is_refused(
    run: Callable[..., Result], tmp_path: Path, keys: Path, two_targets: Path
) -> None:
    allow = operator_file(tmp_path / "allow", "min_seamsvn 0x010d\n")
    os.chmod(allow, 0o666)
    res = run(
        "--list", "--json", "--allowlist", allow, *args(tmp_path, "1.5.24", two_targets, keys)
    )
    assert res.code == 78
    assert "writable by group or others" in res.doc["error"]["message"]


def test_a_missing_allowlist_is_66(
    run: Callable[..., Result], tmp_path: Path, keys: Path, two_targets: Path
) -> None:
    res = run("--list", "--json", "--allowlist", tmp_path / "nope",
              *args(tmp_path, "1.5.24", two_targets, keys))  # fmt: skip
    assert (res.code, res.doc["error"]["code"]) == (66, "config-not-found")


# --- tcbInfo ----------------------------------------------------------------------------------


def tcb_info(levels: dict[str, list[tuple[int, str]]]) -> dict[str, Any]:
    """A TDX TCB info document in Intel's PCS v4 shape (fields the tool ignores included)."""
    return {
        "tcbInfo": {
            "id": "TDX",
            "version": 3,
            "issueDate": "2026-11-30T00:00:00Z",
            "nextUpdate": "2026-12-30T00:00:00Z",
            "fmspc": "90c06f000000",
            "pceId": "0000",
            "tcbType": 0,
            "tcbEvaluationDataNumber": 17,
            "tdxModule": {"mrsigner": "00" * 48, "attributes": "00" * 8,
                          "attributesMask": "ff" * 8},
            "tdxModuleIdentities": [
                {
                    "id": ident,
                    "mrsigner": "00" * 48,
                    "attributes": "00" * 8,
                    "attributesMask": "ff" * 8,
                    "tcbLevels": [
                        {"tcb": {"isvsvn": svn}, "tcbDate": "2026-01-01T00:00:00Z",
                         "tcbStatus": status}
                        for svn, status in rows
                    ],
                }
                for ident, rows in levels.items()
            ],
            "tcbLevels": [],
        },
        "signature": "00" * 64,
    }  # fmt: skip


def write_tcb(path: Path, doc: dict[str, Any]) -> Path:
    return operator_file(path, json.dumps(doc, indent=2) + "\n")


def test_tcb_info_rates_running_and_target_and_predicts_relaunch(
    run: Callable[..., Result], tmp_path: Path, keys: Path, two_targets: Path
) -> None:
    tcb = write_tcb(
        tmp_path / "tcb.json",
        tcb_info({"TDX_01": [(14, "UpToDate"), (13, "OutOfDate")], "TDX_03": [(9, "UpToDate")]}),
    )
    argv = ["--tcb-info", tcb, *args(tmp_path, "1.5.24", two_targets, keys)]
    res = run("--update", "--dry-run", "--json", *argv)
    assert res.code == 0, res.err
    assert res.doc["tcb"] == {
        "file": str(tcb),
        "fmspc": "90c06f000000",
        "running": "OutOfDate",
        "target": "UpToDate",
        "td_relaunch_advised": True,
    }
    assert "td-relaunch-advised" in res.doc["warnings"]
    got = {c["version"]: c["tcb_status"] for c in res.doc["candidates"]}
    assert got == {"1.5.28": "UpToDate", "1.5.25": "OutOfDate", "1.5.24": None}
    ref = run("--reference-values", "--json", *argv).doc
    assert ref["reference_values"]["running"]["tcb_status"] == "OutOfDate"
    assert ref["reference_values"]["target"]["tcb_status"] == "UpToDate"
    assert ref["tcb"]["td_relaunch_advised"] is True


def test_tcb_info_up_to_date_host_predicts_no_relaunch(
    run: Callable[..., Result], tmp_path: Path, keys: Path, two_targets: Path
) -> None:
    tcb = write_tcb(tmp_path / "tcb.json", tcb_info({"TDX_01": [(13, "UpToDate")]}))
    res = run("--update", "--dry-run", "--json", "--tcb-info", tcb,
              *args(tmp_path, "1.5.24", two_targets, keys))  # fmt: skip
    assert res.doc["tcb"]["running"] == res.doc["tcb"]["target"] == "UpToDate"
    assert res.doc["tcb"]["td_relaunch_advised"] is False
    assert "td-relaunch-advised" not in res.doc["warnings"]


def test_tcb_info_without_the_identity_rates_nothing(
    run: Callable[..., Result], tmp_path: Path, keys: Path, two_targets: Path
) -> None:
    tcb = write_tcb(tmp_path / "tcb.json", tcb_info({"TDX_03": [(9, "UpToDate")]}))
    res = run("--status", "--json", "--tcb-info", tcb,
              *args(tmp_path, "1.5.24", two_targets, keys))  # fmt: skip
    assert res.code == 0
    assert res.doc["tcb"]["running"] is None
    text = run("--status", "--tcb-info", tcb, *args(tmp_path, "1.5.24", two_targets, keys)).out
    assert f"  TCB status           not rated ({tcb})" in text


def _bad_isvsvn(doc: dict[str, Any]) -> dict[str, Any]:
    doc["tcbInfo"]["tdxModuleIdentities"][0]["tcbLevels"][1]["tcb"]["isvsvn"] = "13"
    return doc


def _bad_id(doc: dict[str, Any]) -> dict[str, Any]:
    doc["tcbInfo"]["id"] = "SGX"
    return doc


@pytest.mark.parametrize(
    ("mutate", "words"),
    [(_bad_isvsvn, "tcb.isvsvn '13' is not an integer"), (_bad_id, "not Intel's TDX TCB info")],
)
def test_a_malformed_tcb_info_names_the_file_and_line(
    run: Callable[..., Result],
    tmp_path: Path,
    keys: Path,
    two_targets: Path,
    mutate: Callable[[dict[str, Any]], dict[str, Any]],
    words: str,
) -> None:
    doc = mutate(tcb_info({"TDX_01": [(14, "UpToDate"), (13, "OutOfDate")]}))
    tcb = write_tcb(tmp_path / "tcb.json", doc)
    text = tcb.read_text().splitlines()
    res = run("--update", "--json", "--tcb-info", tcb, *args(tmp_path, "1.5.24", two_targets, keys))
    assert (res.code, res.doc["error"]["code"]) == (78, "config-invalid")
    message = res.doc["error"]["message"]
    assert words in message
    line = int(message.split(":")[1])
    # the line named is where the object holding the bad value starts
    if mutate is _bad_isvsvn:
        assert text[line - 1].strip() == "{"
        assert '"tcb"' in text[line]
    else:
        assert line == 2
    assert not (tmp_path / "state").exists()


def test_tcb_info_that_is_not_json_names_the_line(
    run: Callable[..., Result], tmp_path: Path, keys: Path, two_targets: Path
) -> None:
    tcb = operator_file(tmp_path / "tcb.json", '{\n  "tcbInfo": {\n    "id": "TDX",,\n')
    res = run("--list", "--json", "--tcb-info", tcb, *args(tmp_path, "1.5.24", two_targets, keys))
    assert res.code == 78
    assert res.doc["error"]["message"].startswith(f"{tcb}:3:")


# --- after a real update: the history and what TDs will report ------------------------------


def test_an_update_records_and_says_what_running_tds_will_report(
    sim: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    host = sim("spr")
    keyfile = operator_file(tmp_path / "sim-keys", "".join(f"{k}\n" for k in host.trusted_signers))
    state = tmp_path / "state"
    argv = ["--config", "/dev/null", "--sysroot", str(host.sysroot), "--repo", str(host.repo),
            "--trusted-keys", str(keyfile), "--state-dir", str(state)]  # fmt: skip
    code = main(["--update", *argv])
    out = capsys.readouterr().out
    assert code == 0, out
    assert (
        "Attestation: running TDs keep TEE_TCB_SVN (the module they launched under, 0x0106 "
        "for TDs launched under 1.5.06) and now report TEE_TCB_SVN2 0x010d" in out
    )
    assert "TDs launched from now on measure MRSEAM" in out
    # said before the first write, and again once it is true
    plan = out.index("Attestation: running TDs will report TEE_TCB_SVN2 0x010d (now 0x0106)")
    assert plan < out.index("Streaming ") < out.index("Attestation: running TDs keep")
    records = [json.loads(ln) for ln in (state / "history.jsonl").read_text().splitlines()]
    rec = records[-1]
    assert (rec["from_version"], rec["to_version"], rec["result"]) == (
        "1.5.06",
        "1.5.24",
        "success",
    )
    assert rec["from_seamsvn"] == "0x0106"
    assert rec["from_mrseam"] == BLOBS["1.5.06"]["module_sha384"]
    assert rec["from_mrseam_prefix"] == "5b38e33a"
    assert rec["seamsvn"] == "0x010d"
    assert len(rec["mrseam"]) == 96
    code = main(["--history", "--json", *argv])
    doc = json.loads(capsys.readouterr().out)
    validate(doc)
    assert doc["history"][-1]["from_seamsvn"] == "0x0106"
    main(["--history", *argv])
    line = capsys.readouterr().out.splitlines()[-1]
    assert line.endswith(f"  SEAMSVN 0x0106 -> 0x010d  MRSEAM 5b38e33a -> {rec['mrseam'][:8]}")


# --- robustness and usage -------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300))
def test_any_allowlist_text_parses_or_is_a_config_error(text: str) -> None:
    parsed = returned_or_raised(
        lambda: attestation.parse_allowlist(text, Path("/etc/tdxupdate/allow")), ConfigError
    )
    if isinstance(parsed, ConfigError):
        assert parsed.code == "config-invalid"
        assert "\n" not in parsed.message
    else:
        assert parsed.mrseams or parsed.min_seamsvn


_KEYS = ["tcbInfo", "id", "tdxModuleIdentities", "tcbLevels", "tcb", "isvsvn", "tcbStatus",
         "tdxModule", "fmspc"]  # fmt: skip
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 300) | st.sampled_from(["TDX", "TDX_01", "x"]),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(_KEYS), inner, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(_JSON)
def test_any_json_parses_as_tcb_info_or_is_a_config_error(doc: object) -> None:
    text = json.dumps(doc, indent=1)
    info = returned_or_raised(
        lambda: attestation.parse_tcb_info(text, Path("/etc/tdxupdate/tcb.json")), ConfigError
    )
    if isinstance(info, ConfigError):
        assert info.code == "config-invalid"
        assert all(p.line is None or 1 <= p.line <= text.count("\n") + 1 for p in info.problems)
    else:
        for levels in info.identities.values():
            assert [lv.isvsvn for lv in levels] == sorted(
                (lv.isvsvn for lv in levels), reverse=True
            )


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["--reference-values", "--dry-run"], "--dry-run goes with --update only"),
        (["--list", "--reference-values"], "choose one action, not --list and --reference-values"),
    ],
)
def test_reference_values_is_an_action(
    run: Callable[..., Result], argv: list[str], words: str
) -> None:
    res = run(*argv, "--json")
    assert (res.code, res.doc["error"]["code"]) == (64, "usage")
    assert words in res.doc["error"]["message"]
