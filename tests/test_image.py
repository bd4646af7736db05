"""tdxupdate.image: Formats A/B, the sigstruct, the container rules and the parsing of a head."""

from __future__ import annotations

import itertools
import json
import struct
from pathlib import Path
from typing import Any

import pytest
from factories.blobs import EDITS, blob_join, edited, sigstruct_for, valid_images, word_sum
from factories.images import make_image, module_bytes, trusted_signers
from factories.outcome import returned_or_raised
from hypothesis import given, settings
from hypothesis import strategies as st

from tdxupdate.errors import InvalidImage
from tdxupdate.image import (
    FORMAT_A,
    FORMAT_A_HEADER,
    FORMAT_B,
    FORMAT_B_HEADER,
    HEAD_SIZE,
    MAX_IMAGE_SIZE,
    MAX_KERNEL_IMAGE_SIZE,
    MAX_MODULE_PAGES,
    PAGE_SIZE,
    SIGSTRUCT_LAYOUT,
    SIGSTRUCT_SIZE,
    Field,
    checksum16,
    inspect,
)
from tdxupdate.imagecheck import CHECK_NAMES, INTEL_PRODUCTION_SIGNER, header_checks, verify
from tdxupdate.versions import Version

FORMATS = pytest.mark.parametrize("fmt", [FORMAT_A, FORMAT_B], ids=["A", "B"])
# Facts about the images Intel published (source named in the file's "source" key), copied into
# the repository so a clone or an sdist tests itself.
PUBLISHED_BLOBS = Path(__file__).resolve().parent / "data" / "published-blobs.json"


# --------------------------------------------------------------------------------------------
# Declared layouts and limits


@pytest.mark.parametrize("layout", [FORMAT_A_HEADER, FORMAT_B_HEADER], ids=["A", "B"])
def test_header_layout_covers_exactly_one_page(layout: dict[str, Field]) -> None:
    offset = 0
    for field in layout.values():
        assert field.offset == offset, field.name
        offset += field.size
    assert offset == PAGE_SIZE
    assert next(iter(layout)) == "version"


def test_sigstruct_layout_matches_image_formats_section_3() -> None:
    fields = sorted(SIGSTRUCT_LAYOUT.values(), key=lambda f: f.offset)
    for a, b in itertools.pairwise(fields):
        assert a.offset + a.size <= b.offset, (a.name, b.name)
    assert fields[-1].offset + fields[-1].size <= SIGSTRUCT_SIZE
    offsets = {f.name: f.offset for f in fields}
    assert offsets == offsets | {
        "module_type": 12,
        "modulus": 128,
        "exponent": 512,
        "signature": 516,
        "seamhash": 900,
        "seamsvn": 948,
        "version": 1000,
        "cpuid_table_size": 1024,
        "cpuid_table": 1028,
    }


def test_size_limits_follow_the_page_counts() -> None:
    assert MAX_KERNEL_IMAGE_SIZE == PAGE_SIZE * (1 + 1 + MAX_MODULE_PAGES) == 2_039_808
    assert MAX_IMAGE_SIZE == PAGE_SIZE * (1 + 4 + MAX_MODULE_PAGES)


# --------------------------------------------------------------------------------------------
# Valid images


@FORMATS
def test_inspect_reads_only_the_head(fmt: int) -> None:
    image = make_image(fmt=fmt, module_pages=4)
    # Replace everything after the head: inspect() must not notice.
    scrambled = image[:HEAD_SIZE] + bytes(len(image) - HEAD_SIZE)
    info = inspect(scrambled[:HEAD_SIZE], len(image))
    assert info == inspect(image, len(image)) == verify(image, trusted_signers=()).info
    assert {
        c.name
        for c in header_checks(
            info, trusted_signers=trusted_signers(), allow_debug=False, expected_version=None
        )
        if c.ok
    } == set(CHECK_NAMES[3:])


def test_inspect_refuses_a_head_that_does_not_match_the_size() -> None:
    image = make_image()
    with pytest.raises(InvalidImage) as exc:
        inspect(image[:100], len(image))
    assert exc.value.check == "container"
    assert exc.value.code == "image-invalid"
    assert (
        str(exc.value)
        == "head holds 100 bytes, expected the first 8192 bytes of a 16384-byte image"
    )


@pytest.mark.parametrize("sig_pages", [1, 4])
def test_format_a_accepts_the_largest_image_from_its_head(sig_pages: int) -> None:
    size = PAGE_SIZE * (1 + sig_pages + MAX_MODULE_PAGES)
    header = struct.pack("<HHI8sII", 0x100, 0, PAGE_SIZE * (1 + sig_pages), b"TDX-BLOB", size, 0)
    head = header.ljust(PAGE_SIZE, b"\0") + sigstruct_for(b"x").ljust(PAGE_SIZE, b"\0")
    info = inspect(head, size)
    assert (info.module_size, info.sigstruct_area_size) == (
        MAX_MODULE_PAGES * PAGE_SIZE,
        sig_pages * PAGE_SIZE,
    )
    assert info.size <= MAX_IMAGE_SIZE


@pytest.mark.parametrize(
    ("fmt", "sig_pages", "module_pages", "message"),
    [
        (
            FORMAT_A,
            5,
            1,
            "header offset_of_module is 0x6000: a sigstruct area of 5 pages, more "
            "than the 4 any kernel accepts",
        ),
        (FORMAT_A, 1, 497, "module is 497 pages, more than the 496 the kernel accepts"),
        (FORMAT_B, 5, 1, "header sigstruct_nr_pages is 5, expected 1 to 4"),
        (FORMAT_B, 1, 497, "header module_nr_pages is 497, expected 1 to 496"),
    ],
    ids=["A-5-sigstruct-pages", "A-497-module-pages", "B-5-sigstruct-pages", "B-497-module-pages"],
)
def test_page_limits_are_enforced_from_the_head(
    fmt: int, sig_pages: int, module_pages: int, message: str
) -> None:
    size = PAGE_SIZE * (1 + sig_pages + module_pages)
    if fmt == FORMAT_A:
        header = struct.pack("<HHI8sII", fmt, 0, PAGE_SIZE * (1 + sig_pages), b"TDX-BLOB", size, 0)
    else:
        header = struct.pack("<HH8sII", fmt, 0, b"TDX-BLOB", sig_pages, module_pages)
    head = header.ljust(PAGE_SIZE, b"\0") + sigstruct_for(b"x").ljust(PAGE_SIZE, b"\0")
    with pytest.raises(InvalidImage) as exc:
        inspect(head, size)
    assert str(exc.value) == message


def test_oversized_image_is_refused_before_its_fields() -> None:
    image = make_image()
    with pytest.raises(InvalidImage) as exc:
        inspect(image[:HEAD_SIZE], MAX_IMAGE_SIZE + PAGE_SIZE)
    assert str(exc.value) == (
        f"image is {MAX_IMAGE_SIZE + PAGE_SIZE} bytes, larger than the largest possible image "
        f"({MAX_IMAGE_SIZE} bytes)"
    )


def test_checksum16_counts_an_odd_trailing_byte_as_a_low_byte() -> None:
    assert checksum16(b"\x01\x02\x03") == (0x0201 + 0x03)
    assert checksum16(b"") == 0
    assert checksum16(b"\xff\xff\x02\x00") == 0x0001  # wraps modulo 2^16


@given(st.binary(max_size=4099))
@settings(max_examples=150, deadline=None)
def test_checksum16_equals_the_reference_word_sum(data: bytes) -> None:
    assert checksum16(data) == word_sum(data)


# --------------------------------------------------------------------------------------------
# Properties


@given(
    which=st.integers(0, 1),
    edits=EDITS,
    size=st.one_of(st.integers(0, 2 * MAX_IMAGE_SIZE), st.sampled_from([12288, 16384])),
)
@settings(max_examples=150, deadline=None)
def test_inspect_raises_only_invalid_image(
    which: int, edits: list[tuple[int, int]], size: int
) -> None:
    data = edited(valid_images()[which], edits, None)
    outcome = returned_or_raised(lambda: inspect(data[: min(size, HEAD_SIZE)], size), InvalidImage)
    if isinstance(outcome, InvalidImage):
        assert outcome.check == "container"
        assert outcome.message
        assert "\n" not in outcome.message


@given(st.binary(max_size=HEAD_SIZE + 16))
@settings(max_examples=200, deadline=None)
def test_inspect_of_random_bytes_raises_only_invalid_image(data: bytes) -> None:
    outcome = returned_or_raised(lambda: inspect(data, len(data)), InvalidImage)
    if isinstance(outcome, InvalidImage):
        assert outcome.check == "container"


# --------------------------------------------------------------------------------------------
# Published blobs: the facts agree with what the parser expects


def _published() -> list[dict[str, Any]]:
    if not PUBLISHED_BLOBS.is_file():
        pytest.fail(
            f"{PUBLISHED_BLOBS} is missing: the tests/data directory is part of the source tree"
        )
    blobs: list[dict[str, Any]] = json.loads(PUBLISHED_BLOBS.read_text())["blobs"]
    return blobs


def test_published_blobs_are_all_signed_by_intels_production_key() -> None:
    blobs = _published()
    assert len(blobs) == 11
    assert {b["signer_sha256"] for b in blobs} == {INTEL_PRODUCTION_SIGNER}


def test_published_blob_sizes_fit_the_container_rules() -> None:
    for b in _published():
        assert int(b["format"], 16) == FORMAT_A
        size = b["size"]
        module_pages = (size - 0x2000) // PAGE_SIZE
        assert size % PAGE_SIZE == 0, b["version"]
        assert 1 <= module_pages <= MAX_MODULE_PAGES, b["version"]
        # As Format B (one sigstruct page) the image is the same size, within the kernel cap.
        assert size <= MAX_KERNEL_IMAGE_SIZE <= MAX_IMAGE_SIZE
        assert len(bytes.fromhex(b["module_sha384"])) == 48
        assert len(bytes.fromhex(b["sha256"])) == len(bytes.fromhex(b["sigstruct_sha256"])) == 32


def test_published_sigstruct_facts_pass_every_check() -> None:
    """An image shaped like each published blob (size, date, SEAMSVN, cpuid table, version
    bytes) built with the test key must pass every check with the version from its name."""
    for b in _published():
        version = Version.parse(b["version"])
        module_pages = (b["size"] - 0x2000) // PAGE_SIZE
        module = module_bytes(version, module_pages)
        raw = bytes.fromhex(b["version_bytes_at_1000"])
        sigstruct = sigstruct_for(
            module,
            cpuid_table=[int(c, 16) for c in b["cpuid_table"]],
            version=None
            if not any(raw)
            else Version(raw[3], raw[2], int.from_bytes(raw[:2], "little")),
            module_type=b["module_type"],
            date=int(b["date"], 16),
            seamsvn=int(b["seamsvn"], 16),
        )
        assert sigstruct[1000:1004] == raw, b["version"]
        blob = blob_join(sigstruct, module)
        assert len(blob) == b["size"]
        v = verify(blob, trusted_signers=trusted_signers(), expected_version=version)
        assert v.ok, (b["version"], v.failed)
        assert v.info is not None
        sig = v.info.sigstruct
        # 2.0.x blobs carry their version at offset 1000, 1.5.x blobs carry zeros.
        assert sig.version == (version if version.major == 2 else None)
        assert not sig.is_debug
