"""Host side of the real-kernel tier: build or reuse the kernel, boot one VM, run the guest tests.

Implements real-kernel-tier.md §4 (mode B, "hostroot") and §8: the host's ``/`` is shared
read-only over 9p, the guest chroots into it and runs *this* interpreter (``sys.executable``)
on the in-guest test files under ``tests/realkernel/guest/``, once per run. A read-write 9p
share carries the run script in and the JUnit XML, the console log and dmesg out.

Used by ``tests/realkernel/test_tier.py`` (``python -m pytest -m realkernel``) and runnable by
hand: ``python tests/realkernel/runner.py [-k EXPR ...]`` prints the guest's pytest output and
exits with its status. Environment knobs are listed in ``tests/realkernel/README.md``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shlex
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
GUEST_DIR = HERE / "guest"
BUILD_SCRIPT = HERE / "build-kernel.sh"

#: Mount point of the read-write results share inside the guest (guest-init.sh), and a
#: scratch tmpfs that exists even when the host's /tmp must stay visible.
GUEST_SHARE = "/dev/rk"
GUEST_SCRATCH = "/dev/rk-tmp"

DEFAULT_TIMEOUT = 900.0  # whole VM run: boot, pytest, shutdown
DEFAULT_BUILD_TIMEOUT = 3600.0  # a cold kernel build takes ~3-4 min on 2 CPUs
DEFAULT_MEM_MB = 1024  # two 4 MiB test_firmware buffers, 2 MB uploads, Python and tmpfs
DEFAULT_SMP = 2  # the fw_upload worker runs while the test's Python runs, as on hardware

# Exit statuses of the run script that are not pytest's own.
RC_NO_RESULT = 125  # the VM ended without reporting a status


class Unavailable(RuntimeError):
    """qemu or the kernel cannot be had; the message says what is missing and where to look."""


@dataclasses.dataclass(frozen=True)
class Artifacts:
    kernel: Path
    initrd: Path
    info: str  # build-info.txt: source version, key, build time
    log: str  # build-kernel.sh's stderr (cache hit or the build's progress)
    seconds: float  # how long build-kernel.sh took this time


@dataclasses.dataclass(frozen=True)
class GuestCase:
    """One testcase of the guest's JUnit XML."""

    key: str  # "test_file.py::test_func" or "test_file.py::TestClass::test_func"
    name: str  # the full test name, parameters included
    outcome: str  # passed | failed | error | skipped
    message: str
    details: str

    @property
    def nodeid(self) -> str:
        module, _, rest = self.key.partition("::")
        prefix = rest.rsplit("::", 1)[0] + "::" if "::" in rest else ""
        return f"{module}::{prefix}{self.name}"


@dataclasses.dataclass(frozen=True)
class GuestRun:
    share: Path
    command: list[str]
    returncode: int | None  # the guest pytest's exit status; None when the VM gave none
    qemu_returncode: int | None  # None when qemu was killed at the timeout
    timed_out: bool
    duration_s: float
    console: str
    cases: tuple[GuestCase, ...] | None  # None when no JUnit XML came back
    junit_problem: str | None

    def console_tail(self, lines: int = 60) -> str:
        return "\n".join(self.console.replace("\r", "").splitlines()[-lines:])


def _env_float(name: str, default: float) -> float:
    value = os.environ.get(name, "")
    try:
        return float(value) if value else default
    except ValueError as exc:
        raise Unavailable(f"${name}={value!r} is not a number") from exc


def build(timeout: float | None = None) -> Artifacts:
    """Run build-kernel.sh (cache hit: seconds; cold: minutes) and return the artifacts."""
    timeout = _env_float("RK_BUILD_TIMEOUT", DEFAULT_BUILD_TIMEOUT) if timeout is None else timeout
    started = time.monotonic()
    try:
        proc = subprocess.run(
            ["bash", str(BUILD_SCRIPT)],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise Unavailable(
            f"{BUILD_SCRIPT} did not finish within {timeout:.0f}s ($RK_BUILD_TIMEOUT)"
        ) from exc
    except OSError as exc:
        raise Unavailable(f"cannot run {BUILD_SCRIPT}: {exc}") from exc
    seconds = time.monotonic() - started
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-25:])
        raise Unavailable(
            f"the real-kernel tier cannot get its kernel: {BUILD_SCRIPT} exited "
            f"{proc.returncode}:\n{tail}"
        )
    found = dict(line.split("=", 1) for line in proc.stdout.splitlines() if "=" in line)
    try:
        kernel, initrd, info = Path(found["kernel"]), Path(found["initrd"]), Path(found["info"])
    except KeyError as exc:
        raise Unavailable(
            f"{BUILD_SCRIPT} printed no {exc.args[0]}= line: {proc.stdout!r}"
        ) from exc
    for path in (kernel, initrd, info):
        if not path.is_file():
            raise Unavailable(f"{BUILD_SCRIPT} reported {path}, which does not exist")
    return Artifacts(kernel, initrd, info.read_text(), proc.stderr, seconds)


def qemu_binary() -> str:
    found = shutil.which("qemu-system-x86_64")
    if found is None:
        raise Unavailable(
            "qemu-system-x86_64 is not installed (Debian package qemu-system-x86; "
            "tests/realkernel/build-kernel.sh installs it when run as root)"
        )
    return found


def _host_paths_needed() -> list[Path]:
    """What the guest must see at its host path: the checkout and the Python installation."""
    paths = {REPO, Path(sys.executable), Path(sys.prefix), Path(sys.base_prefix)}
    for name in ("purelib", "platlib", "stdlib"):
        paths.add(Path(sysconfig.get_paths()[name]))
    return sorted(paths)


def hidden_dirs_needed() -> set[str]:
    """Which of /tmp and /run hold something the guest needs (it mounts tmpfs over the rest)."""
    needed = set()
    for top in ("/tmp", "/run"):
        for path in _host_paths_needed():
            if path == Path(top) or Path(top) in path.parents:
                needed.add(top)
    return needed


def qemu_command(art: Artifacts, share: Path) -> list[str]:
    """The qemu command line (real-kernel-tier.md §4.3 mode B, pitfalls 1, 7, 13, 14, 17)."""
    accel = os.environ.get("RK_ACCEL", "tcg")
    if accel not in ("tcg", "kvm"):
        raise Unavailable(f"$RK_ACCEL={accel!r}: expected tcg (the default) or kvm")
    # /dev/kvm on these machines is nested PVM: qemu aborts with -cpu max/host there (§2).
    # TCG emulates RDRAND with -cpu max, which random.trust_cpu=on needs (pitfall 14).
    cpu = "host" if accel == "kvm" else "max"
    mem = os.environ.get("RK_MEM", str(DEFAULT_MEM_MB))
    smp = os.environ.get("RK_SMP", str(DEFAULT_SMP))
    keep = hidden_dirs_needed()
    # key=value words of the kernel command line become /init's environment
    append = "console=ttyS0 panic=-1 quiet random.trust_cpu=on"
    if "/tmp" in keep:
        append += " rk_host_tmp=1"
    if "/run" in keep:
        append += " rk_host_run=1"
    return [
        qemu_binary(),
        "-accel",
        accel,
        "-cpu",
        cpu,
        "-m",
        mem,
        "-smp",
        smp,
        "-nographic",
        "-no-reboot",
        "-monitor",
        "none",
        "-serial",
        "stdio",
        "-kernel",
        str(art.kernel),
        "-initrd",
        str(art.initrd),
        "-append",
        append,
        "-device",
        "isa-debug-exit,iobase=0xf4,iosize=0x04",
        "-virtfs",
        f"local,path={share},mount_tag=rkshare,security_model=none,id=rkshare",
        "-virtfs",
        "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,"
        "multidevs=remap,id=hostroot",
    ]


def run_script(pytest_args: list[str]) -> str:
    """The script the guest runs (chrooted into the host's root, cwd = the results share)."""
    python = sys.executable
    if not python or not Path(python).is_absolute():
        raise Unavailable(f"sys.executable is {python!r}; the guest needs an absolute path")
    tmp = GUEST_SCRATCH if "/tmp" in hidden_dirs_needed() else "/tmp"
    env = {
        # the host's / is read-only in the guest; /tmp (unless the host's is needed) and the
        # scratch directory are tmpfs
        "HOME": f"{tmp}/home",
        "TMPDIR": tmp,
        "LANG": "C.UTF-8",
        "PATH": f"{Path(python).parent}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:"
        "/sbin:/bin",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONUNBUFFERED": "1",
        # plugin autoload costs ~8 s of TCG time (pitfall 15); nothing here needs a plugin
        "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1",
        "TDXUPDATE_RK_GUEST": "1",
        "TDXUPDATE_RK_SHARE": GUEST_SHARE,
        # the CLI subprocesses of the guest tests use the same interpreter
        "TDXUPDATE_RK_PYTHON": python,
    }
    pytest_cmd = [
        python,
        "-m",
        "pytest",
        "-p",
        "no:cacheprovider",
        "-m",
        "realkernel",
        "-v",
        "--color=no",
        "-o",
        "console_output_style=classic",
        f"--rootdir={REPO}",
        f"--junitxml={GUEST_SHARE}/junit.xml",
        "-o",
        "junit_family=xunit2",
        *pytest_args,
        str(GUEST_DIR),
    ]
    lines = [
        "#!/bin/sh",
        "# written by tests/realkernel/runner.py; runs as root inside the VM",
        *(f"export {k}={shlex.quote(v)}" for k, v in env.items()),
        'mkdir -p "$HOME"',
        f"cd {shlex.quote(str(REPO))} || exit {RC_NO_RESULT}",
        f"uname -r > {GUEST_SHARE}/uname.txt",
        'echo "rk: pytest start uptime=$(cut -d" " -f1 /proc/uptime)"',
        shlex.join(pytest_cmd),
        "rc=$?",
        'echo "rk: pytest end rc=$rc uptime=$(cut -d" " -f1 /proc/uptime)"',
        f"dmesg > {GUEST_SHARE}/dmesg.txt 2>&1",
        "exit $rc",
    ]
    return "\n".join(lines) + "\n"


def _case_key(classname: str) -> tuple[str, str]:
    """JUnit classname -> (module file, class path) relative to the guest directory."""
    parts = classname.split(".")
    try:
        start = len(parts) - 1 - parts[::-1].index("guest")
    except ValueError:
        return classname, ""
    rest = parts[start + 1 :]
    if not rest:
        return classname, ""
    return f"{rest[0]}.py", "::".join(rest[1:])


def parse_junit(path: Path) -> tuple[GuestCase, ...]:
    """Every testcase of a pytest JUnit XML file (raises ValueError when it is malformed)."""
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as exc:
        raise ValueError(f"{path}: not valid XML: {exc}") from exc
    cases = []
    for tc in root.iter("testcase"):
        classname = tc.get("classname", "")
        name = tc.get("name", "")
        module, klass = _case_key(classname)
        func = name.split("[", 1)[0]
        key = "::".join(p for p in (module, klass, func) if p)
        outcome, message, details = "passed", "", ""
        for tag in ("failure", "error", "skipped"):
            node = tc.find(tag)
            if node is not None:
                outcome = {"failure": "failed"}.get(tag, tag)
                message = node.get("message", "")
                details = (node.text or "").strip()
                break
        cases.append(GuestCase(key, name, outcome, message, details))
    return tuple(cases)


def run_guest(
    art: Artifacts, share: Path, pytest_args: list[str] | None = None, timeout: float | None = None
) -> GuestRun:
    """Boot one VM, run the guest tests once, and collect what came back through ``share``."""
    timeout = _env_float("RK_TIMEOUT", DEFAULT_TIMEOUT) if timeout is None else timeout
    args = list(pytest_args or []) + shlex.split(os.environ.get("RK_PYTEST_ARGS", ""))
    share = share.resolve()
    share.mkdir(parents=True, exist_ok=True)
    for stale in ("rc", "junit.xml", "console.log", "dmesg.txt", "uname.txt"):
        (share / stale).unlink(missing_ok=True)
    (share / "run.sh").write_text(run_script(args))
    command = qemu_command(art, share)
    console_path = share / "console.log"
    started = time.monotonic()
    timed_out = False
    with console_path.open("wb") as console, open(os.devnull, "rb") as devnull:
        try:
            proc = subprocess.Popen(
                command, stdin=devnull, stdout=console, stderr=subprocess.STDOUT
            )
        except OSError as exc:
            raise Unavailable(f"cannot start {command[0]}: {exc}") from exc
        qemu_rc: int | None
        try:
            qemu_rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            qemu_rc = None
            proc.kill()
            proc.wait()
    duration = time.monotonic() - started
    console_text = console_path.read_text(errors="replace")
    returncode: int | None = None
    rc_file = share / "rc"
    if rc_file.is_file():
        try:
            returncode = int(rc_file.read_text().strip())
        except ValueError:
            returncode = None
    if returncode is None:
        for line in console_text.replace("\r", "").splitlines():
            if line.startswith("rk: exit rc="):
                with contextlib.suppress(ValueError):
                    returncode = int(line.split("=", 1)[1].split()[0])
    cases: tuple[GuestCase, ...] | None = None
    problem = None
    junit = share / "junit.xml"
    if junit.is_file():
        try:
            cases = parse_junit(junit)
        except ValueError as exc:
            problem = str(exc)
    else:
        problem = f"{junit} was not written"
    return GuestRun(
        share, command, returncode, qemu_rc, timed_out, duration, console_text, cases, problem
    )


@dataclasses.dataclass(frozen=True)
class Session:
    """The outcome of building the kernel and running the guest tests once."""

    run: GuestRun | None  # None when the VM could not be run
    problem: str | None  # why (qemu or the kernel cannot be had, ...)
    build_seconds: float | None


def run_session(share: Path) -> Session:
    """Build or reuse the kernel, then run the guest tests once; never raises Unavailable."""
    try:
        art = build()
        run = run_guest(art, share)
    except Unavailable as exc:
        return Session(None, str(exc), None)
    return Session(run, None, art.seconds)


def main(argv: list[str]) -> int:
    try:
        art = build()
        share = Path(tempfile.mkdtemp(prefix="tdxupdate-rk-"))
        print(f"runner: kernel {art.kernel} ({art.seconds:.1f}s), share {share}", file=sys.stderr)
        run = run_guest(art, share, argv)
    except Unavailable as exc:
        print(f"runner: {exc}", file=sys.stderr)
        return 2
    sys.stdout.write(run.console.replace("\r", ""))
    print(
        f"runner: VM finished in {run.duration_s:.1f}s, guest pytest exit status "
        f"{run.returncode}{' (timed out)' if run.timed_out else ''}, qemu exit status "
        f"{run.qemu_returncode}; results in {share}",
        file=sys.stderr,
    )
    if run.returncode is None:
        return RC_NO_RESULT
    return run.returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
