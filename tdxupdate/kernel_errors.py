"""The fw_upload ``error`` attribute decoded into one sentence (kernel-abi.md §2, §3).

The tokens are those the fw_upload core prints; what each means for the TDX module, and whether
the running module may be lost, follows kernel-abi.md §3. Pure: nothing here touches the host.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tdxupdate.errors import EXIT_CODES, KernelFailure, TdxError, TryLater

__all__ = ["KNOWN_ERROR_TOKENS", "KernelError", "decode_kernel_error"]

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
