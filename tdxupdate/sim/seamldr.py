"""The emulated P-SEAMLDR: what SEAMLDR.INSTALL checks after the old module was shut down.

kernel-abi.md §3: the kernel passes the sigstruct and module pages through unchecked; P-SEAMLDR
authenticates them and checks compatibility. Its real checks are not public (UNCONFIRMED in
kernel-abi.md), so the emulator applies the rules Intel's tools select by (kernel-abi.md §5,
image-formats.md §3–§4), in this order; the first failure is reported:

1. the remaining-update counter is not zero;
2. every present CPU is online (SEAMLDR.INSTALL runs on every CPU);
3. the sigstruct header constants (image-formats.md §4.1);
4. the RSA-3072 PKCS#1 v1.5 SHA-384 signature over ``sigstruct[0:128] + sigstruct[900:2048]``;
5. the signer (SHA-256 of the modulus bytes) is trusted;
6. SEAMHASH = SHA-384 of the module pages;
7. a debug-signed module (module_type bit 31) only on a debug platform;
8. the CPU signature, stepping masked, is in the masked cpuid table;
9. P-SEAMLDR compatibility: with release facts, some ``min_seamldr_versions`` entry has this
   loader's major.minor and an update <= its update;
10. TD-preserving: same major.minor as the running module, no downgrade, and (with release
    facts) the running version >= ``min_module_version_for_td_preserving``.

The new module's version is read from the sigstruct bytes at offset 1000 (u16 update, u8
minor, u8 major), which Intel's 2.0.x blobs carry. An image without them cannot tell the
emulator what it installs, so the emulated *kernel* refuses it before the shutdown
(non-fatal ``transferring:firmware-invalid``): see :func:`declared_version`.

This module does its own parsing on purpose instead of reusing :mod:`tdxupdate.image`: the
emulator is the oracle the tool's verifier is tested against, so it must not share its bugs.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

from tdxupdate.signing import emsa_pkcs1_v15_sha384
from tdxupdate.versions import Version

SIGSTRUCT_SIZE = 2048
_HEADER_CONSTANTS = {
    # offset: (name, expected) -- image-formats.md §3
    0: ("header_type", 6),
    4: ("header_length", 0xE1),
    8: ("header_version", 0x10000),
    16: ("module_vendor", 0x8086),
    24: ("size", 0x200),
    28: ("key_size", 0x60),
    32: ("modulus_size", 0x60),
    36: ("exponent_size", 1),
    512: ("exponent", 65537),
}
DEBUG_BIT = 1 << 31


class InstallFailed(Exception):
    """SEAMLDR.INSTALL failed; the old module is already gone (fatal)."""


@dataclass(frozen=True)
class ReleaseFacts:
    """What a mapping file says about one release (tdxupdate.catalog.Release, trimmed)."""

    min_seamldr_versions: tuple[Version, ...]
    min_td_preserving: Version
    tdx_feature0: int | None


def declared_version(sigstruct_area: bytes) -> Version | None:
    """The version at sigstruct offset 1000, or None when absent or zero."""
    raw = sigstruct_area[1000:1004]
    if len(raw) < 4 or not any(raw):
        return None
    update, minor, major = struct.unpack("<HBB", raw)
    return Version(major, minor, update)


@dataclass(frozen=True)
class InstallRequest:
    """Everything SEAMLDR.INSTALL sees: the pages and the state of the host."""

    sigstruct_area: bytes
    module: bytes
    running: Version
    seamldr: Version
    cpu: int
    remaining: int
    all_cpus_online: bool


class PSeamldr:
    """Checks an install request; :meth:`install` returns the new version or raises."""

    def __init__(
        self,
        *,
        trusted_signers: frozenset[str],
        debug_platform: bool = False,
        releases: dict[Version, ReleaseFacts] | None = None,
    ):
        self.trusted_signers = frozenset(s.lower() for s in trusted_signers)
        self.debug_platform = debug_platform
        #: None: no release facts (only same major.minor and no downgrade are enforced)
        self.releases = releases

    def install(self, req: InstallRequest) -> Version:
        if req.remaining == 0:
            raise InstallFailed("no updates remain (num_remaining_updates is 0)")
        if not req.all_cpus_online:
            raise InstallFailed("not every CPU is online, SEAMLDR.INSTALL cannot run on all")
        sig = req.sigstruct_area[:SIGSTRUCT_SIZE]
        if len(sig) < SIGSTRUCT_SIZE:
            raise InstallFailed(f"sigstruct is {len(sig)} bytes, not {SIGSTRUCT_SIZE}")
        self._verify(sig, req)
        new = declared_version(sig)
        if new is None:  # the kernel side refuses these first; kept for direct callers
            raise InstallFailed("sigstruct declares no version")
        self._check_update(new, req)
        return new

    def _verify(self, sig: bytes, req: InstallRequest) -> None:
        """The sigstruct: its constants, signature and signer, SEAMHASH, debug bit, CPUs."""
        for offset, (name, expected) in _HEADER_CONSTANTS.items():
            value = struct.unpack_from("<I", sig, offset)[0]
            if value != expected:
                raise InstallFailed(f"sigstruct {name} is {value:#x}, not {expected:#x}")
        modulus_raw = sig[128:512]
        n = int.from_bytes(modulus_raw, "little")
        signature = int.from_bytes(sig[516:900], "little")
        expected_em = emsa_pkcs1_v15_sha384(sig[0:128] + sig[900:SIGSTRUCT_SIZE], 384)
        if not 0 < signature < n or pow(signature, 65537, n).to_bytes(384, "big") != expected_em:
            raise InstallFailed("sigstruct signature does not verify")
        signer = hashlib.sha256(modulus_raw).hexdigest()
        if signer not in self.trusted_signers:
            raise InstallFailed(f"signer {signer[:16]}… is not trusted by this P-SEAMLDR")
        if hashlib.sha384(req.module).digest() != sig[900:948]:
            raise InstallFailed("SEAMHASH does not match the module pages")
        module_type = struct.unpack_from("<I", sig, 12)[0]
        if module_type & DEBUG_BIT and not self.debug_platform:
            raise InstallFailed("debug-signed module on a production platform")
        count = struct.unpack_from("<I", sig, 1024)[0]
        if count > 255:
            raise InstallFailed(f"cpuid_table_size {count} is more than 255")
        table = struct.unpack_from(f"<{count}I", sig, 1028)
        if req.cpu & ~0xF not in {entry & ~0xF for entry in table}:
            raise InstallFailed(f"CPU {req.cpu:#x} is not in the module's cpuid table")

    def _check_update(self, new: Version, req: InstallRequest) -> None:
        """``new`` may replace the running module: P-SEAMLDR version, stream, no downgrade."""
        facts = None if self.releases is None else self.releases.get(new)
        if facts is not None and not any(
            v.stream == req.seamldr.stream and v.update <= req.seamldr.update
            for v in facts.min_seamldr_versions
        ):
            wanted = ", ".join(str(v) for v in facts.min_seamldr_versions)
            raise InstallFailed(f"{new} needs P-SEAMLDR {wanted}; this one is {req.seamldr}")
        if new.stream != req.running.stream:
            raise InstallFailed(f"{new} is not a Z-stream update of {req.running}")
        if new < req.running:
            raise InstallFailed(f"{new} is older than the running {req.running}")
        if facts is not None and req.running < facts.min_td_preserving:
            raise InstallFailed(
                f"{new} preserves TDs only from {facts.min_td_preserving}; running {req.running}"
            )
