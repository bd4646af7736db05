"""The mapping loader's bounds (issue 9 item 14): size, structure, memory.

A mapping file comes from a repository directory or a mirror, both of which may be hostile.
Intel's file is 5.5 KiB; the loader refuses anything far beyond what such a file can hold
before it builds it, with one ``mapping-invalid`` (65) line naming the file and the bound, and
what it does build stays within a small multiple of the bytes read.
"""

from __future__ import annotations

import contextlib
import json
import sys
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme
from factories.hosts import build_host_tree
from factories.httpserver import MirrorServer, ca_bundle
from factories.images import make_image, mapping_document
from fuzz.shapes import WORST_CASES, worst_case

from tdxupdate.catalog import (
    MAX_CONTAINERS,
    MAX_MAPPING_SIZE,
    MAX_STRING,
    MAX_VALUES,
    parse_catalog,
)
from tdxupdate.cli import main
from tdxupdate.errors import DataError, TdxError
from tdxupdate.sources import mirror as _mirror
from tdxupdate.sources.http import Tuning
from tdxupdate.sources.local import load_catalog
from tdxupdate.sources.mirror import MirrorOptions, open_remote

SAMPLES = Path(__file__).resolve().parent.parent / "mapping_samples"
REAL = (SAMPLES / "mapping_file.json").read_bytes()
HEADER = '{"Header": {"Version": "1.0"}, "tdx_module_releases": []'


def error_of(data: bytes | str, source: str = "m.json") -> DataError:
    with pytest.raises(DataError) as info:
        parse_catalog(data, source)
    assert (info.value.code, info.value.exit_code) == ("mapping-invalid", 65)
    return info.value


def padded(size: int) -> bytes:
    """Intel's file followed by spaces: valid, exactly ``size`` bytes."""
    return REAL + b" " * (size - len(REAL))


def with_extra(items: str) -> str:
    return HEADER + ', "x": [' + items + "]}"


@pytest.fixture
def no_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the JSON decoder unusable: a bound checked before parsing never reaches it."""

    def refuse(*args: object, **kwargs: object) -> object:
        raise AssertionError("the JSON decoder ran")

    monkeypatch.setattr(json, "loads", refuse)


# --- size --------------------------------------------------------------------------------------


def test_the_cap_fits_what_a_mapping_file_holds() -> None:
    # Intel's file is 5.5 KiB: the cap leaves room for ~190 times as many releases, no more.
    assert 64 * len(REAL) < MAX_MAPPING_SIZE <= 1024 * 1024


def test_a_file_at_the_cap_is_read_and_one_byte_more_is_not(tmp_path: Path) -> None:
    at_cap = tmp_path / "at-cap.json"
    at_cap.write_bytes(padded(MAX_MAPPING_SIZE))
    assert len(load_catalog(at_cap).releases) == 20
    over = tmp_path / "over.json"
    over.write_bytes(padded(MAX_MAPPING_SIZE + 1))
    with pytest.raises(DataError) as info:
        load_catalog(over)
    assert str(info.value) == f"{over}: larger than 1 MiB, not a mapping file"


@pytest.mark.network
def test_a_mirror_is_held_to_the_same_cap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "NO_PROXY", "REQUESTS_CA_BUNDLE"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    # the catalog module as the mirror imported it (a private name: read from its globals)
    assert vars(_mirror)["_catalog"].MAX_MAPPING_SIZE == MAX_MAPPING_SIZE
    ca = trustme.CA()
    with MirrorServer(tls=ca) as mirror:
        mirror.put_repo({"1.5.06": make_image("1.5.06", module_pages=2)})
        doc = json.dumps(mapping_document(["1.5.06"])).encode()
        mirror.put("/mapping_file.json", doc + b" " * (MAX_MAPPING_SIZE + 1 - len(doc)))
        repo = open_remote(
            mirror.url,
            None,
            MirrorOptions(
                cache_dir=tmp_path / "cache",
                ca_bundle=ca_bundle(ca, tmp_path),
                tuning=Tuning(connect_timeout=5, read_timeout=5, retries=0, sleep=lambda s: None),
            ),
        )
        with repo, pytest.raises(TdxError) as info:
            repo.catalog()
    assert info.value.code == "network-error"
    assert str(info.value).endswith(
        f"larger than the largest mapping file ({MAX_MAPPING_SIZE} bytes)"
    )


# --- structure, counted before parsing ----------------------------------------------------------


def test_arrays_and_objects_beyond_the_bound_are_refused_before_parsing(
    no_decoding: None,
) -> None:
    # 3 containers in the skeleton (the document, Header, the releases) and the "x" array.
    text = with_extra(",".join(["{}"] * (MAX_CONTAINERS - 3)))
    err = error_of(text)
    assert str(err) == (
        f"m.json: more than {MAX_CONTAINERS} arrays and objects ({MAX_CONTAINERS + 1}), "
        "not a mapping file"
    )


def test_arrays_and_objects_at_the_bound_are_parsed() -> None:
    text = with_extra(",".join(["[]"] * (MAX_CONTAINERS - 4)))
    assert parse_catalog(text, "m.json").releases == ()


def test_values_beyond_the_bound_are_refused_before_parsing(no_decoding: None) -> None:
    # Values are counted as commas + containers + 1: the skeleton has 2 commas and 4 containers,
    # n numbers add n - 1 commas.
    text = with_extra(",".join(["0"] * (MAX_VALUES - 5)))
    assert str(error_of(text)) == (
        f"m.json: more than {MAX_VALUES} values ({MAX_VALUES + 1}), not a mapping file"
    )


def test_values_at_the_bound_are_parsed() -> None:
    assert parse_catalog(with_extra(",".join(["0"] * (MAX_VALUES - 6))), "m.json").releases == ()


def test_brackets_and_commas_inside_strings_are_not_counted() -> None:
    noise = json.dumps("[{,}]" * (MAX_STRING // 5))
    text = with_extra(",".join([noise] * 200))
    assert len(text) < MAX_MAPPING_SIZE
    assert text.count("[") > MAX_CONTAINERS
    assert parse_catalog(text, "m.json").releases == ()


@pytest.mark.parametrize(
    "text",
    [
        '"' + '\\"' * 300_000,  # an unterminated string of escaped quotes
        '["' * 300_000,  # unterminated strings, each opening another array
        '"\\' * 300_000,
    ],
    ids=["escaped-quotes", "open-strings", "backslashes"],
)
def test_unterminated_strings_are_refused_as_json(text: str) -> None:
    assert "not valid JSON" in str(error_of(text)) or "more than" in str(error_of(text))


def test_an_overlong_string_is_refused_at_its_path() -> None:
    text = '{"Header": {"Version": "1.0"}, "tdx_module_releases": [], "Info": '
    text += json.dumps("i" * (MAX_STRING + 1)) + "}"
    assert str(error_of(text)) == (
        f"m.json: $.Info: a string of {MAX_STRING + 1} characters (at most {MAX_STRING})"
    )
    assert parse_catalog(text.replace("i" * (MAX_STRING + 1), "i" * MAX_STRING), "m").releases == ()


def test_an_overlong_field_name_is_refused_at_its_object() -> None:
    text = '{"Header": {"Version": "1.0", ' + json.dumps("k" * 5000) + ": 1}}"
    assert str(error_of(text)) == (
        f"m.json: $.Header: a field name of 5000 characters (at most {MAX_STRING})"
    )


def test_huge_integers_are_refused_even_without_pythons_own_limit() -> None:
    before = sys.get_int_max_str_digits()
    sys.set_int_max_str_digits(0)
    try:
        err = error_of(with_extra("9" * 5000))
    finally:
        sys.set_int_max_str_digits(before)
    assert str(err) == "m.json: not valid JSON: a number of 5000 digits is too large"


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_numbers_are_refused(constant: str) -> None:
    assert str(error_of(with_extra(constant))) == (
        f"m.json: not valid JSON: {constant} is not a JSON number"
    )


def test_the_cli_prints_one_line_and_exits_65(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    build_host_tree(tmp_path / "host")
    path = tmp_path / "mapping_file.json"
    path.write_text(with_extra(",".join(["[]"] * MAX_CONTAINERS)))
    args = ["--list", "--sysroot", tmp_path / "host", "--repo", tmp_path, "--mapping", path]
    code = main([str(a) for a in args])
    err = capsys.readouterr().err.splitlines()
    assert code == 65
    assert err == [
        f"tdxupdate: {path}: more than {MAX_CONTAINERS} arrays and objects "
        f"({MAX_CONTAINERS + 4}), not a mapping file"
    ]


# --- memory: proportional to the cap ------------------------------------------------------------


@pytest.fixture
def traced() -> Iterator[None]:
    parse_catalog(REAL, "warm-up")  # jsonschema's import and the compiled schema are not per file
    tracemalloc.start()
    yield
    tracemalloc.stop()


def peak_parsing(data: bytes) -> int:
    tracemalloc.reset_peak()
    before = tracemalloc.get_traced_memory()[0]
    with contextlib.suppress(DataError):
        parse_catalog(data, "m.json")
    return tracemalloc.get_traced_memory()[1] - before


@pytest.mark.parametrize("shape", list(WORST_CASES))
def test_memory_stays_proportional_to_the_cap(traced: None, shape: str) -> None:
    # The costliest documents the bounds let through build ~20 bytes of objects per byte
    # (bench/run.py mapping); 16 MiB of `{}` releases cost main about 6 GiB.
    data = worst_case(shape)
    assert len(data) > MAX_MAPPING_SIZE * 0.99
    assert peak_parsing(data) < 32 * MAX_MAPPING_SIZE


def test_a_hostile_file_at_the_cap_is_refused_in_a_few_times_its_size(traced: None) -> None:
    head = '{"Header":{"Version":"1.0"},"tdx_module_releases":['
    count = (MAX_MAPPING_SIZE - len(head) - 2) // 3
    data = (head + ",".join(["{}"] * count) + "]}").encode()
    assert peak_parsing(data) < 4 * MAX_MAPPING_SIZE
