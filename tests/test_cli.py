"""The command line as administrators and fleet tooling use it (cli-contract.md §1–§3).

Each test runs ``tdxupdate.cli.main`` in-process over plain-file host trees (read-only actions
and dry runs need no emulator) and asserts the exit code, the exact stderr line and the JSON
document, which is validated against the schema the package ships.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from factories.cli import runner
from factories.hosts import build_host_tree, fail_reads, read_as_root
from factories.images import Release, make_image, mapping_document, test_key, write_repo
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

SPR = (0x806F8, 0xC06F0, 0xA06F0)


@pytest.fixture
def run(capsys: pytest.CaptureFixture[str]) -> Any:
    return runner(capsys)


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    path = tmp_path / "trusted-keys"
    path.write_text(f"# test signer\n{test_key().fingerprint.upper()}\n\n")
    return path


def releases(*versions: str) -> list[Release]:
    return [Release(v, min_seamldr_versions=("1.5.00", "2.0.00")) for v in versions]


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    images = {
        "1.5.06": make_image("1.5.06", fmt=0x100, cpuids=SPR),
        "1.5.08": make_image("1.5.08", fmt=0x100, cpuids=SPR),
        "1.5.24": make_image("1.5.24", fmt=0x200, cpuids=(0x806F8, 0xC06F0)),
        "1.5.25": make_image("1.5.25", fmt=0x200, cpuids=(0xA06F0,)),
        "1.5.28": make_image("1.5.28", fmt=0x200, cpuids=SPR, debug=True),
    }
    return write_repo(tmp_path / "repo", images, mapping_document(releases(*images)))


@pytest.fixture
def host(tmp_path: Path) -> Path:
    return build_host_tree(tmp_path / "host", generation="G5", module="1.5.06", remaining=3)


def base(host: Path, repo: Path, keys: Path, tmp_path: Path) -> list[str | Path]:
    return [
        "--sysroot",
        host,
        "--repo",
        repo,
        "--trusted-keys",
        keys,
        "--state-dir",
        tmp_path / "state",
    ]


def snapshot(root: Path) -> dict[str, bytes | str]:
    out: dict[str, bytes | str] = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        if p.is_symlink():
            out[rel] = "->" + os.readlink(p)
        elif p.is_file():
            out[rel] = read_as_root(p)
    return out


# --- --status ---------------------------------------------------------------------------------


@pytest.mark.parametrize("generation", ["G2", "G3", "G4", "G5"])
def test_status_reports_every_generation(run: Any, tmp_path: Path, generation: str) -> None:
    root = build_host_tree(tmp_path / "h", generation=generation, module="1.5.06", seamldr="1.5.00")
    res = run("--json", "--sysroot", root, "--repo", tmp_path / "none")
    assert res.code == 0
    host = res.doc["host"]
    assert host["module_version"] == "1.5.06"
    assert host["seamldr_version"] == "1.5.00"
    assert host["sysfs_layout"] == ("flat" if generation in ("G4", "G5") else "seamldr-dir")
    assert host["image_format"] == ("0x200" if generation in ("G4", "G5") else "0x100")
    assert host["image_format_fallback"] == ("0x100" if generation == "G4" else None)
    assert [c["name"] for c in host["checks"]] == [
        "tdx-host",
        "upload-interface",
        "upload-idle",
        "remaining-updates",
        "cpus-online",
        "module-version",
        "seamldr-version",
        "cpu-signature",
        "erratum-seamret-invd-vmcs",
    ]
    assert all(c["ok"] for c in host["checks"])
    assert res.doc["action"] == "status"
    assert res.doc["ok"] is True


def test_status_is_the_default_action_and_prints_pass_fail(run: Any, tmp_path: Path) -> None:
    root = build_host_tree(tmp_path / "h", remaining=0, online="0-1", present="0-3")
    res = run("--sysroot", root, "--repo", tmp_path / "none")
    assert res.code == 0  # failing checks are in the report, not in the exit code
    assert "  module version       1.5.06" in res.out
    assert "FAIL  remaining-updates" in res.out
    assert "FAIL  cpus-online" in res.out
    assert "PASS  tdx-host" in res.out
    assert res.err == ""


def test_status_without_tdx_host_exits_69(run: Any, tmp_path: Path) -> None:
    (tmp_path / "empty" / "sys").mkdir(parents=True)
    res = run("--json", "--sysroot", tmp_path / "empty")
    assert res.code == 69
    assert res.doc["error"]["code"] == "no-tdx-host"
    assert res.doc["ok"] is False
    assert len(res.err_lines) == 1
    assert res.err_lines[0].startswith("tdxupdate: ")


def test_status_on_g1_is_unsupported_kernel(run: Any, tmp_path: Path) -> None:
    root = build_host_tree(tmp_path / "h", generation="G1")
    res = run("--json", "--sysroot", root)
    assert res.code == 69
    assert res.doc["error"]["code"] == "unsupported-kernel"


def test_cpu_signature_override(run: Any, tmp_path: Path) -> None:
    root = build_host_tree(tmp_path / "h", vendor="AuthenticAMD")
    assert run("--json", "--sysroot", root).doc["host"]["cpu_signature"] is None
    res = run("--json", "--sysroot", root, "--cpu-signature", "A06D1")
    assert res.doc["host"]["cpu_signature"] == "0xa06d1"


def test_image_format_override_disables_the_fallback(run: Any, tmp_path: Path) -> None:
    root = build_host_tree(tmp_path / "h", generation="G4")
    host = run("--json", "--sysroot", root, "--image-format", "0x100").doc["host"]
    assert host["image_format"] == "0x100"
    assert host["image_format_fallback"] is None


# --- --list -----------------------------------------------------------------------------------


def test_list_explains_every_candidate(
    run: Any, host: Path, repo: Path, keys: Path, tmp_path: Path
) -> None:
    res = run("--list", "--json", *base(host, repo, keys, tmp_path))
    assert res.code == 0
    got = {c["version"]: c["reasons"] for c in res.doc["candidates"]}
    assert got == {
        "1.5.28": ["debug-module"],
        "1.5.25": ["cpu-unsupported"],
        "1.5.24": [],
        "1.5.08": [],
        "1.5.06": ["same-as-running"],
    }
    assert [c["version"] for c in res.doc["candidates"]] == sorted(got, reverse=True)
    c24 = next(c for c in res.doc["candidates"] if c["version"] == "1.5.24")
    assert c24["eligible"]
    assert c24["image_format"] == "0x200"
    assert c24["debug"] is False
    assert c24["path"].endswith("joined_files/1.5/tdx_module_1.5.24.blob")


def test_list_text_is_a_table_with_reasons_in_words(
    run: Any, host: Path, repo: Path, keys: Path, tmp_path: Path
) -> None:
    res = run("--list", *base(host, repo, keys, tmp_path))
    assert res.code == 0
    lines = res.out.splitlines()
    assert lines[0] == (
        "Running module 1.5.06 (SEAMSVN 0x0106, MRSEAM 5b38e33a), P-SEAMLDR 2.0.00, CPU 0x806f8"
    )
    assert lines[1].split() == ["VERSION", "ELIGIBLE", "FORMAT", "SEAMSVN", "MRSEAM", "WHY"]
    rows = {ln[:6]: ln for ln in lines[2:]}
    mrseam = {c["version"]: c["mrseam"][:8] for c in run_list_json(run, host, repo, keys, tmp_path)}
    assert rows["1.5.25"] == (
        f"1.5.25   no        0x200   0x010d   {mrseam['1.5.25']}   "
        "supports CPUs 0xa06f0; this CPU is 0x806f8"
    )
    assert rows["1.5.24"] == f"1.5.24   yes       0x200   0x010d   {mrseam['1.5.24']}   eligible"
    assert rows["1.5.28"] == (
        f"1.5.28   no        0x200   0x010e   {mrseam['1.5.28']}   "
        "is debug-signed (allow with --allow-debug)"
    )


def run_list_json(
    run: Any, host: Path, repo: Path, keys: Path, tmp_path: Path
) -> list[dict[str, Any]]:
    res = run("--list", "--json", *base(host, repo, keys, tmp_path))
    assert res.code == 0
    return list(res.doc["candidates"])


def test_list_without_trusted_key_says_untrusted(
    run: Any, host: Path, repo: Path, tmp_path: Path
) -> None:
    res = run("--list", "--json", "--sysroot", host, "--repo", repo)
    assert res.code == 0
    for c in res.doc["candidates"]:
        assert "untrusted-signer" in c["reasons"]
        assert any("not a trusted key" in d for d in c["details"])


def test_list_with_allow_debug(
    run: Any, host: Path, repo: Path, keys: Path, tmp_path: Path
) -> None:
    res = run("--list", "--json", "--allow_debug", *base(host, repo, keys, tmp_path))
    c28 = next(c for c in res.doc["candidates"] if c["version"] == "1.5.28")
    assert c28["eligible"]
    assert c28["debug"] is True


def test_list_not_in_mapping_and_image_missing(
    run: Any, host: Path, keys: Path, tmp_path: Path
) -> None:
    repo = write_repo(
        tmp_path / "r",
        {"1.5.08": make_image("1.5.08", cpuids=SPR)},
        mapping_document(releases("1.5.09")),
    )
    res = run("--list", "--json", *base(host, repo, keys, tmp_path))
    got = {c["version"]: c for c in res.doc["candidates"]}
    assert got["1.5.08"]["reasons"] == ["not-in-mapping"]
    assert got["1.5.09"]["reasons"] == ["image-missing"]
    assert got["1.5.09"]["path"] is None
    assert got["1.5.09"]["debug"] is None


@pytest.mark.parametrize(
    ("tamper", "reason"),
    [
        ("module-byte", "image-invalid"),
        ("signature-byte", "signature-invalid"),
        ("truncated-page", "image-invalid"),
        ("garbage", "image-invalid"),
    ],
)
def test_list_bad_images_only_add_reasons(
    run: Any, host: Path, keys: Path, tmp_path: Path, tamper: str, reason: str
) -> None:
    repo = write_repo(
        tmp_path / "r",
        {
            "1.5.08": make_image("1.5.08", cpuids=SPR, tamper=tamper),
            "1.5.09": make_image("1.5.09", cpuids=SPR),
        },
        mapping_document(releases("1.5.08", "1.5.09")),
    )
    res = run("--list", "--json", *base(host, repo, keys, tmp_path))
    assert res.code == 0
    got = {c["version"]: c["reasons"] for c in res.doc["candidates"]}
    if tamper == "module-byte":
        # --list reads only the head of each image: the module body is checked by --update
        # and --verify, which read the whole image once.
        assert got["1.5.08"] == []
    else:
        assert reason in got["1.5.08"]
    assert got["1.5.09"] == []


def test_list_renamed_image_is_image_invalid(
    run: Any, host: Path, keys: Path, tmp_path: Path
) -> None:
    repo = write_repo(
        tmp_path / "r",
        {"1.5.09": make_image("1.5.08", cpuids=SPR)},
        mapping_document(releases("1.5.09")),
    )
    res = run("--list", "--json", *base(host, repo, keys, tmp_path))
    (c,) = res.doc["candidates"]
    assert c["reasons"] == ["image-invalid"]
    assert "1.5.08" in c["details"][0]
    assert "1.5.09" in c["details"][0]


def test_list_exits_69_when_module_version_unreadable(run: Any, tmp_path: Path, repo: Path) -> None:
    root = build_host_tree(
        tmp_path / "h", overrides={"/sys/devices/faux/tdx_host/version": "garbage"}
    )
    res = run("--list", "--json", "--sysroot", root, "--repo", repo)
    assert res.code == 69
    assert res.doc["error"]["code"] == "version-unreadable"
    assert "garbage" in res.doc["error"]["message"]


def test_list_exits_77_when_seamldr_version_is_root_only(
    run: Any, tmp_path: Path, repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    root = build_host_tree(tmp_path / "h", generation="G5")
    fail_reads(monkeypatch, root, {"/sys/devices/faux/tdx_host/seamldr_version": errno.EACCES})
    res = run("--list", "--json", "--sysroot", root, "--repo", repo)
    assert res.code == 77
    assert res.doc["error"]["code"] == "permission-denied"


def test_list_exits_69_for_non_intel_cpu(run: Any, tmp_path: Path, repo: Path) -> None:
    root = build_host_tree(tmp_path / "h", vendor="AuthenticAMD")
    res = run("--list", "--json", "--sysroot", root, "--repo", repo)
    assert res.code == 69
    assert res.doc["error"]["code"] == "cpu-unknown"


# --- --update --dry-run -----------------------------------------------------------------------


def test_dry_run_plans_the_newest_eligible_and_writes_nothing(
    run: Any, host: Path, repo: Path, keys: Path, tmp_path: Path
) -> None:
    before = snapshot(host)
    res = run("--update", "--dry-run", "--json", *base(host, repo, keys, tmp_path))
    assert res.code == 0
    doc = res.doc
    assert doc["selected"]["version"] == "1.5.24"
    assert doc["dry_run"] is True
    assert doc["changed"] is False
    assert doc["from_version"] == "1.5.06"
    assert doc["to_version"] == "1.5.24"
    assert "sent as Format B (0x200)" in doc["plan"]
    assert snapshot(host) == before
    assert not (tmp_path / "state").exists()  # no lock, no history


def test_dry_run_text_shows_the_plan(
    run: Any, host: Path, repo: Path, keys: Path, tmp_path: Path
) -> None:
    res = run("--update", "--dry-run", *base(host, repo, keys, tmp_path))
    assert res.code == 0
    assert any(
        line.startswith("dry run: would install 1.5.24 over 1.5.06:")
        for line in res.out.splitlines()
    )


def test_dry_run_converts_to_the_kernels_format(
    run: Any, tmp_path: Path, repo: Path, keys: Path
) -> None:
    g3 = build_host_tree(tmp_path / "g3", generation="G3", module="1.5.06", remaining=2)
    res = run("--update", "1.5.24", "--dry-run", "--json", *base(g3, repo, keys, tmp_path))
    assert res.code == 0
    assert "(Format B (0x200)" in res.doc["plan"]
    assert "sent as Format A (0x100)" in res.doc["plan"]


def test_dry_run_format_retry_is_planned_on_pre_7_2_flat_kernels(
    run: Any, tmp_path: Path, repo: Path, keys: Path
) -> None:
    g4 = build_host_tree(tmp_path / "g4", generation="G4", module="1.5.06", osrelease="7.1.0-rc1")
    res = run("--update", "--dry-run", "--json", *base(g4, repo, keys, tmp_path))
    assert res.code == 0
    assert "retried once as Format A (0x100)" in res.doc["plan"]


def test_explicit_version_not_eligible_exits_65_with_reasons(
    run: Any, host: Path, repo: Path, keys: Path, tmp_path: Path
) -> None:
    res = run("--update", "1.5.25", "--dry-run", "--json", *base(host, repo, keys, tmp_path))
    assert res.code == 65
    assert res.doc["error"]["code"] == "not-eligible"
    assert res.doc["selected"]["version"] == "1.5.25"
    assert res.doc["selected"]["reasons"] == ["cpu-unsupported"]
    assert res.err_lines == [
        "tdxupdate: 1.5.25 is not eligible: cpu-unsupported: "
        "1.5.25 supports CPUs 0xa06f0; this CPU is 0x806f8"
    ]


def test_explicit_unknown_version_exits_65(
    run: Any, host: Path, repo: Path, keys: Path, tmp_path: Path
) -> None:
    res = run("--update", "1.5.99", "--dry-run", "--json", *base(host, repo, keys, tmp_path))
    assert res.code == 65
    assert res.doc["error"]["code"] == "version-unknown"
    assert res.doc["selected"] is None


def test_explicit_running_version_is_nothing_to_do(
    run: Any, host: Path, repo: Path, keys: Path, tmp_path: Path
) -> None:
    res = run("--update", "1.5.06", "--json", *base(host, repo, keys, tmp_path))
    assert res.code == 0
    assert res.doc["changed"] is False
    assert res.doc["to_version"] == "1.5.06"
    assert not (tmp_path / "state" / "history.jsonl").exists()


def test_reinstall_needs_allow_reinstall(
    run: Any, host: Path, repo: Path, keys: Path, tmp_path: Path
) -> None:
    res = run(
        "--update",
        "1.5.06",
        "--allow-reinstall",
        "--dry-run",
        "--json",
        *base(host, repo, keys, tmp_path),
    )
    assert res.code == 0
    assert res.doc["selected"]["version"] == "1.5.06"
    assert "install 1.5.06 over 1.5.06" in res.doc["plan"]


def test_debug_module_needs_allow_debug(
    run: Any, host: Path, repo: Path, keys: Path, tmp_path: Path
) -> None:
    args = ("--update", "1.5.28", "--dry-run", "--json", *base(host, repo, keys, tmp_path))
    assert run(*args).code == 65
    res = run(*args, "--allow-debug")
    assert res.code == 0
    assert res.doc["selected"]["version"] == "1.5.28"


def test_strict_compat(run: Any, host: Path, keys: Path, tmp_path: Path) -> None:
    rels = [
        Release("1.5.08", min_seamldr_versions=("2.0.00",), strict_compat_versions=("1.5.05",)),
        Release("1.5.09", min_seamldr_versions=("2.0.00",), strict_compat_versions=("1.5.06",)),
    ]
    repo = write_repo(
        tmp_path / "r",
        {"1.5.08": make_image("1.5.08", cpuids=SPR), "1.5.09": make_image("1.5.09", cpuids=SPR)},
        mapping_document(rels),
    )
    res = run(
        "--update",
        "1.5.08",
        "--dry-run",
        "--json",
        "--strict-compat",
        *base(host, repo, keys, tmp_path),
    )
    assert res.code == 65
    assert res.doc["selected"]["reasons"] == ["not-strict-compatible"]
    res = run(
        "--update", "--dry-run", "--json", "--strict-compat", *base(host, repo, keys, tmp_path)
    )
    assert res.code == 0
    assert res.doc["selected"]["version"] == "1.5.09"


def test_nothing_eligible_exits_0_and_says_why(
    run: Any, host: Path, keys: Path, tmp_path: Path
) -> None:
    repo = write_repo(
        tmp_path / "r",
        {"1.5.25": make_image("1.5.25", cpuids=(0xA06F0,))},
        mapping_document(releases("1.5.25")),
    )
    res = run("--update", *base(host, repo, keys, tmp_path))
    assert res.code == 0
    assert (
        "nothing to do: no newer module is eligible for this host (1.5.25: cpu-unsupported)"
        in res.out
    )


@pytest.mark.parametrize(
    ("kwargs", "code", "token"),
    [
        ({"remaining": 0}, 69, "no-remaining-updates"),
        ({"online": "0-1", "present": "0-3"}, 75, "cpus-offline"),
        ({"status": "transferring"}, 75, "upload-busy"),
        ({"firmware": False}, 69, "no-upload-interface"),
        ({"remaining": 0, "online": "0", "present": "0-3"}, 69, "no-remaining-updates"),
        ({"status": "preparing", "firmware": False}, 69, "no-upload-interface"),
    ],
    ids=[
        "no-remaining",
        "cpus-offline",
        "busy",
        "no-interface",
        "permanent-wins",
        "permanent-wins-2",
    ],
)
def test_preflight_refusals(
    run: Any, tmp_path: Path, repo: Path, keys: Path, kwargs: dict[str, Any], code: int, token: str
) -> None:
    root = build_host_tree(tmp_path / "h", **kwargs)
    before = snapshot(root)
    for extra in (["--dry-run"], []):
        res = run("--update", "--json", *extra, *base(root, repo, keys, tmp_path))
        assert res.code == code, res.err
        assert res.doc["error"]["code"] == token
        assert len(res.err_lines) == 1
    assert snapshot(root) == before
    assert not (tmp_path / "state" / "history.jsonl").exists()


def test_nothing_to_do_wins_over_preflight_failures(run: Any, tmp_path: Path, keys: Path) -> None:
    root = build_host_tree(tmp_path / "h", module="1.5.08", remaining=0, online="0")
    repo = write_repo(
        tmp_path / "r",
        {"1.5.08": make_image("1.5.08", cpuids=SPR)},
        mapping_document(releases("1.5.08")),
    )
    res = run("--update", "--json", *base(root, repo, keys, tmp_path))
    assert res.code == 0
    assert res.doc["changed"] is False


def test_corrupt_newest_image_falls_back_to_the_next(
    run: Any, host: Path, keys: Path, tmp_path: Path
) -> None:
    repo = write_repo(
        tmp_path / "r",
        {
            "1.5.09": make_image("1.5.09", cpuids=SPR, tamper="module-byte"),
            "1.5.08": make_image("1.5.08", cpuids=SPR),
        },
        mapping_document(releases("1.5.08", "1.5.09")),
    )
    res = run("--update", "--dry-run", "--json", *base(host, repo, keys, tmp_path))
    assert res.code == 0
    assert res.doc["selected"]["version"] == "1.5.08"
    c09 = next(c for c in res.doc["candidates"] if c["version"] == "1.5.09")
    assert c09["reasons"] == ["image-invalid"]
    assert "seamhash" in c09["details"][0]
    # Asked for explicitly, the corrupt image is refused with 65.
    res = run("--update", "1.5.09", "--dry-run", "--json", *base(host, repo, keys, tmp_path))
    assert res.code == 65
    assert res.doc["error"]["code"] == "image-invalid"


# --- --verify ---------------------------------------------------------------------------------


def test_verify_path_good(run: Any, tmp_path: Path, keys: Path) -> None:
    path = tmp_path / "tdx_module_1.5.08.blob"
    path.write_bytes(make_image("1.5.08"))
    res = run("--verify", path, "--trusted-keys", keys, "--json")
    assert res.code == 0
    (img,) = res.doc["images"]
    assert img["ok"]
    assert img["version"] == "1.5.08"
    assert img["image_format"] == "0x200"
    assert [c["name"] for c in img["checks"]] == [
        "container",
        "checksum",
        "seamhash",
        "signature",
        "trusted-signer",
        "version",
        "debug",
        "cpuid-table",
    ]


@pytest.mark.parametrize(
    ("tamper", "check"),
    [
        ("module-byte", "seamhash"),
        ("signature-byte", "signature"),
        ("checksum", "checksum"),
        ("truncated-page", "container"),
    ],
)
def test_verify_tampered_exits_65(
    run: Any, tmp_path: Path, keys: Path, tamper: str, check: str
) -> None:
    path = tmp_path / "img.blob"
    path.write_bytes(make_image("1.5.08", tamper=tamper))
    res = run("--verify", path, "--trusted-keys", keys, "--json")
    assert res.code == 65
    assert res.doc["error"]["code"] == "image-invalid"
    failed = [c["name"] for c in res.doc["images"][0]["checks"] if not c["ok"]]
    assert check in failed


def test_verify_repository(run: Any, repo: Path, keys: Path) -> None:
    res = run("--verify", "--repo", repo, "--trusted-keys", keys, "--json")
    # 1.5.28 is debug-signed: it fails the debug check unless --allow-debug.
    assert res.code == 65
    bad = [i["version"] for i in res.doc["images"] if not i["ok"]]
    assert bad == ["1.5.28"]
    assert run("--verify", "--repo", repo, "--trusted-keys", keys, "--allow-debug").code == 0


def test_verify_missing_path_exits_66(run: Any, tmp_path: Path) -> None:
    res = run("--verify", tmp_path / "nope.blob", "--json")
    assert res.code == 66
    assert res.doc["error"]["code"] == "image-not-found"


# --- bad input: mapping, repository, trusted keys -------------------------------------------


SAMPLES = Path(__file__).resolve().parent.parent / "mapping_samples"


@pytest.mark.parametrize(
    ("sample", "code", "token"),
    [
        ("bad-not-json.json", 65, "mapping-invalid"),
        ("bad-missing-field.json", 65, "mapping-invalid"),
        ("bad-wrong-type.json", 65, "mapping-invalid"),
        ("bad-version-string.json", 65, "mapping-invalid"),
        ("bad-duplicate-version.json", 65, "mapping-invalid"),
        ("bad-header-version.json", 65, "mapping-unsupported"),
    ],
)
def test_bad_mapping_files(
    run: Any, host: Path, repo: Path, sample: str, code: int, token: str
) -> None:
    res = run("--list", "--json", "--sysroot", host, "--repo", repo, "--mapping", SAMPLES / sample)
    assert res.code == code
    assert res.doc["error"]["code"] == token
    assert len(res.err_lines) == 1
    assert str(SAMPLES / sample) in res.err_lines[0]
    assert "Traceback" not in res.err


def test_missing_mapping_repo_and_keys_exit_66(
    run: Any, host: Path, repo: Path, tmp_path: Path
) -> None:
    assert run("--list", "--sysroot", host, "--repo", tmp_path / "nope").code == 66
    res = run(
        "--list", "--json", "--sysroot", host, "--repo", repo, "--mapping", tmp_path / "m.json"
    )
    assert res.code == 66
    assert res.doc["error"]["code"] == "mapping-not-found"
    res = run(
        "--list", "--json", "--sysroot", host, "--repo", repo, "--trusted-keys", tmp_path / "k"
    )
    assert res.code == 66
    assert res.doc["error"]["code"] == "trusted-keys-not-found"


def test_bad_trusted_keys_line_exits_65(run: Any, host: Path, repo: Path, tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.write_text("# ok\n" + "ab" * 32 + "\nnot-a-key\n")
    res = run("--list", "--json", "--sysroot", host, "--repo", repo, "--trusted-keys", keys)
    assert res.code == 65
    assert res.doc["error"]["code"] == "trusted-keys-invalid"
    assert res.err_lines == [
        f"tdxupdate: {keys}:3: 'not-a-key' is not a SHA-256 fingerprint (64 hex digits)"
    ]


@pytest.mark.parametrize(
    "content",
    [b"", b"\n", b"abc", b"1.5", b"\xff\xfe", b"1.5.06.7", b"-1.5.06"],
)
def test_garbage_version_file_gives_one_line(
    run: Any, tmp_path: Path, repo: Path, content: bytes
) -> None:
    root = build_host_tree(
        tmp_path / "h", overrides={"/sys/devices/faux/tdx_host/version": content}
    )
    res = run("--list", "--sysroot", root, "--repo", repo)
    assert res.code == 69
    assert len(res.err_lines) == 1
    assert "Traceback" not in res.err


# --- usage ------------------------------------------------------------------------------------


def test_help_and_version_print_text_even_with_json(run: Any) -> None:
    res = run("--help", "--json")
    assert res.code == 0
    assert "--update [VERSION]" in res.out
    res = run("--version")
    assert res.code == 0
    assert res.out.startswith("tdxupdate, version ")


def test_json_stdout_is_exactly_one_document(
    run: Any, host: Path, repo: Path, keys: Path, tmp_path: Path
) -> None:
    res = run("--update", "--dry-run", "--json", *base(host, repo, keys, tmp_path))
    json.loads(res.out)  # the whole of stdout parses as one document
    assert res.out.count('"schema_version"') == 1


def test_python_dash_m_is_the_same(tmp_path: Path) -> None:
    root = build_host_tree(tmp_path / "h")
    out = subprocess.run(
        [sys.executable, "-m", "tdxupdate", "--json", "--sysroot", str(root)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0
    assert json.loads(out.stdout)["host"]["module_version"] == "1.5.06"


# --- start-up cost ------------------------------------------------------------------------------


@pytest.mark.parametrize("action", ["--status", "--list"])
def test_local_status_and_list_do_not_import_requests(
    tmp_path: Path, repo: Path, keys: Path, action: str
) -> None:
    root = build_host_tree(tmp_path / "h")
    code = (
        "import sys\n"
        "from tdxupdate.cli import main\n"
        f"rc = main([{action!r}, '--sysroot', {str(root)!r}, '--repo', {str(repo)!r},"
        f" '--trusted-keys', {str(keys)!r}])\n"
        "assert rc == 0, rc\n"
        "assert 'requests' not in sys.modules, 'requests imported'\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr


def test_status_without_mapping_does_not_import_jsonschema(tmp_path: Path) -> None:
    root = build_host_tree(tmp_path / "h")
    code = (
        "import sys\n"
        "from tdxupdate.cli import main\n"
        f"rc = main(['--sysroot', {str(root)!r}, '--repo', {str(tmp_path / 'none')!r}])\n"
        "assert rc == 0, rc\n"
        "assert 'jsonschema' not in sys.modules and 'requests' not in sys.modules\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr


# --- property: no image bytes and no mapping document crash the tool -------------------------


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(blob=st.binary(max_size=9000))
def test_property_any_image_bytes_list_cleanly(
    run: Any, tmp_path_factory: pytest.TempPathFactory, blob: bytes
) -> None:
    tmp = tmp_path_factory.mktemp("p")
    root = build_host_tree(tmp / "h")
    repo = write_repo(tmp / "r", {"1.5.08": blob}, mapping_document(releases("1.5.08")))
    res = run("--list", "--json", "--sysroot", root, "--repo", repo)
    assert res.code == 0
    (c,) = res.doc["candidates"]
    assert not c["eligible"]
    res = run("--verify", "--json", "--repo", repo)
    assert res.code == 65


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    doc=json_values
    | st.fixed_dictionaries({"Header": json_values, "tdx_module_releases": json_values})
)
def test_property_any_mapping_document_is_handled(
    run: Any, tmp_path_factory: pytest.TempPathFactory, doc: Any
) -> None:
    tmp = tmp_path_factory.mktemp("m")
    root = build_host_tree(tmp / "h")
    repo = write_repo(tmp / "r", {}, doc)
    res = run("--list", "--json", "--sysroot", root, "--repo", repo)
    assert res.code in (0, 65), res.err
    assert len(res.err_lines) <= 1


def test_history_empty(run: Any, tmp_path: Path) -> None:
    res = run("--history", "--json", "--state-dir", tmp_path / "s")
    assert res.code == 0
    assert res.doc["history"] == []
    assert (
        run("--history", "--state-dir", tmp_path / "s").out.strip()
        == "No update attempts recorded on this host."
    )


def test_sha_of_image_is_stable(tmp_path: Path) -> None:
    # The test key is generated in the test run, so two runs never share image bytes, but
    # within a run the factory is deterministic (history and cache tests rely on it).
    assert (
        hashlib.sha256(make_image("1.5.08")).digest()
        == hashlib.sha256(make_image("1.5.08")).digest()
    )


@pytest.mark.parametrize(("compat", "warned"), [(0, True), (1, False)])
def test_v3_compat_capable_zero_warns_without_a_mapping(
    run: Any, tmp_path: Path, compat: int, warned: bool
) -> None:
    root = build_host_tree(tmp_path / "h", generation="G2", v3=True, compat_capable=compat)
    res = run("--json", "--sysroot", root, "--repo", tmp_path / "none")
    assert res.code == 0
    assert ("running-module-lacks-update-compat" in res.doc["warnings"]) is warned


def test_update_compat_warning_from_the_mapping(run: Any, tmp_path: Path, keys: Path) -> None:
    rels = [Release("1.5.06", tdx_feature0="0x2"), Release("1.5.24", tdx_feature0="0x800000000002")]
    repo = write_repo(
        tmp_path / "r", {"1.5.06": make_image("1.5.06", cpuids=SPR)}, mapping_document(rels)
    )
    old = build_host_tree(tmp_path / "old", module="1.5.06")
    new = build_host_tree(tmp_path / "new", module="1.5.24")
    for root, warned in ((old, True), (new, False)):
        res = run("--list", "--json", "--sysroot", root, "--repo", repo, "--trusted-keys", keys)
        assert ("running-module-lacks-update-compat" in res.doc["warnings"]) is warned
    res = run("--list", "--sysroot", old, "--repo", repo, "--trusted-keys", keys)
    assert "warning: the running module 1.5.06 lacks update compatibility" in res.err
    # -q (cron): a run that neither fails nor changes anything prints nothing at all (issue 9
    # item 19), while the JSON still carries the token
    res = run("--list", "-q", "--sysroot", old, "--repo", repo, "--trusted-keys", keys)
    assert res.code == 0
    assert res.out == ""
    assert res.err == ""
    res = run("--list", "-q", "--json", "--sysroot", old, "--repo", repo, "--trusted-keys", keys)
    assert "running-module-lacks-update-compat" in res.doc["warnings"]
    assert res.err == ""


# --- the error funnel: one table, one renderer ----------------------------------------------


def test_help_lists_every_exit_code_of_the_table(run: Any) -> None:
    from tdxupdate.errors import EXIT_CODES, EXIT_MEANINGS, SIGNAL_EXIT_BASE

    res = run("--help")
    text = " ".join(res.out.split())  # click wraps the epilog
    assert set(EXIT_CODES.values()) <= set(EXIT_MEANINGS)
    for code in {0, *EXIT_CODES.values()}:
        shown = f"{SIGNAL_EXIT_BASE}+N" if code == EXIT_CODES["interrupted"] else str(code)
        assert f"{shown} {EXIT_MEANINGS[code]}" in text, code


def test_an_unexpected_exception_is_an_internal_error_with_its_own_token(
    run: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from tdxupdate import cli

    def boom(_settings: Any) -> Any:
        raise RuntimeError("a bug")

    monkeypatch.setattr(cli, "run_action", boom)
    root = build_host_tree(tmp_path / "h")
    message = "tdxupdate: internal error: RuntimeError: a bug (run with -v for details)"
    res = run("--sysroot", root)
    assert (res.code, res.err_lines, res.out) == (70, [message], "")
    res = run("--sysroot", root, "--json")
    assert res.code == 70
    assert res.doc["error"] == {
        "code": "internal-error",
        "message": message.removeprefix("tdxupdate: "),
        "exit_code": 70,
    }


def test_a_broken_pipe_that_escapes_exits_141_quietly(
    run: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from tdxupdate import cli

    def gone(_settings: Any) -> Any:
        raise BrokenPipeError

    monkeypatch.setattr(cli, "run_action", gone)
    monkeypatch.setattr(cli, "_stdout_gone", lambda: None)
    res = run("--sysroot", build_host_tree(tmp_path / "h"))
    assert (res.code, res.out, res.err_lines) == (141, "", [])


@pytest.mark.parametrize(("signum", "code"), [(None, 130), (2, 130), (15, 143), (1, 129), (3, 131)])
def test_interrupted_exits_128_plus_its_signal(signum: int | None, code: int) -> None:
    from tdxupdate.errors import EXIT_CODES, Interrupted

    err = Interrupted("stop") if signum is None else Interrupted("stop", signum=signum)
    assert (err.code, err.exit_code, err.to_json()["exit_code"]) == ("interrupted", code, code)
    assert EXIT_CODES["interrupted"] == Interrupted("x").exit_code


def test_an_error_carries_no_exit_code_of_its_own() -> None:
    from tdxupdate.errors import EXIT_CODES, TdxError

    with pytest.raises(TypeError):
        TdxError("x", exit_code=70)  # type: ignore[call-arg]
    assert TdxError("x", code="locked").exit_code == EXIT_CODES["locked"]
