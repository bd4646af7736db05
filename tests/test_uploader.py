"""The fw_upload driver (tdxupdate.uploader) against a fake upload directory.

The directory holds plain files (``loading``, ``data``, ``status``, ``error``,
``remaining_size``); :class:`FakeFwUpload` is the :class:`~tdxupdate.sysroot.Sysroot` the driver
reaches them through, and makes their descriptors behave like the kernel's attributes
(kernel-abi.md §2, real-kernel-tier.md §6): ``loading`` takes a value and acts on it, ``data``
can take short writes or fail, ``error`` can answer EBUSY. Time is a fake clock that moves
only when the driver sleeps, so the status-watch schedule is asserted exactly and nothing
here waits for real.
"""

from __future__ import annotations

import errno
import os
import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tdxupdate.errors import IOFailure, PermissionDenied, TryLater
from tdxupdate.fwupload import UploadInterface
from tdxupdate.sysroot import Sysroot
from tdxupdate.uploader import (
    Timing,
    UploadResult,
    interface_written,
    upload,
)

PAGE = 4096
START = 1000.0


class FakeClock:
    """Monotonic time that advances only through ``sleep``; runs events as their time comes."""

    def __init__(self) -> None:
        self.now = START
        self.sleeps: list[float] = []
        self._events: list[tuple[float, Callable[[], None]]] = []

    def __call__(self) -> float:
        return self.now

    def at(self, when: float, action: Callable[[], None]) -> None:
        self._events.append((when, action))
        self._events.sort(key=lambda e: e[0])

    def after(self, delay: float, action: Callable[[], None]) -> None:
        self.at(self.now + delay, action)

    def sleep(self, seconds: float) -> None:
        assert seconds > 0, "the driver must not sleep for nothing"
        self.sleeps.append(seconds)
        self.now += seconds
        while self._events and self._events[0][0] <= self.now + 1e-12:
            _, action = self._events.pop(0)
            action()


DataAction = Callable[[int, memoryview], int | None]


class FakeFwUpload(Sysroot):
    """A Sysroot whose fw_upload directory (plain files) has the kernel's attribute semantics."""

    ATTRS = ("loading", "data", "status", "error", "remaining_size")

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.dir = root / "tdx_module"
        self.iface = UploadInterface(self.dir, "tdx_module", self)
        self.dir.mkdir()
        self.set("loading", "0\n")
        self.set("data", "")
        self.set("status", "idle\n")
        self.set("error", "")
        self.set("remaining_size", "0\n")
        self.clock = FakeClock()
        self.loading_state = False
        self.loading_writes: list[str] = []
        self.events: list[tuple[str, str]] = []  # ("read"/"write", attr[:value])
        self.data_calls = 0
        self.max_write: int | None = None
        #: write-call index -> action(index, buffer) returning the count to accept (None: as
        #: usual) or raising.
        self.data_actions: dict[int, DataAction] = {}
        self.error_read_failures: list[OSError] = []
        self.commit_failure: OSError | None = None
        self.commit_leaves_loading = False
        #: What the "kernel" does when loading=0 starts an upload; default: done at once.
        self.on_commit: Callable[[FakeFwUpload, int], None] = FakeFwUpload.finish
        #: called with the attribute name after each open of one (a signal "during" the open)
        self.after_open: Callable[[str], None] | None = None
        self._fds: dict[int, str] = {}

    # ---- plain-file helpers (Path I/O, not through the Sysroot)
    def set(self, attr: str, text: str) -> None:
        (self.dir / attr).write_text(text)

    def get(self, attr: str) -> str:
        return (self.dir / attr).read_text()

    @property
    def data(self) -> bytes:
        return (self.dir / "data").read_bytes()

    def finish(self, size: int, error: str = "") -> None:
        """The update ends: idle, error set (or empty), remaining_size as the kernel leaves it."""
        self.set("status", "idle\n")
        self.set("error", error + "\n" if error else "")
        self.set("remaining_size", f"{size if error else 0}\n")

    def reads(self, attr: str) -> int:
        return sum(1 for kind, what in self.events if kind == "read" and what == attr)

    # ---- the Sysroot primitives the driver's every access goes through
    def open_fd(self, path: Path, flags: int) -> int:
        fd = super().open_fd(path, flags)
        p = Path(path)
        if p.parent == self.dir and p.name in self.ATTRS:
            if p.name == "data":
                assert not flags & (os.O_TRUNC | os.O_CREAT | os.O_APPEND), "data opened wrongly"
            self._fds[fd] = p.name
            if self.after_open is not None:
                self.after_open(p.name)
        return fd

    def close_fd(self, fd: int) -> None:
        self._fds.pop(fd, None)
        super().close_fd(fd)

    def read_fd(self, fd: int, size: int) -> bytes:
        attr = self._fds.get(fd)
        if attr is not None:
            self.events.append(("read", attr))
            if attr == "error" and self.error_read_failures:
                raise self.error_read_failures.pop(0)
        return super().read_fd(fd, size)

    def write_fd(self, fd: int, data: bytes | memoryview) -> int:
        attr = self._fds.get(fd)
        if attr == "loading":
            return self._write_loading(fd, bytes(data).decode())
        if attr == "data":
            return self._write_data(fd, memoryview(data))
        if attr is not None:
            raise OSError(errno.EACCES, os.strerror(errno.EACCES))
        return super().write_fd(fd, data)

    def _write_loading(self, fd: int, value: str) -> int:
        self.loading_writes.append(value)
        self.events.append(("write", f"loading:{value}"))
        if value == "1":
            self.loading_state = True
            self.set("data", "")  # loading=1 discards any partial buffer
        elif value == "0" and self.loading_state:
            if self.commit_failure is not None:
                if not self.commit_leaves_loading:
                    self.loading_state = False
                self.set("loading", "1\n" if self.loading_state else "0\n")
                raise self.commit_failure
            self.loading_state = False
            size = len(self.data)
            if size:
                # fw_upload_start: receiving at once, error cleared, remaining = size.
                self.set("status", "receiving\n")
                self.set("error", "")
                self.set("remaining_size", f"{size}\n")
                self.on_commit(self, size)
        else:
            self.loading_state = False  # -1 aborts; any other value aborts too
        self.set("loading", "1\n" if self.loading_state else "0\n")
        return len(value)

    def _write_data(self, fd: int, buf: memoryview) -> int:
        index = self.data_calls
        self.data_calls += 1
        accept = len(buf) if self.max_write is None else min(len(buf), self.max_write)
        action = self.data_actions.get(index)
        if action is not None:
            override = action(index, buf)
            if override is not None:
                accept = override
        if accept == 0:
            return 0
        return super().write_fd(fd, buf[:accept])


@pytest.fixture
def fw(tmp_path: Path) -> FakeFwUpload:
    return FakeFwUpload(tmp_path)


@pytest.fixture
def sentinel_handlers() -> Iterator[list[int]]:
    """Handlers that must neither run nor be left replaced while the driver has its own."""
    seen: list[int] = []

    def handler(signum: int, frame: object) -> None:
        seen.append(signum)

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield seen
        for s in previous:
            assert signal.getsignal(s) is handler, "the driver did not restore the handler"
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def image_of(size: int) -> bytes:
    return bytes((i * 7 + i // 251) & 0xFF for i in range(size))


def run(fw: FakeFwUpload, image: bytes | bytearray | memoryview, **kwargs: object) -> UploadResult:
    timing = Timing(fw.clock, fw.clock.sleep)
    return upload(fw.iface, image, timing=timing, **kwargs)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- streaming


def test_upload_fast_device_idle_on_first_read_accepted_without_sleeping(fw: FakeFwUpload) -> None:
    image = image_of(3 * PAGE + 100)
    result = run(fw, image)
    assert result.accepted
    assert result == UploadResult(
        kernel_error=None,
        final_status="idle",
        timed_out=False,
        interrupted=None,
        signal_after_commit=None,
        duration_s=0.0,
        bytes_written=len(image),
        remaining_size=0,
        committed=True,
    )
    assert fw.data == image
    assert fw.loading_writes == ["1", "0"]
    assert fw.clock.sleeps == []


def test_upload_short_writes_loop_until_every_byte_is_written_in_order(fw: FakeFwUpload) -> None:
    fw.max_write = PAGE  # the kernel takes at most a page per write()
    image = image_of(5 * PAGE + 123)
    progress: list[tuple[int, int]] = []
    result = run(fw, image, progress=lambda done, total: progress.append((done, total)))
    assert fw.data == image
    assert fw.data_calls == 6
    assert result.bytes_written == len(image)
    assert progress == [(PAGE * k, len(image)) for k in range(1, 6)] + [(len(image), len(image))]


def test_upload_accepts_memoryview_and_bytearray(fw: FakeFwUpload) -> None:
    fw.max_write = PAGE
    image = bytearray(image_of(2 * PAGE + 1))
    result = run(fw, memoryview(image))
    assert result.accepted
    assert fw.data == bytes(image)
    image.append(0)  # the driver released its views: the buffer can be resized again


def test_upload_eintr_is_retried(fw: FakeFwUpload) -> None:
    fw.max_write = PAGE

    def eintr(index: int, buf: memoryview) -> int:
        raise InterruptedError(errno.EINTR, "Interrupted system call")

    fw.data_actions[1] = eintr
    image = image_of(3 * PAGE)
    result = run(fw, image)
    assert result.accepted
    assert fw.data == image
    assert fw.data_calls == 4


def test_upload_write_returning_zero_aborts_with_io_error(fw: FakeFwUpload) -> None:
    fw.max_write = PAGE
    fw.data_actions[1] = lambda index, buf: 0
    with pytest.raises(IOFailure) as info:
        run(fw, image_of(3 * PAGE))
    assert info.value.code == "io-error"
    assert str(fw.dir / "data") in info.value.message
    assert "accepted no bytes at byte 4096 of 12288" in info.value.message
    assert fw.loading_writes == ["1", "-1"]
    assert fw.data_calls == 2  # no spinning on a zero-length write


def test_upload_eio_mid_stream_aborts_and_names_file_and_errno(fw: FakeFwUpload) -> None:
    fw.max_write = PAGE

    def eio(index: int, buf: memoryview) -> int:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    fw.data_actions[2] = eio
    with pytest.raises(IOFailure) as info:
        run(fw, image_of(4 * PAGE))
    message = info.value.message
    assert message.startswith(f"{fw.dir / 'data'}: write failed at byte 8192 of 16384: ")
    assert message == (
        f"{fw.dir / 'data'}: write failed at byte 8192 of 16384: Input/output error (EIO)"
        "; the upload was aborted (-1 written to loading), nothing was changed"
    )
    assert fw.loading_writes == ["1", "-1"]
    assert not fw.loading_state
    assert fw.get("status") == "idle\n"  # nothing started


def test_upload_eperm_on_data_is_permission_denied_and_aborts(fw: FakeFwUpload) -> None:
    def eperm(index: int, buf: memoryview) -> int:
        raise PermissionError(errno.EPERM, os.strerror(errno.EPERM))

    fw.data_actions[0] = eperm
    with pytest.raises(PermissionDenied) as info:
        run(fw, image_of(PAGE))
    assert info.value.exit_code == 77
    assert info.value.message == (
        f"{fw.dir / 'data'}: write failed at byte 0 of {PAGE}: permission denied (run as root)"
        "; the upload was aborted (-1 written to loading), nothing was changed"
    )
    assert fw.loading_writes == ["1", "-1"]


def test_upload_failing_progress_callback_aborts_and_propagates(fw: FakeFwUpload) -> None:
    fw.max_write = PAGE

    def progress(done: int, total: int) -> None:
        raise RuntimeError("renderer broke")

    with pytest.raises(RuntimeError, match="renderer broke"):
        run(fw, image_of(2 * PAGE), progress=progress)
    assert fw.loading_writes == ["1", "-1"]


def test_upload_refuses_when_status_not_idle_before_writing_anything(fw: FakeFwUpload) -> None:
    fw.set("status", "transferring\n")
    with pytest.raises(TryLater) as info:
        run(fw, image_of(PAGE))
    assert info.value.code == "upload-busy"
    assert info.value.exit_code == 75
    assert info.value.message == (
        f"{fw.dir / 'status'}: an upload is already running (status transferring); try again later"
    )
    assert fw.loading_writes == []
    assert fw.data_calls == 0


def test_upload_empty_image_is_refused(fw: FakeFwUpload) -> None:
    with pytest.raises(ValueError, match="empty image"):
        run(fw, b"")
    assert fw.loading_writes == []


# ----------------------------------------------------------------------------- commit


def test_upload_ebusy_on_commit_is_upload_busy_and_leaves_no_loading_state(
    fw: FakeFwUpload,
) -> None:
    fw.commit_failure = OSError(errno.EBUSY, os.strerror(errno.EBUSY))
    fw.commit_leaves_loading = True
    with pytest.raises(TryLater) as info:
        run(fw, image_of(PAGE))
    assert info.value.code == "upload-busy"
    assert info.value.message.startswith(
        f"{fw.dir / 'loading'}: the kernel refused to start the upload: another upload is running"
    )
    assert "nothing was changed; -1 was written to loading; try again later" in info.value.message
    assert fw.loading_writes == ["1", "0", "-1"]
    assert not fw.loading_state
    assert fw.reads("error") == 0


def test_upload_lsm_refusal_on_commit_is_io_error_without_extra_abort(fw: FakeFwUpload) -> None:
    # The kernel aborts the load itself when the LSM hook refuses; loading reads 0 then.
    fw.commit_failure = OSError(errno.EACCES, os.strerror(errno.EACCES))
    with pytest.raises(IOFailure) as info:
        run(fw, image_of(PAGE))
    assert info.value.code == "io-error"
    assert "refused to start the upload (Permission denied (EACCES)); nothing was changed" in (
        info.value.message
    )
    assert fw.loading_writes == ["1", "0"]


# ----------------------------------------------------------------------------- watching


def test_watch_first_read_at_once_then_1ms_doubling_to_25ms(fw: FakeFwUpload) -> None:
    def slow(fw: FakeFwUpload, size: int) -> None:
        fw.set("status", "transferring\n")
        fw.clock.after(0.200, lambda: fw.finish(size))

    fw.on_commit = slow
    result = run(fw, image_of(PAGE))
    assert result.accepted
    assert fw.clock.sleeps == pytest.approx([0.001, 0.002, 0.004] + [0.008] * 25)
    # 1 read before the upload, 1 at once after the commit, 1 after each sleep.
    assert fw.reads("status") == 1 + 1 + len(fw.clock.sleeps)


def test_watch_sees_completion_on_the_first_read_after_idle(fw: FakeFwUpload) -> None:
    idle_seen_at: list[int] = []

    def slow(fw: FakeFwUpload, size: int) -> None:
        fw.set("status", "transferring\n")

        def done() -> None:
            fw.finish(size)
            idle_seen_at.append(fw.reads("status"))

        fw.clock.after(0.040, done)

    fw.on_commit = slow
    result = run(fw, image_of(PAGE))
    assert result.final_status == "idle"
    assert fw.clock.sleeps == pytest.approx([0.001, 0.002, 0.004] + [0.008] * 5)
    assert fw.reads("status") == idle_seen_at[0] + 1


def test_watch_keeps_going_through_every_stage_and_unknown_status(fw: FakeFwUpload) -> None:
    def stages(fw: FakeFwUpload, size: int) -> None:
        def show(status: str) -> Callable[[], None]:
            return lambda: fw.set("status", status + "\n")

        for delay, status in (
            (0.002, "preparing"),
            (0.010, "unknown-status"),
            (0.020, "transferring"),
            (0.060, "programming"),
        ):
            fw.clock.after(delay, show(status))
        fw.clock.after(0.100, lambda: fw.finish(size))

    fw.on_commit = stages
    result = run(fw, image_of(PAGE))
    assert result.accepted
    assert fw.clock.now - START >= 0.100


def test_watch_timeout_leaves_upload_to_kernel(fw: FakeFwUpload) -> None:
    fw.on_commit = lambda fw, size: fw.set("status", "transferring\n")
    result = run(fw, image_of(2 * PAGE), timeout=1.0)
    assert result.timed_out
    assert result.committed
    assert not result.accepted
    assert result.final_status == "transferring"
    assert result.kernel_error is None
    assert result.remaining_size == 2 * PAGE
    assert sum(fw.clock.sleeps) == pytest.approx(1.0)
    assert max(fw.clock.sleeps) <= 0.008
    assert fw.reads("error") == 0  # it would answer EBUSY
    assert fw.loading_writes == ["1", "0"]  # never aborted after the commit


def test_watch_kernel_error_is_read_after_idle_and_stripped(fw: FakeFwUpload) -> None:
    fw.on_commit = lambda fw, size: fw.finish(size, "transferring:firmware-invalid")
    result = run(fw, image_of(PAGE))
    assert result.kernel_error == "transferring:firmware-invalid"
    assert not result.accepted
    assert result.remaining_size == PAGE


def test_watch_stale_error_from_a_previous_upload_is_not_reported(fw: FakeFwUpload) -> None:
    fw.set("error", "transferring:device-busy\n")  # left over: errors persist until a start

    def slow(fw: FakeFwUpload, size: int) -> None:
        fw.set("status", "transferring\n")
        fw.clock.after(0.005, lambda: fw.finish(size))

    fw.on_commit = slow
    result = run(fw, image_of(PAGE))
    assert result.kernel_error is None
    # error is read once, and only after the last status read (the one that saw idle).
    reads = [what for kind, what in fw.events if kind == "read" and what in ("status", "error")]
    assert reads[-1] == "error"
    assert reads.count("error") == 1


def test_watch_ebusy_on_error_rewatches_until_idle(fw: FakeFwUpload) -> None:
    def flip(fw: FakeFwUpload, size: int) -> None:
        fw.finish(size)
        # Another upload starts between our idle read and our error read.
        fw.error_read_failures.append(OSError(errno.EBUSY, os.strerror(errno.EBUSY)))

        def other_upload_runs() -> None:
            fw.set("status", "transferring\n")
            fw.clock.after(0.010, lambda: fw.finish(size, "programming:hw-error"))

        fw.clock.after(0.0, other_upload_runs)

    fw.on_commit = flip
    result = run(fw, image_of(PAGE))
    assert fw.reads("error") == 2
    assert result.kernel_error == "programming:hw-error"
    assert result.final_status == "idle"
    assert fw.clock.sleeps[0] == pytest.approx(0.001)


def test_watch_missing_remaining_size_is_none(fw: FakeFwUpload) -> None:
    def finish_without_remaining(fw: FakeFwUpload, size: int) -> None:
        fw.finish(size)
        (fw.dir / "remaining_size").unlink()  # some emulations do not offer it

    fw.on_commit = finish_without_remaining
    result = run(fw, image_of(PAGE))
    assert result.accepted
    assert result.remaining_size is None


def test_status_unreadable_after_commit_is_io_error_marked_committed(fw: FakeFwUpload) -> None:
    def device_gone(fw: FakeFwUpload, size: int) -> None:
        (fw.dir / "status").unlink()

    fw.on_commit = device_gone
    committed: list[int] = []
    with pytest.raises(IOFailure) as info:
        run(fw, image_of(PAGE), on_committed=committed.append)
    assert info.value.message == (
        f"{fw.dir / 'status'}: cannot read the upload status: No such file or directory (ENOENT)"
    )
    assert interface_written(info.value)
    assert committed == [PAGE]
    assert fw.loading_writes == ["1", "0"]  # never aborted once the kernel owns it


def test_failed_attempts_say_how_far_they_got(fw: FakeFwUpload) -> None:
    fw.set("status", "preparing\n")
    committed: list[int] = []
    with pytest.raises(TryLater) as busy:
        run(fw, image_of(PAGE), on_committed=committed.append)
    assert not interface_written(busy.value)
    assert committed == []

    fw.set("status", "idle\n")
    fw.commit_failure = OSError(errno.EBUSY, os.strerror(errno.EBUSY))
    with pytest.raises(TryLater) as refused:
        run(fw, image_of(PAGE), on_committed=committed.append)
    assert interface_written(refused.value)
    assert committed == []
    assert not interface_written(ValueError("unrelated"))


# ----------------------------------------------------------------------------- signals


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_while_streaming_aborts_and_reports(
    fw: FakeFwUpload, sentinel_handlers: list[int], signum: int
) -> None:
    fw.max_write = PAGE

    def deliver(index: int, buf: memoryview) -> None:
        os.kill(os.getpid(), signum)  # after this page is taken

    fw.data_actions[0] = deliver
    result = run(fw, image_of(4 * PAGE))
    assert result.interrupted == signum
    assert not result.committed
    assert not result.accepted
    assert result.bytes_written == PAGE
    assert fw.data_calls == 1  # the flag is checked between pages
    assert fw.loading_writes == ["1", "-1"]
    assert sentinel_handlers == []


def test_signal_before_the_first_write_touches_nothing(
    fw: FakeFwUpload, sentinel_handlers: list[int]
) -> None:
    # The signal lands while data is being opened: loading was never written, so the attempt
    # reached nothing and must not be recorded (contract §5).
    def open_then_signal(name: str) -> None:
        if name == "data":
            os.kill(os.getpid(), signal.SIGTERM)

    fw.after_open = open_then_signal
    result = run(fw, image_of(2 * PAGE))
    assert result.interrupted == signal.SIGTERM
    assert result.touched is False
    assert result.bytes_written == 0
    assert fw.loading_writes == []
    assert fw.data_calls == 0
    assert sentinel_handlers == []


def test_signal_after_commit_does_not_stop_the_watch(
    fw: FakeFwUpload, sentinel_handlers: list[int]
) -> None:
    def slow(fw: FakeFwUpload, size: int) -> None:
        fw.set("status", "transferring\n")
        fw.clock.after(0.003, lambda: os.kill(os.getpid(), signal.SIGTERM))
        fw.clock.after(0.050, lambda: fw.finish(size))

    fw.on_commit = slow
    result = run(fw, image_of(PAGE))
    assert result.interrupted is None
    assert result.signal_after_commit == signal.SIGTERM
    assert result.accepted
    assert result.final_status == "idle"
    assert fw.clock.now - START >= 0.050
    assert fw.loading_writes == ["1", "0"]
    assert sentinel_handlers == []


def test_handlers_restored_after_failure(fw: FakeFwUpload, sentinel_handlers: list[int]) -> None:
    def eio(index: int, buf: memoryview) -> int:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    fw.data_actions[0] = eio
    with pytest.raises(IOFailure):
        run(fw, image_of(PAGE))
    # the fixture asserts the handlers are back


def test_upload_from_a_worker_thread_leaves_signal_handlers_alone(
    fw: FakeFwUpload, sentinel_handlers: list[int]
) -> None:
    before = signal.getsignal(signal.SIGTERM)
    results: list[UploadResult] = []
    errors: list[BaseException] = []

    def work() -> None:
        try:
            results.append(run(fw, image_of(PAGE)))
        except BaseException as exc:
            errors.append(exc)

    worker = threading.Thread(target=work)
    worker.start()
    worker.join()
    assert errors == []
    assert results[0].accepted
    assert signal.getsignal(signal.SIGTERM) is before


def test_uploader_is_a_door_to_its_own_names_only() -> None:
    """The decoder lives in kernel_errors, the interface and its guard in fwupload."""
    from factories.doors import borrowed_imports, own_names

    from tdxupdate import uploader

    assert set(uploader.__all__) <= own_names("tdxupdate.uploader")
    assert borrowed_imports("tdxupdate.uploader") == []
