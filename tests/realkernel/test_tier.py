"""Host side of the real-kernel tier (issue 4; real-kernel-tier.md §8).

``python -m pytest -m realkernel`` selects these tests. The first one to run builds or reuses
the cached kernel and runs every in-guest test once in one qemu VM (``realkernel_run`` in
``conftest.py``); each host test then reports one guest test function, with every
parametrized case of it, from the JUnit XML that came back. The list of guest test functions
is read from the guest files' syntax tree, so collecting this module boots nothing.

There is no skip: without qemu or the kernel every test here fails and says what is missing.
A guest test that was skipped inside the VM fails here too: in the VM every component exists.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from realkernel import runner

pytestmark = pytest.mark.realkernel


def guest_test_keys(guest_dir: Path = runner.GUEST_DIR) -> list[str]:
    """``file.py::test_func`` / ``file.py::TestClass::test_func`` of every guest test."""
    keys = []
    for path in sorted(guest_dir.glob("test_*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in tree.body:
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name.startswith(
                "test"
            ):
                keys.append(f"{path.name}::{node.name}")
            elif isinstance(node, ast.ClassDef) and node.name.startswith("Test"):
                for item in node.body:
                    if isinstance(item, ast.FunctionDef) and item.name.startswith("test"):
                        keys.append(f"{path.name}::{node.name}::{item.name}")
    return keys


GUEST_TESTS = guest_test_keys()


def _session_or_fail(session: runner.Session) -> runner.GuestRun:
    if session.problem is not None:
        pytest.fail(f"real-kernel tier unavailable: {session.problem}", pytrace=False)
    run = session.run
    assert run is not None
    if run.cases is None:
        why = "the VM run timed out ($RK_TIMEOUT)" if run.timed_out else f"{run.junit_problem}"
        pytest.fail(
            f"no guest test results ({why}; guest exit status {run.returncode}, qemu exit "
            f"status {run.qemu_returncode}, {run.duration_s:.0f}s, share {run.share}; qemu "
            f"command: {' '.join(run.command)}). Console tail:\n{run.console_tail()}",
            pytrace=False,
        )
    return run


def test_guest_tests_exist() -> None:
    # An empty list would make this tier pass without testing anything.
    assert len(GUEST_TESTS) >= 5, GUEST_TESTS


@pytest.mark.parametrize("key", GUEST_TESTS)
def test_guest(key: str, realkernel_run: runner.Session) -> None:
    run = _session_or_fail(realkernel_run)
    assert run.cases is not None
    cases = [c for c in run.cases if c.key == key]
    if not cases:
        pytest.fail(
            f"{key} did not run in the guest (guest exit status {run.returncode}); "
            f"console tail:\n{run.console_tail()}",
            pytrace=False,
        )
    bad = [c for c in cases if c.outcome != "passed"]
    if bad:
        report = "\n\n".join(
            f"--- {c.nodeid}: {c.outcome.upper()} in the guest: {c.message}\n{c.details}"
            for c in bad
        )
        pytest.fail(
            f"{len(bad)} of {len(cases)} guest case(s) of {key} did not pass:\n{report}",
            pytrace=False,
        )


def test_guest_session(realkernel_run: runner.Session) -> None:
    """The guest run as a whole: exit status 0, no result this host test does not report."""
    run = _session_or_fail(realkernel_run)
    assert run.cases is not None
    known = set(GUEST_TESTS)
    stray = [c for c in run.cases if c.key not in known]
    problems = [
        f"{c.nodeid}: {c.outcome} {c.message}\n{c.details}".strip() for c in stray
    ]  # collection errors and tests this module's AST scan did not see
    if run.timed_out:
        problems.append(f"the VM run timed out after {run.duration_s:.0f}s")
    if run.returncode != 0:
        problems.append(f"guest pytest exit status {run.returncode}")
    if problems:
        pytest.fail("\n".join(problems) + f"\nconsole tail:\n{run.console_tail()}", pytrace=False)
