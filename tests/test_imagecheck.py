"""tdxupdate.imagecheck: the checks of image-formats.md §4, one corruption at a time, the
pure-Python signature verifier and the properties of verify()."""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
from pathlib import Path

import pytest
from factories.blobs import EDITS, edited, failed, sigstruct_for, valid_images
from factories.hosts import build_host_tree
from factories.images import (
    SIG,
    TAMPERS,
    Release,
    fix_checksum,
    make_image,
    mapping_document,
    module_bytes,
    other_key,
    test_key,
    trusted_signers,
    write_repo,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from tdxupdate.errors import InvalidImage
from tdxupdate.image import (
    FORMAT_A,
    FORMAT_B,
    HEAD_SIZE,
    PAGE_SIZE,
    SIGSTRUCT_LAYOUT,
    SIGSTRUCT_SIZE,
    Sigstruct,
    inspect,
    signed_message,
)
from tdxupdate.imagebuild import build
from tdxupdate.imagecheck import CHECK_NAMES, Check, _compute_signature_check, verify
from tdxupdate.signing import emsa_pkcs1_v15_sha384
from tdxupdate.versions import Version

FORMATS = pytest.mark.parametrize("fmt", [FORMAT_A, FORMAT_B], ids=["A", "B"])
NOT_CHECKED = "not checked: the container is invalid"


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
# Properties


@given(
    which=st.integers(0, 1),
    edits=EDITS,
    cut=st.one_of(st.none(), st.integers(0, 20000)),
)
@settings(max_examples=200, deadline=None)
def test_verify_never_raises(which: int, edits: list[tuple[int, int]], cut: int | None) -> None:
    v = verify(edited(valid_images()[which], edits, cut), trusted_signers=trusted_signers())
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
    data = bytearray(valid_images()[which])
    data[pos] ^= xor
    v = verify(bytes(data), trusted_signers=trusted_signers())
    assert "checksum" in {c.name for c in v.failed}


@given(which=st.integers(0, 1), pos=st.integers(0, 16383), xor=st.integers(1, 255))
@settings(max_examples=200, deadline=None)
def test_single_byte_change_with_checksum_fixed_fails_another_check(
    which: int, pos: int, xor: int
) -> None:
    data = bytearray(valid_images()[which])
    data[pos] ^= xor
    fix_checksum(data)
    names = {c.name for c in verify(bytes(data), trusted_signers=trusted_signers()).failed}
    if pos in (2, 3):  # the checksum field itself: the fix-up restores the original image
        assert bytes(data) == valid_images()[which]
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


def test_a_listing_never_loads_the_image_writer(tmp_path: Path) -> None:
    # VerifiedImage.payload imports imagebuild when an update converts; --list never does.
    root = build_host_tree(tmp_path / "h")
    images = {"1.5.08": make_image("1.5.08", fmt=FORMAT_A)}
    releases = [Release("1.5.08", min_seamldr_versions=("1.5.00",))]
    repo = write_repo(tmp_path / "repo", images, mapping_document(releases))
    keys = tmp_path / "keys"
    keys.write_text(test_key().fingerprint + "\n")
    code = (
        "import sys\n"
        "from tdxupdate.cli import main\n"
        f"rc = main(['--list', '--sysroot', {str(root)!r}, '--repo', {str(repo)!r},"
        f" '--trusted-keys', {str(keys)!r}, '--cache-dir', {str(tmp_path / 'cache')!r}])\n"
        "assert rc == 0, rc\n"
        "assert 'tdxupdate.imagecheck' in sys.modules\n"
        "assert 'tdxupdate.imagebuild' not in sys.modules, 'imported'\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
