"""The kernel's own image header checks, per kernel series (kernel-abi.md §4).

The kernel validates only the container fields it consumes and hands the sigstruct and module
pages to P-SEAMLDR unchecked. Every rejection here happens before ``stop_machine`` and the
shutdown, so it is harmless: the driver returns EINVAL, reported as
``transferring:firmware-invalid``, and the old module keeps running.

Checks per series (the order is the kernel's where known; the first failure is reported):

* v1–v3 (Format A): version 0x100; reserved fields zero; sigstruct area > 0; module > 0;
  ``length`` == size; magic; 16-bit checksum 0; offset and sizes 4 KiB aligned; module <= 496
  pages; v1/v2 want a sigstruct area of exactly 4096 bytes, v3 at most 4 pages.
* v4: as v3 without the checksum.
* v5/v6: as v4 without the alignment checks.
* v7: size > 4096 and > offset; version; reserved; ``length``; magic; module <= 496 pages;
  sigstruct <= 4 pages; everything 4 KiB aligned.
* v8: size > 4096; magic; 4096 < offset < size, offset aligned; version; reserved. No
  ``length`` check; page counts rounded down and clamped to 4 / 496.
* v9, v10, ml (Format B only): size >= 4096; 4096 * (1 + sig + mod) == size; version 0x200;
  sig <= 1 and mod <= 496; magic; reserved bytes zero.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from tdxupdate.image import checksum16

PAGE = 4096
MAGIC = b"TDX-BLOB"
MAX_MODULE_PAGES = 496
MAX_SIG_PAGES_A = 4
MAX_SIG_PAGES_B = 1


class ImageRejected(Exception):
    """The kernel refused the header (EINVAL, before any SEAMCALL)."""


@dataclass(frozen=True)
class KernelImage:
    """What the kernel hands to P-SEAMLDR: the container format, sigstruct and module pages."""

    format: int
    sigstruct_area: bytes
    module: bytes


def _pages(nbytes: int) -> int:
    return -(-nbytes // PAGE)


def parse_for_kernel(series: str, image: bytes) -> KernelImage:
    """Apply ``series``' header checks; ImageRejected(reason) when the kernel would refuse."""
    if series in ("v9", "v10", "ml"):
        return _format_b(image)
    return _format_a(series, image)


def _format_a(series: str, image: bytes) -> KernelImage:
    size = len(image)
    if size < PAGE:
        raise ImageRejected(f"image is {size} bytes, smaller than the 4096-byte header")
    version, _checksum, offset = struct.unpack_from("<HHI", image, 0)
    magic = image[8:16]
    length, reserved0 = struct.unpack_from("<II", image, 16)
    reserved_ok = reserved0 == 0 and not any(image[0x18:PAGE])
    sig_size = offset - PAGE
    module_size = size - offset

    if series == "v8":
        if size <= PAGE:
            raise ImageRejected("image is not larger than its header")
        if magic != MAGIC:
            raise ImageRejected(f"signature at offset 8 is {magic!r}, not TDX-BLOB")
        if not PAGE < offset < size or offset % PAGE:
            raise ImageRejected(f"offset_of_module {offset:#x} is out of range or unaligned")
        if version != 0x100:
            raise ImageRejected(f"version {version:#x} is not 0x100")
        if not reserved_ok:
            raise ImageRejected("reserved header bytes are not zero")
        sig_pages = min(sig_size // PAGE, MAX_SIG_PAGES_A)
        mod_pages = min(module_size // PAGE, MAX_MODULE_PAGES)
        return KernelImage(
            0x100, image[PAGE : PAGE + sig_pages * PAGE], image[offset : offset + mod_pages * PAGE]
        )

    aligned = series in ("v1", "v2", "v3", "v4", "v7")
    if series == "v7" and (size <= PAGE or size <= offset):
        raise ImageRejected(f"image size {size} is not larger than the header and offset")
    if version != 0x100:
        raise ImageRejected(f"version {version:#x} is not 0x100")
    if not reserved_ok:
        raise ImageRejected("reserved header bytes are not zero")
    if series != "v7":
        if sig_size <= 0:
            raise ImageRejected(f"offset_of_module {offset:#x} leaves no room for a sigstruct")
        if module_size <= 0:
            raise ImageRejected(f"offset_of_module {offset:#x} leaves no module")
    if length != size:
        raise ImageRejected(f"length field {length} is not the image size {size}")
    if magic != MAGIC:
        raise ImageRejected(f"signature at offset 8 is {magic!r}, not TDX-BLOB")
    if series in ("v1", "v2", "v3") and checksum16(image) != 0:
        raise ImageRejected(f"16-bit checksum is {checksum16(image):#06x}, not 0")
    if aligned and (offset % PAGE or size % PAGE):
        raise ImageRejected("offset or size is not 4 KiB aligned")
    if _pages(module_size) > MAX_MODULE_PAGES:
        raise ImageRejected(f"module has {_pages(module_size)} pages, more than 496")
    if series in ("v1", "v2"):
        if sig_size != PAGE:
            raise ImageRejected(f"sigstruct area is {sig_size} bytes; this kernel wants 4096")
    elif _pages(sig_size) > MAX_SIG_PAGES_A:
        raise ImageRejected(f"sigstruct area has {_pages(sig_size)} pages, more than 4")
    return KernelImage(0x100, image[PAGE:offset], image[offset:size])


def _format_b(image: bytes) -> KernelImage:
    size = len(image)
    if size < PAGE:
        raise ImageRejected(f"image is {size} bytes, smaller than the 4096-byte header")
    version = struct.unpack_from("<H", image, 0)[0]
    magic = image[4:12]
    sig_pages, mod_pages = struct.unpack_from("<II", image, 0x0C)
    if PAGE * (1 + sig_pages + mod_pages) != size:
        raise ImageRejected(
            f"4096 * (1 + {sig_pages} + {mod_pages}) sigstruct/module pages != size {size}"
        )
    if version != 0x200:
        raise ImageRejected(f"version {version:#x} is not 0x200")
    if sig_pages > MAX_SIG_PAGES_B or mod_pages > MAX_MODULE_PAGES:
        raise ImageRejected(f"{sig_pages} sigstruct / {mod_pages} module pages exceed 1 / 496")
    if magic != MAGIC:
        raise ImageRejected(f"signature at offset 4 is {magic!r}, not TDX-BLOB")
    if any(image[0x14:PAGE]):
        raise ImageRejected("reserved header bytes are not zero")
    sig_end = PAGE * (1 + sig_pages)
    return KernelImage(0x200, image[PAGE:sig_end], image[sig_end:])
