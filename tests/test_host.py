"""tdxupdate.host: layout discovery for every generation of kernel-abi.md §1/§6, the CPU facts of
cli-contract.md §1 and the preflight checks with their error tokens (cli-contract.md §2)."""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest
from factories.hosts import (
    DEFAULT_OSRELEASE,
    build_host_tree,
    copy_as_root,
    cpuinfo_text,
    faulty_reads,
    host_paths,
    read_as_root,
    signature_to_cpu,
    write_as_root,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tdxupdate
from tdxupdate import host
from tdxupdate.errors import EXIT_CODES, TdxError, UsageError
from tdxupdate.host import (
    CHECK_NAMES,
    HostFacts,
    Sysroot,
    cpu_signature_from_cpuinfo,
    discover,
    format_cpu_list,
    format_cpu_signature,
    parse_cpu_list,
    parse_cpu_signature,
    parse_kernel_release,
    read_version_file,
)
from tdxupdate.versions import Version

REPO = Path(tdxupdate.__file__).resolve().parent.parent
SAMPLES = REPO / "mapping_samples" / "hosts"
T = "/sys/devices/faux/tdx_host"

#: Facts whose None must come with an entry in HostFacts.problems.
REQUIRED_FACTS = (
    "module_version",
    "seamldr_version",
    "num_remaining_updates",
    "upload_dir",
    "upload_status",
    "cpu_signature",
    "cpus_online",
    "cpus_present",
    "kernel_release",
)


def host_facts(tmp_path: Path, **kwargs: object) -> tuple[Path, HostFacts]:
    root = build_host_tree(tmp_path / "host", **kwargs)  # type: ignore[arg-type]
    return root, discover(Sysroot(root))


def at(root: Path, abspath: str) -> Path:
    return root / abspath.lstrip("/")


# --------------------------------------------------------------------------- Sysroot


def test_sysroot_path_prefixes_the_root(tmp_path: Path) -> None:
    assert Sysroot(tmp_path).path(f"{T}/version") == tmp_path / "sys/devices/faux/tdx_host/version"
    assert Sysroot(str(tmp_path)).root == tmp_path


def test_sysroot_default_root_is_slash() -> None:
    assert Sysroot().path("/proc/cpuinfo") == Path("/proc/cpuinfo")


def test_sysroot_path_relative_raises_value_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not an absolute path"):
        Sysroot(tmp_path).path("sys/x")


def test_discover_accepts_a_plain_path(tmp_path: Path) -> None:
    root = build_host_tree(tmp_path / "host")
    assert discover(root).module_version == discover(Sysroot(root)).module_version


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
    assert facts.image_format is None and facts.image_format_fallback is None
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
        assert facts.check(name) == host.HostCheck(
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


# --------------------------------------------------------------------------- upload directory


@pytest.mark.parametrize(
    ("firmware", "expected"),
    [
        (True, "sys/class/firmware/tdx_module"),
        ("class", "sys/class/firmware/tdx_module"),
        ("device", "sys/devices/faux/tdx_host/firmware/tdx_module"),
    ],
    ids=["symlink", "class-dir", "device-dir"],
)
def test_discover_upload_dir_prefers_the_class_path(
    tmp_path: Path, firmware: bool | str, expected: str
) -> None:
    root, facts = host_facts(tmp_path, firmware=firmware)
    assert facts.upload_dir == root / expected
    assert facts.check("upload-idle").detail == f"{root / expected}/status is idle"


def test_discover_upload_dir_class_path_wins_when_both_are_plain_dirs(tmp_path: Path) -> None:
    root = build_host_tree(tmp_path / "host", firmware="device")
    shutil.copytree(
        at(root, f"{T}/firmware/tdx_module"),
        at(root, "/sys/class/firmware/tdx_module"),
        copy_function=copy_as_root,
    )
    assert discover(Sysroot(root)).upload_dir == at(root, "/sys/class/firmware/tdx_module")


def test_discover_dangling_class_symlink_falls_back_to_nothing(tmp_path: Path) -> None:
    root, facts = host_facts(tmp_path, overrides={f"{T}/firmware": None})
    assert at(root, "/sys/class/firmware/tdx_module").is_symlink()
    assert facts.upload_dir is None
    assert facts.check("upload-interface").code == "no-upload-interface"


def test_discover_no_upload_interface_names_the_likely_causes(tmp_path: Path) -> None:
    root, facts = host_facts(tmp_path, firmware=False)
    check = facts.check("upload-interface")
    cls = at(root, "/sys/class/firmware")
    assert (check.ok, check.code) == (False, "no-upload-interface")
    # cpuinfo was read and shows no erratum, so the erratum is not among the causes.
    assert check.detail == (
        f"no firmware upload interface: {cls}/tdx_module and {cls}/seamldr_upload do not exist; "
        "likely causes: the running TDX module does not support TD-preserving updates "
        "(TDX_FEATURES0 bit 1), or the kernel predates runtime TDX module updates"
    )
    assert facts.check("upload-idle") == host.HostCheck(
        "upload-idle", False, "not checked: no upload interface", "no-upload-interface"
    )
    assert facts.upload_status is None
    assert facts.problems["upload_dir"].exit_code == 69


def test_discover_no_upload_interface_with_erratum_says_erratum(tmp_path: Path) -> None:
    _, facts = host_facts(tmp_path, firmware=False, bugs="seamret_invd_vmcs")
    assert facts.check("upload-interface").detail.endswith(
        "the CPU has erratum seamret_invd_vmcs (/proc/cpuinfo bugs), "
        "so the kernel offers no runtime update"
    )


def test_discover_no_upload_interface_unknown_erratum_lists_it(tmp_path: Path) -> None:
    _, facts = host_facts(tmp_path, firmware=False, overrides={"/proc/cpuinfo": None})
    assert "the CPU has erratum seamret_invd_vmcs, or the kernel predates" in (
        facts.check("upload-interface").detail
    )


def test_discover_no_upload_interface_g2_with_no_remaining_updates(tmp_path: Path) -> None:
    _, facts = host_facts(tmp_path, generation="G2", firmware=False, remaining=0)
    assert facts.check("upload-interface").detail.endswith(
        "num_remaining_updates is 0, and this kernel registers the interface "
        "only while updates remain"
    )


def test_discover_hidden_seamldr_attributes(tmp_path: Path) -> None:
    root, facts = host_facts(
        tmp_path,
        firmware=False,
        overrides={f"{T}/seamldr_version": None, f"{T}/num_remaining_updates": None},
    )
    host_dir = at(root, T)
    assert facts.sysfs_layout is None and facts.generation is None
    assert facts.module_version == Version(1, 5, 6)
    assert facts.check("seamldr-version").detail == (
        f"neither {host_dir}/seamldr_version nor {host_dir}/seamldr/version exists; "
        "the kernel shows the P-SEAMLDR attributes only when the module can be updated"
    )
    assert facts.check("remaining-updates").code == "no-remaining-updates"
    assert "the P-SEAMLDR attributes are hidden too; likely causes:" in (
        facts.check("upload-interface").detail
    )


def test_discover_busy_status_is_upload_busy(tmp_path: Path) -> None:
    root, facts = host_facts(tmp_path, status="transferring")
    check = facts.check("upload-idle")
    assert facts.upload_status == "transferring"
    assert (check.ok, check.code) == (False, "upload-busy")
    assert check.detail == (
        f'{root}/sys/class/firmware/tdx_module/status is "transferring", not "idle": another '
        "upload is in progress; try again when it finishes"
    )
    assert EXIT_CODES[check.code] == 75


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


# --------------------------------------------------------------------------- versions


@pytest.mark.parametrize(("padded", "unpadded"), [("1.5.06", "1.5.6"), ("2.0.00", "2.0.0")])
def test_read_version_file_padded_and_unpadded_are_equal(
    tmp_path: Path, padded: str, unpadded: str
) -> None:
    (tmp_path / "a").write_text(padded + "\n")
    (tmp_path / "b").write_text(unpadded + "\n")
    assert read_version_file(tmp_path / "a") == read_version_file(tmp_path / "b")


def test_discover_padded_and_unpadded_module_versions_are_equal(tmp_path: Path) -> None:
    _, padded = host_facts(tmp_path / "a", overrides={f"{T}/version": "1.5.06\n"})
    _, unpadded = host_facts(tmp_path / "b", overrides={f"{T}/version": "1.5.6\n"})
    assert padded.module_version == unpadded.module_version == Version(1, 5, 6)


@pytest.mark.parametrize(
    ("err", "code", "message"),
    [
        (
            errno.ENXIO,
            "version-unreadable",
            "reading version fails with ENXIO: the TDX module is lost; every TD is gone; "
            "reboot needed",
        ),
        (errno.EACCES, "permission-denied", "permission denied: run as root"),
        (errno.EPERM, "permission-denied", "permission denied: run as root"),
        (errno.EIO, "io-error", "read fails with EIO (Input/output error)"),
    ],
    ids=["ENXIO", "EACCES", "EPERM", "EIO"],
)
def test_read_version_file_oserrors(tmp_path: Path, err: int, code: str, message: str) -> None:
    path = tmp_path / "version"
    path.write_text("1.5.06\n")
    sysroot = faulty_reads(tmp_path, {"/version": err})
    with pytest.raises(TdxError) as info:
        read_version_file(path, sysroot)
    assert (info.value.code, info.value.message) == (code, f"{path}: {message}")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "does not exist"),
        (b"", "empty (expected a version major.minor.update)"),
        (b" \n", "empty (expected a version major.minor.update)"),
        (b"abc\n", '"abc" is not a version (expected major.minor.update)'),
        (b"1.5\n", '"1.5" is not a version (expected major.minor.update)'),
        (b"1.5.06.1\n", '"1.5.06.1" is not a version (expected major.minor.update)'),
        (b"\xff\x00", '"\\xff\\x00" is not a version (expected major.minor.update)'),
        # Arabic-Indic digits: str.isdigit() and int() accept them, sysfs never prints them.
        (
            "١.٥.٠".encode(),
            '"\\xd9\\xa1.\\xd9\\xa5.\\xd9\\xa0" is not a version (expected major.minor.update)',
        ),
    ],
    ids=["missing", "empty", "blank", "garbage", "short", "long", "binary", "unicode-digits"],
)
def test_read_version_file_bad_content(tmp_path: Path, content: bytes | None, message: str) -> None:
    path = tmp_path / "version"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(TdxError) as info:
        read_version_file(path)
    assert (info.value.code, info.value.message) == ("version-unreadable", f"{path}: {message}")
    assert info.value.exit_code == 69


def test_read_version_file_long_garbage_is_truncated_in_the_message(tmp_path: Path) -> None:
    path = tmp_path / "version"
    path.write_bytes(b"x" * 5000)
    with pytest.raises(TdxError) as info:
        read_version_file(path)
    assert info.value.message == (
        f'{path}: "{"x" * 40}"… (4096 bytes) is not a version (expected major.minor.update)'
    )


def test_discover_module_lost_enxio(tmp_path: Path) -> None:
    root = build_host_tree(tmp_path / "host")
    facts = discover(faulty_reads(root, {f"{T}/version": errno.ENXIO}))
    check = facts.check("module-version")
    assert (check.ok, check.code) == (False, "version-unreadable")
    assert check.detail == (
        f"{at(root, T)}/version: reading version fails with ENXIO: the TDX module is lost; "
        "every TD is gone; reboot needed"
    )
    assert facts.module_version is None
    assert facts.problems["module_version"].code == "version-unreadable"


@pytest.mark.parametrize(
    ("generation", "attribute"),
    [("G3", "seamldr/version"), ("G5", "seamldr_version")],
)
def test_discover_seamldr_version_eacces_is_permission_denied(
    tmp_path: Path, generation: str, attribute: str
) -> None:
    root = build_host_tree(tmp_path / "host", generation=generation)
    sysroot = faulty_reads(root, {f"{T}/{attribute}": errno.EACCES})
    check = discover(sysroot).check("seamldr-version")
    assert (check.ok, check.code) == (False, "permission-denied")
    assert check.detail == (
        f"{at(root, T)}/{attribute}: permission denied; the P-SEAMLDR attributes are readable "
        "by root only (mode 0400 since kernel series v4): run as root"
    )
    assert EXIT_CODES[check.code] == 77


def _checks_as_nobody(root: Path) -> dict[str, list[object]]:
    """discover() in a forked child that dropped root (the interpreter under /root stays usable)."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through the pipe
        status = 1
        try:
            os.close(read_end)
            if os.geteuid() == 0:
                os.setgroups([])
                os.setgid(65534)
                os.setuid(65534)
            facts = discover(Sysroot(root))
            out = {c.name: [c.ok, c.code, c.detail] for c in facts.checks}
            os.write(write_end, json.dumps(out).encode())
            status = 0
        finally:
            os._exit(status)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        payload = pipe.read()
    _, wait_status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(wait_status) == 0, "the unprivileged child failed"
    return json.loads(payload)


def test_discover_as_unprivileged_user_gets_real_eacces_on_0400_attributes() -> None:
    """No monkeypatch: an unprivileged process reads the G3 0400 P-SEAMLDR attributes."""
    if os.geteuid() != 0:
        pytest.skip("needs root to switch to another uid (the files' owner reads mode 0400)")
    base = Path(tempfile.mkdtemp(prefix="tdxupdate-host-"))
    try:
        base.chmod(0o755)
        root = build_host_tree(base / "host", generation="G3")
        checks = _checks_as_nobody(root)
    finally:
        shutil.rmtree(base)
    assert checks["seamldr-version"] == [
        False,
        "permission-denied",
        f"{at(root, T)}/seamldr/version: permission denied; the P-SEAMLDR attributes are "
        "readable by root only (mode 0400 since kernel series v4): run as root",
    ]
    assert checks["remaining-updates"][:2] == [False, "permission-denied"]
    assert checks["module-version"] == [True, None, "TDX module 1.5.06"]
    assert checks["cpu-signature"][0] is True


# ------------------------------------------------------------------- every file, every fault

# fact file -> (check it feeds, code when content is bad, code when missing)
FILE_CHECKS = {
    "module_version": ("module-version", "version-unreadable", "version-unreadable"),
    "seamldr_version": ("seamldr-version", "version-unreadable", "version-unreadable"),
    "num_remaining_updates": ("remaining-updates", "no-remaining-updates", "no-remaining-updates"),
    "status": ("upload-idle", "upload-busy", "io-error"),
    "online": ("cpus-online", "io-error", "io-error"),
    "present": ("cpus-online", "io-error", "io-error"),
    "cpuinfo": ("cpu-signature", "cpu-unknown", "cpu-unknown"),
}
FACT_KEYS = {
    "module_version": "module_version",
    "seamldr_version": "seamldr_version",
    "num_remaining_updates": "num_remaining_updates",
    "status": "upload_status",
    "online": "cpus_online",
    "present": "cpus_present",
    "cpuinfo": "cpu_signature",
}
BAD_CONTENT = {"empty": b"", "blank": b"\n", "garbage": b"abc\n", "binary": b"\xff\x00\xfe\n"}


@pytest.mark.parametrize("generation", ["G3", "G5"])
@pytest.mark.parametrize("fault", [*BAD_CONTENT, "missing", "EACCES", "EIO"])
@pytest.mark.parametrize("fact", sorted(FILE_CHECKS))
def test_discover_every_file_fault_fails_its_check_naming_the_file(
    tmp_path: Path, generation: str, fault: str, fact: str
) -> None:
    name, bad_code, missing_code = FILE_CHECKS[fact]
    abspath = host_paths(generation)[fact]
    overrides: dict[str, str | bytes | None] = {}
    if fault in BAD_CONTENT:
        overrides[abspath] = BAD_CONTENT[fault]
    elif fault == "missing":
        overrides[abspath] = None
    root = build_host_tree(tmp_path / "host", generation=generation, overrides=overrides)
    failures = {abspath: getattr(errno, fault)} if fault in ("EACCES", "EIO") else {}
    path = at(root, abspath)  # status: under the class path, the one discover() reads

    facts = discover(faulty_reads(root, failures))

    check = facts.check(name)
    expected_code = {"missing": missing_code, "EACCES": "permission-denied", "EIO": "io-error"}
    assert check.ok is False
    assert check.code == expected_code.get(fault, bad_code)
    assert check.detail.startswith(str(path)), check.detail
    assert "\n" not in check.detail
    if fact != "status" or fault not in BAD_CONTENT:  # unreadable, not merely busy
        assert facts.problems[FACT_KEYS[fact]].message == check.detail
    # Every other check is unaffected, except the erratum check, which also needs cpuinfo.
    others = [c for c in facts.checks if c.name != name]
    if fact == "cpuinfo":
        erratum = facts.check("erratum-seamret-invd-vmcs")
        if fault in ("garbage", "binary"):
            assert erratum.ok  # readable, just no bugs line: the erratum is not listed
        else:
            assert erratum.detail == f"not checked: {check.detail}"
        others = [c for c in others if c.name != "erratum-seamret-invd-vmcs"]
    assert all(c.ok for c in others), [c for c in others if not c.ok]


@pytest.mark.parametrize(
    ("fact", "content", "detail"),
    [
        ("num_remaining_updates", b"abc\n", '{path}: "abc" is not a number'),
        ("num_remaining_updates", b"", "{path}: empty (expected a number)"),
        ("num_remaining_updates", b"-1\n", '{path}: "-1" is not a number'),
        ("num_remaining_updates", None, "{path}: does not exist"),
        ("online", b"0-3x\n", '{path}: "0-3x" is not a CPU list like 0-3,5'),
        ("present", b"\n", "{path}: empty (expected a CPU list like 0-3)"),
        (
            "cpuinfo",
            b"processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\n",
            '{path}: vendor_id is "AuthenticAMD", not GenuineIntel; '
            "give the signature with --cpu-signature",
        ),
        ("cpuinfo", b"", "{path}: empty"),
        (
            "status",
            b"",
            '{path} is "", not "idle": another upload is in progress; try again when it finishes',
        ),
    ],
    ids=[
        "remaining-garbage",
        "remaining-empty",
        "remaining-negative",
        "remaining-missing",
        "online-garbage",
        "present-empty",
        "cpuinfo-amd",
        "cpuinfo-empty",
        "status-empty",
    ],
)
def test_discover_bad_file_details(
    tmp_path: Path, fact: str, content: bytes | None, detail: str
) -> None:
    abspath = host_paths("G5")[fact]
    root, facts = host_facts(tmp_path, overrides={abspath: content})
    name = FILE_CHECKS[fact][0]
    assert facts.check(name).detail == detail.format(path=at(root, abspath))
    if fact != "status":
        assert facts.problems[FACT_KEYS[fact]].message == facts.check(name).detail


def test_discover_remaining_zero_fails_with_no_remaining_updates(tmp_path: Path) -> None:
    _, facts = host_facts(tmp_path, remaining=0)
    assert facts.num_remaining_updates == 0
    assert facts.check("remaining-updates") == host.HostCheck(
        "remaining-updates",
        False,
        "num_remaining_updates is 0: no update possible until reboot",
        "no-remaining-updates",
    )


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


def test_discover_amd_vendor_is_cpu_unknown(tmp_path: Path) -> None:
    _, facts = host_facts(tmp_path, cpu=(25, 17, 1), vendor="AuthenticAMD")
    check = facts.check("cpu-signature")
    assert (check.ok, check.code, facts.cpu_signature) == (False, "cpu-unknown", None)
    assert facts.problems["cpu_signature"].exit_code == 69


def test_discover_cpu_signature_argument_overrides_cpuinfo(tmp_path: Path) -> None:
    root = build_host_tree(tmp_path / "host", vendor="AuthenticAMD")
    facts = discover(Sysroot(root), cpu_signature=0xA06D1)
    assert facts.cpu_signature == 0xA06D1
    assert facts.check("cpu-signature") == host.HostCheck(
        "cpu-signature", True, "0xa06d1 (given; /proc/cpuinfo not used)", None
    )
    assert "cpu_signature" not in facts.problems


def test_discover_cpu_signature_argument_out_of_range_is_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"does not fit CPUID\.1\.EAX"):
        discover(Sysroot(tmp_path), cpu_signature=1 << 32)


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


@pytest.mark.parametrize("text", ["a", "3-1", "0-", "1,,2", "0-70000", "0 - 3", "0-3:2/4"])
def test_parse_cpu_list_garbage_raises(text: str) -> None:
    with pytest.raises(ValueError):
        parse_cpu_list(text)


@pytest.mark.parametrize(
    ("cpus", "text"), [({0, 1, 2, 3, 5}, "0-3,5"), ({2, 3}, "2-3"), ({7}, "7"), (set(), "")]
)
def test_format_cpu_list(cpus: set[int], text: str) -> None:
    assert format_cpu_list(cpus) == text
    assert parse_cpu_list(text) == frozenset(cpus)


@pytest.mark.parametrize(
    ("online", "present", "detail"),
    [
        (
            "0-1",
            "0-3",
            "2 of 4 CPUs online (offline: 2-3); the update needs every present CPU online",
        ),
        (
            "0-1,3",
            "0-3",
            "3 of 4 CPUs online (offline: 2); the update needs every present CPU online",
        ),
    ],
)
def test_discover_offline_cpus_fail(tmp_path: Path, online: str, present: str, detail: str) -> None:
    _, facts = host_facts(tmp_path, online=online, present=present)
    assert facts.check("cpus-online") == host.HostCheck(
        "cpus-online", False, detail, "cpus-offline"
    )
    assert EXIT_CODES["cpus-offline"] == 75


def test_discover_cpu_lists_compare_as_sets(tmp_path: Path) -> None:
    _, facts = host_facts(tmp_path, online="0,1,2,3", present="0-3")
    assert facts.check("cpus-online") == host.HostCheck(
        "cpus-online", True, "all 4 present CPUs are online (0-3)", None
    )


def test_discover_online_cpu_not_present_is_inconsistent(tmp_path: Path) -> None:
    root, facts = host_facts(tmp_path, online="0-4", present="0-3")
    check = facts.check("cpus-online")
    assert (check.ok, check.code) == (False, "io-error")
    assert check.detail == (
        f"{at(root, '/sys/devices/system/cpu/online')} lists CPUs 4 that "
        f"{at(root, '/sys/devices/system/cpu/present')} does not: the CPU lists are inconsistent"
    )


def test_discover_erratum_in_bugs_fails_the_erratum_check(tmp_path: Path) -> None:
    root, facts = host_facts(tmp_path, bugs="seamret_invd_vmcs")
    assert facts.erratum_seamret_invd_vmcs is True
    assert facts.check("erratum-seamret-invd-vmcs") == host.HostCheck(
        "erratum-seamret-invd-vmcs",
        False,
        f"{root}/proc/cpuinfo: the bugs line lists seamret_invd_vmcs: this CPU cannot update "
        "the TDX module at runtime; updates need a reboot",
        "no-upload-interface",
    )


def test_discover_erratum_must_be_a_whole_word(tmp_path: Path) -> None:
    _, facts = host_facts(tmp_path, bugs="seamret_invd_vmcs_fixed")
    assert facts.erratum_seamret_invd_vmcs is False
    assert facts.check("erratum-seamret-invd-vmcs").ok


def test_host_facts_check_unknown_name_raises_key_error(tmp_path: Path) -> None:
    _, facts = host_facts(tmp_path)
    with pytest.raises(KeyError, match="no host check named 'nope'"):
        facts.check("nope")


# --------------------------------------------------------------------------- committed samples

SAMPLE_TREES = {
    "spr-flat-1.5.06": {"generation": "G5"},
    "spr-seamldr-dir-1.5.06": {"generation": "G3"},
}


#: On a real host ``/sys/class/firmware/<name>`` is a symbolic link to the device's firmware
#: directory: two names of one directory. A copy of a tree keeps either name (an sdist keeps the
#: files under the link's name and drops the target's), so trees are compared under one name.
_DEVICE_FIRMWARE = "sys/devices/faux/tdx_host/firmware/"
_CLASS_FIRMWARE = "sys/class/firmware/"


def _tree(root: Path) -> dict[str, str | bytes]:
    """What the tool reads from a tree: every file, symlinks followed, each upload-interface
    file under its class name (see above)."""
    out: dict[str, str | bytes] = {}
    for top, _dirs, files in os.walk(root, followlinks=True):
        for name in files:
            p = Path(top) / name
            rel = str(p.relative_to(root))
            if rel.startswith(_DEVICE_FIRMWARE):
                rel = _CLASS_FIRMWARE + rel[len(_DEVICE_FIRMWARE) :]
            data = read_as_root(p)
            assert out.setdefault(rel, data) == data, f"{rel}: the two names differ"
    return dict(sorted(out.items()))


@pytest.mark.parametrize("name", sorted(SAMPLE_TREES))
def test_sample_host_trees_match_the_factory(tmp_path: Path, name: str) -> None:
    built = build_host_tree(tmp_path / name, **SAMPLE_TREES[name])  # type: ignore[arg-type]
    assert _tree(SAMPLES / name) == _tree(built)


@pytest.mark.parametrize(
    ("name", "layout", "fmt"),
    [("spr-flat-1.5.06", "flat", 0x200), ("spr-seamldr-dir-1.5.06", "seamldr-dir", 0x100)],
)
def test_sample_host_trees_pass_every_check(name: str, layout: str, fmt: int) -> None:
    facts = discover(Sysroot(SAMPLES / name))
    assert facts.sysfs_layout == layout
    assert facts.image_format == fmt
    assert facts.module_version == Version(1, 5, 6)
    assert facts.cpu_signature == 0x806F8
    assert facts.upload_dir == SAMPLES / name / "sys/class/firmware/tdx_module"
    assert facts.failed == ()


# --------------------------------------------------------------------------- never raises

FUZZ_GENERATIONS = ("G2", "G3", "G5")


def _fuzz_files(generation: str) -> list[str]:
    paths = host_paths(generation)
    keys = [
        "module_version",
        "seamldr_version",
        "num_remaining_updates",
        "compat_capable",
        "status",
        "online",
        "present",
        "cpuinfo",
        "osrelease",
    ]
    return [paths[k] for k in keys]


@pytest.fixture(scope="module")
def fuzz_roots(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("fuzz")
    return {
        g: build_host_tree(base / g, generation=g, compat_capable=True) for g in FUZZ_GENERATIONS
    }


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    generation=st.sampled_from(FUZZ_GENERATIONS),
    data=st.data(),
)
def test_discover_random_bytes_in_sysfs_files_never_raise(
    fuzz_roots: dict[str, Path], generation: str, data: st.DataObject
) -> None:
    root = fuzz_roots[generation]
    files = _fuzz_files(generation)
    chosen = data.draw(
        st.dictionaries(st.sampled_from(files), st.binary(max_size=64), min_size=1), label="files"
    )
    saved = {p: read_as_root(at(root, p)) for p in chosen}
    try:
        for p, content in chosen.items():
            write_as_root(at(root, p), content)
        facts = discover(Sysroot(root))
    finally:
        for p, content in saved.items():
            write_as_root(at(root, p), content)

    assert [c.name for c in facts.checks] == list(CHECK_NAMES)
    for c in facts.checks:
        assert (c.code is None) == c.ok
        assert c.code is None or c.code in EXIT_CODES
        assert c.detail and "\n" not in c.detail
    for fact in REQUIRED_FACTS:
        assert (getattr(facts, fact) is None) == (fact in facts.problems), fact
    assert all(isinstance(e, TdxError) for e in facts.problems.values())
    assert facts.tdx_host is True


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
