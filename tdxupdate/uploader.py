"""The fw_upload driver: stream an image into ``data``, commit, watch ``status``, read ``error``.

Implements cli-contract.md §4 steps 6–8 and 11 over the generic fw_upload sysfs ABI of
kernel-abi.md §2 (``loading``/``data``/``status``/``error``/``remaining_size`` under
``/sys/class/firmware/<name>/``), with the error tokens of kernel-abi.md §3. The behaviour it
relies on was measured against the real kernel (real-kernel-tier.md §6, §7):

- every ``write()`` to ``data`` takes at most one page, so the image is streamed with an
  explicit ``write()`` loop over one open file (each ``open()`` starts again at offset 0);
- ``loading=0`` sets ``receiving`` synchronously, so ``idle`` read afterwards means finished,
  and a fast device can already be ``idle`` on the very first read;
- nothing notifies on status changes: the driver re-reads ``status`` with a short, growing
  interval (reference-tool.md defect 6: a fixed 1 s poll and 10 s timeout);
- ``error`` is stale until an upload actually starts and reads EBUSY while one runs, so it is
  read only after the watch has seen ``idle``.

Every access goes through the :class:`~tdxupdate.fwupload.UploadInterface` that
:func:`tdxupdate.host.discover` found, so through its :class:`~tdxupdate.sysroot.Sysroot`.
Nothing here prints; the orchestrator (``tdxupdate.update``) renders, records and decides.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from tdxupdate import fsio
from tdxupdate.errors import (
    TERMINATING_SIGNALS,
    IOFailure,
    PermissionDenied,
    TdxError,
    TryLater,
)
from tdxupdate.fwupload import UploadInterface

_LOG = logging.getLogger(__name__)

__all__ = [
    "FIRST_POLL_INTERVAL",
    "MAX_POLL_INTERVAL",
    "SYSTEM_TIMING",
    "Timing",
    "UploadResult",
    "interface_written",
    "upload",
]

#: Status watch: first re-read after 1 ms, doubling up to 8 ms. cli-contract.md §4 step 7 allows
#: up to 25 ms; 8 ms sees the kernel finish within a few ms (issue 14: done to exit) for about
#: 125 reads of a small sysfs file a second while the kernel works, still negligible CPU.
FIRST_POLL_INTERVAL = 0.001
MAX_POLL_INTERVAL = 0.008

_SIGNALS = TERMINATING_SIGNALS

Clock = Callable[[], float]
Sleep = Callable[[float], None]
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class Timing:
    """The time source of the status watch: a monotonic ``clock`` and its ``sleep``.

    Tests pass a fake pair so the watch runs without waiting."""

    clock: Clock = time.monotonic
    sleep: Sleep = time.sleep


SYSTEM_TIMING = Timing()


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


# --------------------------------------------------------------------------- sysfs helpers


def _errno_text(exc: OSError) -> str:
    if exc.errno is None:
        return exc.strerror or str(exc)
    name = errno.errorcode.get(exc.errno, str(exc.errno))
    return f"{exc.strerror or os.strerror(exc.errno)} ({name})"


def _error_for(exc: OSError, path: Path, doing: str, suffix: str = "") -> TdxError:
    """``exc`` from ``doing`` something to ``path``; ``suffix`` says what was undone."""
    denied = fsio.cases((fsio.DENIED, PermissionDenied, f"permission denied (run as root){suffix}"))
    return fsio.os_error(
        exc, f"{path}: {doing}", denied, other=lambda e: f"{_errno_text(e)}{suffix}"
    )


def _abort(iface: UploadInterface) -> OSError | None:
    """Write ``-1`` to ``loading`` so the kernel discards the partial image."""
    try:
        iface.write(iface.loading, "-1")
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


class _Phase:
    """How far an upload got; attached to any :class:`TdxError` that ``upload`` raises."""

    __slots__ = ("written",)

    def __init__(self) -> None:
        self.written = False  # loading=1 was attempted: the attempt belongs in the history


_PHASE_ATTR = "_tdxupdate_upload_phase"


def interface_written(exc: BaseException) -> bool:
    """Whether the failed :func:`upload` had already written to the upload interface.

    False for refusals before any write (``status`` not idle, ``data`` cannot be opened):
    cli-contract.md §5 records only attempts that wrote.
    """
    phase = getattr(exc, _PHASE_ATTR, None)
    return isinstance(phase, _Phase) and phase.written


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


# --------------------------------------------------------------------------- the driver


def upload(
    target: UploadInterface | Path,
    image: bytes | bytearray | memoryview,
    *,
    timeout: float = 300.0,
    progress: Progress | None = None,
    timing: Timing = SYSTEM_TIMING,
    before_write: Callable[[], None] | None = None,
    stale_loading: bool = False,
    on_committed: Callable[[int], None] | None = None,
) -> UploadResult:
    """Upload ``image`` through the fw_upload interface ``target`` and watch it finish.

    ``target`` is the handle :func:`tdxupdate.host.discover` found (``HostFacts.upload``); a
    bare directory is taken as one on the real root.

    Raises :class:`TryLater` (``upload-busy``) when ``status`` is not ``idle`` or the kernel
    refuses ``loading=0`` with EBUSY, :class:`IOFailure`/:class:`PermissionDenied` when a
    write fails (the partial image is aborted first), or when ``status``/``error`` cannot be
    read after the commit; :func:`interface_written` tells whether such a failed attempt had
    written anything. Returns an :class:`UploadResult` for everything after the commit, and
    for a SIGINT/SIGTERM before it (``interrupted``); ``on_committed`` is called with the
    bytes written the moment the kernel took the image. ``timing`` is injectable so tests run
    the status watch on a fake clock. ``before_write`` runs after the interface was found
    idle and immediately before the first write (``loading=1``); whatever it raises stops the
    upload with nothing written. ``loading`` already reading 1 is another writer's open
    upload and refused, unless ``stale_loading`` says a killed tdxupdate (whose host lock we
    now hold) left it: then ``loading=1`` starts the buffer afresh.
    """
    iface = target if isinstance(target, UploadInterface) else UploadInterface(Path(target))
    phase = _Phase()
    try:
        _ready(iface, stale_loading)
        if before_write is not None:
            before_write()
        return _send(iface, image, phase, progress, timing, timeout, on_committed)
    except TdxError as exc:
        setattr(exc, _PHASE_ATTR, phase)
        raise


def _ready(iface: UploadInterface, stale_loading: bool) -> None:
    """Refuse unless ``status`` reads ``idle`` and no other writer holds ``loading`` open."""
    loading = iface.loading
    status_path = iface.status

    # The orchestrator checks this too, but loading=1 would throw away a running upload's
    # buffer, so the driver does not take it on trust.
    try:
        status = iface.read(status_path)
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
        already = iface.read(loading)
    except OSError as exc:
        raise _error_for(exc, loading, "cannot read the upload state") from exc
    if already == "1" and not stale_loading:
        raise TryLater(
            f"{loading}: another writer has an upload open (loading reads 1); try again later "
            f"(if nothing else is writing, 'echo -1 > {loading}' aborts it)",
            code="upload-busy",
        )


def _send(
    iface: UploadInterface,
    image: bytes | bytearray | memoryview,
    phase: _Phase,
    progress: Progress | None,
    timing: Timing,
    timeout: float,
    on_committed: Callable[[int], None] | None,
) -> UploadResult:
    """Stream, commit and watch an interface :func:`_ready` found idle."""
    clock = timing.clock
    with memoryview(image) as raw, raw.cast("B") as view, _SignalTrap() as trap:
        total = view.nbytes
        if total == 0:
            # loading=0 with nothing written starts no upload and leaves a stale error.
            raise ValueError("refusing to upload an empty image")
        started = clock()
        written, interrupted = _stream(view, iface, trap, progress, phase)
        if interrupted:
            return UploadResult(
                kernel_error=None,
                final_status="idle",  # as _ready found it: nothing was committed
                timed_out=False,
                interrupted=trap.first,
                signal_after_commit=None,
                duration_s=clock() - started,
                bytes_written=written,
                remaining_size=None,
                committed=False,
                touched=phase.written,
            )
        _commit(iface)
        if on_committed is not None:
            # Saying so must never stop the watch of an upload the kernel now owns (a closed
            # stdout, say): the outcome still has to be read and recorded.
            with contextlib.suppress(Exception):
                on_committed(written)
        # A signal seen from now on came after the last check before the commit.
        final_status, kernel_error, timed_out = _watch(iface, clock() + timeout, timing)
        return UploadResult(
            kernel_error=kernel_error,
            final_status=final_status,
            timed_out=timed_out,
            interrupted=None,
            signal_after_commit=trap.first,
            duration_s=clock() - started,
            bytes_written=written,
            remaining_size=iface.read_remaining(),
            committed=True,
        )


def _stream(
    view: memoryview,
    iface: UploadInterface,
    trap: _SignalTrap,
    progress: Progress | None,
    phase: _Phase,
) -> tuple[int, bool]:
    """Open ``data``, ``loading=1``, write every byte: (bytes written, interrupted).

    The signal flag is checked before every write and once more after the last one; an
    interruption aborts with ``-1`` (unless ``loading`` was never written), and so does
    every failure after ``loading=1`` before it propagates.
    """
    total, loading, data = view.nbytes, iface.loading, iface.data
    try:
        writer = iface.open_data()
    except OSError as exc:
        raise _error_for(exc, data, "cannot open the upload interface") from exc
    with writer:
        if trap.first is not None:
            return 0, True
        phase.written = True
        _LOG.debug("write 1 to %s, then %d bytes to %s", loading, total, data)
        try:
            iface.write(loading, "1")
        except OSError as exc:
            # The kernel enters the loading state only on success; abort in case it did.
            raise _error_for(
                exc, loading, "cannot start loading", _abort_note(loading, _abort(iface))
            ) from exc
        offset = 0
        try:
            while True:
                if trap.first is not None:
                    _abort(iface)
                    return offset, True
                if offset >= total:
                    return offset, False
                try:
                    # The kernel takes at most a page per write() (real-kernel-tier.md §6.2);
                    # the slice is a view, never a copy.
                    count = writer.write(view[offset:])
                except InterruptedError:
                    continue
                except OSError as exc:
                    raise _error_for(
                        exc,
                        data,
                        f"write failed at byte {offset} of {total}",
                        _abort_note(loading, _abort(iface)),
                    ) from exc
                if count <= 0:
                    raise IOFailure(
                        f"{data}: the kernel accepted no bytes at byte {offset} of {total}"
                        + _abort_note(loading, _abort(iface))
                    )
                offset += count
                if progress is not None:
                    progress(offset, total)
        except TdxError:
            raise
        except BaseException:
            # A failing progress callback, or KeyboardInterrupt outside the main thread.
            _abort(iface)
            raise


def _commit(iface: UploadInterface) -> None:
    """``loading=0``: the kernel checks the image with the LSM and starts the upload."""
    loading = iface.loading
    _LOG.debug("write 0 to %s: the kernel takes the image", loading)
    try:
        iface.write(loading, "0")
    except OSError as exc:
        # Nothing started. Make sure the interface is not left half-loaded for the next run.
        note = ""
        try:
            still_loading = iface.read(loading) == "1"
        except OSError:
            still_loading = False
        if still_loading:
            failure = _abort(iface)
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


def _watch(iface: UploadInterface, deadline: float, timing: Timing) -> tuple[str, str | None, bool]:
    """Re-read ``status`` until ``idle``, then read ``error``: (status, error text, timed out).

    First read at once (a fast device is already idle), then 1, 2, 4, 8, 8… ms, so completion
    is seen within ~8 ms at negligible CPU. Unknown status strings keep watching.
    """
    status_path, error_path = iface.status, iface.error
    interval = FIRST_POLL_INTERVAL
    seen: str | None = None
    while True:
        try:
            status = iface.read(status_path)
        except OSError as exc:
            raise _error_for(exc, status_path, "cannot read the upload status") from exc
        if status != seen:
            _LOG.debug("%s: %s", status_path, status or "(empty)")
            seen = status
        if status == "idle":
            try:
                text = iface.read(error_path)
            except OSError as exc:
                if exc.errno != errno.EBUSY:
                    raise _error_for(exc, error_path, "cannot read the upload result") from exc
                # EBUSY: the status flipped back to busy (another upload started); keep watching.
            else:
                _LOG.debug("%s: %s", error_path, text or "(empty)")
                return status, (text or None), False
        now = timing.clock()
        if now >= deadline:
            return status, None, True
        timing.sleep(min(interval, deadline - now))
        interval = min(interval * 2, MAX_POLL_INTERVAL)
