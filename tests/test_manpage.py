"""man/tdxupdate.8: renders without warnings and documents what the live CLI and code have.

Everything is read from the code (click's parameters, the exit-code table, the reason and
check names, the configuration keys, the metric names), so adding an option, a token or a key
without documenting it fails here.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import click
import pytest

from tdxupdate import __version__, config, imagecheck, metrics, policy
from tdxupdate import preflight as _preflight
from tdxupdate.cli_options import command
from tdxupdate.errors import EXIT_CODES
from tdxupdate.report import CandidateDoc, HostDoc, Report, UpdateDoc

REPO_ROOT = Path(__file__).resolve().parent.parent
PAGE = REPO_ROOT / "man" / "tdxupdate.8"
ADMIN_GUIDE = REPO_ROOT / "README.md"
TEXT = PAGE.read_text(encoding="utf-8")


def roff(word: str) -> str:
    """How a word with hyphens is written in the page (a hyphen-minus is ``\\-`` in roff)."""
    return word.replace("-", "\\-")


def section(name: str) -> str:
    """The text of ``.SH NAME`` (or ``.SS NAME``) up to the next section heading."""
    m = re.search(rf'^\.S[HS] "?{re.escape(name)}"?\n(.*?)(?=^\.S[HS] |\Z)', TEXT, re.M | re.S)
    assert m is not None, f"{PAGE}: no section {name!r}"
    return m.group(1)


def cli_options() -> set[str]:
    """Every option string of the live CLI, including the help option click adds."""
    ctx = click.Context(command)
    found: set[str] = set()
    for param in command.get_params(ctx):
        found.update(o for o in (*param.opts, *param.secondary_opts) if o.startswith("-"))
    return found


def need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.skip(f"{tool} is not installed (Debian: apt-get install mandoc groff-base)")
    return path


# --- rendering ------------------------------------------------------------------------------


def test_mandoc_lint_has_no_warnings() -> None:
    result = subprocess.run(
        [need("mandoc"), "-T", "lint", "-W", "warning", str(PAGE)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


@pytest.mark.parametrize("device", [[], ["-Tutf8"]], ids=["default", "utf8"])
def test_groff_has_no_warnings(device: list[str]) -> None:
    result = subprocess.run(
        [need("groff"), "-man", "-ww", "-z", *device, str(PAGE)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_page_renders_to_text_with_every_section() -> None:
    result = subprocess.run(
        [need("mandoc"), "-T", "ascii", str(PAGE)], capture_output=True, text=True, check=True
    )
    plain = re.sub(r".\x08", "", result.stdout)
    for heading in (
        "NAME",
        "SYNOPSIS",
        "DESCRIPTION",
        "ACTIONS",
        "OPTIONS",
        "CONFIGURATION FILE",
        "EXIT STATUS",
        "JSON OUTPUT",
        "METRICS",
        "DIAGNOSTICS",
        "ENVIRONMENT",
        "FILES",
        "EXAMPLES",
        "SAFETY",
        "SHELL COMPLETION",
        "SEE ALSO",
    ):
        assert re.search(rf"^{heading}$", plain, re.M), heading


def test_title_carries_the_tool_version() -> None:
    m = re.search(r'^\.TH TDXUPDATE 8 \S+ "tdxupdate ([^"]+)"', TEXT, re.M)
    assert m is not None
    assert m.group(1) == __version__


# --- the page follows the code --------------------------------------------------------------


def test_every_cli_option_is_documented() -> None:
    documented = section("ACTIONS") + section("OPTIONS")
    missing = sorted(o for o in cli_options() if roff(o) not in documented)
    assert missing == [], f"options of tdxupdate.cli missing from {PAGE}: {missing}"


_LONG_OPTION = re.compile(r"\\-\\-[a-z][a-z0-9_]*(?:\\-[a-z0-9_]+)*")


def documented_options() -> set[str]:
    """Long options the page shows for tdxupdate: in the prose, and on the tdxupdate command
    lines of its examples (other programs' options, such as ``systemctl --now``, excluded)."""
    prose = re.sub(r"^\.EX\n.*?^\.EE\n", "", TEXT, flags=re.M | re.S)
    written = set(_LONG_OPTION.findall(prose))
    for block in re.findall(r"^\.EX\n(.*?)^\.EE\n", TEXT, flags=re.M | re.S):
        for line in block.replace("\\e\n", " ").splitlines():
            m = re.search(r"(?:^|[\s/])tdxupdate(?=\s|$)(.*)$", line)
            if m is not None:
                written |= set(_LONG_OPTION.findall(m.group(1)))
    return {w.replace("\\-", "-") for w in written}


def test_every_documented_option_exists() -> None:
    unknown = sorted(documented_options() - cli_options())
    assert unknown == [], f"{PAGE} documents options tdxupdate.cli does not have: {unknown}"


def exit_status_entries() -> list[tuple[list[int], str]]:
    """(codes, text) per ``.TP`` entry of EXIT STATUS."""
    entries = []
    for chunk in section("EXIT STATUS").split(".TP\n")[1:]:
        tag, _, body = chunk.partition("\n")
        entries.append(([int(n) for n in re.findall(r"\d+", tag)], body))
    return entries


def test_every_error_token_is_documented_under_its_exit_code() -> None:
    entries = exit_status_entries()
    for token, code in EXIT_CODES.items():
        word = re.compile(rf"(?<![\w\\-]){re.escape(roff(token))}(?![\w\\])")
        holders = [codes for codes, body in entries if word.search(body)]
        assert holders, f"error token {token} is not in EXIT STATUS"
        assert any(code in codes for codes in holders), (token, code, holders)


def test_every_exit_code_has_an_entry() -> None:
    documented = {c for codes, _ in exit_status_entries() for c in codes}
    assert set(EXIT_CODES.values()) | {0, 143} <= documented


def test_every_exit_code_is_in_the_help_epilog() -> None:
    """``--help``'s exit table is built from the same table as the page's entries."""
    from tdxupdate.errors import EXIT_MEANINGS

    epilog = " ".join((command.epilog or "").split())
    assert set(EXIT_CODES.values()) | {0} <= set(EXIT_MEANINGS)
    for code in set(EXIT_CODES.values()) - {EXIT_CODES["interrupted"]}:
        assert f"{code} {EXIT_MEANINGS[code]}" in epilog, code
    assert "128+N interrupted by signal N" in epilog


def test_every_reason_token_is_documented() -> None:
    reasons = section("REASONS")
    assert [r for r in policy.REASONS if f".B {roff(r)}\n" not in reasons] == []


def test_every_check_name_is_documented() -> None:
    json_section = section("JSON OUTPUT")
    assert [c for c in _preflight.CHECK_NAMES if roff(c) not in json_section] == []
    verify = section("ACTIONS")
    assert [c for c in imagecheck.CHECK_NAMES if roff(c) not in verify] == []


def test_every_configuration_key_is_documented() -> None:
    text = section("CONFIGURATION FILE")
    keys = [*config.KEYS, "cpu_signature", "sysroot", "allow_reinstall"]
    assert [k for k in keys if not re.search(rf"\b{k}\b", text)] == []


def test_every_environment_variable_is_documented() -> None:
    ctx = click.Context(command)
    names = {p.envvar for p in command.get_params(ctx) if isinstance(p.envvar, str)}
    names |= {config.CONFIG_ENV, "NO_COLOR", "JOURNAL_STREAM", "_TDXUPDATE_COMPLETE"}
    text = section("ENVIRONMENT")
    assert sorted(n for n in names if f".B {n}\n" not in text) == []


def all_metric_names() -> set[str]:
    host = HostDoc(
        "1.5.06", "1.5.02", 3, None, None, None, None, None, None, None,
        checks=[], module_lost=False,
    )  # fmt: skip
    candidate = CandidateDoc("1.5.24", True, [], [], None, None, None, None, None, None)
    doc = Report("update", host=host, candidates=[candidate])
    doc.update = UpdateDoc(dry_run=True, to_version="1.5.24")
    text = metrics.render_textfile(doc, duration_s=1.0, now=0.0)
    return set(re.findall(r"^# TYPE (\S+) ", text, re.M))


def test_every_metric_is_documented() -> None:
    names = all_metric_names()
    assert len(names) == 9
    page = section("METRICS")
    guide = ADMIN_GUIDE.read_text(encoding="utf-8")
    assert sorted(n for n in names if f".B {n}" not in page) == []
    assert sorted(n for n in names if f"`{n}" not in guide) == []


def test_completion_instructions_use_clicks_variable() -> None:
    # click derives the variable from the program name: _<PROG>_COMPLETE.
    text = section("SHELL COMPLETION")
    for shell in ("bash", "zsh", "fish"):
        assert f"_TDXUPDATE_COMPLETE={shell}_source tdxupdate" in text
