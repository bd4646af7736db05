"""tdxupdate.kernel_errors: the fw_upload ``error`` text as one sentence (kernel-abi.md §3)."""

from __future__ import annotations

import pytest

from tdxupdate.kernel_errors import KNOWN_ERROR_TOKENS, decode_kernel_error

# ----------------------------------------------------------------------------- decoding

STAGES = ["receiving", "preparing", "transferring", "programming"]
STAGE_WORDS = {
    "receiving": "receiving the image",
    "preparing": "preparing the update",
    "transferring": "being installed",
    "programming": "completing the update",
}


@pytest.mark.parametrize("stage", STAGES)
@pytest.mark.parametrize("token", KNOWN_ERROR_TOKENS)
def test_decode_every_token_at_every_stage(stage: str, token: str) -> None:
    info = decode_kernel_error(f"{stage}:{token}\n")
    assert (info.stage, info.error, info.text) == (stage, token, f"{stage}:{token}")
    if token == "device-busy":
        assert (info.code, info.exit_code) == ("device-busy", 75)
        assert "nothing changed" in info.sentence
        assert info.to_error().code == "device-busy"
        assert info.to_error().exit_code == 75
    else:
        assert (info.code, info.exit_code) == ("kernel-error", 1)
        assert "checks the module version next" in info.sentence
        assert info.to_error().exit_code == 1
    assert STAGE_WORDS[stage] in info.sentence
    assert token in info.sentence
    assert info.sentence[0].isupper()
    assert info.sentence.endswith(".")
    assert ". " not in info.sentence, "one sentence only"
    assert info.may_be_fatal == (
        token in ("hw-error", "firmware-invalid", "timeout", "unknown-error")
    )


def test_kernel_error_to_error_names_the_place() -> None:
    error = decode_kernel_error("transferring:firmware-invalid\n").to_error("/sys/x/error")
    assert error.code == "kernel-error"
    assert error.message.startswith(
        "/sys/x/error: transferring:firmware-invalid: The update failed while the module was "
        "being installed with firmware-invalid: "
    )


@pytest.mark.parametrize("token", ["hw-error", "firmware-invalid"])
def test_decode_fatal_tokens_say_so(token: str) -> None:
    sentence = decode_kernel_error(f"transferring:{token}").sentence
    assert "may be fatal" in sentence
    assert "reboot" in sentence


@pytest.mark.parametrize(
    ("text", "stage", "error", "code"),
    [
        ("transferring:skip", "transferring", "skip", "kernel-error"),
        ("preparing:firmware-duplicate\n", "preparing", "firmware-duplicate", "kernel-error"),
        ("bogus-stage:hw-error", "unknown", "hw-error", "kernel-error"),
        ("device-busy", "unknown", "device-busy", "device-busy"),
        ("garbage", "unknown", "garbage", "kernel-error"),
        ("preparing:", "preparing", "", "kernel-error"),
        (":hw-error", "unknown", "hw-error", "kernel-error"),
        ("", "unknown", "", "kernel-error"),
        ("  transferring : device-busy \n", "transferring", "device-busy", "device-busy"),
        ("transferring:a:b", "transferring", "a:b", "kernel-error"),
    ],
    ids=[
        "new-token",
        "proposed-token",
        "unknown-stage",
        "no-colon-known",
        "no-colon-unknown",
        "empty-token",
        "empty-stage",
        "empty",
        "spaces",
        "two-colons",
    ],
)
def test_decode_unknown_and_malformed_text(text: str, stage: str, error: str, code: str) -> None:
    info = decode_kernel_error(text)
    assert (info.stage, info.error, info.code) == (stage, error, code)
    assert info.exit_code == (75 if code == "device-busy" else 1)
    assert info.sentence.endswith(".")
    assert ". " not in info.sentence
    if code == "kernel-error" and error not in KNOWN_ERROR_TOKENS:
        assert info.may_be_fatal
        assert "does not know" in info.sentence
        assert (repr(error) if error else "an empty error") in info.sentence
    if stage == "unknown":
        assert "at an unknown stage" in info.sentence


def test_the_decoder_has_one_door() -> None:
    from tdxupdate import uploader

    for name in ("decode_kernel_error", "KNOWN_ERROR_TOKENS", "KernelError", "KernelErrorInfo"):
        assert not hasattr(uploader, name), name
