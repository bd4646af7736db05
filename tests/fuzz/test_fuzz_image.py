"""Fuzz target: the image parser and verifier (tdxupdate.image) on mutated valid images.

Starting from images signed with the run's test key (both formats), each example applies a
few mutations: bit flips, truncation, splices of random or copied bytes, extension, and
header or sigstruct fields set to extreme values (optionally with the checksum repaired and
the sigstruct re-signed, so the mutation reaches the checks behind those two).

Invariants: ``verify`` returns a Verification with every check of CHECK_NAMES, in order,
each with a one-line detail, and never raises; ``inspect`` and ``convert`` raise nothing but
InvalidImage with a documented check name; and an image that passes every check carries
exactly the sigstruct and module pages that were signed, unless the test re-signed it.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import pytest
from factories.images import fix_checksum, make_image, resign, trusted_signers
from factories.outcome import returned_or_raised
from hypothesis import given
from hypothesis import strategies as st

from fuzz.budget import budget
from tdxupdate import image, imagebuild, imagecheck
from tdxupdate.errors import InvalidImage
from tdxupdate.image import (
    FORMAT_A,
    FORMAT_A_HEADER,
    FORMAT_B,
    FORMAT_B_HEADER,
    HEAD_SIZE,
    PAGE_SIZE,
    SIGSTRUCT_LAYOUT,
    SIGSTRUCT_OFFSET,
    SIGSTRUCT_SIZE,
    Field,
)
from tdxupdate.imagecheck import CHECK_NAMES, Verification

pytestmark = pytest.mark.fuzz

INT_FIELDS: dict[int, list[tuple[int, Field]]] = {
    fmt: [(0, f) for f in header.values() if not f.raw]
    + [(SIGSTRUCT_OFFSET, f) for f in SIGSTRUCT_LAYOUT.values() if not f.raw]
    for fmt, header in ((FORMAT_A, FORMAT_A_HEADER), (FORMAT_B, FORMAT_B_HEADER))
}


@functools.cache
def original(fmt: int) -> bytes:
    return make_image("1.5.06", fmt=fmt, module_pages=2)


def _extremes(size: int) -> st.SearchStrategy[int]:
    top = (1 << (8 * size)) - 1
    return st.sampled_from([0, 1, 2, top, top - 1, top >> 1, (top >> 1) + 1]) | st.integers(0, top)


@dataclass
class Mutated:
    fmt: int
    data: bytes
    resigned: bool
    steps: list[str]


@st.composite
def mutated_images(draw: st.DrawFn) -> Mutated:
    fmt = draw(st.sampled_from([FORMAT_A, FORMAT_B]))
    buf = bytearray(original(fmt))
    steps: list[str] = []
    resigned = False
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "truncate", "splice", "copy", "extend", "field"]))
        size = len(buf)
        if kind == "flip" and size:
            at = draw(st.integers(0, size - 1))
            buf[at] ^= 1 << draw(st.integers(0, 7))
            steps.append(f"flip {at}")
        elif kind == "truncate":
            cut = draw(st.integers(0, size))
            del buf[cut:]
            steps.append(f"truncate {cut}")
        elif kind == "splice":
            start = draw(st.integers(0, size))
            end = draw(st.integers(start, min(size, start + PAGE_SIZE)))
            buf[start:end] = draw(st.binary(max_size=64))
            steps.append(f"splice {start}:{end}")
        elif kind == "copy" and size:
            start = draw(st.integers(0, size - 1))
            piece = bytes(buf[start : start + draw(st.integers(1, 2 * PAGE_SIZE))])
            to = draw(st.integers(0, size))
            buf[to : to + (len(piece) if draw(st.booleans()) else 0)] = piece
            steps.append(f"copy {start}+{len(piece)} to {to}")
        elif kind == "extend":
            tail = b"\0" * PAGE_SIZE * draw(st.integers(1, 3)) if draw(st.booleans()) else b""
            buf += tail or draw(st.binary(min_size=1, max_size=64))
            steps.append("extend")
        elif kind == "field":
            base, field = draw(st.sampled_from(INT_FIELDS[fmt]))
            if base + field.offset + field.size <= len(buf):
                value = draw(_extremes(field.size))
                at = base + field.offset
                buf[at : at + field.size] = value.to_bytes(field.size, "little")
                steps.append(f"{field.name}={value:#x}")
        if draw(st.booleans()) and len(buf) >= SIGSTRUCT_OFFSET + SIGSTRUCT_SIZE:
            if draw(st.booleans()):
                resign(buf)
                resigned = True
                steps.append("resign")
            fix_checksum(buf)
            steps.append("fix checksum")
    return Mutated(fmt, bytes(buf), resigned, steps)


def signed_parts(data: bytes, module_offset: int) -> tuple[bytes, bytes]:
    return data[SIGSTRUCT_OFFSET : SIGSTRUCT_OFFSET + SIGSTRUCT_SIZE], data[module_offset:]


@given(mutated_images())
@budget(brief=60, long=4000)
def test_verify_judges_every_mutation_with_the_documented_checks(m: Mutated) -> None:
    v = imagecheck.verify(m.data, trusted_signers=trusted_signers())
    assert isinstance(v, Verification)
    assert tuple(c.name for c in v.checks) == CHECK_NAMES
    assert all(c.detail and "\n" not in c.detail for c in v.checks)
    assert (v.info is None) == (not v.check("container").ok)
    if v.ok:
        assert v.info is not None
        if not m.resigned:
            # What passes is what was signed: the sigstruct and every module page.
            ref = image.inspect(original(m.fmt)[:HEAD_SIZE], len(original(m.fmt)))
            assert signed_parts(m.data, v.info.module_offset) == signed_parts(
                original(m.fmt), ref.module_offset
            ), m.steps


@given(mutated_images())
@budget(brief=40, long=2000)
def test_inspect_and_convert_raise_only_invalid_image(m: Mutated) -> None:
    info = returned_or_raised(lambda: image.inspect(m.data[:HEAD_SIZE], len(m.data)), InvalidImage)
    if isinstance(info, InvalidImage):
        assert info.check == "container"
        assert info.code == "image-invalid"
        assert info.message
        assert "\n" not in info.message
    else:
        assert info.size == len(m.data)
        assert 0 < info.module_offset <= len(m.data)
    other = FORMAT_B if m.fmt == FORMAT_A else FORMAT_A
    converted = returned_or_raised(lambda: imagebuild.convert(m.data, other), InvalidImage)
    if isinstance(converted, InvalidImage):
        assert converted.check in CHECK_NAMES
        assert converted.code == "image-invalid"
        assert converted.message
        assert "\n" not in converted.message
    else:
        # The sigstruct and module travel unchanged: the verdict on them does not change.
        before = imagecheck.verify(m.data, trusted_signers=trusted_signers())
        after = imagecheck.verify(converted, trusted_signers=trusted_signers())
        assert after.check("container").ok
        for name in ("seamhash", "signature", "trusted-signer", "version", "cpuid-table"):
            assert after.check(name).ok == before.check(name).ok, name


@pytest.mark.parametrize("fmt", [FORMAT_A, FORMAT_B])
def test_every_single_byte_change_of_the_signed_region_is_refused(fmt: int) -> None:
    # Exhaustive over one bit in every 61st byte (a prime stride: every field is hit).
    data = original(fmt)
    ref = image.inspect(data[:HEAD_SIZE], len(data))
    signed = [*range(SIGSTRUCT_OFFSET, SIGSTRUCT_OFFSET + SIGSTRUCT_SIZE)]
    signed += range(ref.module_offset, len(data))
    for at in signed[::61]:
        buf = bytearray(data)
        buf[at] ^= 0x10
        fix_checksum(buf)  # the checksum alone must not be what catches it
        assert not imagecheck.verify(bytes(buf), trusted_signers=trusted_signers()).ok, at
