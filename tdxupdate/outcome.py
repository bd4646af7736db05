"""The judgement of one streamed attempt, pure (no I/O): what the upload returned, the
version before, the version read back after and the target give the outcome (cli-contract.md
§4 steps 7-10), and :data:`OUTCOMES` gives each outcome's error class and token (§2).
"""

from __future__ import annotations

import signal
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tdxupdate.errors import Interrupted, KernelFailure, TdxError, TryLater
from tdxupdate.kernel_errors import decode_kernel_error
from tdxupdate.versions import Version

if TYPE_CHECKING:  # pragma: no cover
    from tdxupdate.uploader import UploadResult

#: The outcome of an interruption that came before the first write: nothing reached the
#: kernel, nothing is recorded, the run ends as interrupted.
NOT_WRITTEN = "not-written"


@dataclass(frozen=True)
class Row:
    """What a run whose attempt ended with an outcome fails with (``error`` None: it did not)."""

    error: type[TdxError] | None
    code: str | None


#: outcome (the history record's ``result``) -> the error the run fails with
OUTCOMES: dict[str, Row] = {
    "success": Row(None, None),
    "version-mismatch": Row(KernelFailure, "version-mismatch"),
    "module-lost": Row(KernelFailure, "module-lost"),
    "device-busy": Row(TryLater, "device-busy"),
    "timeout": Row(TryLater, "timeout"),
    # 128 + the signal number (the caller passes it; Interrupted computes the exit)
    "interrupted": Row(Interrupted, "interrupted"),
    # a kernel error, or a stream that failed (the caller raises the stream's own error)
    "failed": Row(KernelFailure, "kernel-error"),
    NOT_WRITTEN: Row(Interrupted, "interrupted"),
}


def error_for(outcome: str, message: str, *, signum: int | None = None) -> TdxError | None:
    """The error a run whose attempt ended with ``outcome`` fails with; None for success.

    ``signum``: the signal that interrupted the attempt (the exit is 128 + it)."""
    row = OUTCOMES[outcome]
    if row.error is None:
        return None
    if row.error is Interrupted:
        return Interrupted(message, signum=signum or signal.SIGINT)
    return row.error(message, code=row.code)


@dataclass(frozen=True)
class ReadBack:
    """The host as re-read after the kernel finished (§4 step 9)."""

    version: Version | None
    remaining: int | None
    module_lost: bool


@dataclass(frozen=True)
class Verdict:
    outcome: str
    message: str


def needs_read_back(result: UploadResult) -> bool:
    """Whether the version must be re-read to judge ``result`` (not when it was interrupted
    or timed out: the kernel did not finish)."""
    return result.interrupted is None and not result.timed_out


def judge(
    result: UploadResult,
    *,
    running: Version,
    target: Version,
    remaining_before: int | None,
    timeout_s: float,
    after: ReadBack | None,
) -> Verdict:
    """The outcome of one streamed attempt: signal, timeout, kernel error, version read-back.

    ``after`` is what was re-read once the kernel finished; None when
    :func:`needs_read_back` said no read was needed.
    """
    if result.interrupted is not None:
        name = signal.Signals(result.interrupted).name
        if not result.touched:
            # The signal came before the first write: nothing reached the kernel.
            return Verdict(
                NOT_WRITTEN,
                f"interrupted by {name} before anything was written to the upload interface",
            )
        return Verdict(
            "interrupted",
            f"interrupted by {name} while streaming; the upload was aborted (nothing committed)",
        )
    if result.timed_out:
        return Verdict(
            "timeout",
            f"the kernel did not finish within {timeout_s:g} s; the upload interface is "
            f"still '{result.final_status}' and the kernel owns the update — the next run will "
            "find it busy until it ends; check 'tdxupdate --status' later",
        )
    if after is None:
        raise ValueError("a finished attempt is judged on the version read back")
    if result.kernel_error is not None:
        if after.module_lost:
            return Verdict("module-lost", lost_sentence(result.kernel_error))
        info = decode_kernel_error(result.kernel_error)
        # The decoded sentence says the version is checked next; say what the check found.
        sentence = f"{info.sentence} {checked(after, running, remaining_before)}"
        return Verdict("device-busy" if info.code == "device-busy" else "failed", sentence)
    if after.module_lost:
        return Verdict("module-lost", lost_sentence(None))
    if after.version == target:
        return Verdict(
            "success",
            f"Confirmed: {running} -> {target}; version now reads {target}, "
            f"num_remaining_updates {remaining_before} -> {after.remaining}",
        )
    shown = str(after.version) if after.version is not None else "unreadable"
    return Verdict(
        "version-mismatch",
        f"the kernel accepted the image but the running version is {shown}, not {target}",
    )


def checked(after: ReadBack, running: Version, remaining_before: int | None) -> str:
    """What re-reading ``version`` (and the counter) after a kernel error found (§4 step 9)."""
    shown = after.version
    if shown == running:
        said = f"Checked: the module version still reads {running}, so the old module keeps running"
    elif shown is None:
        said = "Checked: the module version cannot be read now; see 'tdxupdate --status'"
    else:
        said = f"Checked: the module version now reads {shown}, not {running}"
    left = after.remaining
    if remaining_before is not None and left is not None and left != remaining_before:
        said += f"; num_remaining_updates went from {remaining_before} to {left}"
    return said + "."


def lost_sentence(kernel_error: str | None) -> str:
    said = f" (kernel error {kernel_error})" if kernel_error else ""
    return (
        f"the update failed after the old module was shut down{said}: the TDX module is lost, "
        "every running TD has been killed, and TDX is unusable until this host reboots"
    )


def late_signal(message: str, signum: int | None) -> str:
    """§4 step 11: after ``loading=0`` the kernel owns the update; say why we did not stop."""
    if signum is None:
        return message
    late = (
        f"{signal.Signals(signum).name} arrived after the image was "
        "committed: the kernel owned the update, so tdxupdate kept watching instead of "
        "stopping"
    )
    return f"{message} ({late})"


def format_retry(
    *,
    outcome: str,
    kernel_error: str | None,
    running: Version,
    version_after: Version | None,
    remaining_before: int | None,
    remaining_after: int | None,
) -> bool:
    """Whether a failed attempt may be sent once more in the other format: the kernel refused
    the header before anything was touched (§4 step 10)."""
    return (
        outcome == "failed"
        and kernel_error == "transferring:firmware-invalid"
        and version_after == running
        and remaining_after == remaining_before
    )
