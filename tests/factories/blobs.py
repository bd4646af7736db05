"""Images assembled independently of :mod:`tdxupdate.imagebuild`, and the shorthands the image
tests (``test_image``, ``test_imagecheck``, ``test_imagebuild``) share.

:func:`blob_join` and :func:`tdx_image` lay out the bytes the way Intel's ``blob_join.sh`` and
``blob_structure.txt`` describe, with their own checksum (:func:`word_sum`), so a conversion
can be compared with an image nobody in ``tdxupdate`` built.
"""

from __future__ import annotations

import functools
import struct

from hypothesis import strategies as st

from factories.images import SIG, make_image, test_key, trusted_signers
from tdxupdate.image import FORMAT_A, FORMAT_B, HEAD_SIZE, PAGE_SIZE
from tdxupdate.imagebuild import make_sigstruct
from tdxupdate.imagecheck import verify


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
    """A Format B image per blob_structure.txt v2, assembled independently of imagebuild.build."""
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
    return make_sigstruct(module=module, key=key, **kwargs)  # type: ignore[arg-type]


@functools.cache
def valid_images() -> tuple[bytes, bytes]:
    return make_image(fmt=FORMAT_A), make_image("2.0.08", fmt=FORMAT_B, cpuids=(0xA06D0,))


# Edits concentrated on the bytes the parser reads: header fields, sigstruct header and the
# cpuid table size, plus anywhere in the head.
_INTERESTING = st.one_of(
    st.integers(0, 0x20),
    st.integers(SIG, SIG + 40),
    st.integers(SIG + 1020, SIG + 1032),
    st.integers(0, HEAD_SIZE - 1),
)
EDITS = st.lists(st.tuples(_INTERESTING, st.integers(0, 255)), max_size=6)


def edited(base: bytes, edits: list[tuple[int, int]], cut: int | None) -> bytes:
    data = bytearray(base)
    for pos, value in edits:
        data[pos] = value
    return bytes(data if cut is None else data[:cut])
