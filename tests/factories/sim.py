"""Emulated TDX hosts for tests (tdxupdate.sim mounted over FUSE).

Import the fixtures into ``tests/conftest.py``::

    from factories.sim import sample_repo, sim, sim_cache  # noqa: F401

* ``sim_cache`` (session): a cache directory holding the sample repository and its key;
* ``sample_repo`` (session): that :class:`~tdxupdate.sim.repo.SampleRepo`;
* ``sim`` (function): ``sim(profile="spr", **settings) -> SimHost`` mounts a host under the
  test's ``tmp_path``; every host is unmounted when the test ends, and the test fails if a mount
  is left behind.

Without FUSE (a build chroot, a container without /dev/fuse, no mfusepy) these skip with a line
naming what is missing; ``TDXUPDATE_REQUIRE_FUSE=1`` turns that into a failure (CI has FUSE and
sets it, so the emulator tests can never be skipped there unnoticed).
"""

from __future__ import annotations

import contextlib
import itertools
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tdxupdate.signing import RsaKey
from tdxupdate.sim.mount import fuse_problem, is_mounted
from tdxupdate.sim.repo import KEY_FILE, SampleRepo, ensure_sample_repo
from tdxupdate.sim.session import SimHost, simulated_host

REQUIRE_FUSE = "TDXUPDATE_REQUIRE_FUSE"

_counter = itertools.count(1)


def require_fuse() -> None:
    """Skip (or, with TDXUPDATE_REQUIRE_FUSE=1, fail) when FUSE cannot be used."""
    problem = fuse_problem()
    if problem is None:
        return
    message = f"FUSE is unavailable: {problem}"
    if os.environ.get(REQUIRE_FUSE) == "1":
        pytest.fail(f"{message} ({REQUIRE_FUSE}=1)", pytrace=False)
    pytest.skip(message)


def seed_key(cache_dir: Path) -> None:
    """Put an RSA-3072 key into ``cache_dir`` quickly (cryptography, test-only) so the sample
    repository does not spend seconds generating one in pure Python."""
    path = cache_dir / KEY_FILE
    if path.exists():
        return
    from cryptography.hazmat.primitives.asymmetric import rsa

    numbers = rsa.generate_private_key(public_exponent=65537, key_size=3072).private_numbers()
    key = RsaKey(
        n=numbers.public_numbers.n,
        e=numbers.public_numbers.e,
        d=numbers.d,
        p=numbers.p,
        q=numbers.q,
    )
    cache_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(key.to_json(), encoding="utf-8")


def sample_repo_in(cache_dir: Path) -> SampleRepo:
    seed_key(cache_dir)
    return ensure_sample_repo(cache_dir)


@contextlib.contextmanager
def mount_sim(
    tmp_path: Path,
    profile: str = "spr",
    *,
    cache_dir: Path | None = None,
    **settings: Any,
) -> Iterator[SimHost]:
    """Mount a profile's host (plus ``settings``) under ``tmp_path``; unmount on exit."""
    require_fuse()
    cache = cache_dir if cache_dir is not None else tmp_path.parent / "tdxsim-cache"
    seed_key(cache)
    workdir = tmp_path / f"sim{next(_counter)}"
    with simulated_host(profile, cache_dir=cache, workdir=workdir, **settings) as host:
        yield host
    if is_mounted(workdir / "host"):
        pytest.fail(f"{workdir / 'host'}: the emulator is still mounted after the test")


@pytest.fixture(scope="session")
def sim_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cache = tmp_path_factory.mktemp("tdxsim-cache")
    seed_key(cache)
    return cache


@pytest.fixture(scope="session")
def sample_repo(sim_cache: Path) -> SampleRepo:
    return ensure_sample_repo(sim_cache)


@pytest.fixture
def sim(tmp_path: Path, sim_cache: Path) -> Iterator[Callable[..., SimHost]]:
    """``sim(profile="spr", **settings)``: a mounted host, unmounted after the test."""
    with contextlib.ExitStack() as stack:

        def make(profile: str = "spr", **settings: Any) -> SimHost:
            return stack.enter_context(
                mount_sim(tmp_path, profile, cache_dir=sim_cache, **settings)
            )

        yield make
