"""Diagnostics on stderr: levels, the journal's priorities, colour (issue 6, "Logging").

- ``-v``/``-q`` move the threshold: ``-qq`` errors only, ``-q`` warnings, default notices,
  ``-v`` informational lines, ``-vv`` debugging.
- Messages go to stderr (stdout belongs to the report and to ``--json``).
- Under systemd, when stderr *is* the journal stream named by ``JOURNAL_STREAM`` (sd-daemon(3),
  systemd.exec(5) "$JOURNAL_STREAM"), every line starts with an sd-daemon priority prefix such
  as ``<3>``, so the journal records the severity instead of treating every line as info.
  stderr is compared with the device and inode the variable names, so a redirected stderr
  never gets the prefixes.
- Colour only on a terminal, not when ``NO_COLOR`` is set and non-empty (no-color.org), not for
  ``TERM=dumb`` and never in the journal.
- Every ``--update`` run logs exactly one summary line at NOTICE (see :func:`update_summary`).

Only the standard ``logging`` module is used; the logger is ``logging.getLogger("tdxupdate")``.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:  # pragma: no cover
    from tdxupdate.report import Report

PROG = "tdxupdate"
LOGGER_NAME = "tdxupdate"
#: Between INFO and WARNING, as syslog's "notice": normal but significant (an update's outcome).
NOTICE = 25
logging.addLevelName(NOTICE, "NOTICE")

#: logging level -> sd-daemon / syslog priority (sd-daemon(3): SD_ERR "<3>" … SD_DEBUG "<7>").
_PRIORITIES = (
    (logging.CRITICAL, 2),
    (logging.ERROR, 3),
    (logging.WARNING, 4),
    (NOTICE, 5),
    (logging.INFO, 6),
    (logging.DEBUG, 7),
)

_RESET = "\033[0m"
_COLOURS = {
    logging.CRITICAL: "\033[1;31m",
    logging.ERROR: "\033[1;31m",
    logging.WARNING: "\033[1;33m",
    NOTICE: "\033[1m",
    logging.DEBUG: "\033[2m",
}


def level_for(verbosity: int) -> int:
    """``-v``/``-q`` count (``verbose - quiet``) -> logging threshold."""
    if verbosity <= -2:
        return logging.ERROR
    if verbosity == -1:
        return logging.WARNING
    if verbosity == 0:
        return NOTICE
    if verbosity == 1:
        return logging.INFO
    return logging.DEBUG


def priority(levelno: int) -> int:
    """The sd-daemon priority for a logging level (levels in between round to the severer)."""
    for threshold, prio in _PRIORITIES:
        if levelno >= threshold:
            return prio
    return 7


def is_journal_stream(stream: TextIO, environ: Mapping[str, str]) -> bool:
    """True when ``stream`` is the journal stream ``JOURNAL_STREAM`` names (``dev:inode``)."""
    value = environ.get("JOURNAL_STREAM", "")
    dev, sep, ino = value.partition(":")
    if not sep or not dev.isdigit() or not ino.isdigit():
        return False
    try:
        st = os.fstat(stream.fileno())
    except (AttributeError, OSError, ValueError):
        # No file descriptor (an in-memory stream): it cannot be the journal's socket.
        return False
    return st.st_dev == int(dev) and st.st_ino == int(ino)


def wants_colour(stream: TextIO, environ: Mapping[str, str]) -> bool:
    if environ.get("NO_COLOR", ""):
        return False
    if environ.get("TERM", "") == "dumb":
        return False
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


class Formatter(logging.Formatter):
    """``tdxupdate: warning: text`` for people; ``<4>warning: text`` for the journal.

    The journal already names the program (SyslogIdentifier), so the ``tdxupdate:`` prefix is
    left out there. Each line of a multi-line message (a traceback) gets its own prefix,
    because the journal splits stream input into one entry per line.
    """

    def __init__(self, *, journal: bool = False, colour: bool = False, prog: str = PROG):
        super().__init__()
        self.journal = journal
        self.colour = colour and not journal
        self.prog = prog

    @staticmethod
    def _tag(levelno: int) -> str:
        # Errors carry no tag: "tdxupdate: <message>" is the shape every CLI error line
        # already has, and what scripts grep for.
        if levelno >= logging.ERROR:
            return ""
        if levelno >= logging.WARNING:
            return "warning: "
        if levelno < logging.INFO:
            return "debug: "
        return ""

    def format(self, record: logging.LogRecord) -> str:
        text = record.getMessage()
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            text = f"{text}\n{record.exc_text}"
        if record.stack_info:
            text = f"{text}\n{self.formatStack(record.stack_info)}"
        tag = self._tag(record.levelno)
        lines = [_defang(line) for line in text.split("\n")] or [""]
        if self.journal:
            prefix = f"<{priority(record.levelno)}>{tag}"
            return "\n".join(prefix + line for line in lines)
        if self.colour:
            colour = _COLOURS.get(record.levelno, "")
            if record.levelno >= logging.ERROR:
                head = f"{colour}{self.prog}:{_RESET} {tag}"
            elif tag and colour:
                head = f"{self.prog}: {colour}{tag.rstrip()}{_RESET} "
            else:
                head = f"{self.prog}: {tag}"
            if record.levelno == NOTICE or record.levelno < logging.INFO:
                lines = [f"{colour}{line}{_RESET}" if colour else line for line in lines]
        else:
            head = f"{self.prog}: {tag}"
        return "\n".join(head + line for line in lines)


#: The longest piece of remote text that is shown; the rest is cut and marked.
REMOTE_TEXT_LIMIT = 200


def _escape_char(ch: str) -> str:
    code = ord(ch)
    if code <= 0xFF:
        return f"\\x{code:02x}"
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def _printable(ch: str) -> bool:
    # str.isprintable() is false for every control character (C0, DEL, C1), line and
    # paragraph separators and format characters such as bidi overrides; a plain space is kept.
    return ch == " " or ch.isprintable()


def remote_text(value: object, limit: int = REMOTE_TEXT_LIMIT) -> str:
    """Text a remote party chose (an HTTP reason phrase, a header, a body, a server's error),
    made safe to print on a terminal or write into a log line.

    Every character that is not printable (newlines, carriage returns, escape sequences,
    bidi overrides) is shown as a Python-style escape, so a server can neither start a line
    of its own (a forged ``update: ... result=success`` summary) nor send terminal control
    sequences; the result is cut at ``limit`` characters. All remote text passes through
    this one function before it reaches a message.
    """
    text = value if isinstance(value, str) else str(value)
    out = "".join(ch if _printable(ch) else _escape_char(ch) for ch in text)
    if len(out) > limit:
        out = out[:limit] + "..."
    return out


def _defang(line: str) -> str:
    # Last line of defence: whatever reaches the terminal or the journal carries no control
    # character other than the ones this module adds itself (colour, added after this).
    return "".join(ch if ch == "\t" or _printable(ch) else _escape_char(ch) for ch in line)


class _Handler(logging.StreamHandler):  # type: ignore[type-arg]
    """Marks the handler :func:`setup` installed, so a second call replaces it."""


def setup(
    verbosity: int,
    *,
    stream: TextIO | None = None,
    environ: Mapping[str, str] | None = None,
) -> logging.Logger:
    """Configure the ``tdxupdate`` logger for one run and return it.

    ``stream`` defaults to ``sys.stderr`` *as it is now* (click's test runner replaces it);
    calling again replaces the previous handler instead of adding a second one.
    """
    out: TextIO = stream if stream is not None else sys.stderr
    env = os.environ if environ is None else environ
    logger = logging.getLogger(LOGGER_NAME)
    for old in [h for h in logger.handlers if isinstance(h, _Handler)]:
        logger.removeHandler(old)
    handler = _Handler(out)
    journal = is_journal_stream(out, env)
    handler.setFormatter(Formatter(journal=journal, colour=not journal and wants_colour(out, env)))
    logger.addHandler(handler)
    logger.setLevel(level_for(verbosity))
    # The tool's lines are not meant for the root logger (a library user's configuration).
    logger.propagate = False
    return logger


def get_logger() -> logging.Logger:
    return logging.getLogger(LOGGER_NAME)


def notice(msg: str, *args: object, logger: logging.Logger | None = None) -> None:
    """``logger.notice(...)``: logging has no NOTICE method of its own."""
    (logger or get_logger()).log(NOTICE, msg, *args)


def _token(value: object) -> str:
    text = "unknown" if value is None else str(value)
    # key=value stays one token per field for grep/awk even if a value had spaces.
    return text.replace(" ", "_") or "unknown"


def update_summary(report: Report) -> str:
    """One line for an ``--update`` run, from its report (cli-contract.md §3).

    ``update: from=1.5.06 to=1.5.24 result=success exit_code=0`` — ``result`` is the token of
    :func:`tdxupdate.metrics.result_of` (``success``, ``nothing-to-do``, ``dry-run`` or the
    error token such as ``device-busy``); ``kernel_error=`` is added when the kernel gave one.
    """
    from tdxupdate.metrics import exit_code_of, result_of

    update = report.update
    running = report.host.module_version if report.host is not None else None
    from_version = (update.from_version if update is not None else None) or running
    # A refused explicit VERSION has no to_version, but it is what the attempt was for.
    selected = update.selected.version if update is not None and update.selected else None
    to_version = (update.to_version if update is not None else None) or selected
    fields = [
        f"from={_token(from_version)}",
        f"to={_token(to_version)}",
        f"result={_token(result_of(report))}",
        f"exit_code={exit_code_of(report)}",
    ]
    if update is not None and update.kernel_error:
        fields.append(f"kernel_error={_token(update.kernel_error)}")
    return "update: " + " ".join(fields)


def log_update_summary(report: Report, logger: logging.Logger | None = None) -> None:
    """Log :func:`update_summary` at NOTICE (issue 6: one line per update attempt)."""
    notice("%s", update_summary(report), logger=logger)
