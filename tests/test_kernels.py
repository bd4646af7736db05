"""tdxupdate.kernels: the table of sysfs generations, detection, and the image formats each takes.

Most cases run discover() on a factory tree of each generation (tests/factories/hosts.py).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from factories.hosts import (
    DEFAULT_OSRELEASE,
    at,
    build_host_tree,
    host_facts,
)

from tdxupdate import kernels
from tdxupdate.errors import UsageError
from tdxupdate.host import discover
from tdxupdate.preflight import CHECK_NAMES, HostCheck
from tdxupdate.sysroot import Sysroot
from tdxupdate.versions import Version

T = "/sys/devices/faux/tdx_host"


# --------------------------------------------------------------------------- generations

GENERATION_CASES = {
    # generation: (reported generation, layout, firmware name, image format, fallback)
    "G2": ("G2", "seamldr-dir", "seamldr_upload", 0x100, None),
    "G3": ("G3", "seamldr-dir", "tdx_module", 0x100, None),
    "G4": ("G4/G5", "flat", "tdx_module", 0x200, 0x100),
    "G5": ("G5", "flat", "tdx_module", 0x200, None),
}


@pytest.mark.parametrize("generation", sorted(GENERATION_CASES))
def test_discover_generation_layout_firmware_and_format(tmp_path: Path, generation: str) -> None:
    gen, layout, name, fmt, fallback = GENERATION_CASES[generation]
    root, facts = host_facts(
        tmp_path, generation=generation, module="1.5.06", seamldr="1.5.01", remaining=3
    )
    assert facts.tdx_host is True
    assert facts.generation == gen
    assert facts.sysfs_layout == layout
    assert facts.firmware_name == name
    assert facts.upload_dir == root / "sys/class/firmware" / name
    assert facts.module_version == Version(1, 5, 6)
    assert facts.seamldr_version == Version(1, 5, 1)
    assert facts.num_remaining_updates == 3
    assert facts.cpu_signature == 0x806F8
    assert facts.cpus_online == facts.cpus_present == frozenset({0, 1, 2, 3})
    assert facts.kernel_release == DEFAULT_OSRELEASE[generation]
    assert (facts.image_format, facts.image_format_fallback) == (fmt, fallback)
    assert facts.image_format_auto is True
    assert facts.upload_status == "idle"
    assert facts.erratum_seamret_invd_vmcs is False
    assert facts.compat_capable is None
    assert facts.problems == {}
    assert [c.name for c in facts.checks] == list(CHECK_NAMES)
    assert all(c.ok and c.code is None for c in facts.checks), facts.failed


def test_discover_g2_reads_the_unpadded_seamldr_version(tmp_path: Path) -> None:
    root, facts = host_facts(tmp_path, generation="G2", seamldr="1.5.00")
    assert at(root, f"{T}/seamldr/version").read_text() == "1.5.0\n"
    assert facts.seamldr_version == Version(1, 5, 0)
    assert str(facts.seamldr_version) == "1.5.00"


def test_discover_g2_v3_reports_compat_capable(tmp_path: Path) -> None:
    root, facts = host_facts(tmp_path, generation="G2", v3=True, seamldr="1.5.00")
    assert at(root, f"{T}/seamldr/version").read_text() == "1.5.00\n"
    assert facts.generation == "G2"
    assert facts.compat_capable is True
    _, facts0 = host_facts(tmp_path / "b", generation="G2", v3=True, compat_capable=False)
    assert facts0.compat_capable is False


def test_discover_compat_capable_garbage_is_a_problem_not_a_crash(tmp_path: Path) -> None:
    root, facts = host_facts(
        tmp_path, generation="G2", v3=True, overrides={f"{T}/compat_capable": "yes\n"}
    )
    assert facts.compat_capable is None
    assert facts.problems["compat_capable"].message == (
        f'{at(root, T)}/compat_capable: "yes" is neither 0 nor 1'
    )
    assert all(c.ok for c in facts.checks)


def test_discover_g3_attributes_are_mode_0400(tmp_path: Path) -> None:
    root, facts = host_facts(tmp_path, generation="G3")
    assert at(root, f"{T}/seamldr/version").stat().st_mode & 0o777 == 0o400
    assert facts.seamldr_version == Version(2, 0, 0)


@pytest.mark.parametrize(
    ("generation", "expected"), [("G2", "G2"), ("G3", "G3")], ids=["world-readable", "0400"]
)
def test_discover_seamldr_dir_without_firmware_tells_g2_from_g3_by_mode(
    tmp_path: Path, generation: str, expected: str
) -> None:
    _, facts = host_facts(tmp_path, generation=generation, firmware=False)
    assert facts.generation == expected
    assert facts.image_format == 0x100


def test_discover_g1_is_unsupported_kernel(tmp_path: Path) -> None:
    root, facts = host_facts(tmp_path, generation="G1")
    assert facts.tdx_host is False
    assert facts.generation == "G1"
    assert facts.sysfs_layout is None
    assert facts.image_format is None
    tdx_host = facts.check("tdx-host")
    assert tdx_host.code == "unsupported-kernel"
    assert tdx_host.detail == (
        f"{at(root, '/sys/devices/virtual/tdx/tdx_tsm')} exists: this kernel has the obsolete v1 "
        "update interface (May 2025 patch series), and tdxupdate needs /sys/devices/faux/tdx_host "
        "from the v2 series or mainline 7.2"
    )
    for name in ("upload-interface", "upload-idle", "remaining-updates", "module-version"):
        check = facts.check(name)
        assert (check.ok, check.code, check.detail) == (
            False,
            "unsupported-kernel",
            "not checked: no tdx_host device",
        )
    assert facts.problems["tdx_host"].code == "unsupported-kernel"
    assert facts.problems["tdx_host"].exit_code == 69


def test_discover_missing_tdx_host_is_no_tdx_host(tmp_path: Path) -> None:
    root, facts = host_facts(tmp_path, overrides={T: None, "/sys/class/firmware": None})
    assert facts.tdx_host is False
    assert facts.generation is None
    assert facts.image_format is None
    assert facts.image_format_fallback is None
    check = facts.check("tdx-host")
    assert (check.ok, check.code) == (False, "no-tdx-host")
    assert check.detail == (
        f"{at(root, T)} does not exist: the tdx-host driver is not loaded or the TDX module is "
        "not initialized (try: modprobe kvm_intel tdx=1; modprobe tdx-host)"
    )
    dependent = (
        "upload-interface",
        "upload-idle",
        "remaining-updates",
        "module-version",
        "seamldr-version",
    )
    for name in dependent:
        assert facts.check(name) == HostCheck(
            name, False, "not checked: no tdx_host device", "no-tdx-host"
        )
    # The CPU checks do not need the device.
    for name in ("cpus-online", "cpu-signature", "erratum-seamret-invd-vmcs"):
        assert facts.check(name).ok, facts.check(name)
    # Each fact the device would have given is unknown for the device's reason.
    for fact in ("module_version", "seamldr_version", "num_remaining_updates", "upload_dir"):
        assert facts.problems[fact] is facts.problems["tdx_host"]


def test_discover_missing_tdx_host_keeps_an_explicit_image_format(tmp_path: Path) -> None:
    root = build_host_tree(tmp_path / "host", overrides={T: None})
    facts = discover(Sysroot(root), image_format="0x100")
    assert (facts.image_format, facts.image_format_auto) == (0x100, False)


def test_discover_empty_sysroot_never_raises(tmp_path: Path) -> None:
    facts = discover(Sysroot(tmp_path))
    assert [c.ok for c in facts.checks] == [False] * len(CHECK_NAMES)
    assert facts.check("cpu-signature").detail == f"{tmp_path}/proc/cpuinfo: does not exist"
    assert facts.check("cpus-online").detail == (
        f"{tmp_path}/sys/devices/system/cpu/online: does not exist"
    )
    assert facts.check("erratum-seamret-invd-vmcs").detail == (
        f"not checked: {tmp_path}/proc/cpuinfo: does not exist"
    )


# --------------------------------------------------------------------------- image format


@pytest.mark.parametrize(
    ("release", "generation", "fmt", "fallback"),
    [
        ("7.2.0", "G5", 0x200, None),
        ("7.2.0-rc1+", "G5", 0x200, None),
        ("7.10.3-100.fc45.x86_64", "G5", 0x200, None),
        ("8.0.0", "G5", 0x200, None),
        ("7.1.0-rc1", "G4/G5", 0x200, 0x100),
        ("6.8.0-1017-intel", "G4/G5", 0x200, 0x100),
        ("garbage", "G4/G5", 0x200, 0x100),
        ("7", "G4/G5", 0x200, 0x100),
    ],
)
def test_discover_flat_image_format_by_kernel_release(
    tmp_path: Path, release: str, generation: str, fmt: int, fallback: int | None
) -> None:
    _, facts = host_facts(tmp_path, generation="G5", osrelease=release)
    assert facts.kernel_release == release
    assert (facts.generation, facts.image_format, facts.image_format_fallback) == (
        generation,
        fmt,
        fallback,
    )
    assert facts.image_format_auto is True


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (None, "does not exist"),
        ("", "empty (expected a kernel release like 7.2.0)"),
        (b"7.2\xff\n", '"7.2\\xff" is not a kernel release'),
    ],
    ids=["missing", "empty", "binary"],
)
def test_discover_unreadable_release_uses_format_b_with_fallback(
    tmp_path: Path, content: str | bytes | None, problem: str
) -> None:
    root, facts = host_facts(tmp_path, overrides={"/proc/sys/kernel/osrelease": content})
    assert facts.kernel_release is None
    assert facts.problems["kernel_release"].message == (
        f"{at(root, '/proc/sys/kernel/osrelease')}: {problem}"
    )
    assert (facts.image_format, facts.image_format_fallback) == (0x200, 0x100)
    assert all(c.ok for c in facts.checks)


def test_discover_seamldr_dir_never_falls_back(tmp_path: Path) -> None:
    _, facts = host_facts(tmp_path, generation="G3", osrelease="6.8.0")
    assert (facts.image_format, facts.image_format_fallback) == (0x100, None)


@pytest.mark.parametrize(
    ("generation", "option", "fmt"),
    [
        ("G4", "0x100", 0x100),
        ("G4", "0x200", 0x200),
        ("G3", "0x200", 0x200),
        ("G5", "0X100", 0x100),
    ],
)
def test_discover_explicit_image_format_disables_fallback(
    tmp_path: Path, generation: str, option: str, fmt: int
) -> None:
    root = build_host_tree(tmp_path / "host", generation=generation)
    facts = discover(Sysroot(root), image_format=option)
    assert (facts.image_format, facts.image_format_fallback, facts.image_format_auto) == (
        fmt,
        None,
        False,
    )


def test_discover_bad_image_format_option_is_usage_error(tmp_path: Path) -> None:
    root = build_host_tree(tmp_path / "host")
    with pytest.raises(UsageError, match="'0x300' is not one of auto, 0x100, 0x200"):
        discover(Sysroot(root), image_format="0x300")


# --------------------------------------------------------------------------- the table


def probe(
    firmware: str | None = None,
    layout: str | None = None,
    release: tuple[int, int] | None = None,
    compat: bool = False,
    readable: bool | None = None,
) -> kernels.Probe:
    return kernels.Probe(firmware, layout, release, compat, lambda: readable)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"firmware": "seamldr_upload"}, "G2"),
        ({"firmware": "seamldr_upload", "layout": "flat"}, "G2"),
        ({"firmware": "tdx_module", "layout": "seamldr-dir"}, "G3"),
        ({"firmware": "tdx_module", "layout": "flat", "release": (7, 2)}, "G5"),
        ({"firmware": "tdx_module", "layout": "flat", "release": (8, 0)}, "G5"),
        ({"firmware": "tdx_module", "layout": "flat", "release": (7, 1)}, "G4/G5"),
        ({"firmware": "tdx_module", "layout": "flat"}, "G4/G5"),
        ({"layout": "flat", "release": (7, 2)}, "G5"),
        ({"layout": "seamldr-dir", "compat": True}, "G2"),
        ({"layout": "seamldr-dir", "readable": True}, "G2"),
        ({"layout": "seamldr-dir", "readable": False}, "G3"),
        ({"layout": "seamldr-dir", "readable": None}, None),
        ({"firmware": "tdx_module"}, None),
        ({}, None),
    ],
)
def test_detect_walks_the_table(kwargs: dict[str, object], name: str | None) -> None:
    found = kernels.detect(probe(**kwargs))  # type: ignore[arg-type]
    assert (found.name if found is not None else None) == name


def test_detect_stats_only_when_the_mode_decides() -> None:
    calls: list[int] = []

    def world_readable() -> bool | None:
        calls.append(1)
        return True

    kernels.detect(kernels.Probe("tdx_module", "seamldr-dir", None, False, world_readable))
    kernels.detect(kernels.Probe(None, "seamldr-dir", None, True, world_readable))
    assert calls == []


def test_the_table_rows() -> None:
    rows = {g.name: g for g in kernels.GENERATIONS}
    assert list(rows) == ["G2", "G3", "G5", "G4/G5"]
    assert kernels.FIRMWARE_NAMES == ("seamldr_upload", "tdx_module")
    assert kernels.LAYOUT_PATHS == {
        "seamldr-dir": ("seamldr/version", "seamldr/num_remaining_updates"),
        "flat": ("seamldr_version", "num_remaining_updates"),
    }
    # Linux 7.2 merged the interface without the guard against updating during a TD build.
    assert rows["G5"].td_build_guard is False
    assert rows["G5"].image_formats == (kernels.FORMAT_B,)
    assert rows["G4/G5"].image_formats == (kernels.FORMAT_B, kernels.FORMAT_A)
    assert rows["G2"].image_formats == rows["G3"].image_formats == (kernels.FORMAT_A,)
    assert all(g.supported and g.device == kernels.TDX_HOST for g in rows.values())
    assert kernels.G1.supported is False
    assert kernels.G1.device == kernels.G1_TDX_TSM
    assert kernels.by_name("G1") is kernels.G1
    assert kernels.by_name("G3") is rows["G3"]
    with pytest.raises(KeyError):
        kernels.by_name("G9")


@pytest.mark.parametrize(
    ("forced", "tdx_host", "name", "release", "expected"),
    [
        (0x100, True, "G5", (7, 2), (0x100, None)),
        (None, False, None, None, (None, None)),
        (None, True, "G3", None, (0x100, None)),
        (None, True, "G4/G5", None, (0x200, 0x100)),
        (None, True, None, (7, 2), (0x200, None)),
        (None, True, None, (7, 1), (0x200, 0x100)),
        (None, True, None, None, (0x200, 0x100)),
    ],
)
def test_image_formats(
    forced: int | None,
    tdx_host: bool,
    name: str | None,
    release: tuple[int, int] | None,
    expected: tuple[int | None, int | None],
) -> None:
    generation = kernels.by_name(name) if name is not None else None
    assert kernels.image_formats(forced, tdx_host, generation, release) == expected


@pytest.mark.parametrize("generation", ["G2", "G3", "G4", "G5"])
def test_discover_names_the_table_row(tmp_path: Path, generation: str) -> None:
    _, facts = host_facts(tmp_path, generation=generation)
    assert facts.kernel is not None
    assert facts.kernel.name == facts.generation
