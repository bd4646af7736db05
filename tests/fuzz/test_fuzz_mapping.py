"""Fuzz target: the mapping loader (tdxupdate.catalog) on generated JSON.

Three sources of input: documents of Intel's shape with random values (every field and type
the schema knows, and unknown ones), hostile structures (deep nesting, wide containers, huge
and non-finite numbers, duplicate keys, long strings) and Intel's own file with its text
mutated at random. Invariant: a Catalog, or a DataError ``mapping-invalid`` /
``mapping-unsupported`` (65) whose message is one line starting with the source; nothing else.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from factories.outcome import returned_or_raised
from hypothesis import given
from hypothesis import strategies as st

from fuzz.budget import budget
from tdxupdate.catalog import MAX_DEPTH, Catalog, parse_catalog
from tdxupdate.errors import DataError

pytestmark = pytest.mark.fuzz

REAL = (Path(__file__).resolve().parents[2] / "mapping_samples" / "mapping_file.json").read_text()

FIELDS = [
    "version",
    "min_module_version_for_td_preserving",
    "min_seamldr_versions",
    "tdx_feature0",
    "strict_compat_versions",
]

scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
versions = (
    st.from_regex(r"\A[0-9]{1,6}\.[0-9]{1,6}\.[0-9]{1,6}\Z")
    | st.sampled_from(["1.5.06", "2.0.08", "1.5.6", " 1.5.06", "1.5.06\n", "01.5.06", ""])
    | st.text(max_size=12)
)
field_values = {
    "version": versions,
    "min_module_version_for_td_preserving": versions,
    "min_seamldr_versions": st.lists(versions, max_size=3) | json_values,
    "tdx_feature0": st.from_regex(r"\A0[xX][0-9a-fA-F]{0,18}\Z") | json_values,
    "strict_compat_versions": st.lists(versions, max_size=3) | st.none() | json_values,
}


@st.composite
def releases(draw: st.DrawFn) -> object:
    if draw(st.integers(0, 9)) == 0:
        return draw(json_values)
    entry: dict[str, object] = {}
    for name in draw(st.permutations(FIELDS)):
        if draw(st.integers(0, 5)):  # usually present
            entry[name] = draw(field_values[name])
    entry.update(draw(st.dictionaries(st.text(max_size=8), json_values, max_size=2)))
    return entry


@st.composite
def shaped_documents(draw: st.DrawFn) -> str:
    header = {"Version": draw(st.sampled_from(["1.0", "1.1", "2.0", "1", "1."]) | json_values)}
    if draw(st.booleans()):
        header.update(draw(st.dictionaries(st.text(max_size=8), json_values, max_size=3)))
    doc: dict[str, object] = {
        "Header": header,
        "tdx_module_releases": draw(st.lists(releases(), max_size=6)),
    }
    if draw(st.integers(0, 4)) == 0:
        doc.pop(draw(st.sampled_from(["Header", "tdx_module_releases"])))
    doc.update(draw(st.dictionaries(st.text(max_size=8), json_values, max_size=2)))
    return json.dumps(doc, ensure_ascii=draw(st.booleans()))


@st.composite
def hostile_documents(draw: st.DrawFn) -> str:
    kind = draw(st.sampled_from(["deep", "wide", "number", "constant", "duplicates", "string"]))
    head = '{"Header": {"Version": "1.0"}, "tdx_module_releases": [], "x": '
    if kind == "deep":
        depth = draw(st.integers(MAX_DEPTH - 3, 20_000))
        opener = draw(st.sampled_from(["[", '{"a":']))
        closer = "]" if opener == "[" else "}"
        return head + opener * depth + closer * depth * draw(st.sampled_from([1, 0])) + "}"
    if kind == "wide":
        unit = draw(st.sampled_from(["[]", "{}", "0", '""', "1.5", "null", '{"version":"x"}']))
        count = draw(st.integers(0, 80_000))
        return head + "[" + ",".join([unit] * count) + "]}"
    if kind == "number":
        digits = draw(st.integers(1, 20_000))
        exp = draw(st.sampled_from(["", "e999", "e-999", ".5", "E+308"]))
        return head + draw(st.sampled_from(["", "-"])) + "9" * digits + exp + "}"
    if kind == "constant":
        return head + draw(st.sampled_from(["NaN", "Infinity", "-Infinity", "nan", "1e400"])) + "}"
    if kind == "duplicates":
        key = draw(st.sampled_from(['"Header"', '"tdx_module_releases"', '"a"']))
        return (
            '{"Header": {"Version": "1.0"}, "tdx_module_releases": [], '
            + ", ".join([f"{key}: 1"] * draw(st.integers(2, 1000)))
            + "}"
        )
    length = draw(st.integers(4000, 200_000))
    return (
        head
        + json.dumps(draw(st.sampled_from(["a", "\\", '"', "\U0001f600", "\x00"])) * length)
        + "}"
    )


@st.composite
def mutated_text(draw: st.DrawFn) -> str:
    text = REAL
    for _ in range(draw(st.integers(1, 6))):
        at = draw(st.integers(0, len(text)))
        end = draw(st.integers(at, min(len(text), at + 40)))
        piece = draw(
            st.text(alphabet='[]{},:"\\0123456789.eE-+ \nabnrtfu', max_size=8) | st.text(max_size=4)
        )
        text = text[:at] + piece + text[end:]
    return text


def check(data: str | bytes) -> None:
    result = returned_or_raised(lambda: parse_catalog(data, "fuzz.json"), DataError)
    if isinstance(result, DataError):
        assert result.code in ("mapping-invalid", "mapping-unsupported")
        assert result.exit_code == 65
        message = str(result)
        assert message.startswith("fuzz.json: "), message
        assert len(message.splitlines()) == 1, message
    else:
        assert isinstance(result, Catalog)
        assert len({r.version for r in result.releases}) == len(result.releases)


@given(shaped_documents())
@budget(brief=60, long=4000)
def test_documents_of_intels_shape(text: str) -> None:
    check(text)


@given(hostile_documents())
@budget(brief=25, long=600)
def test_hostile_structures(text: str) -> None:
    check(text)


@given(mutated_text(), st.booleans())
@budget(brief=40, long=3000)
def test_mutated_text_of_intels_file(text: str, as_bytes: bool) -> None:
    check(text.encode("utf-8", "surrogatepass") if as_bytes else text)


@given(st.binary(max_size=2000))
@budget(brief=30, long=2000)
def test_random_bytes(data: bytes) -> None:
    check(data)
