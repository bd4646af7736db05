"""Writing TDX module images: assembling one from its parts, converting between formats.

The layouts and the parsing rules are :mod:`tdxupdate.image`'s; this module writes bytes in
those layouts and does no I/O. :func:`convert` is what ``--update`` sends when the kernel takes
the other format (:meth:`tdxupdate.imagecheck.VerifiedImage.payload`); :func:`build` and
:func:`make_sigstruct` also let the emulator and the tests forge images signed with their own
key, including broken ones (no validation of the parts).
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence
from typing import Protocol

from tdxupdate.errors import InvalidImage
from tdxupdate.image import (
    FORMAT_A,
    FORMAT_A_HEADER,
    FORMAT_B,
    FORMAT_B_HEADER,
    FORMAT_NAMES,
    MAGIC,
    MAX_CPUID_ENTRIES,
    PAGE_SIZE,
    RSA_KEY_BYTES,
    SIGSTRUCT_CONSTANTS,
    SIGSTRUCT_LAYOUT,
    SIGSTRUCT_SIZE,
    checksum16,
    inspect_image,
    signed_message,
)
from tdxupdate.versions import Version


class SigningKey(Protocol):
    """What :func:`make_sigstruct` signs with: an RSA-3072 key (:class:`tdxupdate.signing.RsaKey`
    or a test's own)."""

    def modulus_le(self) -> bytes:
        """The 384 modulus bytes as a sigstruct stores them (little-endian)."""
        ...

    def sign(self, message: bytes) -> int:
        """The RSA signature integer over ``message`` (EMSA-PKCS1-v1_5 SHA-384, to d mod n)."""
        ...


def _set_checksum(image: bytearray) -> bytearray:
    image[2:4] = b"\0\0"
    image[2:4] = ((0x10000 - checksum16(image)) & 0xFFFF).to_bytes(2, "little")
    return image


def _pad(data: bytes, multiple: int = PAGE_SIZE) -> bytes:
    return bytes(data) + b"\0" * (-len(data) % multiple)


def build(sigstruct: bytes, module: bytes | memoryview, fmt: int) -> bytes:
    """Assemble an image: header, sigstruct padded to one page, module padded to whole pages,
    checksum. No validation of the parts, so tests can forge broken images with it; Format A
    uses the published layout (offset_of_module 0x2000)."""
    if len(sigstruct) > PAGE_SIZE:
        raise ValueError(f"sigstruct is {len(sigstruct)} bytes, more than one page")
    module_area = len(module) + (-len(module) % PAGE_SIZE)
    # One buffer of the final size, filled in place: the image is copied once, not per part.
    out = bytearray(2 * PAGE_SIZE + module_area)
    header = out  # the header fields all lie in the first page
    if fmt == FORMAT_A:
        layout = FORMAT_A_HEADER
        layout["offset_of_module"].write(header, 2 * PAGE_SIZE)
        layout["length"].write(header, len(out))
    elif fmt == FORMAT_B:
        layout = FORMAT_B_HEADER
        layout["sigstruct_nr_pages"].write(header, 1)
        layout["module_nr_pages"].write(header, module_area // PAGE_SIZE)
    else:
        raise ValueError(f"unknown image format {fmt:#x}")
    layout["version"].write(header, fmt)
    layout["signature"].write(header, MAGIC)
    out[PAGE_SIZE : PAGE_SIZE + len(sigstruct)] = sigstruct
    out[2 * PAGE_SIZE : 2 * PAGE_SIZE + len(module)] = module
    return bytes(_set_checksum(out))


def convert(data: bytes | bytearray | memoryview, fmt: int) -> bytes:
    """Rewrite an image in format ``fmt`` (image-formats.md §1 "Conversion").

    The sigstruct (its 2048 bytes) and the module pages are copied unchanged, so SEAMHASH and
    the signature still verify; the header is rebuilt and the checksum recomputed. A→B gives a
    one-page sigstruct area, B→A offset_of_module 0x2000, so images in the published layout
    round-trip byte-exactly. The input must be a valid container with a valid checksum
    (InvalidImage otherwise): a conversion must never turn a damaged image into one whose new
    checksum hides the damage. The same format returns the input unchanged.
    """
    if fmt not in FORMAT_NAMES:
        raise ValueError(f"unknown image format {fmt:#x}")
    view = memoryview(data).cast("B")
    info = inspect_image(view)
    if (total := checksum16(view)) != 0:
        raise InvalidImage(
            f"16-bit word sum is {total:#06x}, must be 0x0000: refusing to convert a damaged image",
            check="checksum",
        )
    if info.format == fmt:
        return data if isinstance(data, bytes) else bytes(view)
    return build(info.sigstruct.raw, view[info.module_offset :], fmt)


def make_sigstruct(
    *,
    module: bytes,
    key: SigningKey,
    cpuid_table: Sequence[int],
    version: Version | None = None,
    module_type: int = 0,
    date: int = 0x20250101,
    seamsvn: int = 0x0100,
    exponent: int = 65537,
) -> bytes:
    """A signed 2048-byte sigstruct for ``module`` (image-formats.md §3).

    ``key.modulus_le()`` is the 384-byte little-endian modulus as stored; ``key.sign(message)``
    returns the RSA signature integer (EMSA-PKCS1-v1_5 SHA-384 of ``message``, raised to d mod
    n): one key gives both, so the modulus stored is always the one that signed. SEAMHASH is
    computed over ``module`` padded to whole pages, the bytes :func:`build` stores.
    """
    modulus = key.modulus_le()
    if len(modulus) != RSA_KEY_BYTES:
        raise ValueError(f"modulus is {len(modulus)} bytes, expected {RSA_KEY_BYTES}")
    if len(cpuid_table) > MAX_CPUID_ENTRIES:
        raise ValueError(f"{len(cpuid_table)} cpuid entries, at most {MAX_CPUID_ENTRIES} fit")
    raw = bytearray(SIGSTRUCT_SIZE)
    s = SIGSTRUCT_LAYOUT
    for name, value in SIGSTRUCT_CONSTANTS.items():
        s[name].write(raw, value)
    s["exponent"].write(raw, exponent)
    s["module_type"].write(raw, module_type)
    s["date"].write(raw, date)
    s["modulus"].write(raw, bytes(modulus))
    s["seamhash"].write(raw, hashlib.sha384(_pad(module)).digest())
    s["seamsvn"].write(raw, seamsvn)
    if version is not None:
        s["version"].write(raw, struct.pack("<HBB", version.update, version.minor, version.major))
    s["cpuid_table_size"].write(raw, len(cpuid_table))
    table = struct.pack(f"<{len(cpuid_table)}I", *cpuid_table)
    s["cpuid_table"].write(raw, table.ljust(4 * MAX_CPUID_ENTRIES, b"\0"))
    signature = key.sign(signed_message(bytes(raw)))
    s["signature"].write(raw, signature.to_bytes(RSA_KEY_BYTES, "little"))
    return bytes(raw)


__all__ = ["SigningKey", "build", "convert", "make_sigstruct"]
