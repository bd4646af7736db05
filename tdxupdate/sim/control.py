"""Run-time control of a mounted emulator: ``DIR/.tdxsim/control``.

Write one JSON object per line (several lines per ``write()`` are fine). A bad command makes the
``write()`` fail with EINVAL and the reason appears as ``control_error`` in ``.tdxsim/state``.
Keys of one object are applied in order; the object is checked completely first, so a bad one
changes nothing.

=================================  ===========================================================
``{"fault": SPEC}``                add a fault (syntax: :mod:`tdxupdate.sim.faults`);
``{"fault": SPEC, "times": N}``    an upload fault that applies to the next N uploads only
``{"clear_faults": true}``         remove every fault, restore write sizes, release a hang
``{"unhang": true}``               let a hung upload continue normally
``{"online": "0-5"}``              set the online CPUs (``present`` likewise)
``{"remaining": N}``               set P-SEAMLDR's remaining-update counter
``{"module": "1.5.08"}``           set the running module version (``seamldr`` likewise)
``{"cpu": "0x806f8"}``             set the CPU signature
``{"tdx_features": "0x2"}``        set the running module's TDX_FEATURES0
``{"durations": {"transferring": 200}}``  stage durations in ms
``{"idle_lag_ms": 300}``           delay between an upload's end and ``status`` idle
``{"trusted_signers": [FPR]}``     replace P-SEAMLDR's trusted signers
``{"debug_platform": true}``       P-SEAMLDR accepts debug-signed modules
``{"td_build": "start", "name": N}``  a TD build of ``N`` starts (``"finish"``: it ends). An
                                   update during a build answers ``device-busy`` on a guarded
                                   kernel (v8–v10; v3–v7 with TDX_FEATURES0 bit 47) and
                                   otherwise (mainline) corrupts the TD: ``corrupted_tds``
``{"reboot": true}``               the BIOS module and counter again (refused while busy)
``{"reset": true}``                as freshly mounted: reboot, mount-time settings and faults,
                                   no upload history, ``error`` empty (refused while busy)
=================================  ===========================================================

``.tdxsim/state`` (read-only) returns :meth:`SimKernel.state` as JSON; ``.tdxsim/received``
returns the bytes of the last image an upload started with.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from functools import partial
from typing import TYPE_CHECKING, Any

from tdxupdate.sim.config import parse_cpu_list, parse_cpu_signature
from tdxupdate.sim.faults import UPLOAD_KINDS, parse_fault
from tdxupdate.versions import Version

if TYPE_CHECKING:
    from tdxupdate.sim.kernel import SimKernel


def parse_lines(payload: bytes) -> list[dict[str, Any]]:
    """The commands in one write: JSON objects, one per non-blank line."""
    commands: list[dict[str, Any]] = []
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError("control: commands must be UTF-8 JSON") from None
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"control line {number}: not JSON: {exc.msg}") from None
        if not isinstance(obj, dict) or not obj:
            raise ValueError(f"control line {number}: expected a non-empty JSON object")
        commands.append(obj)
    return commands


def _bool(value: Any, key: str) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"control {key}: expected true or false, got {value!r}")
    return value


def _version(value: Any, key: str) -> Version:
    try:
        return Version.parse(str(value))
    except ValueError as exc:
        raise ValueError(f"control {key}: {exc}") from None


def _nonneg_int(value: Any, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"control {key}: expected a whole number >= 0, got {value!r}")
    return value


#: What one key of a command does: validate ``value`` (the rest of the command at hand) and
#: return the change to make, or None when there is nothing to do. Nothing is changed here.
Action = Callable[[], None]
_Parse = Callable[["SimKernel", Mapping[str, Any], Any, str], "Action | None"]


def _fault(k: SimKernel, command: Mapping[str, Any], value: Any, key: str) -> Action:
    try:
        fault = parse_fault(value)
    except ValueError as exc:
        raise ValueError(f"control {exc}") from None
    times = command.get("times")
    if times is not None:
        times = _nonneg_int(times, "times")
        if times == 0 or fault.kind not in UPLOAD_KINDS:
            raise ValueError("control times: needs N >= 1 and an upload fault")
    return partial(k.add_fault, fault, times)


def _td_build(k: SimKernel, command: Mapping[str, Any], value: Any, key: str) -> Action:
    name = command["name"]
    if value not in ("start", "finish") or not isinstance(name, str) or not name:
        raise ValueError(
            f'control td_build: expected "start" or "finish" and a name, got {value!r}, {name!r}'
        )
    if (value == "start") == (name in k.td_builds):
        state = "is already" if value == "start" else "is not"
        raise ValueError(f"control td_build: TD {name!r} {state} being built")
    return partial(k.td_build, value, name)


def _clear_faults(k: SimKernel, command: Mapping[str, Any], value: Any, key: str) -> Action | None:
    return k.clear_faults if _bool(value, key) else None


def _unhang(k: SimKernel, command: Mapping[str, Any], value: Any, key: str) -> Action | None:
    def release() -> None:
        k.unhang_pending += 1

    return release if _bool(value, key) else None


def _cpus(k: SimKernel, command: Mapping[str, Any], value: Any, key: str) -> Action:
    try:
        cpus = parse_cpu_list(str(value))
    except ValueError as exc:
        raise ValueError(f"control {key}: {exc}") from None
    return partial(setattr, k, key, cpus)


def _remaining(k: SimKernel, command: Mapping[str, Any], value: Any, key: str) -> Action:
    return partial(setattr, k, "remaining", _nonneg_int(value, key))


def _module(k: SimKernel, command: Mapping[str, Any], value: Any, key: str) -> Action:
    return partial(k.set_module, _version(value, key))


def _seamldr(k: SimKernel, command: Mapping[str, Any], value: Any, key: str) -> Action:
    return partial(setattr, k, "seamldr_version", _version(value, key))


def _cpu(k: SimKernel, command: Mapping[str, Any], value: Any, key: str) -> Action:
    try:
        sig = parse_cpu_signature(value)
    except ValueError as exc:
        raise ValueError(f"control cpu: {exc}") from None
    return partial(setattr, k, "cpu", sig)


def _tdx_features(k: SimKernel, command: Mapping[str, Any], value: Any, key: str) -> Action:
    try:
        features = int(str(value), 0)
    except ValueError:
        raise ValueError(f"control tdx_features: {value!r} is not a number") from None
    return partial(setattr, k, "tdx_features", features)


def _durations(k: SimKernel, command: Mapping[str, Any], value: Any, key: str) -> Action:
    if not isinstance(value, dict):
        raise ValueError("control durations: expected an object of stage -> ms")
    try:
        durations = k.durations.replace(value)
    except ValueError as exc:
        raise ValueError(f"control {exc}") from None
    return partial(setattr, k, "durations", durations)


def _idle_lag(k: SimKernel, command: Mapping[str, Any], value: Any, key: str) -> Action:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ValueError(f"control idle_lag_ms: expected ms >= 0, got {value!r}")
    return partial(setattr, k, "idle_lag_ms", float(value))


def _trusted_signers(k: SimKernel, command: Mapping[str, Any], value: Any, key: str) -> Action:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError("control trusted_signers: expected a list of fingerprints")
    signers = frozenset(v.strip().lower() for v in value)
    return partial(setattr, k.seamldr, "trusted_signers", signers)


def _debug_platform(k: SimKernel, command: Mapping[str, Any], value: Any, key: str) -> Action:
    return partial(setattr, k.seamldr, "debug_platform", _bool(value, key))


def _when_idle(action: Callable[[SimKernel], Action]) -> _Parse:
    """``reset`` and ``reboot``: refused while an upload is in progress."""

    def parse(k: SimKernel, command: Mapping[str, Any], value: Any, key: str) -> Action | None:
        if not _bool(value, key):
            return None
        if k.fw is not None and k.fw.progress != "idle":
            raise ValueError(f"control {key}: an upload is in progress")
        return action(k)

    return parse


def _modifier(k: SimKernel, command: Mapping[str, Any], value: Any, key: str) -> None:
    """``times`` and ``name`` qualify ``fault`` and ``td_build``; they do nothing alone."""
    return None


#: key -> how it is validated and what it changes (the table of the module docstring)
COMMANDS: dict[str, _Parse] = {
    "fault": _fault,
    "times": _modifier,
    "name": _modifier,
    "td_build": _td_build,
    "clear_faults": _clear_faults,
    "unhang": _unhang,
    "online": _cpus,
    "present": _cpus,
    "remaining": _remaining,
    "module": _module,
    "seamldr": _seamldr,
    "cpu": _cpu,
    "tdx_features": _tdx_features,
    "durations": _durations,
    "idle_lag_ms": _idle_lag,
    "trusted_signers": _trusted_signers,
    "debug_platform": _debug_platform,
    "reset": _when_idle(lambda k: k.reset),
    "reboot": _when_idle(lambda k: k.reboot),
}


def apply_command(k: SimKernel, command: Mapping[str, Any]) -> None:
    """Validate ``command`` completely, then apply it to ``k`` (its lock held by the caller)."""
    if "times" in command and "fault" not in command:
        raise ValueError("control times: only valid together with fault")
    if ("name" in command) != ("td_build" in command):
        raise ValueError("control td_build: needs a name, and name goes with td_build only")
    actions: list[Action] = []
    for key, value in command.items():
        parse = COMMANDS.get(key)
        if parse is None:
            raise ValueError(f"control: unknown command {key!r}")
        action = parse(k, command, value, key)
        if action is not None:
            actions.append(action)
    for action in actions:
        action()
