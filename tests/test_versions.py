"""tdxupdate.versions: parsing, and the memo of parsed texts a large mapping file leans on."""

from __future__ import annotations

import pytest

from tdxupdate import versions
from tdxupdate.versions import Version


def test_parse_normalises_and_repeats_give_the_same_value() -> None:
    for _ in range(3):
        assert Version.parse("1.5.06") == Version(1, 5, 6)
        assert Version.parse(" 1.5.6\n") == Version(1, 5, 6)
        assert str(Version.parse("2.0.0")) == "2.0.00"


@pytest.mark.parametrize("text", ["1.5", "1.5.x", "", "  ", "1.5.06.1", "123456.0.0"])
def test_invalid_text_raises_every_time(text: str) -> None:
    for _ in range(2):
        with pytest.raises(ValueError, match="is not a version of the form"):
            Version.parse(text)
    assert text not in versions._PARSED


def test_a_non_string_is_refused_before_the_memo() -> None:
    with pytest.raises(ValueError, match="expected a version string, got int"):
        Version.parse(106)  # type: ignore[arg-type]


def test_the_memo_stays_bounded() -> None:
    for update in range(versions._PARSED_LIMIT + 10):
        assert Version.parse(f"9.{update // 100}.{update % 100}") == Version(
            9, update // 100, update % 100
        )
    assert len(versions._PARSED) <= versions._PARSED_LIMIT
    assert Version.parse("1.5.06") == Version(1, 5, 6)
