"""tdxupdate's TDX-host emulator: a kernel model served over FUSE, plus sample images.

* :mod:`~tdxupdate.sim.kernel` — the pure-Python kernel model (tdx_host, fw_upload, P-SEAMLDR)
  of kernel-abi.md, no FUSE needed;
* :mod:`~tdxupdate.sim.sysfs` / :mod:`~tdxupdate.sim.fs` — the ``sys/`` and ``proc/`` tree and
  its mfusepy server;
* :mod:`~tdxupdate.sim.faults` / :mod:`~tdxupdate.sim.control` — fault syntax and run-time
  control through ``DIR/.tdxsim/control``;
* :mod:`~tdxupdate.sim.repo` / :mod:`~tdxupdate.sim.profiles` /
  :mod:`~tdxupdate.sim.session` — the sample repository, named hosts and
  :func:`simulated_host`, which ``tdxupdate --simulate`` runs against;
* :mod:`~tdxupdate.sim.cli` — ``tdxupdate-sim mount|umount|profiles|sample-repo``.

Importing this package does not import mfusepy; only serving a mount does.
"""

from tdxupdate.sim.config import SimConfig, StageDurations
from tdxupdate.sim.profiles import PROFILES, Profile, get_profile
from tdxupdate.sim.repo import SampleRepo, ensure_sample_repo
from tdxupdate.sim.session import SimHost, simulated_host

__all__ = [
    "PROFILES",
    "Profile",
    "SampleRepo",
    "SimConfig",
    "SimHost",
    "StageDurations",
    "ensure_sample_repo",
    "get_profile",
    "simulated_host",
]
