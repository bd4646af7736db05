"""The TD-build fence: a module update and a TD build never overlap on one upload interface.

Why: Linux 7.2 merged runtime updates without the kernel's guard (mainline-and-attestation.md
§1): an update that races a TD build corrupts that TD's measurement, and every failure reads
``transferring:firmware-invalid``. Keeping the two apart is userspace's job, so the hypervisor's
launch path and ``tdxupdate --update`` meet here. Kernels that kept the guard answer
``device-busy`` instead (kernel-abi.md §3); the fence is taken on those too.

Layout, one directory per upload interface (the key of :func:`tdxupdate.lock.interface_key`,
so emulated hosts on one machine stay independent)::

    /run/tdxupdate/fence-<key>/      0700, root's (tmpfs: empty after a reboot)
        update                       flock(2): LOCK_EX while tdxupdate --update runs;
                                     LOCK_SH while a registrant writes its registration
        build-<name>                 one per TD build in flight (JSON, written atomically):
                                     {"name": ..., "started": T, "expires": T, "pid": N?}

A TD build (a hypervisor's launch path, e.g. the shipped libvirt hook):

1. *register*: open ``update``, ``flock(LOCK_SH)`` (waiting, bounded, while an update holds
   it; when the wait runs out, do not build the TD), write ``build-<name>`` (temporary file
   and ``rename``), then unlock;
2. build the TD;
3. *unregister*: unlink ``build-<name>`` once the build is over, whether it worked or not.

``tdxupdate --update``: ``flock(update, LOCK_EX)``, then wait (``--fence-timeout``) until no
live ``build-*`` is left, stream, watch, confirm the version, and only then unlock.

Why this is race-free: a registration is renamed into place *before* its registrant drops
``LOCK_SH``, and ``LOCK_EX`` is granted only when no ``LOCK_SH`` is held. So once the updater
holds ``LOCK_EX`` every registration ever made is visible in the directory, and no new one can
be made until it unlocks: an empty directory (after stale entries are dropped) means no TD
build is in flight, and none starts, until the update is confirmed.

Times are seconds since boot (``CLOCK_BOOTTIME``, the first field of ``/proc/uptime``): a wall
clock stepped forward during a build must not make a live registration stale, and /run starts
empty at every boot. A registration is *stale*, and is removed by the updater, when its
``expires`` time (the registrant's upper bound on a build, ``td_build_max``) has passed, or when it
names a ``pid`` (a long-lived registrant, optional; ``pid_start`` is its start time in clock
ticks, field 22 of /proc/PID/stat, against pid reuse) that no longer runs. A crashed registrant
therefore never blocks updates forever, and the flock itself dies with the process holding it.

This module imports nothing heavy: the libvirt hook runs it on every TD launch.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
import stat
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from tdxupdate import fsio, lock, safedir
from tdxupdate.errors import PermissionDenied, TdxError, TryLater
from tdxupdate.settings import Settings

__all__ = [
    "DEFAULT_FENCE_TIMEOUT",
    "DEFAULT_TD_BUILD_MAX",
    "DEFAULT_TD_BUILD_WAIT",
    "Registration",
    "fence_dir",
    "hold",
    "now",
    "register",
    "registrations",
    "unregister",
    "update_running",
]

#: how long ``--update`` waits for TD builds in flight (``--fence-timeout``, ``fence_timeout``)
DEFAULT_FENCE_TIMEOUT = Settings.fence_timeout
#: how long a registrant waits for a running update (``td_build_wait``)
DEFAULT_TD_BUILD_WAIT = Settings.td_build_wait
#: a registration is stale this long after it was made (``td_build_max``)
DEFAULT_TD_BUILD_MAX = Settings.td_build_max

UPDATE_FILE = "update"
BUILD_PREFIX = "build-"
_POLL = 0.1


def now() -> float:
    """The fence's clock: seconds since boot, suspend included (``/proc/uptime``)."""
    return time.clock_gettime(time.CLOCK_BOOTTIME)


@dataclass(frozen=True)
class Registration:
    """One ``build-<name>`` file as read."""

    file: str
    name: str
    started: float
    expires: float
    pid: int | None = None
    pid_start: int | None = None

    def stale(self, at: float) -> str | None:
        """Why this registration no longer stands for a build in flight at ``at`` (the
        fence's clock), or None."""
        if at > self.expires:
            return f"it expired {at - self.expires:.0f} s ago"
        if self.pid is not None and not _alive(self.pid, self.pid_start):
            return f"its process {self.pid} is gone"
        return None


def fence_dir(upload_dir: Path) -> Path:
    """Where the fence of ``upload_dir`` lives (under :data:`tdxupdate.lock.HOST_LOCK_DIR`)."""
    return lock.HOST_LOCK_DIR / f"fence-{lock.interface_key(upload_dir)}"


_CASES = fsio.cases((fsio.DENIED + fsio.READ_ONLY, PermissionDenied, "permission denied"))


def forget(upload_dir: Path) -> None:
    """Remove what /run/tdxupdate holds for ``upload_dir``, its host lock and its fence with
    any registration in it, once that interface is gone for good: an emulated host this
    process mounted (``--simulate``, the tests), each under a path of its own, would otherwise
    leave two entries per run until the next boot. Never for a real interface: a registrant
    waiting on the fence would lose it. Call it while the interface is still there (the key is
    of its resolved path). Best effort; never raises."""
    with contextlib.suppress(OSError):
        lock.host_lock_path(upload_dir).unlink(missing_ok=True)
    directory = fence_dir(upload_dir)
    # lstat: a symbolic link in its place is never followed. As another user than the one
    # that made them (a test run by a build user), /run/tdxupdate cannot even be searched.
    with contextlib.suppress(OSError):
        if stat.S_ISDIR(directory.lstat().st_mode):
            shutil.rmtree(directory, ignore_errors=True)


def _error(exc: OSError, path: Path, doing: str) -> TdxError:
    return fsio.os_error(exc, f"{path}: cannot {doing} the TD-build fence", _CASES)


def _directory(upload_dir: Path) -> safedir.SafeDir:
    """The fence directory, opened and checked (created 0700 when missing); the caller
    closes it."""
    path = fence_dir(upload_dir)
    try:
        with safedir.open_dir(path.parent, "host lock directory", mode=0o700) as run:
            return run.subdir(path.name, mode=0o700)
    except OSError as exc:
        raise _error(exc, path, "open") from exc


def _open_update(directory: safedir.SafeDir) -> int:
    try:
        return directory.open(UPDATE_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise _error(exc, directory.path / UPDATE_FILE, "open") from exc


def _flock(fd: int, how: int, deadline: float, path: Path) -> bool:
    """flock ``fd`` (``how`` is LOCK_SH or LOCK_EX), polling until ``deadline``: taken?"""
    while True:
        try:
            fcntl.flock(fd, how | fcntl.LOCK_NB)
            return True
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise _error(exc, path, "take") from exc
        if time.monotonic() >= deadline:
            return False
        time.sleep(_POLL)


def _file_name(name: str) -> str:
    """``build-<name>``: a domain name percent-encoded into one safe path component."""
    encoded = quote(name, safe="")
    if not name or len(encoded) > 200:
        import hashlib

        encoded = "sha256-" + hashlib.sha256(name.encode()).hexdigest()
    return BUILD_PREFIX + encoded


def _start_time(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    # the command name is in parentheses and may contain spaces and parentheses
    fields = stat[stat.rfind(b")") + 2 :].split()
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return None


def _alive(pid: int, start: int | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return start is None or _start_time(pid) in (None, start)


def _parse(file: str, data: bytes) -> Registration | None:
    try:
        doc = json.loads(data)
        reg = Registration(
            file=file,
            name=str(doc["name"]),
            started=float(doc["started"]),
            expires=float(doc["expires"]),
            pid=None if doc.get("pid") is None else int(doc["pid"]),
            pid_start=None if doc.get("pid_start") is None else int(doc["pid_start"]),
        )
    except (ValueError, KeyError, TypeError):
        return None
    return reg


def _read_all(directory: safedir.SafeDir) -> list[Registration]:
    """Every registration; an unreadable one counts as expired now (never blocks forever)."""
    found: list[Registration] = []
    for file in sorted(directory.names()):
        if not file.startswith(BUILD_PREFIX):
            continue
        try:
            data = directory.read(file)
        except (OSError, safedir.UnsafePath):
            data = b""
        if data is None:
            continue  # unregistered meanwhile
        reg = _parse(file, data)
        if reg is None:
            reg = Registration(file=file, name=file[len(BUILD_PREFIX) :], started=0, expires=0)
        found.append(reg)
    return found


def registrations(upload_dir: Path) -> list[Registration]:
    """The registrations of ``upload_dir`` as they are now, stale ones included."""
    with _directory(upload_dir) as directory:
        return _read_all(directory)


def update_running(upload_dir: Path) -> bool:
    """Whether an update holds the fence of ``upload_dir`` now (a probe; takes nothing)."""
    with _directory(upload_dir) as directory:
        fd = _open_update(directory)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                return True
            raise _error(exc, directory.path / UPDATE_FILE, "probe") from exc
        finally:
            os.close(fd)
        return False


def register(
    upload_dir: Path,
    name: str,
    *,
    wait: float = DEFAULT_TD_BUILD_WAIT,
    max_build: float = DEFAULT_TD_BUILD_MAX,
    pid: int | None = None,
    on_wait: Callable[[str], None] | None = None,
) -> Path:
    """Register a TD build of ``name``: the file written (step 1 of the protocol).

    Waits up to ``wait`` seconds while an update holds the fence, then raises
    :class:`TryLater` (``locked``: a tdxupdate is updating this interface) and registers
    nothing. ``pid`` names a long-lived registrant whose exit makes the
    registration stale.
    """
    with _directory(upload_dir) as directory:
        path = directory.path / UPDATE_FILE
        fd = _open_update(directory)
        try:
            deadline = time.monotonic() + wait
            if not _flock(fd, fcntl.LOCK_SH, time.monotonic(), path):
                if on_wait is not None:
                    on_wait(
                        f"{upload_dir}: a TDX module update holds the TD-build fence; "
                        f"waiting up to {wait:g} s before building TD {name}"
                    )
                if not _flock(fd, fcntl.LOCK_SH, deadline, path):
                    raise TryLater(
                        f"{upload_dir}: a TDX module update is running; TD {name} was not "
                        f"started (waited {wait:g} s); try again once it has finished",
                        code="locked",
                    )
            started = now()
            doc: dict[str, object] = {
                "name": name,
                "started": started,
                "expires": started + max_build,
            }
            if pid is not None:
                doc |= {"pid": pid, "pid_start": _start_time(pid)}
            file = _file_name(name)
            try:
                tmp_fd, tmp = directory.mkstemp(".tmp-")
                try:
                    os.write(tmp_fd, json.dumps(doc).encode() + b"\n")
                finally:
                    os.close(tmp_fd)
                directory.replace(tmp, file)
            except OSError as exc:
                raise _error(exc, directory.path / file, "register a TD build in") from exc
            return directory.path / file
        finally:
            os.close(fd)  # drops LOCK_SH, after the registration is in place


def unregister(upload_dir: Path, name: str) -> bool:
    """The TD build of ``name`` is over (step 3): whether a registration was removed."""
    with _directory(upload_dir) as directory:
        file = _file_name(name)
        try:
            directory.lstat(file)
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise _error(exc, directory.path / file, "unregister a TD build in") from exc
        try:
            directory.unlink(file)
        except OSError as exc:
            raise _error(exc, directory.path / file, "unregister a TD build in") from exc
        return True


class Fence:
    """The fence held by an update: no TD build in flight, none can start until release."""

    def __init__(self, upload_dir: Path, directory: safedir.SafeDir, fd: int) -> None:
        self.upload_dir = upload_dir
        self._directory = directory
        self._fd: int | None = fd
        #: the stale registrations removed when the fence was taken (name, why)
        self.removed: list[tuple[str, str]] = []
        #: the TD builds waited for
        self.waited_for: list[str] = []

    @property
    def held(self) -> bool:
        return self._fd is not None

    def live(self) -> list[Registration]:
        """The registrations that stand for a build in flight; stale ones are removed."""
        at = now()
        live = []
        for reg in _read_all(self._directory):
            why = reg.stale(at)
            if why is None:
                live.append(reg)
                continue
            with contextlib.suppress(OSError):
                self._directory.unlink(reg.file)
            self.removed.append((reg.name, why))
        return live

    def recheck(self) -> None:
        """Immediately before the first write: still no TD build registered (one that ignores
        the protocol's lock, or a clock that jumped back, is caught here; nothing written)."""
        live = self.live()
        if live:
            raise TryLater(
                f"{self.upload_dir}: TD build(s) {_names(live)} registered while the update "
                "held the fence; nothing was written, run tdxupdate again",
                code="td-build-in-progress",
            )

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)
        self._directory.close()


def _names(regs: list[Registration]) -> str:
    return ", ".join(r.name for r in regs)


@contextlib.contextmanager
def hold(
    upload_dir: Path,
    *,
    timeout: float = DEFAULT_FENCE_TIMEOUT,
    on_wait: Callable[[str], None] | None = None,
) -> Iterator[Fence]:
    """Take the fence of ``upload_dir`` for an update; release it when the block ends.

    Takes ``update`` exclusively (so no TD build can register), then waits up to ``timeout``
    seconds for the builds already registered to end, saying so through ``on_wait``. When
    they do not: :class:`TryLater` ``td-build-in-progress`` (exit 75), nothing written. The
    release happens on every way out of the block (a signal raised as an exception included);
    a killed process loses the flock with its descriptors.
    """
    directory = _directory(upload_dir)
    fence: Fence | None = None
    try:
        path = directory.path / UPDATE_FILE
        fd = _open_update(directory)
        fence = Fence(upload_dir, directory, fd)
        deadline = time.monotonic() + timeout
        if not _flock(fd, fcntl.LOCK_EX, deadline, path):
            raise TryLater(
                f"{upload_dir}: TD builds kept the TD-build fence for {timeout:g} s; nothing was "
                "written, run tdxupdate again",
                code="td-build-in-progress",
            )
        live = fence.live()
        if live:
            fence.waited_for = [r.name for r in live]
            if on_wait is not None:
                on_wait(
                    f"Waiting up to {timeout:g} s for {len(live)} TD build(s) in progress to "
                    f"finish: {_names(live)} (a module update during a TD build corrupts its "
                    "measurement)"
                )
            while live:
                if time.monotonic() >= deadline:
                    raise TryLater(
                        f"{upload_dir}: TD build(s) {_names(live)} still in progress after "
                        f"{timeout:g} s; nothing was written, run tdxupdate again once they "
                        "have finished (--fence-timeout waits longer)",
                        code="td-build-in-progress",
                    )
                time.sleep(_POLL)
                live = fence.live()
        yield fence
    finally:
        if fence is not None:
            fence.release()
        else:
            directory.close()
