"""Running ``tdxupdate`` in-process for tests: the captured result and the ``run`` fixture
factory that ``test_cli``, ``test_cli_ops``, ``test_update`` and ``test_attestation`` share."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tdxupdate.cli import main
from tdxupdate.schemas import load_schema

#: How the one-line summary an ``--update`` logs starts (:func:`tdxupdate.log.update_summary`).
SUMMARY_PREFIX = "tdxupdate: update: "
WARNING_PREFIX = "tdxupdate: warning:"


@dataclass
class Result:
    """What one run printed and exited with."""

    code: int
    out: str
    err: str

    @property
    def doc(self) -> dict[str, Any]:
        doc: dict[str, Any] = json.loads(self.out)
        return doc

    @property
    def err_lines(self) -> list[str]:
        """stderr without the warning lines and the one-line summary an update logs (checked
        on their own)."""
        return [
            ln
            for ln in self.err.splitlines()
            if not ln.startswith((WARNING_PREFIX, SUMMARY_PREFIX))
        ]

    @property
    def summary_lines(self) -> list[str]:
        return [ln for ln in self.err.splitlines() if ln.startswith(SUMMARY_PREFIX)]

    @property
    def warning_lines(self) -> list[str]:
        """Warning lines, less the one every update of the test key's images carries (the
        signer is not Intel's)."""
        return [
            ln
            for ln in self.err.splitlines()
            if ln.startswith(WARNING_PREFIX) and "not Intel's production key" not in ln
        ]


def validate(doc: dict[str, Any]) -> None:
    """``doc`` against the published output schema (cli-contract.md §3)."""
    import jsonschema

    jsonschema.Draft7Validator(load_schema("output.schema.json")).validate(doc)


def wants_validation(args: Sequence[str]) -> bool:
    """Whether a run's stdout is the JSON document (``--json``, and not ``--help``)."""
    return "--json" in args and "--help" not in args


def run_main(
    capsys: pytest.CaptureFixture[str], args: Sequence[str | Path], *, check_schema: bool = True
) -> Result:
    """Run ``tdxupdate.cli.main(args)`` and capture it; a JSON document is validated."""
    argv = [str(a) for a in args]
    code = main(argv)
    captured = capsys.readouterr()
    res = Result(code, captured.out, captured.err)
    if check_schema and wants_validation(argv):
        validate(res.doc)
    return res


def runner(
    capsys: pytest.CaptureFixture[str],
    *,
    prefix: Sequence[str] = (),
    check_schema: bool = True,
) -> Callable[..., Result]:
    """A ``run(*args)`` for a ``run`` fixture: ``prefix`` goes before the arguments."""

    def run(*args: str | Path) -> Result:
        return run_main(capsys, [*prefix, *args], check_schema=check_schema)

    return run
