"""The configuration file, ``/etc/tdxupdate.conf`` (TOML), and how it layers with the rest.

cli-contract.md §1 names ``--config FILE``; issue 6 ("Operate it like a system tool") fixes the
rest: the file sets the site policy a cron job or systemd timer would otherwise repeat on every
command line, with the precedence **command line > environment > file > built-in defaults**.

The file is flat TOML whose keys are :class:`tdxupdate.settings.Settings` field names (the long
option with ``_`` for ``-``)::

    repo = "https://mirror.example.com/tdx-module-binaries"
    trusted_keys = ["/etc/tdxupdate/lab-keys.txt"]
    timeout = 600

Unknown keys and bad values are errors (``config-invalid``, exit 78, EX_CONFIG) that name the
file, the line and the key — ``tomllib`` gives line numbers for syntax errors only, so the line
of a key is found by scanning the text. An explicitly named file (``--config`` or
``TDXUPDATE_CONFIG``) that does not exist is ``config-not-found`` (66); the default file may be
absent.

Some settings are deliberately not accepted from a file because a stale value there would act on
every later run without anyone typing it: ``cpu_signature`` (a wrong CPU selects a module this
CPU cannot run, which kills every TD), ``allow_debug`` (a file never widens trust: a
debug-signed module installed by a cron run loses the module), ``sysroot`` (a test
fixture), ``allow_reinstall`` (spends one of the host's limited updates) and the per-run
switches (action, ``dry_run``, ``json``).
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from tdxupdate import fsio
from tdxupdate.errors import NotFound, TdxError

DEFAULT_CONFIG = Path("/etc/tdxupdate.conf")
CONFIG_ENV = "TDXUPDATE_CONFIG"
IMAGE_FORMATS = ("auto", "0x100", "0x200")
_URL_SCHEMES = ("http", "https", "file")


@dataclass(frozen=True)
class ConfigProblem:
    """One thing wrong with a configuration file, located as precisely as the text allows."""

    path: Path
    line: int | None
    column: int | None
    message: str

    def __str__(self) -> str:
        where = str(self.path)
        if self.line is not None:
            where += f":{self.line}"
            if self.column is not None:
                where += f":{self.column}"
        return f"{where}: {self.message}"


class ConfigError(TdxError):
    """A configuration file that cannot be used (exit 78). ``problems`` lists every finding."""

    code = "config-invalid"

    def __init__(self, problems: list[ConfigProblem]):
        ordered = sorted(problems, key=lambda p: (p.line or 0, p.column or 0))
        # One line (team-brief rule) that still shows the administrator every mistake at once.
        super().__init__("; ".join(str(p) for p in ordered))
        self.problems = ordered


# --- value checks: each returns the Settings value or raises _Bad with the problem --------


class _Bad(Exception):
    pass


#: Characters json.dumps leaves alone that break a line (str.splitlines) or print as nothing.
_LINE_BREAKING = re.compile("[\x7f\x85\u2028\u2029]")


def _show(value: object) -> str:
    """A TOML value the way the administrator wrote it (roughly), for "got …" messages."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        text = value if len(value) <= 60 else value[:57] + "..."
        # A TOML basic string: control characters escaped, so the message stays one line.
        return _LINE_BREAKING.sub(
            lambda m: f"\\u{ord(m.group()):04x}", json.dumps(text, ensure_ascii=False)
        )
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "a list"
    return f"a {type(value).__name__}"  # dates and times


def _boolean(value: object) -> bool:
    if not isinstance(value, bool):
        raise _Bad(f"expected true or false, got {_show(value)}")
    return value


def _seconds(value: object) -> float:
    if (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value > 0
    ):
        return float(value)
    raise _Bad(f"expected a number of seconds > 0, got {_show(value)}")


def _abs_path(value: object) -> Path:
    # Absolute only: the file is read by cron and systemd from "/" as often as by a shell,
    # so a relative path would mean something different depending on who runs the tool.
    if not isinstance(value, str) or not value:
        raise _Bad(f"expected an absolute path, got {_show(value)}")
    if not value.startswith("/"):
        raise _Bad(f"expected an absolute path, got {_show(value)}")
    return Path(value)


def _location(value: object) -> str:
    if not isinstance(value, str) or not value:
        raise _Bad(f"expected a directory or an http(s)/file URL, got {_show(value)}")
    if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", value):
        try:
            parts = urlparse(value)
            parts.port  # noqa: B018 - raises ValueError for a port out of range
        except ValueError as exc:  # "https://[::1/x": a configuration error, not an internal one
            raise _Bad(f"malformed URL {_show(value)} ({exc})") from None
        if parts.scheme.lower() not in _URL_SCHEMES:
            raise _Bad(f"expected a directory or an http(s)/file URL, got {_show(value)}")
        return value
    if not value.startswith("/"):
        raise _Bad(f"expected an absolute directory or an http(s)/file URL, got {_show(value)}")
    return value


def _path_list(value: object) -> tuple[Path, ...]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list):
        raise _Bad(f"expected a list of absolute file names, got {_show(value)}")
    paths: list[Path] = []
    for index, item in enumerate(items):
        try:
            paths.append(_abs_path(item))
        except _Bad as exc:
            raise _Bad(f"[{index}]: {exc}") from None
    return tuple(paths)


def _command(value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _Bad(f"expected a shell command line, got {_show(value)}")
    if "\0" in value:
        raise _Bad("a command line cannot contain a NUL character")
    return value


def _image_format(value: object) -> str:
    # TOML has hex integers, so `image_format = 0x200` is as natural as the string form.
    if isinstance(value, int) and not isinstance(value, bool) and value in (0x100, 0x200):
        return f"{value:#x}"
    if isinstance(value, str) and value.lower() in IMAGE_FORMATS:
        return value.lower()
    raise _Bad(f'expected "auto", "0x100" or "0x200", got {_show(value)}')


#: key -> value check. The keys are Settings field names and click parameter names alike.
KEYS: dict[str, Callable[[object], object]] = {
    "repo": _location,
    "mapping": _location,
    "trusted_keys": _path_list,
    "timeout": _seconds,
    "fence_timeout": _seconds,
    "td_build_wait": _seconds,
    "td_build_max": _seconds,
    "state_dir": _abs_path,
    "cache_dir": _abs_path,
    "image_format": _image_format,
    "strict_compat": _boolean,
    "offline": _boolean,
    "allow_insecure_http": _boolean,
    "ca_bundle": _abs_path,
    "metrics_file": _abs_path,
    "pre_update": _command,
    "post_update": _command,
    "hook_timeout": _seconds,
    "allowlist": _abs_path,
    "tcb_info": _abs_path,
}

#: Settings a file must not set, and why (see the module docstring).
REFUSED: dict[str, str] = {
    "cpu_signature": (
        "cannot be set in a configuration file: a wrong CPU signature selects a module this CPU "
        "cannot run; use --cpu-signature for one run"
    ),
    "sysroot": "cannot be set in a configuration file; use --sysroot or TDXUPDATE_SYSROOT",
    "allow_reinstall": (
        "cannot be set in a configuration file: a reinstall spends one of the host's limited "
        "updates; use --allow-reinstall with --update VERSION"
    ),
    "allow_debug": (
        "cannot be set in a configuration file: a file never widens what is trusted, and a "
        "debug-signed module on a production platform loses the module; use --allow-debug "
        "for one run"
    ),
    "dry_run": "cannot be set in a configuration file; use --dry-run",
    "json": "cannot be set in a configuration file; use --json",
    "config": "cannot be set in a configuration file; use --config or TDXUPDATE_CONFIG",
    "version": "cannot be set in a configuration file; give it as --update VERSION",
}
for _action in (
    "status",
    "list",
    "update",
    "verify",
    "history",
    "reference_values",
    "simulate",
    "action",
):
    REFUSED[_action] = "is an action, not a setting; give it on the command line"

#: Spellings people reach for that difflib does not find.
_ALIASES = {
    "repository": "repo",
    "mapping_file": "mapping",
    "keys": "trusted_keys",
    "trusted_key": "trusted_keys",
    "cache": "cache_dir",
    "state": "state_dir",
    "format": "image_format",
}


def _suggest(key: str) -> str | None:
    normal = key.replace("-", "_").lower()
    if normal in KEYS:
        return normal
    if normal in _ALIASES:
        return _ALIASES[normal]
    import difflib  # only when a key is misspelt

    close = difflib.get_close_matches(normal, list(KEYS), n=1, cutoff=0.6)
    return close[0] if close else None


def _key_line(text: str, key: str) -> int | None:
    """The line of a top-level ``key = …``, ``key.x = …`` or ``[key]`` (tomllib has no lines)."""
    name = re.escape(key)
    quoted = rf"(?:{name}|\"{name}\"|'{name}')"
    patterns = (
        rf"^[ \t]*{quoted}[ \t]*[=.]",
        rf"^[ \t]*\[\[?[ \t]*{quoted}[ \t]*[\].]",
    )
    for pattern in patterns:
        m = re.search(pattern, text, re.MULTILINE)
        if m is not None:
            return text.count("\n", 0, m.start()) + 1
    return None


_TOML_WHERE = re.compile(r"\s*\((?:at line (\d+), column (\d+)|at end of document)\)\s*$")


def _syntax_problem(path: Path, text: str, exc: Exception) -> ConfigProblem:
    message = str(exc)
    m = _TOML_WHERE.search(message)
    line = column = None
    if m is not None:
        message = message[: m.start()]
        if m.group(1) is not None:
            line, column = int(m.group(1)), int(m.group(2))
        else:
            line = text.count("\n") + 1
    return ConfigProblem(path, line, column, f"invalid TOML: {message}")


def parse_config(text: str, path: Path) -> dict[str, object]:
    """Validate the text of a configuration file; the Settings overrides it asks for."""
    import tomllib  # only when there is a configuration file

    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([_syntax_problem(path, text, exc)]) from None
    except RecursionError:
        # tomllib parses arrays and inline tables recursively: `a = [[[[...` a few thousand
        # deep (64 KiB allow 32,000) exhausts the interpreter's stack instead of failing.
        problem = ConfigProblem(path, None, None, "invalid TOML: arrays or tables nested too deep")
        raise ConfigError([problem]) from None
    problems: list[ConfigProblem] = []
    values: dict[str, object] = {}
    for key, raw in data.items():
        line = _key_line(text, key)
        check = KEYS.get(key)
        if check is None:
            if key in REFUSED:
                message = f"{key!r} {REFUSED[key]}"
            else:
                message = f"unknown key {key!r}"
                hint = _suggest(key)
                if hint is not None:
                    message += f" (did you mean {hint!r}?)"
            problems.append(ConfigProblem(path, line, None, message))
            continue
        try:
            values[key] = check(raw)
        except _Bad as exc:
            detail = str(exc)
            sep = "" if detail.startswith("[") else ": "
            problems.append(ConfigProblem(path, line, None, f"{key}{sep}{detail}"))
    if problems:
        raise ConfigError(problems)
    return values


#: A configuration file is a few dozen short lines; anything this large is not one.
MAX_CONFIG_SIZE = 64 * 1024


def load_config(path: Path, *, required: bool) -> dict[str, object]:
    """Read and validate ``path``; ``{}`` when it is absent and not ``required``.

    Raises :class:`ConfigError` (``config-invalid``, 78) for bad content, ``config-not-found``
    (66) when a required file is missing, and the usual permission/I/O errors otherwise.
    """
    try:
        text = read_operator_file(
            path,
            MAX_CONFIG_SIZE,
            "a configuration file",
            too_large=f"larger than {MAX_CONFIG_SIZE // 1024} KiB",
        )
    except FileNotFoundError as exc:
        if not required:
            return {}
        raise NotFound(
            f"{path}: configuration file does not exist", code="config-not-found"
        ) from exc
    return parse_config(text, path)


def read_operator_file(path: Path, limit: int, what: str, *, too_large: str | None = None) -> str:
    """The text of a file the operator gives the tool to decide with (the configuration, an
    allowlist, a tcbInfo file): at most ``limit`` bytes, only from a safe owner
    (:mod:`tdxupdate.trustedfile`), UTF-8. Bad content is :class:`ConfigError` (78) naming the
    file (and the line); ``FileNotFoundError`` is left to the caller, which words it.
    """
    from tdxupdate.trustedfile import TooLarge, read_capped, unsafe

    try:
        data, st = read_capped(path, limit)
    except TooLarge:
        said = too_large or f"larger than {limit // 1024} KiB, not {what}"
        raise ConfigError([ConfigProblem(path, None, None, said)]) from None
    except FileNotFoundError:
        raise
    except IsADirectoryError:
        raise ConfigError(
            [ConfigProblem(path, None, None, f"is a directory, not {what}")]
        ) from None
    except OSError as exc:
        raise fsio.os_error(exc, str(path)) from exc
    why = unsafe(st)
    if why is not None:
        raise ConfigError([ConfigProblem(path, None, None, f"refused: {why}")])
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ConfigError([ConfigProblem(path, line, None, "not UTF-8 text")]) from None


def config_location(
    explicit: str | Path | None = None, environ: Mapping[str, str] | None = None
) -> tuple[Path, bool]:
    """Which file to read and whether it must exist.

    ``--config FILE`` first, then ``TDXUPDATE_CONFIG``, then ``/etc/tdxupdate.conf``. Only the
    default may be missing: a file someone named and mistyped must not be silently skipped.
    ``--config /dev/null`` reads no settings at all.
    """
    env = os.environ if environ is None else environ
    if explicit is not None and str(explicit) != "":
        return Path(explicit), True
    named = env.get(CONFIG_ENV, "")
    if named:
        return Path(named), True
    return DEFAULT_CONFIG, False


# --- layering ------------------------------------------------------------------------------


def merge_layers(
    *,
    defaults: Mapping[str, Any],
    file: Mapping[str, Any],
    env: Mapping[str, Any],
    cli: Mapping[str, Any],
) -> dict[str, Any]:
    """Command line > environment > file > built-in defaults, key by key.

    A value replaces the lower layer's value whole (lists included: ``--trusted-keys`` on the
    command line replaces the file's ``trusted_keys``, it does not add to them).
    """
    merged: dict[str, Any] = dict(defaults)
    for layer in (file, env, cli):
        merged.update(layer)
    return merged


#: click's ParameterSource names -> our layers (PROMPT never happens; DEFAULT_MAP is a default).
_LAYER_OF_SOURCE = {
    "COMMANDLINE": "cli",
    "PROMPT": "cli",
    "ENVIRONMENT": "env",
    "DEFAULT": "defaults",
    "DEFAULT_MAP": "defaults",
}


def layer_options(
    opts: Mapping[str, Any], sources: Mapping[str, Any], file_values: Mapping[str, Any]
) -> dict[str, Any]:
    """click's parsed ``opts`` with the configuration file's values layered in.

    ``sources`` maps each parameter name to ``ctx.get_parameter_source(name)`` (a
    ``click.core.ParameterSource``, or its name as a string; None counts as a default).
    Values the user typed or set through an environment variable win over the file; values
    that are click's built-in defaults give way to it. File keys with no click parameter are
    passed through, so a caller can read them even before an option exists for them.
    """
    layers: dict[str, dict[str, Any]] = {"defaults": {}, "env": {}, "cli": {}}
    for name, value in opts.items():
        source = sources.get(name)
        source_name = getattr(source, "name", source) or "DEFAULT"
        layers[_LAYER_OF_SOURCE.get(str(source_name), "defaults")][name] = value
    return merge_layers(
        defaults=layers["defaults"], file=file_values, env=layers["env"], cli=layers["cli"]
    )
