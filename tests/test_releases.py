"""tdxupdate/releases.py: the table of Intel's published releases and its parser."""

import itertools
from types import MappingProxyType
from typing import Any

import pytest

from tdxupdate import imagecheck, releases
from tdxupdate.versions import Version

SIGNER = "AB" * 32
FULL = "0123456789ABCDEF" * 6  # 96 hex digits


def _doc(*items: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"signer": SIGNER, "releases": list(items), **extra}


def _item(version: str, seamsvn: str, mrseam: str = "deadbeef") -> dict[str, Any]:
    return {"version": version, "seamsvn": seamsvn, "mrseam": mrseam}


def v(text: str) -> Version:
    return Version.parse(text)


def test_parse_normalises_case_and_reads_seamsvn_as_hex() -> None:
    table = releases.parse_table(
        _doc(_item("1.5.06", "0x0106", FULL), _item("2.0.01", "0300"), source="notes")
    )
    assert table.signer == SIGNER.lower()
    assert table.source == "notes"
    assert table.get(v("1.5.06")) == releases.PublishedRelease(v("1.5.06"), 0x0106, FULL.lower())
    release = table.get(v("2.0.01"))
    assert release is not None
    assert release.seamsvn == 0x0300
    assert table.get(v("1.5.07")) is None
    assert isinstance(table.releases, MappingProxyType)  # read-only
    assert releases.parse_table(_doc()).source == ""


@pytest.mark.parametrize("doc", [[], "x", {"signer": SIGNER}, {"signer": SIGNER, "releases": {}}])
def test_parse_refuses_a_document_without_a_releases_list(doc: object) -> None:
    with pytest.raises(ValueError, match="an object with a 'releases' list"):
        releases.parse_table(doc)


@pytest.mark.parametrize("mrseam", ["deadbee", "deadbeeg", "dead beef", ""])
def test_parse_refuses_an_mrseam_that_is_not_8_or_more_hex_digits(mrseam: str) -> None:
    with pytest.raises(ValueError, match=r"^1\.5\.06: MRSEAM .* is not 8 or more hex digits$"):
        releases.parse_table(_doc(_item("1.5.06", "0106", mrseam)))


def test_parse_refuses_a_version_twice() -> None:
    with pytest.raises(ValueError, match="appears twice"):
        releases.parse_table(_doc(_item("1.5.06", "0106"), _item("1.5.6", "0107")))


def test_mrseam_matches_a_prefix_in_any_case() -> None:
    prefix = releases.PublishedRelease(v("1.5.06"), 0x0106, "deadbeef")
    assert prefix.mrseam_matches("DEADBEEF" + "0" * 88)
    assert prefix.mrseam_matches("deadbeef")
    assert not prefix.mrseam_matches("deadbee")
    assert not prefix.mrseam_matches("0" + "deadbeef")
    full = releases.PublishedRelease(v("1.5.06"), 0x0106, FULL.lower())
    assert full.mrseam_matches(FULL)
    assert not full.mrseam_matches(FULL[:-1] + "0")


def test_seamsvn_floor() -> None:
    table = releases.parse_table(
        _doc(
            _item("1.5.03", "0105"),
            _item("1.5.06", "0106"),
            _item("1.5.09", "0108"),
            _item("2.0.01", "0300"),
        )
    )
    assert table.seamsvn_floor(v("1.5.06")) == 0x0106  # its own
    assert table.seamsvn_floor(v("1.5.07")) == 0x0106  # the newest before it
    assert table.seamsvn_floor(v("1.5.20")) == 0x0108
    assert table.seamsvn_floor(v("1.5.01")) is None  # nothing before it
    assert table.seamsvn_floor(v("2.0.00")) is None  # 1.5.x does not count for 2.0
    assert table.seamsvn_floor(v("2.0.07")) == 0x0300
    assert table.seamsvn_floor(v("1.6.01")) is None


def test_intels_table_is_loaded_once_and_is_well_formed() -> None:
    table = releases.intel_releases()
    assert releases.intel_releases() is table
    assert table.signer == imagecheck.INTEL_PRODUCTION_SIGNER
    assert table.source
    for version, release in table.releases.items():
        assert release.version == version
        assert len(release.mrseam) in (8, 96), version


def test_intels_seamsvn_never_goes_down_within_a_stream() -> None:
    """What :meth:`ReleaseTable.seamsvn_floor` relies on."""
    table = releases.intel_releases()
    ordered = sorted(table.releases.values(), key=lambda r: r.version)
    for older, newer in itertools.pairwise(ordered):
        if older.version.stream == newer.version.stream:
            assert newer.seamsvn >= older.seamsvn, (older.version, newer.version)


def test_package_data_reads_a_shipped_file() -> None:
    assert releases.package_data("data/intel-releases.json").startswith(b"{")
