"""tdxupdate.imagebuild: assembling images and converting them between Formats A and B."""

from __future__ import annotations

import hashlib
import struct

import pytest
from factories.blobs import blob_join, failed, sigstruct_for, tdx_image
from factories.images import fix_checksum, make_image, module_bytes, trusted_signers
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tdxupdate.errors import InvalidImage
from tdxupdate.image import FORMAT_A, FORMAT_B, MAX_KERNEL_IMAGE_SIZE, MAX_MODULE_PAGES, PAGE_SIZE
from tdxupdate.imagebuild import build, convert
from tdxupdate.imagecheck import verify
from tdxupdate.versions import Version

FORMATS = pytest.mark.parametrize("fmt", [FORMAT_A, FORMAT_B], ids=["A", "B"])


# --------------------------------------------------------------------------------------------
# Conversion


@FORMATS
def test_conversion_round_trips_byte_exactly_and_still_verifies(fmt: int) -> None:
    image = make_image(fmt=fmt, module_pages=3)
    other = FORMAT_B if fmt == FORMAT_A else FORMAT_A
    converted = convert(image, other)
    assert converted != image
    assert convert(converted, fmt) == image
    v = verify(converted, trusted_signers=trusted_signers(), expected_version=Version(1, 5, 6))
    assert v.ok
    assert v.info is not None
    assert v.info.format == other
    assert convert(image, fmt) == image  # same format: unchanged


def test_a_to_b_matches_an_independently_built_tdx_image() -> None:
    module = module_bytes(Version(1, 5, 6), 3)
    sigstruct = sigstruct_for(module)
    blob = blob_join(sigstruct, module)
    assert blob == build(sigstruct, module, FORMAT_A)
    assert (
        convert(blob, FORMAT_B)
        == tdx_image(sigstruct, module)
        == build(sigstruct, module, FORMAT_B)
    )


@given(
    pages=st.integers(min_value=1, max_value=6),
    seed=st.binary(min_size=1, max_size=64),
    cpuids=st.lists(st.integers(min_value=1, max_value=0xFFFFFFFF), min_size=1, max_size=8),
)
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_published_layout_blob_round_trips_through_format_b(
    pages: int, seed: bytes, cpuids: list[int]
) -> None:
    module = hashlib.shake_256(seed).digest(pages * PAGE_SIZE)
    blob = blob_join(sigstruct_for(module, cpuid_table=cpuids), module)
    as_b = convert(blob, FORMAT_B)
    assert len(as_b) == len(blob)
    assert convert(as_b, FORMAT_A) == blob
    assert verify(as_b, trusted_signers=trusted_signers()).ok


def test_format_a_with_a_larger_sigstruct_area_converts_to_the_published_layout() -> None:
    module = module_bytes(Version(1, 5, 6), 2)
    sigstruct = sigstruct_for(module)
    size = 0x3000 + len(module)
    header = struct.pack("<HHI8sII", 0x100, 0, 0x3000, b"TDX-BLOB", size, 0)
    blob = bytearray(header.ljust(0x1000, b"\0") + sigstruct.ljust(0x2000, b"\0") + module)
    fix_checksum(blob)
    assert verify(bytes(blob), trusted_signers=trusted_signers()).ok
    as_b = convert(bytes(blob), FORMAT_B)
    assert as_b == tdx_image(sigstruct, module)
    assert convert(as_b, FORMAT_A) == blob_join(sigstruct, module)


def test_format_b_with_two_sigstruct_pages_converts_to_a() -> None:
    module = module_bytes(Version(1, 5, 6), 2)
    sigstruct = sigstruct_for(module)
    header = struct.pack("<HH8sII", 0x200, 0, b"TDX-BLOB", 2, 2)
    image = bytearray(header.ljust(0x1000, b"\0") + sigstruct.ljust(0x2000, b"\0") + module)
    fix_checksum(image)
    assert verify(bytes(image), trusted_signers=trusted_signers()).ok
    assert convert(bytes(image), FORMAT_A) == blob_join(sigstruct, module)


def test_largest_format_a_converts_to_the_largest_kernel_image() -> None:
    image = make_image(fmt=FORMAT_A, module_pages=MAX_MODULE_PAGES)
    converted = convert(image, FORMAT_B)
    assert len(converted) == MAX_KERNEL_IMAGE_SIZE
    assert verify(converted, trusted_signers=trusted_signers()).ok


@pytest.mark.parametrize(
    ("tamper", "check"),
    [
        ("wrong-magic", "container"),
        ("checksum", "checksum"),
        ("sigstruct-padding-nonzero", "container"),
    ],
)
def test_conversion_refuses_a_damaged_image(tamper: str, check: str) -> None:
    image = make_image(fmt=FORMAT_A, tamper=tamper)
    with pytest.raises(InvalidImage) as exc:
        convert(image, FORMAT_B)
    assert exc.value.check == check


def test_conversion_keeps_a_bad_seamhash_visible() -> None:
    # convert() does not check SEAMHASH or the signature; verify() still sees the damage after.
    image = make_image(fmt=FORMAT_A, tamper="module-byte")
    assert failed(convert(image, FORMAT_B)) == {"seamhash"}


def test_conversion_to_an_unknown_format_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="unknown image format 0x300"):
        convert(make_image(), 0x300)
