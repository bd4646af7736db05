"""The read-only actions (``--status``, ``--list``, ``--verify``, ``--history``) and the pieces
``--update`` shares with them: host facts, candidates, the JSON document of cli-contract.md §3.

Every action fills a :class:`Report` and raises :class:`TdxError` on failure; the report keeps
what was learnt before the failure so ``--json`` can still show it.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tdxupdate import __version__, attestation, keyring, policy, releases, sources
from tdxupdate import host as _host
from tdxupdate import image as _image
from tdxupdate.catalog import Catalog
from tdxupdate.errors import InvalidImage, KernelFailure, TdxError
from tdxupdate.settings import Settings
from tdxupdate.versions import Version

if TYPE_CHECKING:  # pragma: no cover
    from tdxupdate.sources.mirror import MirrorOptions

_LOG = logging.getLogger(__name__)

SCHEMA_VERSION = 1


@dataclass
class Report:
    """The JSON document being built, plus what text rendering needs."""

    action: str
    doc: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    #: warning token -> sentence for people
    warning_text: dict[str, str] = field(default_factory=dict)
    #: informational lines for people (the plan, the outcome)
    notes: list[str] = field(default_factory=list)
    error: TdxError | None = None
    exit_code: int = 0
    #: prints a note as soon as it is known (text mode on a terminal or pipe); None: collect only
    live: Callable[[str], None] | None = None
    #: shows a warning as soon as it is known, before any decision to write (text mode); the
    #: tokens shown are in :attr:`shown` and are not repeated at the end
    live_warn: Callable[[str], None] | None = None
    shown: set[str] = field(default_factory=set)

    def note(self, line: str) -> None:
        """A step of the story told to people (``--update``: selected, verified, streamed…)."""
        self.notes.append(line)
        if self.live is not None:
            self.live(line)

    def warn(self, token: str, sentence: str) -> None:
        if token not in self.warnings:
            self.warnings.append(token)
            self.warning_text[token] = sentence
            if self.live_warn is not None:
                self.live_warn(sentence)
                self.shown.add(token)

    def document(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "schema_version": SCHEMA_VERSION,
            "action": self.action,
            "ok": self.error is None,
            "error": self.error.to_json() if self.error is not None else None,
            "warnings": list(self.warnings),
            "tool_version": __version__,
        }
        doc.update(self.doc)
        return doc


def fmt_hex(value: int | None) -> str | None:
    return None if value is None else f"{value:#x}"


def host_json(facts: _host.HostFacts) -> dict[str, Any]:
    return {
        "module_version": _str(facts.module_version),
        "seamldr_version": _str(facts.seamldr_version),
        "num_remaining_updates": facts.num_remaining_updates,
        "cpu_signature": fmt_hex(facts.cpu_signature),
        "sysfs_layout": facts.sysfs_layout,
        "upload_dir": str(facts.upload_dir) if facts.upload_dir is not None else None,
        "image_format": fmt_hex(facts.image_format),
        "image_format_fallback": fmt_hex(facts.image_format_fallback),
        "generation": facts.generation,
        "kernel_release": facts.kernel_release,
        "checks": [{"name": c.name, "ok": c.ok, "detail": c.detail} for c in facts.checks],
        "module_lost": _host.module_lost(facts),
        **published_identity(facts.module_version),
    }


def published_identity(version: Version | None) -> dict[str, Any]:
    """The running module's SEAMSVN and MRSEAM as Intel published them for its version (sysfs
    exposes neither): what TDs attest now, for verifiers; None for versions not in the table."""
    values = attestation.running_values({"host": {"module_version": _str(version)}})
    return identity_json(values)


def identity_json(values: attestation.ModuleValues) -> dict[str, Any]:
    """The host JSON keys that say what the running module attests as."""
    as_json = values.to_json()
    return {
        "module_identity": as_json["module_identity"],
        "seamsvn": as_json["seamsvn"],
        "seamsvn_major": as_json["seamsvn_major"],
        "seamsvn_minor": as_json["seamsvn_minor"],
        "mrseam": as_json["mrseam"],
        "mrseam_prefix": as_json["mrseam_prefix"],
        "identity_source": as_json["source"],
    }


def set_running_identity(report: Report, images: list[dict[str, Any]] | None = None) -> None:
    """Fill the host JSON's identity keys: Intel's published release, or the repository's image
    of the running version (from the candidates, or ``images`` when there are none)."""
    host = report.doc.get("host")
    if not isinstance(host, dict):
        return
    candidates = [*(report.doc.get("candidates") or ()), *(images or ())]
    host.update(identity_json(attestation.running_values({"host": host, "candidates": candidates})))


def _str(value: object | None) -> str | None:
    return None if value is None else str(value)


def discover_host(settings: Settings) -> _host.HostFacts:
    facts = _host.discover(
        _host.Sysroot(settings.sysroot),
        cpu_signature=settings.cpu_signature,
        image_format=settings.image_format,
    )
    _log_host(facts)
    return facts


def _log_host(facts: _host.HostFacts) -> None:
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


def require_policy_facts(facts: _host.HostFacts) -> policy.HostView:
    """The facts ``--list`` and ``--update`` cannot do without (exit 69/77 otherwise)."""
    if not facts.tdx_host:
        raise _check_error(facts, "tdx-host")
    if facts.erratum_seamret_invd_vmcs:
        # The kernel hides the P-SEAMLDR attributes and the upload device on such CPUs; the
        # erratum is the cause worth naming, not the unreadable version it leads to.
        raise _check_error(facts, "erratum-seamret-invd-vmcs")
    for name in ("module_version", "seamldr_version", "cpu_signature"):
        problem = facts.problems.get(name)
        if problem is not None:
            raise problem
    for check in ("module-version", "seamldr-version", "cpu-signature"):
        if not facts.check(check).ok:
            raise _check_error(facts, check)
    assert facts.module_version is not None and facts.seamldr_version is not None
    return policy.HostView(facts.module_version, facts.seamldr_version, facts.cpu_signature)


def _check_error(facts: _host.HostFacts, name: str) -> TdxError:
    check = facts.check(name)
    return TdxError(check.detail, code=check.code or "no-tdx-host")


def host_warnings(report: Report, facts: _host.HostFacts, catalog: Catalog | None) -> None:
    """``running-module-lacks-update-compat`` (reference-tool.md, tdx_feature0 bit 47).

    The v3 kernel series says so itself (``compat_capable`` 0); otherwise the running
    version's ``tdx_feature0`` in the mapping file tells.
    """
    lacks = facts.compat_capable is False
    host = report.doc.get("host")
    if facts.module_version is not None and catalog is not None:
        release = catalog.get(facts.module_version)
        lacks = lacks or (release is not None and release.update_compat is False)
        if isinstance(host, dict):
            host["in_mapping"] = release is not None
        if release is None:
            # A BIOS can ship a module before Intel's repository lists it (mainline-and-
            # attestation.md §2): say so, never just "no update".
            report.warn(
                "running-not-in-mapping",
                f"running module {facts.module_version} is not in the mapping file: the "
                "repository does not list it yet (a BIOS can ship a module before Intel's "
                "repository does), so no update can be judged compatible with it",
            )
    elif isinstance(host, dict):
        host["in_mapping"] = None
    if lacks:
        report.warn(
            "running-module-lacks-update-compat",
            f"the running module {facts.module_version} lacks update compatibility "
            "(TDX_FEATURES0 bit 47): an update while a TD is being built can break that TD and "
            "corrupts its attestation hash; --update waits for TD builds registered in its fence "
            "(the libvirt hook, pre_update) and keeps new ones out until it is confirmed, but "
            "builds started any other way are not seen: update at boot or when none runs",
        )


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


def open_repo(settings: Settings) -> sources.Repository:
    options = None
    if sources.local_path(settings.repo) is None or (
        settings.mapping is not None and sources.local_path(settings.mapping) is None
    ):
        options = mirror_options(settings)
    return sources.open_repository(settings.repo, settings.mapping, options)


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
    checks = _image.header_checks(
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


def image_facts_from_verified(verified: _image.VerifiedImage) -> policy.ImageFacts:
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


def candidate_json(c: policy.Candidate) -> dict[str, Any]:
    img = c.image
    parsed = img is not None and img.parsed
    return {
        "version": str(c.version),
        "eligible": c.eligible,
        "reasons": list(c.reasons),
        "details": [c.details[r] for r in c.reasons],
        "debug": img.is_debug if parsed and img is not None else None,
        "path": img.path if img is not None else None,
        "image_format": fmt_hex(img.image_format) if img is not None else None,
        # four digits, as Intel's release notes, the host and the history write it
        "seamsvn": attestation.fmt_svn(img.seamsvn) if img is not None else None,
        "mrseam": img.mrseam if img is not None else None,
        "pinned": (
            policy.pinned(c.version, img, releases.intel_releases()) if img is not None else None
        ),
    }


def policy_options(settings: Settings) -> policy.Options:
    return policy.Options(
        allow_debug=settings.allow_debug,
        strict_compat=settings.strict_compat,
        releases=releases.intel_releases(),
        allowlist=settings.allowlist_rules,
    )


# --- --status -----------------------------------------------------------------------------


def run_status(settings: Settings, report: Report) -> None:
    facts = discover_host(settings)
    report.doc["host"] = host_json(facts)
    catalog = _try_catalog(settings)
    host_warnings(report, facts, catalog)
    if facts.module_version is not None:
        set_running_identity(report, _running_image(settings, facts.module_version))
    if not facts.tdx_host:
        raise _check_error(facts, "tdx-host")
    if _host.module_lost(facts):
        # Until a reboot, whatever the last update said (and whichever tool lost it).
        raise KernelFailure(
            "the TDX module is lost (its version reads ENXIO): every TD on this host was "
            "killed and TDX is unusable until the host reboots",
            code="module-lost",
        )


def _running_image(settings: Settings, version: Version) -> list[dict[str, Any]]:
    """``--status``: the local repository's image of the running version, as a candidate JSON
    object, when Intel's published table lacks that version (its SEAMSVN and MRSEAM are then
    the best evidence of what TDs attest). Nothing from remote repositories: ``--status``
    does not touch the network."""
    if releases.intel_releases().get(version) is not None:
        return []
    if sources.local_path(settings.repo) is None or (
        settings.mapping is not None and sources.local_path(settings.mapping) is None
    ):
        return []
    try:
        repo = open_repo(settings)
        ref = repo.images(repo.catalog()).get(version)
        if ref is None:
            return []
        head, size = repo.head(ref)
        img = image_facts_from_head(ref, head, size, trusted_signers(settings))
    except TdxError:
        return []
    return [
        {
            "version": str(version),
            "seamsvn": attestation.fmt_svn(img.seamsvn),
            "mrseam": img.mrseam,
            "pinned": policy.pinned(version, img, releases.intel_releases()),
            "reasons": ["image-invalid"] if img.failures else [],
        }
    ]


def _try_catalog(settings: Settings) -> Catalog | None:
    """The mapping file for warnings in ``--status``, when a local one is at hand."""
    try:
        path = sources.local_path(settings.mapping or settings.repo)
        if path is None:
            return None
        if settings.mapping is None:
            path = path / "mapping_file.json"
        from tdxupdate.sources.local import load_catalog

        return load_catalog(path)
    except TdxError:
        return None


# --- --list -------------------------------------------------------------------------------


def build_candidates(
    settings: Settings, report: Report
) -> tuple[_host.HostFacts, policy.HostView, Inventory, list[policy.Candidate]]:
    facts = discover_host(settings)
    report.doc["host"] = host_json(facts)
    view = require_policy_facts(facts)
    inventory = load_inventory(settings)
    repository_warnings(report, inventory.repo)
    host_warnings(report, facts, inventory.catalog)
    candidates = policy.evaluate(
        inventory.catalog.releases, inventory.images, view, policy_options(settings)
    )
    report.doc["candidates"] = [candidate_json(c) for c in candidates]
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


def run_list(settings: Settings, report: Report) -> None:
    build_candidates(settings, report)


# --- --reference-values -------------------------------------------------------------------


def run_reference_values(settings: Settings, report: Report) -> None:
    """What a verifier's allowlist needs, for the running module and for the module
    ``--update`` would install (the same choice, without a lock or a write)."""
    _facts, view, _inventory, candidates = build_candidates(settings, report)
    host = report.doc["host"]
    running = attestation.running_values({"host": host, "candidates": report.doc["candidates"]})
    decision = policy.choose(candidates, view.module_version, None)
    target: dict[str, Any] | None = None
    if decision.action == "install" and decision.selected is not None:
        chosen = next(
            c for c in report.doc["candidates"] if c["version"] == str(decision.selected.version)
        )
        target = attestation.candidate_values(chosen).to_json()
    report.doc["reference_values"] = {
        "running": running.to_json() | {"in_mapping": host.get("in_mapping")},
        "target": target,
        "target_reason": decision.message,
    }


# --- --verify -----------------------------------------------------------------------------


def verification_json(
    location: str, version: Version | None, v: _image.Verification
) -> dict[str, Any]:
    info = v.info
    shown_version = version
    if shown_version is None and info is not None:
        shown_version = info.sigstruct.version
    return {
        "path": location,
        "ok": v.ok,
        "version": _str(shown_version),
        "image_format": fmt_hex(info.format) if info is not None else None,
        "checks": [{"name": c.name, "ok": c.ok, "detail": c.detail} for c in v.checks],
    }


def version_from_filename(path: Path) -> Version | None:
    m = sources._BLOB_RE.match(path.name)
    return Version.parse(m.group(1)) if m else None


#: What a failed ``--verify`` of a repository exits with, the first that applies: an image
#: that was read and failed a check (65, the bytes are bad: never hidden behind another
#: failure), an image that could not be fetched (74: the verdict is incomplete, run again), an
#: image the repository lacks (66).
_VERIFY_PRECEDENCE = ("image-invalid", "network-error", "image-not-found")
#: Failures to read one image that do not stop the others from being verified.
_UNREADABLE = frozenset({"image-not-found", "network-error", "io-error"})


def _unread(reason: str) -> _image.Verification:
    skipped = tuple(
        _image.Check(name, False, "not checked: the image could not be read")
        for name in _image.CHECK_NAMES[1:]
    )
    return _image.Verification(None, (_image.Check("container", False, reason), *skipped))


def run_verify(settings: Settings, report: Report) -> None:
    trusted = trusted_signers(settings)
    results: list[dict[str, Any]] = []
    #: the token each failed entry of ``results`` stands for (by its index)
    failed: dict[int, str] = {}
    report.doc["images"] = results

    def check(
        location: str,
        version: Version | None,
        read: Callable[[], bytes],
        *,
        keep_going: bool = False,
        admit: Callable[[_image.VerifiedImage], object] | None = None,
    ) -> None:
        code = "image-invalid"
        try:
            data = read()
        except InvalidImage as exc:
            v = _unread(str(exc))
        except TdxError as exc:
            # A repository's image that is missing (a 404) or could not be fetched is one
            # failed entry; the other images are still verified and reported.
            if not keep_going or exc.code not in _UNREADABLE:
                raise
            code = exc.code
            v = _unread(exc.message)
        else:
            verified = _image.verify_image(
                data,
                location=location,
                trusted_signers=trusted,
                allow_debug=settings.allow_debug,
                expected_version=version,
            )
            v = verified.verification
            if admit is not None:
                admit(verified)  # a mirror caches what passed (tdxupdate.sources.mirror)
        if not v.ok:
            failed[len(results)] = code
        results.append(verification_json(location, version, v))

    if settings.verify_path is not None:
        path = settings.verify_path
        if not path.exists():
            raise TdxError(f"{path}: image does not exist", code="image-not-found")
        check(
            str(path), version_from_filename(path), lambda: sources.LocalRepository.read_path(path)
        )
    else:
        repo = open_repo(settings)
        catalog = repo.catalog()
        repository_warnings(report, repo)
        refs = repo.images(catalog)
        if not refs:
            raise TdxError(
                f"{repo.location}: the repository holds no images", code="image-not-found"
            )
        for version in sorted(refs, reverse=True):
            ref = refs[version]
            check(
                ref.location,
                version,
                functools.partial(repo.read, ref),
                keep_going=True,
                admit=functools.partial(repo.admit, ref),
            )
    if failed:
        tags = {
            "image-invalid": "",
            "network-error": " (not fetched)",
            "image-not-found": " (not found)",
        }
        names = ", ".join(results[i]["path"] + tags[code] for i, code in failed.items())
        code = next(c for c in _VERIFY_PRECEDENCE if c in failed.values())
        raise TdxError(
            f"{len(failed)} of {len(results)} image(s) failed verification: {names}", code=code
        )


# --- --history ----------------------------------------------------------------------------


def run_history(settings: Settings, report: Report) -> None:
    from tdxupdate import history

    loaded = history.load(settings.state_dir)
    report.doc["history"] = [r.to_json() for r in loaded.records]
    if loaded.skipped:
        report.warn(
            "history-lines-skipped",
            f"{len(loaded.skipped)} unreadable line(s) in "
            f"{history.history_path(settings.state_dir)}: {loaded.skipped[0]}",
        )
