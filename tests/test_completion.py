"""Shell completion through click's ``_TDXUPDATE_COMPLETE`` (issue 6, documented in tdxupdate(8)).

Runs the real entry point (``python -m tdxupdate`` and ``tdxupdate.cli.main``), and for bash
sources the generated script in a real bash and asks it to complete.
"""

from __future__ import annotations

import os
import shlex
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tdxupdate import cli


def run_module(env_extra: dict[str, str]) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **env_extra}
    return subprocess.run(
        [sys.executable, "-m", "tdxupdate"], capture_output=True, text=True, env=env, check=False
    )


@pytest.mark.parametrize(
    ("shell", "marker"),
    [
        ("bash", "complete -o nosort -F _tdxupdate_completion tdxupdate"),
        ("zsh", "#compdef tdxupdate"),
        ("fish", "complete --no-files --command tdxupdate"),
    ],
)
def test_entry_point_prints_the_completion_script(shell: str, marker: str) -> None:
    result = run_module({"_TDXUPDATE_COMPLETE": f"{shell}_source"})
    assert result.returncode == 0, result.stderr
    assert marker in result.stdout
    assert "_TDXUPDATE_COMPLETE" in result.stdout


def test_main_prints_the_script_and_exits_0(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The console script calls cli.main(); completion must get through it."""
    monkeypatch.setenv("_TDXUPDATE_COMPLETE", "bash_source")
    with pytest.raises(SystemExit) as info:
        cli.main([])
    assert info.value.code == 0
    assert "_tdxupdate_completion()" in capsys.readouterr().out


def test_bash_script_is_valid_bash() -> None:
    bash = shutil.which("bash")
    assert bash is not None
    script = run_module({"_TDXUPDATE_COMPLETE": "bash_source"}).stdout
    result = subprocess.run([bash, "-n"], input=script, capture_output=True, text=True)
    assert (result.returncode, result.stderr) == (0, "")


def bash_complete(tmp_path: Path, words: list[str]) -> list[str]:
    """Source the generated script in bash and complete ``words`` (the last one partial)."""
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    wrapper = bindir / "tdxupdate"
    wrapper.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -m tdxupdate "$@"\n')
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
    script = run_module({"_TDXUPDATE_COMPLETE": "bash_source"}).stdout
    (tmp_path / "completion.bash").write_text(script)
    quoted = " ".join(shlex.quote(w) for w in words)
    program = (
        f"source {shlex.quote(str(tmp_path / 'completion.bash'))}\n"
        f"COMP_WORDS=({quoted})\n"
        f"COMP_CWORD={len(words) - 1}\n"
        "_tdxupdate_completion tdxupdate\n"
        'printf "%s\\n" "${COMPREPLY[@]}"\n'
    )
    env = {**os.environ, "PATH": f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("_TDXUPDATE_COMPLETE", None)
    result = subprocess.run(
        ["bash", "--norc", "--noprofile", "-c", program],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return [line for line in result.stdout.splitlines() if line]


def test_bash_completes_option_names(tmp_path: Path) -> None:
    assert bash_complete(tmp_path, ["tdxupdate", "--image-f"]) == ["--image-format"]


def test_bash_completes_image_format_values(tmp_path: Path) -> None:
    assert bash_complete(tmp_path, ["tdxupdate", "--image-format", ""]) == [
        "auto",
        "0x100",
        "0x200",
    ]
