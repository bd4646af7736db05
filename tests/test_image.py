"""tdxupdate.image: Formats A/B, sigstruct, the checks of image-formats.md §4, conversion."""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import re
import struct
from pathlib import Path
from typing import Any

import pytest
from factories.images import (
    SIG,
    TAMPERS,
    fix_checksum,
    make_image,
    module_bytes,
    other_key,
    test_key,
    trusted_signers,
)
from factories.outcome import returned_or_raised
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tdxupdate.errors import InvalidImage
from tdxupdate.image import (
    CHECK_NAMES,
    FORMAT_A,
    FORMAT_A_HEADER,
    FORMAT_B,
    FORMAT_B_HEADER,
    HEAD_SIZE,
    INTEL_PRODUCTION_SIGNER,
    MAX_IMAGE_SIZE,
    MAX_KERNEL_IMAGE_SIZE,
    MAX_MODULE_PAGES,
    PAGE_SIZE,
    SIGSTRUCT_LAYOUT,
    SIGSTRUCT_SIZE,
    Check,
    Field,
    Sigstruct,
    _compute_signature_check,
    build,
    checksum16,
    convert,
    header_checks,
    inspect,
    make_sigstruct,
    signed_message,
    verify,
)
from tdxupdate.signing import emsa_pkcs1_v15_sha384
from tdxupdate.versions import Version

FORMATS = pytest.mark.parametrize("fmt", [FORMAT_A, FORMAT_B], ids=["A", "B"])
NOT_CHECKED = "not checked: the container is invalid"
# Facts about the images Intel published (source named in the file's "source" key), copied into
# the repository so a clone or an sdist tests itself.
PUBLISHED_BLOBS = Path(__file__).resolve().parent / "data" / "published-blobs.json"


def word_sum(data: bytes) -> int:
    """blob_join.sh's checksum, written independently of checksum16: 16-bit LE words."""
    if len(data) % 2:
        data += b"\0"
    words: tuple[int, ...] = struct.unpack(f"<{len(data) // 2}H", data)
    return sum(words) & 0xFFFF


def blob_join(sigstruct: bytes, module: bytes) -> bytes:
    """A Format A blob assembled the way Intel's blob_join.sh does (published layout)."""
    length = 0x2000 + len(module)
    header = struct.pack("<HHI8sII", 0x100, 0, 0x2000, b"TDX-BLOB", length, 0)
    blob = bytearray(header.ljust(0x1000, b"\0") + sigstruct.ljust(0x1000, b"\0") + module)
    blob[2:4] = ((0x10000 - word_sum(bytes(blob))) & 0xFFFF).to_bytes(2, "little")
    return bytes(blob)


def tdx_image(sigstruct: bytes, module: bytes) -> bytes:
    """A Format B image per blob_structure.txt v2, assembled independently of image.build."""
    header = struct.pack("<HH8sII", 0x200, 0, b"TDX-BLOB", 1, len(module) // PAGE_SIZE)
    image = bytearray(header.ljust(0x1000, b"\0") + sigstruct.ljust(0x1000, b"\0") + module)
    image[2:4] = ((0x10000 - word_sum(bytes(image))) & 0xFFFF).to_bytes(2, "little")
    return bytes(image)


def failed(image: bytes, **kwargs: object) -> set[str]:
    kwargs.setdefault("trusted_signers", trusted_signers())
    return {c.name for c in verify(image, **kwargs).failed}  # type: ignore[arg-type]


def sigstruct_for(module: bytes, **kwargs: object) -> bytes:
    key = test_key()
    kwargs.setdefault("cpuid_table", (0x806F8,))
    return make_sigstruct(module=module, modulus=key.modulus_le(), sign=key.sign, **kwargs)  # type: ignore[arg-type]


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
def test_valid_image_passes_every_check_in_order(fmt: int) -> None:
    image = make_image("1.5.06", fmt=fmt, cpuids=(0x806F8, 0xC06F0))
    v = verify(image, trusted_signers=trusted_signers(), expected_version=Version(1, 5, 6))
    assert [c.name for c in v.checks] == list(CHECK_NAMES)
    assert v.ok
    assert v.failed == ()
    assert v.check("cpuid-table").detail == "supports 0x806f8, 0xc06f0"
    assert v.check("version").detail == "sigstruct carries 1.5.06, as expected"
    assert v.check("debug").detail == "production-signed (module_type 0x00000000)"
    assert v.check("trusted-signer").detail == f"signed by {test_key().fingerprint} (a trusted key)"
    name = "Format A (0x100)" if fmt == FORMAT_A else "Format B (0x200)"
    assert v.check("container").detail == (f"{name}, 16384 bytes: 1 sigstruct page, 2 module pages")
    info = v.info
    assert info is not None
    assert (info.format, info.size, info.module_offset, info.module_size) == (
        fmt,
        16384,
        0x2000,
        8192,
    )
    assert info.sigstruct_area_size == PAGE_SIZE
    assert info.checksum_field == int.from_bytes(image[2:4], "little")
    sig = info.sigstruct
    assert sig.version == Version(1, 5, 6)
    assert sig.seamsvn == 0x0106
    assert sig.cpuid_table == (0x806F8, 0xC06F0)
    assert sig.signer == test_key().fingerprint
    assert not sig.is_debug
    assert sig.seamhash == hashlib.sha384(module_bytes(Version(1, 5, 6), 2)).digest()


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


# --------------------------------------------------------------------------------------------
# One corruption, exactly the checks it targets

CONTAINER_MESSAGES: dict[str, str | dict[int, str]] = {
    "empty": "image is 0 bytes, too short to hold a header (4096 bytes)",
    "truncated-head": "image is 100 bytes, shorter than the smallest possible image (12288 "
    "bytes: header, sigstruct and module pages)",
    "truncated-page": {
        FORMAT_A: "header length is 16384 bytes, but the file is 12288 bytes",
        FORMAT_B: "file is 12288 bytes, but the header says 4096 × (1 + 1 + 2) = 16384 bytes",
    },
    "garbage": "not a TDX module image: no TDX-BLOB signature at offset 0x4 or 0x8",
    "wrong-magic": {
        FORMAT_A: "no TDX-BLOB signature at offset 0x8 (found b'TDX-BLOC') for the version "
        "field 0x0100",
        FORMAT_B: "no TDX-BLOB signature at offset 0x4 (found b'TDX-BLOC') for the version "
        "field 0x0200",
    },
    "unknown-format-version": {
        FORMAT_A: "version field is 0x0300, but the TDX-BLOB signature sits where Format A "
        "puts it, whose version is 0x0100",
        FORMAT_B: "version field is 0x0300, but the TDX-BLOB signature sits where Format B "
        "puts it, whose version is 0x0200",
    },
    "format-version-swapped": {
        FORMAT_A: "version field is 0x0200, but the TDX-BLOB signature sits where Format A "
        "puts it, whose version is 0x0100",
        FORMAT_B: "version field is 0x0100, but the TDX-BLOB signature sits where Format B "
        "puts it, whose version is 0x0200",
    },
    "reserved-nonzero": {
        FORMAT_A: "header reserved1 is not zero: byte 0x01 at offset 0x800",
        FORMAT_B: "header reserved is not zero: byte 0x01 at offset 0x800",
    },
    "sigstruct-padding-nonzero": "sigstruct padding is not zero: byte 0x01 at offset 0x1900",
    "a-offset-unaligned": "header offset_of_module is 0x2001, expected a multiple of 0x1000 "
    "above 0x1000",
    "a-offset-too-small": "header offset_of_module is 0x1000, expected a multiple of 0x1000 "
    "above 0x1000",
    "a-offset-beyond-file": "header offset_of_module is 0x4000, but the file ends at 0x4000: "
    "the module is empty",
    "a-length-mismatch": "header length is 20480 bytes, but the file is 16384 bytes",
    "a-reserved0-nonzero": "header reserved0 is not zero: byte 0x01 at offset 0x14",
    "a-module-not-page-multiple": "module is 8292 bytes, not a whole number of 4096-byte pages",
    "b-sigstruct-pages-zero": "header sigstruct_nr_pages is 0, expected 1 to 4",
    "b-size-mismatch": "file is 16384 bytes, but the header says 4096 × (1 + 1 + 3) = 20480 bytes",
    "b-module-pages-497": "header module_nr_pages is 497, expected 1 to 496",
    "b-odd-trailing-byte": "file is 16385 bytes, but the header says 4096 × (1 + 1 + 2) = "
    "16384 bytes",
    "sigstruct-header-type": "sigstruct header_type is 0x7, expected 0x6",
    "sigstruct-vendor": "sigstruct module_vendor is 0x8087, expected 0x8086",
    "sigstruct-exponent": "sigstruct exponent is 0x3, expected 0x10001",
    "cpuid-table-size-256": "sigstruct cpuid_table_size is 256, the table holds at most 255 "
    "entries",
}

TAMPER_CASES = [
    pytest.param(name, fmt, id=f"{name}-{'A' if fmt == FORMAT_A else 'B'}")
    for name, tamper in TAMPERS.items()
    for fmt in (FORMAT_A, FORMAT_B)
    if fmt in tamper.formats
]


@pytest.mark.parametrize(("name", "fmt"), TAMPER_CASES)
def test_corruption_fails_exactly_its_checks(name: str, fmt: int) -> None:
    tamper = TAMPERS[name]
    image = make_image(fmt=fmt, tamper=name)
    v = verify(image, trusted_signers=trusted_signers())
    assert [c.name for c in v.checks] == list(CHECK_NAMES)
    if tamper.targets == {"container"}:
        assert v.info is None
        assert {c.name for c in v.failed} == set(CHECK_NAMES) - {"checksum"}
        assert all(c.detail == NOT_CHECKED for c in v.checks[2:])
        expected = CONTAINER_MESSAGES[name]
        expected = expected if isinstance(expected, str) else expected[fmt]
        assert v.check("container").detail == expected
        # inspect() raises the same finding from the head alone.
        with pytest.raises(InvalidImage) as exc:
            inspect(image[:HEAD_SIZE], len(image))
        if name != "sigstruct-padding-nonzero" or fmt == FORMAT_A:
            assert (exc.value.check, exc.value.message) == ("container", expected)
    else:
        assert {c.name for c in v.failed} == tamper.targets
        assert v.info is not None


def test_every_container_tamper_has_its_message() -> None:
    container = {n for n, t in TAMPERS.items() if t.targets == {"container"}}
    assert container == set(CONTAINER_MESSAGES)


@FORMATS
def test_checksum_failure_names_the_sum_and_the_field(fmt: int) -> None:
    image = bytearray(make_image(fmt=fmt))
    field = int.from_bytes(image[2:4], "little")
    image[2:4] = ((field + 5) & 0xFFFF).to_bytes(2, "little")
    check = verify(bytes(image), trusted_signers=trusted_signers()).check("checksum")
    assert not check.ok
    assert check.detail == (
        f"checksum mismatch: the 16-bit word sum is 0x0005, must be 0x0000 (the checksum field "
        f"holds {(field + 5) & 0xFFFF:#06x}, {field:#06x} would balance it)"
    )


def test_checksum16_counts_an_odd_trailing_byte_as_a_low_byte() -> None:
    assert checksum16(b"\x01\x02\x03") == (0x0201 + 0x03)
    assert checksum16(b"") == 0
    assert checksum16(b"\xff\xff\x02\x00") == 0x0001  # wraps modulo 2^16


@given(st.binary(max_size=4099))
@settings(max_examples=150, deadline=None)
def test_checksum16_equals_the_reference_word_sum(data: bytes) -> None:
    assert checksum16(data) == word_sum(data)


@FORMATS
def test_seamhash_mismatch_names_both_digests(fmt: int) -> None:
    image = make_image(fmt=fmt, tamper="module-byte")
    v = verify(image, trusted_signers=trusted_signers())
    m = re.fullmatch(
        r"SEAMHASH mismatch: sigstruct says ([0-9a-f]{16,})…, module hashes to ([0-9a-f]{16,})…",
        v.check("seamhash").detail,
    )
    assert m is not None, v.check("seamhash").detail
    assert v.info is not None
    assert v.info.sigstruct.seamhash.hex().startswith(m.group(1))
    assert hashlib.sha384(image[0x2000:]).hexdigest().startswith(m.group(2))


def test_signature_mismatch_names_what_was_signed_and_what_is_there() -> None:
    image = make_image(tamper="signed-date-byte")
    v = verify(image, trusted_signers=trusted_signers())
    m = re.fullmatch(
        r"signature mismatch: the signature is over SHA-384 ([0-9a-f]{16,})…, the sigstruct "
        r"hashes to ([0-9a-f]{16,})…",
        v.check("signature").detail,
    )
    assert m is not None, v.check("signature").detail
    original = make_image()
    assert (
        hashlib.sha384(signed_message(original[SIG : SIG + 2048]))
        .hexdigest()
        .startswith(m.group(1))
    )
    assert (
        hashlib.sha384(signed_message(image[SIG : SIG + 2048])).hexdigest().startswith(m.group(2))
    )


def test_untrusted_signer_fails_only_trusted_signer() -> None:
    image = make_image(key=other_key())
    v = verify(image, trusted_signers=trusted_signers())
    assert {c.name for c in v.failed} == {"trusted-signer"}
    trusted = ", ".join(s[:8] + "…" for s in sorted(trusted_signers()))
    assert v.check("trusted-signer").detail == (
        f"signed by {other_key().fingerprint} which is not a trusted key (trusted: {trusted})"
    )


def test_trusted_signers_compare_case_insensitively() -> None:
    image = make_image(key=other_key())
    v = verify(image, trusted_signers=[f"  {other_key().fingerprint.upper()}\n"])
    assert v.ok


def test_renamed_image_fails_only_version() -> None:
    image = make_image("2.0.02", cpuids=(0xA06D0,))
    v = verify(image, trusted_signers=trusted_signers(), expected_version=Version(2, 0, 8))
    assert {c.name for c in v.failed} == {"version"}
    assert v.check("version").detail == (
        "version mismatch: the sigstruct carries 2.0.02, expected 2.0.08 (file name or mapping "
        "entry)"
    )


def test_image_without_version_bytes_passes_version_and_says_so() -> None:
    image = make_image("1.5.06", version_in_sigstruct=False)
    v = verify(image, trusted_signers=trusted_signers(), expected_version=Version(1, 5, 8))
    assert v.ok
    assert v.info is not None
    assert v.info.sigstruct.version is None
    assert v.check("version").detail == (
        "the image does not carry its version (sigstruct bytes 1000–1003 are zero); 1.5.08 "
        "cannot be cross-checked"
    )


def test_version_without_expectation_reports_what_the_image_carries() -> None:
    v = verify(make_image("2.0.08"), trusted_signers=trusted_signers())
    assert v.check("version") == Check(
        "version", True, "sigstruct carries 2.0.08; no expected version given"
    )


def test_version_bytes_are_update_minor_major() -> None:
    image = make_image("2.0.08")
    assert image[SIG + 1000 : SIG + 1004] == bytes.fromhex("08000002")


@FORMATS
def test_debug_image_fails_debug_unless_allowed(fmt: int) -> None:
    image = make_image(fmt=fmt, debug=True)
    v = verify(image, trusted_signers=trusted_signers())
    assert {c.name for c in v.failed} == {"debug"}
    assert v.check("debug").detail == (
        "debug-signed (module_type 0x80000000, bit 31 set) and debug modules are not allowed"
    )
    allowed = verify(image, trusted_signers=trusted_signers(), allow_debug=True)
    assert allowed.ok
    assert allowed.check("debug").detail == "debug-signed (module_type 0x80000000); debug allowed"


def test_allow_debug_does_not_add_trust() -> None:
    image = make_image(debug=True, key=other_key())
    assert failed(image, allow_debug=True) == {"trusted-signer"}


@pytest.mark.parametrize(
    ("cpuids", "detail"),
    [
        ((), "the cpuid table is empty: the module supports no CPU"),
        ((0x806F8, 0), "cpuid table entry 1 of 2 is 0, not a CPU signature"),
    ],
    ids=["empty", "zero-entry"],
)
def test_cpuid_table_must_list_cpus(cpuids: tuple[int, ...], detail: str) -> None:
    v = verify(make_image(cpuids=cpuids), trusted_signers=trusted_signers())
    assert {c.name for c in v.failed} == {"cpuid-table"}
    assert v.check("cpuid-table").detail == detail


def test_cpuid_table_of_255_entries_is_accepted() -> None:
    cpuids = tuple(0x806F0 + i for i in range(1, 256))
    v = verify(make_image(cpuids=cpuids), trusted_signers=trusted_signers())
    assert v.ok
    assert v.info is not None
    assert v.info.sigstruct.cpuid_table == cpuids


# --------------------------------------------------------------------------------------------
# Signature: pure-Python verifier against independently made signatures


def _forge(em: bytes, base: bytes | None = None) -> Sigstruct:
    """A sigstruct whose signature decodes to exactly ``em`` under the test key."""
    key = test_key().as_rsa_key()
    assert key.p is not None
    assert key.q is not None
    raw = bytearray(base or sigstruct_for(b"module"))
    m = int.from_bytes(em, "big")
    # Raw RSA (m^d mod n) by the CRT: no padding applied, the block is signed as given.
    s1, s2 = pow(m, key.d % (key.p - 1), key.p), pow(m, key.d % (key.q - 1), key.q)
    s = s2 + (pow(key.q, -1, key.p) * (s1 - s2) % key.p) * key.q
    raw[516:900] = s.to_bytes(384, "little")
    return Sigstruct.parse(bytes(raw))


def test_signature_made_by_cryptography_verifies() -> None:
    sig = Sigstruct.parse(sigstruct_for(b"module"))
    assert _compute_signature_check(sig).ok


def test_verifier_compares_the_whole_encoded_block() -> None:
    base = sigstruct_for(b"module")
    good = emsa_pkcs1_v15_sha384(signed_message(base), 384)
    assert _compute_signature_check(_forge(good, base)).ok
    digest = good[-48:]
    sha256_info = bytes.fromhex("3031300d060960864801650304020105000420")
    variants = {
        "block type 2": b"\x00\x02" + good[2:],
        "padding byte not FF": good[:10] + b"\xfe" + good[11:],
        # BERserk-style: shorter padding, garbage after the digest
        "garbage after digest": b"\x00\x01" + good[3:-48] + digest + b"\x00",
        "SHA-256 DigestInfo": b"\x00\x01"
        + b"\xff" * (384 - 3 - 19 - 32)
        + b"\x00"
        + sha256_info
        + digest[:32],
        "other digest": good[:-1] + bytes([good[-1] ^ 1]),
    }
    for name, em in variants.items():
        assert len(em) == 384, name
        assert not _compute_signature_check(_forge(em, base)).ok, name


@pytest.mark.parametrize("value", ["zero", "n", "n+1"])
def test_signature_out_of_range_is_refused(value: str) -> None:
    key = test_key()
    raw = bytearray(sigstruct_for(b"module"))
    s = {"zero": 0, "n": key.n, "n+1": key.n + 1}[value]
    raw[516:900] = s.to_bytes(384, "little")
    sig = Sigstruct.parse(bytes(raw))
    assert not _compute_signature_check(sig).ok


def test_short_modulus_is_refused() -> None:
    raw = bytearray(sigstruct_for(b"module"))
    raw[128 + 383] = 0  # top byte of the little-endian modulus
    image = build(bytes(raw), b"module", FORMAT_B)
    v = verify(image, trusted_signers={Sigstruct.parse(bytes(raw)).signer})
    assert {c.name for c in v.failed} == {"signature"}
    assert v.check("signature").detail == (
        "signature cannot be checked: the modulus is not an odd 3072-bit number or the "
        "signature value is not below it"
    )


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


# --------------------------------------------------------------------------------------------
# Properties


@functools.cache
def _valid_images() -> tuple[bytes, bytes]:
    return make_image(fmt=FORMAT_A), make_image("2.0.08", fmt=FORMAT_B, cpuids=(0xA06D0,))


# Edits concentrated on the bytes the parser reads: header fields, sigstruct header and the
# cpuid table size, plus anywhere in the head.
_interesting = st.one_of(
    st.integers(0, 0x20),
    st.integers(SIG, SIG + 40),
    st.integers(SIG + 1020, SIG + 1032),
    st.integers(0, HEAD_SIZE - 1),
)
_edits = st.lists(st.tuples(_interesting, st.integers(0, 255)), max_size=6)


def _edited(base: bytes, edits: list[tuple[int, int]], cut: int | None) -> bytes:
    data = bytearray(base)
    for pos, value in edits:
        data[pos] = value
    return bytes(data if cut is None else data[:cut])


@given(
    which=st.integers(0, 1),
    edits=_edits,
    size=st.one_of(st.integers(0, 2 * MAX_IMAGE_SIZE), st.sampled_from([12288, 16384])),
)
@settings(max_examples=150, deadline=None)
def test_inspect_raises_only_invalid_image(
    which: int, edits: list[tuple[int, int]], size: int
) -> None:
    data = _edited(_valid_images()[which], edits, None)
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


@given(
    which=st.integers(0, 1),
    edits=_edits,
    cut=st.one_of(st.none(), st.integers(0, 20000)),
)
@settings(max_examples=200, deadline=None)
def test_verify_never_raises(which: int, edits: list[tuple[int, int]], cut: int | None) -> None:
    v = verify(_edited(_valid_images()[which], edits, cut), trusted_signers=trusted_signers())
    assert [c.name for c in v.checks] == list(CHECK_NAMES)
    assert (v.info is None) == (not v.checks[0].ok)


@given(st.binary(max_size=3 * PAGE_SIZE + 8))
@settings(max_examples=150, deadline=None)
def test_verify_of_random_bytes_never_raises(data: bytes) -> None:
    v = verify(data, trusted_signers=())
    assert not v.ok


@given(which=st.integers(0, 1), pos=st.integers(0, 16383), xor=st.integers(1, 255))
@settings(max_examples=200, deadline=None)
def test_any_single_byte_change_fails_at_least_the_checksum(which: int, pos: int, xor: int) -> None:
    data = bytearray(_valid_images()[which])
    data[pos] ^= xor
    v = verify(bytes(data), trusted_signers=trusted_signers())
    assert "checksum" in {c.name for c in v.failed}


@given(which=st.integers(0, 1), pos=st.integers(0, 16383), xor=st.integers(1, 255))
@settings(max_examples=200, deadline=None)
def test_single_byte_change_with_checksum_fixed_fails_another_check(
    which: int, pos: int, xor: int
) -> None:
    data = bytearray(_valid_images()[which])
    data[pos] ^= xor
    fix_checksum(data)
    names = {c.name for c in verify(bytes(data), trusted_signers=trusted_signers()).failed}
    if pos in (2, 3):  # the checksum field itself: the fix-up restores the original image
        assert bytes(data) == _valid_images()[which]
        assert names == set()
    else:
        assert names - {"checksum"}, f"byte {pos:#x} ^ {xor:#x} went unnoticed"


def _sigstruct_probe_offsets() -> list[int]:
    """First, middle and last byte of every declared sigstruct field and of every gap between
    them (the undeclared body fields: attributes, page counts, handoff versions…)."""
    spans, at = [], 0
    for f in sorted(SIGSTRUCT_LAYOUT.values(), key=lambda f: f.offset):
        if f.offset > at:
            spans.append((at, f.offset))
        spans.append((f.offset, f.offset + f.size))
        at = f.offset + f.size
    spans.append((at, SIGSTRUCT_SIZE))
    return sorted({p for a, b in spans if b > a for p in (a, (a + b) // 2, b - 1)})


def test_every_sigstruct_field_is_covered_beyond_the_checksum() -> None:
    # The sigstruct sits at the same offset in both formats: no field and no gap may be left
    # unsigned and unchecked (the random single-byte property test covers the bytes between).
    base = make_image(fmt=FORMAT_B)
    offsets = _sigstruct_probe_offsets()
    assert {0, 127, 128, 511, 512, 515, 516, 899, 900, 999, 1000, 1027, 1028, 2047} <= set(offsets)
    unnoticed = []
    for pos in offsets:
        data = bytearray(base)
        data[SIG + pos] ^= 0x01
        fix_checksum(data)
        if not failed(bytes(data)) - {"checksum"}:
            unnoticed.append(pos)
    assert unnoticed == []


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
