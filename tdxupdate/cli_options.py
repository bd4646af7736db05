"""The command line's options: their click definitions, validators and completions, and their
reading into :class:`~tdxupdate.settings.Settings`.

The contract is cli-contract.md §1. :func:`command` only parses: it raises
:class:`OptionsParsed` with the values and where each came from, and :mod:`tdxupdate.cli`
layers the configuration file in, runs the action and renders it. The option list here is
``--help``'s, in that order.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from tdxupdate import __version__, replay
from tdxupdate.errors import UsageError, exit_table
from tdxupdate.settings import (
    DEFAULT_FENCE_TIMEOUT,
    DEFAULT_REPO,
    DEFAULT_STATE_DIR,
    DEFAULT_TIMEOUT,
    Settings,
)
from tdxupdate.versions import Version

if TYPE_CHECKING:  # pragma: no cover
    from click.shell_completion import CompletionItem  # imported when the shell asks

ACTIONS = ("status", "list", "update", "verify", "history", "reference_values")
_LATEST = "\0latest"


def _version_arg(value: str) -> Version:
    try:
        return Version.parse(value)
    except ValueError as exc:
        raise UsageError(f"--update: {exc}") from exc


class _Seconds(click.ParamType):  # type: ignore[type-arg]
    """A finite number of seconds > 0.

    click's FloatRange lets ``nan`` and ``inf`` through (every comparison with nan is false),
    and either would make the wait for the kernel endless.
    """

    name = "seconds"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> float:
        import math

        try:
            seconds = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number of seconds", param, ctx)
        if not math.isfinite(seconds) or seconds <= 0:
            self.fail(f"{value!r} is not a finite number of seconds > 0", param, ctx)
        return seconds


class CheckedPath(click.Path):
    """``click.Path``, whose checks (the path exists, is a file or a directory, is readable)
    are inputs of a listing too: :mod:`tdxupdate.replay` repeats them."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        converted = super().convert(value, param, ctx)
        replay.note_clickpath(value)
        return converted


def _cpu_arg(value: str) -> int:
    from tdxupdate.hostfiles import parse_cpu_signature

    try:
        return parse_cpu_signature(value)
    except ValueError as exc:
        raise UsageError(f"--cpu-signature: {exc}") from exc


def _complete_dir(
    _ctx: click.Context, _param: click.Parameter, incomplete: str
) -> list[CompletionItem]:
    """``--repo``: the shell completes directories (a URL is typed out)."""
    from click.shell_completion import CompletionItem

    return [CompletionItem(incomplete, type="dir")]


def _complete_file(
    _ctx: click.Context, _param: click.Parameter, incomplete: str
) -> list[CompletionItem]:
    """``--mapping``, ``--verify``: the shell completes file names."""
    from click.shell_completion import CompletionItem

    return [CompletionItem(incomplete, type="file")]


def _complete_profile(
    _ctx: click.Context, _param: click.Parameter, incomplete: str
) -> list[CompletionItem]:
    """``--simulate``: the profile names, each with its description (zsh and fish show it)."""
    from click.shell_completion import CompletionItem

    from tdxupdate.sim.profiles import PROFILES

    return [
        CompletionItem(name, help=profile.description)
        for name, profile in PROFILES.items()
        if name.startswith(incomplete.lower())
    ]


@click.command(
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
    epilog=f"{exit_table()} See tdxupdate(8).",
)
@click.option(
    "--status",
    "a_status",
    is_flag=True,
    help="Report the host, its update interface and preflight checks (default).",
)
@click.option(
    "--list",
    "a_list",
    is_flag=True,
    help="List every module in the repository, eligible or not, with every reason.",
)
@click.option(
    "--update",
    "a_update",
    is_flag=False,
    flag_value=_LATEST,
    default=None,
    metavar="[VERSION]",
    help="Install the newest eligible module, or exactly VERSION after the same checks.",
)
@click.option(
    "--verify",
    "a_verify",
    is_flag=False,
    flag_value=_LATEST,
    default=None,
    metavar="[PATH]",
    shell_complete=_complete_file,
    help="Run every image check on PATH, or on every image in the repository.",
)
@click.option(
    "--history", "a_history", is_flag=True, help="Show the update attempts recorded on this host."
)
@click.option(
    "--reference-values",
    "a_reference_values",
    is_flag=True,
    help=(
        "Print what attestation verifiers need (module identity, SEAMSVN, MRSEAM) for the "
        "running module and the module an update would install."
    ),
)
@click.option(
    "--dry-run", is_flag=True, help="With --update: every check and the plan, nothing written."
)
@click.option("--json", "as_json", is_flag=True, help="Print exactly one JSON document on stdout.")
@click.option(
    "--sysroot",
    envvar="TDXUPDATE_SYSROOT",
    type=CheckedPath(file_okay=False, path_type=Path),
    default=Path("/"),
    show_default=True,
    help="Read and write /sys and /proc under this directory. [env TDXUPDATE_SYSROOT]",
)
@click.option(
    "--repo",
    envvar="TDXUPDATE_REPO",
    default=DEFAULT_REPO,
    show_default=True,
    metavar="DIR|URL",
    shell_complete=_complete_dir,
    help="Module repository in Intel's layout. [env TDXUPDATE_REPO]",
)
@click.option(
    "--mapping",
    default=None,
    metavar="FILE|URL",
    shell_complete=_complete_file,
    help="Mapping file, when not REPO/mapping_file.json.",
)
@click.option(
    "--allow-debug",
    "--allow_debug",
    "allow_debug",
    is_flag=True,
    help="Make debug-signed modules eligible (their signer must still be trusted).",
)
@click.option(
    "--allow-reinstall",
    is_flag=True,
    help="With --update VERSION equal to the running version: reinstall it.",
)
@click.option(
    "--strict-compat",
    is_flag=True,
    help="Also require the running version in the candidate's strict_compat_versions.",
)
@click.option(
    "--timeout",
    type=_Seconds(),
    default=DEFAULT_TIMEOUT,
    show_default=True,
    metavar="SECONDS",
    help="Longest wait for the kernel to finish an update (a finite number > 0).",
)
@click.option(
    "--fence-timeout",
    type=_Seconds(),
    default=DEFAULT_FENCE_TIMEOUT,
    show_default=True,
    metavar="SECONDS",
    help="Longest wait for TD builds in progress to finish before an update writes.",
)
@click.option(
    "--state-dir",
    envvar="TDXUPDATE_STATE_DIR",
    type=CheckedPath(file_okay=False, path_type=Path),
    default=DEFAULT_STATE_DIR,
    show_default=True,
    help="Where the lock and history.jsonl live. [env TDXUPDATE_STATE_DIR]",
)
@click.option(
    "--trusted-keys",
    "trusted_keys",
    multiple=True,
    type=CheckedPath(path_type=Path),
    metavar="FILE",
    help="Extra trusted signers: SHA-256 modulus fingerprints, one per line.",
)
@click.option(
    "--allowlist",
    type=CheckedPath(dir_okay=False, path_type=Path),
    default=None,
    metavar="FILE",
    shell_complete=_complete_file,
    help=(
        "MRSEAMs (and min_seamsvn lines) your verifiers accept: a module outside it is not "
        "eligible."
    ),
)
@click.option(
    "--tcb-info",
    type=CheckedPath(dir_okay=False, path_type=Path),
    default=None,
    metavar="FILE",
    shell_complete=_complete_file,
    help="Intel's TDX tcbInfo JSON for this platform: rate the running and target SVN.",
)
@click.option(
    "--cpu-signature",
    default=None,
    metavar="HEX",
    help="CPUID.1.EAX to use instead of reading /proc/cpuinfo.",
)
@click.option(
    "--image-format",
    type=click.Choice(["auto", "0x100", "0x200"]),
    default="auto",
    show_default=True,
    help="Container format to send; an explicit value disables the automatic retry.",
)
@click.option(
    "--simulate",
    is_flag=False,
    flag_value="spr",
    default=None,
    metavar="[PROFILE]",
    shell_complete=_complete_profile,
    help="Run against a throw-away emulated host and a bundled sample repository.",
)
@click.option(
    "--cache-dir",
    # not a CheckedPath: a listing creates it, and a replay opens it as a directory itself
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    metavar="DIR",
    help="Cache of remote repositories [default: /var/cache/tdxupdate; "
    "$XDG_CACHE_HOME/tdxupdate when not root].",
)
@click.option(
    "--offline", is_flag=True, help="Remote repositories: use only the cache, fetch nothing."
)
@click.option(
    "--ca-bundle",
    type=CheckedPath(dir_okay=False, path_type=Path),
    default=None,
    metavar="FILE",
    help=(
        "PEM CA certificates to verify the mirror's TLS certificate (an internal CA); "
        "replaces the system's store, as REQUESTS_CA_BUNDLE/CURL_CA_BUNDLE do."
    ),
)
@click.option(
    "--allow-insecure-http",
    is_flag=True,
    help="Accept a plain-http repository or mapping URL (labs only; said on stderr).",
)
@click.option(
    "--config",
    "config_file",
    type=CheckedPath(dir_okay=False, path_type=Path),
    default=None,
    metavar="FILE",
    help="Configuration file. [default: /etc/tdxupdate.conf; env TDXUPDATE_CONFIG]",
)
@click.option(
    "--metrics-file",
    type=CheckedPath(dir_okay=False, path_type=Path),
    default=None,
    metavar="PATH",
    help="After the run, write a Prometheus node-exporter textfile here.",
)
@click.option(
    "--pre-update-command",
    "pre_update",
    default=None,
    metavar="CMD",
    help="Shell command run after every check, before the first write; failing, it stops the "
    "update (exit 75). [config pre_update]",
)
@click.option(
    "--post-update-command",
    "post_update",
    default=None,
    metavar="CMD",
    help="Shell command run after the attempt, whatever its outcome. [config post_update]",
)
@click.option(
    "--hook-timeout",
    type=_Seconds(),
    default=300.0,
    show_default=True,
    metavar="SECONDS",
    help="Longest run of each of those commands.",
)
@click.option("-v", "--verbose", count=True, help="More detail; -vv shows tracebacks.")
@click.option("-q", "--quiet", count=True, help="Less output.")
@click.version_option(__version__, "--version", prog_name="tdxupdate")
def command(**opts: Any) -> None:
    """Select, verify and install Intel TDX Module runtime updates."""
    ctx = click.get_current_context()
    # Where each value came from (command line, environment, default): the configuration file
    # fills in only for defaults (tdxupdate.config.layer_options).
    raise OptionsParsed(opts, {name: ctx.get_parameter_source(name) for name in opts})


class OptionsParsed(Exception):
    """How :func:`command` hands back what click parsed, instead of running anything itself:
    the values and where each came from (command line, environment, default)."""

    def __init__(self, opts: dict[str, Any], sources: dict[str, Any]):
        self.opts = opts
        self.sources = sources


def settings_from_options(opts: dict[str, Any]) -> Settings:
    """The parsed options (the configuration file already layered in) as :class:`Settings`;
    raises UsageError for a combination the contract refuses (two actions, --dry-run without
    --update, ...)."""
    chosen = [a for a in ACTIONS if opts[f"a_{a}"] not in (None, False)]
    if len(chosen) > 1:
        names = " and ".join("--" + a.replace("_", "-") for a in chosen)
        raise UsageError(f"choose one action, not {names}")
    action = chosen[0] if chosen else "status"
    version = None
    if action == "update" and opts["a_update"] != _LATEST:
        version = _version_arg(opts["a_update"])
    verify_path = None
    if action == "verify" and opts["a_verify"] != _LATEST:
        verify_path = Path(opts["a_verify"])
    if opts["dry_run"] and action != "update":
        raise UsageError("--dry-run goes with --update only")
    if opts["allow_reinstall"] and (action != "update" or version is None):
        raise UsageError("--allow-reinstall goes with --update VERSION only")
    cpu = _cpu_arg(opts["cpu_signature"]) if opts["cpu_signature"] is not None else None
    return Settings(
        action=action,
        version=version,
        verify_path=verify_path,
        dry_run=opts["dry_run"],
        json=opts["as_json"],
        sysroot=opts["sysroot"],
        repo=opts["repo"],
        mapping=opts["mapping"],
        allow_debug=opts["allow_debug"],
        allow_reinstall=opts["allow_reinstall"],
        strict_compat=opts["strict_compat"],
        timeout=opts["timeout"],
        fence_timeout=opts["fence_timeout"],
        td_build_wait=opts.get("td_build_wait", Settings.td_build_wait),
        td_build_max=opts.get("td_build_max", Settings.td_build_max),
        state_dir=opts["state_dir"],
        trusted_keys=tuple(opts["trusted_keys"]),
        cpu_signature=cpu,
        image_format=opts["image_format"],
        cache_dir=opts["cache_dir"],
        offline=opts["offline"],
        ca_bundle=opts["ca_bundle"],
        allow_insecure_http=opts["allow_insecure_http"],
        metrics_file=opts["metrics_file"],
        pre_update=opts["pre_update"],
        post_update=opts["post_update"],
        hook_timeout=opts["hook_timeout"],
        verbosity=opts["verbose"] - opts["quiet"],
        interactive=sys.stderr.isatty(),
        allowlist=opts.get("allowlist"),
        tcb_info=opts.get("tcb_info"),
    )
