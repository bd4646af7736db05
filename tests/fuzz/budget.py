"""How long the fuzz targets run: briefly in the fast suite, long in CI's fuzz stage.

``TDXUPDATE_FUZZ=1`` selects the long budget (``.ci/run`` runs ``pytest -m fuzz`` with it);
without it each target runs a few dozen examples, so the fast suite stays fast. Budgets are
example counts, never time: hypothesis stops after that many, whatever the machine.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

FUZZ_ENV = "TDXUPDATE_FUZZ"
LONG = os.environ.get(FUZZ_ENV, "") not in ("", "0")


def budget(brief: int, long: int) -> settings:
    """Settings for one target: ``brief`` examples normally, ``long`` under ``TDXUPDATE_FUZZ``."""
    return settings(
        max_examples=long if LONG else brief,
        deadline=None,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.filter_too_much,
        ],
        print_blob=True,  # a failure in CI prints the @reproduce_failure line to replay it
    )
