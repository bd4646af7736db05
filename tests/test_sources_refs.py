"""tdxupdate/sources/refs.py: the repository layout and telling paths from URLs."""

from pathlib import Path

import pytest

from tdxupdate.errors import UsageError
from tdxupdate.sources import refs
from tdxupdate.versions import Version


def test_blob_relpath_is_intels_layout() -> None:
    version = Version.parse("1.5.6")
    relpath = refs.blob_relpath(version)
    assert relpath == f"joined_files/1.5/tdx_module_{version}.blob"
    directory, name = relpath.rsplit("/", 1)
    assert directory == "joined_files/1.5"
    match = refs.BLOB_RE.match(name)
    assert match is not None
    assert Version.parse(match.group(1)) == version


@pytest.mark.parametrize(
    "name",
    [
        "tdx_module_1.5.blob",
        "tdx_module_1.5.6.blob.sig",
        "xtdx_module_1.5.6.blob",
        "tdx_module_1.5.6a.blob",
        "tdx_module_1.5.6.bin",
    ],
)
def test_blob_re_refuses_other_names(name: str) -> None:
    assert refs.BLOB_RE.match(name) is None


def test_mapping_name() -> None:
    assert refs.MAPPING_NAME == "mapping_file.json"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("https://example.test/repo", True),
        ("file:///srv/repo", True),
        ("HTTP://example.test", True),
        ("git+ssh://example.test/x", True),
        ("/srv/repo", False),
        ("repo", False),
        ("file:/srv/repo", False),  # no "//": a path with a colon in it
        ("1http://x", False),  # a scheme starts with a letter
        ("C:\\repo", False),
    ],
)
def test_is_url(text: str, expected: bool) -> None:
    assert refs.is_url(text) is expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("/srv/repo", Path("/srv/repo")),
        ("relative/repo", Path("relative/repo")),
        ("file:///srv/repo", Path("/srv/repo")),
        ("file:///srv/my%20repo", Path("/srv/my repo")),
        ("FILE:///srv/repo", Path("/srv/repo")),
        ("file://localhost/srv/repo", Path("/srv/repo")),
    ],
)
def test_local_path_of_a_path_or_file_url(text: str, expected: Path) -> None:
    assert refs.local_path(text) == expected


@pytest.mark.parametrize("text", ["https://example.test/repo", "http://[::1/x", "ftp://h/r"])
def test_local_path_of_another_url_is_none(text: str) -> None:
    assert refs.local_path(text) is None


def test_a_malformed_file_url_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match=r"^file://\[::1/x: malformed URL \(") as caught:
        refs.local_path("file://[::1/x")
    assert caught.value.exit_code == 64


def test_a_file_url_naming_another_host_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match=r"^file://mirror/srv/repo: a file URL names this host"):
        refs.local_path("file://mirror/srv/repo")


def test_image_ref_is_a_frozen_value() -> None:
    a = refs.ImageRef(Version.parse("1.5.6"), "/r/x.blob")
    assert a == refs.ImageRef(Version.parse("1.5.6"), "/r/x.blob")
    assert hash(a) == hash(refs.ImageRef(Version.parse("1.5.6"), "/r/x.blob"))
    with pytest.raises(AttributeError):
        a.location = "elsewhere"  # type: ignore[misc]
