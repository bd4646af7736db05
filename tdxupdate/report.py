"""The JSON document of cli-contract.md §3, typed: one dataclass per document, each with a
``to_json()`` that produces the published JSON (``schemas/output.schema.json``).

An action fills a :class:`Report` and raises :class:`TdxError` on failure; the report keeps
what was learnt before the failure so ``--json`` can still show it. :mod:`tdxupdate.render`,
:mod:`tdxupdate.metrics` and the update summary line of :mod:`tdxupdate.log` read the typed
fields; :meth:`Report.document` is the JSON made of them.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from json.encoder import encode_basestring_ascii as _json_str
from typing import Any

from tdxupdate import __version__
from tdxupdate.errors import TdxError
from tdxupdate.versions import try_parse

SCHEMA_VERSION = 1


class Unset(enum.Enum):
    """A key this run did not write (left out of the JSON, unlike ``null``)."""

    UNSET = "unset"


UNSET = Unset.UNSET


def fmt_hex(value: int | None) -> str | None:
    return None if value is None else f"{value:#x}"


def _put(obj: dict[str, Any], name: str, value: object) -> None:
    if value is not UNSET:
        obj[name] = value


class _Unusual(Exception):
    """A value :func:`dumps` leaves to :func:`json.dumps` (not produced by a document)."""


def dumps(doc: object) -> str:
    """Exactly ``json.dumps(doc, indent=2)``, in about 0.6 of the time and memory for a large
    document.

    The standard library encodes an indented document in pure Python through a generator per
    nesting level and joins every token at the end (some 120,000 small strings for 2,000
    releases). This writes the JSON types a document holds (dicts with string keys, lists,
    strings, ints, finite floats, booleans, None) in one recursive pass with the C string
    escaper, each container joined as it is finished. Anything else (another key type, NaN, a
    tuple, a subclass) is handed to ``json.dumps``, which also gives its errors."""
    try:
        return _text(doc, "\n")
    except (_Unusual, RecursionError):
        return json.dumps(doc, indent=2)


def _text(value: Any, newline: str) -> str:
    kind = type(value)
    if kind is str:
        return _json_str(value)
    if kind is dict:
        if not value:
            return "{}"
        inner = newline + "  "
        items = []
        for key, item in value.items():
            if type(key) is not str:
                raise _Unusual
            items.append(_json_str(key) + ": " + _text(item, inner))
        return "{" + inner + ("," + inner).join(items) + newline + "}"
    if kind is list:
        if not value:
            return "[]"
        inner = newline + "  "
        return "[" + inner + ("," + inner).join([_text(v, inner) for v in value]) + newline + "]"
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if kind is int:
        return int.__repr__(value)
    if kind is float and value - value == 0:  # finite: NaN and the infinities go to json
        return float.__repr__(value)
    raise _Unusual


#: The host JSON keys that say what the running module attests as, in their JSON order.
IDENTITY_KEYS = (
    "module_identity",
    "seamsvn",
    "seamsvn_major",
    "seamsvn_minor",
    "mrseam",
    "mrseam_prefix",
    "identity_source",
)


@dataclass
class HostDoc:
    """``host``: what was read from sysfs, the preflight checks, the running module's identity."""

    module_version: str | None
    seamldr_version: str | None
    num_remaining_updates: int | None
    cpu_signature: str | None
    sysfs_layout: str | None
    upload_dir: str | None
    image_format: str | None
    image_format_fallback: str | None
    generation: str | None
    kernel_release: str | None
    checks: list[dict[str, Any]]
    module_lost: bool
    module_identity: str | None = None
    seamsvn: str | None = None
    seamsvn_major: int | None = None
    seamsvn_minor: int | None = None
    mrseam: str | None = None
    mrseam_prefix: str | None = None
    identity_source: str | None = None
    #: whether the running version is in the mapping file; None: no mapping file at hand
    in_mapping: bool | Unset | None = UNSET

    def set_identity(self, values: dict[str, Any]) -> None:
        """The identity keys from :meth:`tdxupdate.attestation.ModuleValues.to_json`."""
        self.module_identity = values["module_identity"]
        self.seamsvn = values["seamsvn"]
        self.seamsvn_major = values["seamsvn_major"]
        self.seamsvn_minor = values["seamsvn_minor"]
        self.mrseam = values["mrseam"]
        self.mrseam_prefix = values["mrseam_prefix"]
        self.identity_source = values["source"]

    def to_json(self) -> dict[str, Any]:
        obj: dict[str, Any] = {
            "module_version": self.module_version,
            "seamldr_version": self.seamldr_version,
            "num_remaining_updates": self.num_remaining_updates,
            "cpu_signature": self.cpu_signature,
            "sysfs_layout": self.sysfs_layout,
            "upload_dir": self.upload_dir,
            "image_format": self.image_format,
            "image_format_fallback": self.image_format_fallback,
            "generation": self.generation,
            "kernel_release": self.kernel_release,
            "checks": [dict(c) for c in self.checks],
            "module_lost": self.module_lost,
        }
        for name in IDENTITY_KEYS:
            obj[name] = getattr(self, name)
        _put(obj, "in_mapping", self.in_mapping)
        return obj


@dataclass
class CandidateDoc:
    """One item of ``candidates`` (and ``selected``): a module and the policy's verdict."""

    version: str
    eligible: bool
    reasons: list[str]
    details: list[str]
    debug: bool | None
    path: str | None
    image_format: str | None
    seamsvn: str | None
    mrseam: str | None
    pinned: bool | None
    #: added once the action is done (:mod:`tdxupdate.attestation_report`)
    module_identity: str | Unset | None = UNSET
    svn_gain: bool | Unset | None = UNSET
    tcb_status: str | Unset | None = UNSET

    def to_json(self) -> dict[str, Any]:
        obj: dict[str, Any] = {
            "version": self.version,
            "eligible": self.eligible,
            "reasons": list(self.reasons),
            "details": list(self.details),
            "debug": self.debug,
            "path": self.path,
            "image_format": self.image_format,
            "seamsvn": self.seamsvn,
            "mrseam": self.mrseam,
            "pinned": self.pinned,
        }
        _put(obj, "module_identity", self.module_identity)
        _put(obj, "svn_gain", self.svn_gain)
        _put(obj, "tcb_status", self.tcb_status)
        return obj


@dataclass(frozen=True)
class VerifiedImageDoc:
    """One item of ``images`` (``--verify``)."""

    path: str
    ok: bool
    version: str | None
    image_format: str | None
    checks: list[dict[str, Any]]

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "ok": self.ok,
            "version": self.version,
            "image_format": self.image_format,
            "checks": [dict(c) for c in self.checks],
        }


@dataclass(frozen=True)
class HistoryDoc:
    """``history`` (``--history``): the records, each as its line in the history file."""

    records: list[dict[str, Any]]

    def to_json(self) -> list[dict[str, Any]]:
        return [dict(r) for r in self.records]


@dataclass
class TcbDoc:
    """``tcb`` (``--tcb-info``): the running and target SEAMSVN's tcbStatus."""

    file: str
    fmspc: str | None
    running: str | None
    target: str | None = None
    td_relaunch_advised: bool | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "fmspc": self.fmspc,
            "running": self.running,
            "target": self.target,
            "td_relaunch_advised": self.td_relaunch_advised,
        }


@dataclass
class ReferenceValuesDoc:
    """``reference_values`` (``--reference-values``): module values for verifiers."""

    running: dict[str, Any]
    target: dict[str, Any] | None
    target_reason: str

    def to_json(self) -> dict[str, Any]:
        return {
            "running": dict(self.running),
            "target": dict(self.target) if self.target is not None else None,
            "target_reason": self.target_reason,
        }


@dataclass
class UpdateDoc:
    """The keys of an ``--update`` document (cli-contract.md §3, the ``update`` rule)."""

    dry_run: bool
    selected: CandidateDoc | None = None
    changed: bool = False
    from_version: str | None = None
    to_version: str | None = None
    kernel_error: str | None = None
    fatal: bool = False
    signer: str | Unset = UNSET
    plan: str | Unset = UNSET
    #: what TDs attest before and after (:mod:`tdxupdate.attestation_report`)
    from_seamsvn: str | Unset | None = UNSET
    from_mrseam: str | Unset | None = UNSET
    from_mrseam_prefix: str | Unset | None = UNSET
    to_seamsvn: str | Unset | None = UNSET
    to_mrseam: str | Unset | None = UNSET
    svn_gain: bool | Unset | None = UNSET
    pre_update: dict[str, Any] | Unset = UNSET
    post_update: dict[str, Any] | Unset = UNSET
    remaining_after: int | Unset | None = UNSET

    #: the keys every ``--update`` document has, before the host's
    HEAD = ("selected", "dry_run", "changed", "from_version", "to_version", "kernel_error", "fatal")
    #: the keys written once the module is chosen and verified, after the host and the
    #: candidates
    PLAN = ("signer", "plan")
    #: what TDs attest before and after: written with the plan, before ``tcb``; without a
    #: plan (nothing to do, refused) once the action is done, after ``tcb``
    ATTESTATION = (
        "from_seamsvn",
        "from_mrseam",
        "from_mrseam_prefix",
        "to_seamsvn",
        "to_mrseam",
        "svn_gain",
    )
    #: the keys written by the attempt, after ``tcb``
    ATTEMPT = ("pre_update", "post_update", "remaining_after")

    def json_part(self, names: tuple[str, ...]) -> dict[str, Any]:
        obj: dict[str, Any] = {}
        for name in names:
            value = getattr(self, name)
            if isinstance(value, CandidateDoc):
                value = value.to_json()
            _put(obj, name, value)
        return obj

    def to_json(self) -> dict[str, Any]:
        return self.json_part(self.HEAD + self.PLAN + self.ATTESTATION + self.ATTEMPT)


@dataclass
class Report:
    """The JSON document being built, plus what text rendering needs."""

    action: str
    host: HostDoc | None = None
    candidates: list[CandidateDoc] | None = None
    update: UpdateDoc | None = None
    images: list[VerifiedImageDoc] | None = None
    history: HistoryDoc | None = None
    reference_values: ReferenceValuesDoc | None = None
    tcb: TcbDoc | None = None
    warnings: list[str] = field(default_factory=list)
    #: warning token -> sentence for people
    warning_text: dict[str, str] = field(default_factory=dict)
    #: informational lines for people (the plan, the outcome)
    notes: list[str] = field(default_factory=list)
    error: TdxError | None = None
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

    @property
    def changed(self) -> bool:
        """Whether an ``--update`` changed the running module."""
        return self.update is not None and self.update.changed

    def candidates_json(self) -> list[dict[str, Any]] | None:
        return None if self.candidates is None else [c.to_json() for c in self.candidates]

    def attestation_input(self) -> dict[str, Any]:
        """The host and the candidates, as :func:`tdxupdate.attestation.running_values` reads
        them: it looks only at the candidates of the running version, so only those are put
        in (a listing of n releases would otherwise build n candidate objects to drop them)."""
        host = self.host.to_json() if self.host is not None else {}
        running = try_parse(str(host.get("module_version") or ""))
        shown = str(running) if running is not None else None
        return {
            "host": host,
            "candidates": [c.to_json() for c in self.candidates or () if c.version == shown],
        }

    def json_text(self) -> str:
        """The document as ``--json`` prints it (``json.dumps(document, indent=2)``)."""
        return dumps(self.document())

    def document(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "schema_version": SCHEMA_VERSION,
            "action": self.action,
            "ok": self.error is None,
            "error": self.error.to_json() if self.error is not None else None,
            "warnings": list(self.warnings),
            "tool_version": __version__,
        }
        if self.update is not None:
            doc.update(self.update.json_part(UpdateDoc.HEAD))
        if self.host is not None:
            doc["host"] = self.host.to_json()
        if self.candidates is not None:
            doc["candidates"] = self.candidates_json()
        if self.reference_values is not None:
            doc["reference_values"] = self.reference_values.to_json()
        if self.images is not None:
            doc["images"] = [i.to_json() for i in self.images]
        if self.history is not None:
            doc["history"] = self.history.to_json()
        planned = self.update is not None and self.update.plan is not UNSET
        if self.update is not None:
            doc.update(self.update.json_part(UpdateDoc.PLAN))
            if planned:
                doc.update(self.update.json_part(UpdateDoc.ATTESTATION))
        if self.tcb is not None:
            doc["tcb"] = self.tcb.to_json()
        if self.update is not None:
            if not planned:
                doc.update(self.update.json_part(UpdateDoc.ATTESTATION))
            doc.update(self.update.json_part(UpdateDoc.ATTEMPT))
        return doc
