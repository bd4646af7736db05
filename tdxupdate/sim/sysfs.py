"""The file tree an emulated host presents: ``sys/``, ``proc/`` and the hidden ``.tdxsim/``.

Paths and modes per generation are kernel-abi.md §1; the fw_upload files are §2 (``loading``
0644, ``data`` 0644 with size 0, ``status``/``error``/``remaining_size`` 0444, ``cancel`` 0200);
``class/firmware/<name>`` is a symlink to ``../../devices/faux/tdx_host/firmware/<name>`` (for
G1, whose parent device is UNCONFIRMED, to ``../../devices/virtual/tdx/seamldr/<name>``).

Every node is one of three kinds: :class:`Attribute` (a sysfs or proc text file, generated
afresh by each read), :class:`BinAttribute` (read and written at offsets: ``data``, the
emulator's ``received`` and ``control``) and :class:`Symlink`. Directories are implied by the
paths. :func:`build_tree` is pure, so the tree can be tested without FUSE.
"""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Callable
from dataclasses import dataclass

from tdxupdate.sim.control import parse_lines
from tdxupdate.sim.kernel import SimKernel

PAGE = 4096


@dataclass(frozen=True)
class Attribute:
    """A text attribute; kernfs hands ``store`` at most one page per ``write()``.

    As with sysfs' seq_file, a read at offset 0 runs ``show`` and later reads of the same open
    file continue in that snapshot, so a long file (``.tdxsim/state``) reads consistently.
    """

    mode: int
    show: Callable[[], bytes] | None = None
    store: Callable[[bytes], int] | None = None
    #: what ``stat`` reports: sysfs attributes 4096, proc files 0
    size: int = PAGE


@dataclass(frozen=True)
class BinAttribute:
    """A binary attribute read and written at offsets; ``size`` 0 means unbounded."""

    mode: int
    read: Callable[[int, int], bytes] | None = None
    write: Callable[[bytes, int], int] | None = None
    #: writes need CAP_SYS_RAWIO (``data``, kernel-abi.md §2): EPERM for other callers
    rawio: bool = False
    size: int = 0


@dataclass(frozen=True)
class Symlink:
    target: str


Node = Attribute | BinAttribute | Symlink

TDX_HOST = "sys/devices/faux/tdx_host"


def _fw_upload_nodes(k: SimKernel, base: str) -> dict[str, Node]:
    fw = k.fw
    assert fw is not None
    return {
        f"{base}/loading": Attribute(0o644, fw.show_loading, fw.store_loading),
        f"{base}/data": BinAttribute(0o644, fw.read_data, k.write_data, rawio=True),
        f"{base}/status": Attribute(0o444, fw.show_status),
        f"{base}/error": Attribute(0o444, fw.show_error),
        f"{base}/remaining_size": Attribute(0o444, fw.show_remaining_size),
        f"{base}/cancel": Attribute(0o200, None, fw.store_cancel),
    }


def _tdx_host_nodes(k: SimKernel) -> dict[str, Node]:
    nodes: dict[str, Node] = {}
    if not k.tdx_host:
        return nodes
    gen = k.config.generation
    if gen == "G1":
        nodes["sys/devices/virtual/tdx/tdx_tsm/version"] = Attribute(0o444, k.show_module_version)
        nodes["sys/devices/virtual/tdx/seamldr/version"] = Attribute(0o444, k.show_seamldr_version)
        nodes["sys/devices/virtual/tdx/seamldr/num_remaining_updates"] = Attribute(
            0o444, k.show_remaining
        )
        if k.firmware_name:
            name = k.firmware_name
            nodes.update(_fw_upload_nodes(k, f"sys/devices/virtual/tdx/seamldr/{name}"))
            nodes[f"sys/class/firmware/{name}"] = Symlink(
                f"../../devices/virtual/tdx/seamldr/{name}"
            )
        return nodes

    nodes[f"{TDX_HOST}/version"] = Attribute(0o444, k.show_module_version)
    if k.seamldr_visible:
        if gen in ("G2", "G3"):
            mode = 0o444 if gen == "G2" else 0o400
            nodes[f"{TDX_HOST}/seamldr/version"] = Attribute(mode, k.show_seamldr_version)
            nodes[f"{TDX_HOST}/seamldr/num_remaining_updates"] = Attribute(mode, k.show_remaining)
        else:
            nodes[f"{TDX_HOST}/seamldr_version"] = Attribute(0o400, k.show_seamldr_version)
            nodes[f"{TDX_HOST}/num_remaining_updates"] = Attribute(0o400, k.show_remaining)
    if k.series == "v3":
        nodes[f"{TDX_HOST}/compat_capable"] = Attribute(0o444, k.show_compat_capable)
    if k.firmware_name:
        name = k.firmware_name
        nodes.update(_fw_upload_nodes(k, f"{TDX_HOST}/firmware/{name}"))
        nodes[f"sys/class/firmware/{name}"] = Symlink(
            f"../../devices/faux/tdx_host/firmware/{name}"
        )
    return nodes


def _emulator_nodes(k: SimKernel) -> dict[str, Node]:
    def control(payload: bytes, offset: int) -> int:
        try:
            commands = parse_lines(payload)
            for command in commands:
                k.control(command)
        except ValueError as exc:
            with k.cond:
                k.control_error = str(exc)
            raise OSError(errno.EINVAL, str(exc)) from None
        return len(payload)

    def state() -> bytes:
        return (json.dumps(k.state(), indent=1, sort_keys=True) + "\n").encode()

    def received(offset: int, size: int) -> bytes:
        with k.cond:
            return k.received[offset : offset + size]

    return {
        ".tdxsim/control": BinAttribute(0o600, None, control),
        ".tdxsim/state": Attribute(0o444, state, size=0),
        ".tdxsim/received": BinAttribute(0o444, received),
    }


def build_tree(k: SimKernel) -> dict[str, Node]:
    """Every file and symlink of the emulated host, by path relative to the mount point."""
    nodes: dict[str, Node] = {
        "sys/devices/system/cpu/online": Attribute(0o444, k.show_online),
        "sys/devices/system/cpu/present": Attribute(0o444, k.show_present),
        "proc/cpuinfo": Attribute(0o444, k.show_cpuinfo, size=0),
        "proc/sys/kernel/osrelease": Attribute(0o444, k.show_osrelease, size=0),
    }
    nodes.update(_tdx_host_nodes(k))
    nodes.update(_emulator_nodes(k))
    return nodes


def directories(nodes: dict[str, Node]) -> dict[str, list[str]]:
    """Each directory (``""`` is the root) -> its sorted entries."""
    dirs: dict[str, set[str]] = {"": set()}
    for path in nodes:
        parts = path.split("/")
        for depth in range(len(parts)):
            parent = "/".join(parts[:depth])
            dirs.setdefault(parent, set()).add(parts[depth])
            if depth:
                dirs.setdefault("/".join(parts[:depth]), set())
    # sys/class/firmware exists whenever the firmware class does, even with no device in it
    dirs.setdefault("sys", set()).add("class")
    dirs.setdefault("sys/class", set()).add("firmware")
    dirs.setdefault("sys/class/firmware", set())
    return {d: sorted(entries) for d, entries in dirs.items()}


def errno_of(exc: OSError) -> int:
    return exc.errno if isinstance(exc.errno, int) and exc.errno > 0 else errno.EIO


def uid_is_privileged(uid: int) -> bool:
    """CAP_SYS_RAWIO stand-in: root, or whoever mounted the emulator."""
    return uid == 0 or uid == os.getuid()
