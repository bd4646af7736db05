"""What an update changes for attestation: SEAMSVN, MRSEAM, module identity, TCB status.

mainline-and-attestation.md §3–§4 (issue 10 §3):

- A TD report v1.5 / quote v5 carries ``TEE_TCB_SVN`` (the module the TD *launched* under)
  and ``TEE_TCB_SVN2`` (the module running *now*); byte [0] is the minor SVN, byte [1] the
  major SVN, i.e. the sigstruct's SEAMSVN ``(major << 8) | minor``. A TD launched from now on
  measures the module's MRSEAM (SHA-384 of the module pages).
- Verifiers look the module up by its identity, ``TDX_<major SVN, two digits>``: ``TDX_01``
  for 1.5.x, ``TDX_03`` for 2.0.x, and compare the minor SVN byte against the identity's
  ``tcbLevels`` in Intel's ``tcbInfo``.

The running module's values are not in sysfs: they come from Intel's published release table
(:mod:`tdxupdate.releases`) or, for a version the table lacks, from the repository's image of
that version when it passed its checks. An operator's allowlist (MRSEAMs and/or minimum
SEAMSVNs) makes a candidate outside it ineligible; an operator's ``tcbInfo`` file says whether
the running and the target SVN are UpToDate, and predicts ``TDRelaunchAdvised``.

Pure except :func:`load_allowlist` and :func:`load_tcb_info`, which read the operator's files
through :func:`tdxupdate.trustedfile.read_capped` (they decide what is installed).
"""

from __future__ import annotations

import json
import json.decoder
import json.scanner
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tdxupdate import releases
from tdxupdate.config import ConfigError, ConfigProblem, read_operator_file
from tdxupdate.errors import NotFound
from tdxupdate.versions import Version, try_parse

__all__ = [
    "Allowlist",
    "ModuleValues",
    "TcbInfo",
    "allowlist_problems",
    "load_allowlist",
    "load_tcb_info",
    "module_identity",
    "running_values",
    "svn_bytes",
]

#: module identity by major.minor when the SEAMSVN is not known (mainline-and-attestation.md §4)
_IDENTITY_OF_STREAM = {(1, 5): "TDX_01", (2, 0): "TDX_03"}

#: tcbStatus values of a level that a verifier rates out of date (Intel's QVL).
OUT_OF_DATE = frozenset({"OutOfDate", "OutOfDateConfigurationNeeded"})
#: ... and those a TD's current TCB can have for QVL to say TDRelaunchAdvised.
_CURRENT_OK = frozenset({"UpToDate", "SWHardeningNeeded", "ConfigurationNeeded",
                         "ConfigurationAndSWHardeningNeeded"})  # fmt: skip


def svn_bytes(seamsvn: int) -> tuple[int, int]:
    """``(major, minor)``: TEE_TCB_SVN2 byte [1] and byte [0]."""
    return (seamsvn >> 8) & 0xFF, seamsvn & 0xFF


def module_identity(version: Version | None, seamsvn: int | None = None) -> str | None:
    """``TDX_01``/``TDX_03``: from the major SVN byte when the SEAMSVN is known (as Intel's
    QVL derives it from TEE_TCB_SVN2), else from the version's major.minor."""
    if seamsvn is not None:
        major = svn_bytes(seamsvn)[0]
        return f"TDX_{major:02d}" if major else None
    if version is None:
        return None
    return _IDENTITY_OF_STREAM.get((version.major, version.minor))


def fmt_svn(seamsvn: int | None) -> str | None:
    return None if seamsvn is None else f"{seamsvn:#06x}"


# --- the values of one module -------------------------------------------------------------


@dataclass(frozen=True)
class ModuleValues:
    """What a verifier's allowlist needs about one module."""

    version: Version | None
    seamsvn: int | None = None
    #: the full 96 hex digits, when an image was measured
    mrseam: str | None = None
    #: the first 8 hex digits (all a release note may give)
    mrseam_prefix: str | None = None
    #: ``published`` (Intel's release table), ``repository`` (the image in the repository)
    source: str | None = None

    @property
    def identity(self) -> str | None:
        return module_identity(self.version, self.seamsvn)

    def to_json(self) -> dict[str, Any]:
        major, minor = svn_bytes(self.seamsvn) if self.seamsvn is not None else (None, None)
        return {
            "version": None if self.version is None else str(self.version),
            "module_identity": self.identity,
            "seamsvn": fmt_svn(self.seamsvn),
            "seamsvn_major": major,
            "seamsvn_minor": minor,
            "mrseam": self.mrseam,
            "mrseam_prefix": self.mrseam_prefix,
            "source": self.source,
        }

    def mrseam_text(self, width: int | None = None) -> str:
        if self.mrseam is not None:
            return self.mrseam if width is None else self.mrseam[:width] + "…"
        if self.mrseam_prefix is not None:
            return f"{self.mrseam_prefix}… (first 8 digits; the rest is not published)"
        return "unknown"


def _trusted_image(candidate: Mapping[str, Any]) -> bool:
    bad = {"image-invalid", "signature-invalid", "untrusted-signer", "release-mismatch"}
    return (
        candidate.get("seamsvn") is not None
        and candidate.get("mrseam") is not None
        and not bad & set(candidate.get("reasons") or ())
    )


def running_values(doc: Mapping[str, Any]) -> ModuleValues:
    """The running module's values from a JSON document (cli-contract.md §3): Intel's published
    release, completed (or replaced, for a version the table lacks) by the repository's image
    of that version when it passed its checks."""
    host = doc.get("host") or {}
    version = try_parse(str(host.get("module_version") or ""))
    if version is None:
        return ModuleValues(None)
    image = next(
        (
            c
            for c in doc.get("candidates") or ()
            if c.get("version") == str(version) and _trusted_image(c)
        ),
        None,
    )
    published = releases.intel_releases().get(version)
    if published is not None:
        full = published.mrseam if len(published.mrseam) == 96 else None
        pinned_image = image is not None and image.get("pinned")
        if full is None and image is not None and pinned_image:
            # Intel's image of this version, bound to the table: its MRSEAM in full.
            full = str(image["mrseam"]) if published.mrseam_matches(str(image["mrseam"])) else None
        return ModuleValues(version, published.seamsvn, full, published.mrseam[:8], "published")
    if image is not None:
        mrseam = str(image["mrseam"])
        return ModuleValues(version, int(image["seamsvn"], 16), mrseam, mrseam[:8], "repository")
    return ModuleValues(version)


def candidate_values(candidate: Mapping[str, Any] | None) -> ModuleValues:
    """The values of a candidate (its image's SEAMSVN and MRSEAM) from its JSON object."""
    if not candidate:
        return ModuleValues(None)
    version = try_parse(str(candidate.get("version") or ""))
    svn = candidate.get("seamsvn")
    mrseam = candidate.get("mrseam")
    if svn is None:
        published = releases.intel_releases().get(version) if version else None
        if published is None:
            return ModuleValues(version)
        full = published.mrseam if len(published.mrseam) == 96 else None
        return ModuleValues(version, published.seamsvn, full, published.mrseam[:8], "published")
    return ModuleValues(
        version,
        int(str(svn), 16),
        str(mrseam) if mrseam else None,
        str(mrseam)[:8] if mrseam else None,
        "repository",
    )


# --- the operator's allowlist -------------------------------------------------------------

#: An allowlist holds MRSEAMs of 96 hex digits and a few keywords; 1 MiB is thousands.
MAX_ALLOWLIST_SIZE = 1024 * 1024
#: Intel's tcbInfo for one platform is a few KiB.
MAX_TCB_INFO_SIZE = 1024 * 1024

_MRSEAM_RE = re.compile(r"^[0-9a-fA-F]{96}$")
_IDENTITY_RE = re.compile(r"^TDX_[0-9]{2}$")


@dataclass(frozen=True)
class Allowlist:
    """The modules an operator's verifiers accept. An empty ``mrseams`` does not restrict
    MRSEAM; ``min_seamsvn`` maps a module identity (or None: any) to the lowest SEAMSVN."""

    path: Path
    mrseams: frozenset[str] = frozenset()
    min_seamsvn: Mapping[str | None, int] = field(default_factory=dict)

    def minimum_for(self, identity: str | None) -> int | None:
        if identity is not None and identity in self.min_seamsvn:
            return self.min_seamsvn[identity]
        return self.min_seamsvn.get(None)


def _svn_value(text: str) -> int:
    digits = text[2:] if text.lower().startswith("0x") else text
    if not digits or not re.fullmatch(r"[0-9a-fA-F]{1,4}", digits):
        raise ValueError(f"{text!r} is not a SEAMSVN (hex, 0x0000 to 0xffff, e.g. 0x010d)")
    return int(digits, 16)


def parse_allowlist(text: str, path: Path) -> Allowlist:
    """One entry a line, ``#`` comments and blank lines allowed:

    - an MRSEAM, 96 hex digits (any case): a module verifiers accept;
    - ``min_seamsvn HEX`` or ``min_seamsvn TDX_01 HEX``: the lowest SEAMSVN accepted (for one
      module identity).
    """
    problems: list[ConfigProblem] = []
    mrseams: set[str] = set()
    minimums: dict[str | None, int] = {}
    for lineno, raw in enumerate(text.splitlines(), start=1):
        words = raw.split("#", 1)[0].split()
        if not words:
            continue
        shown = " ".join(words)
        shown = shown if len(shown) <= 60 else shown[:57] + "..."
        if len(words) == 1 and _MRSEAM_RE.match(words[0]):
            mrseams.add(words[0].lower())
            continue
        if words[0] == "min_seamsvn" and len(words) in (2, 3):
            identity = words[1] if len(words) == 3 else None
            if identity is not None and not _IDENTITY_RE.match(identity):
                problems.append(
                    ConfigProblem(
                        path, lineno, None, f"{identity!r} is not a module identity like TDX_01"
                    )
                )
                continue
            try:
                value = _svn_value(words[-1])
            except ValueError as exc:
                problems.append(ConfigProblem(path, lineno, None, str(exc)))
                continue
            if identity in minimums:
                problems.append(
                    ConfigProblem(
                        path, lineno, None, f"a second min_seamsvn for {identity or 'any module'}"
                    )
                )
                continue
            minimums[identity] = value
            continue
        problems.append(
            ConfigProblem(
                path,
                lineno,
                None,
                f"{shown!r} is neither an MRSEAM (96 hex digits) nor 'min_seamsvn [TDX_NN] HEX'",
            )
        )
    if not problems and not mrseams and not minimums:
        problems.append(
            ConfigProblem(path, None, None, "allows nothing: no MRSEAM and no min_seamsvn line")
        )
    if problems:
        raise ConfigError(problems)
    return Allowlist(path, frozenset(mrseams), minimums)


def _read_operator_file(path: Path, limit: int, what: str) -> str:
    try:
        return read_operator_file(path, limit, what)
    except FileNotFoundError as exc:
        raise NotFound(f"{path}: {what} does not exist", code="config-not-found") from exc


def load_allowlist(path: Path) -> Allowlist:
    """Read and parse the operator's allowlist: ``config-invalid`` (78) naming the file and the
    line when it is malformed, ``config-not-found`` (66) when it does not exist."""
    return parse_allowlist(_read_operator_file(path, MAX_ALLOWLIST_SIZE, "an allowlist"), path)


def allowlist_problems(
    version: Version, seamsvn: int | None, mrseam: str | None, allowlist: Allowlist | None
) -> list[tuple[str, str]]:
    """``not-allowlisted`` / ``seamsvn-below-minimum`` for an image, with a sentence each."""
    if allowlist is None:
        return []
    found: list[tuple[str, str]] = []
    if allowlist.mrseams and mrseam is not None and mrseam.lower() not in allowlist.mrseams:
        found.append(
            (
                "not-allowlisted",
                f"{version}: MRSEAM {mrseam[:16]}… is not in the allowlist {allowlist.path} "
                "(verifiers would reject TDs launched under it)",
            )
        )
    if seamsvn is not None:
        identity = module_identity(version, seamsvn)
        minimum = allowlist.minimum_for(identity)
        if minimum is not None and seamsvn < minimum:
            found.append(
                (
                    "seamsvn-below-minimum",
                    f"{version}: SEAMSVN {seamsvn:#06x} is below the minimum {minimum:#06x} "
                    f"of {allowlist.path}",
                )
            )
    return found


# --- Intel's tcbInfo ----------------------------------------------------------------------


@dataclass(frozen=True)
class TcbLevel:
    isvsvn: int
    status: str
    date: str | None = None


@dataclass(frozen=True)
class TcbInfo:
    """The TDX module part of Intel's PCS v4 TDX ``tcbInfo``: identity -> levels, highest
    ``isvsvn`` first."""

    path: Path
    identities: Mapping[str, tuple[TcbLevel, ...]]
    fmspc: str | None = None

    def status(self, seamsvn: int | None, version: Version | None = None) -> str | None:
        """The tcbStatus of a module with this SEAMSVN: the first level (highest isvsvn first)
        whose isvsvn is at most the minor SVN byte, as Intel's QVL picks it; None when the
        SEAMSVN is unknown, the identity is not in the file, or no level matches."""
        if seamsvn is None:
            return None
        identity = module_identity(version, seamsvn)
        levels = self.identities.get(identity or "")
        if not levels:
            return None
        minor = svn_bytes(seamsvn)[1]
        for level in levels:
            if level.isvsvn <= minor:
                return level.status
        return None


def relaunch_advised(running: str | None, target: str | None) -> bool | None:
    """Whether Intel's QVL would say TDRelaunchAdvised for a TD launched under a module rated
    ``running`` once the module rated ``target`` runs; None when either is unknown."""
    if running is None or target is None:
        return None
    return running in OUT_OF_DATE and target in _CURRENT_OK


class _Located(dict[str, Any]):
    """A JSON object that knows the line it starts on."""

    line: int = 0


def _located_loads(text: str) -> Any:
    """``json.loads`` whose objects are :class:`_Located` (so problems can name a line)."""
    decoder = json.JSONDecoder()
    base: Any = getattr(json.decoder, "JSONObject")  # noqa: B009 - untyped in typeshed

    def parse_object(s_and_end: tuple[str, int], *args: Any, **kwargs: Any) -> tuple[Any, int]:
        s, end = s_and_end
        obj, new_end = base(s_and_end, *args, **kwargs)
        located = _Located(obj)
        located.line = s.count("\n", 0, end) + 1
        return located, new_end

    setattr(decoder, "parse_object", parse_object)  # noqa: B010 - not in typeshed
    make_scanner: Any = getattr(json.scanner, "py_make_scanner")  # noqa: B009
    setattr(decoder, "scan_once", make_scanner(decoder))  # noqa: B010
    return decoder.decode(text)


def _line(obj: object) -> int | None:
    return obj.line if isinstance(obj, _Located) else None


_Bad = Callable[[object, str], None]


def parse_tcb_info(text: str, path: Path) -> TcbInfo:
    """Intel's PCS v4 TDX TCB info (``{"tcbInfo": {…}, "signature": …}`` or the ``tcbInfo``
    object alone): ``tdxModuleIdentities[]`` each ``{"id": "TDX_01", "tcbLevels": [{"tcb":
    {"isvsvn": N}, "tcbStatus": "UpToDate", …}, …]}``. The signature is not checked: the file
    is the operator's, read like the configuration."""
    doc = _tcb_json(text, path)
    problems: list[ConfigProblem] = []

    def bad(where: object, message: str) -> None:
        problems.append(ConfigProblem(path, _line(where), None, message))

    info = doc.get("tcbInfo", doc) if isinstance(doc, dict) else doc
    if not isinstance(info, dict):
        raise ConfigError([ConfigProblem(path, 1, None, "not a tcbInfo object")])
    if "id" in info and info["id"] != "TDX":
        bad(info, f'tcbInfo id {info["id"]!r}: not Intel\'s TDX TCB info (id "TDX")')
    identities_raw = info.get("tdxModuleIdentities")
    if identities_raw is None and isinstance(info.get("tdxModule"), dict):
        identities_raw = info["tdxModule"].get("tdxModuleIdentities")
    identities: dict[str, tuple[TcbLevel, ...]] = {}
    if not isinstance(identities_raw, list):
        bad(info, "no tdxModuleIdentities list (a TDX tcbInfo of PCS API v4 has one)")
    else:
        identities = _tcb_identities(info, identities_raw, bad)
    if problems:
        raise ConfigError(problems)
    fmspc = info.get("fmspc")
    return TcbInfo(path, identities, fmspc if isinstance(fmspc, str) else None)


def _tcb_json(text: str, path: Path) -> Any:
    """The tcbInfo file's JSON, its objects located (78 naming the line when malformed)."""
    try:
        return _located_loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            [ConfigProblem(path, exc.lineno, exc.colno, f"invalid JSON: {exc.msg}")]
        ) from None
    except RecursionError:
        raise ConfigError(
            [ConfigProblem(path, None, None, "invalid JSON: nested too deep")]
        ) from None


def _tcb_identities(
    info: dict[str, Any], identities_raw: list[Any], bad: _Bad
) -> dict[str, tuple[TcbLevel, ...]]:
    """``tdxModuleIdentities[]``: identity -> its levels; each problem goes to ``bad``."""
    identities: dict[str, tuple[TcbLevel, ...]] = {}
    for index, ident in enumerate(identities_raw):
        where = f"tdxModuleIdentities[{index}]"
        if not isinstance(ident, dict):
            bad(info, f"{where} is not an object")
            continue
        name = ident.get("id")
        if not isinstance(name, str) or not _IDENTITY_RE.match(name):
            bad(ident, f'{where}.id {name!r} is not a module identity like "TDX_01"')
            continue
        if name in identities:
            bad(ident, f"{where}: identity {name} appears twice")
            continue
        levels_raw = ident.get("tcbLevels")
        if not isinstance(levels_raw, list) or not levels_raw:
            bad(ident, f"{where} ({name}) has no tcbLevels list")
            continue
        identities[name] = _tcb_levels(name, ident, levels_raw, bad)
    return identities


def _tcb_levels(
    name: str, ident: dict[str, Any], levels_raw: list[Any], bad: _Bad
) -> tuple[TcbLevel, ...]:
    """One identity's well-formed ``tcbLevels``, highest isvsvn first; each problem to ``bad``."""
    levels: list[TcbLevel] = []
    for lindex, level in enumerate(levels_raw):
        lwhere = f"{name} tcbLevels[{lindex}]"
        if not isinstance(level, dict):
            bad(ident, f"{lwhere} is not an object")
            continue
        tcb = level.get("tcb")
        svn = tcb.get("isvsvn") if isinstance(tcb, dict) else None
        if isinstance(svn, bool) or not isinstance(svn, int) or not 0 <= svn <= 255:
            bad(level, f"{lwhere}: tcb.isvsvn {svn!r} is not an integer 0 to 255")
            continue
        status = level.get("tcbStatus")
        if not isinstance(status, str) or not status:
            bad(level, f"{lwhere}: tcbStatus {status!r} is not a status name")
            continue
        date = level.get("tcbDate")
        levels.append(TcbLevel(svn, status, date if isinstance(date, str) else None))
    levels.sort(key=lambda lv: lv.isvsvn, reverse=True)
    return tuple(levels)


def load_tcb_info(path: Path) -> TcbInfo:
    """Read and parse the operator's tcbInfo file (78 naming the file and line if malformed)."""
    return parse_tcb_info(_read_operator_file(path, MAX_TCB_INFO_SIZE, "a tcbInfo file"), path)
