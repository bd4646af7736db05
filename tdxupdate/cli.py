"""Command line: click options -> Settings -> one action -> text or JSON -> exit code.

The contract is cli-contract.md. This is the only module that prints the final result and the
only place a :class:`TdxError` becomes an exit code (architecture.md, convention 3).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from click.shell_completion import CompletionItem

from tdxupdate import __version__
from tdxupdate import log as _log
from tdxupdate import signals as _signals
from tdxupdate.errors import EXIT_CODES, Interrupted, TdxError, UsageError, exit_table, funnel
from tdxupdate.settings import (
    DEFAULT_FENCE_TIMEOUT,
    DEFAULT_REPO,
    DEFAULT_STATE_DIR,
    DEFAULT_TIMEOUT,
    Settings,
)
from tdxupdate.versions import Version

if TYPE_CHECKING:  # pragma: no cover
    from tdxupdate.sources.http import DownloadProgress

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
    return [CompletionItem(incomplete, type="dir")]


def _complete_file(
    _ctx: click.Context, _param: click.Parameter, incomplete: str
) -> list[CompletionItem]:
    """``--mapping``, ``--verify``: the shell completes file names."""
    return [CompletionItem(incomplete, type="file")]


def _complete_profile(
    _ctx: click.Context, _param: click.Parameter, incomplete: str
) -> list[CompletionItem]:
    """``--simulate``: the profile names, each with its description (zsh and fish show it)."""
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
    type=click.Path(file_okay=False, path_type=Path),
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
    type=click.Path(file_okay=False, path_type=Path),
    default=DEFAULT_STATE_DIR,
    show_default=True,
    help="Where the lock and history.jsonl live. [env TDXUPDATE_STATE_DIR]",
)
@click.option(
    "--trusted-keys",
    "trusted_keys",
    multiple=True,
    type=click.Path(path_type=Path),
    metavar="FILE",
    help="Extra trusted signers: SHA-256 modulus fingerprints, one per line.",
)
@click.option(
    "--allowlist",
    type=click.Path(dir_okay=False, path_type=Path),
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
    type=click.Path(dir_okay=False, path_type=Path),
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
    type=click.Path(dir_okay=False, path_type=Path),
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
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    metavar="FILE",
    help="Configuration file. [default: /etc/tdxupdate.conf; env TDXUPDATE_CONFIG]",
)
@click.option(
    "--metrics-file",
    type=click.Path(dir_okay=False, path_type=Path),
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
    raise _Done(opts, {name: ctx.get_parameter_source(name) for name in opts})


class _Done(Exception):
    def __init__(self, opts: dict[str, Any], sources: dict[str, Any]):
        self.opts = opts
        self.sources = sources


def settings_from_options(opts: dict[str, Any]) -> Settings:
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
    settings = Settings(
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
    return replace(settings, download_progress=_download_progress(settings))


def load_operator_files(settings: Settings) -> Settings:
    """Read ``--allowlist`` and ``--tcb-info`` before the action starts: a malformed file is
    ``config-invalid`` (78) before anything is locked or written."""
    from tdxupdate import attestation

    return replace(
        settings,
        allowlist_rules=(
            attestation.load_allowlist(settings.allowlist) if settings.allowlist else None
        ),
        tcb_levels=attestation.load_tcb_info(settings.tcb_info) if settings.tcb_info else None,
    )


@contextlib.contextmanager
def _progress_bar(settings: Settings, label: str) -> Iterator[Callable[[int], Any]]:
    """A progress bar on a terminal; nothing on a pipe or with --json."""

    @contextlib.contextmanager
    def factory(total: int) -> Iterator[Callable[[int, int], None] | None]:
        if settings.json or not settings.interactive or settings.verbosity < 0:
            yield None
            return
        with click.progressbar(length=total, label=label, file=sys.stderr) as bar:
            done = [0]

            def tick(written: int, _total: int) -> None:
                bar.update(written - done[0])
                done[0] = written

            yield tick

    yield factory


def _download_progress(settings: Settings) -> DownloadProgress | None:
    """Bars for image downloads from a mirror: on a terminal only, never on a pipe, with --json
    or with -q (like the upload's bar, :func:`_progress_bar`)."""
    if settings.json or not settings.interactive or settings.verbosity < 0:
        return None
    return _download_bar


@contextlib.contextmanager
def _download_bar(name: str) -> Iterator[_DownloadBar]:
    """One image download's bar, labelled with its file name; closed however it ends."""
    bar = _DownloadBar(f"downloading {name}")
    try:
        yield bar
    finally:
        bar.close()


class _DownloadBar:
    """A download progress bar on stderr, drawn once the size is announced."""

    def __init__(self, label: str):
        self.label = label
        self._bar: Any = None
        self._done = 0

    def __call__(self, done: int, total: int | None) -> None:
        if total is None or total <= 0:
            return
        if self._bar is not None and done < self._done:  # a retry starts again
            self.close()
        if self._bar is None:
            self._bar = click.progressbar(length=total, label=self.label, file=sys.stderr)
            self._bar.__enter__()
        self._bar.update(done - self._done)
        self._done = done

    def close(self) -> None:
        if self._bar is not None:
            self._bar.__exit__(None, None, None)
        self._bar = None
        self._done = 0


def _stdout_gone() -> None:
    """stdout was closed (``tdxupdate --list | head``): send the rest nowhere, quietly."""
    with contextlib.suppress(OSError):
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def _echo(line: str) -> None:
    """Print for people; a closed stdout never interrupts what the tool is doing (an update
    must still be watched and recorded) nor changes its exit code."""
    try:
        click.echo(line)
    except BrokenPipeError:
        _stdout_gone()


def run_action(settings: Settings) -> Any:
    from tdxupdate import readonly
    from tdxupdate.report import Report

    report = Report(settings.action.replace("_", "-"))
    if not settings.json and settings.verbosity >= 0:
        report.live = _echo
        report.live_warn = _log.get_logger().warning
    try:
        if settings.action in ("status", "list"):
            # Listing only: verdicts kept from earlier runs may spare work (issue 14); --update
            # and --verify compute every verdict themselves.
            from tdxupdate import verdicts

            with verdicts.listing(settings.cache_dir):
                if settings.action == "status":
                    readonly.run_status(settings, report)
                else:
                    readonly.run_list(settings, report)
        elif settings.action == "verify":
            readonly.run_verify(settings, report)
        elif settings.action == "history":
            readonly.run_history(settings, report)
        elif settings.action == "reference_values":
            readonly.run_reference_values(settings, report)
        else:
            from tdxupdate import update

            with _progress_bar(settings, "streaming to the kernel") as factory:
                update.run_update(settings, report, progress=factory)
    except TdxError as exc:
        report.error = exc
    from tdxupdate import attestation_report

    attestation_report.annotate(settings, report)
    return report


@contextlib.contextmanager
def _simulation(settings: Settings, profile: str) -> Iterator[Settings]:
    """``--simulate``: a throw-away emulated host and the bundled sample repository."""
    import tempfile

    from tdxupdate.settings import default_cache_dir
    from tdxupdate.sim import simulated_host

    cache = (settings.cache_dir or default_cache_dir()) / "sim"
    from tdxupdate.sim.mount import require_fuse
    from tdxupdate.sim.repo import is_cached

    # Without FUSE there is nothing to mount: say so in one line, before seconds of key
    # generation for a sample repository this run could not use.
    require_fuse()
    if not is_cached(cache):
        _log.notice(
            "--simulate: first run: generating the sample repository (an RSA-3072 key and "
            "the signed sample images, a few seconds); it is kept in %s and reused",
            cache,
        )
    with contextlib.ExitStack() as stack:
        with _signals.critical():  # the directory exists only with its removal registered
            state = stack.enter_context(tempfile.TemporaryDirectory(prefix="tdxupdate-sim-state-"))
        sim = stack.enter_context(simulated_host(profile, cache_dir=cache))
        overrides: dict[str, Any] = {
            "sysroot": sim.sysroot,
            "repo": str(sim.repo),
            "extra_signers": settings.extra_signers | sim.trusted_signers,
        }
        # Its lock and history are its own, whatever --state-dir or TDXUPDATE_STATE_DIR say:
        # a simulation must never write into a real host's state.
        overrides["state_dir"] = Path(state)
        yield replace(settings, **overrides)


def _emit(settings: Settings, report: Any) -> int:
    from tdxupdate.render import render

    err = report.error
    # -q: output only when something failed or changed (cron mails whatever is printed, and a
    # warning repeated by every run that does nothing is noise); the JSON keeps every token.
    warnings = (
        report.warnings if settings.verbosity >= 0 or err is not None or report.changed else []
    )
    if settings.json:
        for token in warnings:
            _log.get_logger().warning(report.warning_text[token])
        if err is not None:
            _log.get_logger().error(err.message)
        _echo(json.dumps(report.document(), indent=2, sort_keys=False))
    else:
        if settings.verbosity >= 0 or err is not None:
            for line in render(report):
                _echo(line)
        for token in warnings:
            if token not in report.shown:
                _log.get_logger().warning(report.warning_text[token])
        if err is not None:
            _log.get_logger().error(err.message)
    return err.exit_code if err is not None else 0


def _finish(settings: Settings, report: Any, started: float) -> int:
    """Write the metrics file, print the result, log the update summary: the exit code.

    The metrics come first so that what is printed (and the exit code) already knows whether
    they could be written: a run that changed nothing and could not write them fails with
    that error; a run whose update reached the kernel keeps the kernel's outcome and carries
    the failure as the ``metrics-write-failed`` warning.
    """
    if settings.metrics_file is not None:
        from tdxupdate import metrics

        try:
            metrics.write_textfile(
                settings.metrics_file,
                report,
                duration_s=time.monotonic() - started,
                now=time.time(),
            )
        except TdxError as exc:
            doc = report.document()
            if doc.get("changed") or doc.get("fatal") or report.error is not None:
                report.warn("metrics-write-failed", f"metrics not written: {exc.message}")
            else:
                report.error = exc
    code = _emit(settings, report)
    if settings.action == "update":
        _log.log_update_summary(report)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    args = list(argv) if argv is not None else sys.argv[1:]
    as_json = "--json" in args
    started = time.monotonic()
    _log.setup(0)
    restore = _signals.install()
    try:
        return _main(args, as_json, started)
    finally:
        # As the process's own entry point (argv None: the console script, python -m) a
        # signal from now on is ignored: one during interpreter shutdown must not replace the
        # exit status the JSON document already states. An in-process caller gets its
        # handlers back.
        if argv is None:
            _signals.ignore_until_exit()
        else:
            restore()


def _main(args: list[str], as_json: bool, started: float) -> int:
    verbosity = 0
    try:
        try:
            command.main(args=args, prog_name="tdxupdate", standalone_mode=False)
        except _Done as done:
            opts, sources = done.opts, done.sources
        else:
            return 0  # --help / --version printed
        verbosity = opts["verbose"]
        _log.setup(opts["verbose"] - opts["quiet"])
        from tdxupdate import config as _config

        config_path, required = _config.config_location(opts["config_file"])
        # A simulation must not pick up this host's state_dir, repo or metrics_file.
        if opts["simulate"] is not None and not required:
            file_values: dict[str, object] = {}
        else:
            file_values = _config.load_config(config_path, required=required)
        opts = _config.layer_options(opts, sources, file_values)
        settings = load_operator_files(settings_from_options(opts))
        if opts["simulate"] is not None:
            with _simulation(settings, opts["simulate"]) as simulated:
                report = run_action(simulated)
                _signals.hold()  # the outcome is decided: report it, whatever arrives now
                return _finish(simulated, report, started)
        report = run_action(settings)
        _signals.hold()
        return _finish(settings, report, started)
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except BrokenPipeError:
        # stdout closed early (e.g. piped into head) somewhere _echo does not print: quietly,
        # with the conventional status of a process whose reader went away.
        _stdout_gone()
        return EXIT_CODES["broken-pipe"]
    except click.ClickException as exc:
        err: TdxError = UsageError(exc.format_message())
    except click.Abort:
        err = Interrupted("interrupted")
    except (Exception, KeyboardInterrupt) as exc:  # the last line of defence: never a traceback
        err = funnel(exc)
        # -vv shows where an expected error came from; -v already where a bug did
        if isinstance(exc, Exception) and verbosity >= (2 if exc is err else 1):
            import traceback

            traceback.print_exc()
    return _fail(err, as_json)


def _fail(exc: TdxError, as_json: bool) -> int:
    """The one place a run that produced no report ends: its error on stderr, as a JSON
    document on stdout with --json, and its exit code."""
    _log.get_logger().error(exc.message)
    if as_json:
        from tdxupdate.report import SCHEMA_VERSION

        doc: dict[str, Any] = {
            "schema_version": SCHEMA_VERSION,
            "action": None,
            "ok": False,
            "error": exc.to_json(),
            "warnings": [],
            "tool_version": __version__,
        }
        click.echo(json.dumps(doc, indent=2))
    return exc.exit_code
