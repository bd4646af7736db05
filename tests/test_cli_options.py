"""The command line's options (tdxupdate.cli_options): what the validators refuse, and how.

Each case runs ``tdxupdate.cli.main`` in-process, as an administrator types it: a refused
option or combination is exit 64 with one ``tdxupdate:`` line on stderr, and with ``--json``
the ``usage`` token (cli-contract.md §1–§2).
"""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest
from factories.cli import runner


@pytest.fixture
def run(capsys: pytest.CaptureFixture[str]) -> Any:
    return runner(capsys)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--status", "--list"], "tdxupdate: choose one action, not --status and --list"),
        (["--dry-run"], "tdxupdate: --dry-run goes with --update only"),
        (
            ["--update", "--allow-reinstall"],
            "tdxupdate: --allow-reinstall goes with --update VERSION only",
        ),
        (
            ["--update", "1.5"],
            "tdxupdate: --update: 1.5 is not a version of the form major.minor.update",
        ),
        (["--cpu-signature", "zz"], None),
        (["--no-such-option"], None),
        (["--timeout", "-1"], None),
        (["--timeout", "0"], None),
        (["--timeout", "nan"], None),
        (["--timeout", "inf"], None),
        (["--timeout", "-inf"], None),
        (["--timeout", "soon"], None),
        (["--image-format", "0x300"], None),
    ],
)
def test_usage_errors_exit_64(run: Any, args: list[str], message: str | None) -> None:
    res = run(*args)
    assert res.code == 64
    assert len(res.err_lines) == 1
    assert res.err_lines[0].startswith("tdxupdate: ")
    if message:
        assert res.err_lines == [message]
    res = run(*args, "--json")
    assert res.code == 64
    assert res.doc["error"]["code"] == "usage"


def test_help_and_version_do_not_load_the_completion_code() -> None:
    # The completion callbacks import click.shell_completion when the shell asks (the
    # completion tests run that path); every other run is spared its import.
    code = (
        "import sys\n"
        "from tdxupdate.cli import main\n"
        "for args in (['--version'], ['--help']):\n"
        "    assert main(args) == 0, args\n"
        "assert 'click.shell_completion' not in sys.modules, 'imported'\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
