"""tdxupdate.log: levels, stderr format, journal priorities, colour, the update summary line."""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

import pytest

from tdxupdate import log
from tdxupdate.errors import TdxError
from tdxupdate.report import CandidateDoc, HostDoc, Report, UpdateDoc


@pytest.fixture(autouse=True)
def _reset_logger() -> Iterator[None]:
    yield
    logger = logging.getLogger(log.LOGGER_NAME)
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    logger.setLevel(logging.NOTSET)
    logger.propagate = True


def emit_all(logger: logging.Logger) -> None:
    logger.debug("d-line")
    logger.info("i-line")
    log.notice("n-line", logger=logger)
    logger.warning("w-line")
    logger.error("e-line")


# --- levels and plain format ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("verbosity", "shown"),
    [
        (-3, ["e"]),
        (-2, ["e"]),
        (-1, ["w", "e"]),
        (0, ["n", "w", "e"]),
        (1, ["i", "n", "w", "e"]),
        (2, ["d", "i", "n", "w", "e"]),
        (5, ["d", "i", "n", "w", "e"]),
    ],
)
def test_verbosity_sets_the_threshold(verbosity: int, shown: list[str]) -> None:
    out = io.StringIO()
    emit_all(log.setup(verbosity, stream=out, environ={}))
    expected = {
        "d": "tdxupdate: debug: d-line",
        "i": "tdxupdate: i-line",
        "n": "tdxupdate: n-line",
        "w": "tdxupdate: warning: w-line",
        "e": "tdxupdate: e-line",
    }
    assert out.getvalue().splitlines() == [expected[k] for k in shown]


def test_notice_sits_between_info_and_warning() -> None:
    assert logging.INFO < log.NOTICE < logging.WARNING
    assert logging.getLevelName(log.NOTICE) == "NOTICE"


def test_setup_twice_replaces_the_handler() -> None:
    first, second = io.StringIO(), io.StringIO()
    log.setup(0, stream=first, environ={})
    logger = log.setup(0, stream=second, environ={})
    logger.warning("once")
    assert first.getvalue() == ""
    assert second.getvalue() == "tdxupdate: warning: once\n"
    assert len(logger.handlers) == 1
    assert logger.propagate is False


def test_traceback_lines_each_carry_the_prefix() -> None:
    out = io.StringIO()
    logger = log.setup(2, stream=out, environ={})
    try:
        raise ValueError("boom")
    except ValueError:
        logger.error("failed", exc_info=True)
    lines = out.getvalue().splitlines()
    assert lines[0] == "tdxupdate: failed"
    assert lines[-1] == "tdxupdate: ValueError: boom"
    assert all(line.startswith("tdxupdate: ") for line in lines)


# --- the journal ----------------------------------------------------------------------------


def journal_env(stream: TextIO) -> dict[str, str]:
    st = os.fstat(stream.fileno())
    return {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}


def test_journal_stream_gets_sd_daemon_priorities(tmp_path: Path) -> None:
    with open(tmp_path / "stderr", "w+", encoding="utf-8") as stream:
        emit_all(log.setup(2, stream=stream, environ=journal_env(stream)))
        stream.flush()
        stream.seek(0)
        lines = stream.read().splitlines()
    assert lines == [
        "<7>debug: d-line",
        "<6>i-line",
        "<5>n-line",
        "<4>warning: w-line",
        "<3>e-line",
    ]


def test_journal_multi_line_message_prefixes_every_line(tmp_path: Path) -> None:
    with open(tmp_path / "stderr", "w+", encoding="utf-8") as stream:
        log.setup(0, stream=stream, environ=journal_env(stream)).warning("one\ntwo")
        stream.flush()
        stream.seek(0)
        assert stream.read() == "<4>warning: one\n<4>warning: two\n"


def test_critical_is_priority_2() -> None:
    assert log.priority(logging.CRITICAL) == 2
    assert log.priority(logging.ERROR + 5) == 3  # between levels: the severer one


def test_journal_stream_naming_another_file_is_ignored(tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.write_text("")
    st = os.stat(other)
    env = {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
    with open(tmp_path / "stderr", "w+", encoding="utf-8") as stream:
        log.setup(0, stream=stream, environ=env).warning("plain")
        stream.flush()
        stream.seek(0)
        assert stream.read() == "tdxupdate: warning: plain\n"


@pytest.mark.parametrize("value", ["", "garbage", "12:", ":34", "a:b"])
def test_malformed_journal_stream_is_ignored(tmp_path: Path, value: str) -> None:
    with open(tmp_path / "stderr", "w+", encoding="utf-8") as stream:
        assert log.is_journal_stream(stream, {"JOURNAL_STREAM": value}) is False


def test_stream_without_a_file_descriptor_is_never_the_journal() -> None:
    assert log.is_journal_stream(io.StringIO(), {"JOURNAL_STREAM": "1:2"}) is False


# --- colour ---------------------------------------------------------------------------------


def on_a_terminal(environ: dict[str, str], emit: Any) -> str:
    """Log through a real pseudo-terminal and return what reached it."""
    master, slave = os.openpty()
    try:
        with open(slave, "w", encoding="utf-8", closefd=True) as tty:
            emit(log.setup(0, stream=tty, environ=environ))
            tty.flush()
        return os.read(master, 65536).decode("utf-8")
    finally:
        os.close(master)


def test_terminal_gets_colour() -> None:
    text = on_a_terminal({"TERM": "xterm"}, lambda lg: lg.warning("w-line"))
    assert "\033[1;33mwarning:\033[0m w-line" in text


def test_terminal_error_prefix_is_red() -> None:
    text = on_a_terminal({"TERM": "xterm"}, lambda lg: lg.error("e-line"))
    assert "\033[1;31mtdxupdate:\033[0m e-line" in text


@pytest.mark.parametrize(
    "environ", [{"NO_COLOR": "1", "TERM": "xterm"}, {"TERM": "dumb"}], ids=["NO_COLOR", "dumb"]
)
def test_no_colour_when_asked(environ: dict[str, str]) -> None:
    text = on_a_terminal(environ, lambda lg: lg.warning("w-line"))
    assert "\033" not in text
    assert "tdxupdate: warning: w-line" in text


def test_empty_no_color_does_not_disable_colour() -> None:
    # no-color.org: "when present and not an empty string".
    text = on_a_terminal({"NO_COLOR": "", "TERM": "xterm"}, lambda lg: lg.warning("w"))
    assert "\033[" in text


def test_no_colour_on_a_file(tmp_path: Path) -> None:
    with open(tmp_path / "stderr", "w+", encoding="utf-8") as stream:
        log.setup(0, stream=stream, environ={"TERM": "xterm"}).warning("w-line")
        stream.flush()
        stream.seek(0)
        assert stream.read() == "tdxupdate: warning: w-line\n"


def test_no_colour_in_the_journal_even_on_a_terminal() -> None:
    master, slave = os.openpty()
    try:
        with open(slave, "w", encoding="utf-8", closefd=True) as tty:
            env = {"TERM": "xterm", **journal_env(tty)}
            log.setup(0, stream=tty, environ=env).warning("w-line")
            tty.flush()
        text = os.read(master, 65536).decode("utf-8")
    finally:
        os.close(master)
    assert text.replace("\r\n", "\n") == "<4>warning: w-line\n"


# --- the update summary line ----------------------------------------------------------------


def host_doc(module_version: str) -> HostDoc:
    return HostDoc(
        module_version, None, None, None, None, None, None, None, None, None,
        checks=[], module_lost=False,
    )  # fmt: skip


def update_doc(**extra: Any) -> Report:
    """An ``--update`` report: ``host`` and ``error`` are the report's, the rest its
    :class:`UpdateDoc`."""
    report = Report(
        "update",
        host=extra.pop("host", host_doc("1.5.06")),
        error=extra.pop("error", None),
    )
    keys: dict[str, Any] = {
        "from_version": "1.5.06",
        "to_version": "1.5.24",
        "dry_run": False,
        "changed": False,
        "kernel_error": None,
        "fatal": False,
    }
    keys.update(extra)
    report.update = UpdateDoc(**keys)
    return report


def refused(code: str, version: str) -> CandidateDoc:
    return CandidateDoc(version, False, [code], [], None, None, None, None, None, None)


@pytest.mark.parametrize(
    ("doc", "line"),
    [
        (
            update_doc(changed=True),
            "update: from=1.5.06 to=1.5.24 result=success exit_code=0",
        ),
        (
            update_doc(to_version=None),
            "update: from=1.5.06 to=unknown result=nothing-to-do exit_code=0",
        ),
        (
            update_doc(dry_run=True),
            "update: from=1.5.06 to=1.5.24 result=dry-run exit_code=0",
        ),
        (
            update_doc(
                error=TdxError("…", code="device-busy"),
                kernel_error="transferring:device-busy",
            ),
            "update: from=1.5.06 to=1.5.24 result=device-busy exit_code=75 "
            "kernel_error=transferring:device-busy",
        ),
        (
            Report("update", error=TdxError("…", code="locked")),
            "update: from=unknown to=unknown result=locked exit_code=75",
        ),
        (
            update_doc(
                to_version=None,
                selected=refused("not-eligible", "1.5.25"),
                error=TdxError("…", code="not-eligible"),
            ),
            "update: from=1.5.06 to=1.5.25 result=not-eligible exit_code=65",
        ),
        (
            update_doc(from_version=None, host=host_doc("1.5.10")),
            "update: from=1.5.10 to=1.5.24 result=nothing-to-do exit_code=0",
        ),
    ],
    ids=[
        "success",
        "nothing-to-do",
        "dry-run",
        "device-busy",
        "locked-before-host",
        "refused-version",
        "from-host",
    ],
)
def test_update_summary(doc: Report, line: str) -> None:
    assert log.update_summary(doc) == line


def test_update_summary_is_logged_at_notice() -> None:
    out = io.StringIO()
    log.log_update_summary(update_doc(changed=True), log.setup(0, stream=out, environ={}))
    assert out.getvalue() == "tdxupdate: update: from=1.5.06 to=1.5.24 result=success exit_code=0\n"
    quiet = io.StringIO()
    log.log_update_summary(update_doc(changed=True), log.setup(-1, stream=quiet, environ={}))
    assert quiet.getvalue() == ""


def test_remote_text_escapes_every_unprintable_character_and_is_bounded() -> None:
    from tdxupdate.log import remote_text

    assert remote_text("Not Found") == "Not Found"
    assert remote_text("a\nb\rc\x1b[31md\x85e\u202ef\x00") == (
        "a\\x0ab\\x0dc\\x1b[31md\\x85e\\u202ef\\x00"
    )
    assert remote_text("x" * 500, limit=10) == "x" * 10 + "..."


def test_the_formatter_never_lets_a_control_character_through() -> None:
    import logging

    from tdxupdate.log import Formatter

    record = logging.LogRecord("tdxupdate", logging.ERROR, __file__, 1, "a\rb\x1b[2Jc", None, None)
    assert Formatter().format(record) == "tdxupdate: a\\x0db\\x1b[2Jc"
