"""The read-only actions: ``--status``, ``--list``, ``--reference-values``, ``--verify`` and
``--history``. Each fills a :class:`~tdxupdate.report.Report` and raises :class:`TdxError` on
failure."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tdxupdate import attestation, imagecheck, policy, releases, sources
from tdxupdate import host as _host
from tdxupdate import inventory as _inv
from tdxupdate.catalog import Catalog
from tdxupdate.errors import InvalidImage, KernelFailure, TdxError
from tdxupdate.report import HistoryDoc, ReferenceValuesDoc, Report, VerifiedImageDoc, fmt_hex
from tdxupdate.settings import Settings
from tdxupdate.versions import Version

# --- --status -----------------------------------------------------------------------------


def run_status(settings: Settings, report: Report) -> None:
    facts = _inv.discover_host(settings)
    report.host = _inv.host_doc(facts)
    catalog = _try_catalog(settings)
    _inv.host_warnings(report, facts, catalog)
    if facts.module_version is not None:
        _inv.set_running_identity(report, _running_image(settings, facts.module_version))
    if not facts.tdx_host:
        raise _inv.check_error(facts, "tdx-host")
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
    if not _inv.is_local(settings):
        return []
    try:
        repo = _inv.open_repo(settings)
        ref = repo.images(repo.catalog()).get(version)
        if ref is None:
            return []
        head, size = repo.head(ref)
        img = _inv.image_facts_from_head(ref, head, size, _inv.trusted_signers(settings))
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


def run_list(settings: Settings, report: Report) -> None:
    _inv.build_candidates(settings, report)


# --- --reference-values -------------------------------------------------------------------


def run_reference_values(settings: Settings, report: Report) -> None:
    """What a verifier's allowlist needs, for the running module and for the module
    ``--update`` would install (the same choice, without a lock or a write)."""
    _facts, view, _inventory, candidates = _inv.build_candidates(settings, report)
    assert report.host is not None
    assert report.candidates is not None
    running = attestation.running_values(report.attestation_input())
    decision = policy.choose(candidates, view.module_version, None)
    target: dict[str, Any] | None = None
    if decision.action == "install" and decision.selected is not None:
        chosen = next(c for c in report.candidates if c.version == str(decision.selected.version))
        target = attestation.candidate_values(chosen.to_json()).to_json()
    in_mapping = report.host.in_mapping
    report.reference_values = ReferenceValuesDoc(
        running=running.to_json()
        | {"in_mapping": in_mapping if isinstance(in_mapping, bool) else None},
        target=target,
        target_reason=decision.message,
    )


# --- --verify -----------------------------------------------------------------------------


def verification_doc(
    location: str, version: Version | None, v: imagecheck.Verification
) -> VerifiedImageDoc:
    info = v.info
    shown_version = version
    if shown_version is None and info is not None:
        shown_version = info.sigstruct.version
    return VerifiedImageDoc(
        path=location,
        ok=v.ok,
        version=None if shown_version is None else str(shown_version),
        image_format=fmt_hex(info.format) if info is not None else None,
        checks=[{"name": c.name, "ok": c.ok, "detail": c.detail} for c in v.checks],
    )


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


def _unread(reason: str) -> imagecheck.Verification:
    skipped = tuple(
        imagecheck.Check(name, False, "not checked: the image could not be read")
        for name in imagecheck.CHECK_NAMES[1:]
    )
    return imagecheck.Verification(None, (imagecheck.Check("container", False, reason), *skipped))


def run_verify(settings: Settings, report: Report) -> None:
    trusted = _inv.trusted_signers(settings)
    results: list[VerifiedImageDoc] = []
    #: the token each failed entry of ``results`` stands for (by its index)
    failed: dict[int, str] = {}
    report.images = results

    def check(
        location: str,
        version: Version | None,
        read: Callable[[], bytes],
        *,
        keep_going: bool = False,
        admit: Callable[[imagecheck.VerifiedImage], object] | None = None,
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
            verified = imagecheck.verify_image(
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
        results.append(verification_doc(location, version, v))

    if settings.verify_path is not None:
        path = settings.verify_path
        if not path.exists():
            raise TdxError(f"{path}: image does not exist", code="image-not-found")
        check(str(path), version_from_filename(path), lambda: _inv.read_image_file(path))
    else:
        repo = _inv.open_repo(settings)
        catalog = repo.catalog()
        _inv.repository_warnings(report, repo)
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
        names = ", ".join(results[i].path + tags[code] for i, code in failed.items())
        code = next(c for c in _VERIFY_PRECEDENCE if c in failed.values())
        raise TdxError(
            f"{len(failed)} of {len(results)} image(s) failed verification: {names}", code=code
        )


# --- --history ----------------------------------------------------------------------------


def run_history(settings: Settings, report: Report) -> None:
    from tdxupdate import history

    loaded = history.load(settings.state_dir)
    report.history = HistoryDoc([r.to_json() for r in loaded.records])
    if loaded.skipped:
        report.warn(
            "history-lines-skipped",
            f"{len(loaded.skipped)} unreadable line(s) in "
            f"{history.history_path(settings.state_dir)}: {loaded.skipped[0]}",
        )
