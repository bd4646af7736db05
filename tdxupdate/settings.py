"""One frozen settings object: what the command line (and environment) asked for."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from tdxupdate.versions import Version

if TYPE_CHECKING:
    from tdxupdate.attestation import Allowlist, TcbInfo
    from tdxupdate.sources.http import DownloadProgress

DEFAULT_REPO = "/usr/share/tdx-module-binaries"
DEFAULT_STATE_DIR = Path("/var/lib/tdxupdate")
DEFAULT_TIMEOUT = 300.0
#: how long --update waits for TD builds in flight (tdxupdate.fence)
DEFAULT_FENCE_TIMEOUT = 300.0


def default_cache_dir() -> Path:
    """``/var/cache/tdxupdate`` for root, ``$XDG_CACHE_HOME/tdxupdate`` otherwise (one rule
    with the replay, which finds its records there before pathlib is imported)."""
    from tdxupdate import replay

    return Path(replay.default_cache_dir())


@dataclass(frozen=True)
class Settings:
    action: str = "status"
    #: ``--update VERSION``; None for "the newest eligible one"
    version: Version | None = None
    #: ``--verify PATH``; None for "every image in the repository"
    verify_path: Path | None = None
    dry_run: bool = False
    json: bool = False
    sysroot: Path = Path("/")
    repo: str = DEFAULT_REPO
    mapping: str | None = None
    allow_debug: bool = False
    allow_reinstall: bool = False
    strict_compat: bool = False
    timeout: float = DEFAULT_TIMEOUT
    #: ``--fence-timeout``: longest wait for TD builds in flight before an update
    fence_timeout: float = DEFAULT_FENCE_TIMEOUT
    #: the libvirt hook: longest wait at ``prepare`` for a running update (tdxupdate.fence)
    td_build_wait: float = 120.0
    #: the libvirt hook: a TD build registration is stale after this long
    td_build_max: float = 600.0
    state_dir: Path = DEFAULT_STATE_DIR
    trusted_keys: tuple[Path, ...] = ()
    #: extra trusted signer fingerprints that do not come from a file (the emulator's key)
    extra_signers: frozenset[str] = field(default_factory=frozenset)
    cpu_signature: int | None = None
    image_format: str = "auto"
    cache_dir: Path | None = None
    offline: bool = False
    ca_bundle: Path | None = None
    allow_insecure_http: bool = False
    metrics_file: Path | None = None
    #: shell commands around the first write (tdxupdate.hooks) and their time limit
    pre_update: str | None = None
    post_update: str | None = None
    hook_timeout: float = 300.0
    verbosity: int = 0
    #: a terminal is watching (progress bars allowed)
    interactive: bool = False
    #: where image downloads from a mirror tell their progress (the command line's bar on a
    #: terminal); None: nowhere
    download_progress: DownloadProgress | None = field(default=None, compare=False, repr=False)
    #: ``--allowlist FILE`` / ``--tcb-info FILE`` and their parsed contents (read once, before
    #: the action starts, so a malformed file stops the run before anything is written)
    allowlist: Path | None = None
    tcb_info: Path | None = None
    allowlist_rules: Allowlist | None = None
    tcb_levels: TcbInfo | None = None
