"""The checks of image-formats.md §4 over a TDX module image, and the verified image.

The layout and its parsing are :mod:`tdxupdate.image`'s; this module judges. Everything here
works on bytes and does no I/O.

* :func:`header_checks` runs the checks that need only a parsed head
  (:func:`tdxupdate.image.inspect`): signature, trusted-signer, version, debug, cpuid-table.
* :func:`verify` runs every check of §4 over a whole image (one checksum pass, one SHA-384 pass)
  and never raises; the result lists the checks in :data:`CHECK_NAMES` order.
* :func:`verify_image` keeps that verdict with the bytes it judged: the
  :class:`VerifiedImage` is the only value ``--update`` streams.

The signature is RSA-3072 PKCS#1 v1.5 over SHA-384 (§4.3; the encoding is
:func:`tdxupdate.signing.emsa_pkcs1_v15_sha384`); the signer is the SHA-256 of the modulus
(§4.4), trusted when the caller's list holds it (:mod:`tdxupdate.keyring`: Intel's production
key and ``--trusted-keys``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection
from dataclasses import dataclass

from tdxupdate import verdicts
from tdxupdate.errors import InvalidImage
from tdxupdate.image import (
    FORMAT_A_HEADER,
    FORMAT_NAMES,
    RSA_KEY_BYTES,
    ImageInfo,
    Sigstruct,
    checksum16,
    inspect_image,
    remember,
    signed_message,
)
from tdxupdate.signing import emsa_pkcs1_v15_sha384
from tdxupdate.versions import Version

INTEL_PRODUCTION_SIGNER = "c821f41f83e0dc73e272852ffc176bcd9ae1e93a4fccec88772c9b4ff2eaa75f"
CHECK_NAMES = (
    "container",
    "checksum",
    "seamhash",
    "signature",
    "trusted-signer",
    "version",
    "debug",
    "cpuid-table",
)


def _hex(value: int, width: int = 0) -> str:
    return f"0x{value:0{width}x}"


def _short(digest_hex: str, other_hex: str = "", n: int = 16) -> str:
    """Abbreviate a hex digest, long enough to show where it differs from ``other_hex``."""
    if other_hex:
        common = next(
            (i for i, (a, b) in enumerate(zip(digest_hex, other_hex, strict=False)) if a != b),
            min(len(digest_hex), len(other_hex)),
        )
        n = max(n, common + 4)
    return digest_hex if len(digest_hex) <= n else digest_hex[:n] + "…"


def _pages(n: int, what: str) -> str:
    return f"{n} {what} page" + ("" if n == 1 else "s")


@dataclass(frozen=True)
class Check:
    """One check of §4: its name (one of :data:`CHECK_NAMES`), verdict and the reason shown."""

    name: str
    ok: bool
    detail: str


@dataclass(frozen=True)
class Verification:
    """Every check of one image, and what its container holds when it could be parsed."""

    info: ImageInfo | None  # None when the container could not be parsed
    checks: tuple[Check, ...]  # in CHECK_NAMES order

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    @property
    def failed(self) -> tuple[Check, ...]:
        return tuple(c for c in self.checks if not c.ok)

    def check(self, name: str) -> Check:
        for c in self.checks:
            if c.name == name:
                return c
        raise KeyError(name)


#: Signature verdicts kept by the digest of the exact sigstruct they judge: a second look at the
#: same bytes in one process reuses the verdict, and different bytes (an image replaced between
#: two reads) never meet it. Bounded; cleared when full.
_SIGNATURE_CHECKS_LIMIT = 8192
_signature_checks: dict[bytes, Check] = {}


def _decode_signature(sig: Sigstruct) -> bytes | None:
    """``sig^e mod n`` as the 384-byte big-endian encoded block, None if it cannot be computed."""
    n = int.from_bytes(sig.modulus, "little")
    s = int.from_bytes(sig.signature, "little")
    # A modulus with a zero top byte would make the block shorter than 384 bytes; P-SEAMLDR
    # keys are full RSA-3072, so anything else is refused rather than reinterpreted.
    if n.bit_length() <= 8 * (RSA_KEY_BYTES - 1) or n % 2 == 0 or not 0 < s < n:
        return None
    return pow(s, sig.exponent, n).to_bytes(RSA_KEY_BYTES, "big")


def _expected_block(sig: Sigstruct) -> bytes:
    return emsa_pkcs1_v15_sha384(signed_message(sig.raw), RSA_KEY_BYTES)


def _signature_check(sig: Sigstruct, *, reuse_verdicts: bool = True) -> Check:
    """The RSA verdict on one sigstruct; computed once per distinct sigstruct per process.

    While listing, a success :mod:`tdxupdate.verdicts` holds for these exact sigstruct bytes
    (modulus and signature included) stands in for the computation. Such a verdict is never put
    in the process memo: only a computed verdict is, so whatever runs after the listing in this
    process (``--update``'s full verification) computes its own.
    """
    key = hashlib.sha384(sig.raw).digest()
    check = _signature_checks.get(key)
    if check is not None:
        return check
    store = verdicts.current() if reuse_verdicts else None
    if store is not None and store.known("signature", sig.raw, sig.modulus, sig.signature):
        return _signature_ok(_expected_block(sig))
    check = _compute_signature_check(sig)
    remember(_signature_checks, key, check, _SIGNATURE_CHECKS_LIMIT)
    if store is not None and check.ok:
        store.add("signature", sig.raw, sig.modulus, sig.signature)
    return check


def _signature_ok(expected: bytes) -> Check:
    message_digest = expected[-48:].hex()  # SHA-384 of signed_message()
    return Check(
        "signature",
        True,
        f"RSA-3072 PKCS#1 v1.5 SHA-384 signature verifies over the sigstruct "
        f"(SHA-384 {_short(message_digest)})",
    )


def _compute_signature_check(sig: Sigstruct) -> Check:
    expected = _expected_block(sig)
    message_digest = expected[-48:].hex()  # SHA-384 of signed_message()
    em = _decode_signature(sig)
    if em == expected:
        return _signature_ok(expected)
    if em is None:
        detail = (
            "signature cannot be checked: the modulus is not an odd 3072-bit number or the "
            "signature value is not below it"
        )
    elif em[:-48] == expected[:-48]:
        # A well-formed block over another message: show both digests.
        signed_digest = em[-48:].hex()
        detail = (
            f"signature mismatch: the signature is over SHA-384 "
            f"{_short(signed_digest, message_digest)}, the sigstruct hashes to "
            f"{_short(message_digest, signed_digest)}"
        )
    else:
        detail = (
            "signature mismatch: it does not decode to a PKCS#1 v1.5 SHA-384 block under "
            f"the sigstruct's modulus (signer {_short(sig.signer)}); the sigstruct hashes to "
            f"{_short(message_digest)}"
        )
    return Check("signature", False, detail)


def _normalise_signers(trusted_signers: Collection[str]) -> frozenset[str]:
    return frozenset(s.strip().lower() for s in trusted_signers)


def _trusted_signer_check(sig: Sigstruct, trusted: frozenset[str]) -> Check:
    signer = sig.signer
    if signer in trusted:
        who = "Intel's production key" if signer == INTEL_PRODUCTION_SIGNER else "a trusted key"
        return Check("trusted-signer", True, f"signed by {signer} ({who})")
    known = ", ".join(_short(s, n=8) for s in sorted(trusted)) or "none"
    return Check(
        "trusted-signer",
        False,
        f"signed by {signer} which is not a trusted key (trusted: {known})",
    )


def _version_check(sig: Sigstruct, expected: Version | None) -> Check:
    carried = sig.version
    if carried is None:
        against = f"; {expected} cannot be cross-checked" if expected is not None else ""
        return Check(
            "version",
            True,
            f"the image does not carry its version (sigstruct bytes 1000–1003 are zero){against}",
        )
    if expected is None:
        return Check("version", True, f"sigstruct carries {carried}; no expected version given")
    if carried != expected:
        return Check(
            "version",
            False,
            f"version mismatch: the sigstruct carries {carried}, expected {expected} "
            "(file name or mapping entry)",
        )
    return Check("version", True, f"sigstruct carries {carried}, as expected")


def _debug_check(sig: Sigstruct, allow_debug: bool) -> Check:
    module_type = _hex(sig.module_type, 8)
    if not sig.is_debug:
        return Check("debug", True, f"production-signed (module_type {module_type})")
    if allow_debug:
        return Check("debug", True, f"debug-signed (module_type {module_type}); debug allowed")
    return Check(
        "debug",
        False,
        f"debug-signed (module_type {module_type}, bit 31 set) and debug modules are not allowed",
    )


def _cpuid_table_check(sig: Sigstruct) -> Check:
    table = sig.cpuid_table
    if not table:
        return Check("cpuid-table", False, "the cpuid table is empty: the module supports no CPU")
    zero = [i for i, value in enumerate(table) if value == 0]
    if zero:
        return Check(
            "cpuid-table",
            False,
            f"cpuid table entry {zero[0]} of {len(table)} is 0, not a CPU signature",
        )
    return Check("cpuid-table", True, "supports " + ", ".join(_hex(v) for v in table))


def _checksum_check(view: memoryview) -> Check:
    total = checksum16(view)
    field = FORMAT_A_HEADER["checksum"].read_int(view)  # at offset 2 in both formats
    if total == 0:
        return Check("checksum", True, f"16-bit word sum is 0 (checksum field {_hex(field, 4)})")
    return Check(
        "checksum",
        False,
        f"checksum mismatch: the 16-bit word sum is {_hex(total, 4)}, must be 0x0000 (the "
        f"checksum field holds {_hex(field, 4)}, {_hex((field - total) & 0xFFFF, 4)} would "
        "balance it)",
    )


def header_checks(
    info: ImageInfo,
    *,
    trusted_signers: Collection[str],
    allow_debug: bool,
    expected_version: Version | None,
    reuse_verdicts: bool = True,
) -> tuple[Check, ...]:
    """The checks computable from the head alone, in CHECK_NAMES order:
    signature, trusted-signer, version, debug, cpuid-table.

    ``reuse_verdicts`` False computes the signature whatever :mod:`tdxupdate.verdicts` holds
    (:func:`verify` always does)."""
    sig = info.sigstruct
    return (
        _signature_check(sig, reuse_verdicts=reuse_verdicts),
        _trusted_signer_check(sig, _normalise_signers(trusted_signers)),
        _version_check(sig, expected_version),
        _debug_check(sig, allow_debug),
        _cpuid_table_check(sig),
    )


def verify(
    data: bytes | bytearray | memoryview,
    *,
    trusted_signers: Collection[str],
    allow_debug: bool = False,
    expected_version: Version | None = None,
) -> Verification:
    """Every check of image-formats.md §4 over a whole image; never raises.

    The data is read once for the checksum and once for SEAMHASH (the module pages only).
    Checks that need a parsed container are reported failed as "not checked" when the
    container is invalid.
    """
    view = memoryview(data).cast("B")
    checksum = _checksum_check(view)
    try:
        info = inspect_image(view)
    except InvalidImage as exc:
        skipped = tuple(
            Check(name, False, "not checked: the container is invalid") for name in CHECK_NAMES[2:]
        )
        return Verification(None, (Check("container", False, exc.message), checksum, *skipped))

    container = Check(
        "container",
        True,
        f"{FORMAT_NAMES[info.format]}, {info.size} bytes: "
        f"{_pages(info.sigstruct_pages, 'sigstruct')}, {_pages(info.module_pages, 'module')}",
    )
    module = view[info.module_offset :]
    actual = hashlib.sha384(module).hexdigest()
    stored = info.sigstruct.seamhash.hex()
    if actual == stored:
        seamhash = Check(
            "seamhash",
            True,
            f"SEAMHASH {_short(stored)} matches the {info.module_pages} module pages",
        )
    else:
        seamhash = Check(
            "seamhash",
            False,
            f"SEAMHASH mismatch: sigstruct says {_short(stored, actual)}, module hashes to "
            f"{_short(actual, stored)}",
        )
    rest = header_checks(
        info,
        trusted_signers=trusted_signers,
        allow_debug=allow_debug,
        expected_version=expected_version,
        reuse_verdicts=False,  # a whole image is judged from its own bytes, always
    )
    return Verification(info, (container, checksum, seamhash, *rest))


@dataclass(frozen=True)
class VerifiedImage:
    """One image read once, every check of §4 run on that one buffer.

    This is the only value ``--update`` streams: its policy facts (cpuid table, debug bit,
    SEAMSVN, MRSEAM, signer) come from :attr:`verification`, computed on :attr:`data`, and
    :meth:`payload` converts those same bytes without parsing them again.
    """

    data: bytes
    verification: Verification
    sha256: str
    location: str

    @property
    def ok(self) -> bool:
        return self.verification.ok

    @property
    def info(self) -> ImageInfo:
        if self.verification.info is None:
            raise InvalidImage(f"{self.location}: the container is invalid")
        return self.verification.info

    @property
    def mrseam(self) -> str | None:
        """SHA-384 of the module pages (hex), when the SEAMHASH check found them to match."""
        if self.verification.info is None or not self.verification.check("seamhash").ok:
            return None
        return self.verification.info.sigstruct.seamhash.hex()

    def payload(self, fmt: int) -> bytes:
        """The bytes to send in format ``fmt``: :attr:`data` itself, or its conversion."""
        if not self.ok:
            raise InvalidImage(f"{self.location}: refusing to send an image that failed checks")
        info = self.info
        if info.format == fmt:
            return self.data
        if fmt not in FORMAT_NAMES:
            raise ValueError(f"unknown image format {fmt:#x}")
        from tdxupdate.imagebuild import build  # --update only: a listing never converts

        return build(info.sigstruct.raw, memoryview(self.data)[info.module_offset :], fmt)


def verify_image(
    data: bytes,
    *,
    location: str,
    trusted_signers: Collection[str],
    allow_debug: bool = False,
    expected_version: Version | None = None,
) -> VerifiedImage:
    """:func:`verify` over ``data``, kept with the bytes it judged and their SHA-256."""
    data = bytes(data)
    verification = verify(
        data,
        trusted_signers=trusted_signers,
        allow_debug=allow_debug,
        expected_version=expected_version,
    )
    return VerifiedImage(data, verification, hashlib.sha256(data).hexdigest(), location)


__all__ = [
    "CHECK_NAMES",
    "INTEL_PRODUCTION_SIGNER",
    "Check",
    "Verification",
    "VerifiedImage",
    "header_checks",
    "verify",
    "verify_image",
]
