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
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import chain

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


@dataclass(frozen=True)
class _HeaderA:
    """The Format A header fields the kernel reads, and the sizes they imply."""

    size: int
    version: int
    offset: int
    magic: bytes
    length: int
    reserved_ok: bool

    @classmethod
    def read(cls, image: bytes) -> _HeaderA:
        size = len(image)
        if size < PAGE:
            raise ImageRejected(f"image is {size} bytes, smaller than the 4096-byte header")
        version, _checksum, offset = struct.unpack_from("<HHI", image, 0)
        length, reserved0 = struct.unpack_from("<II", image, 16)
        reserved_ok = reserved0 == 0 and not any(image[0x18:PAGE])
        return cls(size, version, offset, image[8:16], length, reserved_ok)

    @property
    def sig_size(self) -> int:
        return self.offset - PAGE

    @property
    def module_size(self) -> int:
        return self.size - self.offset


def _format_a(series: str, image: bytes) -> KernelImage:
    h = _HeaderA.read(image)
    if series == "v8":
        return _format_a_v8(h, image)
    problem = next(chain(_layout_problems(series, h), _content_problems(series, h, image)), None)
    if problem is not None:
        raise ImageRejected(problem)
    return KernelImage(0x100, image[PAGE : h.offset], image[h.offset : h.size])


def _format_a_v8(h: _HeaderA, image: bytes) -> KernelImage:
    """v8 checks less and in its own order, and rounds the page counts down."""
    if h.size <= PAGE:
        raise ImageRejected("image is not larger than its header")
    if h.magic != MAGIC:
        raise ImageRejected(f"signature at offset 8 is {h.magic!r}, not TDX-BLOB")
    if not PAGE < h.offset < h.size or h.offset % PAGE:
        raise ImageRejected(f"offset_of_module {h.offset:#x} is out of range or unaligned")
    if h.version != 0x100:
        raise ImageRejected(f"version {h.version:#x} is not 0x100")
    if not h.reserved_ok:
        raise ImageRejected("reserved header bytes are not zero")
    sig_pages = min(h.sig_size // PAGE, MAX_SIG_PAGES_A)
    mod_pages = min(h.module_size // PAGE, MAX_MODULE_PAGES)
    return KernelImage(
        0x100, image[PAGE : PAGE + sig_pages * PAGE], image[h.offset : h.offset + mod_pages * PAGE]
    )


def _layout_problems(series: str, h: _HeaderA) -> Iterator[str]:
    """v1–v7, in the kernel's order: the sizes, the version, the reserved fields."""
    if series == "v7" and (h.size <= PAGE or h.size <= h.offset):
        yield f"image size {h.size} is not larger than the header and offset"
    if h.version != 0x100:
        yield f"version {h.version:#x} is not 0x100"
    if not h.reserved_ok:
        yield "reserved header bytes are not zero"
    if series != "v7":
        if h.sig_size <= 0:
            yield f"offset_of_module {h.offset:#x} leaves no room for a sigstruct"
        if h.module_size <= 0:
            yield f"offset_of_module {h.offset:#x} leaves no module"


def _content_problems(series: str, h: _HeaderA, image: bytes) -> Iterator[str]:
    """v1–v7, after the layout: length, magic, checksum, alignment, page counts."""
    if h.length != h.size:
        yield f"length field {h.length} is not the image size {h.size}"
    if h.magic != MAGIC:
        yield f"signature at offset 8 is {h.magic!r}, not TDX-BLOB"
    if series in ("v1", "v2", "v3") and checksum16(image) != 0:
        yield f"16-bit checksum is {checksum16(image):#06x}, not 0"
    if series in ("v1", "v2", "v3", "v4", "v7") and (h.offset % PAGE or h.size % PAGE):
        yield "offset or size is not 4 KiB aligned"
    if _pages(h.module_size) > MAX_MODULE_PAGES:
        yield f"module has {_pages(h.module_size)} pages, more than 496"
    if series in ("v1", "v2"):
        if h.sig_size != PAGE:
            yield f"sigstruct area is {h.sig_size} bytes; this kernel wants 4096"
    elif _pages(h.sig_size) > MAX_SIG_PAGES_A:
        yield f"sigstruct area has {_pages(h.sig_size)} pages, more than 4"


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
