"""The whole ``--update`` under random faults and signals, against the emulated kernel (issue 9,
"Done means").

Each example draws a kernel series, a fault the emulated kernel or the host will show (an
upload error at any stage, fatal or not, a refused shutdown, a wrong version read-back, short
and slow writes, CPUs going offline, a hang that runs into ``--timeout``), a broken history or
metrics file, and a terminating signal sent at a random moment of the run. Then it runs the real
``python -m tdxupdate --update --json`` against the mount and checks the invariants that must hold
whatever happened:

1. every byte the kernel took in is a byte of the verified image, converted to a format the
   tool sends (no other bytes, no splice);
2. the process's exit code = the JSON document's ``exit_code`` = the metrics file's
   ``tdxupdate_last_exit_code``; the last history record's result agrees with the JSON's;
3. ``loading`` is never left at 1;
4. there is one history record for every attempt that reached the kernel (``loading=1``), or the
   ``history-write-failed`` warning when the history could not be written;
5. what the JSON says happened to the module is what happened (changed, lost, unchanged).

The fast suite runs a few examples; ``TDXUPDATE_PROPERTY_EXAMPLES`` raises the count (CI's fuzz
stage). Hypothesis prints the failing example, which replays with the same draw.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from factories.images import Release, make_image, mapping_document, test_key, write_repo
from factories.sim import mount_sim
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from tdxupdate.errors import TERMINATING_SIGNALS
from tdxupdate.image import FORMAT_A, FORMAT_B
from tdxupdate.imagebuild import convert
from tdxupdate.kernel_errors import KNOWN_ERROR_TOKENS
from tdxupdate.sim.session import SimHost

pytestmark = pytest.mark.fuse

RUNNING = "1.5.06"
TARGET = "1.5.09"
FEATURES = "0x800000000002"
DEADLINE = 60.0
EXAMPLES = int(os.environ.get("TDXUPDATE_PROPERTY_EXAMPLES", "10"))
#: v8: flat, Format A only (the tool tries Format B first, then retries: two attempts);
#: ml: mainline 7.2, Format B.
SERIES = ("ml", "v8")

#: history result -> the JSON error token it must come with
RESULT_TOKEN = {
    "version-mismatch": "version-mismatch",
    "module-lost": "module-lost",
    "device-busy": "device-busy",
    "timeout": "timeout",
    "interrupted": "interrupted",
}


@dataclass(frozen=True)
class Case:
    series: str
    fault: str | None
    times: int | None
    slow_ms: int
    signum: int | None
    delay: float
    history_broken: bool
    metrics_broken: bool


faults = st.one_of(
    st.none(),
    st.builds(
        lambda stage, token, fatal: f"{stage}:{token}{':fatal' if fatal else ''}",
        st.sampled_from(("preparing", "transferring", "programming")),
        st.sampled_from(sorted(KNOWN_ERROR_TOKENS)),
        st.booleans(),
    ),
    st.sampled_from(
        (
            "device-busy",
            "wrong-version",
            "short-write=1000",
            "short-write=4096",
            "offline=3",
            "hang:preparing",
            "hang:transferring",
            "hang:programming",
        )
    ),
)

cases = st.builds(
    Case,
    series=st.sampled_from(SERIES),
    fault=faults,
    times=st.sampled_from((1, None)),
    slow_ms=st.sampled_from((0, 0, 5, 20)),
    signum=st.one_of(st.none(), st.sampled_from(TERMINATING_SIGNALS)),
    delay=st.floats(min_value=0.0, max_value=1.2),
    history_broken=st.sampled_from((False, False, False, True)),
    metrics_broken=st.sampled_from((False, False, True)),
)


class Repo:
    """The test repository (a plain class: hypothesis prints fixtures by their repr)."""

    def __init__(self, path: Path, keys: Path, file: bytes):
        self.path, self.keys, self.file = path, keys, file

    def __repr__(self) -> str:
        return f"Repo({self.path})"

    def accepted_shas(self) -> set[str]:
        """sha256 of every byte string the tool may send: the verified file, in each format."""
        return {hashlib.sha256(convert(self.file, fmt)).hexdigest() for fmt in (FORMAT_A, FORMAT_B)}


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Repo:
    root = tmp_path_factory.mktemp("property-repo")
    files = {
        RUNNING: make_image(RUNNING, fmt=FORMAT_A),
        TARGET: make_image(TARGET, fmt=FORMAT_B, module_pages=30),
    }
    releases = [Release(v, min_seamldr_versions=("1.5.00",), tdx_feature0=FEATURES) for v in files]
    path = write_repo(root / "repo", files, mapping_document(releases))
    keys = root / "trusted-keys"
    keys.write_text(f"{test_key().fingerprint}\n")
    return Repo(path, keys, files[TARGET])


class Hosts:
    def __init__(self, by_series: dict[str, SimHost]):
        self.by_series = by_series

    def __repr__(self) -> str:
        return f"Hosts({', '.join(self.by_series)})"


@pytest.fixture(scope="module")
def hosts(tmp_path_factory: pytest.TempPathFactory, sim_cache: Path, repo: Repo) -> Iterator[Hosts]:
    base = tmp_path_factory.mktemp("property-hosts")
    with contextlib.ExitStack() as stack:
        yield Hosts(
            {
                series: stack.enter_context(
                    mount_sim(
                        base / series,
                        "spr",
                        cache_dir=sim_cache,
                        kernel=series,
                        module=RUNNING,
                        seamldr="1.5.00",
                        cpu="0x806f8",
                        remaining=8,
                        mapping=repo.path / "mapping_file.json",
                        trusted_signers=[test_key().fingerprint],
                    )
                )
                for series in SERIES
            }
        )


def wait_for(predicate: Any, what: str) -> None:
    deadline = time.monotonic() + DEADLINE
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"never happened within {DEADLINE:g} s: {what}")
        time.sleep(0.005)


def fresh(h: SimHost) -> None:
    h.control({"clear_faults": True})
    wait_for(lambda: h.state()["upload"]["status"] == "idle", "the upload interface idle")
    h.control({"reset": True})


def metric(text: str, name: str) -> float | None:
    m = re.search(rf"^tdxupdate_{name}(?:{{[^}}]*}})? (\S+)$", text, re.MULTILINE)
    return float(m.group(1)) if m else None


def arm(h: SimHost, case: Case) -> None:
    """Start from a fresh kernel with the case's fault and slow writes configured."""
    fresh(h)
    if case.fault is not None:
        command: dict[str, Any] = {"fault": case.fault}
        if case.times is not None and not case.fault.startswith(("offline", "short", "slow")):
            command["times"] = case.times
        h.control(command)
    if case.slow_ms:
        h.control({"fault": f"slow-write={case.slow_ms}"})


def run_update(
    h: SimHost, repo: Repo, case: Case, state_dir: Path, metrics: Path
) -> tuple[int, str, str]:
    """Run ``tdxupdate --update`` in its own process, signalled as the case says."""
    args = [
        sys.executable, "-m", "tdxupdate", "--update", "--json",
        "--sysroot", str(h.sysroot), "--repo", str(repo.path),
        "--trusted-keys", str(repo.keys), "--state-dir", str(state_dir),
        "--metrics-file", str(metrics), "--timeout", "1",
    ]  # fmt: skip
    proc = subprocess.Popen(
        args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        if case.signum is not None:
            # From the moment the tool holds its lock (its handlers are installed long
            # before): a signal during interpreter start-up is not the tool's to handle.
            wait_for(
                lambda: (state_dir / "lock").exists() or proc.poll() is not None,
                "tdxupdate taking its lock",
            )
            time.sleep(case.delay)
            if proc.poll() is None:
                proc.send_signal(case.signum)
        out, err = proc.communicate(timeout=DEADLINE)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
            pytest.fail(f"tdxupdate did not exit within {DEADLINE:g} s ({case})")
    return proc.returncode, out, err


def check_records(
    records: list[dict[str, Any]], code: int, doc: dict[str, Any], error: dict[str, Any] | None
) -> None:
    """... and the last record says what the JSON says."""
    if not records:
        return
    last = records[-1]["result"]
    if last == "success":
        assert code == 0
        assert doc["changed"] is True
    elif last in RESULT_TOKEN:
        assert error is not None, (last, doc)
        assert error["code"] == RESULT_TOKEN[last], (last, doc)
    else:
        assert error is not None, (last, doc)


def check_module(doc: dict[str, Any], error: dict[str, Any] | None, after: dict[str, Any]) -> None:
    """5. the module is what the JSON says it is."""
    if error is not None and error["code"] == "timeout":
        # "the kernel owns the update": either outcome is still to come, and said so
        assert after["module_version"] in (RUNNING, TARGET, None)
    elif doc.get("fatal"):
        assert after["module_lost"] is True
    elif doc.get("changed"):
        assert after["module_version"] == TARGET
        assert not after["module_lost"]
    else:
        assert after["module_lost"] is False
        assert after["module_version"] == RUNNING, (doc, after["uploads"])


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    # No shrinking: every example is a real process against a mount; the failing case is
    # printed whole (a Case is small) and replays from hypothesis' database.
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(case=cases)
def test_update_invariants_under_faults_and_signals(hosts: Hosts, repo: Repo, case: Case) -> None:
    h = hosts.by_series[case.series]
    arm(h, case)
    before = h.state()
    starts_before = before["upload"]["counters"].get("loading_starts", 0)

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        state_dir = work / "state"
        state_dir.mkdir(mode=0o755)
        if case.history_broken:
            (state_dir / "history.jsonl").mkdir()  # appending to it fails with EISDIR
        metrics = (work / "missing-dir" if case.metrics_broken else work) / "tdxupdate.prom"
        code, out, err = run_update(h, repo, case, state_dir, metrics)
        wait_for(
            lambda: h.state()["upload"]["status"] == "idle" or h.state()["upload"]["hung_stage"],
            "the kernel to finish",
        )
        after = h.state()
        assert code >= 0, f"killed by signal {-code}: {err}"
        assert "Traceback" not in err, err

        # 2. exit code = JSON
        doc = json.loads(out)
        error = doc["error"]
        assert doc["ok"] is (code == 0)
        assert (error["exit_code"] if error else 0) == code, (code, doc)
        # ... = metrics
        if case.metrics_broken:
            assert "metrics-write-failed" in doc["warnings"]
        else:
            assert metric(metrics.read_text(), "last_exit_code") == code

        # 3. loading never left at 1
        assert after["upload"]["loading"] is False, after["upload"]

        # 4. a record for every attempt that reached the kernel
        starts = after["upload"]["counters"].get("loading_starts", 0) - starts_before
        history = state_dir / "history.jsonl"
        if case.history_broken:
            records: list[dict[str, Any]] = []
            if starts:
                assert "history-write-failed" in doc["warnings"], doc
        else:
            lines = history.read_text().splitlines() if history.exists() else []
            records = [json.loads(line) for line in lines]
            assert len(records) == starts, (starts, records, err)

        # 1. only the verified bytes reached the kernel
        committed = after["uploads"][len(before["uploads"]) :]
        for upload in committed:
            assert upload["sha256"] in repo.accepted_shas(), upload
        for rec in records:
            assert rec["image_sha256"] == hashlib.sha256(repo.file).hexdigest()

        check_records(records, code, doc, error)
        check_module(doc, error, after)
