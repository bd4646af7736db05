"""Fault injection for the emulated host: the syntax of ``--fault`` and ``{"fault": ...}``.

Grammar (one fault per spec; combine several with repeated ``--fault``):

==============================  ===========================================================
``<stage>:<error>``             the upload fails at ``<stage>`` (``preparing``,
                                ``transferring``, ``programming``) with ``<error>``: any token,
                                known (kernel-abi.md §2) or not; non-fatal, nothing changes
                                (at ``programming`` the image passed P-SEAMLDR but is not
                                committed; ``remaining_size`` reads 0 as on a real kernel)
``<stage>:<error>:fatal``       the same, and the module is lost: ``version`` reads ENXIO
``device-busy``                 the running module refuses the shutdown (a TD build is in
                                progress): errno EBUSY, reported per kernel series (§3);
                                non-fatal
``hang`` / ``hang:<stage>``     the upload stops at ``<stage>`` (default ``transferring``;
                                ``receiving`` too) until cancelled (v1–v3 only: later kernels
                                ignore ``cancel``), released with ``{"unhang": true}``, or
                                forever
``slow-write=<ms>``             every ``write()`` to ``data`` takes ``<ms>`` per page
``short-write=<bytes>``         a ``write()`` to ``data`` takes at most ``<bytes>`` (default
                                one page, 4096, as kernfs does)
``wrong-version``               the kernel reports success (and the counter drops) but
                                ``version`` keeps the old value
``offline=<cpulist>``           these CPUs go offline (``online`` != ``present``)
``module-lost``                 the module is already lost: ``version`` reads ENXIO
==============================  ===========================================================
"""

from __future__ import annotations

import re
from dataclasses import dataclass

#: fw_upload stages a driver op can fail in (kernel-abi.md §2 state machine).
STAGES = ("preparing", "transferring", "programming")

#: Fault kinds that act on an upload (they can be limited to the next N uploads).
UPLOAD_KINDS = frozenset({"error", "device-busy", "hang", "wrong-version"})

_TOKEN_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")


@dataclass(frozen=True)
class Fault:
    """One parsed fault spec; ``spec`` is the normalised text."""

    kind: str
    spec: str
    stage: str | None = None
    error: str | None = None
    fatal: bool = False
    #: ms per page for ``slow-write``, bytes for ``short-write``
    amount: float | None = None
    #: the CPU list text of ``offline``
    cpus: str | None = None


def parse_fault(spec: str) -> Fault:
    """Parse one fault spec; ValueError with a one-line reason naming the spec."""
    if not isinstance(spec, str):
        raise ValueError(f"fault {spec!r}: expected a string")
    text = spec.strip()
    if text in ("device-busy", "wrong-version", "module-lost"):
        return Fault(kind=text, spec=text)
    if text == "hang" or text.startswith("hang:"):
        stage = text.partition(":")[2] or "transferring"
        if stage != "receiving":
            _check_stage(stage, spec)
        return Fault(kind="hang", spec=f"hang:{stage}", stage=stage)
    if "=" in text:
        name, _, value = text.partition("=")
        if name == "slow-write":
            ms = _number(value, spec)
            return Fault(kind="slow-write", spec=f"slow-write={value}", amount=ms)
        if name == "short-write":
            size = _number(value, spec)
            if size < 1 or size != int(size):
                raise ValueError(f"fault {spec!r}: short-write needs a whole number of bytes >= 1")
            return Fault(kind="short-write", spec=f"short-write={int(size)}", amount=size)
        if name == "offline":
            from tdxupdate.sim.config import parse_cpu_list

            try:
                parse_cpu_list(value)
            except ValueError as exc:
                raise ValueError(f"fault {spec!r}: {exc}") from None
            return Fault(kind="offline", spec=f"offline={value}", cpus=value)
        raise ValueError(f"fault {spec!r}: unknown setting {name!r}")
    parts = text.split(":")
    if len(parts) in (2, 3) and parts[0] in STAGES:
        stage, error = parts[0], parts[1]
        if not _TOKEN_RE.match(error):
            raise ValueError(f"fault {spec!r}: {error!r} is not an error token like hw-error")
        fatal = len(parts) == 3
        if fatal and parts[2] != "fatal":
            raise ValueError(f"fault {spec!r}: the third field can only be 'fatal'")
        return Fault(kind="error", spec=text, stage=stage, error=error, fatal=fatal)
    raise ValueError(
        f"fault {spec!r}: expected <stage>:<error>[:fatal], device-busy, hang[:<stage>], "
        "slow-write=<ms>, short-write=<bytes>, wrong-version, offline=<cpus> or module-lost"
    )


def _check_stage(stage: str, spec: str) -> None:
    if stage not in STAGES:
        raise ValueError(f"fault {spec!r}: stage must be one of {', '.join(STAGES)}")


def _number(value: str, spec: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise ValueError(f"fault {spec!r}: {value!r} is not a number") from None
    if number < 0 or number != number:
        raise ValueError(f"fault {spec!r}: {value!r} must be >= 0")
    return number
