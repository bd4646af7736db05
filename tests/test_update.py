"""``tdxupdate --update`` against the emulated kernel, generation by generation (issue 3).

Implements the test list of cli-contract.md §2 (exit codes and tokens), §4 (the update sequence:
lock, preflight, stream, watch, error, version read-back, format retry, signals) and §5 (history)
over :mod:`tdxupdate.sim` mounted with FUSE. Every test asserts the exit code, the error token,
the single stderr line (no traceback), what the kernel received (``.tdxsim/state``) and the
history file.

The repository is built here from synthetic images signed with the session's test key; each
emulator trusts that key and takes its release facts from the same mapping file. One mount per
kernel series is shared by the module and reset (``{"reset": true}``) before each test. The
series stand for the generations of kernel-abi.md §1: v3 (G2), v7 (G3), v8 (G4: flat, Format A
only, so the automatic format retry of §4 step 10 happens), v10 (G5 before 7.2: Format B, with
the retry armed) and ml (G5 mainline 7.2: Format B, no retry).

Signals and concurrent runs need real processes (``python -m tdxupdate``); the emulator's
``slow-write`` and ``hang`` faults hold the upload where the test needs it, and every wait is
bounded by a generous deadline (no timed assertion anywhere).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from factories.cli import Result, run_main, validate
from factories.images import Release, make_image, mapping_document, test_key, write_repo
from factories.sim import mount_sim

from tdxupdate import __version__, history
from tdxupdate.image import FORMAT_A, FORMAT_B
from tdxupdate.imagebuild import convert
from tdxupdate.kernel_errors import KNOWN_ERROR_TOKENS
from tdxupdate.sim.session import SimHost
from tdxupdate.sysroot import Sysroot

pytestmark = pytest.mark.fuse

DEADLINE = 30.0  # a bound, so a broken tool or emulator fails instead of hanging the run

RUNNING = "1.5.06"
#: the newest eligible module, Format B on disk, large enough that slow writes take a while
TARGET = "1.5.09"
#: an older eligible module, Format A on disk
OLDER_A = "1.5.08"
#: TD-preserving (bit 1, or G3+ kernels hide the interface) and update-compatible (bit 47)
FEATURES = "0x800000000002"
TARGET_PAGES = 30  # module pages of TARGET: 32 pages in Format B
SLOW_WRITE_MS = 100  # per page: ~3 s of streaming, ample time to act while it runs

#: kernel series -> generation (kernel-abi.md §1)
GENERATIONS = {"v3": "G2", "v7": "G3", "v8": "G4", "v10": "G5", "ml": "G5"}
SERIES = list(GENERATIONS)
#: what the tool can tell from sysfs: flat kernels before 7.2 may be G4 or G5
HOST_GENERATION = {"v3": "G2", "v7": "G3", "v8": "G4/G5", "v10": "G4/G5", "ml": "G5"}
#: the format each series accepts
KERNEL_FORMAT = {"v3": FORMAT_A, "v7": FORMAT_A, "v8": FORMAT_A, "v10": FORMAT_B, "ml": FORMAT_B}
#: the format sent first with --image-format auto (flat kernels get Format B first)
FIRST_FORMAT = {"v3": FORMAT_A, "v7": FORMAT_A, "v8": FORMAT_B, "v10": FORMAT_B, "ml": FORMAT_B}
#: what a module refusing the shutdown (TD build in progress, EBUSY) shows (kernel-abi.md §3)
DEVICE_BUSY = {"v3": "device-busy", "v7": "device-busy", "v8": "device-busy"}
DEVICE_BUSY |= {"v10": "device-busy", "ml": "firmware-invalid"}
#: what a failed SEAMLDR.INSTALL (EIO) shows
SEAMLDR_EIO = {"v3": "hw-error", "v7": "hw-error", "v8": "firmware-invalid"}
SEAMLDR_EIO |= {"v10": "firmware-invalid", "ml": "firmware-invalid"}

STAGES = ("preparing", "transferring", "programming")
#: every token the fw_upload core prints, and one it does not know (a newer kernel's)
TOKENS = (*KNOWN_ERROR_TOKENS, "firmware-duplicate")

HISTORY_FIELDS = (
    "time",
    "from_version",
    "to_version",
    "image_sha256",
    "image_format",
    "result",
    "kernel_error",
    "duration_s",
    "remaining_before",
    "remaining_after",
    "tool_version",
)
#: the NOTICE line every --update run logs (issue 6); not an error line
RFC3339_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")


def fmt(value: int) -> str:
    return f"{value:#x}"


# --- the repository --------------------------------------------------------------------------


@dataclass(frozen=True)
class Repo:
    path: Path
    keys: Path
    files: dict[str, bytes]  # version -> the image file's bytes

    @property
    def mapping(self) -> Path:
        return self.path / "mapping_file.json"

    def sha(self, version: str) -> str:
        return hashlib.sha256(self.files[version]).hexdigest()

    def sent(self, version: str, image_format: int) -> bytes:
        """What the kernel must receive: the file converted to ``image_format``."""
        return convert(self.files[version], image_format)


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Repo:
    root = tmp_path_factory.mktemp("update-repo")
    files = {
        RUNNING: make_image(RUNNING, fmt=FORMAT_A),
        OLDER_A: make_image(OLDER_A, fmt=FORMAT_A),
        TARGET: make_image(TARGET, fmt=FORMAT_B, module_pages=TARGET_PAGES),
    }
    releases = [Release(v, min_seamldr_versions=("1.5.00",), tdx_feature0=FEATURES) for v in files]
    path = write_repo(root / "repo", files, mapping_document(releases))
    keys = root / "trusted-keys"
    keys.write_text(f"# the test run's signing key\n{test_key().fingerprint}\n")
    return Repo(path, keys, files)


# --- emulated hosts: one mount per series, reset before every test -----------------------------


def wait_for(predicate: Callable[[], Any], what: str) -> Any:
    deadline = time.monotonic() + DEADLINE
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"never happened within {DEADLINE:g} s: {what}")
        time.sleep(0.005)


def upload_state(h: SimHost) -> dict[str, Any]:
    state: dict[str, Any] = h.state()["upload"]
    return state


def wait_idle(h: SimHost) -> None:
    wait_for(lambda: upload_state(h)["status"] == "idle", "the upload interface to be idle")


def fresh(h: SimHost) -> None:
    """Release anything left running, then restore the mount-time host."""
    h.control({"clear_faults": True})
    wait_idle(h)
    h.control({"reset": True})


class Hosts:
    """Mounts each series on first use and keeps it for the module."""

    def __init__(self, stack: contextlib.ExitStack, base: Path, cache: Path, repo: Repo):
        self._stack, self._base, self._cache, self._repo = stack, base, cache, repo
        self._hosts: dict[str, SimHost] = {}

    def get(self, series: str) -> SimHost:
        if series not in self._hosts:
            self._hosts[series] = self._stack.enter_context(
                mount_sim(
                    self._base / series,
                    "spr",
                    cache_dir=self._cache,
                    kernel=series,
                    module=RUNNING,
                    seamldr="1.5.00",
                    cpu="0x806f8",
                    remaining=8,
                    mapping=self._repo.mapping,
                    trusted_signers=[test_key().fingerprint],
                )
            )
        host = self._hosts[series]
        fresh(host)
        return host


@pytest.fixture(scope="module")
def hosts(tmp_path_factory: pytest.TempPathFactory, sim_cache: Path, repo: Repo) -> Iterator[Hosts]:
    with contextlib.ExitStack() as stack:
        yield Hosts(stack, tmp_path_factory.mktemp("update-hosts"), sim_cache, repo)


# --- running the tool --------------------------------------------------------------------------


@dataclass
class Tool:
    """``tdxupdate`` pointed at an emulated host, the test repository and a state directory."""

    host: SimHost
    repo: Repo
    state_dir: Path
    capsys: pytest.CaptureFixture[str]
    #: processes started by :meth:`start`, reaped when the test ends however it ends
    procs: list[subprocess.Popen[str]] = field(default_factory=list)

    def args(self, *extra: str | Path) -> list[str]:
        return [
            "--sysroot",
            str(self.host.sysroot),
            "--repo",
            str(self.repo.path),
            "--trusted-keys",
            str(self.repo.keys),
            "--state-dir",
            str(self.state_dir),
            # a broken tool or emulator must not hold the run for the default 300 s
            "--timeout",
            str(DEADLINE),
            *(str(a) for a in extra),  # last: an explicit --timeout wins
        ]

    def __call__(self, *extra: str | Path) -> Result:
        """Run in this process (``tdxupdate.cli.main``)."""
        self.capsys.readouterr()
        return run_main(self.capsys, self.args(*extra))

    def start(self, *extra: str | Path) -> subprocess.Popen[str]:
        """Run ``python -m tdxupdate`` as a separate process (signals, concurrent runs)."""
        proc = subprocess.Popen(
            [sys.executable, "-m", "tdxupdate", *self.args(*extra)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.procs.append(proc)
        return proc

    def records(self) -> list[dict[str, Any]]:
        """The history file read as plain JSON lines (and checked to load cleanly)."""
        path = self.state_dir / "history.jsonl"
        if not path.exists():
            return []
        lines = path.read_text().splitlines()
        loaded = history.load(self.state_dir)
        assert loaded.skipped == []
        assert len(loaded.records) == len(lines)
        return [json.loads(line) for line in lines]


@pytest.fixture
def tool_for(
    hosts: Hosts, repo: Repo, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> Iterator[Callable[[str], Tool]]:
    tools: list[Tool] = []

    def make(series: str) -> Tool:
        tool = Tool(hosts.get(series), repo, tmp_path / f"state-{series}", capsys)
        tools.append(tool)
        return tool

    yield make
    for tool in tools:  # a failed test leaves no process running and nothing hung or loading
        for proc in tool.procs:
            if proc.poll() is None:
                proc.kill()
            proc.communicate()
        fresh(tool.host)


def finish(proc: subprocess.Popen[str]) -> Result:
    try:
        out, err = proc.communicate(timeout=DEADLINE)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"tdxupdate did not exit within {DEADLINE:g} s: {err}")
    res = Result(proc.returncode, out, err)
    if res.out.strip():
        validate(res.doc)
    return res


def wait_streaming(h: SimHost, proc: subprocess.Popen[str]) -> None:
    """Until the tool has written ``loading=1`` and at least one page of ``data``."""

    def streaming() -> bool:
        if proc.poll() is not None:
            res = finish(proc)
            pytest.fail(f"tdxupdate exited {res.code} before streaming: {res.err}")
        up = upload_state(h)
        return bool(up["loading"] and up["buffer_size"] > 0)

    wait_for(streaming, "tdxupdate streaming the image into data")


def wait_hung(h: SimHost, stage: str) -> None:
    wait_for(lambda: upload_state(h)["hung_stage"] == stage, f"the upload hung in {stage}")


# --- assertions ----------------------------------------------------------------------------------


def warnings_of(doc: dict[str, Any]) -> list[str]:
    """The warnings of an update, less ``non-intel-signer``, which every run that chose one of
    this test key's images must carry (issue 9 item 10), with the signer in the document."""
    warnings = list(doc["warnings"])
    if doc.get("signer") is not None:
        assert doc["signer"] == test_key().fingerprint
        assert "non-intel-signer" in warnings
        warnings.remove("non-intel-signer")
    return warnings


def assert_ok(res: Result) -> dict[str, Any]:
    assert res.code == 0, res.err
    doc = res.doc
    assert doc["ok"] is True
    assert doc["error"] is None
    assert res.err_lines == []
    assert "Traceback" not in res.err
    assert len(res.summary_lines) <= 1
    return doc


def assert_fails(res: Result, code: int, token: str) -> dict[str, Any]:
    """Exit code, token, and exactly one stderr line: the message of the JSON error."""
    assert res.code == code, res.err
    doc = res.doc
    assert doc["ok"] is False
    assert doc["error"]["code"] == token
    assert doc["error"]["exit_code"] == code
    assert res.err_lines == [f"tdxupdate: {doc['error']['message']}"]
    assert "Traceback" not in res.err
    assert len(res.summary_lines) <= 1
    return doc


@dataclass(frozen=True)
class Attempt:
    """What one history line of an attempt at ``to`` must say (cli-contract.md §5)."""

    result: str
    image_format: int
    kernel_error: str | None = None
    before: int = 8
    after: int | None = 8
    attempt: int = 1


def assert_record(rec: dict[str, Any], repo: Repo, expected: Attempt, *, to: str = TARGET) -> None:
    """One history line (cli-contract.md §5)."""
    assert set(HISTORY_FIELDS) <= set(rec), rec
    assert RFC3339_UTC.match(rec["time"]), rec["time"]
    assert datetime.strptime(rec["time"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC) <= (
        datetime.now(UTC)
    )
    assert rec["from_version"] == RUNNING
    assert rec["to_version"] == to
    assert rec["image_sha256"] == repo.sha(to)  # of the file in the repository, not what was sent
    assert rec["image_format"] == fmt(expected.image_format)
    assert rec["result"] == expected.result
    assert rec["kernel_error"] == expected.kernel_error
    assert isinstance(rec["duration_s"], int | float)
    assert rec["duration_s"] >= 0
    assert rec["remaining_before"] == expected.before
    assert rec["remaining_after"] == expected.after
    assert rec["tool_version"] == __version__
    assert rec["attempt"] == expected.attempt


REFUSED_B = {
    "result": "failed",
    "image_format": FORMAT_B,
    "kernel_error": "transferring:firmware-invalid",
}


def expect_history(tool: Tool, *expected: dict[str, Any], to: str = TARGET) -> list[dict[str, Any]]:
    """The history holds exactly these records (fields of :class:`Attempt`), in order."""
    records = tool.records()
    assert len(records) == len(expected), records
    for rec, want in zip(records, expected, strict=True):
        assert_record(rec, tool.repo, Attempt(**want), to=to)
    return records


def retried_first(series: str) -> list[dict[str, Any]]:
    """The harmless first attempt a v8 kernel refuses (Format B header) before the retry."""
    return [dict(REFUSED_B)] if series == "v8" else []


def retry_of(series: str) -> dict[str, Any]:
    """The record fields of the attempt that follows :func:`retried_first`."""
    return {"attempt": 2} if series == "v8" else {}


def assert_untouched(h: SimHost, *, module: str = RUNNING, remaining: int = 8) -> None:
    """Nothing was written to the upload interface at all."""
    state = h.state()
    assert state["uploads"] == []
    assert state["upload"]["counters"] == {}  # no loading=, data or cancel write
    assert state["received_size"] == 0
    assert state["module_version"] == module
    assert state["num_remaining_updates"] == remaining


def assert_unchanged(h: SimHost, *, remaining: int = 8) -> None:
    state = h.state()
    assert state["module_lost"] is False
    assert state["module_version"] == RUNNING
    assert state["num_remaining_updates"] == remaining


# --- success in every format, every generation -------------------------------------------------


@pytest.mark.parametrize("series", SERIES)
@pytest.mark.parametrize("version", [OLDER_A, TARGET], ids=["format-a-file", "format-b-file"])
def test_update_succeeds_and_converts_to_the_kernels_format(
    tool_for: Callable[[str], Tool], repo: Repo, series: str, version: str
) -> None:
    tool = tool_for(series)
    kfmt = KERNEL_FORMAT[series]
    res = tool("--update", version, "--json")
    doc = assert_ok(res)
    assert doc["changed"] is True
    assert doc["fatal"] is False
    assert doc["kernel_error"] is None
    assert doc["from_version"] == RUNNING
    assert doc["to_version"] == version
    assert doc["selected"]["version"] == version
    assert doc["host"]["generation"] == HOST_GENERATION[series]
    assert doc["host"]["image_format"] == fmt(FIRST_FORMAT[series])
    retried = series == "v8"
    assert warnings_of(doc) == (["format-retry"] if retried else [])
    assert len(res.warning_lines) == len(warnings_of(doc))

    state = tool.host.state()
    assert state["module_version"] == version
    assert state["num_remaining_updates"] == 7
    last = state["uploads"][-1]
    assert last["result"] == "success"
    assert last["format"] == fmt(kfmt)
    assert len(state["uploads"]) == (2 if retried else 1)
    # the file was converted byte-exactly to the format this kernel takes
    assert tool.host.received() == repo.sent(version, kfmt)

    expect_history(
        tool,
        *retried_first(series),
        {"result": "success", "image_format": kfmt, "after": 7, **retry_of(series)},
        to=version,
    )


@pytest.mark.parametrize("series", SERIES)
def test_already_up_to_date_writes_nothing_even_on_a_failing_host(
    tool_for: Callable[[str], Tool], series: str
) -> None:
    tool = tool_for(series)
    # nothing to do wins over preflight failures (§4 step 3)
    tool.host.control({"module": TARGET, "remaining": 0, "online": "0-5"})
    for args, target in ((["--update"], None), (["--update", TARGET], TARGET)):
        doc = assert_ok(tool(*args, "--json"))
        assert doc["changed"] is False
        assert doc["from_version"] == TARGET
        assert doc["to_version"] == target
        assert doc["kernel_error"] is None
    assert_untouched(tool.host, module=TARGET, remaining=0)
    assert tool.records() == []  # the lock was taken (step 1), but nothing is recorded


@pytest.mark.parametrize("series", SERIES)
def test_dry_run_writes_nothing(tool_for: Callable[[str], Tool], series: str) -> None:
    tool = tool_for(series)
    controls = tool.host.state()["controls"]
    doc = assert_ok(tool("--update", "--dry-run", "--json"))
    assert doc["dry_run"] is True
    assert doc["changed"] is False
    assert doc["to_version"] == TARGET
    assert doc["selected"]["version"] == TARGET
    kind = "A (0x100)" if FIRST_FORMAT[series] == FORMAT_A else "B (0x200)"
    assert f"sent as Format {kind}" in doc["plan"]
    assert ("retried once as Format A (0x100)" in doc["plan"]) == (series in ("v8", "v10"))
    assert_untouched(tool.host)
    assert tool.host.state()["controls"] == controls
    assert not tool.state_dir.exists()


# --- preflight refusals: nothing written -------------------------------------------------------

PREFLIGHT: dict[str, tuple[dict[str, Any], int]] = {
    "no-remaining-updates": ({"remaining": 0}, 69),
    "cpus-offline": ({"online": "0-5"}, 75),
    "permanent-wins": ({"remaining": 0, "online": "0-5"}, 69),
    "version-unreadable": ({"fault": "module-lost"}, 69),
}


@pytest.mark.parametrize("series", SERIES)
@pytest.mark.parametrize("case", list(PREFLIGHT))
def test_preflight_refusals_write_nothing(
    tool_for: Callable[[str], Tool], series: str, case: str
) -> None:
    tool = tool_for(series)
    command, code = PREFLIGHT[case]
    tool.host.control(command)
    token = "no-remaining-updates" if case == "permanent-wins" else case
    for extra in (["--dry-run"], []):
        assert_fails(tool("--update", *extra, "--json"), code, token)
    state = tool.host.state()
    assert state["uploads"] == []
    assert state["upload"]["counters"] == {}
    assert tool.records() == []


@pytest.mark.parametrize(
    ("settings", "code", "token", "says"),
    [
        # v2 registers the upload device only while updates remain (kernel-abi.md §1)
        (
            {"kernel": "v2", "remaining": 0},
            69,
            "no-upload-interface",
            "registers the interface only while updates remain",
        ),
        # G3+ hides the P-SEAMLDR attributes and the device on a CPU with the erratum
        (
            {"kernel": "v10", "erratum": True},
            69,
            "no-upload-interface",
            "seamret_invd_vmcs",
        ),
        # the CPU signature cannot be known (not an Intel CPU)
        ({"kernel": "ml", "vendor": "AuthenticAMD"}, 69, "cpu-unknown", "AuthenticAMD"),
    ],
    ids=["v2-no-updates-left", "v10-erratum", "cpu-unknown"],
)
def test_refusals_of_hosts_without_an_update_path(
    sim: Callable[..., SimHost],
    repo: Repo,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    settings: dict[str, Any],
    code: int,
    token: str,
    says: str,
) -> None:
    host = sim(
        "spr",
        module=RUNNING,
        mapping=repo.mapping,
        trusted_signers=[test_key().fingerprint],
        **settings,
    )
    tool = Tool(host, repo, tmp_path / "state", capsys)
    for extra in (["--dry-run"], []):
        doc = assert_fails(tool("--update", *extra, "--json"), code, token)
        assert says in doc["error"]["message"]
    assert host.state()["uploads"] == []
    assert tool.records() == []


# --- kernel errors, per generation ---------------------------------------------------------------


@pytest.mark.parametrize("series", SERIES)
def test_kernel_error_is_exit_1_and_nothing_changed(
    tool_for: Callable[[str], Tool], series: str
) -> None:
    tool = tool_for(series)
    tool.host.control({"fault": "transferring:hw-error"})
    doc = assert_fails(tool("--update", "--json"), 1, "kernel-error")
    assert doc["kernel_error"] == "transferring:hw-error"
    assert doc["fatal"] is False
    assert doc["changed"] is False
    message = doc["error"]["message"]
    assert "hw-error" in message
    assert f"still reads {RUNNING}" in message
    assert_unchanged(tool.host)
    expect_history(
        tool,
        {
            "result": "failed",
            "image_format": FIRST_FORMAT[series],
            "kernel_error": "transferring:hw-error",
        },
    )


@pytest.mark.parametrize("series", SERIES)
def test_device_busy_is_exit_75_where_the_kernel_says_so(
    tool_for: Callable[[str], Tool], series: str
) -> None:
    tool = tool_for(series)
    tool.host.control({"fault": "device-busy"})
    token = DEVICE_BUSY[series]
    kernel_error = f"transferring:{token}"
    if token == "device-busy":
        doc = assert_fails(tool("--update", "--json"), 75, "device-busy")
        assert "TD build" in doc["error"]["message"]
        result = "device-busy"
    else:
        # mainline reports every driver errno as firmware-invalid: the tool cannot tell
        doc = assert_fails(tool("--update", "--json"), 1, "kernel-error")
        result = "failed"
    assert doc["kernel_error"] == kernel_error
    assert doc["fatal"] is False
    assert_unchanged(tool.host)
    expect_history(
        tool,
        *retried_first(series),
        {
            "result": result,
            "image_format": KERNEL_FORMAT[series],
            "kernel_error": kernel_error,
            **retry_of(series),
        },
    )


@pytest.mark.parametrize("series", SERIES)
@pytest.mark.parametrize("cause", ["injected", "seamldr-refuses"])
def test_module_lost_is_fatal_exit_1(
    tool_for: Callable[[str], Tool], series: str, cause: str
) -> None:
    tool = tool_for(series)
    if cause == "injected":
        tool.host.control({"fault": "transferring:hw-error:fatal"})
        kernel_error, first, more = "transferring:hw-error", [], {}
        sent = FIRST_FORMAT[series]
    else:
        # the tool trusts the key, P-SEAMLDR does not: it fails after the shutdown
        tool.host.control({"trusted_signers": ["ab" * 32]})
        kernel_error, first = f"transferring:{SEAMLDR_EIO[series]}", retried_first(series)
        sent, more = KERNEL_FORMAT[series], retry_of(series)
    doc = assert_fails(tool("--update", "--json"), 1, "module-lost")
    assert doc["fatal"] is True
    assert doc["changed"] is False
    assert doc["kernel_error"] == kernel_error
    message = doc["error"]["message"]
    assert "the TDX module is lost" in message
    assert "reboot" in message
    assert "may" not in message
    state = tool.host.state()
    assert state["module_lost"] is True
    assert state["module_version"] is None
    records = expect_history(
        tool,
        *first,
        {"result": "module-lost", "image_format": sent, "kernel_error": kernel_error, **more},
    )
    assert records[-1]["fatal"] is True


@pytest.mark.parametrize(
    ("series", "code", "token", "kernel_error"),
    [
        # v1-v4 check the CPUs themselves before the shutdown: EBUSY, nothing changed
        ("v3", 75, "device-busy", "transferring:device-busy"),
        # later kernels leave it to SEAMLDR.INSTALL, after the shutdown: the module is lost
        ("v7", 1, "module-lost", "transferring:hw-error"),
    ],
)
def test_cpu_going_offline_during_the_upload(
    tool_for: Callable[[str], Tool], series: str, code: int, token: str, kernel_error: str
) -> None:
    tool = tool_for(series)
    tool.host.control({"fault": "hang:receiving", "times": 1})
    proc = tool.start("--update", "--json")
    wait_hung(tool.host, "receiving")  # preflight passed and the image is committed
    tool.host.control({"online": "0-6"})
    tool.host.control({"unhang": True})
    doc = assert_fails(finish(proc), code, token)
    assert doc["kernel_error"] == kernel_error
    lost = token == "module-lost"
    assert doc["fatal"] is lost
    assert tool.host.state()["module_lost"] is lost
    result = "module-lost" if lost else "device-busy"
    expect_history(tool, {"result": result, "image_format": FORMAT_A, "kernel_error": kernel_error})


@pytest.mark.parametrize("series", SERIES)
def test_success_with_the_wrong_version_is_exit_1(
    tool_for: Callable[[str], Tool], series: str
) -> None:
    tool = tool_for(series)
    tool.host.control({"fault": "wrong-version"})
    doc = assert_fails(tool("--update", "--json"), 1, "version-mismatch")
    assert doc["changed"] is False
    assert doc["fatal"] is False
    assert doc["kernel_error"] is None
    assert f"running version is {RUNNING}, not {TARGET}" in doc["error"]["message"]
    assert_unchanged(tool.host, remaining=7)  # the kernel spent an update
    expect_history(
        tool,
        *retried_first(series),
        {
            "result": "version-mismatch",
            "image_format": KERNEL_FORMAT[series],
            "after": 7,
            **retry_of(series),
        },
    )


@pytest.mark.parametrize("series", SERIES)
def test_hang_times_out_then_the_next_run_finds_it_busy(
    tool_for: Callable[[str], Tool], series: str
) -> None:
    tool = tool_for(series)
    tool.host.control({"fault": "hang", "times": 1})
    doc = assert_fails(tool("--update", "--json", "--timeout", "0.3"), 75, "timeout")
    message = doc["error"]["message"]
    assert "within 0.3 s" in message
    assert "still 'transferring'" in message
    assert doc["kernel_error"] is None
    assert doc["changed"] is False
    first = FIRST_FORMAT[series]
    expect_history(tool, {"result": "timeout", "image_format": first, "after": None})

    # the kernel still owns the upload: the next run refuses before writing anything
    assert upload_state(tool.host)["hung_stage"] == "transferring"
    counters = upload_state(tool.host)["counters"]
    doc = assert_fails(tool("--update", "--json"), 75, "upload-busy")
    assert "transferring" in doc["error"]["message"]
    assert upload_state(tool.host)["counters"] == counters
    assert len(tool.host.state()["uploads"]) == 1
    assert len(tool.records()) == 1

    # once the kernel finishes, the host reports what happened to that upload
    tool.host.control({"unhang": True})
    wait_idle(tool.host)
    installed = series != "v8"  # v8 refuses the Format B header of the first attempt
    doc = assert_ok(tool("--update", "--json"))
    assert doc["changed"] is not installed
    assert tool.host.state()["module_version"] == TARGET
    assert len(tool.records()) == (1 if installed else 3)


# --- every error token at every stage (one series) -----------------------------------------------


@pytest.mark.parametrize("stage", STAGES)
@pytest.mark.parametrize("token", TOKENS)
def test_every_error_token_at_every_stage(
    tool_for: Callable[[str], Tool], stage: str, token: str
) -> None:
    tool = tool_for("ml")
    tool.host.control({"fault": f"{stage}:{token}"})
    kernel_error = f"{stage}:{token}"
    if token == "device-busy":
        doc = assert_fails(tool("--update", "--json"), 75, "device-busy")
        result = "device-busy"
    else:
        doc = assert_fails(tool("--update", "--json"), 1, "kernel-error")
        result = "failed"
    assert doc["kernel_error"] == kernel_error
    assert doc["fatal"] is False
    assert doc["changed"] is False
    message = doc["error"]["message"]
    assert token in message
    assert f"still reads {RUNNING}" in message
    assert_unchanged(tool.host)
    (up,) = tool.host.state()["uploads"]
    assert up["error"] == kernel_error
    expect_history(tool, {"result": result, "image_format": FORMAT_B, "kernel_error": kernel_error})


@pytest.mark.parametrize("stage", STAGES)
@pytest.mark.parametrize("token", ["hw-error", "firmware-invalid", "firmware-duplicate"])
def test_fatal_error_at_every_stage_is_module_lost(
    tool_for: Callable[[str], Tool], stage: str, token: str
) -> None:
    tool = tool_for("ml")
    tool.host.control({"fault": f"{stage}:{token}:fatal"})
    doc = assert_fails(tool("--update", "--json"), 1, "module-lost")
    assert doc["fatal"] is True
    assert doc["kernel_error"] == f"{stage}:{token}"
    assert doc["error"]["message"] == (
        f"the update failed after the old module was shut down (kernel error {stage}:{token}): "
        "the TDX module is lost, every running TD has been killed, and TDX is unusable until "
        "this host reboots"
    )
    records = expect_history(
        tool,
        {"result": "module-lost", "image_format": FORMAT_B, "kernel_error": f"{stage}:{token}"},
    )
    assert records[0]["fatal"] is True


# --- the automatic format retry (§4 step 10) ---------------------------------------------------


def test_explicit_format_disables_the_retry(tool_for: Callable[[str], Tool]) -> None:
    tool = tool_for("v8")
    doc = assert_fails(tool("--update", "--json", "--image-format", "0x200"), 1, "kernel-error")
    assert warnings_of(doc) == []
    assert doc["host"]["image_format_fallback"] is None
    assert doc["kernel_error"] == "transferring:firmware-invalid"
    assert_unchanged(tool.host)
    assert len(tool.host.state()["uploads"]) == 1
    expect_history(tool, dict(REFUSED_B))

    doc = assert_ok(tool("--update", "--json", "--image-format", "0x100"))
    assert warnings_of(doc) == []
    assert doc["changed"] is True
    assert len(tool.host.state()["uploads"]) == 2
    expect_history(
        tool, dict(REFUSED_B), {"result": "success", "image_format": FORMAT_A, "after": 7}
    )


def test_format_retry_fails_twice_and_records_both(tool_for: Callable[[str], Tool]) -> None:
    tool = tool_for("v10")
    tool.host.control({"fault": "transferring:firmware-invalid"})
    res = tool("--update", "--json")
    doc = assert_fails(res, 1, "kernel-error")
    assert warnings_of(doc) == ["format-retry"]
    assert len(res.warning_lines) == 1
    assert doc["kernel_error"] == "transferring:firmware-invalid"
    assert [u["error"] for u in tool.host.state()["uploads"]] == [
        "transferring:firmware-invalid"
    ] * 2
    assert_unchanged(tool.host)
    expect_history(tool, dict(REFUSED_B), {**REFUSED_B, "image_format": FORMAT_A, "attempt": 2})


def test_no_format_retry_when_the_module_was_lost(tool_for: Callable[[str], Tool]) -> None:
    tool = tool_for("v8")
    tool.host.control({"fault": "transferring:firmware-invalid:fatal"})
    doc = assert_fails(tool("--update", "--json"), 1, "module-lost")
    assert warnings_of(doc) == []
    assert len(tool.host.state()["uploads"]) == 1
    expect_history(tool, {**REFUSED_B, "result": "module-lost"})


def test_no_format_retry_on_mainline(tool_for: Callable[[str], Tool]) -> None:
    tool = tool_for("ml")
    tool.host.control({"fault": "transferring:firmware-invalid"})
    doc = assert_fails(tool("--update", "--json"), 1, "kernel-error")
    assert warnings_of(doc) == []
    assert doc["host"]["image_format_fallback"] is None
    assert len(tool.host.state()["uploads"]) == 1
    expect_history(tool, dict(REFUSED_B))


# --- remaining-updates-not-decremented -----------------------------------------------------------


def test_counter_not_decremented_is_a_warning(tool_for: Callable[[str], Tool]) -> None:
    tool = tool_for("ml")
    # hold the upload after P-SEAMLDR installed the module (and spent an update), then put the
    # counter back, as a kernel that does not account for the update would show it
    tool.host.control({"fault": "hang:programming"})
    proc = tool.start("--update", "--json")
    wait_hung(tool.host, "programming")
    assert tool.host.state()["num_remaining_updates"] == 7
    tool.host.control({"remaining": 8})
    tool.host.control({"unhang": True})
    res = finish(proc)
    doc = assert_ok(res)
    assert doc["changed"] is True
    assert warnings_of(doc) == ["remaining-updates-not-decremented"]
    assert res.warning_lines == [
        "tdxupdate: warning: num_remaining_updates went from 8 to 8, not down by one"
    ]
    expect_history(tool, {"result": "success", "image_format": FORMAT_B, "after": 8})


# --- concurrency and signals ---------------------------------------------------------------------


def test_two_concurrent_runs_one_uploads_the_other_exits_75(
    tool_for: Callable[[str], Tool],
) -> None:
    tool = tool_for("ml")
    tool.host.control({"fault": f"slow-write={SLOW_WRITE_MS}"})
    first = tool.start("--update", "--json")
    try:
        wait_streaming(tool.host, first)
        doc = assert_fails(tool("--update", "--json"), 75, "locked")
        assert f"pid {first.pid}" in doc["error"]["message"]
        assert "host" not in doc  # refused first of all, before reading the host (§4 step 1)
    finally:
        tool.host.control({"clear_faults": True})  # let the first run stream at full speed
        res = finish(first)
    assert_ok(res)
    state = tool.host.state()
    assert len(state["uploads"]) == 1
    assert state["module_version"] == TARGET
    expect_history(tool, {"result": "success", "image_format": FORMAT_B, "after": 7})


@pytest.mark.parametrize(
    ("series", "signum"),
    [
        ("ml", signal.SIGTERM),
        ("ml", signal.SIGINT),
        ("v3", signal.SIGTERM),
        # every terminating signal alike (issue 9 item 9): these used to kill the tool with
        # loading left at 1, no message and no history record
        ("ml", signal.SIGHUP),
        ("ml", signal.SIGQUIT),
        ("ml", signal.SIGUSR1),
    ],
    ids=["ml-SIGTERM", "ml-SIGINT", "v3-SIGTERM", "ml-SIGHUP", "ml-SIGQUIT", "ml-SIGUSR1"],
)
def test_signal_while_streaming_aborts_and_commits_nothing(
    tool_for: Callable[[str], Tool], series: str, signum: signal.Signals
) -> None:
    tool = tool_for(series)
    tool.host.control({"fault": f"slow-write={SLOW_WRITE_MS}"})
    proc = tool.start("--update", "--json")
    wait_streaming(tool.host, proc)
    proc.send_signal(signum)
    res = finish(proc)
    code = 128 + signum
    doc = assert_fails(res, code, "interrupted")
    assert signum.name in doc["error"]["message"]
    assert "aborted" in doc["error"]["message"]
    assert doc["changed"] is False
    assert doc["kernel_error"] is None

    state = tool.host.state()
    up = state["upload"]
    assert up["loading"] is False
    assert up["status"] == "idle"
    assert up["counters"]["loading_aborts"] == 1  # -1 was written
    assert 0 < up["counters"]["data_writes"] < len(tool.repo.sent(TARGET, FORMAT_B)) // 4096
    assert state["uploads"] == []  # nothing was committed
    assert_unchanged(tool.host)
    expect_history(
        tool, {"result": "interrupted", "image_format": KERNEL_FORMAT[series], "after": None}
    )


def test_signal_after_commit_does_not_abandon_the_update(
    tool_for: Callable[[str], Tool],
) -> None:
    tool = tool_for("ml")
    tool.host.control({"fault": "hang:transferring"})
    proc = tool.start("--update", "--json")
    wait_hung(tool.host, "transferring")
    proc.send_signal(signal.SIGTERM)
    # the tool keeps watching: it is still there while the kernel works
    assert proc.poll() is None
    tool.host.control({"unhang": True})
    res = finish(proc)
    doc = assert_ok(res)
    assert doc["changed"] is True
    assert tool.host.state()["module_version"] == TARGET
    (rec,) = expect_history(tool, {"result": "success", "image_format": FORMAT_B, "after": 7})
    assert "SIGTERM" in rec["message"]


def test_killed_run_leaves_history_intact_and_the_next_run_succeeds(
    tool_for: Callable[[str], Tool],
) -> None:
    tool = tool_for("ml")
    tool.host.control({"fault": "transferring:hw-error", "times": 1})
    assert_fails(tool("--update", "--json"), 1, "kernel-error")
    before = (tool.state_dir / "history.jsonl").read_bytes()

    tool.host.control({"fault": f"slow-write={SLOW_WRITE_MS}"})
    proc = tool.start("--update", "--json")
    wait_streaming(tool.host, proc)
    proc.kill()
    res = finish(proc)
    assert res.code == -signal.SIGKILL
    assert (tool.state_dir / "history.jsonl").read_bytes() == before
    assert upload_state(tool.host)["loading"] is True  # the dead run left the loader loading
    assert len(tool.host.state()["uploads"]) == 1  # only the first run's: nothing committed

    tool.host.control({"clear_faults": True})
    doc = assert_ok(tool("--update", "--json"))  # loading=1 starts the buffer afresh
    assert doc["changed"] is True
    assert tool.host.received() == tool.repo.sent(TARGET, FORMAT_B)
    expect_history(
        tool,
        {"result": "failed", "image_format": FORMAT_B, "kernel_error": "transferring:hw-error"},
        {"result": "success", "image_format": FORMAT_B, "after": 7},
    )


# --- --history after real attempts ---------------------------------------------------------------


def test_history_shows_every_attempt_oldest_first(tool_for: Callable[[str], Tool]) -> None:
    tool = tool_for("v8")
    tool.host.control({"fault": "device-busy", "times": 2})  # both uploads of the first run
    assert_fails(tool("--update", "--json"), 75, "device-busy")
    assert_ok(tool("--update", "--json"))
    records = expect_history(
        tool,
        dict(REFUSED_B),
        {
            "result": "device-busy",
            "image_format": FORMAT_A,
            "kernel_error": "transferring:device-busy",
            "attempt": 2,
        },
        dict(REFUSED_B),
        {"result": "success", "image_format": FORMAT_A, "after": 7, "attempt": 2},
    )

    doc = assert_ok(tool("--history", "--json"))
    assert doc["action"] == "history"
    assert doc["warnings"] == []
    assert doc["history"] == records

    res = tool("--history")
    assert res.code == 0
    assert res.err == ""
    lines = res.out.splitlines()
    assert len(lines) == 4
    for line, rec in zip(lines, records, strict=True):
        assert line.startswith(f"{rec['time']}  {RUNNING} -> {TARGET}  {rec['result']}")
        assert f"format {rec['image_format']}" in line
    assert "[transferring:device-busy]" in lines[1]
    assert "remaining 8 -> 7" in lines[3]


def test_signal_before_anything_was_written_exits_without_a_record(
    tool_for: Callable[[str], Tool], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A SIGTERM that lands between opening data and loading=1: the driver reports that it
    # touched nothing, so there is no attempt to record (§5), only the exit code. The signal
    # is sent from the one door to the host, as the upload interface's data is opened.
    tool = tool_for("ml")
    real_open = Sysroot.open_fd

    def open_then_signal(self: Sysroot, path: Path, flags: int) -> int:
        fd = real_open(self, path, flags)
        if path.name == "data":
            os.kill(os.getpid(), signal.SIGTERM)
        return fd

    monkeypatch.setattr(Sysroot, "open_fd", open_then_signal)
    doc = assert_fails(tool("--update", "--json"), 143, "interrupted")
    assert "before anything was written" in doc["error"]["message"]
    assert tool.records() == []
    assert tool.host.state()["uploads"] == []
    assert_unchanged(tool.host)


# --- the kernel's outcome is reported even when recording it fails (issue 9 items 5 and 7) -----


def failing_history(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """history.append fails like a full disk; returns the outcomes it was asked to record."""
    from tdxupdate.errors import IOFailure

    asked: list[str] = []

    def append(state_dir: Path, record: history.HistoryRecord) -> None:
        asked.append(record.result)
        raise IOFailure(f"{state_dir}/history.jsonl: cannot write the update history: no space")

    monkeypatch.setattr(history, "append", append)
    return asked


@pytest.mark.parametrize("outcome", ["success", "module-lost"])
def test_a_failed_history_write_never_replaces_the_kernels_outcome(
    tool_for: Callable[[str], Tool],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    outcome: str,
) -> None:
    tool = tool_for("ml")
    if outcome == "module-lost":
        tool.host.control({"fault": "transferring:hw-error:fatal"})
    asked = failing_history(monkeypatch)
    prom = tmp_path / "tdxupdate.prom"
    res = tool("--update", "--json", "--metrics-file", prom)
    assert asked == [outcome]
    doc = res.doc
    assert "history-write-failed" in doc["warnings"]
    assert any("history record was not written" in ln for ln in res.warning_lines)
    metrics = prom.read_text()
    if outcome == "success":
        assert res.code == 0
        assert doc["ok"] is True
        assert doc["changed"] is True
        assert "tdxupdate_module_lost 0" in metrics
    else:
        assert res.code == 1
        assert doc["error"]["code"] == "module-lost"
        assert doc["fatal"] is True
        assert doc["error"]["exit_code"] == 1
        assert "tdxupdate_module_lost 1" in metrics
    assert f"tdxupdate_last_exit_code {res.code}" in metrics


def test_a_failed_metrics_write_after_an_update_keeps_the_outcome_and_says_so(
    tool_for: Callable[[str], Tool], tmp_path: Path
) -> None:
    tool = tool_for("ml")
    prom = tmp_path / "missing-dir" / "tdxupdate.prom"
    res = tool("--update", "--json", "--metrics-file", prom)
    doc = res.doc
    assert res.code == 0
    assert doc["ok"] is True
    assert doc["changed"] is True
    assert warnings_of(doc) == ["metrics-write-failed"]
    # a run that changed nothing fails with the write error, and its JSON says so
    res = tool("--update", "--json", "--metrics-file", prom)
    assert res.code == 74
    assert res.doc["ok"] is False
    assert res.doc["error"]["exit_code"] == 74


# --- the host is checked again right before the first write (issue 9 items 3 and 4) -----------


def during_read(monkeypatch: pytest.MonkeyPatch, act: Callable[[], None]) -> None:
    """Run ``act`` while the chosen image is being read (a slow download, in effect)."""
    from tdxupdate import sources

    real = sources.LocalRepository.read

    def read(self: sources.LocalRepository, ref: sources.ImageRef) -> bytes:
        act()
        return real(self, ref)

    monkeypatch.setattr(sources.LocalRepository, "read", read)


@pytest.mark.parametrize(
    ("change", "token"),
    [
        ({"online": "0"}, "cpus-offline"),
        ({"remaining": 5}, "host-changed"),
    ],
    ids=["cpu-offline", "update-spent-elsewhere"],
)
def test_preflight_is_read_again_before_the_first_write(
    tool_for: Callable[[str], Tool],
    monkeypatch: pytest.MonkeyPatch,
    change: dict[str, Any],
    token: str,
) -> None:
    tool = tool_for("ml")
    during_read(monkeypatch, lambda: tool.host.control(change))
    res = tool("--update", "--json")
    doc = assert_fails(res, 75, token)
    assert (
        "before the first write" in doc["error"]["message"]
        or "since the preflight" in (doc["error"]["message"])
    )
    state = tool.host.state()
    assert state["uploads"] == []
    assert state["upload"]["counters"] == {}
    assert tool.records() == []


def test_two_runs_with_different_state_dirs_exclude_each_other(
    tool_for: Callable[[str], Tool], tmp_path: Path
) -> None:
    from tdxupdate import lock

    tool = tool_for("ml")
    upload_dir = Path(tool.host.sysroot) / "sys/class/firmware/tdx_module"
    # another tdxupdate, with its own --state-dir, is streaming through this interface
    with lock.acquire_host(upload_dir):
        res = tool("--update", "--json")
        assert_fails(res, 75, "locked")
    assert_untouched(tool.host)
    assert lock.host_lock_path(upload_dir).parent == lock.HOST_LOCK_DIR


def test_an_upload_left_open_by_another_writer_is_not_spliced(
    tool_for: Callable[[str], Tool],
) -> None:
    tool = tool_for("ml")
    loading = Path(tool.host.sysroot) / "sys/class/firmware/tdx_module/loading"
    loading.write_text("1")  # another writer opened an upload and has not sent a byte yet
    try:
        doc = assert_fails(tool("--update", "--json"), 75, "upload-busy")
        assert "loading reads 1" in doc["error"]["message"]
        assert tool.host.state()["received_size"] == 0
    finally:
        loading.write_text("-1")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_a_signal_before_streaming_still_prints_the_json_document(
    tool_for: Callable[[str], Tool], signum: signal.Signals, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 9 item 7: SIGTERM before the stream printed no JSON (the process just died)."""
    import os

    tool = tool_for("ml")
    during_read(monkeypatch, lambda: os.kill(os.getpid(), signum))
    res = tool("--update", "--json")
    doc = assert_fails(res, 128 + signum, "interrupted")
    assert signum.name in doc["error"]["message"]
    assert_untouched(tool.host)
    assert tool.records() == []


def test_a_lost_module_is_a_state_of_the_host_until_reboot(
    tool_for: Callable[[str], Tool], tmp_path: Path
) -> None:
    """Issue 9 item 6: the alert cleared itself on the next run while the module stayed lost."""
    tool = tool_for("ml")
    tool.host.control({"fault": "transferring:hw-error:fatal"})
    prom = tmp_path / "tdxupdate.prom"
    assert_fails(tool("--update", "--json", "--metrics-file", prom), 1, "module-lost")
    assert "tdxupdate_module_lost 1" in prom.read_text()

    # the next runs, whatever they are, keep saying so
    res = tool("--status", "--json", "--metrics-file", prom)
    doc = assert_fails(res, 1, "module-lost")
    assert doc["host"]["module_lost"] is True
    assert "reboot" in doc["error"]["message"]
    assert "tdxupdate_module_lost 1" in prom.read_text()
    res = tool("--update", "--json", "--metrics-file", prom)
    assert res.code != 0
    assert res.doc["ok"] is False
    assert "tdxupdate_module_lost 1" in prom.read_text()
    assert "tdxupdate_module_lost 0" not in prom.read_text()


# --- what is said around the wait (issue 9 item 8) -------------------------------------------


def test_the_story_of_an_update_never_contradicts_its_outcome(
    tool_for: Callable[[str], Tool],
) -> None:
    tool = tool_for("ml")
    res = tool("--update")
    assert res.code == 0, res.err
    assert "Ctrl-C aborts the upload until its last byte is committed" in res.out
    assert "waiting for the kernel to install the module (up to 30 s)" in res.out
    assert "the kernel reported no error" in res.out
    assert "error: empty" not in res.out + res.err

    # a timeout is not told as "the kernel finished … accepted the image"
    fresh(tool.host)
    tool.host.control({"fault": "hang", "times": 1})
    res = tool("--update", "--timeout", "0.3")
    assert res.code == 75
    told = res.out + res.err
    assert "waiting for the kernel" in told
    assert "did not finish within 0.3 s" in told
    assert "finished after" not in told
    assert "accepted" not in told
    tool.host.control({"unhang": True})
    wait_idle(tool.host)


def test_a_signer_other_than_intels_is_warned_about_and_recorded(
    tool_for: Callable[[str], Tool], repo: Repo
) -> None:
    """Issue 9 item 10: extra trusted keys produced no warning and history recorded no signer."""
    tool = tool_for("ml")
    res = tool("--update", "--json")
    doc = assert_ok(res)
    assert "non-intel-signer" in doc["warnings"]
    assert doc["signer"] == test_key().fingerprint
    assert any("not Intel's production key" in ln for ln in res.err.splitlines())
    rec = tool.records()[-1]
    assert rec["signer"] == test_key().fingerprint
    target = repo.files[TARGET]
    sig = convert(target, FORMAT_B)  # the sigstruct is unchanged by conversion
    assert rec["mrseam"] == hashlib.sha384(sig[2 * 4096 :]).hexdigest()
    assert rec["seamsvn"].startswith("0x")


# --- a closed stdout (issue 9 item 19) --------------------------------------------------------


@pytest.mark.parametrize("action", ["--list", "--update"])
def test_a_closed_stdout_ends_quietly_and_never_stops_an_update(
    tool_for: Callable[[str], Tool], action: str
) -> None:
    """``tdxupdate --list | head`` exited 74 silently; during an update a closed stdout must
    not abandon the watch or the history record: the outcome decides the exit code."""
    tool = tool_for("ml")
    proc = tool.start(action)
    assert proc.stdout is not None
    proc.stdout.close()  # the reader went away before the first line
    _out, err = proc.communicate(timeout=DEADLINE)
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    assert "error" not in err.lower()
    if action == "--update":
        assert tool.host.state()["module_version"] == TARGET
        assert [r["result"] for r in tool.records()] == ["success"]
