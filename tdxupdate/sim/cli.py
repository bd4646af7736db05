"""``tdxupdate-sim``: mount an emulated TDX host anyone can point ``--sysroot`` at.

    tdxupdate-sim mount DIR [--profile P] [--generation G5] [--module 1.5.06] [--fault ...]...
    tdxupdate-sim umount DIR
    tdxupdate-sim profiles
    tdxupdate-sim sample-repo [--cache-dir DIR]

``mount`` starts a daemon and returns once the mount is live (``--foreground`` serves in this
process instead). Exit codes follow cli-contract.md §2: 0 success, 64 bad command line,
69 FUSE unavailable (one line saying what is missing and how to get it), 74 mount or unmount
failed.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from tdxupdate.errors import TdxError, UsageError
from tdxupdate.imagecheck import INTEL_PRODUCTION_SIGNER
from tdxupdate.sim.config import SimConfig
from tdxupdate.sim.mount import require_fuse, start_daemon, unmount
from tdxupdate.sim.profiles import PROFILES, get_profile


def _default_cache_dir() -> Path:
    """The same place ``tdxupdate --simulate`` keeps its sample repository and key."""
    from tdxupdate.settings import default_cache_dir

    return default_cache_dir() / "sim"


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """Emulated TDX hosts (sysfs + procfs over FUSE) for tdxupdate and its tests."""


@cli.command()
@click.argument("directory", type=click.Path(path_type=Path))
@click.option("--profile", default=None, help="Start from a named host (see `profiles`).")
@click.option("--generation", "kernel", default=None, metavar="G", help="G1..G5 or v1..v10, ml.")
@click.option("--module", default=None, metavar="VERSION", help="Running TDX module version.")
@click.option("--seamldr", default=None, metavar="VERSION", help="P-SEAMLDR version.")
@click.option("--cpu", default=None, metavar="HEX", help="CPUID.1.EAX, e.g. 0x806f8.")
@click.option("--remaining", default=None, type=int, help="Updates P-SEAMLDR still allows.")
@click.option("--online", default=None, metavar="LIST", help="Online CPUs, e.g. 0-5.")
@click.option("--present", default=None, metavar="LIST", help="Present CPUs (default 0-7).")
@click.option("--osrelease", default=None, help="Kernel release (uname -r).")
@click.option("--fault", "faults", multiple=True, metavar="SPEC", help="Inject a fault.")
@click.option(
    "--trusted-key",
    "trusted_keys",
    multiple=True,
    metavar="FPR",
    help="Another signer P-SEAMLDR accepts (besides Intel's production key).",
)
@click.option(
    "--mapping",
    default=None,
    type=click.Path(path_type=Path),
    help="Mapping file with the release facts P-SEAMLDR checks.",
)
@click.option(
    "--sample-repo", is_flag=True, help="Trust the sample repository's key and use its mapping."
)
@click.option(
    "--cache-dir",
    default=None,
    type=click.Path(path_type=Path),
    help="Where the sample repository lives.",
)
@click.option("--erratum", is_flag=True, help="CPU bug seamret_invd_vmcs.")
@click.option("--debug-platform", is_flag=True, help="P-SEAMLDR loads debug-signed modules.")
@click.option("--tdx-features", default=None, metavar="HEX", help="Running module's TDX_FEATURES0.")
@click.option("--foreground", is_flag=True, help="Serve in this process until unmounted.")
@click.option("--log", default=None, type=click.Path(path_type=Path), help="Daemon log file.")
@click.option("--config-json", default=None, hidden=True)
@click.option("--ready-fd", default=None, type=int, hidden=True)
@click.option("--exit-with-parent", default=None, type=int, hidden=True)
def mount(directory: Path, **opts: Any) -> int:
    """Mount an emulated host on DIRECTORY."""
    config = _config_from_options(opts)
    if not opts["foreground"]:
        require_fuse()
        start_daemon(directory, config, log=opts["log"])
        return 0
    _serve(directory, config, opts)
    return 0


def _config_from_options(opts: dict[str, Any]) -> SimConfig:
    try:
        if opts["config_json"] is not None:
            return SimConfig.from_json(json.loads(opts["config_json"]))
        settings: dict[str, Any] = {}
        if opts["profile"] is not None:
            settings.update(get_profile(opts["profile"]).settings)
        if opts["sample_repo"]:
            from tdxupdate.sim.repo import ensure_sample_repo

            repo = ensure_sample_repo(opts["cache_dir"] or _default_cache_dir())
            settings["mapping"] = repo.mapping_path
            settings["trusted_signers"] = sorted(repo.trusted_signers)
        for key in (
            "kernel",
            "module",
            "seamldr",
            "cpu",
            "remaining",
            "online",
            "present",
            "osrelease",
            "mapping",
            "tdx_features",
        ):
            if opts[key] is not None:
                settings[key] = opts[key]
        for flag in ("erratum", "debug_platform"):
            if opts[flag]:
                settings[flag] = True
        if opts["faults"]:
            settings["faults"] = [*settings.get("faults", ()), *opts["faults"]]
        if opts["trusted_keys"]:
            base = settings.get("trusted_signers") or [INTEL_PRODUCTION_SIGNER]
            settings["trusted_signers"] = [*base, *opts["trusted_keys"]]
        return SimConfig.from_settings(settings)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def _serve(directory: Path, config: SimConfig, opts: dict[str, Any]) -> None:
    from tdxupdate.sim.fs import serve
    from tdxupdate.sim.kernel import SimKernel

    require_fuse()
    if opts["log"] is not None:
        logging.basicConfig(filename=opts["log"], level=logging.WARNING)
    kernel = SimKernel(config)
    directory.mkdir(parents=True, exist_ok=True)
    ready_fd: int | None = opts["ready_fd"]

    def on_ready() -> None:
        if ready_fd is None:
            return
        # The starter stops listening once we are ready: detach from its stdio first.
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            if fd != 2 or opts["log"] is None:
                os.dup2(devnull, fd)
        os.close(devnull)
        os.write(ready_fd, b"ready\n")
        os.close(ready_fd)

    parent = opts["exit_with_parent"]
    if parent is not None:
        threading.Thread(
            target=_watch_parent, args=(parent, directory), name="tdxsim-watchdog", daemon=True
        ).start()
    serve(kernel, str(directory), on_ready=on_ready)


def _watch_parent(parent: int, directory: Path) -> None:
    """Unmount when the process that asked for this throw-away host is gone."""
    while True:
        time.sleep(0.5)
        try:
            os.kill(parent, 0)
        except ProcessLookupError:
            break
        except PermissionError:
            continue
    try:
        unmount(directory)
    except TdxError:
        return
    for path in (directory, directory.parent):
        try:
            path.rmdir()
        except OSError:
            break


@cli.command()
@click.argument("directory", type=click.Path(path_type=Path))
def umount(directory: Path) -> int:
    """Unmount an emulated host."""
    unmount(directory)
    return 0


@cli.command()
def profiles() -> int:
    """List the named hosts (for --profile and tdxupdate --simulate)."""
    width = max(len(name) for name in PROFILES)
    for profile in PROFILES.values():
        click.echo(f"{profile.name:<{width}}  {profile.description}")
    return 0


@cli.command("sample-repo")
@click.option("--cache-dir", default=None, type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object.")
def sample_repo(cache_dir: Path | None, as_json: bool) -> int:
    """Generate (once) and show the sample repository and its trusted-keys file."""
    from tdxupdate.sim.repo import ensure_sample_repo

    repo = ensure_sample_repo(cache_dir or _default_cache_dir())
    info = {
        "repo": str(repo.path),
        "mapping": str(repo.mapping_path),
        "trusted_keys_file": str(repo.trusted_keys_path),
        "trusted_signers": sorted(repo.trusted_signers),
    }
    if as_json:
        click.echo(json.dumps(info, indent=2))
    else:
        click.echo(f"repository:   {info['repo']}")
        click.echo(f"trusted keys: {info['trusted_keys_file']}")
        click.echo(f"fingerprint:  {info['trusted_signers'][0]}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point; returns the exit code."""
    args = list(argv) if argv is not None else sys.argv[1:]
    try:
        result = cli.main(args=args, prog_name="tdxupdate-sim", standalone_mode=False)
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.ClickException as exc:
        click.echo(f"tdxupdate-sim: {exc.format_message()}", err=True)
        return 64
    except click.Abort:
        return 130
    except TdxError as exc:
        click.echo(f"tdxupdate-sim: {exc.message}", err=True)
        return exc.exit_code
    return result if isinstance(result, int) else 0
