"""tdxupdate.catalog: Intel's mapping_file.json (cli-contract.md §6, reference-tool.md)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from factories.outcome import returned_or_raised
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tdxupdate.catalog import (
    KNOWN_RELEASE_FIELDS,
    MAX_DEPTH,
    MAX_MAPPING_SIZE,
    Catalog,
    Release,
    parse_catalog,
)
from tdxupdate.errors import DataError
from tdxupdate.schemas import load_schema
from tdxupdate.sources.local import load_catalog
from tdxupdate.versions import Version

SAMPLES = Path(__file__).resolve().parent.parent / "mapping_samples"
V = Version.parse

# A minimal valid release, for the inline cases below.
GOOD_RELEASE = {
    "version": "1.5.06",
    "min_module_version_for_td_preserving": "1.5.01",
    "min_seamldr_versions": ["1.5.00"],
}


def doc(*releases: object, header: object = None, **top: object) -> str:
    body: dict[str, object] = {"Header": header if header is not None else {"Version": "1.0"}}
    body["tdx_module_releases"] = list(releases)
    body.update(top)
    return json.dumps(body)


def error_of(data: bytes | str, source: str = "m.json") -> DataError:
    with pytest.raises(DataError) as info:
        parse_catalog(data, source)
    return info.value


# --- Intel's files --------------------------------------------------------------------------


def test_intel_current_file_loads_with_its_values() -> None:
    cat = load_catalog(SAMPLES / "mapping_file.json")
    assert cat.header_version == "1.0"
    assert cat.source == str(SAMPLES / "mapping_file.json")
    assert cat.header["Info"] == "Info of each Intel TDX module release"
    assert [str(r.version) for r in cat.releases] == [
        *("1.5.01", "1.5.05", "1.5.06", "1.5.08", "1.5.09", "1.5.13", "1.5.16", "1.5.20"),
        *("1.5.24", "1.5.25", "1.5.28", "1.5.34"),
        *("2.0.02", "2.0.04", "2.0.05", "2.0.08", "2.0.12", "2.0.14", "2.0.16", "2.0.18"),
    ]
    r = cat.get(V("1.5.24"))
    assert r is not None
    assert r.min_td_preserving == V("1.5.01")
    assert r.min_seamldr_versions == (V("1.5.00"),)
    assert r.tdx_feature0 == 0xD1326F3F0FBF
    assert r.strict_compat_versions == (V("1.5.16"), V("1.5.20"))
    assert r.update_compat is True
    assert r.td_preserving is True
    assert r.extra == {}
    r25 = cat.get(V("1.5.25"))
    assert r25 is not None
    assert r25.min_seamldr_versions == (V("2.0.00"),)
    first = cat.releases[0]
    assert first.strict_compat_versions == ()
    assert first.tdx_feature0 == 0xF0FBF
    r2 = cat.get(V("2.0.18"))
    assert r2 is not None
    assert r2.min_td_preserving == V("2.0.04")
    assert r2.tdx_feature0 == 0x15AD9326F3F1FBF


def test_intel_update_compat_bit_47_set_from_1_5_24_and_2_0_14() -> None:
    cat = load_catalog(SAMPLES / "mapping_file.json")
    with_bit = {str(r.version) for r in cat.releases if r.update_compat}
    assert with_bit == {"1.5.24", "1.5.25", "1.5.28", "1.5.34", "2.0.14", "2.0.16", "2.0.18"}
    assert all(r.td_preserving for r in cat.releases)


def test_intel_2025_08_file_loads_without_strict_compat() -> None:
    cat = load_catalog(SAMPLES / "mapping_file-2025-08.json")
    assert len(cat.releases) == 11
    assert all(r.strict_compat_versions is None for r in cat.releases)
    r = cat.get(V("2.0.08"))
    assert r is not None
    assert r.min_td_preserving == V("2.0.04")
    assert r.min_seamldr_versions == (V("2.0.00"),)
    assert r.tdx_feature0 == 0x32A71F0FBF


def test_intel_files_disagree_on_tdx_feature0_and_newer_is_what_we_read() -> None:
    new = load_catalog(SAMPLES / "mapping_file.json")
    old = load_catalog(SAMPLES / "mapping_file-2025-08.json")
    assert {r.version for r in old.releases} <= {r.version for r in new.releases}
    differ = {}
    for r in old.releases:
        current = new.get(r.version)
        assert current is not None
        assert (current.min_td_preserving, current.min_seamldr_versions) == (
            r.min_td_preserving,
            r.min_seamldr_versions,
        )
        if current.tdx_feature0 != r.tdx_feature0:
            differ[str(r.version)] = (r.tdx_feature0, current.tdx_feature0)
    assert differ["1.5.05"] == (0x61F0FBF, 0x1F0FBF)  # the one cli-contract.md §6 names
    assert set(differ) == {"1.5.05", "2.0.04", "2.0.05", "2.0.08"}
    # None of the disagreements changes a bit tdxupdate acts on.
    for version in differ:
        a, b = old.get(V(version)), new.get(V(version))
        assert a is not None
        assert b is not None
        assert (a.update_compat, a.td_preserving) == (b.update_compat, b.td_preserving)


# --- every sample ---------------------------------------------------------------------------

# file -> ("ok", release count) or (error code, message after "<path>: ")
EXPECTED: dict[str, tuple[str, int | str]] = {
    "mapping_file.json": ("ok", 20),
    "mapping_file-2025-08.json": ("ok", 11),
    "unknown-fields.json": ("ok", 2),
    "no-strict-compat.json": ("ok", 3),
    "empty-releases.json": ("ok", 0),
    "bad-duplicate-version.json": (
        "mapping-invalid",
        "$.tdx_module_releases[3].version: version 1.5.06 is listed twice"
        " (also at $.tdx_module_releases[1])",
    ),
    "bad-missing-field.json": (
        "mapping-invalid",
        "$.tdx_module_releases[1]: missing required field 'min_module_version_for_td_preserving'",
    ),
    "bad-wrong-type.json": (
        "mapping-invalid",
        "$.tdx_module_releases[1].min_seamldr_versions: expected an array, got a string",
    ),
    "bad-version-string.json": (
        "mapping-invalid",
        "$.tdx_module_releases[0].version: '1.5' is not a version of the form"
        " major.minor.update (and 1 more problem)",
    ),
    "bad-header-version.json": (
        "mapping-unsupported",
        "$.Header.Version: format '2.0' is not supported (tdxupdate reads format 1.x)",
    ),
    "bad-not-json.json": (
        "mapping-invalid",
        "line 6, column 7: not valid JSON: expecting ',' delimiter",
    ),
}


def test_every_sample_file_has_an_expected_outcome() -> None:
    assert sorted(p.name for p in SAMPLES.glob("*.json")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED), ids=str)
def test_sample_outcome(name: str) -> None:
    path = SAMPLES / name
    outcome, value = EXPECTED[name]
    if outcome == "ok":
        assert len(load_catalog(path).releases) == value
        return
    with pytest.raises(DataError) as info:
        load_catalog(path)
    assert info.value.code == outcome
    assert info.value.exit_code == 65
    assert str(info.value) == f"{path}: {value}"
    assert info.value.message == str(info.value)


@pytest.mark.parametrize("name", sorted(EXPECTED), ids=str)
def test_samples_agree_with_plain_jsonschema(name: str) -> None:
    # The shipped schema alone decides every sample that fails (or passes) at the schema stage,
    # so other tools validating with it see the same thing.
    import jsonschema

    text = (SAMPLES / name).read_text(encoding="utf-8")
    try:
        instance = json.loads(text)
    except json.JSONDecodeError:
        assert name == "bad-not-json.json"
        return
    errors = list(jsonschema.Draft7Validator(load_schema("mapping")).iter_errors(instance))
    schema_failures = {"bad-missing-field.json", "bad-wrong-type.json", "bad-version-string.json"}
    assert bool(errors) == (name in schema_failures)


def test_unknown_fields_are_kept_everywhere() -> None:
    cat = load_catalog(SAMPLES / "unknown-fields.json")
    assert cat.header_version == "1.1"
    assert cat.header["Generated"] == "2026-03-01T00:00:00Z"
    r = cat.releases[0]
    assert set(r.extra) == {"tdx_feature1", "cpu_families", "release_notes", "errata", "production"}
    assert r.extra["cpu_families"] == [{"family": 6, "model": 143}, {"family": 6, "model": 207}]
    assert r.extra["errata"] == {"SEAMRET_INVD_VMCS": False, "ids": [1, 2.5, "x"]}
    assert r.extra["release_notes"] is None
    assert not set(r.extra) & KNOWN_RELEASE_FIELDS
    second = cat.releases[1]
    assert second.tdx_feature0 == 0xD1326F3F0FBF  # lower-case hex
    assert second.update_compat is True
    assert second.strict_compat_versions is None
    assert second.extra == {"sha384": "00"}


def test_absent_optional_fields_are_none_and_empty_list_is_empty_tuple() -> None:
    cat = load_catalog(SAMPLES / "no-strict-compat.json")
    r6, r8, r9 = cat.releases
    assert r6.strict_compat_versions is None
    assert r6.tdx_feature0 == 0x2E1F0FBF
    assert r8.tdx_feature0 is None
    assert r8.update_compat is None
    assert r8.td_preserving is None
    assert r9.strict_compat_versions == ()


def test_empty_catalog_offers_nothing() -> None:
    cat = load_catalog(SAMPLES / "empty-releases.json")
    assert cat.releases == ()
    assert cat.get(V("1.5.06")) is None


# --- Catalog and Release ---------------------------------------------------------------------


def test_get_treats_padded_and_unpadded_versions_alike() -> None:
    cat = parse_catalog(doc({**GOOD_RELEASE, "version": "1.5.6"}), "m.json")
    found = cat.get(V("1.5.06"))
    assert found is not None
    assert str(found.version) == "1.5.06"
    assert cat.get(V("1.5.07")) is None


def test_releases_keep_the_file_order() -> None:
    releases = [{**GOOD_RELEASE, "version": v} for v in ("1.5.09", "1.5.24", "1.5.16", "2.0.18")]
    cat = parse_catalog(doc(*releases), "m.json")
    assert [str(r.version) for r in cat.releases] == ["1.5.09", "1.5.24", "1.5.16", "2.0.18"]


def test_release_is_immutable_and_hashable() -> None:
    cat = parse_catalog(doc({**GOOD_RELEASE, "x": {"y": 1}}), "m.json")
    r = cat.releases[0]
    with pytest.raises(TypeError):
        r.extra["x"] = 2  # type: ignore[index]
    with pytest.raises(AttributeError):
        r.version = V("1.5.07")  # type: ignore[misc]
    assert hash(r) == hash(Release(r.version, r.min_td_preserving, r.min_seamldr_versions))
    with pytest.raises(TypeError):
        cat.header["Version"] = "2.0"  # type: ignore[index]


def test_feature_bits_are_read_from_tdx_feature0() -> None:
    r = Release(V("1.5.01"), V("1.5.01"), (V("1.5.00"),), tdx_feature0=1 << 47)
    assert (r.update_compat, r.td_preserving) == (True, False)
    r = Release(V("1.5.01"), V("1.5.01"), (V("1.5.00"),), tdx_feature0=0b10)
    assert (r.update_compat, r.td_preserving) == (False, True)


# --- messages, one per failure mode ----------------------------------------------------------

CASES: list[tuple[str, bytes | str, str, str]] = [
    ("top-array", "[]", "mapping-invalid", "m.json: $: expected an object, got an array"),
    ("top-string", '"x"', "mapping-invalid", "m.json: $: expected an object, got a string"),
    ("top-null", "null", "mapping-invalid", "m.json: $: expected an object, got null"),
    (
        "no-header",
        '{"tdx_module_releases": []}',
        "mapping-invalid",
        "m.json: $: missing required field 'Header'",
    ),
    (
        "nothing",
        "{}",
        "mapping-invalid",
        "m.json: $: missing required field 'Header' (and 1 more problem)",
    ),
    (
        "header-version-number",
        doc(header={"Version": 1.0}),
        "mapping-invalid",
        "m.json: $.Header.Version: expected a string, got a number",
    ),
    (
        "header-version-2",
        doc({"junk": True}, header={"Version": "2.0"}),
        "mapping-unsupported",
        "m.json: $.Header.Version: format '2.0' is not supported (tdxupdate reads format 1.x)",
    ),
    (
        "header-version-10",
        doc(header={"Version": "10.0"}),
        "mapping-unsupported",
        "m.json: $.Header.Version: format '10.0' is not supported (tdxupdate reads format 1.x)",
    ),
    (
        "releases-object",
        '{"Header": {"Version": "1.0"}, "tdx_module_releases": {}}',
        "mapping-invalid",
        "m.json: $.tdx_module_releases: expected an array, got an object",
    ),
    (
        "release-not-object",
        doc(GOOD_RELEASE, 7),
        "mapping-invalid",
        "m.json: $.tdx_module_releases[1]: expected an object, got a number",
    ),
    (
        "seamldr-empty",
        doc({**GOOD_RELEASE, "min_seamldr_versions": []}),
        "mapping-invalid",
        "m.json: $.tdx_module_releases[0].min_seamldr_versions: expected at least one entry,"
        " got an empty array",
    ),
    (
        "strict-compat-bool",
        doc({**GOOD_RELEASE, "strict_compat_versions": [True]}),
        "mapping-invalid",
        "m.json: $.tdx_module_releases[0].strict_compat_versions[0]: expected a string,"
        " got a boolean",
    ),
    (
        "feature0-number",
        doc({**GOOD_RELEASE, "tdx_feature0": 2035647}),
        "mapping-invalid",
        "m.json: $.tdx_module_releases[0].tdx_feature0: expected a string, got a number",
    ),
    (
        "feature0-not-hex",
        doc({**GOOD_RELEASE, "tdx_feature0": "1F0FBF"}),
        "mapping-invalid",
        "m.json: $.tdx_module_releases[0].tdx_feature0: '1F0FBF' is not a hexadecimal number"
        " of at most 16 digits like 0x1F0FBF",
    ),
    (
        "feature0-65-bits",
        doc({**GOOD_RELEASE, "tdx_feature0": "0x1" + "0" * 16}),
        "mapping-invalid",
        "m.json: $.tdx_module_releases[0].tdx_feature0: '0x10000000000000000' is not a"
        " hexadecimal number of at most 16 digits like 0x1F0FBF",
    ),
    (
        "feature0-trailing-newline",
        doc({**GOOD_RELEASE, "tdx_feature0": "0x1F\n"}),
        "mapping-invalid",
        "m.json: $.tdx_module_releases[0].tdx_feature0: '0x1F\\n' is not a hexadecimal number"
        " of at most 16 digits like 0x1F0FBF",
    ),
    (
        # Python's `$` matches before a final newline, so the schema lets this through.
        "version-trailing-newline",
        doc({**GOOD_RELEASE, "version": "1.5.06\n"}),
        "mapping-invalid",
        "m.json: $.tdx_module_releases[0].version: '1.5.06\\n' is not a version of the form"
        " major.minor.update",
    ),
    (
        "version-six-digits",
        doc({**GOOD_RELEASE, "version": "1.5.123456"}),
        "mapping-invalid",
        "m.json: $.tdx_module_releases[0].version: '1.5.123456' is not a version of the form"
        " major.minor.update",
    ),
    (
        "version-unicode-digits",
        doc({**GOOD_RELEASE, "version": "1.5.\u0661\u0662"}),
        "mapping-invalid",
        "m.json: $.tdx_module_releases[0].version: '1.5.\u0661\u0662' is not a version of the"
        " form major.minor.update",
    ),
    (
        "long-value-shortened",
        doc({**GOOD_RELEASE, "version": "9" * 100}),
        "mapping-invalid",
        f"m.json: $.tdx_module_releases[0].version: '{'9' * 40}...' is not a version of the"
        " form major.minor.update",
    ),
    (
        "duplicate-exact",
        doc(GOOD_RELEASE, GOOD_RELEASE, GOOD_RELEASE),
        "mapping-invalid",
        "m.json: $.tdx_module_releases[1].version: version 1.5.06 is listed twice"
        " (also at $.tdx_module_releases[0]) (and 1 more problem)",
    ),
    (
        "duplicate-key",
        '{"Header": {"Version": "1.0", "Version": "1.0"}, "tdx_module_releases": []}',
        "mapping-invalid",
        "m.json: $.Header: field 'Version' appears twice",
    ),
    (
        "duplicate-keys",
        '{"a": 1, "b": 2, "a": 3, "b": 4}',
        "mapping-invalid",
        "m.json: $: fields 'a', 'b' appear twice",
    ),
    (
        "odd-key-in-path",
        '{"Header": {"Version": "1.0", "my key": {"": 1, "": 2}}}',
        "mapping-invalid",
        "m.json: $.Header[\"my key\"]: field '' appears twice",
    ),
    (
        "syntax",
        '{"Header": {"Version": "1.0"},\n "tdx_module_releases": [}',
        "mapping-invalid",
        "m.json: line 2, column 26: not valid JSON: expecting value",
    ),
    ("empty", b"", "mapping-invalid", "m.json: empty, not a mapping file"),
    ("blank", " \n\t", "mapping-invalid", "m.json: empty, not a mapping file"),
    (
        "latin1",
        b'{"Header": {"Version": "1.0", "Info": "\xe9"}}',
        "mapping-invalid",
        "m.json: not UTF-8 text (byte 0xe9 at offset 39)",
    ),
    (
        "latin1-after-bom",
        b'\xef\xbb\xbf{"\xff": 1}',
        "mapping-invalid",
        "m.json: not UTF-8 text (byte 0xff at offset 5)",
    ),
    (
        "utf16",
        '{"Header": {}}'.encode("utf-16"),
        "mapping-invalid",
        "m.json: not UTF-8 text (byte 0xff at offset 0)",
    ),
    ("nan", '{"x": NaN}', "mapping-invalid", "m.json: not valid JSON: NaN is not a JSON number"),
    (
        "infinity",
        '{"x": -Infinity}',
        "mapping-invalid",
        "m.json: not valid JSON: -Infinity is not a JSON number",
    ),
    (
        "float-overflow",
        '{"x": 1e999}',
        "mapping-invalid",
        "m.json: not valid JSON: the number 1e999 is out of range",
    ),
    (
        "huge-int",
        '{"x": ' + "9" * 5000 + "}",
        "mapping-invalid",
        "m.json: not valid JSON: a number of 5000 digits is too large",
    ),
    (
        "deep-for-the-decoder",
        # deeper than the decoder's recursion limit, within MAX_CONTAINERS
        "[" * 10_000 + "]" * 10_000,
        "mapping-invalid",
        f"m.json: nested more than {MAX_DEPTH} levels deep",
    ),
    (
        "deep-in-an-unknown-field",
        doc(GOOD_RELEASE, deep=json.loads("[" * 100 + "]" * 100)),
        "mapping-invalid",
        "m.json: $.deep[0][0][0][0][0][0][0]...: nested more than 64 levels deep",
    ),
]


@pytest.mark.parametrize(
    ("data", "code", "message"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_error_message(data: bytes | str, code: str, message: str) -> None:
    err = error_of(data)
    assert (err.code, str(err)) == (code, message)


def test_problems_are_reported_in_document_order_not_schema_order() -> None:
    # tdx_feature0 comes before version in this entry, and release 0 before release 1.
    first = {"tdx_feature0": "bad", **GOOD_RELEASE, "version": "x"}
    second = {"min_seamldr_versions": 5}
    err = error_of(doc(first, second))
    assert str(err) == (
        "m.json: $.tdx_module_releases[0].tdx_feature0: 'bad' is not a hexadecimal number"
        " of at most 16 digits like 0x1F0FBF (and 4 more problems)"
    )
    reordered = {**GOOD_RELEASE, "version": "x", "tdx_feature0": "bad"}
    assert str(error_of(doc(reordered))).startswith(
        "m.json: $.tdx_module_releases[0].version: 'x' is not a version"
    )


def test_missing_fields_are_named_in_schema_order() -> None:
    err = error_of(doc({"extra": 1}))
    assert str(err) == (
        "m.json: $.tdx_module_releases[0]: missing required field 'version' (and 2 more problems)"
    )


def test_bom_is_tolerated_in_bytes_and_text() -> None:
    text = (SAMPLES / "mapping_file.json").read_text(encoding="utf-8")
    assert len(parse_catalog(b"\xef\xbb\xbf" + text.encode(), "m.json").releases) == 20
    assert len(parse_catalog("\ufeff" + text, "m.json").releases) == 20
    assert len(parse_catalog(bytearray(text.encode()), "m.json").releases) == 20


def test_oversized_input_is_refused_before_parsing() -> None:
    data = b" " * (MAX_MAPPING_SIZE + 1)
    assert str(error_of(data)) == "m.json: larger than 1 MiB, not a mapping file"
    assert str(error_of(data.decode())) == "m.json: larger than 1 MiB, not a mapping file"


# --- properties ------------------------------------------------------------------------------

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=30,
)
small_json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3)
    ),
    max_leaves=6,
)
# Each part 1-5 digits, sometimes zero-padded ("1.5.06", "01.5.6"), as Version.parse reads them.
version_part = st.builds(
    lambda n, width: f"{n:0{width}d}", st.integers(0, 99999), st.integers(1, 5)
)
version_text = st.builds(lambda *parts: ".".join(parts), version_part, version_part, version_part)
# Entries that look like releases: known field names with values of any kind.
release_like = st.dictionaries(
    st.sampled_from(sorted(KNOWN_RELEASE_FIELDS)) | st.text(max_size=5),
    json_values | version_text | st.lists(version_text, max_size=3),
    max_size=6,
)
header_like = st.fixed_dictionaries({"Version": st.sampled_from(["1.0", "2.0"]) | json_values})
doc_like = st.fixed_dictionaries(
    {"Header": header_like | json_values},
    optional={"tdx_module_releases": st.lists(release_like | json_values, max_size=4)},
)

LENIENT = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])


def only_catalog_or_data_error(data: bytes | str) -> None:
    result = returned_or_raised(lambda: parse_catalog(data, "fuzz.json"), DataError)
    if isinstance(result, DataError):
        assert result.code in ("mapping-invalid", "mapping-unsupported")
        assert "\n" not in str(result)
        assert str(result).startswith("fuzz.json: ")
        return
    assert isinstance(result, Catalog)


@LENIENT
@given(json_values | doc_like)
def test_any_json_document_gives_a_catalog_or_a_data_error(value: object) -> None:
    only_catalog_or_data_error(json.dumps(value))
    only_catalog_or_data_error(json.dumps(value).encode())


@LENIENT
@given(st.binary(max_size=300))
def test_any_bytes_give_a_catalog_or_a_data_error(data: bytes) -> None:
    only_catalog_or_data_error(data)


@LENIENT
@given(st.data())
def test_any_corruption_of_intel_file_gives_a_catalog_or_a_data_error(data: st.DataObject) -> None:
    raw = bytearray((SAMPLES / "mapping_file.json").read_bytes())
    for _ in range(data.draw(st.integers(1, 4))):
        pos = data.draw(st.integers(0, len(raw) - 1))
        if data.draw(st.booleans()):
            raw[pos] = data.draw(st.integers(0, 255))
        else:
            del raw[pos]
    only_catalog_or_data_error(bytes(raw))


def hex_text(n: int, upper: bool, prefix: str) -> str:
    digits = f"{n:X}" if upper else f"{n:x}"
    return prefix + digits


# Any 64-bit TDX_FEATURES0, drawn bit by bit so bits 1 and 47 are each set in about half the cases.
feature_bits = st.frozensets(st.integers(0, 63)).map(lambda bits: sum(1 << b for b in bits))

valid_release = st.fixed_dictionaries(
    {
        "version": version_text,
        "min_module_version_for_td_preserving": version_text,
        "min_seamldr_versions": st.lists(version_text, min_size=1, max_size=3),
    },
    optional={
        "tdx_feature0": st.builds(
            hex_text, feature_bits, st.booleans(), st.sampled_from(["0x", "0X"])
        ),
        "strict_compat_versions": st.lists(version_text, max_size=3),
        "future_field": small_json_values,
        "tdx_feature1": small_json_values,
    },
)


@LENIENT
@given(
    st.lists(valid_release, max_size=6, unique_by=lambda r: Version.parse(str(r["version"]))),
    st.dictionaries(st.text(max_size=8), small_json_values, max_size=3),
)
def test_valid_release_lists_round_trip(
    releases: list[dict[str, Any]], header_extra: dict[str, Any]
) -> None:
    header = {**header_extra, "Version": "1.0"}
    cat = parse_catalog(json.dumps({"Header": header, "tdx_module_releases": releases}), "r")
    assert cat.header == header
    assert len(cat.releases) == len(releases)
    for entry, release in zip(releases, cat.releases, strict=True):
        assert release.version == Version.parse(entry["version"])
        assert cat.get(release.version) is release
        assert release.min_td_preserving == Version.parse(
            entry["min_module_version_for_td_preserving"]
        )
        assert release.min_seamldr_versions == tuple(
            Version.parse(v) for v in entry["min_seamldr_versions"]
        )
        if "strict_compat_versions" in entry:
            expected = tuple(Version.parse(v) for v in entry["strict_compat_versions"])
            assert release.strict_compat_versions == expected
        else:
            assert release.strict_compat_versions is None
        if "tdx_feature0" in entry:
            value = int(entry["tdx_feature0"][2:], 16)
            assert release.tdx_feature0 == value
            assert release.update_compat == bool(value & (1 << 47))
            assert release.td_preserving == bool(value & 0b10)
        else:
            assert release.tdx_feature0 is None
            assert release.update_compat is None
        assert dict(release.extra) == {
            k: v for k, v in entry.items() if k not in KNOWN_RELEASE_FIELDS
        }


# --- packaging and start-up cost -------------------------------------------------------------


def test_import_does_not_load_jsonschema() -> None:
    code = "import tdxupdate.catalog, sys; assert 'jsonschema' not in sys.modules"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_mapping_schema_is_valid_draft7() -> None:
    import jsonschema

    schema = load_schema("mapping")
    jsonschema.Draft7Validator.check_schema(schema)
    assert schema["$schema"] == "http://json-schema.org/draft-07/schema#"
    assert load_schema("mapping.schema.json") == schema


def test_load_schema_returns_independent_copies() -> None:
    first = load_schema("mapping")
    first["required"].append("mutated")
    assert "mutated" not in load_schema("mapping")["required"]


@pytest.mark.parametrize("name", ["../catalog.py", "nope", ".hidden.json"])
def test_load_schema_refuses_unknown_names(name: str) -> None:
    with pytest.raises((ValueError, FileNotFoundError)):
        load_schema(name)
