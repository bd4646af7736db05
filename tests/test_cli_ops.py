"""The CLI as a system tool (issue 6): configuration file, metrics file, summary line, journal."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from factories.cli import runner
from factories.hosts import build_host_tree
from factories.images import Release, make_image, mapping_document, test_key, write_repo
from prometheus_client.parser import text_string_to_metric_families

from tdxupdate import config

SPR = (0x806F0, 0xC06F0, 0xA06F0)


@pytest.fixture(autouse=True)
def _no_site_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Never read the machine's /etc/tdxupdate.conf or inherit its environment."""
    monkeypatch.setattr(config, "DEFAULT_CONFIG", tmp_path / "etc-tdxupdate.conf")
    for name in ("TDXUPDATE_CONFIG", "TDXUPDATE_REPO", "TDXUPDATE_STATE_DIR", "JOURNAL_STREAM"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    path = tmp_path / "trusted-keys"
    path.write_text(f"{test_key().fingerprint}\n")
    return path


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    images = {
        "1.5.06": make_image("1.5.06", fmt=0x100, cpuids=SPR),
        "1.5.24": make_image("1.5.24", fmt=0x200, cpuids=(0x806F8, 0xC06F0)),
    }
    rel = [Release(v, min_seamldr_versions=("1.5.00", "2.0.00")) for v in images]
    return write_repo(tmp_path / "repo", images, mapping_document(rel))


@pytest.fixture
def host(tmp_path: Path) -> Path:
    return build_host_tree(tmp_path / "host", generation="G5", module="1.5.06", remaining=3)


@pytest.fixture
def run(capsys: pytest.CaptureFixture[str]) -> Any:
    return runner(capsys, check_schema=False)


def conf(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "tdxupdate.conf"
    path.write_text(text)
    return path


# --- configuration file ---------------------------------------------------------------------


def test_config_file_supplies_repo_keys_and_state_dir(
    run: Any, tmp_path: Path, host: Path, repo: Path, keys: Path
) -> None:
    path = conf(
        tmp_path,
        f'repo = "{repo}"\ntrusted_keys = ["{keys}"]\nstate_dir = "{tmp_path / "state"}"\n',
    )
    res = run("--list", "--json", "--sysroot", host, "--config", path)
    assert res.code == 0, res.err
    assert [c["version"] for c in res.doc["candidates"] if c["eligible"]] == ["1.5.24"]


def test_default_config_file_is_read_when_present(
    run: Any, tmp_path: Path, host: Path, repo: Path, keys: Path
) -> None:
    config.DEFAULT_CONFIG.write_text(f'repo = "{repo}"\ntrusted_keys = ["{keys}"]\n')
    res = run("--list", "--json", "--sysroot", host)
    assert res.code == 0, res.err


def test_command_line_beats_config_file(
    run: Any, tmp_path: Path, host: Path, repo: Path, keys: Path
) -> None:
    path = conf(tmp_path, f'repo = "{tmp_path / "nowhere"}"\ntrusted_keys = ["{keys}"]\n')
    res = run("--list", "--json", "--sysroot", host, "--config", path, "--repo", repo)
    assert res.code == 0, res.err


def test_environment_beats_config_file(
    run: Any, tmp_path: Path, host: Path, repo: Path, keys: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TDXUPDATE_REPO", str(repo))
    path = conf(tmp_path, f'repo = "{tmp_path / "nowhere"}"\ntrusted_keys = ["{keys}"]\n')
    res = run("--list", "--json", "--sysroot", host, "--config", path)
    assert res.code == 0, res.err


def test_config_file_named_by_environment(
    run: Any, tmp_path: Path, host: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TDXUPDATE_CONFIG", str(tmp_path / "absent.conf"))
    res = run("--status", "--sysroot", host)
    assert res.code == 66
    assert res.err == f"tdxupdate: {tmp_path / 'absent.conf'}: configuration file does not exist\n"


def test_bad_config_file_exits_78_naming_file_line_and_key(
    run: Any, tmp_path: Path, host: Path
) -> None:
    path = conf(tmp_path, "# site\ntiemout = 5\n")
    res = run("--status", "--json", "--sysroot", host, "--config", path)
    assert res.code == 78
    message = f"{path}:2: unknown key 'tiemout' (did you mean 'timeout'?)"
    assert res.err == f"tdxupdate: {message}\n"
    assert res.doc["error"] == {"code": "config-invalid", "message": message, "exit_code": 78}


def test_help_works_with_a_broken_config_file(run: Any, tmp_path: Path) -> None:
    config.DEFAULT_CONFIG.write_text("not toml at all\n")
    assert run("--help").code == 0


# --- the update summary line ----------------------------------------------------------------


def test_update_logs_one_summary_line(
    run: Any, tmp_path: Path, host: Path, repo: Path, keys: Path
) -> None:
    args = ["--sysroot", host, "--repo", repo, "--trusted-keys", keys]
    res = run("--update", "--dry-run", "--state-dir", tmp_path / "state", *args)
    assert res.code == 0, res.err
    summary = [ln for ln in res.err.splitlines() if ln.startswith("tdxupdate: update: ")]
    assert summary == ["tdxupdate: update: from=1.5.06 to=1.5.24 result=dry-run exit_code=0"]
    quiet = run("--update", "--dry-run", "-q", "--state-dir", tmp_path / "state", *args)
    assert "tdxupdate: update: " not in quiet.err


def test_journal_gets_priorities(tmp_path: Path, host: Path, repo: Path) -> None:
    """Under systemd, stderr is the journal stream JOURNAL_STREAM names."""
    err_path = tmp_path / "stderr"
    with open(err_path, "w") as err:
        st = os.fstat(err.fileno())
        env = {
            **os.environ,
            "JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}",
            "TDXUPDATE_CONFIG": "/dev/null",
        }
        args = ["--update", "--dry-run", "--sysroot", str(host), "--repo", str(repo)]
        args += ["--state-dir", str(tmp_path / "state")]
        subprocess.run(
            [sys.executable, "-m", "tdxupdate", *args],
            stdout=subprocess.DEVNULL,
            stderr=err,
            env=env,
            check=False,
        )
    lines = err_path.read_text().splitlines()
    # the test key is not trusted here (no --trusted-keys): nothing is eligible
    assert "<5>update: from=1.5.06 to=unknown result=nothing-to-do exit_code=0" in lines
    assert all(ln[:3] in {"<3>", "<4>", "<5>", "<6>", "<7>"} for ln in lines), lines


# --- metrics --------------------------------------------------------------------------------


def parse(path: Path) -> dict[str, list[Any]]:
    return {f.name: f.samples for f in text_string_to_metric_families(path.read_text())}


def test_metrics_file_after_list(
    run: Any, tmp_path: Path, host: Path, repo: Path, keys: Path
) -> None:
    prom = tmp_path / "tdxupdate.prom"
    res = run(
        "--list", "--sysroot", host, "--repo", repo, "--trusted-keys", keys,
        "--metrics-file", prom,
    )  # fmt: skip
    assert res.code == 0, res.err
    m = parse(prom)
    assert m["tdxupdate_module_info"][0].labels == {
        "version": "1.5.06",
        "seamsvn": "0x0106",
        # Intel's published MRSEAM of 1.5.06 (release notes and joined_files)
        "mrseam": "5b38e33a6487958b72c3c12a938eaa5e3fd4510c51aeeab5"
        "8c7d5ecee41d7c436489d6c8e4f92f160b7cad34207b00c1",
    }
    assert m["tdxupdate_update_available"][0].value == 1
    assert m["tdxupdate_last_result"][0].labels == {"action": "list", "result": "ok"}


def test_metrics_file_from_config_after_a_refusal(
    run: Any, tmp_path: Path, host: Path, repo: Path, keys: Path
) -> None:
    prom = tmp_path / "tdxupdate.prom"
    path = conf(tmp_path, f'metrics_file = "{prom}"\n')
    res = run(
        "--update", "1.5.99", "--dry-run", "--sysroot", host, "--repo", repo,
        "--trusted-keys", keys, "--config", path,
    )  # fmt: skip
    assert res.code == 65
    m = parse(prom)
    assert m["tdxupdate_last_result"][0].labels == {"action": "update", "result": "version-unknown"}
    assert m["tdxupdate_last_exit_code"][0].value == 65


def test_unwritable_metrics_file_fails_a_successful_run(
    run: Any, tmp_path: Path, host: Path
) -> None:
    prom = tmp_path / "absent" / "tdxupdate.prom"
    res = run("--status", "--sysroot", host, "--metrics-file", prom)
    assert res.code == 74
    assert (
        f"tdxupdate: {prom}: cannot write the metrics file: directory {prom.parent} does not exist"
        in res.err.splitlines()
    )


def test_unwritable_metrics_file_keeps_an_earlier_failure(run: Any, tmp_path: Path) -> None:
    prom = tmp_path / "absent" / "tdxupdate.prom"
    res = run("--status", "--sysroot", tmp_path / "empty", "--metrics-file", prom)
    assert res.code == 69  # no tdx_host: the action's own failure stays the exit code
