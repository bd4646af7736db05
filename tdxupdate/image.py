"""TDX module images: Formats A (0x100) and B (0x200), the sigstruct, assembly, conversion.

Implements image-formats.md §1–§3 (and kernel-abi.md §4, the kernel's view of the same
containers): the layout of the bytes. The checks of §4 (checksum, SEAMHASH, signature, trusted
signer, version, debug, cpuid table) and the verified value ``--update`` streams live in
:mod:`tdxupdate.imagecheck`. Everything here works on bytes and does no I/O: image files are
read (with a bound on how much of a file is ever read) by :mod:`tdxupdate.sources.local`.

Layout of the work:

* :func:`inspect` parses the header page and the sigstruct from the first ``HEAD_SIZE`` bytes
  and the file size, and raises :class:`~tdxupdate.errors.InvalidImage` (check ``container``)
  on the first broken container or sigstruct-header rule; :func:`inspect_image` applies the
  same rules to a whole image, the sigstruct padding beyond the head included.
* :func:`checksum16` is the 16-bit word sum and :func:`signed_message` the bytes of a sigstruct
  its signature covers: the two computations over the layout that the checks need.
* :func:`convert` rewrites A <-> B byte-exactly; :func:`build` and :func:`make_sigstruct`
  assemble images (the emulator and the tests forge their own, signed with their own key).

Rules decided here where the spec leaves room (all documented at the rule that applies them):

* The sigstruct area after the 2048-byte sigstruct must be zero (Intel's tools write zeros; a
  conversion drops those bytes, so a non-zero pad would be silently lost).
* The sigstruct area is at most 4 pages in both formats (kernels v4+ accept at most 4), and the
  module at most 496 pages (every kernel generation's limit), which bounds :data:`MAX_IMAGE_SIZE`.
* ``cpuid_table_size`` <= 255 is a hard header rule (``container``), because the table has only
  255 slots. The ``cpuid-table`` check then asks that the table list at least one CPU and no
  zero signature: an empty table makes a module installable nowhere.
"""

from __future__ import annotations

import functools
import hashlib
import struct
import sys
from dataclasses import dataclass
from typing import Any

from tdxupdate.errors import InvalidImage
from tdxupdate.versions import Version

FORMAT_A = 0x100
FORMAT_B = 0x200
PAGE_SIZE = 4096
SIGSTRUCT_SIZE = 2048
HEAD_SIZE = 8192  # header page + the sigstruct's first page: all inspect() needs
MAX_MODULE_PAGES = 496  # kernel limit in every generation (kernel-abi.md §4)
MAX_SIGSTRUCT_PAGES = 4  # v4+ kernels: a sigstruct area of at most 16 KiB
MAX_KERNEL_IMAGE_SIZE = 2_039_808  # merged kernel: 4096 * (1 + 1 + 496)
#: The largest image ever read: a header page, a 4-page sigstruct area and 496 module pages.
MAX_IMAGE_SIZE = PAGE_SIZE * (1 + MAX_SIGSTRUCT_PAGES + MAX_MODULE_PAGES)
#: The smallest valid image: header page, one sigstruct page, one module page.
MIN_IMAGE_SIZE = 3 * PAGE_SIZE
FORMAT_NAMES = {FORMAT_A: "Format A (0x100)", FORMAT_B: "Format B (0x200)"}

MAGIC = b"TDX-BLOB"
SIGSTRUCT_OFFSET = 0x1000  # in both formats
RSA_KEY_BYTES = 384  # RSA-3072
MAX_CPUID_ENTRIES = 255
DEBUG_BIT = 1 << 31  # sigstruct module_type bit 31: debug-signed

# Offsets inside the sigstruct of the two parts covered by the signature: the header up to the
# modulus, and the body from SEAMHASH on (image-formats.md §4.3).
_SIGNED_HEAD_END = 128
_SIGNED_BODY_START = 900


@dataclass(frozen=True)
class Field:
    """One little-endian field of a declared layout: an integer (size 1, 2, 4, 8) or raw bytes."""

    name: str
    offset: int
    size: int
    raw: bool = False  # True: kept as bytes (magic, arrays, reserved areas)

    def read_bytes(self, buf: bytes | memoryview) -> bytes:
        return bytes(buf[self.offset : self.offset + self.size])

    def read_int(self, buf: bytes | memoryview) -> int:
        return int.from_bytes(buf[self.offset : self.offset + self.size], "little")

    def write(self, buf: bytearray, value: int | bytes) -> None:
        data = value if isinstance(value, bytes) else value.to_bytes(self.size, "little")
        if len(data) != self.size:
            raise ValueError(f"{self.name}: {len(data)} bytes do not fit a {self.size}-byte field")
        buf[self.offset : self.offset + self.size] = data


def _layout(*fields: Field) -> dict[str, Field]:
    return {f.name: f for f in fields}


_INT_CODES = {1: "B", 2: "H", 4: "I", 8: "Q"}


def _int_reader(layout: dict[str, Field]) -> tuple[tuple[str, ...], struct.Struct]:
    """The integer fields of ``layout`` and one Struct that unpacks them all in one call."""
    ints = sorted((f for f in layout.values() if not f.raw), key=lambda f: f.offset)
    fmt, at = "<", 0
    for f in ints:
        fmt += f"{f.offset - at}x{_INT_CODES[f.size]}"
        at = f.offset + f.size
    return tuple(f.name for f in ints), struct.Struct(fmt)


def _read_ints(
    reader: tuple[tuple[str, ...], struct.Struct], buf: bytes | memoryview
) -> dict[str, int]:
    names, unpacker = reader
    return dict(zip(names, unpacker.unpack_from(buf), strict=True))


# Format A, "tdx_blob" v0x100: a 4096-byte header (image-formats.md §1, Intel blob_structure.txt).
FORMAT_A_HEADER = _layout(
    Field("version", 0x000, 2),  # 0x0100
    Field("checksum", 0x002, 2),  # whole file's 16-bit word sum is 0 (§2)
    Field("offset_of_module", 0x004, 4),  # page multiple > 0x1000; 0x2000 in published blobs
    Field("signature", 0x008, 8, raw=True),  # ASCII "TDX-BLOB", no NUL
    Field("length", 0x010, 4),  # the file size (v8 kernels stopped checking it; we do)
    Field("reserved0", 0x014, 4),  # 0
    Field("reserved1", 0x018, 4072, raw=True),  # u64[509], all 0
)

# Format B, "tdx_image" v0x200: a 4096-byte header (image-formats.md §1, kernel v9+).
FORMAT_B_HEADER = _layout(
    Field("version", 0x000, 2),  # 0x0200
    Field("checksum", 0x002, 2),  # same rule as A; only the EFI loader checks it
    Field("signature", 0x004, 8, raw=True),  # ASCII "TDX-BLOB"
    Field("sigstruct_nr_pages", 0x00C, 4),  # 1 for a 2 KiB sigstruct (merged kernel: <= 1)
    Field("module_nr_pages", 0x010, 4),  # module pages; <= 496
    Field("reserved", 0x014, 4076, raw=True),  # all 0: the header is exactly one page
)

# SEAM_SIGSTRUCT, 2048 bytes at image offset 0x1000 (image-formats.md §3, P-SEAMLDR
# seam_sigstruct.h). Only the fields the verifier reads are declared; the rest of the body
# (attributes, page counts, handoff versions) is covered by the signature.
SIGSTRUCT_LAYOUT = _layout(
    Field("header_type", 0, 4),  # 6
    Field("header_length", 4, 4),  # 0xE1
    Field("header_version", 8, 4),  # 0x10000
    Field("module_type", 12, 4),  # bit 31 = debug-signed
    Field("module_vendor", 16, 4),  # 0x8086
    Field("date", 20, 4),  # BCD yyyymmdd
    Field("size", 24, 4),  # 0x200 dwords
    Field("key_size", 28, 4),  # 0x60 dwords
    Field("modulus_size", 32, 4),  # 0x60 dwords
    Field("exponent_size", 36, 4),  # 1 dword
    Field("reserved0", 40, 88, raw=True),
    Field("modulus", 128, RSA_KEY_BYTES, raw=True),  # little-endian integer
    Field("exponent", 512, 4),  # 65537
    Field("signature", 516, RSA_KEY_BYTES, raw=True),  # little-endian integer
    Field("seamhash", 900, 48, raw=True),  # SHA-384 of the module pages
    Field("seamsvn", 948, 2),  # security version; independent of the module version
    Field("version", 1000, 4, raw=True),  # u16 update, u8 minor, u8 major (2.0.x); 0 in 1.5.x
    Field("cpuid_table_size", 1024, 4),  # <= 255
    Field("cpuid_table", 1028, 4 * MAX_CPUID_ENTRIES, raw=True),  # CPUID.1.EAX values
)

# Hard sigstruct header values (image-formats.md §4.1): anything else is not a sigstruct
# P-SEAMLDR accepts, so the image is refused before any signature work.
SIGSTRUCT_CONSTANTS = {
    "header_type": 6,
    "header_length": 0xE1,
    "header_version": 0x10000,
    "module_vendor": 0x8086,
    "size": 0x200,
    "key_size": 0x60,
    "modulus_size": 0x60,
    "exponent_size": 1,
    "exponent": 65537,
}


_SIGSTRUCT_INTS = _int_reader(SIGSTRUCT_LAYOUT)
_FORMAT_A_INTS = _int_reader(FORMAT_A_HEADER)
_FORMAT_B_INTS = _int_reader(FORMAT_B_HEADER)


def _hex(value: int, width: int = 0) -> str:
    return f"0x{value:0{width}x}"


def _container_error(message: str) -> InvalidImage:
    return InvalidImage(message, check="container")


@dataclass(frozen=True)
class Sigstruct:
    """A parsed 2048-byte SEAM_SIGSTRUCT (image-formats.md §3)."""

    raw: bytes
    header_type: int
    header_length: int
    header_version: int
    module_type: int
    module_vendor: int
    date: int
    size: int
    key_size: int
    modulus_size: int
    exponent_size: int
    modulus: bytes  # 384 bytes as stored (little-endian integer)
    exponent: int
    signature: bytes  # 384 bytes as stored (little-endian integer)
    seamhash: bytes
    seamsvn: int
    version: Version | None  # bytes at 1000; None when all four are zero (1.5.x blobs)
    cpuid_table: tuple[int, ...]

    @property
    def is_debug(self) -> bool:
        return bool(self.module_type & DEBUG_BIT)

    @functools.cached_property
    def signer(self) -> str:
        """SHA-256 hex of the 384 modulus bytes as stored: the trusted-signer identity (§4.4)."""
        return hashlib.sha256(self.modulus).hexdigest()

    @classmethod
    def parse(cls, raw: bytes) -> Sigstruct:
        """Parse and apply the hard header checks; raises InvalidImage (check ``container``)."""
        raw = bytes(raw)
        if len(raw) != SIGSTRUCT_SIZE:
            raise _container_error(f"sigstruct is {len(raw)} bytes, expected {SIGSTRUCT_SIZE}")
        layout = SIGSTRUCT_LAYOUT
        f = _read_ints(_SIGSTRUCT_INTS, raw)
        for name, expected in SIGSTRUCT_CONSTANTS.items():
            if f[name] != expected:
                raise _container_error(
                    f"sigstruct {name} is {_hex(f[name])}, expected {_hex(expected)}"
                )
        count = f["cpuid_table_size"]
        if count > MAX_CPUID_ENTRIES:
            raise _container_error(
                f"sigstruct cpuid_table_size is {count}, the table holds at most "
                f"{MAX_CPUID_ENTRIES} entries"
            )
        version_bytes = layout["version"].read_bytes(raw)
        version = None
        if any(version_bytes):
            update, minor, major = struct.unpack("<HBB", version_bytes)
            version = Version(major, minor, update)
        return cls(
            raw=raw,
            header_type=f["header_type"],
            header_length=f["header_length"],
            header_version=f["header_version"],
            module_type=f["module_type"],
            module_vendor=f["module_vendor"],
            date=f["date"],
            size=f["size"],
            key_size=f["key_size"],
            modulus_size=f["modulus_size"],
            exponent_size=f["exponent_size"],
            modulus=layout["modulus"].read_bytes(raw),
            exponent=f["exponent"],
            signature=layout["signature"].read_bytes(raw),
            seamhash=layout["seamhash"].read_bytes(raw),
            seamsvn=f["seamsvn"],
            version=version,
            cpuid_table=struct.unpack_from(f"<{count}I", raw, layout["cpuid_table"].offset),
        )


@dataclass(frozen=True)
class ImageInfo:
    """What :func:`inspect` learns from the head of an image: header and sigstruct, no module."""

    format: int
    size: int
    checksum_field: int
    module_offset: int
    module_size: int
    sigstruct_area_size: int
    sigstruct: Sigstruct

    @property
    def module_pages(self) -> int:
        return self.module_size // PAGE_SIZE

    @property
    def sigstruct_pages(self) -> int:
        return self.sigstruct_area_size // PAGE_SIZE


# ---------------------------------------------------------------------------------------------
# Parsing the head


#: Parsed heads kept by the digest of the exact bytes they describe (a head and its size): a
#: second look at the same bytes in one process (an update's candidate, then its verification)
#: reuses the parse, and different bytes (an image replaced between two reads) never meet it.
#: Bounded, so a listing of thousands of releases does not keep every sigstruct alive: cleared
#: when full.
_INSPECTED_LIMIT = 256
_inspected: dict[tuple[bytes, int], ImageInfo] = {}


def remember(memo: dict[Any, Any], key: Any, value: Any, limit: int) -> None:
    """Keep ``value`` in a per-process memo of at most ``limit`` entries (cleared when full)."""
    if len(memo) >= limit:
        memo.clear()
    memo[key] = value


def inspect(head: bytes | bytearray | memoryview, size: int) -> ImageInfo:
    """Parse the container and sigstruct from the first ``HEAD_SIZE`` bytes of an image.

    ``head`` holds the first ``min(size, HEAD_SIZE)`` bytes (more is accepted and ignored) of an
    image of ``size`` bytes. Applies every rule of image-formats.md §1 and the hard sigstruct
    header checks of §4.1 that need no module bytes: magic first, then the format version and
    size limits, then the header fields, then the sigstruct. Raises InvalidImage (``container``).
    The same bytes are parsed once per process (the result is immutable).
    """
    view = memoryview(head).cast("B")[:HEAD_SIZE]
    key = (hashlib.sha256(view).digest(), size)
    info = _inspected.get(key)
    if info is None:
        info = _parse_head(view, size)
        remember(_inspected, key, info, _INSPECTED_LIMIT)
    return info


def _parse_head(view: memoryview, size: int) -> ImageInfo:
    if size < 0 or len(view) < min(size, HEAD_SIZE) or len(view) > size:
        raise _container_error(
            f"head holds {len(view)} bytes, expected the first {min(max(size, 0), HEAD_SIZE)} "
            f"bytes of a {size}-byte image"
        )
    fmt = _identify(view, size)
    if size > MAX_IMAGE_SIZE:
        raise _container_error(
            f"image is {size} bytes, larger than the largest possible image "
            f"({MAX_IMAGE_SIZE} bytes)"
        )
    if size < MIN_IMAGE_SIZE:
        raise _container_error(
            f"image is {size} bytes, shorter than the smallest possible image ({MIN_IMAGE_SIZE} "
            "bytes: header, sigstruct and module pages)"
        )
    if fmt == FORMAT_A:
        checksum, module_offset, area = _inspect_format_a(view, size)
    else:
        checksum, module_offset, area = _inspect_format_b(view, size)
    module_size = size - module_offset
    if module_size % PAGE_SIZE:
        raise _container_error(
            f"module is {module_size} bytes, not a whole number of {PAGE_SIZE}-byte pages"
        )
    if module_size // PAGE_SIZE > MAX_MODULE_PAGES:
        raise _container_error(
            f"module is {module_size // PAGE_SIZE} pages, more than the {MAX_MODULE_PAGES} "
            "the kernel accepts"
        )
    sigstruct = Sigstruct.parse(bytes(view[SIGSTRUCT_OFFSET : SIGSTRUCT_OFFSET + SIGSTRUCT_SIZE]))
    # Only the part of the padding inside the head is checked here; inspect_image() checks the
    # rest.
    _check_padding(view, SIGSTRUCT_OFFSET + SIGSTRUCT_SIZE, min(module_offset, HEAD_SIZE))
    return ImageInfo(
        format=fmt,
        size=size,
        checksum_field=checksum,
        module_offset=module_offset,
        module_size=module_size,
        sigstruct_area_size=area,
        sigstruct=sigstruct,
    )


def _identify(view: memoryview, size: int) -> int:
    """The format, from the magic and the version field; raises InvalidImage otherwise."""
    a_magic = FORMAT_A_HEADER["signature"]
    b_magic = FORMAT_B_HEADER["signature"]
    has_a = a_magic.read_bytes(view) == MAGIC
    has_b = b_magic.read_bytes(view) == MAGIC
    version = FORMAT_A_HEADER["version"].read_int(view)
    if not (has_a or has_b):
        if len(view) < a_magic.offset + a_magic.size:
            raise _container_error(
                f"image is {size} bytes, too short to hold a header ({PAGE_SIZE} bytes)"
            )
        if version in FORMAT_NAMES:
            where = a_magic if version == FORMAT_A else b_magic
            found = where.read_bytes(view)
            raise _container_error(
                f"no {MAGIC.decode()} signature at offset {_hex(where.offset)} "
                f"(found {found!r}) for the version field {_hex(version, 4)}"
            )
        raise _container_error(
            f"not a TDX module image: no {MAGIC.decode()} signature at offset 0x4 or 0x8"
        )
    if version == FORMAT_A and has_a:
        return FORMAT_A
    if version == FORMAT_B and has_b:
        return FORMAT_B
    layout = "Format A" if has_a else "Format B"
    expected = FORMAT_A if has_a else FORMAT_B
    raise _container_error(
        f"version field is {_hex(version, 4)}, but the {MAGIC.decode()} signature sits where "
        f"{layout} puts it, whose version is {_hex(expected, 4)}"
    )


def _first_nonzero(data: bytes) -> int | None:
    if data == bytes(len(data)):  # the usual case, in one comparison
        return None
    rest = data.lstrip(b"\0")
    return len(data) - len(rest) if rest else None


def _check_reserved(view: memoryview, field: Field) -> None:
    data = field.read_bytes(view)
    if (i := _first_nonzero(data)) is not None:
        raise _container_error(
            f"header {field.name} is not zero: byte {data[i]:#04x} at offset "
            f"{_hex(field.offset + i)}"
        )


def _check_padding(view: memoryview, start: int, end: int) -> None:
    """The sigstruct area after the 2048-byte sigstruct must be zero (see the module docstring)."""
    pad = bytes(view[start:end])
    if (i := _first_nonzero(pad)) is not None:
        raise _container_error(
            f"sigstruct padding is not zero: byte {pad[i]:#04x} at offset {_hex(start + i)}"
        )


def _inspect_format_a(view: memoryview, size: int) -> tuple[int, int, int]:
    h = _read_ints(_FORMAT_A_INTS, view)
    offset = h["offset_of_module"]
    length = h["length"]
    if length != size:
        raise _container_error(f"header length is {length} bytes, but the file is {size} bytes")
    if offset % PAGE_SIZE or offset <= SIGSTRUCT_OFFSET:
        raise _container_error(
            f"header offset_of_module is {_hex(offset)}, expected a multiple of {_hex(PAGE_SIZE)} "
            f"above {_hex(SIGSTRUCT_OFFSET)}"
        )
    area = offset - SIGSTRUCT_OFFSET
    if area > MAX_SIGSTRUCT_PAGES * PAGE_SIZE:
        raise _container_error(
            f"header offset_of_module is {_hex(offset)}: a sigstruct area of {area // PAGE_SIZE} "
            f"pages, more than the {MAX_SIGSTRUCT_PAGES} any kernel accepts"
        )
    if offset >= size:
        raise _container_error(
            f"header offset_of_module is {_hex(offset)}, but the file ends at {_hex(size)}: "
            "the module is empty"
        )
    _check_reserved(view, FORMAT_A_HEADER["reserved0"])
    _check_reserved(view, FORMAT_A_HEADER["reserved1"])
    return h["checksum"], offset, area


def _inspect_format_b(view: memoryview, size: int) -> tuple[int, int, int]:
    h = _read_ints(_FORMAT_B_INTS, view)
    sig_pages = h["sigstruct_nr_pages"]
    mod_pages = h["module_nr_pages"]
    if not 1 <= sig_pages <= MAX_SIGSTRUCT_PAGES:
        raise _container_error(
            f"header sigstruct_nr_pages is {sig_pages}, expected 1 to {MAX_SIGSTRUCT_PAGES}"
        )
    if not 1 <= mod_pages <= MAX_MODULE_PAGES:
        raise _container_error(
            f"header module_nr_pages is {mod_pages}, expected 1 to {MAX_MODULE_PAGES}"
        )
    expected = PAGE_SIZE * (1 + sig_pages + mod_pages)
    if size != expected:
        raise _container_error(
            f"file is {size} bytes, but the header says 4096 × (1 + {sig_pages} + {mod_pages}) "
            f"= {expected} bytes"
        )
    _check_reserved(view, FORMAT_B_HEADER["reserved"])
    area = sig_pages * PAGE_SIZE
    return h["checksum"], SIGSTRUCT_OFFSET + area, area


# ---------------------------------------------------------------------------------------------
# Computations over the layout


def checksum16(data: bytes | bytearray | memoryview) -> int:
    """Sum of the 16-bit little-endian words of ``data`` mod 2^16 (image-formats.md §2).

    An odd trailing byte counts as a low byte. A valid image sums to 0.
    """
    view = memoryview(data).cast("B")
    even = len(view) & ~1
    if sys.byteorder == "little":
        total = sum(view[:even].cast("H"))
    else:  # pragma: no cover - big-endian hosts do not run TDX, but the tool may
        total = sum(int.from_bytes(view[i : i + 2], "little") for i in range(0, even, 2))
    if even != len(view):
        total += view[even]
    return total & 0xFFFF


def signed_message(sigstruct_raw: bytes) -> bytes:
    """The bytes the signature covers: header up to the modulus, body from SEAMHASH on (§4.3)."""
    return bytes(sigstruct_raw[:_SIGNED_HEAD_END]) + bytes(
        sigstruct_raw[_SIGNED_BODY_START:SIGSTRUCT_SIZE]
    )


def inspect_image(view: memoryview) -> ImageInfo:
    """:func:`inspect` over a whole image plus the sigstruct padding beyond the head: every
    container rule. Raises InvalidImage (``container``)."""
    info = inspect(view[:HEAD_SIZE], len(view))
    if info.module_offset > HEAD_SIZE:
        _check_padding(view, HEAD_SIZE, info.module_offset)
    return info


__all__ = [
    "DEBUG_BIT",
    "FORMAT_A",
    "FORMAT_A_HEADER",
    "FORMAT_B",
    "FORMAT_B_HEADER",
    "FORMAT_NAMES",
    "HEAD_SIZE",
    "MAGIC",
    "MAX_IMAGE_SIZE",
    "MAX_KERNEL_IMAGE_SIZE",
    "MAX_MODULE_PAGES",
    "MAX_SIGSTRUCT_PAGES",
    "MIN_IMAGE_SIZE",
    "PAGE_SIZE",
    "SIGSTRUCT_CONSTANTS",
    "SIGSTRUCT_LAYOUT",
    "SIGSTRUCT_SIZE",
    "Field",
    "ImageInfo",
    "Sigstruct",
    "checksum16",
    "inspect",
    "inspect_image",
    "signed_message",
]
