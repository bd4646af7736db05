"""tdxupdate/errors.py: the token -> exit code table, its meanings and the funnel."""

import re
import signal

import pytest

from tdxupdate import errors
from tdxupdate.errors import (
    EXIT_CODES,
    EXIT_MEANINGS,
    SIGNAL_EXIT_BASE,
    DataError,
    InternalError,
    Interrupted,
    InvalidImage,
    IOFailure,
    KernelFailure,
    NotFound,
    PermissionDenied,
    TdxError,
    TryLater,
    Unavailable,
    UsageError,
    exit_table,
    funnel,
)


def test_every_exit_code_has_a_meaning_and_every_meaning_a_code() -> None:
    assert set(EXIT_CODES.values()) | {0} == set(EXIT_MEANINGS)


def test_exit_table_lists_every_code_once_in_ascending_order() -> None:
    text = exit_table()
    assert text.startswith("Exit codes: ")
    assert text.endswith(".")
    parts = re.split(r", (?=\d)", text.removeprefix("Exit codes: ").removesuffix("."))
    shown = [part.split(" ", 1)[0] for part in parts]
    expected = [
        f"{SIGNAL_EXIT_BASE}+N" if code == EXIT_CODES["interrupted"] else str(code)
        for code in sorted(EXIT_MEANINGS)
    ]
    assert shown == expected
    assert len(set(shown)) == len(shown)
    assert "0 success or nothing to do" in parts
    assert "141 standard output closed" in parts
    assert "128+N interrupted by signal N" in parts


def test_signal_codes_follow_the_shell_convention() -> None:
    assert SIGNAL_EXIT_BASE == 128
    assert EXIT_CODES["interrupted"] == 130
    assert EXIT_CODES["broken-pipe"] == 141
    assert EXIT_CODES["internal-error"] == 70


@pytest.mark.parametrize(
    ("cls", "token", "code"),
    [
        (TdxError, "io-error", 74),
        (UsageError, "usage", 64),
        (DataError, "mapping-invalid", 65),
        (InvalidImage, "image-invalid", 65),
        (NotFound, "repository-not-found", 66),
        (Unavailable, "no-tdx-host", 69),
        (IOFailure, "io-error", 74),
        (TryLater, "upload-busy", 75),
        (PermissionDenied, "permission-denied", 77),
        (KernelFailure, "kernel-error", 1),
        (InternalError, "internal-error", 70),
        (Interrupted, "interrupted", 130),
    ],
)
def test_each_class_has_its_default_token_and_code(
    cls: type[TdxError], token: str, code: int
) -> None:
    err = cls("m")
    assert (err.code, err.exit_code, err.message, str(err)) == (token, code, "m", "m")


def test_a_code_override_changes_token_and_exit_code() -> None:
    err = TryLater("held", code="locked")
    assert (err.code, err.exit_code) == ("locked", 75)
    assert TryLater.code == "upload-busy"  # the class default is untouched


def test_an_unknown_token_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown error token 'no-such-token'"):
        TdxError("m", code="no-such-token")


def test_to_json_is_code_message_and_exit_code() -> None:
    assert NotFound("no image here", code="image-not-found").to_json() == {
        "code": "image-not-found",
        "message": "no image here",
        "exit_code": 66,
    }


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1])
def test_interrupted_exits_128_plus_the_signal(signum: int) -> None:
    err = Interrupted("x", signum=signum)
    assert err.signum == int(signum)
    assert err.exit_code == 128 + int(signum)
    assert err.code == "interrupted"
    assert err.to_json()["exit_code"] == 128 + int(signum)


def test_invalid_image_names_the_failed_check() -> None:
    assert InvalidImage("m").check == "container"
    err = InvalidImage("m", check="signature")
    assert (err.check, err.code) == ("signature", "image-invalid")


def test_funnel_passes_a_tdx_error_through_unchanged() -> None:
    err = TryLater("busy")
    assert funnel(err) is err


def test_funnel_turns_ctrl_c_into_interrupted_by_sigint() -> None:
    err = funnel(KeyboardInterrupt())
    assert isinstance(err, Interrupted)
    assert (err.message, err.signum, err.exit_code) == ("interrupted by SIGINT", signal.SIGINT, 130)


@pytest.mark.parametrize(
    ("exc", "shown"),
    [
        (RuntimeError("a bug"), "RuntimeError: a bug"),
        (OSError(5, "Input/output error"), "OSError: [Errno 5] Input/output error"),
        (BrokenPipeError(32, "Broken pipe"), "BrokenPipeError: [Errno 32] Broken pipe"),
        (SystemExit(3), "SystemExit: 3"),
    ],
)
def test_funnel_turns_anything_else_into_an_internal_error(exc: BaseException, shown: str) -> None:
    err = funnel(exc)
    assert isinstance(err, InternalError)
    assert err.exit_code == 70
    assert err.message == f"internal error: {shown} (run with -v for details)"


def test_terminating_signals_include_the_usual_ones_but_not_sigpipe() -> None:
    assert {signal.SIGINT, signal.SIGTERM, signal.SIGHUP} <= set(errors.TERMINATING_SIGNALS)
    assert signal.SIGPIPE not in errors.TERMINATING_SIGNALS
    assert signal.SIGKILL not in errors.TERMINATING_SIGNALS


def test_permanent_codes_are_unavailable_and_permission_denied() -> None:
    assert {
        EXIT_CODES["no-tdx-host"],
        EXIT_CODES["permission-denied"],
    } == errors.PERMANENT_EXIT_CODES
