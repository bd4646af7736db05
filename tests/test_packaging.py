"""The source tree tests and installs itself: sdist contents, hints that name real packages,
unit files that point at documentation that exists, test data inside the repository."""

from __future__ import annotations

import ctypes.util
import importlib.util
import json
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from tdxupdate import __version__
from tdxupdate.sim import mount

ROOT = Path(__file__).resolve().parent.parent


def test_published_blob_facts_are_in_the_repository_with_their_source() -> None:
    data = json.loads((ROOT / "tests" / "data" / "published-blobs.json").read_text())
    assert "tdx-module-binaries" in data["source"]
    assert len(data["blobs"]) == 11


def test_missing_mfusepy_hint_is_one_line_naming_what_to_install(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    dev = tmp_path / "fuse"
    dev.write_bytes(b"")
    monkeypatch.setattr(mount, "DEV_FUSE", dev)
    monkeypatch.setattr(ctypes.util, "find_library", lambda name: "libfuse3.so.3")
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "mfusepy" else real_find_spec(name, *a),
    )
    problem = mount.fuse_problem()
    assert problem is not None
    assert "\n" not in problem
    assert "pip install mfusepy" in problem
    # tdxupdate is not on PyPI: an extra of a package that cannot be found helps nobody.
    assert "tdxupdate[sim]" not in problem
    assert "tdxupdate[sim]" not in mount.HOW_TO_GET_FUSE


def test_unit_files_document_only_what_exists() -> None:
    for unit in sorted((ROOT / "contrib" / "systemd").iterdir()):
        text = unit.read_text()
        assert "docs/" not in text, unit.name
        for doc in re.findall(r"^Documentation=(.*)$", text, re.M):
            for ref in doc.split():
                assert ref == "man:tdxupdate(8)" or ref.startswith("https://"), (unit.name, ref)


def test_debian_changelog_matches_the_version() -> None:
    changelog = ROOT / "debian" / "changelog"
    if not changelog.is_file():
        pytest.skip("no debian/ directory in this tree")
    first = changelog.read_text().splitlines()[0]
    m = re.match(r"tdxupdate \(([^)]+)\)", first)
    assert m is not None, first
    assert m.group(1).split("-")[0] == __version__
    assert f"## {__version__}" in (ROOT / "CHANGELOG.md").read_text()


def test_sdist_contains_everything_the_tests_need(tmp_path: Path) -> None:
    if not (ROOT / "MANIFEST.in").is_file():
        pytest.skip("not a source checkout")
    if importlib.util.find_spec("setuptools") is None:
        pytest.skip("setuptools is not installed")
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    # setup.py-less sdist through the PEP 517 hook, in-process of a child Python; the
    # egg-info goes to tmp_path so the tree stays clean.
    code = (
        "import os, sys; from setuptools import build_meta as b; "
        "print(b.build_sdist(sys.argv[1], {'--global-option': []}))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if proc.returncode != 0 and "Permission denied" in proc.stderr:
        pytest.skip("the source tree is read-only here (an installed or packaged copy)")
    assert proc.returncode == 0, proc.stderr[-2000:]
    name = proc.stdout.strip().splitlines()[-1]
    with tarfile.open(tmp_path / name) as tar:
        members = {m.split("/", 1)[1] for m in tar.getnames() if "/" in m}
    tracked = subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=False
    )
    if tracked.returncode == 0 and tracked.stdout:
        wanted = {
            f
            for f in tracked.stdout.splitlines()
            if f.startswith(("tests/", "man/", "contrib/", "mapping_samples/", "tdxupdate/"))
            or f in {"LICENSE", "CHANGELOG.md", "README.md", "pyproject.toml", "MANIFEST.in"}
        }
        # An sdist stores the sample hosts' sysfs symbolic links as copies: a file reached
        # through a link counts for the file behind it.
        present = {str((ROOT / m).resolve().relative_to(ROOT)) for m in members}
        assert sorted(f for f in wanted - members if f not in present) == []
    for needed in (
        "LICENSE",
        "man/tdxupdate.8",
        "contrib/systemd/tdxupdate.service",
        "contrib/tdxupdate.conf.example",
        "contrib/cron/tdxupdate",
        "tests/conftest.py",
        "tests/data/published-blobs.json",
        "tdxupdate/schemas/output.schema.json",
    ):
        assert needed in members, needed


def test_debian_installs_the_contrib_units_themselves() -> None:
    for name in ("tdxupdate.service", "tdxupdate.timer"):
        unit = ROOT / "debian" / name
        if not unit.exists():
            pytest.skip("no debian/ directory in this tree")
        # a symlink in the repository, a copy in an sdist: either way the same unit
        assert unit.read_bytes() == (ROOT / "contrib" / "systemd" / name).read_bytes()


def test_simulate_without_fuse_is_one_line_and_generates_nothing(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The installed Debian package has no mfusepy: --simulate fails at once with the one
    line saying what to install (69, fuse-unavailable), before generating a sample repository."""
    from tdxupdate.cli import main

    monkeypatch.setattr(
        mount, "fuse_problem", lambda: "the Python package mfusepy is not installed"
    )
    cache = tmp_path / "cache"
    code = main(["--simulate", "--status", "--json", "--cache-dir", str(cache)])
    out, err = capsys.readouterr()
    assert code == 69
    assert json.loads(out)["error"]["code"] == "fuse-unavailable"
    assert err.splitlines() == [
        "tdxupdate: FUSE is unavailable: the Python package mfusepy is not installed"
    ]
    assert not (cache / "sim").exists()
