"""What the host and the repository offer: host facts, the repository's inventory (its mapping
file and the facts of each image's head) and the candidates the policy judges from them.

The read-only actions (:mod:`tdxupdate.readonly`) and ``--update`` share these. The calls into
host discovery and into the repository are each in one function here (:func:`discover`,
:func:`open_repo`, :func:`read_image_file`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from tdxupdate import attestation, imagecheck, keyring, policy, releases, sources
from tdxupdate import host as _host
from tdxupdate import image as _image
from tdxupdate.catalog import Catalog
from tdxupdate.errors import InvalidImage, TdxError
from tdxupdate.report import CandidateDoc, HostDoc, Report, fmt_hex
from tdxupdate.settings import Settings
from tdxupdate.sysroot import Sysroot
from tdxupdate.versions import Version

if TYPE_CHECKING:  # pragma: no cover
    from tdxupdate.sources.mirror import MirrorOptions

_LOG = logging.getLogger(__name__)


def _str(value: object | None) -> str | None:
    return None if value is None else str(value)


# --- the host -----------------------------------------------------------------------------


def discover(
    sysroot: Path, *, cpu_signature: int | None, image_format: str = "auto"
) -> _host.HostFacts:
    """The one call into host discovery."""
    return _host.discover(Sysroot(sysroot), cpu_signature=cpu_signature, image_format=image_format)


def discover_host(settings: Settings) -> _host.HostFacts:
    facts = discover(
        settings.sysroot,
        cpu_signature=settings.cpu_signature,
        image_format=settings.image_format,
    )
    log_host(facts)
    return facts


def log_host(facts: _host.HostFacts) -> None:
    """``-v``: what was read from the host; ``-vv``: every preflight check."""
    if not _LOG.isEnabledFor(logging.INFO):
        return
    cpus = facts.cpus_online
    _LOG.info(
        "host %s: kernel %s, interface %s (%s), TDX module %s, P-SEAMLDR %s, CPU signature %s, "
        "%s CPUs online, %s updates left, upload %s",
        facts.sysroot,
        facts.kernel_release or "unknown",
        facts.generation or "none",
        facts.upload_dir or "no upload directory",
        facts.module_version or "unknown",
        facts.seamldr_version or "unknown",
        fmt_hex(facts.cpu_signature) or "unknown",
        len(cpus) if cpus is not None else "unknown",
        facts.num_remaining_updates if facts.num_remaining_updates is not None else "unknown",
        facts.upload_status or "unknown",
    )
    for name, problem in facts.problems.items():
        _LOG.info("host %s: %s unreadable: %s", facts.sysroot, name, problem.message)
    for check in facts.checks:
        _LOG.debug("check %s: %s: %s", check.name, "ok" if check.ok else "FAILED", check.detail)


def host_doc(facts: _host.HostFacts) -> HostDoc:
    doc = HostDoc(
        module_version=_str(facts.module_version),
        seamldr_version=_str(facts.seamldr_version),
        num_remaining_updates=facts.num_remaining_updates,
        cpu_signature=fmt_hex(facts.cpu_signature),
        sysfs_layout=facts.sysfs_layout,
        upload_dir=str(facts.upload_dir) if facts.upload_dir is not None else None,
        image_format=fmt_hex(facts.image_format),
        image_format_fallback=fmt_hex(facts.image_format_fallback),
        generation=facts.generation,
        kernel_release=facts.kernel_release,
        checks=[{"name": c.name, "ok": c.ok, "detail": c.detail} for c in facts.checks],
        module_lost=_host.module_lost(facts),
    )
    # The running module's SEAMSVN and MRSEAM as Intel published them for its version (sysfs
    # exposes neither): what TDs attest now, for verifiers; None for versions not in the table.
    published = attestation.running_values({"host": {"module_version": doc.module_version}})
    doc.set_identity(published.to_json())
    return doc


def set_running_identity(report: Report, images: list[dict[str, object]] | None = None) -> None:
    """Fill the host's identity keys: Intel's published release, or the repository's image
    of the running version (from the candidates, or ``images`` when there are none)."""
    if report.host is None:
        return
    doc = report.attestation_input()
    doc["candidates"] = [*doc["candidates"], *(images or ())]
    report.host.set_identity(attestation.running_values(doc).to_json())


def require_policy_facts(facts: _host.HostFacts) -> policy.HostView:
    """The facts ``--list`` and ``--update`` cannot do without (exit 69/77 otherwise)."""
    if not facts.tdx_host:
        raise check_error(facts, "tdx-host")
    if facts.erratum_seamret_invd_vmcs:
        # The kernel hides the P-SEAMLDR attributes and the upload device on such CPUs; the
        # erratum is the cause worth naming, not the unreadable version it leads to.
        raise check_error(facts, "erratum-seamret-invd-vmcs")
    for name in ("module_version", "seamldr_version", "cpu_signature"):
        problem = facts.problems.get(name)
        if problem is not None:
            raise problem
    for check in ("module-version", "seamldr-version", "cpu-signature"):
        if not facts.check(check).ok:
            raise check_error(facts, check)
    assert facts.module_version is not None
    assert facts.seamldr_version is not None
    return policy.HostView(facts.module_version, facts.seamldr_version, facts.cpu_signature)


def check_error(facts: _host.HostFacts, name: str) -> TdxError:
    check = facts.check(name)
    return TdxError(check.detail, code=check.code or "no-tdx-host")


def host_warnings(report: Report, facts: _host.HostFacts, catalog: Catalog | None) -> None:
    """``running-module-lacks-update-compat`` (reference-tool.md, tdx_feature0 bit 47).

    The v3 kernel series says so itself (``compat_capable`` 0); otherwise the running
    version's ``tdx_feature0`` in the mapping file tells.
    """
    lacks = facts.compat_capable is False
    host = report.host
    if facts.module_version is not None and catalog is not None:
        release = catalog.get(facts.module_version)
        lacks = lacks or (release is not None and release.update_compat is False)
        if host is not None:
            host.in_mapping = release is not None
        if release is None:
            # A BIOS can ship a module before Intel's repository lists it (mainline-and-
            # attestation.md §2): say so, never just "no update".
            report.warn(
                "running-not-in-mapping",
                f"running module {facts.module_version} is not in the mapping file: the "
                "repository does not list it yet (a BIOS can ship a module before Intel's "
                "repository does), so no update can be judged compatible with it",
            )
    elif host is not None:
        host.in_mapping = None
    if lacks:
        report.warn(
            "running-module-lacks-update-compat",
            f"the running module {facts.module_version} lacks update compatibility "
            "(TDX_FEATURES0 bit 47): an update while a TD is being built can break that TD and "
            "corrupts its attestation hash; --update waits for TD builds registered in its fence "
            "(the libvirt hook, pre_update) and keeps new ones out until it is confirmed, but "
            "builds started any other way are not seen: update at boot or when none runs",
        )


# --- the repository -----------------------------------------------------------------------


@dataclass
class Inventory:
    """The repository as the policy sees it."""

    repo: sources.Repository
    catalog: Catalog
    refs: dict[Version, sources.ImageRef]
    images: dict[Version, policy.ImageFacts]
    trusted: frozenset[str]


def trusted_signers(settings: Settings) -> frozenset[str]:
    return keyring.trusted_signers(settings.trusted_keys, settings.extra_signers)


def is_local(settings: Settings) -> bool:
    """Whether the repository (and the mapping file, when given apart) are local paths."""
    return sources.local_path(settings.repo) is not None and (
        settings.mapping is None or sources.local_path(settings.mapping) is not None
    )


def open_repo(settings: Settings) -> sources.Repository:
    """The one call that opens the repository."""
    return sources.open_repository(
        settings.repo, settings.mapping, None if is_local(settings) else mirror_options(settings)
    )


def mirror_options(settings: Settings) -> MirrorOptions:
    """How a mirror is reached, from the settings (only when ``--repo``/``--mapping`` is a URL:
    it imports the mirror's modules)."""
    from tdxupdate.sources.mirror import MirrorOptions

    return MirrorOptions(
        cache_dir=settings.cache_dir,
        offline=settings.offline,
        ca_bundle=settings.ca_bundle,
        allow_insecure_http=settings.allow_insecure_http,
        progress=settings.download_progress,
    )


def read_image_file(path: Path) -> bytes:
    """An image named on the command line (``--verify FILE``), read as the repository reads."""
    return sources.LocalRepository.read_path(path)


def repository_warnings(report: Report, repo: sources.Repository) -> None:
    """Warnings a remote repository collected (``insecure-http``, ``offline-cache``)."""
    for token, sentence in getattr(repo, "warnings", ()):
        report.warn(token, sentence)


def image_facts_from_head(
    ref: sources.ImageRef, head: bytes, size: int, trusted: frozenset[str]
) -> policy.ImageFacts:
    try:
        info = _image.inspect(head, size)
    except InvalidImage as exc:
        return policy.ImageFacts(ref.location, failures=((exc.check, f"{ref.version}: {exc}"),))
    checks = imagecheck.header_checks(
        info, trusted_signers=trusted, allow_debug=True, expected_version=ref.version
    )
    failures = tuple(
        (c.name, f"{ref.version}: {c.detail}") for c in checks if not c.ok and c.name != "debug"
    )
    return policy.ImageFacts(
        ref.location,
        image_format=info.format,
        is_debug=info.sigstruct.is_debug,
        cpuid_table=info.sigstruct.cpuid_table,
        failures=failures,
        seamsvn=info.sigstruct.seamsvn,
        mrseam=info.sigstruct.seamhash.hex(),
        signer=info.sigstruct.signer,
    )


def image_facts_from_verified(verified: imagecheck.VerifiedImage) -> policy.ImageFacts:
    """The policy's facts about an image, all taken from the one buffer that was verified
    (and that is the one streamed)."""
    v = verified.verification
    failures = tuple((c.name, c.detail) for c in v.failed if c.name != "debug")
    if v.info is None:
        return policy.ImageFacts(verified.location, failures=failures)
    sig = v.info.sigstruct
    return policy.ImageFacts(
        verified.location,
        image_format=v.info.format,
        is_debug=sig.is_debug,
        cpuid_table=sig.cpuid_table,
        failures=failures,
        seamsvn=sig.seamsvn,
        mrseam=verified.mrseam,
        signer=sig.signer,
    )


def load_inventory(settings: Settings, repo: sources.Repository | None = None) -> Inventory:
    trusted = trusted_signers(settings)
    repo = repo if repo is not None else open_repo(settings)
    catalog = repo.catalog()
    refs = repo.images(catalog)
    images: dict[Version, policy.ImageFacts] = {}
    for version, ref in refs.items():
        try:
            head, size = repo.head(ref)
        except TdxError as exc:
            if exc.code == "network-error":
                raise
            if exc.code == "image-not-found":
                # A mapping entry whose image the repository lacks (a 404 on a mirror, which
                # has no directory listing): the policy reports it as image-missing.
                continue
            images[version] = policy.ImageFacts(
                ref.location, failures=(("container", f"{version}: {exc.message}"),)
            )
            continue
        images[version] = image_facts_from_head(ref, head, size, trusted)
    _log_inventory(repo, catalog, refs, images, trusted)
    return Inventory(repo, catalog, refs, images, trusted)


def _log_inventory(
    repo: sources.Repository,
    catalog: Catalog,
    refs: dict[Version, sources.ImageRef],
    images: dict[Version, policy.ImageFacts],
    trusted: frozenset[str],
) -> None:
    if not _LOG.isEnabledFor(logging.INFO):
        return
    _LOG.info(
        "repository %s: %d release(s) in the mapping, %d image(s) found, %d trusted signer(s)",
        repo.location,
        len(catalog.releases),
        len(images),
        len(trusted),
    )
    for version in sorted(refs, reverse=True):
        img = images.get(version)
        if img is None:
            _LOG.debug("image %s: %s: not in the repository", version, refs[version].location)
            continue
        _LOG.debug(
            "image %s: %s: format %s, SEAMSVN %s, signer %s, debug %s%s",
            version,
            img.path,
            fmt_hex(img.image_format) or "unknown",
            fmt_hex(img.seamsvn) or "unknown",
            img.signer or "unknown",
            "yes" if img.is_debug else "no",
            "".join(f"; {name} failed: {detail}" for name, detail in img.failures),
        )


# --- candidates ---------------------------------------------------------------------------


def candidate_doc(c: policy.Candidate) -> CandidateDoc:
    img = c.image
    parsed = img is not None and img.parsed
    return CandidateDoc(
        version=str(c.version),
        eligible=c.eligible,
        reasons=list(c.reasons),
        details=[c.details[r] for r in c.reasons],
        debug=img.is_debug if parsed and img is not None else None,
        path=img.path if img is not None else None,
        image_format=fmt_hex(img.image_format) if img is not None else None,
        # four digits, as Intel's release notes, the host and the history write it
        seamsvn=attestation.fmt_svn(img.seamsvn) if img is not None else None,
        mrseam=img.mrseam if img is not None else None,
        pinned=(
            policy.pinned(c.version, img, releases.intel_releases()) if img is not None else None
        ),
    )


def policy_options(settings: Settings) -> policy.Options:
    return policy.Options(
        allow_debug=settings.allow_debug,
        strict_compat=settings.strict_compat,
        releases=releases.intel_releases(),
        allowlist=settings.allowlist_rules,
    )


def build_candidates(
    settings: Settings, report: Report
) -> tuple[_host.HostFacts, policy.HostView, Inventory, list[policy.Candidate]]:
    facts = discover_host(settings)
    report.host = host_doc(facts)
    view = require_policy_facts(facts)
    inventory = load_inventory(settings)
    repository_warnings(report, inventory.repo)
    host_warnings(report, facts, inventory.catalog)
    candidates = policy.evaluate(
        inventory.catalog.releases, inventory.images, view, policy_options(settings)
    )
    report.candidates = [candidate_doc(c) for c in candidates]
    set_running_identity(report)
    for c in candidates:
        if c.eligible:
            _LOG.info("candidate %s: eligible", c.version)
        else:
            _LOG.info(
                "candidate %s: not eligible: %s",
                c.version,
                "; ".join(f"{r} ({c.details[r]})" if r in c.details else r for r in c.reasons),
            )
    return facts, view, inventory, candidates
