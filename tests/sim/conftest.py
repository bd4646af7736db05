"""The emulator tests' shared mounts: one G5 host for the fw_upload state machine and one host
per kernel series, mounted once for the package; each test leaves its host as it found it
(``{"reset": true}``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from factories.sim import mount_sim

from sim.helpers import SERIES_FORMAT, mounts_under, tidy
from tdxupdate.sim.session import SimHost

# --- shared mounts -------------------------------------------------------------------------------


@pytest.fixture(scope="package")
def shared_g5(tmp_path_factory: pytest.TempPathFactory, sim_cache: Path) -> Iterator[SimHost]:
    with mount_sim(tmp_path_factory.mktemp("g5"), "spr", cache_dir=sim_cache) as host:
        yield host


@pytest.fixture
def g5(shared_g5: SimHost) -> Iterator[SimHost]:
    tidy(shared_g5)
    yield shared_g5
    tidy(shared_g5)


@pytest.fixture(scope="package", params=list(SERIES_FORMAT))
def series_shared(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, sim_cache: Path
) -> Iterator[SimHost]:
    series = request.param
    with mount_sim(
        tmp_path_factory.mktemp(f"series-{series}"), "spr", cache_dir=sim_cache, kernel=series
    ) as host:
        yield host


@pytest.fixture
def series_host(series_shared: SimHost) -> Iterator[SimHost]:
    tidy(series_shared)
    yield series_shared
    tidy(series_shared)


@pytest.fixture(scope="package", autouse=True)
def _nothing_left_mounted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Once the package's tests and its shared mounts are done, no emulator is mounted."""
    yield
    assert mounts_under(tmp_path_factory.getbasetemp()) == []
