"""Which module may be installed on this host, and why the others may not.

Pure: ``(host facts, catalog releases, image facts, options) -> candidates with reasons ->
decision``. No I/O, no click, no requests. The reason tokens and the rules for which of them
appear together are cli-contract.md §3; the rules themselves are reference-tool.md "Rules the
reference applies", with its defects (#3: stop at the newest TD-preserving module even when it
does not fit this CPU; #7: silent reinstall) fixed.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field

from tdxupdate.attestation import Allowlist, allowlist_problems
from tdxupdate.catalog import Release
from tdxupdate.errors import DataError
from tdxupdate.releases import ReleaseTable
from tdxupdate.versions import Version

#: Every reason token, in the order they are reported (cli-contract.md §3).
REASONS: tuple[str, ...] = (
    "not-in-mapping",
    "image-missing",
    "image-invalid",
    "signature-invalid",
    "untrusted-signer",
    "major-minor-mismatch",
    "older-than-running",
    "same-as-running",
    "below-min-td-preserving",
    "seamldr-incompatible",
    "release-mismatch",
    "seamsvn-below-running",
    "cpu-unsupported",
    "debug-module",
    "not-strict-compatible",
    "not-allowlisted",
    "seamsvn-below-minimum",
)

#: Image check name (image-formats.md §4 / tdxupdate.imagecheck.CHECK_NAMES) -> reason token.
_CHECK_REASON = {
    "container": "image-invalid",
    "checksum": "image-invalid",
    "seamhash": "image-invalid",
    "version": "image-invalid",
    "cpuid-table": "image-invalid",
    "signature": "signature-invalid",
    "trusted-signer": "untrusted-signer",
}


@dataclass(frozen=True)
class ImageFacts:
    """What the policy needs to know about one image (from its header and sigstruct)."""

    path: str
    image_format: int | None = None
    is_debug: bool | None = None
    cpuid_table: tuple[int, ...] | None = None
    #: failed checks as ``(check name, detail)``; ``debug`` is not a failure here.
    failures: tuple[tuple[str, str], ...] = ()
    #: the sigstruct's SEAMSVN, its SEAMHASH (= MRSEAM, hex) and signer (SHA-256 of the modulus)
    seamsvn: int | None = None
    mrseam: str | None = None
    signer: str | None = None

    @property
    def parsed(self) -> bool:
        """True when the header and sigstruct could be read (cpuid table and debug bit known)."""
        return self.cpuid_table is not None and self.is_debug is not None


@dataclass(frozen=True)
class Options:
    allow_debug: bool = False
    strict_compat: bool = False
    #: published releases that bind an image to its version; None: no binding (unit tests)
    releases: ReleaseTable | None = None
    #: the operator's allowlist (``--allowlist``): MRSEAMs and/or minimum SEAMSVNs verifiers accept
    allowlist: Allowlist | None = None


@dataclass(frozen=True)
class HostView:
    """The host facts the policy depends on."""

    module_version: Version
    seamldr_version: Version
    cpu_signature: int | None


@dataclass(frozen=True)
class Candidate:
    version: Version
    release: Release | None
    image: ImageFacts | None
    reasons: tuple[str, ...]
    #: reason token -> one sentence naming both sides
    details: Mapping[str, str] = field(default_factory=dict)

    @property
    def eligible(self) -> bool:
        return not self.reasons

    def without(self, *tokens: str) -> tuple[str, ...]:
        return tuple(r for r in self.reasons if r not in tokens)


def _masked(sig: int) -> int:
    # The stepping nibble is masked on both sides (reference-tool.md; image-formats.md §3).
    return sig & 0xFFFFFFF0


def evaluate_one(
    version: Version,
    release: Release | None,
    image: ImageFacts | None,
    host: HostView,
    options: Options,
) -> Candidate:
    """Every applicable reason token for one candidate, with a sentence for each."""
    found: dict[str, str] = {}
    for problems in (
        _presence_problems(version, release, image),
        _version_problems(version, host.module_version),
        _release_problems(version, release, host),
        _image_problems(version, image, host, options),
        _strict_problems(version, release, host.module_version, options),
    ):
        for token, sentence in problems:
            found.setdefault(token, sentence)  # the first sentence for a token is the one kept
    reasons = tuple(token for token in REASONS if token in found)
    return Candidate(version, release, image, reasons, {t: found[t] for t in reasons})


_Problems = Iterator[tuple[str, str]]


def _presence_problems(
    version: Version, release: Release | None, image: ImageFacts | None
) -> _Problems:
    """The mapping entry or the image is missing, or the image failed one of its checks."""
    if release is None:
        yield "not-in-mapping", f"{version} has an image but no entry in the mapping file"
    if image is None:
        yield "image-missing", f"{version} is in the mapping file but the repository has no image"
        return
    for check, detail in image.failures:
        token = _CHECK_REASON.get(check)
        if token is not None:
            yield token, detail


def _version_problems(version: Version, running: Version) -> _Problems:
    """The version is not a newer Z-stream of the running module."""
    if version.stream != running.stream:
        yield (
            "major-minor-mismatch",
            f"{version} is not a Z-stream of the running {running} "
            f"(needs {running.major}.{running.minor}.x)",
        )
    elif version < running:
        yield "older-than-running", f"{version} is older than the running {running} (no downgrades)"
    elif version == running:
        yield "same-as-running", f"{version} is the running version"


def _release_problems(version: Version, release: Release | None, host: HostView) -> _Problems:
    """The mapping entry's requirements on the running module and P-SEAMLDR."""
    if release is None:
        return
    running = host.module_version
    if running < release.min_td_preserving:
        yield (
            "below-min-td-preserving",
            f"{version} can only be installed while TDs run from "
            f"{release.min_td_preserving} or newer; this host runs {running}",
        )
    if not seamldr_compatible(release.min_seamldr_versions, host.seamldr_version):
        wanted = ", ".join(f"{v.major}.{v.minor}.x ≥ {v}" for v in release.min_seamldr_versions)
        yield (
            "seamldr-incompatible",
            f"{version} needs P-SEAMLDR {wanted}; this host runs {host.seamldr_version}",
        )


def _image_problems(
    version: Version, image: ImageFacts | None, host: HostView, options: Options
) -> _Problems:
    """What a parsed image's header and sigstruct say: CPUs, binding, debug bit, allowlist."""
    if image is None or not image.parsed:
        return
    assert image.cpuid_table is not None
    if host.cpu_signature is not None and _masked(host.cpu_signature) not in {
        _masked(c) for c in image.cpuid_table
    }:
        table = ", ".join(f"{c:#x}" for c in image.cpuid_table) or "none"
        yield (
            "cpu-unsupported",
            f"{version} supports CPUs {table}; this CPU is {host.cpu_signature:#x}",
        )
    yield from binding_problems(version, image, host, options.releases)
    if image.is_debug and not options.allow_debug:
        yield "debug-module", f"{version} is debug-signed (allow with --allow-debug)"
    yield from allowlist_problems(version, image.seamsvn, image.mrseam, options.allowlist)


def _strict_problems(
    version: Version, release: Release | None, running: Version, options: Options
) -> _Problems:
    """``--strict-compat``: the running version must be listed as strictly compatible."""
    if not options.strict_compat or release is None:
        return
    listed = release.strict_compat_versions or ()
    if running not in listed:
        shown = ", ".join(str(v) for v in listed) or "none"
        yield (
            "not-strict-compatible",
            f"{version} is strictly compatible only from {shown}; this host runs {running}",
        )


def pinned(version: Version, image: ImageFacts, table: ReleaseTable | None) -> bool:
    """The image is bound to ``version`` by the published release table (signer and entry)."""
    return (
        table is not None
        and image.signer is not None
        and image.signer == table.signer
        and table.get(version) is not None
    )


def binding_problems(
    version: Version, image: ImageFacts, host: HostView, table: ReleaseTable | None
) -> list[tuple[str, str]]:
    """Evidence that an image is the version it is offered as (mainline-and-attestation.md §3).

    An image signed by the table's key and offered as a published version must carry that
    release's SEAMSVN and MRSEAM (``release-mismatch``). Any other image is unpinned: its
    SEAMSVN must be at least the running module's (``seamsvn-below-running``), which stops an
    older module renamed as a newer one from being installed as an upgrade.
    """
    if table is None or image.seamsvn is None:
        return []
    if pinned(version, image, table):
        published = table.get(version)
        assert published is not None
        wrong = []
        if image.seamsvn != published.seamsvn:
            wrong.append(f"SEAMSVN {image.seamsvn:#06x}, published {published.seamsvn:#06x}")
        if image.mrseam is not None and not published.mrseam_matches(image.mrseam):
            wrong.append(f"MRSEAM {image.mrseam[:16]}…, published {published.mrseam[:16]}…")
        if wrong:
            return [
                (
                    "release-mismatch",
                    f"{version}: the image is not Intel's published {version} ("
                    + "; ".join(wrong)
                    + ")",
                )
            ]
        return []
    if version <= host.module_version:
        return []  # already refused as older or the same; the SVN adds nothing
    floor = table.seamsvn_floor(host.module_version)
    if floor is not None and image.seamsvn < floor:
        return [
            (
                "seamsvn-below-running",
                f"{version}: unpinned image with SEAMSVN {image.seamsvn:#06x}, below the running "
                f"{host.module_version}'s {floor:#06x} (an older module under a newer name)",
            )
        ]
    return []


def seamldr_compatible(minimums: Iterable[Version], running: Version) -> bool:
    """Some entry has the running P-SEAMLDR's major.minor and an update ≤ the running one."""
    return any(m.stream == running.stream and m.update <= running.update for m in minimums)


def evaluate(
    releases: Iterable[Release],
    images: Mapping[Version, ImageFacts],
    host: HostView,
    options: Options,
) -> list[Candidate]:
    """Candidates for every version in the mapping or the repository, newest first."""
    by_version = {r.version: r for r in releases}
    versions = sorted(set(by_version) | set(images), reverse=True)
    return [evaluate_one(v, by_version.get(v), images.get(v), host, options) for v in versions]


@dataclass(frozen=True)
class Decision:
    """What ``--update [VERSION]`` will do.

    ``action`` is ``install`` (``selected`` is the module to install), ``nothing-to-do``
    (exit 0, ``changed: false``; ``selected`` is the explicit VERSION when it is the running one)
    or ``refuse`` (exit 65 with ``error_code`` ``version-unknown`` or ``not-eligible``;
    ``selected`` is the refused explicit candidate, when it exists).
    """

    action: str
    selected: Candidate | None
    message: str
    reinstall: bool = False
    error_code: str | None = None

    def raise_if_refused(self) -> None:
        if self.action == "refuse":
            raise DataError(self.message, code=self.error_code or "not-eligible")


def choose(
    candidates: list[Candidate],
    running: Version,
    requested: Version | None = None,
    *,
    allow_reinstall: bool = False,
) -> Decision:
    """Pick the module to install (cli-contract.md §3, §4 step 3)."""
    if requested is None:
        eligible = [c for c in candidates if c.eligible]
        if eligible:
            best = max(eligible, key=lambda c: c.version)
            return Decision("install", best, "the newest eligible module")
        newer = [
            c for c in candidates if c.version.stream == running.stream and c.version > running
        ]
        if not newer:
            msg = f"nothing to do: no module newer than the running {running} in its Z-stream"
        else:
            why = "; ".join(
                f"{c.version}: {', '.join(c.reasons)}"
                for c in sorted(newer, reverse=True, key=lambda c: c.version)
            )
            msg = f"nothing to do: no newer module is eligible for this host ({why})"
        return Decision("nothing-to-do", None, msg)

    match = next((c for c in candidates if c.version == requested), None)
    if match is None:
        known = ", ".join(str(c.version) for c in candidates) or "none"
        return Decision(
            "refuse",
            None,
            f"{requested} is neither in the mapping file nor in the repository (known: {known})",
            error_code="version-unknown",
        )
    if requested == running:
        if not allow_reinstall:
            return Decision(
                "nothing-to-do",
                match,
                f"nothing to do: {requested} is already running "
                "(use --allow-reinstall to install it again; it spends one update)",
            )
        blocking = match.without("same-as-running")
        if blocking:
            return Decision("refuse", match, _refusal(match, blocking), error_code="not-eligible")
        return Decision(
            "install", match, "the running version, reinstalled as asked", reinstall=True
        )
    if match.reasons:
        return Decision("refuse", match, _refusal(match, match.reasons), error_code="not-eligible")
    return Decision("install", match, "eligible, as requested")


def _refusal(candidate: Candidate, reasons: tuple[str, ...]) -> str:
    words = "; ".join(f"{r}: {candidate.details.get(r, r)}" for r in reasons)
    return f"{candidate.version} is not eligible: {words}"
