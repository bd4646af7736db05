"""The libvirt hook: a TDX domain's launch registers a TD build with the fence (tdxupdate.fence).

libvirt runs every executable in ``/etc/libvirt/hooks/qemu.d/`` as
``HOOK <domain> <operation> <sub-operation> <extra>`` with the domain XML on stdin, and refuses
to start the domain when the hook exits non-zero at ``prepare``. For a domain whose XML has
``<launchSecurity type='tdx'>``:

- ``prepare``: register a TD build of the domain, waiting up to ``td_build_wait`` seconds
  (configuration file) while a module update holds the fence; when that wait runs out, exit 75
  (``locked``): libvirt refuses the start and nothing was registered;
- ``started`` (the TD is built: QEMU finalises its measurement before libvirt reports it
  started), ``stopped`` and ``release`` (the start failed or the domain ended): remove the
  registration.

Every other domain and every other operation: exit 0, nothing read but stdin. The hook reads
the same environment and configuration as tdxupdate (``TDXUPDATE_SYSROOT``,
``TDXUPDATE_CONFIG``, ``/etc/tdxupdate.conf``): a configuration it cannot read is said on
stderr and the built-in waits are used (a typo there must not stop every TD on the host).

This is a program of its own, run on every domain start: it imports neither click nor
requests, and :func:`main` is its only place that turns a :class:`TdxError` into an exit code.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Sequence
from typing import BinaryIO, TextIO

from tdxupdate.errors import DataError, IOFailure, TdxError, UsageError, funnel

__all__ = ["is_tdx_domain", "main"]

PROG = "tdxupdate-libvirt-hook"
#: libvirt's operations that begin and end a TD build (qemu hook, libvirt's hooks.html)
BEGIN = "prepare"
END = ("started", "stopped", "release")
#: a domain XML is kilobytes; anything larger is refused rather than parsed
MAX_XML = 8 << 20

#: an internal subset or an entity declaration: expansion bombs and external entities
_UNSAFE_XML = re.compile(rb"<!(?:DOCTYPE|ENTITY)", re.IGNORECASE)


def is_tdx_domain(xml: bytes) -> bool:
    """Whether a libvirt domain XML asks for a TDX guest (``<launchSecurity type='tdx'>``).

    Raises :class:`DataError` for text that is not a domain XML, or that declares a DOCTYPE
    or entities (libvirt never writes them; xml.etree would expand them).
    """
    import xml.etree.ElementTree as ET

    if _UNSAFE_XML.search(xml):
        raise DataError("domain XML: refusing a DOCTYPE or entity declaration")
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as exc:
        raise DataError(f"domain XML: not well-formed: {exc}") from None
    if root.tag != "domain":
        raise DataError(f"domain XML: the root element is <{root.tag}>, not <domain>")
    return any(
        child.tag == "launchSecurity" and child.get("type", "").lower() == "tdx" for child in root
    )


def _read_stdin(stdin: BinaryIO) -> bytes:
    data = stdin.read(MAX_XML + 1)
    if len(data) > MAX_XML:
        raise DataError(f"domain XML: larger than {MAX_XML >> 20} MiB")
    return data


def _waits(err: TextIO) -> tuple[float, float]:
    """(td_build_wait, td_build_max) from the configuration file, or the defaults."""
    from tdxupdate import config
    from tdxupdate.settings import Settings

    wait, max_build = Settings.td_build_wait, Settings.td_build_max
    try:
        path, required = config.config_location(None)
        values = config.load_config(path, required=required)
    except TdxError as exc:
        print(f"{PROG}: warning: {exc.message}; using the built-in waits", file=err)
        return wait, max_build
    wait = float(values.get("td_build_wait", wait))  # type: ignore[arg-type]
    max_build = float(values.get("td_build_max", max_build))  # type: ignore[arg-type]
    return wait, max_build


def _run(args: Sequence[str], stdin: BinaryIO, err: TextIO) -> int:
    if len(args) < 2:
        raise UsageError(f"usage: {PROG} DOMAIN OPERATION [SUB-OPERATION EXTRA] < DOMAIN-XML")
    domain, operation = args[0], args[1]
    # libvirt writes the XML whatever the operation: read it, so it never sees EPIPE.
    xml = _read_stdin(stdin)
    if operation != BEGIN and operation not in END:
        return 0
    try:
        tdx = is_tdx_domain(xml)
    except DataError:
        if operation == BEGIN:
            raise  # cannot tell whether a TD is about to be built: refuse the start
        tdx = True  # ending: removing a registration that does not exist is harmless
    if not tdx:
        return 0

    from tdxupdate import fence
    from tdxupdate.host import find_upload_dir
    from tdxupdate.sysroot import Sysroot

    located = find_upload_dir(Sysroot(os.environ.get("TDXUPDATE_SYSROOT") or "/"))
    if located is None:
        return 0  # no upload interface: this kernel cannot update the module at all
    upload_dir = located[1]
    if operation == BEGIN:
        wait, max_build = _waits(err)
        fence.register(
            upload_dir,
            domain,
            wait=wait,
            max_build=max_build,
            on_wait=lambda line: print(f"{PROG}: {line}", file=err, flush=True),
        )
    else:
        fence.unregister(upload_dir, domain)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run as libvirt does; the exit status is the answer (non-zero at prepare: refused)."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        return _run(args, sys.stdin.buffer, sys.stderr)
    except OSError as exc:
        err: TdxError = IOFailure(str(exc))
    except (TdxError, KeyboardInterrupt) as exc:
        err = funnel(exc)
        if isinstance(exc, KeyboardInterrupt):
            return err.exit_code  # libvirt (or someone at a terminal) stopped it: nothing to say
    print(f"{PROG}: {err.message}", file=sys.stderr)
    return err.exit_code


if __name__ == "__main__":
    raise SystemExit(main())
