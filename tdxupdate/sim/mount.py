"""Start and stop emulator mounts: FUSE availability, the daemon process, unmounting.

A mount is served by a separate process (``python -m tdxupdate.sim mount DIR --foreground``
with a hidden readiness pipe) in its own session, so signals meant for the caller (Ctrl-C in a
terminal, a SIGTERM to a process group) never reach the emulator. :func:`start_daemon` returns
once the kernel has sent FUSE_INIT, i.e. the mount is live; :func:`unmount` uses
``fusermount3 -u`` (``fusermount -u``, or ``umount`` as root) and falls back to a lazy unmount
when the mount is busy.
"""

from __future__ import annotations

import contextlib
import ctypes.util
import importlib.util
import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tdxupdate import fence
from tdxupdate.errors import IOFailure, Unavailable
from tdxupdate.sim.config import SimConfig

#: the FUSE device; a module attribute so tests can point it elsewhere
DEV_FUSE = Path("/dev/fuse")

HOW_TO_GET_FUSE = "apt-get install fuse3 and pip install mfusepy (into tdxupdate's environment)"


def fuse_problem() -> str | None:
    """Why FUSE cannot be used here (one line naming what is missing and how to get it)."""
    if not DEV_FUSE.exists():
        return (
            f"{DEV_FUSE} does not exist: load the fuse kernel module (modprobe fuse) or, in a "
            "container, pass --device /dev/fuse --cap-add SYS_ADMIN"
        )
    if not os.access(DEV_FUSE, os.R_OK | os.W_OK):
        return f"{DEV_FUSE} is not readable and writable by this user (run as root)"
    if ctypes.util.find_library("fuse3") is None and ctypes.util.find_library("fuse") is None:
        return "libfuse is not installed: apt-get install fuse3"
    if importlib.util.find_spec("mfusepy") is None:
        return (
            "the Python package mfusepy is not installed (Debian 12 does not package it): "
            "pip install mfusepy into the Python environment tdxupdate runs in"
        )
    if fusermount() is None:
        return "fusermount3 is not installed: apt-get install fuse3"
    return None


def require_fuse() -> None:
    """Raise ``fuse-unavailable`` (exit 69) with :func:`fuse_problem`'s line."""
    problem = fuse_problem()
    if problem is not None:
        raise Unavailable(f"FUSE is unavailable: {problem}", code="fuse-unavailable")


def fusermount() -> str | None:
    return shutil.which("fusermount3") or shutil.which("fusermount")


def is_mounted(mountpoint: Path) -> bool:
    """True when ``mountpoint`` is a mount point in this mount namespace (/proc/self/mounts)."""
    target = os.path.realpath(mountpoint)
    try:
        with open("/proc/self/mounts", encoding="utf-8") as f:
            for line in f:
                fields = line.split()
                if len(fields) > 1 and _unescape(fields[1]) == target:
                    return True
    except OSError:
        return os.path.ismount(target)
    return False


def _unescape(field: str) -> str:
    # /proc/mounts escapes space, tab, newline and backslash as octal
    for code, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field = field.replace(code, char)
    return field


def start_daemon(
    mountpoint: Path,
    config: SimConfig,
    *,
    log: Path | None = None,
    exit_with_parent: bool = False,
    timeout: float = 30.0,
) -> int:
    """Mount an emulator on ``mountpoint`` in a new session; return the daemon's pid.

    Raises ``fuse-unavailable`` when FUSE is missing and ``io-error`` when the mount fails
    (with the daemon's last error line).
    """
    require_fuse()
    from tdxupdate.sim.kernel import load_releases

    load_releases(config.mapping)  # a bad mapping file fails here, with its own error code
    mountpoint = Path(mountpoint)
    mountpoint.mkdir(parents=True, exist_ok=True)
    if is_mounted(mountpoint):
        raise IOFailure(f"{mountpoint}: something is already mounted there")
    read_fd, write_fd = os.pipe()
    command = [
        sys.executable,
        "-m",
        "tdxupdate.sim",
        "mount",
        str(mountpoint),
        "--foreground",
        "--config-json",
        json.dumps(config.to_json()),
        "--ready-fd",
        str(write_fd),
    ]
    if log is not None:
        command += ["--log", str(log)]
    if exit_with_parent:
        command += ["--exit-with-parent", str(os.getpid())]
    with tempfile.TemporaryFile() as errors:
        try:
            proc = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=errors,
                pass_fds=(write_fd,),
                start_new_session=True,
                close_fds=True,
            )
        finally:
            os.close(write_fd)
        try:
            ready = _wait_ready(read_fd, proc, timeout)
        finally:
            os.close(read_fd)
        if ready:
            return proc.pid
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        errors.seek(0)
        lines = [ln.strip() for ln in errors.read().decode("utf-8", "replace").splitlines()]
        lines = [ln for ln in lines if ln]
        detail = lines[-1] if lines else f"the emulator exited with status {proc.returncode}"
        if is_mounted(mountpoint):
            unmount(mountpoint)
        detail = detail.removeprefix("tdxupdate-sim: ")
        raise IOFailure(f"{mountpoint}: mounting the emulator failed: {detail}")


def _wait_ready(fd: int, proc: subprocess.Popen[bytes], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    received = b""
    while time.monotonic() < deadline:
        readable, _, _ = select.select([fd], [], [], 0.1)
        if readable:
            chunk = os.read(fd, 64)
            if not chunk:  # the daemon closed the pipe without saying ready: it died
                return b"ready" in received
            received += chunk
            if b"ready" in received:
                return True
        elif proc.poll() is not None:
            return False
    return False


def unmount(mountpoint: Path, *, lazy_fallback: bool = True) -> None:
    """Unmount an emulator; IOFailure when it cannot be unmounted.

    First the host lock and fence each of its upload interfaces took under /run/tdxupdate go
    (:func:`tdxupdate.fence.forget`, keyed by the resolved path, so while still mounted): the
    host goes away, and every way it does passes here (a session's teardown, ``tdxupdate-sim
    umount``, the watch on a throw-away host's parent)."""
    mountpoint = Path(mountpoint)
    if not is_mounted(mountpoint):
        raise IOFailure(f"{mountpoint}: no emulator is mounted there")
    with contextlib.suppress(OSError):
        for upload_dir in (mountpoint / "sys/class/firmware").iterdir():
            fence.forget(upload_dir)
    attempts: list[list[str]] = []
    tool = fusermount()
    if tool is not None:
        attempts.append([tool, "-u", str(mountpoint)])
    if os.geteuid() == 0 and shutil.which("umount"):
        attempts.append(["umount", str(mountpoint)])
    if lazy_fallback:
        if tool is not None:
            attempts.append([tool, "-u", "-z", str(mountpoint)])
        if os.geteuid() == 0 and shutil.which("umount"):
            attempts.append(["umount", "-l", str(mountpoint)])
    last = "no fusermount3, fusermount or umount found"
    for command in attempts:
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode == 0 and not is_mounted(mountpoint):
            return
        last = (result.stderr.strip().splitlines() or [f"{command[0]} failed"])[-1]
    raise IOFailure(f"{mountpoint}: cannot unmount: {last}")


def wait_exit(pid: int, timeout: float = 10.0) -> bool:
    """Wait for a daemon started by :func:`start_daemon` to end; kill it after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return True  # not our child (or already reaped)
        if done:
            return True
        time.sleep(0.01)
    try:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
    except (ProcessLookupError, ChildProcessError):
        pass
    return False
