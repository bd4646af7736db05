"""Fuzz target: the configuration loader (tdxupdate.config) on random files.

Inputs: random bytes, random text, and TOML built from the real keys (and refused, misspelt
and unknown ones) with values of every TOML type, deeply nested arrays and inline tables
among them. Each is written to a file and read with ``load_config``, as the CLI does.
Invariant: a dict of settings, or a ConfigError ``config-invalid`` (78) whose message is one
line naming the file; no KeyError, ValueError, UnicodeDecodeError or RecursionError escapes.
"""

from __future__ import annotations

import datetime
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from factories.outcome import returned_or_raised
from hypothesis import given
from hypothesis import strategies as st

from fuzz.budget import budget
from tdxupdate.config import KEYS, REFUSED, load_config
from tdxupdate.errors import TdxError

pytestmark = pytest.mark.fuzz

NAMES = sorted(KEYS) + sorted(REFUSED) + ["repository", "keys", "Timeout", "repo.x", '"repo"']


def _basic_string(text: str) -> str:
    return json.dumps(text)  # a valid TOML basic string for every text without surrogates


toml_scalars = (
    st.text(max_size=30).map(_basic_string)
    | st.sampled_from(['"/srv/tdx"', '"https://mirror.example/tdx/"', '"file:///srv/tdx"'])
    | st.sampled_from(['"https://[::1/x"', '"http://h:99999/"', '"auto"', '"0x100"', '"0x200"'])
    | st.integers().map(str)
    | st.floats().map(lambda f: {"nan": "nan", "inf": "inf", "-inf": "-inf"}.get(repr(f), repr(f)))
    | st.booleans().map(lambda b: "true" if b else "false")
    | st.datetimes(timezones=st.none() | st.just(datetime.UTC)).map(lambda d: d.isoformat())
    | st.sampled_from(["'lit'", "'''multi\nline'''", '"""a\\\nb"""', "0x1F", "0o7", "1_000"])
)
toml_values = st.recursive(
    toml_scalars,
    lambda inner: (
        st.lists(inner, max_size=3).map(lambda xs: "[" + ", ".join(xs) + "]")
        | st.dictionaries(st.sampled_from([*NAMES[:6], "a", "b"]), inner, max_size=3).map(
            lambda d: "{" + ", ".join(f"{k} = {v}" for k, v in d.items()) + "}"
        )
    ),
    max_leaves=8,
)


@st.composite
def toml_documents(draw: st.DrawFn) -> str:
    lines = []
    for _ in range(draw(st.integers(0, 6))):
        key = draw(st.sampled_from(NAMES) | st.text(max_size=6))
        if draw(st.integers(0, 9)) == 0:
            depth = draw(st.integers(1, 40_000))
            opener = draw(st.sampled_from(["[", "{a = "]))
            closer = "]" if opener == "[" else "}"
            lines.append(f"{key} = {opener * depth}1{closer * depth}")
        elif draw(st.integers(0, 9)) == 0:
            lines.append(draw(st.sampled_from(["[section]", "[[array]]", "# comment", ""])))
        else:
            lines.append(f"{key} = {draw(toml_values)}")
    sep = draw(st.sampled_from(["\n", "\r\n", "\r"]))
    return sep.join(lines)


@pytest.fixture(scope="module")
def workdir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory() as tmp:
        yield Path(tmp)


def check(workdir: Path, data: bytes) -> None:
    path = workdir / "tdxupdate.conf"
    path.write_bytes(data)
    os.chmod(path, 0o600)
    values = returned_or_raised(lambda: load_config(path, required=True), TdxError)
    if isinstance(values, TdxError):
        assert (values.code, values.exit_code) == ("config-invalid", 78), values
        message = str(values)
        assert message.startswith(str(path)), message
        assert len(message.splitlines()) == 1, message
    else:
        assert isinstance(values, dict)
        assert set(values) <= set(KEYS)


@given(toml_documents())
@budget(brief=60, long=5000)
def test_toml_built_from_the_real_keys(workdir: Path, text: str) -> None:
    check(workdir, text.encode())


@given(st.text(max_size=300))
@budget(brief=30, long=3000)
def test_random_text(workdir: Path, text: str) -> None:
    check(workdir, text.encode("utf-8", "surrogatepass"))


@given(st.binary(max_size=300))
@budget(brief=30, long=3000)
def test_random_bytes(workdir: Path, data: bytes) -> None:
    check(workdir, data)


@pytest.mark.parametrize("opener", ["[", "{a = "])
def test_nesting_deeper_than_the_parser_recurses_is_config_invalid(
    workdir: Path, opener: str
) -> None:
    # Found by test_toml_built_from_the_real_keys: tomllib's RecursionError escaped.
    closer = "]" if opener == "[" else "}"
    path = workdir / "deep.conf"
    path.write_text(f"repo = {opener * 5000}1{closer * 5000}\n")
    with pytest.raises(TdxError) as info:
        load_config(path, required=True)
    assert (info.value.code, info.value.exit_code) == ("config-invalid", 78)
    assert str(info.value) == f"{path}: invalid TOML: arrays or tables nested too deep"


@pytest.mark.parametrize("value", ["'''multi\nline'''", '"a\\u2028b"', '"tab\\there"'])
def test_a_quoted_value_keeps_the_message_on_one_line(workdir: Path, value: str) -> None:
    # Found by test_toml_built_from_the_real_keys: "got ..." quoted a newline as is.
    path = workdir / "lines.conf"
    path.write_text(f"offline = {value}\n")
    with pytest.raises(TdxError) as info:
        load_config(path, required=True)
    assert len(str(info.value).splitlines()) == 1
    assert str(info.value).startswith(f'{path}:1: offline: expected true or false, got "')
