"""The fw_upload driver: stream an image into ``data``, commit, watch ``status``, read ``error``.

Implements cli-contract.md §4 steps 6–8 and 11 over the generic fw_upload sysfs ABI of
kernel-abi.md §2 (``loading``/``data``/``status``/``error``/``remaining_size`` under
``/sys/class/firmware/<name>/``), with the error tokens of kernel-abi.md §3. The behaviour it
relies on was measured against the real kernel (real-kernel-tier.md §6, §7):

- every ``write()`` to ``data`` takes at most one page, so the image is streamed with an
  explicit ``os.write`` loop over one fd (each ``open()`` starts again at offset 0);
- ``loading=0`` sets ``receiving`` synchronously, so ``idle`` read afterwards means finished,
  and a fast device can already be ``idle`` on the very first read;
- nothing notifies on status changes: the driver re-reads ``status`` with a short, growing
  interval (reference-tool.md defect 6: a fixed 1 s poll and 10 s timeout);
- ``error`` is stale until an upload actually starts and reads EBUSY while one runs, so it is
  read only after the watch has seen ``idle``.

Nothing here prints; the orchestrator (``tdxupdate.update``) renders, records and decides.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from tdxupdate.errors import (
    EXIT_CODES,
    TERMINATING_SIGNALS,
    IOFailure,
    KernelFailure,
    PermissionDenied,
    TdxError,
    TryLater,
)

_LOG = logging.getLogger(__name__)

__all__ = [
    "FIRST_POLL_INTERVAL",
    "KNOWN_ERROR_TOKENS",
    "MAX_POLL_INTERVAL",
    "KernelError",
    "KernelErrorInfo",
    "UploadResult",
    "decode_kernel_error",
    "interface_written",
    "upload",
    "upload_committed",
]

#: Status watch: first re-read after 1 ms, doubling up to 25 ms (cli-contract.md §4 step 7).
FIRST_POLL_INTERVAL = 0.001
MAX_POLL_INTERVAL = 0.025

#: The ``<error>`` strings the fw_upload core can print (kernel-abi.md §2).
KNOWN_ERROR_TOKENS = (
    "hw-error",
    "timeout",
    "user-abort",
    "device-busy",
    "invalid-file-size",
    "read-write-error",
    "flash-wearout",
    "firmware-invalid",
    "unknown-error",
)

_ATTR_READ_SIZE = 4096  # a sysfs show() returns everything in one read of a page
_SIGNALS = TERMINATING_SIGNALS

Clock = Callable[[], float]
Sleep = Callable[[float], None]
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class UploadResult:
    """What happened to one upload attempt after the image was streamed.

    ``committed`` is true once ``loading=0`` was accepted: from then on the kernel owns the
    update and the driver only watches. ``kernel_error`` is the stripped ``<stage>:<error>``
    read from ``error`` after ``idle`` (None: accepted, or not read because of a timeout or an
    interruption). ``interrupted`` is the signal number that aborted the upload before the
    commit (``-1`` was written to ``loading``); ``signal_after_commit`` one that arrived
    while the kernel was already running the update (it did not stop the watch).
    """

    kernel_error: str | None
    final_status: str
    timed_out: bool
    interrupted: int | None
    signal_after_commit: int | None
    duration_s: float
    bytes_written: int
    remaining_size: int | None
    committed: bool
    #: anything was written to the interface (``loading=1`` onwards); False only for a signal
    #: that arrived before the first write, which leaves nothing to record (contract §5)
    touched: bool = True

    @property
    def accepted(self) -> bool:
        """The kernel ran the update to ``idle`` and reported no error."""
        return (
            self.committed
            and not self.timed_out
            and self.interrupted is None
            and self.kernel_error is None
        )


# --------------------------------------------------------------------------- error decoding

_STAGE_WORDS = {
    "receiving": "while the kernel was receiving the image",
    "preparing": "while the kernel was preparing the update",
    "transferring": "while the module was being installed",
    "programming": "while the kernel was completing the update",
    "idle": "after the update had ended",
}
_UNKNOWN_STAGE_WORDS = "at an unknown stage"

_CHECKS_VERSION = "tdxupdate checks the module version next"
_MAY_BE_FATAL = (
    f"this may be fatal, so {_CHECKS_VERSION} (if it is unreadable every TD is lost and "
    "the host needs a reboot)"
)

#: token -> (what happened and what to do, may the running module be lost)
_EXPLANATIONS: dict[str, tuple[str, bool]] = {
    "hw-error": (
        "communication with the P-SEAMLDR or the TDX module failed, or the host's update limit "
        f"is used up; {_MAY_BE_FATAL}",
        True,
    ),
    "firmware-invalid": (
        "the kernel or the P-SEAMLDR refused the image, or the update failed for another "
        f"reason; {_MAY_BE_FATAL}",
        True,
    ),
    "timeout": (
        f"the driver gave up waiting for the update to finish; {_CHECKS_VERSION}, and dmesg "
        "may say more",
        True,
    ),
    "user-abort": (
        "the upload was cancelled before the module was installed; run the update again when "
        f"ready ({_CHECKS_VERSION})",
        False,
    ),
    "device-busy": (
        "a TD build or TD migration was running, so the module refused the update and nothing "
        "changed; try again later",
        False,
    ),
    "invalid-file-size": (
        "the kernel refused the image size; check the image with tdxupdate --verify and the "
        f"image format this kernel expects (--image-format) ({_CHECKS_VERSION})",
        False,
    ),
    "read-write-error": (
        "the kernel could not pass the image to the P-SEAMLDR (out of memory or nothing was "
        f"written); check dmesg and try again ({_CHECKS_VERSION})",
        False,
    ),
    "flash-wearout": (
        "the P-SEAMLDR has no updates left until the next reboot; reboot the host before "
        f"updating again ({_CHECKS_VERSION})",
        False,
    ),
    "unknown-error": (
        "the driver returned an error code the kernel has no name for; check dmesg, and "
        f"{_MAY_BE_FATAL}",
        True,
    ),
}


@dataclass(frozen=True)
class KernelError:
    """A decoded ``<stage>:<error>`` from the fw_upload ``error`` attribute.

    ``code`` is the cli-contract.md §2 token: ``device-busy`` (exit 75, nothing changed) for
    the device-busy error, ``kernel-error`` (exit 1) for every other or unknown one.
    ``may_be_fatal`` says the running module may be gone (kernel-abi.md §3), so ``version``
    must be re-read before anything else is claimed.
    """

    text: str
    stage: str
    error: str
    code: str
    exit_code: int
    sentence: str
    may_be_fatal: bool

    def to_error(self, source: str | Path = "kernel") -> TdxError:
        """The exception for this answer; ``source`` names the place (e.g. the error file)."""
        message = f"{source}: {self.text or 'empty error'}: {self.sentence}"
        if self.code == "device-busy":
            return TryLater(message, code="device-busy")
        return KernelFailure(message)


#: Name used by the team brief's shared API listing.
KernelErrorInfo = KernelError


def decode_kernel_error(text: str) -> KernelError:
    """Decode the text of ``error`` (``"<stage>:<error>"``, newline allowed) into one sentence.

    Split on the first ``:``; a text without one is taken as a bare error token at an unknown
    stage. Unknown tokens (new kernels may add ``skip``, ``firmware-duplicate``…) are failures.
    """
    cleaned = text.strip()
    stage, sep, token = cleaned.partition(":")
    if not sep:
        stage, token = "", cleaned
    stage, token = stage.strip(), token.strip()
    stage_name = stage if stage in _STAGE_WORDS else "unknown"
    where = _STAGE_WORDS.get(stage, _UNKNOWN_STAGE_WORDS)
    if token in _EXPLANATIONS:
        explanation, fatal = _EXPLANATIONS[token]
        head = f"The update failed {where} with {token}"
        if token == "device-busy":
            head = f"The update was refused {where} with device-busy"
    else:
        shown = repr(token) if token else "an empty error"
        head = f"The update failed {where} with {shown}"
        explanation = (
            "an error this tool does not know, so it counts as a failure; check dmesg, and "
            f"{_MAY_BE_FATAL}"
        )
        fatal = True
    code = "device-busy" if token == "device-busy" else "kernel-error"
    return KernelError(
        text=cleaned,
        stage=stage_name,
        error=token,
        code=code,
        exit_code=EXIT_CODES[code],
        sentence=f"{head}: {explanation}.",
        may_be_fatal=fatal,
    )


# --------------------------------------------------------------------------- sysfs helpers


def _read_attr(path: Path) -> str:
    # Re-opening for every read is as cheap as pread on a kept fd and cannot be served from
    # a stale page cache (FUSE without direct_io keeps one per open file).
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        raw = os.read(fd, _ATTR_READ_SIZE)
    finally:
        os.close(fd)
    return raw.decode("ascii", "replace").strip()


def _write_attr(path: Path, value: str) -> None:
    # No O_TRUNC: sysfs ignores it, and the emulator need not implement truncation.
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, value.encode("ascii"))
    finally:
        os.close(fd)


def _errno_text(exc: OSError) -> str:
    if exc.errno is None:
        return exc.strerror or str(exc)
    name = errno.errorcode.get(exc.errno, str(exc.errno))
    return f"{exc.strerror or os.strerror(exc.errno)} ({name})"


def _error_for(exc: OSError, path: Path, doing: str, suffix: str = "") -> TdxError:
    if exc.errno in (errno.EACCES, errno.EPERM):
        return PermissionDenied(f"{path}: {doing}: permission denied (run as root){suffix}")
    return IOFailure(f"{path}: {doing}: {_errno_text(exc)}{suffix}")


def _abort(loading: Path) -> OSError | None:
    """Write ``-1`` to ``loading`` so the kernel discards the partial image."""
    try:
        _write_attr(loading, "-1")
    except OSError as exc:
        return exc
    return None


def _abort_note(loading: Path, failure: OSError | None) -> str:
    if failure is None:
        return "; the upload was aborted (-1 written to loading), nothing was changed"
    return (
        f"; writing -1 to {loading} also failed ({_errno_text(failure)}), the interface may "
        "still be in the loading state"
    )


def _read_remaining(path: Path) -> int | None:
    try:
        return int(_read_attr(path))
    except (OSError, ValueError):
        # Informational only, and absent on some emulations.
        return None


class _Phase:
    """How far an upload got; attached to any :class:`TdxError` that ``upload`` raises."""

    __slots__ = ("committed", "written")

    def __init__(self) -> None:
        self.written = False  # loading=1 was attempted: the attempt belongs in the history
        self.committed = False  # loading=0 was accepted: the kernel owns the update


_PHASE_ATTR = "_tdxupdate_upload_phase"


def interface_written(exc: BaseException) -> bool:
    """Whether the failed :func:`upload` had already written to the upload interface.

    False for refusals before any write (``status`` not idle, ``data`` cannot be opened):
    cli-contract.md §5 records only attempts that wrote.
    """
    phase = getattr(exc, _PHASE_ATTR, None)
    return isinstance(phase, _Phase) and phase.written


def upload_committed(exc: BaseException) -> bool:
    """Whether the failed :func:`upload` had committed (the kernel may be updating now).

    True only when ``status`` or ``error`` could not be read after ``loading=0``.
    """
    phase = getattr(exc, _PHASE_ATTR, None)
    return isinstance(phase, _Phase) and phase.committed


class _SignalTrap:
    """Terminating signals (SIGINT, SIGTERM, SIGHUP, SIGQUIT…) only set a flag while installed
    (cli-contract.md §4 step 11).

    Python allows installing handlers only from the main thread; elsewhere this does nothing
    and signals keep their usual effect.
    """

    def __init__(self) -> None:
        self.received: list[int] = []
        self._previous: dict[int, Any] = {}

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        self.received.append(signum)

    def __enter__(self) -> _SignalTrap:
        if threading.current_thread() is threading.main_thread():
            for sig in _SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc_info: object) -> None:
        for sig, previous in self._previous.items():
            # None: the handler was not installed from Python; the default is the best guess.
            signal.signal(sig, previous if previous is not None else signal.SIG_DFL)
        self._previous.clear()

    @property
    def first(self) -> int | None:
        return self.received[0] if self.received else None


#: Filesystems an upload interface can live on: the kernel's sysfs, and FUSE (emulators of
#: it, ours or anyone's). A regular disk filesystem means a plain tree of files: writing an
#: image there updates nothing, and reading "idle" back from it proves nothing.
UPLOAD_FILESYSTEMS = ("sysfs",)


def _unescape_mount(field: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def filesystem_type(path: Path, mountinfo: Path = Path("/proc/self/mountinfo")) -> str | None:
    """The type of the filesystem holding ``path`` (from mountinfo); None when unknown."""
    target = os.path.realpath(path)
    best: tuple[int, str] | None = None
    try:
        text = mountinfo.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        fields = left.split()
        if not sep or len(fields) < 5 or not right.split():
            continue
        point = _unescape_mount(fields[4])
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and (best is None or len(point) >= best[0]):
            best = (len(point), right.split()[0])
    return best[1] if best is not None else None


def require_upload_filesystem(upload_dir: Path) -> None:
    """Refuse to write an image into an upload interface that is not the kernel's (or an
    emulator's): a plain-file ``--sysroot`` would take the image, say nothing, and be
    recorded as a success. Symlinks out of the interface directory are refused too."""
    fstype = filesystem_type(upload_dir)
    if fstype is None or not (fstype in UPLOAD_FILESYSTEMS or fstype.split(".")[0] == "fuse"):
        raise TdxError(
            f"{upload_dir}: not an upload interface: it is on a {fstype or 'unknown'} "
            "filesystem, not sysfs (or a FUSE emulator of it); refusing to write an image "
            "into plain files (read-only actions and --dry-run work on such trees)",
            code="no-upload-interface",
        )
    real_dir = os.path.realpath(upload_dir)
    for name in ("loading", "data", "status", "error"):
        entry = os.path.realpath(Path(upload_dir) / name)
        if os.path.dirname(entry) != real_dir:
            raise TdxError(
                f"{Path(upload_dir) / name}: points out of the upload interface (to {entry}); "
                "refusing to write",
                code="no-upload-interface",
            )


# --------------------------------------------------------------------------- the driver


def upload(
    upload_dir: Path,
    image: bytes | bytearray | memoryview,
    *,
    timeout: float = 300.0,
    progress: Progress | None = None,
    clock: Clock = time.monotonic,
    sleep: Sleep = time.sleep,
    before_write: Callable[[], None] | None = None,
    stale_loading: bool = False,
    on_committed: Callable[[int], None] | None = None,
) -> UploadResult:
    """Upload ``image`` through the fw_upload directory ``upload_dir`` and watch it finish.

    Raises :class:`TryLater` (``upload-busy``) when ``status`` is not ``idle`` or the kernel
    refuses ``loading=0`` with EBUSY, :class:`IOFailure`/:class:`PermissionDenied` when a
    write fails (the partial image is aborted first), or when ``status``/``error`` cannot be
    read after the commit; :func:`interface_written` and :func:`upload_committed` tell how
    far such a failed attempt got. Returns an :class:`UploadResult` for everything after the
    commit, and for a SIGINT/SIGTERM before it (``interrupted``). ``clock`` and ``sleep`` are
    injectable so tests run the status watch on a fake clock. ``before_write`` runs after the
    interface was found idle and immediately before the first write (``loading=1``); whatever
    it raises stops the upload with nothing written. ``loading`` already reading 1 is another
    writer's open upload and refused, unless ``stale_loading`` says a killed tdxupdate (whose
    host lock we now hold) left it: then ``loading=1`` starts the buffer afresh.
    """
    phase = _Phase()
    try:
        return _upload(
            Path(upload_dir),
            image,
            timeout,
            progress,
            clock,
            sleep,
            phase,
            before_write,
            stale_loading,
            on_committed,
        )
    except TdxError as exc:
        setattr(exc, _PHASE_ATTR, phase)
        raise


def _upload(
    upload_dir: Path,
    image: bytes | bytearray | memoryview,
    timeout: float,
    progress: Progress | None,
    clock: Clock,
    sleep: Sleep,
    phase: _Phase,
    before_write: Callable[[], None] | None = None,
    stale_loading: bool = False,
    on_committed: Callable[[int], None] | None = None,
) -> UploadResult:
    loading = upload_dir / "loading"
    data = upload_dir / "data"
    status_path = upload_dir / "status"
    error_path = upload_dir / "error"
    remaining_path = upload_dir / "remaining_size"

    # The orchestrator checks this too, but loading=1 would throw away a running upload's
    # buffer, so the driver does not take it on trust.
    try:
        status = _read_attr(status_path)
    except OSError as exc:
        raise _error_for(exc, status_path, "cannot read the upload status") from exc
    if status != "idle":
        raise TryLater(
            f"{status_path}: an upload is already running (status {status or 'empty'}); "
            "try again later",
            code="upload-busy",
        )
    # loading=1 while idle: another writer has opened an upload and not yet sent a byte;
    # writing loading=1 again would splice its image and ours.
    try:
        already = _read_attr(loading)
    except OSError as exc:
        raise _error_for(exc, loading, "cannot read the upload state") from exc
    if already == "1" and not stale_loading:
        raise TryLater(
            f"{loading}: another writer has an upload open (loading reads 1); try again later "
            f"(if nothing else is writing, 'echo -1 > {loading}' aborts it)",
            code="upload-busy",
        )
    if before_write is not None:
        before_write()

    with memoryview(image) as raw, raw.cast("B") as view, _SignalTrap() as trap:
        total = view.nbytes
        if total == 0:
            # loading=0 with nothing written starts no upload and leaves a stale error.
            raise ValueError("refusing to upload an empty image")
        started = clock()
        written, interrupted = _stream(view, data, loading, trap, progress, phase)
        if interrupted:
            return UploadResult(
                kernel_error=None,
                final_status=status,
                timed_out=False,
                interrupted=trap.first,
                signal_after_commit=None,
                duration_s=clock() - started,
                bytes_written=written,
                remaining_size=None,
                committed=False,
                touched=phase.written,
            )
        _commit(loading)
        phase.committed = True
        if on_committed is not None:
            # Saying so must never stop the watch of an upload the kernel now owns (a closed
            # stdout, say): the outcome still has to be read and recorded.
            with contextlib.suppress(Exception):
                on_committed(written)
        # A signal seen from now on came after the last check before the commit.
        deadline = clock() + timeout
        final_status, kernel_error, timed_out = _watch(
            status_path, error_path, deadline, clock, sleep
        )
        return UploadResult(
            kernel_error=kernel_error,
            final_status=final_status,
            timed_out=timed_out,
            interrupted=None,
            signal_after_commit=trap.first,
            duration_s=clock() - started,
            bytes_written=written,
            remaining_size=_read_remaining(remaining_path),
            committed=True,
        )


def _stream(
    view: memoryview,
    data: Path,
    loading: Path,
    trap: _SignalTrap,
    progress: Progress | None,
    phase: _Phase,
) -> tuple[int, bool]:
    """Open ``data``, ``loading=1``, write every byte: (bytes written, interrupted).

    The signal flag is checked before every write and once more after the last one; an
    interruption aborts with ``-1`` (unless ``loading`` was never written), and so does
    every failure after ``loading=1`` before it propagates.
    """
    total = view.nbytes
    try:
        fd = os.open(data, os.O_WRONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise _error_for(exc, data, "cannot open the upload interface") from exc
    try:
        if trap.first is not None:
            return 0, True
        phase.written = True
        _LOG.debug("write 1 to %s, then %d bytes to %s", loading, total, data)
        try:
            _write_attr(loading, "1")
        except OSError as exc:
            # The kernel enters the loading state only on success; abort in case it did.
            raise _error_for(
                exc, loading, "cannot start loading", _abort_note(loading, _abort(loading))
            ) from exc
        offset = 0
        try:
            while True:
                if trap.first is not None:
                    _abort(loading)
                    return offset, True
                if offset >= total:
                    return offset, False
                try:
                    # The kernel takes at most a page per write() (real-kernel-tier.md §6.2);
                    # the slice is a view, never a copy.
                    count = os.write(fd, view[offset:])
                except InterruptedError:
                    continue
                except OSError as exc:
                    raise _error_for(
                        exc,
                        data,
                        f"write failed at byte {offset} of {total}",
                        _abort_note(loading, _abort(loading)),
                    ) from exc
                if count <= 0:
                    raise IOFailure(
                        f"{data}: the kernel accepted no bytes at byte {offset} of {total}"
                        + _abort_note(loading, _abort(loading))
                    )
                offset += count
                if progress is not None:
                    progress(offset, total)
        except TdxError:
            raise
        except BaseException:
            # A failing progress callback, or KeyboardInterrupt outside the main thread.
            _abort(loading)
            raise
    finally:
        os.close(fd)


def _commit(loading: Path) -> None:
    """``loading=0``: the kernel checks the image with the LSM and starts the upload."""
    _LOG.debug("write 0 to %s: the kernel takes the image", loading)
    try:
        _write_attr(loading, "0")
    except OSError as exc:
        # Nothing started. Make sure the interface is not left half-loaded for the next run.
        note = ""
        try:
            still_loading = _read_attr(loading) == "1"
        except OSError:
            still_loading = False
        if still_loading:
            failure = _abort(loading)
            note = (
                "; -1 was written to loading"
                if failure is None
                else f"; writing -1 to {loading} also failed ({_errno_text(failure)})"
            )
        if exc.errno == errno.EBUSY:
            raise TryLater(
                f"{loading}: the kernel refused to start the upload: another upload is "
                f"running ({_errno_text(exc)}); nothing was changed{note}; try again later",
                code="upload-busy",
            ) from exc
        raise IOFailure(
            f"{loading}: the kernel refused to start the upload ({_errno_text(exc)}); "
            f"nothing was changed{note}"
        ) from exc


def _watch(
    status_path: Path,
    error_path: Path,
    deadline: float,
    clock: Clock,
    sleep: Sleep,
) -> tuple[str, str | None, bool]:
    """Re-read ``status`` until ``idle``, then read ``error``: (status, error text, timed out).

    First read at once (a fast device is already idle), then 1, 2, 4, 8, 16, 25, 25… ms, so
    completion is seen within ~25 ms at negligible CPU. Unknown status strings keep watching.
    """
    interval = FIRST_POLL_INTERVAL
    seen: str | None = None
    while True:
        try:
            status = _read_attr(status_path)
        except OSError as exc:
            raise _error_for(exc, status_path, "cannot read the upload status") from exc
        if status != seen:
            _LOG.debug("%s: %s", status_path, status or "(empty)")
            seen = status
        if status == "idle":
            try:
                text = _read_attr(error_path)
            except OSError as exc:
                if exc.errno != errno.EBUSY:
                    raise _error_for(exc, error_path, "cannot read the upload result") from exc
                # EBUSY: the status flipped back to busy (another upload started); keep watching.
            else:
                _LOG.debug("%s: %s", error_path, text or "(empty)")
                return status, (text or None), False
        now = clock()
        if now >= deadline:
            return status, None, True
        sleep(min(interval, deadline - now))
        interval = min(interval * 2, MAX_POLL_INTERVAL)
