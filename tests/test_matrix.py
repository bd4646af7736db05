"""A table of hosts (running version × P-SEAMLDR × CPU × kernel generation) against Intel's
current mapping file, through the CLI: eligibility, reasons and the chosen version.

The repository holds one synthetic image per release of ``mapping_samples/mapping_file.json``
(Intel's file, unchanged). CPU tables follow the published blobs (image-formats.md §6); for the
releases after those, reference-tool.md: 1.5.24 is for SPR/EMR, 1.5.25 for Sierra Forest.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from factories.hosts import build_host_tree
from factories.images import make_image, test_key, write_repo

from tdxupdate.cli import main

ROOT = Path(__file__).resolve().parent.parent
INTEL_MAPPING = json.loads((ROOT / "mapping_samples" / "mapping_file.json").read_text())

CPUS_15 = (0x806F8, 0xC06F0, 0xA06F0)
CPUS_20 = (0xA06D0, 0xA06E0)
SPECIAL = {"1.5.01": (0x806F8, 0xC06F0), "1.5.24": (0x806F8, 0xC06F0), "1.5.25": (0xA06F0,)}

# (family, model, stepping) of real CPUs, and their CPUID.1.EAX
SPR, EMR, SRF, GNR = (6, 143, 8), (6, 207, 2), (6, 175, 3), (6, 173, 1)


@pytest.fixture(scope="module")
def intel_repo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("intel")
    images = {}
    for release in INTEL_MAPPING["tdx_module_releases"]:
        v = release["version"]
        cpus = SPECIAL.get(v, CPUS_15 if v.startswith("1.5.") else CPUS_20)
        images[v] = make_image(v, fmt=0x200 if v >= "1.5.20" else 0x100, cpuids=cpus)
    repo = write_repo(root / "repo", images, INTEL_MAPPING)
    keys = root / "keys"
    keys.write_text(test_key().fingerprint + "\n")
    return repo, keys


# running, P-SEAMLDR, CPU, expected choice (None: nothing to do), spot-checked reasons
HostCase = tuple[str, str, tuple[int, int, int], str | None, dict[str, list[str]]]
HOSTS: list[HostCase] = [
    (
        "1.5.06",
        "1.5.00",
        SPR,
        "1.5.34",
        {"1.5.24": [], "1.5.25": ["seamldr-incompatible", "cpu-unsupported"]},
    ),
    (
        "1.5.06",
        "2.0.00",
        SPR,
        "1.5.34",
        {"1.5.24": ["seamldr-incompatible"], "1.5.25": ["cpu-unsupported"]},
    ),
    (
        "1.5.20",
        "1.5.00",
        SRF,
        "1.5.34",
        {"1.5.24": ["cpu-unsupported"], "1.5.25": ["seamldr-incompatible"]},
    ),
    ("1.5.20", "2.0.00", EMR, "1.5.34", {"1.5.28": [], "1.5.16": ["older-than-running"]}),
    ("1.5.34", "2.0.00", SPR, None, {"1.5.34": ["same-as-running"]}),
    (
        "2.0.02",
        "2.0.00",
        GNR,
        None,
        {"2.0.18": ["below-min-td-preserving"], "2.0.02": ["same-as-running"]},
    ),
    (
        "2.0.05",
        "2.0.00",
        GNR,
        "2.0.18",
        {"2.0.04": ["older-than-running"], "1.5.34": ["major-minor-mismatch", "cpu-unsupported"]},
    ),
    ("2.0.08", "1.5.00", GNR, None, {"2.0.18": ["seamldr-incompatible"]}),
    ("1.5.06", "2.0.00", GNR, None, {"1.5.34": ["cpu-unsupported"]}),
]
GENERATIONS = ["G2", "G3", "G4", "G5"]


@pytest.mark.parametrize("generation", GENERATIONS)
@pytest.mark.parametrize("case", HOSTS, ids=[f"{h[0]}-ldr{h[1]}-{h[2][1]}" for h in HOSTS])
def test_host_matrix(
    intel_repo: tuple[Path, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    generation: str,
    case: HostCase,
) -> None:
    running, seamldr, cpu, chosen, spot = case
    repo, keys = intel_repo
    host = build_host_tree(
        tmp_path / "h", generation=generation, module=running, seamldr=seamldr, cpu=cpu, remaining=5
    )
    common = ["--sysroot", str(host), "--repo", str(repo), "--trusted-keys", str(keys), "--json"]

    assert main(["--list", *common]) == 0
    listed: dict[str, Any] = json.loads(capsys.readouterr().out)
    reasons = {c["version"]: c["reasons"] for c in listed["candidates"]}
    assert len(reasons) == len(INTEL_MAPPING["tdx_module_releases"])
    for version, expected in spot.items():
        assert reasons[version] == expected, version
    eligible = sorted((v for v, r in reasons.items() if not r), reverse=True)
    assert (eligible[0] if eligible else None) == chosen

    code = main(["--update", "--dry-run", "--state-dir", str(tmp_path / "state"), *common])
    planned: dict[str, Any] = json.loads(capsys.readouterr().out)
    assert code == 0
    assert (planned["selected"] or {}).get("version") == chosen
    if chosen is not None:
        sent = "Format A (0x100)" if generation in ("G2", "G3") else "Format B (0x200)"
        assert f"sent as {sent}" in planned["plan"]
    assert not (tmp_path / "state").exists()
    shutil.rmtree(host)
