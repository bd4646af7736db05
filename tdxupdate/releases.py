"""Intel's published TDX module releases: the evidence that binds an image to its version.

1.5.x sigstructs carry no version, so a file name is the only link between a 1.5.x image and
the version the mapping file talks about: an older Intel-signed image saved under a newer name
passes the signature check. What does bind them is signed or measured: the sigstruct's SEAMSVN
and the image's MRSEAM (SHA-384 of the module pages, which the SEAMHASH check ties to the
signature). This table holds both for every release Intel published (``data/intel-releases.json``,
its sources named inside), MRSEAM in full where the image was measured and as a prefix where
only the release notes give it.

Pure: the table is package data, loaded once; no host, no network.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from tdxupdate.versions import Version

__all__ = ["PublishedRelease", "ReleaseTable", "intel_releases"]


@dataclass(frozen=True)
class PublishedRelease:
    version: Version
    seamsvn: int
    #: lowercase hex: the full 96 digits, or the prefix the release notes give
    mrseam: str

    def mrseam_matches(self, mrseam: str) -> bool:
        return mrseam.lower().startswith(self.mrseam)


@dataclass(frozen=True)
class ReleaseTable:
    """The releases published under one signing key (an image signed by another key is not
    bound by this table)."""

    signer: str
    releases: Mapping[Version, PublishedRelease]
    source: str = ""

    def get(self, version: Version) -> PublishedRelease | None:
        return self.releases.get(version)

    def seamsvn_floor(self, version: Version) -> int | None:
        """The lowest SEAMSVN a module of ``version`` can have: its own, when the table has it,
        else that of the newest published release before it in its major.minor (SEAMSVN never
        goes down within a stream). None when nothing in the table precedes it."""
        own = self.releases.get(version)
        if own is not None:
            return own.seamsvn
        before = [
            r.seamsvn
            for v, r in self.releases.items()
            if v.stream == version.stream and v < version
        ]
        return max(before) if before else None


def parse_table(doc: object) -> ReleaseTable:
    if not isinstance(doc, dict) or not isinstance(doc.get("releases"), list):
        raise ValueError("a release table is an object with a 'releases' list")
    signer = str(doc["signer"]).lower()
    releases: dict[Version, PublishedRelease] = {}
    for item in doc["releases"]:
        version = Version.parse(str(item["version"]))
        mrseam = str(item["mrseam"]).lower()
        if len(mrseam) < 8 or any(c not in "0123456789abcdef" for c in mrseam):
            raise ValueError(f"{version}: MRSEAM {mrseam!r} is not 8 or more hex digits")
        if version in releases:
            raise ValueError(f"{version} appears twice")
        releases[version] = PublishedRelease(version, int(str(item["seamsvn"]), 16), mrseam)
    return ReleaseTable(signer, MappingProxyType(releases), str(doc.get("source", "")))


@functools.cache
def intel_releases() -> ReleaseTable:
    """Intel's published releases, signed by Intel's production key."""
    return parse_table(json.loads(package_data("data/intel-releases.json")))


def package_data(name: str) -> bytes:
    """A file shipped in the package: read beside this module (importlib.resources and the
    archive modules it pulls in cost more start-up than the read), through importlib.resources
    where the package is not a directory (a zip)."""
    try:
        return (Path(__file__).parent / name).read_bytes()
    except OSError:
        from importlib import resources

        return resources.files("tdxupdate").joinpath(name).read_bytes()
