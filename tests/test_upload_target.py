"""A real ``--update`` writes only to an upload interface on sysfs or FUSE (issue 9 item 16).

Against a plain-file ``--sysroot`` (a copy of a sample host on the disk) the tool used to write
the image into plain files, follow a ``data`` symlink, say "the kernel accepted the image" and
record a success. It now refuses with ``no-upload-interface`` (69) and writes nothing; read-only
actions and ``--dry-run`` keep working on such trees.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
from factories.images import Release, make_image, mapping_document, test_key, write_repo

from tdxupdate.cli import main

SAMPLE = Path(__file__).resolve().parent.parent / "mapping_samples" / "hosts" / "spr-flat-1.5.06"


def tree_digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.is_symlink()
    }


@pytest.fixture
def plain(tmp_path: Path) -> tuple[Path, Path, Path]:
    host = tmp_path / "host"
    shutil.copytree(SAMPLE, host, symlinks=True)
    files = {v: make_image(v, cpuids=(0x806F8,)) for v in ("1.5.06", "1.5.08")}
    rel = [Release(v, min_seamldr_versions=("2.0.00",)) for v in files]
    repo = write_repo(tmp_path / "repo", files, mapping_document(rel))
    keys = tmp_path / "keys"
    keys.write_text(test_key().fingerprint + "\n")
    return host, repo, keys


def run(
    capsys: pytest.CaptureFixture[str], host: Path, repo: Path, keys: Path, state: Path, *a: str
) -> tuple[int, dict[str, object], str]:
    capsys.readouterr()
    code = main(
        [
            "--sysroot", str(host), "--repo", str(repo), "--trusted-keys", str(keys),
            "--state-dir", str(state), "--cpu-signature", "0x806f8", "--json", *a,
        ]
    )  # fmt: skip
    captured = capsys.readouterr()
    return code, json.loads(captured.out), captured.err


def test_a_real_update_on_a_plain_tree_is_refused_and_writes_nothing(
    plain: tuple[Path, Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    host, repo, keys = plain
    before = tree_digest(host)
    code, doc, err = run(capsys, host, repo, keys, tmp_path / "state", "--update")
    assert code == 69, err
    error = doc["error"]
    assert isinstance(error, dict)
    assert error["code"] == "no-upload-interface"
    assert "not sysfs" in str(error["message"])
    assert tree_digest(host) == before
    assert not (tmp_path / "state" / "history.jsonl").exists()

    # the dry run and the listing still work on the same tree
    code, doc, err = run(capsys, host, repo, keys, tmp_path / "state", "--update", "--dry-run")
    assert code == 0, err
    assert doc["to_version"] == "1.5.08", err
    assert tree_digest(host) == before
