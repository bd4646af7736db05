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
        # Outside an interactive shell compopt has no completion to modify: record the call
        # (click asks readline for directory or file names with it) as a line of output.
        "compopt() { printf 'compopt'; printf ' %s' \"$@\"; printf '\\n'; }\n"
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


def test_bash_completes_repo_directories(tmp_path: Path) -> None:
    """``--repo`` takes DIR|URL: bash is asked for directory names (issue 9 item 19)."""
    assert bash_complete(tmp_path, ["tdxupdate", "--repo", "repo-"]) == ["compopt -o dirnames"]


def test_bash_completes_mapping_and_verify_files(tmp_path: Path) -> None:
    for option in ("--mapping", "--verify"):
        assert bash_complete(tmp_path, ["tdxupdate", option, "tdx_"]) == ["compopt -o default"]


def test_options_without_a_path_get_no_file_completion(tmp_path: Path) -> None:
    """``--update`` takes a VERSION: no file names offered there."""
    assert bash_complete(tmp_path, ["tdxupdate", "--update", "1."]) == []


def test_bash_completes_simulate_profiles(tmp_path: Path) -> None:
    from tdxupdate.sim.profiles import PROFILES

    assert bash_complete(tmp_path, ["tdxupdate", "--simulate", ""]) == list(PROFILES)
    assert "legacy-g2" in bash_complete(tmp_path, ["tdxupdate", "--simulate", "legacy-"])
    assert set(bash_complete(tmp_path, ["tdxupdate", "--simulate", "legacy-"])) == {
        name for name in PROFILES if name.startswith("legacy-")
    }


def test_zsh_and_fish_show_each_profile_description() -> None:
    """zsh and fish print a description next to each candidate; it is the profile's."""
    from tdxupdate.sim.profiles import PROFILES

    env = {"COMP_WORDS": "tdxupdate --simulate sp", "COMP_CWORD": "2"}
    zsh = run_module({"_TDXUPDATE_COMPLETE": "zsh_complete", **env})
    assert zsh.returncode == 0, zsh.stderr
    assert zsh.stdout.splitlines() == ["plain", "spr", PROFILES["spr"].description]
    fish = run_module(
        {
            "_TDXUPDATE_COMPLETE": "fish_complete",
            "COMP_WORDS": "tdxupdate --simulate sp",
            "COMP_CWORD": "sp",
        }
    )
    assert fish.returncode == 0, fish.stderr
    assert fish.stdout.splitlines() == [f"plain,spr\t{PROFILES['spr'].description}"]
