"""tdxupdate.host: discovery of the facts of every generation of kernel-abi.md §1/§6, each file's
faults becoming a failed check with its error token (cli-contract.md §2).

The generation table is tested in test_kernels.py, the parsers in test_hostfiles.py, the checks'
order and precedence in test_preflight.py, the Sysroot itself in test_sysroot.py."""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest
from factories.hosts import (
    HostOptions,
    at,
    build_host_tree,
    copy_as_root,
    faulty_reads,
    host_facts,
    host_paths,
    read_as_root,
    write_as_root,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tdxupdate
from tdxupdate import host
from tdxupdate.errors import EXIT_CODES, TdxError, UsageError
from tdxupdate.host import discover, read_version_file
from tdxupdate.preflight import CHECK_NAMES, HostCheck
from tdxupdate.sysroot import Sysroot
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


def test_discover_accepts_a_plain_path(tmp_path: Path) -> None:
    root = build_host_tree(tmp_path / "host")
    assert discover(root).module_version == discover(Sysroot(root)).module_version


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
    assert facts.check("upload-idle") == HostCheck(
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
    assert facts.sysfs_layout is None
    assert facts.generation is None
    assert facts.module_version == Version(1, 5, 6)
    assert facts.check("seamldr-version").detail == (
        f"neither {host_dir}/seamldr_version nor {host_dir}/seamldr/version exists; "
        "the kernel shows the P-SEAMLDR attributes only when the module can be updated"
    )
    assert facts.check("remaining-updates").code == "no-remaining-updates"
    assert "the P-SEAMLDR attributes are hidden too; likely causes:" in (
        facts.check("upload-interface").detail
    )


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
    assert check.code is not None
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
    checks: dict[str, list[object]] = json.loads(payload)
    return checks


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


def test_discover_amd_vendor_is_cpu_unknown(tmp_path: Path) -> None:
    _, facts = host_facts(tmp_path, cpu=(25, 17, 1), vendor="AuthenticAMD")
    check = facts.check("cpu-signature")
    assert (check.ok, check.code, facts.cpu_signature) == (False, "cpu-unknown", None)
    assert facts.problems["cpu_signature"].exit_code == 69


def test_discover_cpu_signature_argument_overrides_cpuinfo(tmp_path: Path) -> None:
    root = build_host_tree(tmp_path / "host", vendor="AuthenticAMD")
    facts = discover(Sysroot(root), cpu_signature=0xA06D1)
    assert facts.cpu_signature == 0xA06D1
    assert facts.check("cpu-signature") == HostCheck(
        "cpu-signature", True, "0xa06d1 (given; /proc/cpuinfo not used)", None
    )
    assert "cpu_signature" not in facts.problems


def test_discover_cpu_signature_argument_out_of_range_is_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"does not fit CPUID\.1\.EAX"):
        discover(Sysroot(tmp_path), cpu_signature=1 << 32)


# --------------------------------------------------------------------------- committed samples

SAMPLE_TREES: dict[str, HostOptions] = {
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
    built = build_host_tree(tmp_path / name, **SAMPLE_TREES[name])
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
        assert c.detail
        assert "\n" not in c.detail
    for fact in REQUIRED_FACTS:
        assert (getattr(facts, fact) is None) == (fact in facts.problems), fact
    assert all(isinstance(e, TdxError) for e in facts.problems.values())
    assert facts.tdx_host is True


def test_host_is_a_door_to_its_own_names_only() -> None:
    """Names that moved to kernels, hostfiles, preflight, sysroot and fwupload are imported from
    there: host neither lists them in ``__all__`` nor serves them to anyone."""
    from factories.doors import borrowed_imports, own_names

    assert set(host.__all__) <= own_names("tdxupdate.host")
    assert borrowed_imports("tdxupdate.host") == []
