"""Command line: click options -> Settings -> one action -> text or JSON -> exit code.

The contract is cli-contract.md. The options and their reading into Settings are
:mod:`tdxupdate.cli_options`'s; this module layers the configuration file in, runs the one
action and renders it. It is the only module that prints the final result and the only place a
:class:`TdxError` becomes an exit code (architecture.md, convention 3).
"""

from __future__ import annotations

import contextlib
import gc
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from tdxupdate import __version__
from tdxupdate import log as _log
from tdxupdate import signals as _signals
from tdxupdate.cli_options import OptionsParsed, command, settings_from_options
from tdxupdate.errors import EXIT_CODES, Interrupted, TdxError, UsageError, funnel
from tdxupdate.settings import Settings

if TYPE_CHECKING:  # pragma: no cover
    from tdxupdate.sources.http import DownloadProgress


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
        _echo(report.json_text())
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
            kernel_acted = report.update is not None and (
                report.update.changed or report.update.fatal
            )
            if kernel_acted or report.error is not None:
                report.warn("metrics-write-failed", f"metrics not written: {exc.message}")
            else:
                report.error = exc
    code = _emit(settings, report)
    if settings.action == "update":
        _log.log_update_summary(report)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    if argv is None:
        # The process's own entry point: one short run that allocates many small objects and
        # frees nearly all of them by reference counting. The cyclic collector's default pace
        # (a pass every 700 allocations) spends more time walking the imported modules than it
        # ever frees; a slower pace still collects cycles.
        gc.set_threshold(10_000, 50, 100)
    args = list(argv) if argv is not None else sys.argv[1:]
    as_json = "--json" in args
    started = time.monotonic()
    _log.setup(0)
    restore = _signals.install()
    # What arrived while a replay was being tried (tdxupdate.replay) now meets the handlers.
    from tdxupdate import replay

    replay.unblock()
    try:
        return _main(args, as_json, started)
    finally:
        # As the process's own entry point (argv None: the console script, python -m) a
        # signal from now on is ignored: one during interpreter shutdown must not replace the
        # exit status the JSON document already states. An in-process caller gets its
        # handlers back.
        if argv is None:
            _signals.ignore_until_exit()
            # The outcome is reported. Interpreter shutdown would now walk every object the
            # run left for the cyclic collector (tens of ms once the update modules are
            # loaded); the process's memory goes back whole, so freeze the heap and let the
            # exit skip that walk. atexit handlers and the flush of stdout/stderr still run.
            gc.disable()
            gc.freeze()
        else:
            restore()


def _main(args: list[str], as_json: bool, started: float) -> int:
    verbosity = 0
    try:
        try:
            command.main(args=args, prog_name="tdxupdate", standalone_mode=False)
        except OptionsParsed as done:
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
        settings = settings_from_options(opts)
        settings = replace(settings, download_progress=_download_progress(settings))
        settings = load_operator_files(settings)
        _may_replay(settings, opts["simulate"] is None)
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


def _may_replay(settings: Settings, real_host: bool) -> None:
    """Tell :mod:`tdxupdate.replay` whether this run is a listing a later run may repeat from
    its record: a plain local ``--list`` that writes nothing but its output."""
    from tdxupdate import replay

    if not replay.recording():
        return
    from tdxupdate.inventory import is_local

    replay.accept(
        settings.cache_dir,
        eligible=real_host
        and settings.action == "list"
        and settings.metrics_file is None
        and settings.verbosity <= 0
        and is_local(settings),
    )


def _fail(exc: TdxError, as_json: bool) -> int:
    """The one place a run that produced no report ends: its error on stderr, as a JSON
    document on stdout with --json, and its exit code."""
    _log.get_logger().error(exc.message)
    if as_json:
        import json

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
