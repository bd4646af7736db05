"""A throw-away emulated host with the sample repository: what ``--simulate`` runs against.

:func:`simulated_host` mounts a profile's host in a temporary directory, served by a separate
process in its own session (signals sent to the tool never reach it; it also unmounts itself
if the tool dies), yields a :class:`SimHost` and always unmounts on exit, errors included.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tdxupdate import signals
from tdxupdate.errors import IOFailure, UsageError
from tdxupdate.sim.config import SimConfig
from tdxupdate.sim.mount import is_mounted, require_fuse, start_daemon, unmount, wait_exit
from tdxupdate.sim.profiles import DEFAULT_PROFILE, get_profile
from tdxupdate.sim.repo import ensure_sample_repo


@dataclass(frozen=True)
class SimHost:
    """A mounted emulated host and the sample repository it trusts."""

    #: pass as ``--sysroot``: ``sys/`` and ``proc/`` live under it
    sysroot: Path
    #: the sample repository (``mapping_file.json`` + ``joined_files/``)
    repo: Path
    #: fingerprints of the key the sample images are signed with
    trusted_signers: frozenset[str]
    #: send one control command (see :mod:`tdxupdate.sim.control`); ValueError if refused
    control: Callable[[dict[str, Any]], None]
    #: the emulator's state as JSON-ready data (``.tdxsim/state``)
    state: Callable[[], dict[str, Any]]
    mapping: Path
    profile: str
    config: SimConfig
    #: the daemon serving the mount
    pid: int

    def received(self) -> bytes:
        """The bytes of the last image an upload started with."""
        return (self.sysroot / ".tdxsim" / "received").read_bytes()


def host_controls(
    sysroot: Path,
) -> tuple[Callable[[dict[str, Any]], None], Callable[[], dict[str, Any]]]:
    """The ``control`` and ``state`` callables of a mounted emulator at ``sysroot``."""
    control_path = sysroot / ".tdxsim" / "control"
    state_path = sysroot / ".tdxsim" / "state"

    def state() -> dict[str, Any]:
        data: dict[str, Any] = json.loads(state_path.read_bytes())
        return data

    def control(command: dict[str, Any]) -> None:
        payload = (json.dumps(command) + "\n").encode()
        fd = os.open(control_path, os.O_WRONLY)
        try:
            os.write(fd, payload)
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
            reason = state().get("control_error") or "refused"
            raise ValueError(f"emulator control {json.dumps(command)}: {reason}") from None
        finally:
            os.close(fd)

    return control, state


@contextlib.contextmanager
def simulated_host(
    profile: str = DEFAULT_PROFILE,
    *,
    cache_dir: Path,
    workdir: Path | None = None,
    **overrides: Any,
) -> Iterator[SimHost]:
    """Mount ``profile``'s host (with ``overrides``, :class:`SimConfig` settings) and yield it.

    ``cache_dir`` keeps the sample repository and its key between runs. The mount goes to
    ``workdir/host`` (default: a new temporary directory, removed afterwards). Raises
    ``fuse-unavailable`` (69) without FUSE, ``usage`` (64) for an unknown profile or setting,
    ``io-error`` (74) when the mount fails.
    """
    require_fuse()
    chosen = get_profile(profile)
    repo = ensure_sample_repo(Path(cache_dir))
    settings: dict[str, Any] = {
        "mapping": repo.mapping_path,
        "trusted_signers": repo.trusted_signers,
        **chosen.settings,
        **overrides,
    }
    try:
        config = SimConfig.from_settings(settings)
    except ValueError as exc:
        raise UsageError(f"simulation profile {chosen.name}: {exc}") from None
    own_dir = workdir is None
    with contextlib.ExitStack() as stack:
        # Each resource exists only with its release registered: a signal in between is held
        # until the registration is done (tdxupdate.signals.critical).
        with signals.critical():
            base = Path(tempfile.mkdtemp(prefix="tdxupdate-sim-") if workdir is None else workdir)
            mountpoint = base / "host"
            if own_dir:
                stack.callback(_remove_unmounted, base, mountpoint)
        with signals.critical():
            pid = start_daemon(mountpoint, config, exit_with_parent=True)
            stack.callback(_teardown, mountpoint, pid)
        control, state = host_controls(mountpoint)
        yield SimHost(
            sysroot=mountpoint,
            repo=repo.path,
            trusted_signers=repo.trusted_signers,
            control=control,
            state=state,
            mapping=repo.mapping_path,
            profile=chosen.name,
            config=config,
            pid=pid,
        )


def _remove_unmounted(base: Path, mountpoint: Path) -> None:
    """Remove a work directory the session created, never through a mount still in place."""
    if not is_mounted(mountpoint):
        shutil.rmtree(base, ignore_errors=True)


def _teardown(mountpoint: Path, pid: int) -> None:
    failure: IOFailure | None = None
    if is_mounted(mountpoint):
        try:
            unmount(mountpoint)
        except IOFailure as exc:
            failure = exc
    wait_exit(pid)
    if not is_mounted(mountpoint):
        with contextlib.suppress(OSError):
            mountpoint.rmdir()
    if failure is not None:
        raise failure
