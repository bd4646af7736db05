"""Mapping files built to cost the loader as much as its bounds allow (tests and bench/).

Each document is close to :data:`~tdxupdate.catalog.MAX_MAPPING_SIZE` bytes and just inside
:data:`~tdxupdate.catalog.MAX_CONTAINERS`, :data:`~tdxupdate.catalog.MAX_VALUES` and
:data:`~tdxupdate.catalog.MAX_STRING`: the most Python objects (or jsonschema errors) a file the
loader agrees to parse can make it build. The rest of the size is long strings, which cost
about one byte per byte.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from tdxupdate.catalog import MAX_CONTAINERS, MAX_MAPPING_SIZE, MAX_STRING, MAX_VALUES

HEADER = '{"Header":{"Version":"1.0"}'


def _document(releases: list[str], extra: list[str], size: int) -> str:
    """A header, ``releases``, ``extra`` as an unknown array, padded with strings to ``size``."""
    head = f'{HEADER},"tdx_module_releases":[{",".join(releases)}],"x":[{",".join(extra)}]'
    pad: list[str] = []
    room = size - len(head.encode()) - len(',"p":[]}')
    while room > MAX_STRING // 2:
        n = min(MAX_STRING, room - 3)
        pad.append('"' + "p" * n + '"')
        room -= n + 3
    return head + ',"p":[' + ",".join(pad) + "]}"


def _count(budget: int, containers_each: int, values_each: int) -> int:
    """How many units fit the container and value bounds, with room for the skeleton."""
    spare_containers = MAX_CONTAINERS - 8
    spare_values = MAX_VALUES - 8 - 300  # the padding strings
    by_containers = spare_containers // containers_each if containers_each else budget
    return min(budget, by_containers, spare_values // values_each)


def empty_releases(size: int) -> str:
    """``{}`` releases: three missing-field errors each from jsonschema."""
    return _document(["{}"] * _count(size // 3, 1, 2), [], size)


def bad_releases(size: int) -> str:
    """Complete releases with malformed versions: a pattern error per field."""
    unit = '{"version":"x","min_module_version_for_td_preserving":"y","min_seamldr_versions":["z"]}'
    return _document([unit] * _count(size // len(unit), 2, 5), [], size)


def floats(size: int) -> str:
    """Numbers: one float object each."""
    return _document([], ["1.5"] * _count(size // 4, 0, 1), size)


def short_strings(size: int) -> str:
    """Two-character strings: one str object each."""
    return _document([], ['"ab"'] * _count(size // 5, 0, 1), size)


def small_objects(size: int) -> str:
    """Objects of three fields in an unknown field: a dict and its pairs each."""
    return _document([], ['{"a":1,"b":2,"c":3}'] * _count(size // 20, 1, 4), size)


def empty_arrays(size: int) -> str:
    """``[]`` in an unknown field: one list each."""
    return _document([], ["[]"] * _count(size // 3, 1, 2), size)


def wide_strings(size: int) -> str:
    """Strings of astral characters: four bytes of UTF-8 and four of str per character."""
    unit = json.dumps("\U0001f600" * (MAX_STRING // 2), ensure_ascii=False)
    count = min(size // len(unit.encode()) - 1, MAX_VALUES // 2)
    return _document([], [unit] * count, size)


WORST_CASES: dict[str, Callable[[int], str]] = {
    "empty-releases": empty_releases,
    "bad-releases": bad_releases,
    "floats": floats,
    "short-strings": short_strings,
    "small-objects": small_objects,
    "empty-arrays": empty_arrays,
    "wide-strings": wide_strings,
}


def worst_case(name: str, size: int = MAX_MAPPING_SIZE) -> bytes:
    return WORST_CASES[name](size).encode()
