"""One exception hierarchy; each error knows its stable token and exit code.

The table is ``cli-contract.md`` §2. Only ``tdxupdate.cli.main`` turns a :class:`TdxError`
into an exit code and a line on stderr; nothing else calls ``sys.exit``.
"""

from __future__ import annotations

import signal as _signal

#: A process ended by signal N exits 128 + N (the shell's convention).
SIGNAL_EXIT_BASE = 128

#: error.code token -> exit code (cli-contract.md §2). The only source of exit codes: the
#: ``--help`` epilog and the man page's EXIT STATUS follow it (tests/test_manpage.py).
EXIT_CODES: dict[str, int] = {
    "kernel-error": 1,
    "version-mismatch": 1,
    "module-lost": 1,
    "usage": 64,
    "mapping-invalid": 65,
    "mapping-unsupported": 65,
    "image-invalid": 65,
    "version-unknown": 65,
    "not-eligible": 65,
    "trusted-keys-invalid": 65,
    "config-invalid": 78,
    "repository-not-found": 66,
    "mapping-not-found": 66,
    "image-not-found": 66,
    "trusted-keys-not-found": 66,
    "config-not-found": 66,
    "no-tdx-host": 69,
    "unsupported-kernel": 69,
    "no-upload-interface": 69,
    "no-remaining-updates": 69,
    "version-unreadable": 69,
    "cpu-unknown": 69,
    "fuse-unavailable": 69,
    "io-error": 74,
    "network-error": 74,
    "locked": 75,
    "upload-busy": 75,
    "device-busy": 75,
    "td-build-in-progress": 75,
    "cpus-offline": 75,
    "host-changed": 75,
    "pre-update-failed": 75,
    "timeout": 75,
    "internal-error": 70,
    "permission-denied": 77,
    # Interrupted by SIGINT; by signal N: 128 + N (:class:`Interrupted`).
    "interrupted": SIGNAL_EXIT_BASE + int(_signal.SIGINT),
    # stdout's reader went away where the rest could not be discarded; never a JSON token.
    "broken-pipe": SIGNAL_EXIT_BASE + int(_signal.SIGPIPE),
}

#: exit code -> what it means, in the words of ``tdxupdate --help`` (0 is not an error).
EXIT_MEANINGS: dict[int, str] = {
    0: "success or nothing to do",
    1: "the kernel reported failure",
    64: "usage",
    65: "bad data",
    66: "missing input",
    69: "unavailable (needs an administrator or a reboot)",
    70: "internal error",
    74: "I/O error",
    75: "try again later (locked, busy, host changed)",
    77: "permission denied",
    78: "bad configuration",
    EXIT_CODES["interrupted"]: "interrupted by signal N",
    EXIT_CODES["broken-pipe"]: "standard output closed",
}


def exit_table() -> str:
    """The exit codes, one phrase each, for ``--help`` (signals as ``128+N``)."""
    parts = []
    for code, meaning in sorted(EXIT_MEANINGS.items()):
        if code == EXIT_CODES["interrupted"]:
            parts.append(f"{SIGNAL_EXIT_BASE}+N {meaning}")
        else:
            parts.append(f"{code} {meaning}")
    return "Exit codes: " + ", ".join(parts) + "."


#: Signals whose default action ends the process: all are handled alike (the stream is
#: aborted, an attempt that reached the kernel is recorded, the exit is 128 + the signal).
TERMINATING_SIGNALS: tuple[int, ...] = tuple(
    int(getattr(_signal, name))
    for name in ("SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2", "SIGALRM")
    if hasattr(_signal, name)
)

#: Exit codes that are "permanent" (need an administrator): they win over transient ones.
PERMANENT_EXIT_CODES = frozenset({69, 77})


class TdxError(Exception):
    """A failure with a stable token (``error.code``) and a documented exit code."""

    code: str = "io-error"

    def __init__(self, message: str, *, code: str | None = None):
        super().__init__(message)
        if code is not None:
            self.code = code
        if self.code not in EXIT_CODES:
            raise ValueError(f"unknown error token {self.code!r}")
        self.message = message

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.code]

    def to_json(self) -> dict[str, object]:
        return {"code": self.code, "message": self.message, "exit_code": self.exit_code}


class UsageError(TdxError):
    code = "usage"


class DataError(TdxError):
    """Bad data (exit 65): mapping, image, version, trusted keys."""

    code = "mapping-invalid"


class InvalidImage(DataError):
    """An image failed a check of image-formats.md §4. ``check`` names the failed check."""

    code = "image-invalid"

    def __init__(self, message: str, *, check: str = "container"):
        super().__init__(message)
        self.check = check


class NotFound(TdxError):
    code = "repository-not-found"


class Unavailable(TdxError):
    code = "no-tdx-host"


class IOFailure(TdxError):
    code = "io-error"


class TryLater(TdxError):
    code = "upload-busy"


class PermissionDenied(TdxError):
    code = "permission-denied"


class KernelFailure(TdxError):
    code = "kernel-error"


class Interrupted(TdxError):
    """A terminating signal ended the run: the exit is 128 + ``signum`` (SIGINT: 130)."""

    code = "interrupted"

    def __init__(self, message: str, *, signum: int = _signal.SIGINT):
        super().__init__(message)
        self.signum = int(signum)

    @property
    def exit_code(self) -> int:
        return SIGNAL_EXIT_BASE + self.signum


class InternalError(TdxError):
    """A bug: an exception nothing expected reached the top (exit 70)."""

    code = "internal-error"


def funnel(exc: BaseException) -> TdxError:
    """Whatever ended a run, as the one :class:`TdxError` its message and exit code come from.

    A :class:`TdxError` is itself; Ctrl-C (a ``KeyboardInterrupt`` that got past the signal
    handler) is :class:`Interrupted`; anything else is a bug, :class:`InternalError`.
    """
    if isinstance(exc, TdxError):
        return exc
    if isinstance(exc, KeyboardInterrupt):
        return Interrupted("interrupted by SIGINT")
    return InternalError(f"internal error: {type(exc).__name__}: {exc} (run with -v for details)")
