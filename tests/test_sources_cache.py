"""The download cache (tdxupdate.sources.cache) on its own: what comes out is what went in.

The mirror's use of it is tests/test_sources_mirror.py; its directory rules are
tests/test_safedir.py.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from tdxupdate.sources.cache import Cache


def test_leftover_temporary_files_are_swept_and_a_misnamed_file_is_never_served(
    tmp_path: Path,
) -> None:
    cache = Cache(tmp_path)
    images_dir = tmp_path / "images" / "sha256"
    old = images_dir / ".tmp-killed"
    old.write_bytes(b"partial")
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    fresh = images_dir / ".tmp-live"
    fresh.write_bytes(b"in progress")
    digest = cache.store("images", b"good bytes")
    wrong = "0" * 64
    (images_dir / wrong).write_bytes(b"good bytes")  # content that does not match its name

    Cache(tmp_path)
    assert not old.exists()
    assert fresh.exists()
    assert cache.load("images", digest) == b"good bytes"
    assert cache.load("images", wrong) is None
    assert not (images_dir / wrong).exists()
