"""The pure judgement of one attempt (:mod:`tdxupdate.outcome`): every branch of
:func:`~tdxupdate.outcome.judge` and every row of :data:`~tdxupdate.outcome.OUTCOMES`."""

from __future__ import annotations

import signal
from dataclasses import replace

import pytest

from tdxupdate import outcome
from tdxupdate.errors import EXIT_CODES, Interrupted, KernelFailure, TdxError, TryLater
from tdxupdate.outcome import NOT_WRITTEN, OUTCOMES, ReadBack, Verdict, judge
from tdxupdate.uploader import UploadResult
from tdxupdate.versions import Version

RUNNING = Version.parse("1.5.06")
TARGET = Version.parse("1.5.09")

DONE = UploadResult(
    kernel_error=None,
    final_status="idle",
    timed_out=False,
    interrupted=None,
    signal_after_commit=None,
    duration_s=1.5,
    bytes_written=4096,
    remaining_size=0,
    committed=True,
)


def judged(result: UploadResult = DONE, after: ReadBack | None = None) -> Verdict:
    if after is None and outcome.needs_read_back(result):
        after = ReadBack(TARGET, 2, False)
    return judge(
        result, running=RUNNING, target=TARGET, remaining_before=3, timeout_s=60.0, after=after
    )


# --- the table -------------------------------------------------------------------------------

#: outcome -> (error class, token, exit code); None: the run succeeds
EXPECTED: dict[str, tuple[type[TdxError], str, int] | None] = {
    "success": None,
    "version-mismatch": (KernelFailure, "version-mismatch", 1),
    "module-lost": (KernelFailure, "module-lost", EXIT_CODES["module-lost"]),
    "device-busy": (TryLater, "device-busy", 75),
    "timeout": (TryLater, "timeout", 75),
    "interrupted": (Interrupted, "interrupted", EXIT_CODES["interrupted"]),
    "failed": (KernelFailure, "kernel-error", 1),
    NOT_WRITTEN: (Interrupted, "interrupted", EXIT_CODES["interrupted"]),
}


def test_the_table_has_a_row_for_every_outcome_and_no_other() -> None:
    assert set(OUTCOMES) == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_outcome_fails_with_its_error_class_and_token(name: str) -> None:
    error = outcome.error_for(name, f"the {name} message")
    expected = EXPECTED[name]
    if expected is None:
        assert error is None
        assert OUTCOMES[name] == outcome.Row(None, None)
        return
    cls, token, code = expected
    assert type(error) is cls
    assert error is not None
    assert (error.code, error.message) == (token, f"the {name} message")
    assert error.exit_code == code


def test_a_signal_sets_the_exit_code_128_plus_its_number() -> None:
    error = outcome.error_for("interrupted", "x", signum=signal.SIGTERM)
    assert error is not None
    assert error.exit_code == 143


def test_an_unknown_outcome_is_a_bug() -> None:
    with pytest.raises(KeyError):
        outcome.error_for("maybe", "x")


# --- the judgement ---------------------------------------------------------------------------


def test_success_when_the_version_reads_the_target() -> None:
    v = judged()
    assert v == Verdict(
        "success",
        "Confirmed: 1.5.06 -> 1.5.09; version now reads 1.5.09, num_remaining_updates 3 -> 2",
    )


def test_a_signal_before_any_write_is_not_written() -> None:
    v = judged(replace(DONE, interrupted=signal.SIGINT, touched=False, committed=False))
    assert v.outcome == NOT_WRITTEN
    assert v.message == (
        "interrupted by SIGINT before anything was written to the upload interface"
    )


def test_a_signal_while_streaming_is_interrupted() -> None:
    v = judged(replace(DONE, interrupted=signal.SIGTERM, committed=False))
    assert v.outcome == "interrupted"
    assert v.message == (
        "interrupted by SIGTERM while streaming; the upload was aborted (nothing committed)"
    )


def test_a_timeout_names_the_status_and_needs_no_read_back() -> None:
    result = replace(DONE, timed_out=True, final_status="transferring")
    assert not outcome.needs_read_back(result)
    v = judged(result)
    assert v.outcome == "timeout"
    assert v.message.startswith("the kernel did not finish within 60 s; the upload interface is ")
    assert "still 'transferring'" in v.message


def test_a_finished_attempt_without_a_read_back_is_refused() -> None:
    with pytest.raises(ValueError, match="read back"):
        judge(DONE, running=RUNNING, target=TARGET, remaining_before=3, timeout_s=1, after=None)


def test_a_kernel_error_with_the_old_module_running_is_failed() -> None:
    v = judged(
        replace(DONE, kernel_error="transferring:firmware-invalid"), ReadBack(RUNNING, 3, False)
    )
    assert v.outcome == "failed"
    assert v.message.endswith(
        "Checked: the module version still reads 1.5.06, so the old module keeps running."
    )


def test_device_busy_is_its_own_outcome() -> None:
    v = judged(replace(DONE, kernel_error="preparing:device-busy"), ReadBack(RUNNING, 3, False))
    assert v.outcome == "device-busy"


def test_a_kernel_error_that_lost_the_module() -> None:
    v = judged(replace(DONE, kernel_error="transferring:hw-error"), ReadBack(None, 2, True))
    assert v == Verdict("module-lost", outcome.lost_sentence("transferring:hw-error"))
    assert "(kernel error transferring:hw-error)" in v.message


def test_no_kernel_error_and_a_lost_module() -> None:
    assert judged(after=ReadBack(None, 2, True)) == Verdict(
        "module-lost", outcome.lost_sentence(None)
    )


@pytest.mark.parametrize(("after", "shown"), [(RUNNING, "1.5.06"), (None, "unreadable")])
def test_an_accepted_image_that_did_not_change_the_version(
    after: Version | None, shown: str
) -> None:
    v = judged(after=ReadBack(after, 2, False))
    assert v == Verdict(
        "version-mismatch",
        f"the kernel accepted the image but the running version is {shown}, not 1.5.09",
    )


@pytest.mark.parametrize(
    ("after", "said"),
    [
        (ReadBack(RUNNING, 3, False), "still reads 1.5.06, so the old module keeps running."),
        (ReadBack(None, 3, False), "cannot be read now; see 'tdxupdate --status'."),
        (
            ReadBack(TARGET, 2, False),
            "now reads 1.5.09, not 1.5.06; num_remaining_updates went from 3 to 2.",
        ),
    ],
)
def test_what_the_check_after_a_kernel_error_found(after: ReadBack, said: str) -> None:
    assert outcome.checked(after, RUNNING, 3).endswith(said)


def test_a_late_signal_is_explained() -> None:
    assert outcome.late_signal("m", None) == "m"
    assert outcome.late_signal("m", signal.SIGTERM).startswith(
        "m (SIGTERM arrived after the image was committed"
    )


@pytest.mark.parametrize(
    ("change", "retry"),
    [
        ({}, True),
        ({"outcome": "success"}, False),
        ({"kernel_error": "transferring:hw-error"}, False),
        ({"version_after": TARGET}, False),
        ({"remaining_after": 2}, False),
    ],
)
def test_the_format_retry_only_after_an_untouched_header_refusal(
    change: dict[str, object], retry: bool
) -> None:
    facts: dict[str, object] = {
        "outcome": "failed",
        "kernel_error": "transferring:firmware-invalid",
        "running": RUNNING,
        "version_after": RUNNING,
        "remaining_before": 3,
        "remaining_after": 3,
    }
    assert outcome.format_retry(**{**facts, **change}) is retry  # type: ignore[arg-type]
