"""tdxupdate/readonly.py: --verify's per-image verdicts and exit precedence, and --history's
skipped lines (the whole actions run against the emulator in tests/test_cli*.py)."""

from pathlib import Path
from typing import Any

import pytest

from tdxupdate import imagecheck, readonly
from tdxupdate import inventory as _inv
from tdxupdate.errors import InvalidImage, TdxError
from tdxupdate.report import Report
from tdxupdate.settings import Settings
from tdxupdate.sources import ImageRef
from tdxupdate.versions import Version


def _v(text: str) -> Version:
    return Version.parse(text)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("tdx_module_1.5.06.blob", "1.5.06"),
        ("tdx_module_2.0.5.blob", "2.0.05"),
        ("module.blob", None),
        ("tdx_module_1.5.06.blob.bak", None),
    ],
)
def test_version_from_filename(name: str, expected: str | None) -> None:
    got = readonly.version_from_filename(Path("/r/joined_files/x") / name)
    assert (None if got is None else str(got)) == expected


def test_an_unread_image_fails_its_container_check_and_skips_the_rest() -> None:
    v = readonly._unread("HTTP 404")
    assert not v.ok
    assert v.info is None
    assert [c.name for c in v.checks] == list(imagecheck.CHECK_NAMES)
    assert (v.checks[0].ok, v.checks[0].detail) == (False, "HTTP 404")
    for c in v.checks[1:]:
        assert (c.ok, c.detail) == (False, "not checked: the image could not be read")


class FakeRepo:
    """A repository whose images' reads return or raise what the test says."""

    location = "https://mirror.example.test/repo"

    def __init__(self, reads: dict[str, Any]) -> None:
        self.reads = reads
        self.admitted: list[str] = []
        self.warnings = [("insecure-http", "plain HTTP")]

    def catalog(self) -> None:
        return None

    def images(self, _catalog: object) -> dict[Version, ImageRef]:
        return {_v(k): ImageRef(_v(k), f"{self.location}/{k}.blob") for k in self.reads}

    def read(self, ref: ImageRef) -> bytes:
        what = self.reads[str(ref.version)]
        if isinstance(what, BaseException):
            raise what
        assert isinstance(what, bytes)
        return what

    def admit(self, ref: ImageRef, _verified: object) -> bool:
        self.admitted.append(str(ref.version))
        return False


def _verify(monkeypatch: pytest.MonkeyPatch, repo: FakeRepo) -> tuple[Report, TdxError | None]:
    monkeypatch.setattr(_inv, "open_repo", lambda _settings: repo)
    report = Report(action="verify")
    try:
        readonly.run_verify(Settings(action="verify"), report)
    except TdxError as exc:
        return report, exc
    return report, None


def test_verify_goes_on_past_unreadable_images_and_a_bad_image_decides_the_exit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    repo = FakeRepo(
        {
            "1.5.06": TdxError("1.5.06: HTTP 404", code="image-not-found"),
            "1.5.07": b"not an image",
            "1.5.08": TdxError("1.5.08: connection refused", code="network-error"),
        }
    )
    report, error = _verify(monkeypatch, repo)
    assert error is not None
    assert error.code == "image-invalid"  # the bytes are bad: never hidden by the others
    loc = repo.location
    assert error.message == (
        f"3 of 3 image(s) failed verification: {loc}/1.5.08.blob (not fetched), "
        f"{loc}/1.5.07.blob, {loc}/1.5.06.blob (not found)"
    )
    assert report.images is not None
    assert [i.version for i in report.images] == ["1.5.08", "1.5.07", "1.5.06"]  # newest first
    assert [i.ok for i in report.images] == [False, False, False]
    assert report.images[0].checks[0]["detail"] == "1.5.08: connection refused"
    assert repo.admitted == ["1.5.07"]  # only what was read is offered to the cache
    assert report.warnings == ["insecure-http"]


def test_verify_a_fetch_failure_wins_over_a_missing_image(monkeypatch: pytest.MonkeyPatch) -> None:
    repo = FakeRepo(
        {
            "1.5.06": TdxError("gone", code="image-not-found"),
            "1.5.07": TdxError("eof", code="network-error"),
        }
    )
    _report, error = _verify(monkeypatch, repo)
    assert error is not None
    assert (error.code, error.exit_code) == ("network-error", 74)
    only_missing = FakeRepo({"1.5.06": TdxError("gone", code="image-not-found")})
    _report, error = _verify(monkeypatch, only_missing)
    assert error is not None
    assert error.code == "image-not-found"


def test_verify_stops_at_a_failure_that_is_not_about_one_image(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    repo = FakeRepo({"1.5.06": b"x", "1.5.07": TdxError("denied", code="permission-denied")})
    report, error = _verify(monkeypatch, repo)
    assert error is not None
    assert error.code == "permission-denied"
    assert report.images == []  # 1.5.07 is verified first and stops the run


def test_verify_of_an_empty_repository(monkeypatch: pytest.MonkeyPatch) -> None:
    _report, error = _verify(monkeypatch, FakeRepo({}))
    assert error is not None
    assert error.code == "image-not-found"
    assert error.message == f"{FakeRepo.location}: the repository holds no images"


def test_verify_of_a_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "tdx_module_1.5.06.blob"
    with pytest.raises(TdxError) as caught:
        readonly.run_verify(Settings(action="verify", verify_path=path), Report(action="verify"))
    assert caught.value.code == "image-not-found"
    assert caught.value.message == f"{path}: image does not exist"


def test_verify_of_a_file_that_is_not_an_image(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "tdx_module_1.5.06.blob"
    path.write_bytes(b"x")

    def refuse(_path: Path) -> bytes:
        raise InvalidImage("too short to be an image")

    monkeypatch.setattr(_inv, "read_image_file", refuse)
    report = Report(action="verify")
    with pytest.raises(TdxError) as caught:
        readonly.run_verify(Settings(action="verify", verify_path=path), report)
    assert caught.value.code == "image-invalid"
    assert report.images is not None
    (image,) = report.images
    assert (image.path, image.version, image.ok) == (str(path), "1.5.06", False)
    assert image.checks[0] == {
        "name": "container",
        "ok": False,
        "detail": "too short to be an image",
    }


def test_history_of_a_new_host_is_empty(tmp_path: Path) -> None:
    report = Report(action="history")
    readonly.run_history(Settings(state_dir=tmp_path / "absent"), report)
    assert report.history is not None
    assert report.history.records == []
    assert report.warnings == []


def test_history_warns_about_unreadable_lines(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    (state / "history.jsonl").write_text("not json\n")
    report = Report(action="history")
    readonly.run_history(Settings(state_dir=state), report)
    assert report.history is not None
    assert report.history.records == []
    assert report.warnings == ["history-lines-skipped"]
    assert report.warning_text["history-lines-skipped"].startswith(
        f"1 unreadable line(s) in {state / 'history.jsonl'}: "
    )
