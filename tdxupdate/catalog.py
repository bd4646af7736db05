"""The release catalog: Intel's ``mapping_file.json``.

Implements cli-contract.md §6 ("Mapping file rules") and the field table of reference-tool.md
("mapping_file.json"). Reading goes in stages, each failure one line naming the JSON path:

1. decode: UTF-8 (a leading BOM is tolerated), at most :data:`MAX_MAPPING_SIZE` bytes, then,
   before the decoder builds anything, at most :data:`MAX_CONTAINERS` arrays and objects and
   :data:`MAX_VALUES` values, counted from the text in one linear pass;
2. JSON: strict RFC 8259 (no NaN/Infinity, no integer of more than 4300 digits), no key twice
   in one object, at most :data:`MAX_DEPTH` levels of nesting, no string longer than
   :data:`MAX_STRING` characters;
3. ``Header.Version`` must start with ``1.`` (else ``mapping-unsupported``: a later format may
   change the release fields, so it is refused before the schema complains about them);
4. the JSON Schema ``schemas/mapping.schema.json`` (draft 7; unknown fields allowed everywhere,
   Intel adds fields without changing the header);
5. semantic checks: each version listed once.

Where Intel's two published files disagree (1.5.05's ``tdx_feature0``) the newer file is right;
nothing here prefers one file over another, the caller simply reads the current one.

Bytes in, a catalog out: no I/O here. The file is read from disk by
:func:`tdxupdate.sources.local.load_catalog` and fetched by :mod:`tdxupdate.sources.mirror`.
"""

from __future__ import annotations

import functools
import json
import math
import re
import types
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple, NoReturn

from tdxupdate import verdicts
from tdxupdate.errors import DataError
from tdxupdate.versions import Version

#: Largest mapping file read, locally and from a mirror. Intel's largest is 5,539 bytes for 20
#: releases (about 280 bytes each); 1 MiB holds some 3,700 releases of that shape, ~190x today's
#: file. Below it, the bounds that follow keep the parsed document (and every message about it)
#: to a few tens of bytes of Python objects per byte read (``python bench/run.py mapping``).
MAX_MAPPING_SIZE = 1024 * 1024

#: Deepest nesting accepted. Intel's file is 4 levels deep; the cap keeps hostile input from
#: reaching Python's recursion limit in the JSON decoder, jsonschema or ``repr``.
MAX_DEPTH = 64

#: Most arrays and objects in one file. Intel's has 63 for 20 releases (about 3 each); a file
#: of that shape at :data:`MAX_MAPPING_SIZE` has about 12,000. Counted before parsing: each is a
#: Python container, and each malformed release costs jsonschema several errors.
MAX_CONTAINERS = 16 * 1024

#: Most values in one file, as its commas and brackets count them. Intel's has about 190 for
#: 20 releases; a file of that shape at :data:`MAX_MAPPING_SIZE` has about 35,000.
MAX_VALUES = 64 * 1024

#: Longest string (a value or a field name), in characters. Intel's longest is its 60-character
#: copyright line.
MAX_STRING = 4096

#: TDX_FEATURES0 bit 1: the module supports TD-preserving updates (reference-tool.md).
TD_PRESERVING_BIT = 1
#: TDX_FEATURES0 bit 47: update compatibility, the running module can refuse the shutdown while a
#: TD build is in progress (set from 1.5.24 and 2.0.14; reference-tool.md).
UPDATE_COMPAT_BIT = 47

#: The release fields this module interprets; every other field goes to ``Release.extra``.
KNOWN_RELEASE_FIELDS = frozenset(
    {
        "version",
        "min_module_version_for_td_preserving",
        "min_seamldr_versions",
        "tdx_feature0",
        "strict_compat_versions",
    }
)

#: Python refuses to convert longer decimal strings by default (CVE-2020-10735); refusing them
#: here as well keeps parsing linear even when that limit is switched off.
_MAX_INT_DIGITS = 4300

_JSON_TYPE_PHRASES = {
    "object": "an object",
    "array": "an array",
    "string": "a string",
    "number": "a number",
    "integer": "an integer",
    "boolean": "a boolean",
    "null": "null",
}


def _frozen_mapping(value: Mapping[str, object]) -> Mapping[str, object]:
    return types.MappingProxyType(dict(value))


@dataclass(frozen=True)
class Release:
    """One entry of ``tdx_module_releases``."""

    version: Version
    #: ``min_module_version_for_td_preserving``
    min_td_preserving: Version
    min_seamldr_versions: tuple[Version, ...]
    #: TDX_FEATURES0; None when the entry has no ``tdx_feature0``.
    tdx_feature0: int | None = None
    #: None when the entry has no ``strict_compat_versions`` (an empty tuple is an empty list).
    strict_compat_versions: tuple[Version, ...] | None = None
    #: Fields this version of tdxupdate does not interpret, as read.
    extra: Mapping[str, object] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        # Read-only, so a Release handed around stays what the file said.
        object.__setattr__(self, "extra", _frozen_mapping(self.extra))

    @property
    def update_compat(self) -> bool | None:
        """TDX_FEATURES0 bit 47 (None when ``tdx_feature0`` is absent)."""
        if self.tdx_feature0 is None:
            return None
        return bool(self.tdx_feature0 >> UPDATE_COMPAT_BIT & 1)

    @property
    def td_preserving(self) -> bool | None:
        """TDX_FEATURES0 bit 1 (None when ``tdx_feature0`` is absent)."""
        if self.tdx_feature0 is None:
            return None
        return bool(self.tdx_feature0 >> TD_PRESERVING_BIT & 1)


@dataclass(frozen=True)
class Catalog:
    """A validated mapping file; ``releases`` in file order."""

    header_version: str
    releases: tuple[Release, ...]
    #: Where it was read from (a path or URL), the prefix of every message about it.
    source: str
    #: The whole ``Header`` object as read (``Version``, ``Copyright``, ``Info``, ...).
    header: Mapping[str, object] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "header", _frozen_mapping(self.header))

    def get(self, version: Version) -> Release | None:
        """The entry for ``version`` (``1.5.6`` and ``1.5.06`` are the same), or None."""
        for release in self.releases:
            if release.version == version:
                return release
        return None


# --- problems -------------------------------------------------------------------------------

PathItem = str | int


class _Problem(NamedTuple):
    #: Position of the offending value in the document (indices at each level), so problems are
    #: reported in document order whatever order they were found in.
    order: tuple[int, ...]
    path: str
    text: str


def format_path(path: tuple[PathItem, ...] | list[PathItem]) -> str:
    """``("tdx_module_releases", 3, "version")`` -> ``$.tdx_module_releases[3].version``."""
    parts = ["$"]
    for item in path:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        elif item.isidentifier() and item.isascii():
            parts.append(f".{item}")
        else:
            parts.append(f"[{json.dumps(item)}]")
    return "".join(parts)


def _short_path(path: tuple[PathItem, ...]) -> str:
    # The path to a too-deep value is MAX_DEPTH items long; its start says where it is.
    if len(path) <= 8:
        return format_path(path)
    return format_path(path[:8]) + "..."


def _order(doc: object, path: tuple[PathItem, ...]) -> tuple[int, ...]:
    positions: list[int] = []
    node = doc
    for item in path:
        if isinstance(node, dict) and isinstance(item, str):
            positions.append(list(node).index(item) if item in node else len(node))
            node = node.get(item)
        elif isinstance(node, list) and isinstance(item, int):
            positions.append(item)
            node = node[item] if 0 <= item < len(node) else None
        else:
            break
    return tuple(positions)


def _raise(source: str, problems: list[_Problem], code: str = "mapping-invalid") -> NoReturn:
    problems = sorted(problems, key=lambda p: p.order)  # stable: ties keep the order found
    first = problems[0]
    more = len(problems) - 1
    suffix = f" (and {more} more problem{'s' if more > 1 else ''})" if more else ""
    raise DataError(f"{source}: {first.path}: {first.text}{suffix}", code=code)


def _show(value: object, limit: int = 40) -> str:
    """A value as a message quotes it: short, with control characters visible."""
    if isinstance(value, str):
        return repr(value if len(value) <= limit else value[:limit] + "...")
    return _type_phrase(value)


def _type_phrase(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


# --- stage 1 and 2: bytes -> JSON value -----------------------------------------------------


class _Rejected(ValueError):
    """A JSON value the decoder can read but a mapping file must not contain."""


class _DuplicateKeys(dict[str, Any]):
    """An object in which some key appeared more than once (``json`` keeps the last one)."""

    duplicate_keys: list[str]


def _object_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) == len(pairs):
        return obj
    marked = _DuplicateKeys(obj)
    seen: set[str] = set()
    marked.duplicate_keys = []
    for key, _ in pairs:
        if key in seen and key not in marked.duplicate_keys:
            marked.duplicate_keys.append(key)
        seen.add(key)
    return marked


def _reject_constant(name: str) -> Any:
    raise _Rejected(f"{name} is not a JSON number")


def _parse_int(text: str) -> int:
    if len(text) > _MAX_INT_DIGITS:
        raise _Rejected(f"a number of {len(text)} digits is too large")
    return int(text)


def _parse_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _Rejected(f"the number {_show(text)[1:-1]} is out of range")
    return value


def too_large(source: str) -> DataError:
    """A mapping file (or body) over :data:`MAX_MAPPING_SIZE`."""
    return DataError(
        f"{source}: larger than {MAX_MAPPING_SIZE // (1024 * 1024)} MiB, not a mapping file"
    )


def _decode(data: bytes | bytearray | memoryview | str, source: str) -> str:
    if isinstance(data, str):
        if len(data) > MAX_MAPPING_SIZE:
            raise too_large(source)
        return data.removeprefix("\ufeff")
    raw = bytes(data)
    if len(raw) > MAX_MAPPING_SIZE:
        raise too_large(source)
    # Windows editors add a BOM; RFC 8259 §8.1 lets a parser ignore it.
    skipped = 3 if raw.startswith(b"\xef\xbb\xbf") else 0
    try:
        return raw[skipped:].decode("utf-8")
    except UnicodeDecodeError as exc:
        offset = exc.start + skipped
        raise DataError(
            f"{source}: not UTF-8 text (byte 0x{raw[offset]:02x} at offset {offset})"
        ) from None


#: A JSON string, or an unterminated one running to the end of the text. Every quote outside a
#: string starts a match and no quantifier gives anything back, so one ``sub`` is linear
#: whatever the quotes and backslashes (with a plain ``"..."`` pattern, each quote of an
#: unterminated run would rescan to the end: quadratic).
_STRING = re.compile(r'"[^"\\]*+(?:\\.[^"\\]*+)*+(?:"|\\?\Z)', re.S)


def _check_counts(text: str, source: str) -> None:
    """Refuse, before parsing, a text with more containers or values than a mapping file has.

    For valid JSON the counts are exact (containers) or an upper bound (values: commas, plus
    one per container, plus one); for invalid JSON they count at least what the decoder builds
    before it stops at the first error.
    """
    bare = _STRING.sub("", text)  # what is left is punctuation, numbers and literals
    containers = bare.count("[") + bare.count("{")
    if containers > MAX_CONTAINERS:
        raise DataError(
            f"{source}: more than {MAX_CONTAINERS} arrays and objects ({containers}), "
            "not a mapping file"
        )
    values = bare.count(",") + containers + 1
    if values > MAX_VALUES:
        raise DataError(f"{source}: more than {MAX_VALUES} values ({values}), not a mapping file")


def _load_json(text: str, source: str) -> object:
    if not text.strip():
        raise DataError(f"{source}: empty, not a mapping file")
    _check_counts(text, source)
    try:
        return json.loads(
            text,
            object_pairs_hook=_object_pairs,
            parse_constant=_reject_constant,
            parse_int=_parse_int,
            parse_float=_parse_float,
        )
    except json.JSONDecodeError as exc:
        reason = exc.msg[:1].lower() + exc.msg[1:]
        raise DataError(
            f"{source}: line {exc.lineno}, column {exc.colno}: not valid JSON: {reason}"
        ) from None
    except _Rejected as exc:
        raise DataError(f"{source}: not valid JSON: {exc}") from None
    except RecursionError:
        raise DataError(f"{source}: nested more than {MAX_DEPTH} levels deep") from None


def _structure_problems(doc: object) -> list[_Problem]:
    """Duplicate keys, excessive nesting and overlong strings, found without recursion."""
    problems: list[_Problem] = []
    stack: list[tuple[object, tuple[PathItem, ...], tuple[int, ...]]] = [(doc, (), ())]
    while stack:
        node, path, order = stack.pop()
        if isinstance(node, str) and len(node) > MAX_STRING:
            text = f"a string of {len(node)} characters (at most {MAX_STRING})"
            problems.append(_Problem(order, _short_path(path), text))
        if not isinstance(node, dict | list):
            continue
        if len(path) >= MAX_DEPTH:
            problems.append(
                _Problem(order, _short_path(path), f"nested more than {MAX_DEPTH} levels deep")
            )
            continue
        if isinstance(node, _DuplicateKeys):
            keys = ", ".join(f"'{k}'" for k in node.duplicate_keys)
            several = len(node.duplicate_keys) > 1
            text = f"fields {keys} appear twice" if several else f"field {keys} appears twice"
            problems.append(_Problem(order, format_path(path), text))
        if isinstance(node, dict):
            for pos, (key, value) in enumerate(node.items()):
                if len(key) > MAX_STRING:
                    text = f"a field name of {len(key)} characters (at most {MAX_STRING})"
                    problems.append(_Problem((*order, pos), _short_path(path), text))
                    continue
                stack.append((value, (*path, key), (*order, pos)))
        else:
            for pos, value in enumerate(node):
                stack.append((value, (*path, pos), (*order, pos)))
    return problems


# --- stage 3 and 4: header and schema -------------------------------------------------------


@functools.cache
def _schema() -> dict[str, Any]:
    from tdxupdate.schemas import load_schema

    return load_schema("mapping")


@functools.cache
def _validator() -> Any:
    # Lazy: jsonschema costs start-up time that --help and --status should not pay.
    import jsonschema

    return jsonschema.Draft7Validator(_schema())


@functools.cache
def _full_patterns() -> dict[str, re.Pattern[str]]:
    """The schema's patterns, anchored for ``fullmatch``.

    JSON Schema patterns are searched, and Python's ``$`` also matches before a final newline,
    so ``"1.5.06\\n"`` passes the schema; the semantic stage re-checks with these.
    """
    patterns = {"version": _version_pattern(), "hex": _hex_pattern()}
    return {k: re.compile(p.removeprefix("^").removesuffix("$")) for k, p in patterns.items()}


def _version_pattern() -> str:
    return str(_schema()["definitions"]["version"]["pattern"])


def _hex_pattern() -> str:
    return str(_schema()["definitions"]["release"]["properties"]["tdx_feature0"]["pattern"])


def _pattern_text(pattern: str, value: object) -> str:
    if pattern == _version_pattern():
        return f"{_show(value)} is not a version of the form major.minor.update"
    if pattern == _hex_pattern():
        return f"{_show(value)} is not a hexadecimal number of at most 16 digits like 0x1F0FBF"
    return f"{_show(value)} does not match {pattern}"


def _schema_problems(doc: object) -> list[_Problem]:
    problems: list[_Problem] = []
    # jsonschema reports one `required` error per missing field, in the order of the schema's
    # list, but only names the field inside its message text; count them to name them.
    required_seen: dict[tuple[PathItem, ...], int] = {}
    for error in _validator().iter_errors(doc):
        path = tuple(error.absolute_path)
        kind = error.validator
        if kind == "type":
            expected = error.validator_value
            names = [expected] if isinstance(expected, str) else list(expected)
            wanted = " or ".join(_JSON_TYPE_PHRASES.get(n, n) for n in names)
            text = f"expected {wanted}, got {_type_phrase(error.instance)}"
        elif kind == "required" and isinstance(error.instance, dict):
            missing = [k for k in error.validator_value if k not in error.instance]
            index = required_seen.get(path, 0)
            required_seen[path] = index + 1
            name = missing[index] if index < len(missing) else "?"
            text = f"missing required field '{name}'"
        elif kind == "pattern":
            text = _pattern_text(error.validator_value, error.instance)
        elif kind == "minItems" and isinstance(error.instance, list):
            count = error.validator_value
            at_least = "one entry" if count == 1 else f"{count} entries"
            got = "an empty array" if not error.instance else f"{len(error.instance)}"
            text = f"expected at least {at_least}, got {got}"
        else:  # keywords this schema does not use today; keep jsonschema's words, short
            message = " ".join(str(error.message).split())
            text = message if len(message) <= 120 else message[:117] + "..."
        problems.append(_Problem(_order(doc, path), format_path(path), text))
    return problems


def _check_header(doc: object, source: str) -> None:
    header = doc.get("Header") if isinstance(doc, dict) else None
    version = header.get("Version") if isinstance(header, dict) else None
    if isinstance(version, str) and not version.startswith("1."):
        raise DataError(
            f"{source}: $.Header.Version: format {_show(version)} is not supported "
            "(tdxupdate reads format 1.x)",
            code="mapping-unsupported",
        )


# --- stage 5: semantic checks and the typed result -----------------------------------------


def _version_strings(item: dict[str, Any]) -> list[tuple[tuple[PathItem, ...], str]]:
    """Every version string of a release entry with its path inside the entry."""
    found: list[tuple[tuple[PathItem, ...], str]] = [
        (("version",), item["version"]),
        (("min_module_version_for_td_preserving",), item["min_module_version_for_td_preserving"]),
    ]
    for name in ("min_seamldr_versions", "strict_compat_versions"):
        found += [((name, i), text) for i, text in enumerate(item.get(name) or ())]
    return found


def _semantic_problems(doc: dict[str, Any]) -> list[_Problem]:
    """What the schema cannot say: exact (fullmatch) formats and each version listed once."""
    patterns = _full_patterns()
    problems: list[_Problem] = []

    def add(path: tuple[PathItem, ...], text: str) -> None:
        problems.append(_Problem(_order(doc, path), format_path(path), text))

    first_index: dict[Version, int] = {}
    for index, item in enumerate(doc["tdx_module_releases"]):
        base: tuple[PathItem, ...] = ("tdx_module_releases", index)
        well_formed = True
        for sub, text in _version_strings(item):
            if patterns["version"].fullmatch(text) is None:
                add((*base, *sub), _pattern_text(_version_pattern(), text))
                well_formed = False
        feature0 = item.get("tdx_feature0")
        if feature0 is not None and patterns["hex"].fullmatch(feature0) is None:
            add((*base, "tdx_feature0"), _pattern_text(_hex_pattern(), feature0))
        if not well_formed:
            continue
        version = Version.parse(item["version"])
        if version in first_index:
            earlier = format_path(("tdx_module_releases", first_index[version]))
            add((*base, "version"), f"version {version} is listed twice (also at {earlier})")
        else:
            first_index[version] = index
    return problems


def _release(item: dict[str, Any]) -> Release:
    """A Release from an entry that passed the schema and the semantic checks."""
    feature0 = item.get("tdx_feature0")
    strict = item.get("strict_compat_versions")
    return Release(
        version=Version.parse(item["version"]),
        min_td_preserving=Version.parse(item["min_module_version_for_td_preserving"]),
        min_seamldr_versions=tuple(Version.parse(v) for v in item["min_seamldr_versions"]),
        tdx_feature0=int(feature0, 16) if feature0 is not None else None,
        strict_compat_versions=(
            tuple(Version.parse(v) for v in strict) if strict is not None else None
        ),
        extra={k: v for k, v in item.items() if k not in KNOWN_RELEASE_FIELDS},
    )


def parse_catalog(data: bytes | bytearray | memoryview | str, source: str) -> Catalog:
    """Validate a mapping file's content and return it typed.

    Raises :class:`DataError` with code ``mapping-invalid`` (one line:
    ``<source>: $.tdx_module_releases[3].version: <problem>``, the first problem in document
    order, then how many more there are) or ``mapping-unsupported`` (``Header.Version`` not 1.x).

    While listing (:func:`tdxupdate.verdicts.listing`), bytes this tool version already found
    valid under this schema are only decoded (no jsonschema import, no validation pass); any
    other bytes are validated in full and, when valid, remembered.
    """
    store = verdicts.current()
    if store is None:
        return _parse_checked(data, source)
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else bytes(data)
    if len(raw) <= MAX_MAPPING_SIZE and store.known("mapping", raw):
        known = _parse_known(raw, source)
        if known is not None:
            return known
    catalog = _parse_checked(data, source)
    store.add("mapping", raw)
    return catalog


def _catalog_of(doc: dict[str, Any], source: str) -> Catalog:
    header = doc["Header"]
    return Catalog(
        header_version=header["Version"],
        releases=tuple(_release(item) for item in doc["tdx_module_releases"]),
        source=source,
        header=header,
    )


def _parse_known(raw: bytes, source: str) -> Catalog | None:
    """The catalog of bytes with a ``mapping`` verdict; None (validate in full) should they not
    decode to what a valid file does (a verdict store is never believed beyond that)."""
    try:
        doc = json.loads(_decode(raw, source))
        if not isinstance(doc, dict):
            return None
        return _catalog_of(doc, source)
    except Exception:  # a DataError, or a shape only a valid file is sure to have
        return None


def _parse_checked(data: bytes | bytearray | memoryview | str, source: str) -> Catalog:
    doc = _load_json(_decode(data, source), source)
    structure = _structure_problems(doc)
    if structure:
        _raise(source, structure)
    _check_header(doc, source)
    try:
        schema = _schema_problems(doc)
    except RecursionError:  # defensive: MAX_DEPTH keeps jsonschema well inside the limit
        raise DataError(f"{source}: nested more than {MAX_DEPTH} levels deep") from None
    if schema:
        _raise(source, schema)
    assert isinstance(doc, dict)  # the schema says so
    semantic = _semantic_problems(doc)
    if semantic:
        _raise(source, semantic)
    return _catalog_of(doc, source)
