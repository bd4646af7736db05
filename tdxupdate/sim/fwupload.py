"""The kernel's generic fw_upload class device: the sysfs files and the upload state machine.

kernel-abi.md §2 (``drivers/base/firmware_loader/sysfs.c`` and ``sysfs_upload.c``) and the
behaviour measured on a real kernel in real-kernel-tier.md §6:

* ``loading``: writes are silently ignored (and still succeed) while the loader is *done*, which
  covers the whole upload; ``1`` discards the buffer and starts loading; ``0`` while loading
  commits: size 0 starts nothing, an upload still in progress gives EBUSY, otherwise
  ``status`` becomes ``receiving`` synchronously, ``error`` is cleared, ``remaining_size`` set to
  the size and the worker queued; ``0`` when not loading, ``-1`` and any other value abort
  (the write still succeeds).
* ``data``: read and written at the file offset; ENODEV while an upload is in flight; writes
  without ``loading=1`` are accepted and later thrown away.
* ``status``: ``idle``, ``receiving``, ``preparing``, ``transferring``, ``programming``.
* ``error``: EBUSY unless idle; empty after success; ``<progress>:<error>`` kept until the next
  upload actually starts.
* ``remaining_size``: set at start, reduced by what the driver's ``write`` op reports, left as
  is at the end.
* ``cancel``: a false or unparsable value is EINVAL; when idle ENODEV (the driver's op is still
  called); otherwise the driver's ``cancel`` op runs.

The worker (``fw_upload_main``) runs in a thread, like ``system_long_wq``, and calls the driver
ops; :class:`UploadOps` is that driver interface.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
from collections import Counter
from typing import Protocol

IDLE = "idle"
RECEIVING = "receiving"
PREPARING = "preparing"
TRANSFERRING = "transferring"
PROGRAMMING = "programming"

#: the firmware loader's per-buffer state (``fw_priv`` status)
INIT, LOADING, DONE = "init", "loading", "done"

#: Largest buffer the emulator accepts (the kernel's is limited by memory; ENOMEM beyond).
MAX_BUFFER = 64 * 1024 * 1024


def _oserror(code: int) -> OSError:
    return OSError(code, os.strerror(code))


def simple_strtol(buf: bytes) -> int:
    """The kernel's ``simple_strtol(buf, NULL, 10)``: leading digits, ``abc`` parses as 0."""
    text = buf.decode("ascii", "replace").lstrip()
    sign = 1
    if text[:1] in ("-", "+"):
        sign = -1 if text[0] == "-" else 1
        text = text[1:]
    digits = ""
    for ch in text:
        if not ch.isdigit():
            break
        digits += ch
    return sign * int(digits) if digits else 0


def kstrtobool(buf: bytes) -> bool | None:
    """The kernel's ``kstrtobool``: True/False, or None (EINVAL) when it does not parse."""
    text = buf.decode("ascii", "replace")
    first = text[:1].lower()
    if first in ("y", "t", "1"):
        return True
    if first in ("n", "f", "0"):
        return False
    if first == "o":
        second = text[1:2].lower()
        if second == "n":
            return True
        if second == "f":
            return False
    return None


class UploadOps(Protocol):
    """The driver side (``struct fw_upload_ops`` plus two emulator hooks)."""

    def started(self, data: bytes) -> None: ...  # synchronously, at commit
    def queued(self) -> None: ...  # the worker waits to run (system_long_wq latency)
    def prepare(self, data: bytes) -> str | None: ...
    def write(self, data: bytes, offset: int, size: int) -> tuple[str | None, int]: ...
    def poll_complete(self) -> str | None: ...
    def cancel(self) -> None: ...
    def settle(self) -> None: ...  # between the loader reset and status idle
    def finished(self, error: str | None) -> None: ...  # the upload is over ("stage:err")


class FwUpload:
    """One ``/sys/class/firmware/<name>`` device."""

    def __init__(
        self,
        name: str,
        ops: UploadOps,
        cond: threading.Condition,
    ):
        self.name = name
        self.ops = ops
        self.cond = cond
        self.state = INIT
        self.buffer = bytearray()
        self.progress = IDLE
        self.err_progress: str | None = None
        self.err_code: str | None = None
        self.remaining_size = 0
        self.counters: Counter[str] = Counter()
        self._worker: threading.Thread | None = None

    # --- loading ---------------------------------------------------------------------------

    def show_loading(self) -> bytes:
        with self.cond:
            return b"1\n" if self.state == LOADING else b"0\n"

    def store_loading(self, buf: bytes) -> int:
        value = simple_strtol(buf)
        with self.cond:
            self.counters["loading_writes"] += 1
            if self.state == DONE:
                self.counters["loading_ignored"] += 1
                return len(buf)
            if value == 1:
                self.counters["loading_starts"] += 1
                self.buffer = bytearray()
                self.state = LOADING
            elif value == 0 and self.state == LOADING:
                self.state = DONE
                failure = self._start()
                if failure:
                    raise _oserror(failure)
            else:
                # -1, a stray 0 and any other value: fw_load_abort, then fw_state_init for an
                # upload device. The buffer stays until the next loading=1 discards it.
                self.counters["loading_aborts"] += 1
                self.state = INIT
        return len(buf)

    def _start(self) -> int:
        """``fw_upload_start``, called with the lock held; returns an errno or 0."""
        if not self.buffer:
            self.state = INIT
            return 0
        if self.progress != IDLE:
            # The real loader is left "done" here and ignores writes until reset; the emulator
            # discards the commit instead so one race does not wedge the device for good.
            self.buffer = bytearray()
            self.state = INIT
            self.counters["start_busy"] += 1
            return errno.EBUSY
        data = bytes(self.buffer)
        self.progress = RECEIVING
        self.err_code = None
        self.err_progress = None
        self.remaining_size = len(data)
        self.counters["uploads"] += 1
        self.ops.started(data)
        self._worker = threading.Thread(
            target=self._main, args=(data,), name=f"fw_upload:{self.name}", daemon=True
        )
        self._worker.start()
        return 0

    # --- data --------------------------------------------------------------------------------

    def read_data(self, offset: int, size: int) -> bytes:
        with self.cond:
            if self.state == DONE:
                raise _oserror(errno.ENODEV)
            return bytes(self.buffer[offset : offset + size])

    def write_data(self, chunk: bytes, offset: int) -> int:
        with self.cond:
            if self.state == DONE:
                self.counters["data_enodev"] += 1
                raise _oserror(errno.ENODEV)
            end = offset + len(chunk)
            if end > MAX_BUFFER:
                raise _oserror(errno.ENOMEM)
            if end > len(self.buffer):
                self.buffer.extend(bytes(end - len(self.buffer)))
            self.buffer[offset:end] = chunk
            self.counters["data_writes"] += 1
            return len(chunk)

    @property
    def buffer_size(self) -> int:
        return len(self.buffer)

    # --- status, error, remaining_size, cancel --------------------------------------------------

    def show_status(self) -> bytes:
        with self.cond:
            return f"{self.progress}\n".encode()

    def show_error(self) -> bytes:
        with self.cond:
            if self.progress != IDLE:
                raise _oserror(errno.EBUSY)
            return self.error_text().encode()

    def error_text(self) -> str:
        if self.err_code is None:
            return ""
        return f"{self.err_progress}:{self.err_code}\n"

    def show_remaining_size(self) -> bytes:
        with self.cond:
            return f"{self.remaining_size}\n".encode()

    def store_cancel(self, buf: bytes) -> int:
        if not kstrtobool(buf):
            raise _oserror(errno.EINVAL)
        with self.cond:
            self.counters["cancel_writes"] += 1
            idle = self.progress == IDLE
            self.ops.cancel()
            self.cond.notify_all()
        if idle:
            raise _oserror(errno.ENODEV)
        return len(buf)

    def reset(self) -> None:
        """The emulator's ``reset``: as freshly registered (only while idle)."""
        with self.cond:
            assert self.progress == IDLE
            self.state = INIT
            self.buffer = bytearray()
            self.err_progress = self.err_code = None
            self.remaining_size = 0
            self.counters.clear()

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until no upload runs (for in-process tests and shutdown)."""
        with self.cond:
            return self.cond.wait_for(lambda: self.progress == IDLE, timeout)

    # --- the worker (fw_upload_main) ------------------------------------------------------------

    def _set_progress(self, progress: str) -> None:
        with self.cond:
            self.progress = progress
            self.cond.notify_all()

    def _set_error(self, code: str) -> None:
        with self.cond:
            self.err_progress = self.progress
            self.err_code = code

    def _main(self, data: bytes) -> None:
        try:
            self.ops.queued()
            self._set_progress(PREPARING)
            failure = self.ops.prepare(data)
            if failure:
                self._set_error(failure)
                return
            self._set_progress(TRANSFERRING)
            offset = 0
            while self.remaining_size:
                failure, written = self.ops.write(data, offset, self.remaining_size)
                if failure or not written:
                    self._set_error(failure or "read-write-error")
                    return
                with self.cond:
                    self.remaining_size -= written
                offset += written
            self._set_progress(PROGRAMMING)
            failure = self.ops.poll_complete()
            if failure:
                self._set_error(failure)
        except Exception:
            # an emulator bug must not look like a successful update
            logging.getLogger(__name__).exception("fw_upload worker of %s crashed", self.name)
            self._set_error("hw-error")
        finally:
            with self.cond:
                self.buffer = bytearray()
                self.state = INIT
            self.ops.settle()
            with self.cond:
                self.progress = IDLE
                error = self.error_text().strip() or None
                self.ops.finished(error)
                self.cond.notify_all()
