"""Append-only record of every update attempt that wrote to the upload interface.

Implements cli-contract.md §5: ``<state-dir>/history.jsonl``, one JSON object per line,
appended with fsync (through :mod:`tdxupdate.safedir`: never through a symbolic link, never in
a directory others can write). Records carry a record-format version from day one (architecture.md
convention 8); older formats are upgraded on load and kept as test fixtures.

Record formats:

- **0** (the prototype): no ``format`` key, no ``tool_version``; ``image_format`` an integer
  (256/512) and ``time`` possibly with a ``+00:00`` offset instead of ``Z``.
- **1**: the §5 fields plus ``format`` and ``attempt`` always; the optional host facts
  (``cpu_signature``, ``seamldr_version``, ``sysfs_layout``, ``generation``, ``fatal``,
  ``message``), the target's ``signer``/``seamsvn``/``mrseam`` and the running module's
  ``from_seamsvn``/``from_mrseam``/``from_mrseam_prefix`` only when known. Unknown keys
  (written by a newer tdxupdate) are kept.

Durability: a record is one ``os.write`` on an ``O_APPEND`` descriptor (so concurrent writers
never interleave inside a line), then ``fsync``; a newly created file also fsyncs its
directory. A torn last line (crash or full disk mid-write) is fenced off by the next append,
which starts with a newline, and ``load`` skips it with a warning.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

from tdxupdate import fsio, safedir
from tdxupdate.errors import IOFailure, PermissionDenied, TdxError
from tdxupdate.versions import Version

__all__ = [
    "HISTORY_FILE",
    "RECORD_FORMAT",
    "RESULTS",
    "HistoryRecord",
    "LoadResult",
    "SkippedLine",
    "append",
    "format_time",
    "history_path",
    "load",
    "utc_now",
]

HISTORY_FILE = "history.jsonl"
RECORD_FORMAT = 1

#: ``result`` values, exactly (cli-contract.md §5).
RESULTS = frozenset(
    {
        "success",
        "failed",
        "module-lost",
        "device-busy",
        "timeout",
        "interrupted",
        "version-mismatch",
        # no attempt: the configured pre_update command failed, so nothing was written
        "pre-update-failed",
        # after an attempt: the post_update command failed (the attempt has its own record)
        "post-update-failed",
    }
)

# The §5 fields: always written, ``null`` when unknown.
_CORE_FIELDS = (
    "time",
    "from_version",
    "to_version",
    "image_sha256",
    "image_format",
    "result",
    "kernel_error",
    "duration_s",
    "remaining_before",
    "remaining_after",
    "tool_version",
)
# Written only when known.
_OPTIONAL_FIELDS = (
    "cpu_signature",
    "seamldr_version",
    "sysfs_layout",
    "generation",
    "fatal",
    "message",
    "signer",
    "seamsvn",
    "mrseam",
    "pre_update",
    "post_update",
    "from_seamsvn",
    "from_mrseam",
    "from_mrseam_prefix",
)
_KNOWN_KEYS = frozenset((*_CORE_FIELDS, *_OPTIONAL_FIELDS, "format", "attempt"))


def format_time(moment: datetime) -> str:
    """RFC 3339 UTC with a ``Z``, to the second: ``2026-11-26T04:05:06Z``."""
    if moment.tzinfo is None:
        raise ValueError("a history time must be timezone-aware")
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def utc_now() -> str:
    return format_time(datetime.now(UTC))


def _version_text(value: object) -> object:
    return str(value) if isinstance(value, Version) else value


def _hex_text(value: object) -> object:
    # bool is an int; leave it for validation to reject.
    if isinstance(value, int) and not isinstance(value, bool):
        return f"0x{value:x}"
    return value


@dataclass(frozen=True, kw_only=True)
class HistoryRecord:
    """One attempt (cli-contract.md §5), plus the host facts that explain it.

    Versions are stored as their printed form (``"1.5.06"``; a :class:`Version` is accepted),
    ``image_format`` as ``"0x100"``/``"0x200"`` and ``cpu_signature`` as ``"0x806f8"``
    (integers are accepted). ``attempt`` is 2 for the automatic format retry (§4 step 10).
    ``format`` is the record format the line was written in (0 for prototype records).
    """

    result: str
    time: str = field(default_factory=utc_now)
    from_version: str | None = None
    to_version: str | None = None
    image_sha256: str | None = None
    image_format: str | None = None
    kernel_error: str | None = None
    duration_s: float | None = None
    remaining_before: int | None = None
    remaining_after: int | None = None
    tool_version: str | None = None
    format: int = RECORD_FORMAT
    cpu_signature: str | None = None
    seamldr_version: str | None = None
    sysfs_layout: str | None = None
    generation: str | None = None
    fatal: bool | None = None
    attempt: int = 1
    message: str | None = None
    #: the image's signer (SHA-256 of its modulus), SEAMSVN (``"0x010d"``) and MRSEAM (hex)
    signer: str | None = None
    seamsvn: str | None = None
    mrseam: str | None = None
    #: the pre_update / post_update command's outcome (tdxupdate.hooks.HookResult.to_json)
    pre_update: Mapping[str, Any] | None = None
    post_update: Mapping[str, Any] | None = None
    #: the running module's before the attempt (published, or the repository's image of its
    #: version): SEAMSVN, MRSEAM in full when known, and its first 8 hex digits
    from_seamsvn: str | None = None
    from_mrseam: str | None = None
    from_mrseam_prefix: str | None = None
    #: Keys this version does not know (a newer writer's), kept so nothing is lost.
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("from_version", "to_version", "seamldr_version"):
            object.__setattr__(self, name, _version_text(getattr(self, name)))
        for name in ("image_format", "cpu_signature"):
            object.__setattr__(self, name, _hex_text(getattr(self, name)))

    def problems(self) -> list[str]:
        """Why this record may not be written (empty when it may)."""
        found: list[str] = []
        if self.result not in RESULTS:
            found.append(f"result {self.result!r} is not one of {', '.join(sorted(RESULTS))}")
        if _parse_time(self.time) != self.time:
            found.append(f"time {self.time!r} is not RFC 3339 UTC like 2026-11-26T04:05:06Z")
        str_fields = (
            "from_version",
            "to_version",
            "image_sha256",
            "image_format",
            "kernel_error",
            "tool_version",
            "cpu_signature",
            "seamldr_version",
            "sysfs_layout",
            "generation",
            "message",
            "signer",
            "seamsvn",
            "mrseam",
            "from_seamsvn",
            "from_mrseam",
            "from_mrseam_prefix",
        )
        for name in str_fields:
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                found.append(f"{name} must be a string, got {type(value).__name__}")
        for name in ("remaining_before", "remaining_after"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                found.append(f"{name} must be an integer, got {type(value).__name__}")
        if self.duration_s is not None and (
            isinstance(self.duration_s, bool) or not isinstance(self.duration_s, int | float)
        ):
            found.append(f"duration_s must be a number, got {type(self.duration_s).__name__}")
        if self.fatal is not None and not isinstance(self.fatal, bool):
            found.append(f"fatal must be true, false or null, got {type(self.fatal).__name__}")
        hook = self.result in ("pre-update-failed", "post-update-failed")
        if self.attempt not in ((0,) if hook else (1, 2)):
            want = "0 (a pre/post-update record)" if hook else "1 or 2"
            found.append(f"attempt must be {want}, got {self.attempt!r}")
        return found

    def to_json(self) -> dict[str, Any]:
        """The JSON object of this record (the line in the file, the ``history`` list item)."""
        obj: dict[str, Any] = {"format": self.format}
        for name in _CORE_FIELDS:
            obj[name] = getattr(self, name)
        if isinstance(self.duration_s, float):
            obj["duration_s"] = round(self.duration_s, 3)
        obj["attempt"] = self.attempt
        for name in _OPTIONAL_FIELDS:
            value = getattr(self, name)
            if value is not None:
                obj[name] = value
        for key, value in self.extra.items():
            obj.setdefault(key, value)
        return obj

    @classmethod
    def from_json(cls, obj: object) -> HistoryRecord:
        """Read a record of any known format; ValueError says why a line is not one."""
        if not isinstance(obj, dict):
            raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
        fmt = obj.get("format", 0)
        if isinstance(fmt, bool) or not isinstance(fmt, int) or fmt < 0:
            raise ValueError(f"format {fmt!r} is not a record format number")
        for key in ("time", "result"):
            if not isinstance(obj.get(key), str):
                raise ValueError(f"{key} is missing or not a string")
        time_text = _parse_time(obj["time"])
        if time_text is None:
            raise ValueError(f"time {obj['time']!r} is not an RFC 3339 time")
        values: dict[str, Any] = {k: obj[k] for k in _KNOWN_KEYS if k in obj}
        values["time"] = time_text
        values["format"] = fmt
        record = cls(**values, extra={k: v for k, v in obj.items() if k not in _KNOWN_KEYS})
        # A newer writer may add result values; show them rather than hide the attempt.
        wrong = [p for p in record.problems() if not p.startswith("result ")]
        if wrong:
            raise ValueError("; ".join(wrong))
        return record


def _parse_time(text: str) -> str | None:
    """Normalise an RFC 3339 time to ``YYYY-MM-DDTHH:MM:SSZ``; None when it is not one."""
    try:
        moment = datetime.fromisoformat(text)
    except (TypeError, ValueError):
        return None
    if moment.tzinfo is None:
        return None
    return format_time(moment)


class SkippedLine(NamedTuple):
    """A line of the history file that could not be read as a record."""

    path: Path
    line: int  # 1-based
    reason: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: skipped: {self.reason}"


class LoadResult(NamedTuple):
    """``records`` oldest first; ``skipped`` lines are warnings, never fatal."""

    records: list[HistoryRecord]
    skipped: list[SkippedLine]


def history_path(state_dir: Path) -> Path:
    return Path(state_dir) / HISTORY_FILE


_ELSEWHERE = "(run as root or choose another --state-dir)"
_CASES = fsio.cases(
    (fsio.DENIED, PermissionDenied, f"permission denied {_ELSEWHERE}"),
    (fsio.READ_ONLY, PermissionDenied, f"read-only file system {_ELSEWHERE}"),
)


def _error(exc: OSError, path: Path, doing: str) -> TdxError:
    return fsio.os_error(exc, f"{path}: cannot {doing} the update history", _CASES)


def append(state_dir: Path, record: HistoryRecord) -> None:
    """Append ``record`` as one line of ``<state_dir>/history.jsonl`` and fsync it.

    Creates the state directory (0755) and the file (0644) when missing, through
    :mod:`tdxupdate.safedir`: an unsafe state directory, or a symbolic link or other
    non-regular file in place of the history, is refused (:class:`PermissionDenied`) and
    never written through. Raises ValueError for a record that breaks §5,
    :class:`PermissionDenied` or :class:`IOFailure` naming the file when it cannot be written.
    """
    problems = record.problems()
    if problems:
        raise ValueError("history record: " + "; ".join(problems))
    line = (json.dumps(record.to_json(), ensure_ascii=True, separators=(",", ":")) + "\n").encode()
    state_dir = Path(state_dir)
    path = state_dir / HISTORY_FILE
    try:
        directory = safedir.open_dir(state_dir, "state directory")
    except OSError as exc:
        raise _error(exc, path, "write") from exc
    with directory:
        flags = os.O_RDWR | os.O_APPEND | os.O_CREAT
        try:
            try:
                fd = directory.open(HISTORY_FILE, flags | os.O_EXCL, 0o644)
                created = True
            except FileExistsError:
                fd = directory.open(HISTORY_FILE, flags, 0o644)
                created = False
            if created:
                os.fchmod(fd, 0o644)  # the umask applied to the mode given to open
        except OSError as exc:
            raise _error(exc, path, "write") from exc
        try:
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":
                # The previous writer died mid-line: fence its fragment off so this record
                # starts on a line of its own. Still a single write, so it cannot interleave.
                line = b"\n" + line
            written = os.write(fd, line)
            if written != len(line):
                raise IOFailure(
                    f"{path}: cannot write the update history: short write ({written} of "
                    f"{len(line)} bytes; is the disk full?)"
                )
            os.fsync(fd)
            if created:
                directory.fsync()
        except OSError as exc:
            raise _error(exc, path, "write") from exc
        finally:
            os.close(fd)


def load(state_dir: Path) -> LoadResult:
    """Every readable record of ``<state_dir>/history.jsonl``, oldest first.

    A missing file (or state directory) is an empty history; an unsafe state directory or a
    history that is a symbolic link is refused as :func:`append` refuses it. Lines that are
    not records are skipped and returned in ``skipped``; blank lines are ignored.
    """
    path = history_path(state_dir)
    try:
        directory = safedir.open_existing(Path(state_dir), "state directory")
        if directory is None:
            return LoadResult([], [])
        with directory:
            raw = directory.read(HISTORY_FILE)
    except OSError as exc:
        raise _error(exc, path, "read") from exc
    if raw is None:
        return LoadResult([], [])
    records: list[HistoryRecord] = []
    skipped: list[SkippedLine] = []
    lines = raw.split(b"\n")
    for number, chunk in enumerate(lines, start=1):
        if not chunk.strip():
            continue
        torn = number == len(lines)  # no newline after it: a write that did not finish
        try:
            obj = json.loads(chunk.decode("utf-8"))
            record = HistoryRecord.from_json(obj)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            reason = "incomplete last line" if torn else f"not a JSON record ({exc})"
            skipped.append(SkippedLine(path, number, reason))
            continue
        except (ValueError, TypeError) as exc:
            skipped.append(SkippedLine(path, number, str(exc)))
            continue
        records.append(record)
    return LoadResult(records, skipped)
