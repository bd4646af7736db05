"""tdxupdate/keyring.py: parsing and loading --trusted-keys files (the file's owner and mode
rules are in tests/test_trustedfile.py)."""

import errno
from pathlib import Path

import pytest

from tdxupdate import keyring, trustedfile
from tdxupdate.errors import DataError, NotFound, PermissionDenied
from tdxupdate.imagecheck import INTEL_PRODUCTION_SIGNER

A = "a" * 64
B = "0123456789abcdef" * 4


def test_comments_blank_lines_case_and_duplicates() -> None:
    text = (
        "# trusted signers\n"
        "\n"
        f"  {A.upper()}  \n"
        f"{B}   # the lab key\n"
        "\t# indented comment\n"
        f"{B.upper()}\r\n"
        "   \n"
    )
    assert keyring.parse_trusted_keys(text, "keys") == frozenset({A, B})


def test_an_empty_file_trusts_nobody_extra() -> None:
    assert keyring.parse_trusted_keys("", "keys") == frozenset()
    assert keyring.parse_trusted_keys("# nothing yet\n", "keys") == frozenset()


@pytest.mark.parametrize(
    "bad",
    [
        "a" * 63,
        "a" * 65,
        "g" * 64,
        "aaaa " * 16,  # a fingerprint with spaces in it
        "sha256:" + A,
    ],
)
def test_a_bad_line_is_named_with_its_number(bad: str) -> None:
    text = f"# header\n{A}\n{bad}\n"
    with pytest.raises(DataError) as caught:
        keyring.parse_trusted_keys(text, "/etc/keys")
    assert caught.value.code == "trusted-keys-invalid"
    assert caught.value.exit_code == 65
    assert caught.value.message == (
        f"/etc/keys:3: {bad.strip()!r} is not a SHA-256 fingerprint (64 hex digits)"
    )


def test_a_long_bad_line_is_cut_to_80_characters() -> None:
    bad = "z" * 200
    with pytest.raises(DataError) as caught:
        keyring.parse_trusted_keys(bad, "k")
    shown = "z" * 77 + "..."
    assert caught.value.message == f"k:1: {shown!r} is not a SHA-256 fingerprint (64 hex digits)"


def _keys(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / "keys.txt"
    path.write_bytes(data)
    path.chmod(0o644)
    return path


def test_load_reads_a_file(tmp_path: Path) -> None:
    path = _keys(tmp_path, f"{A}\n# c\n{B.upper()}\n".encode())
    assert keyring.load_trusted_keys(path) == frozenset({A, B})


def test_load_of_a_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "absent"
    with pytest.raises(NotFound) as caught:
        keyring.load_trusted_keys(path)
    assert (caught.value.code, caught.value.exit_code) == ("trusted-keys-not-found", 66)
    assert caught.value.message == f"{path}: trusted keys file does not exist"


def test_load_of_a_directory(tmp_path: Path) -> None:
    with pytest.raises(DataError) as caught:
        keyring.load_trusted_keys(tmp_path)
    assert caught.value.code == "trusted-keys-invalid"
    assert caught.value.message == f"{tmp_path}: is a directory, not a trusted keys file"


def test_load_of_a_file_that_is_not_utf8(tmp_path: Path) -> None:
    path = _keys(tmp_path, b"\xff\xfe" + A.encode())
    with pytest.raises(DataError) as caught:
        keyring.load_trusted_keys(path)
    assert caught.value.code == "trusted-keys-invalid"
    assert caught.value.message == f"{path}: not UTF-8 text"


def test_a_bad_line_in_a_file_names_the_file(tmp_path: Path) -> None:
    path = _keys(tmp_path, b"nope\n")
    with pytest.raises(DataError, match=rf"^{tmp_path}/keys.txt:1: 'nope' is not"):
        keyring.load_trusted_keys(path)


def test_an_unreadable_file_is_permission_denied(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def denied(path: Path, _limit: int) -> object:
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr(trustedfile, "read_capped", denied)
    path = tmp_path / "keys.txt"
    with pytest.raises(PermissionDenied) as caught:
        keyring.load_trusted_keys(path)
    assert caught.value.exit_code == 77
    assert caught.value.message == f"{path}: permission denied (run as root)"


def test_intels_signer_is_always_trusted(tmp_path: Path) -> None:
    assert keyring.trusted_signers() == frozenset({INTEL_PRODUCTION_SIGNER})
    one = _keys(tmp_path, f"{A}\n".encode())
    other = tmp_path / "more.txt"
    other.write_text(f"{B}\n{A}\n")
    other.chmod(0o600)
    assert keyring.trusted_signers([one, other], extra=frozenset({"c" * 64})) == frozenset(
        {INTEL_PRODUCTION_SIGNER, A, B, "c" * 64}
    )


def test_one_bad_file_fails_the_whole_set(tmp_path: Path) -> None:
    good = _keys(tmp_path, f"{A}\n".encode())
    with pytest.raises(NotFound):
        keyring.trusted_signers([good, tmp_path / "absent"])
