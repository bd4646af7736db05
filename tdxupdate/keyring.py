"""Whom to trust: Intel's production signer plus ``--trusted-keys FILE``.

A signer is the SHA-256 of the sigstruct's 384 modulus bytes as stored (image-formats.md §4.4).
The file holds one fingerprint (64 hex digits, any case) per line; ``#`` comments and blank
lines are allowed (cli-contract.md §1).
"""

from __future__ import annotations

import re
from pathlib import Path

from tdxupdate import fsio
from tdxupdate.errors import DataError, NotFound
from tdxupdate.imagecheck import INTEL_PRODUCTION_SIGNER

_FPR_RE = re.compile(r"^[0-9a-fA-F]{64}$")


def parse_trusted_keys(text: str, source: str) -> frozenset[str]:
    keys: set[str] = set()
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if not _FPR_RE.match(line):
            shown = line if len(line) <= 80 else line[:77] + "..."
            raise DataError(
                f"{source}:{lineno}: {shown!r} is not a SHA-256 fingerprint (64 hex digits)",
                code="trusted-keys-invalid",
            )
        keys.add(line.lower())
    return frozenset(keys)


#: A trusted-keys file holds fingerprints of 64 hex digits and comments; 1 MiB is thousands.
MAX_TRUSTED_KEYS_SIZE = 1024 * 1024


def load_trusted_keys(path: Path) -> frozenset[str]:
    from tdxupdate.trustedfile import TooLarge, read_capped, unsafe

    try:
        data, st = read_capped(path, MAX_TRUSTED_KEYS_SIZE)
    except TooLarge:
        raise DataError(
            f"{path}: larger than {MAX_TRUSTED_KEYS_SIZE // (1024 * 1024)} MiB, "
            "not a trusted keys file",
            code="trusted-keys-invalid",
        ) from None
    except FileNotFoundError as exc:
        raise NotFound(
            f"{path}: trusted keys file does not exist", code="trusted-keys-not-found"
        ) from exc
    except IsADirectoryError as exc:
        raise DataError(
            f"{path}: is a directory, not a trusted keys file", code="trusted-keys-invalid"
        ) from exc
    except OSError as exc:
        raise fsio.os_error(exc, str(path)) from exc
    why = unsafe(st)
    if why is not None:
        raise DataError(f"{path}: refused: {why}", code="trusted-keys-invalid")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text", code="trusted-keys-invalid") from exc
    return parse_trusted_keys(text, str(path))


def trusted_signers(
    extra_files: list[Path] | tuple[Path, ...] = (), extra: frozenset[str] = frozenset()
) -> frozenset[str]:
    keys = {INTEL_PRODUCTION_SIGNER, *extra}
    for path in extra_files:
        keys |= load_trusted_keys(path)
    return frozenset(keys)
