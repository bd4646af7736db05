"""Synthetic repositories and hosts for the listing benchmarks (``bench/run.py``).

``releases(n)`` spreads ``n`` releases over the 1.5 and 2.0 streams; every image is distinct
(its own module bytes, so its own SEAMHASH and its own signature): a listing must check ``n``
signatures, not one ``n`` times.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT / "tests") not in sys.path:
    sys.path.insert(0, str(ROOT / "tests"))

from factories.hosts import build_host_tree  # noqa: E402
from factories.images import make_image, test_key, write_repo  # noqa: E402


def releases(n: int) -> list[str]:
    """``n`` versions: 1.5.x first, then 2.0.x (the running module is 1.5.06)."""
    half = (n + 1) // 2
    return [f"1.5.{u:02d}" for u in range(6, 6 + half)] + [
        f"2.0.{u:02d}" for u in range(2, 2 + n - half)
    ]


def build(tmp: Path, n: int, *, module_pages: int = 1) -> dict[str, Path]:
    """A repository of ``n`` signed images, a host running 1.5.06 and a trusted-keys file."""
    repo = write_repo(
        tmp / f"repo-{n}",
        {v: make_image(v, module_pages=module_pages) for v in releases(n)},
    )
    host = build_host_tree(tmp / f"host-{n}")
    keys = tmp / "keys"
    keys.write_text(test_key().fingerprint + "\n")
    return {"repo": repo, "host": host, "keys": keys}
