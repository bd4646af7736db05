"""The kernel's header rules for a module image (tdxupdate.sim.blob), pure, no FUSE.

Part of the emulator's tests (tests/sim/); the shared mounts and their reset are in
tests/sim/conftest.py, the helpers in tests/sim/helpers.py.
"""

from __future__ import annotations

import pytest

from sim.helpers import (
    image,
    with_checksum,
)
from tdxupdate.image import FORMAT_A, FORMAT_B
from tdxupdate.sim.blob import ImageRejected, parse_for_kernel
from tdxupdate.sim.repo import SampleRepo

pytestmark = pytest.mark.fuse


# --- kernel header rules (pure, no FUSE) ---------------------------------------------------------


@pytest.fixture(scope="module")
def blob_a(sample_repo: SampleRepo) -> bytes:
    return image(sample_repo, "1.5.08", FORMAT_A)


def _set(data: bytes, offset: int, value: bytes, checksum: bool = True) -> bytes:
    out = bytearray(data)
    out[offset : offset + len(value)] = value
    return with_checksum(bytes(out)) if checksum else bytes(out)


@pytest.mark.parametrize(
    ("damage", "refused_by"),
    [
        ("checksum", {"v1", "v2", "v3"}),
        ("length", {"v1", "v2", "v3", "v4", "v5", "v6", "v7"}),
        ("reserved", {"v1", "v2", "v3", "v4", "v5", "v6", "v7", "v8"}),
        ("two-sig-pages", {"v1", "v2"}),
        ("unaligned-size", {"v1", "v2", "v3", "v4", "v7"}),
    ],
)
def test_format_a_header_rules_per_series(blob_a: bytes, damage: str, refused_by: set[str]) -> None:
    if damage == "checksum":
        bad = _set(blob_a, 2, b"\x12\x34", checksum=False)
    elif damage == "length":
        bad = _set(blob_a, 16, (len(blob_a) + 4096).to_bytes(4, "little"))
    elif damage == "reserved":
        bad = _set(blob_a, 100, b"\x01")
    elif damage == "two-sig-pages":
        # sigstruct area of two pages: offset_of_module 0x3000
        body = blob_a[:0x2000] + bytes(4096) + blob_a[0x2000:]
        body = _set(body, 4, (0x3000).to_bytes(4, "little"), checksum=False)
        bad = _set(body, 16, len(body).to_bytes(4, "little"))
    else:
        grown = blob_a + b"\0" * 100
        bad = _set(grown, 16, len(grown).to_bytes(4, "little"))
    for series in ("v1", "v2", "v3", "v4", "v5", "v6", "v7", "v8"):
        if series in refused_by:
            with pytest.raises(ImageRejected):
                parse_for_kernel(series, bad)
        else:
            parse_for_kernel(series, bad)
    assert parse_for_kernel("v3", blob_a).module == blob_a[0x2000:]


def test_format_b_header_rules(sample_repo: SampleRepo) -> None:
    good = image(sample_repo, "1.5.08", FORMAT_B)
    parsed = parse_for_kernel("ml", good)
    assert parsed.sigstruct_area == good[0x1000:0x2000]
    assert parsed.module == good[0x2000:]
    for bad in (
        good + bytes(4096),  # size does not match the page counts
        _set(good, 0x0C, (2).to_bytes(4, "little")),  # two sigstruct pages
        _set(good, 0x20, b"\x01"),  # reserved byte
        good[:100],
    ):
        with pytest.raises(ImageRejected):
            parse_for_kernel("v10", bad)
