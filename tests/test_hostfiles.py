"""tdxupdate.hostfiles: the parsers of /proc/cpuinfo, CPU lists and kernel releases."""

from __future__ import annotations

from pathlib import Path

import pytest
from factories.hosts import (
    cpuinfo_text,
    host_facts,
    signature_to_cpu,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from tdxupdate.hostfiles import (
    cpu_signature_from_cpuinfo,
    format_cpu_list,
    format_cpu_signature,
    parse_cpu_list,
    parse_cpu_signature,
    parse_kernel_release,
)

T = "/sys/devices/faux/tdx_host"


@pytest.mark.parametrize(
    ("text", "expected"),
    [("7.2.0-rc1+", (7, 2)), ("6.8.0-1017-intel", (6, 8)), ("7.10\n", (7, 10))],
)
def test_parse_kernel_release(text: str, expected: tuple[int, int]) -> None:
    assert parse_kernel_release(text) == expected


@pytest.mark.parametrize("text", ["", "7", "v7.2", "seven.two"])
def test_parse_kernel_release_garbage_raises(text: str) -> None:
    with pytest.raises(ValueError, match=r"does not start with major\.minor"):
        parse_kernel_release(text)


# --------------------------------------------------------------------------- CPUs


@pytest.mark.parametrize(
    ("cpu", "signature"),
    [
        ((6, 143, 8), 0x806F8),
        ((6, 207, 2), 0xC06F2),
        ((6, 175, 3), 0xA06F3),
        ((6, 173, 1), 0xA06D1),
    ],
    ids=["SPR", "EMR", "SRF", "GNR"],
)
def test_cpu_signature_from_cpuinfo_real_cpus(
    tmp_path: Path, cpu: tuple[int, int, int], signature: int
) -> None:
    assert cpu_signature_from_cpuinfo(cpuinfo_text(cpu)) == signature
    _, facts = host_facts(tmp_path, cpu=cpu)
    assert facts.cpu_signature == signature
    assert facts.check("cpu-signature").detail == (
        f"{format_cpu_signature(signature)} from {tmp_path}/host/proc/cpuinfo"
    )


@pytest.mark.parametrize("signature", [0x806F8, 0xC06F2, 0xA06F3, 0xA06D1, 0x00F41, 0x400F10])
def test_cpu_signature_round_trips_through_cpuinfo(signature: int) -> None:
    # 0xf41: family 15 (Pentium 4); 0x400f10: family 19 = base 0xF + extended 4.
    assert cpu_signature_from_cpuinfo(cpuinfo_text(signature)) == signature
    family, _, _ = signature_to_cpu(signature)
    assert family == {0xF41: 15, 0x400F10: 19}.get(signature, 6)


def test_cpu_signature_only_the_first_processor_entry_counts() -> None:
    amd_first = cpuinfo_text((25, 1, 1), vendor="AuthenticAMD", cpus=1) + cpuinfo_text(cpus=1)
    with pytest.raises(ValueError, match='vendor_id is "AuthenticAMD", not GenuineIntel'):
        cpu_signature_from_cpuinfo(amd_first)
    intel_first = cpuinfo_text(cpus=1) + cpuinfo_text((25, 1, 1), vendor="AuthenticAMD", cpus=1)
    assert cpu_signature_from_cpuinfo(intel_first) == 0x806F8


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (("stepping\t: 8\n", ""), "the first processor entry has no 'stepping' line"),
        (("stepping\t: 8\n", "stepping\t: unknown\n"), 'stepping is "unknown", not a number'),
        (("model\t\t: 143\n", "model\t\t: 0x8f\n"), 'model is "0x8f", not a number from 0 to 255'),
        (("model\t\t: 143\n", "model\t\t: 300\n"), 'model is "300", not a number from 0 to 255'),
        (("cpu family\t: 6\n", ""), "the first processor entry has no 'cpu family' line"),
        (("vendor_id\t: GenuineIntel\n", ""), "the first processor entry has no 'vendor_id' line"),
    ],
    ids=["no-stepping", "stepping-unknown", "model-hex", "model-big", "no-family", "no-vendor"],
)
def test_cpu_signature_from_cpuinfo_bad_fields(edit: tuple[str, str], message: str) -> None:
    text = cpuinfo_text(cpus=1).replace(*edit)
    with pytest.raises(ValueError, match=message):
        cpu_signature_from_cpuinfo(text)


def test_cpu_signature_from_cpuinfo_no_entry() -> None:
    with pytest.raises(ValueError, match="no processor entry"):
        cpu_signature_from_cpuinfo("\n\n")


@pytest.mark.parametrize("text", ["0x806f8", "806F8", "0X806F8", " 0x806f8\n", "000806f8"])
def test_parse_cpu_signature(text: str) -> None:
    assert parse_cpu_signature(text) == 0x806F8


@pytest.mark.parametrize("text", ["", "0x", "xyz", "0x80_6f8", "-1", "0x123456789", "806f8h"])
def test_parse_cpu_signature_garbage_raises(text: str) -> None:
    with pytest.raises(ValueError, match="is not a CPU signature"):
        parse_cpu_signature(text)


def test_format_cpu_signature() -> None:
    assert format_cpu_signature(0x806F8) == "0x806f8"
    assert parse_cpu_signature(format_cpu_signature(0xC06F2)) == 0xC06F2


@pytest.mark.parametrize(
    ("text", "cpus"),
    [
        ("0-3", {0, 1, 2, 3}),
        ("0,1,2,3", {0, 1, 2, 3}),
        ("0-1,3", {0, 1, 3}),
        ("0-1,3\n", {0, 1, 3}),
        ("5", {5}),
        ("", set()),
        ("\n", set()),
    ],
)
def test_parse_cpu_list(text: str, cpus: set[int]) -> None:
    assert parse_cpu_list(text) == frozenset(cpus)


def test_parse_cpu_list_ranges_and_lists_compare_as_sets() -> None:
    assert parse_cpu_list("0-3") == parse_cpu_list("0,1,2,3") == parse_cpu_list("2-3,0-1")


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("a", "^'a' is not a CPU number or range$"),
        ("3-1", "^'3-1' is a reversed range$"),
        ("0-", "^'0-' is not a CPU number or range$"),
        ("1,,2", "^'' is not a CPU number or range$"),
        ("0-70000", "^CPU 70000 is beyond 65535$"),
        ("0 - 3", "^'0 - 3' is not a CPU number or range$"),
        ("0-3:2/4", "^'0-3:2/4' is not a CPU number or range$"),
    ],
)
def test_parse_cpu_list_garbage_raises(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        parse_cpu_list(text)


@pytest.mark.parametrize(
    ("cpus", "text"), [({0, 1, 2, 3, 5}, "0-3,5"), ({2, 3}, "2-3"), ({7}, "7"), (set(), "")]
)
def test_format_cpu_list(cpus: set[int], text: str) -> None:
    assert format_cpu_list(cpus) == text
    assert parse_cpu_list(text) == frozenset(cpus)


@settings(max_examples=100, deadline=None)
@given(text=st.text(max_size=40))
def test_parse_cpu_list_raises_only_value_error(text: str) -> None:
    try:
        cpus = parse_cpu_list(text)
    except ValueError:
        return
    assert parse_cpu_list(format_cpu_list(cpus)) == cpus


@settings(max_examples=100, deadline=None)
@given(text=st.text(max_size=400))
def test_cpu_signature_from_cpuinfo_raises_only_value_error(text: str) -> None:
    try:
        sig = cpu_signature_from_cpuinfo(text)
    except ValueError:
        return
    assert 0 <= sig <= 0xFFFFFFFF
