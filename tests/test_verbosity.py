"""``-v`` and ``-vv`` add what they promise, ``-q`` takes away (issue 9 item 19).

``-v`` says what was read and decided (the host's facts, the repository, every candidate's
verdict, the chosen image's digests, where the attempt was recorded); ``-vv`` adds every sysfs
read, every preflight check, every image's header facts and each step of the fw_upload
protocol. The default output carries none of those lines, and stdout (the report, the JSON
document) is the same at every verbosity.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from factories.hosts import build_host_tree
from factories.images import Release, make_image, mapping_document, test_key, write_repo
from factories.sim import require_fuse

from tdxupdate.cli import main

SPR = (0x806F8, 0xC06F0, 0xA06F0)
UPDATE_VV = ("--update", "-vv")
DRY_RUN = ("--update", "--dry-run")


@pytest.fixture
def args(tmp_path: Path) -> list[str]:
    images = {
        "1.5.06": make_image("1.5.06", fmt=0x100, cpuids=SPR),
        "1.5.24": make_image("1.5.24", fmt=0x200, cpuids=SPR),
        "1.5.25": make_image("1.5.25", fmt=0x200, cpuids=(0xA06D0,)),
    }
    releases = [Release(v, min_seamldr_versions=("1.5.00", "2.0.00")) for v in images]
    repo = write_repo(tmp_path / "repo", images, mapping_document(releases))
    host = build_host_tree(tmp_path / "host", generation="G5", module="1.5.06", remaining=3)
    keys = tmp_path / "keys"
    keys.write_text(test_key().fingerprint + "\n")
    return ["--sysroot", str(host), "--repo", str(repo), "--trusted-keys", str(keys)]


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, list[str]]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err.splitlines()


def having(lines: list[str], text: str) -> list[str]:
    return [ln for ln in lines if text in ln]


def test_default_output_has_no_detail_lines(capsys: Any, args: list[str]) -> None:
    code, _out, err = run(capsys, "--update", "--dry-run", *args)
    assert code == 0
    assert having(err, "candidate ") == []
    assert having(err, "debug:") == []
    assert having(err, "tdxupdate: host ") == []


def test_v_tells_what_was_read_and_decided(capsys: Any, args: list[str], tmp_path: Path) -> None:
    code, _out, err = run(capsys, "--update", "--dry-run", "-v", *args)
    assert code == 0
    host = having(err, "tdxupdate: host ")
    assert host
    assert "TDX module 1.5.06" in host[0]
    assert "3 updates left" in host[0]
    assert having(err, "tdxupdate: repository ") != []
    assert having(err, "candidate 1.5.24: eligible")
    (rejected,) = having(err, "candidate 1.5.25: not eligible: ")
    assert "cpu-unsupported" in rejected
    assert "0xa06d0" in rejected
    (digests,) = having(err, "tdx_module_1.5.24.blob: ")
    assert "sha256 " in digests
    assert "MRSEAM " in digests
    assert test_key().fingerprint in digests
    assert having(err, "debug:") == []


def test_vv_adds_every_read_and_check(capsys: Any, args: list[str]) -> None:
    code, _out, err = run(capsys, "--list", "-vv", *args)
    assert code == 0
    assert having(err, "debug: read ") != []
    assert any(ln.endswith('num_remaining_updates: "3"') for ln in having(err, "debug: read "))
    assert having(err, "debug: check cpus-online: ok") != []
    (header,) = having(err, "debug: image 1.5.25: ")
    assert "format 0x200" in header
    assert "debug no" in header


def test_stdout_is_the_same_at_every_verbosity(capsys: Any, args: list[str]) -> None:
    docs = []
    for flags in ([], ["-v"], ["-vv"], ["-q"]):
        code, out, _err = run(capsys, "--list", "--json", *flags, *args)
        assert code == 0
        doc = json.loads(out)
        doc.pop("duration_s", None)
        docs.append(doc)
    assert all(d == docs[0] for d in docs[1:])


def test_q_drops_warnings_and_qq_notices(capsys: Any, args: list[str]) -> None:
    _code, _out, default = run(capsys, "--list", *args)
    assert having(default, "warning:") != []  # the test signer is not Intel's, among others
    _code, _out, quiet = run(capsys, "--list", "-q", *args)
    assert having(quiet, "warning:") == []


@pytest.mark.fuse
def test_vv_shows_the_fw_upload_protocol(tmp_path: Path, sim_cache: Path) -> None:
    """The real --update (against the emulator): each step written to and read from sysfs."""
    require_fuse()
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "sim").symlink_to(sim_cache)
    env = dict(os.environ, TMPDIR=str(tmp_path))
    env.pop("TDXUPDATE_STATE_DIR", None)
    proc = subprocess.run(
        [sys.executable, "-m", "tdxupdate", "--simulate", "--cache-dir", str(cache), *UPDATE_VV],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    err = proc.stderr.splitlines()
    (start,) = having(err, "debug: write 1 to ")
    assert start.split(" to ")[1].endswith("/loading, then 16384 bytes")
    assert having(err, "debug: write 0 to ") != []
    # the uploader's own watch lines ("debug: PATH: status"), not the preflight's reads
    statuses = [ln.rsplit(": ", 1)[1] for ln in err if re.search(r"debug: /\S*/status: ", ln)]
    assert statuses
    assert statuses[-1] == "idle"
    assert having(err, "preflight read again before the first write: the host is unchanged")
    assert having(err, "attempt 1 (success) recorded in ")


@pytest.mark.fuse
def test_warnings_show_before_the_plan_not_after_the_outcome(
    tmp_path: Path, sim_cache: Path
) -> None:
    """The update-compatibility warning is read before anything is decided: at a terminal or in
    a log it comes before the plan (issue 10 §1), and only once."""
    require_fuse()
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "sim").symlink_to(sim_cache)
    proc = subprocess.run(
        [sys.executable, "-m", "tdxupdate", "--simulate", "--cache-dir", str(cache), *DRY_RUN],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=dict(os.environ, TMPDIR=str(tmp_path)),
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout
    lines = proc.stdout.splitlines()
    warning = [i for i, ln in enumerate(lines) if "lacks update compatibility" in ln]
    plan = [i for i, ln in enumerate(lines) if ln.startswith("dry run: would install")]
    assert len(warning) == 1, lines
    assert len(plan) == 1, lines
    assert warning[0] < plan[0]
