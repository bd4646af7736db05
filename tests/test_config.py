"""tdxupdate.config: the TOML configuration file, its errors, and the precedence of layers."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from tdxupdate import config
from tdxupdate.cli_options import command
from tdxupdate.errors import TdxError
from tdxupdate.settings import Settings

REPO_ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = REPO_ROOT / "contrib" / "tdxupdate.conf.example"


def write(tmp_path: Path, text: str, name: str = "tdxupdate.conf") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def error_of(tmp_path: Path, text: str) -> tuple[Path, config.ConfigError]:
    path = write(tmp_path, text)
    with pytest.raises(config.ConfigError) as info:
        config.load_config(path, required=True)
    return path, info.value


# --- valid files ----------------------------------------------------------------------------


def test_load_config_every_key_returns_settings_values(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        # site policy
        repo = "https://mirror.example.com/tdx"
        mapping = "/srv/tdx/mapping_file.json"
        trusted_keys = ["/etc/tdxupdate/a.txt", "/etc/tdxupdate/b.txt"]
        timeout = 600
        state_dir = "/srv/state"
        cache_dir = "/srv/cache"
        image_format = "0x200"
        strict_compat = true
        offline = false
        allow_insecure_http = false
        ca_bundle = "/etc/ssl/internal.pem"
        metrics_file = "/var/lib/prometheus/node-exporter/tdxupdate.prom"
        """,
    )
    assert config.load_config(path, required=True) == {
        "repo": "https://mirror.example.com/tdx",
        "mapping": "/srv/tdx/mapping_file.json",
        "trusted_keys": (Path("/etc/tdxupdate/a.txt"), Path("/etc/tdxupdate/b.txt")),
        "timeout": 600.0,
        "state_dir": Path("/srv/state"),
        "cache_dir": Path("/srv/cache"),
        "image_format": "0x200",
        "strict_compat": True,
        "offline": False,
        "allow_insecure_http": False,
        "ca_bundle": Path("/etc/ssl/internal.pem"),
        "metrics_file": Path("/var/lib/prometheus/node-exporter/tdxupdate.prom"),
    }


def test_load_config_empty_file_sets_nothing(tmp_path: Path) -> None:
    assert config.load_config(write(tmp_path, "# nothing\n"), required=True) == {}


def test_load_config_dev_null_sets_nothing() -> None:
    assert config.load_config(Path("/dev/null"), required=True) == {}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("image_format = 0x100", "0x100"),
        ("image_format = 0x200", "0x200"),
        ('image_format = "0X200"', "0x200"),
        ('image_format = "AUTO"', "auto"),
    ],
    ids=["int-0x100", "int-0x200", "upper-hex", "upper-auto"],
)
def test_image_format_accepts_toml_integers_and_any_case(
    tmp_path: Path, text: str, expected: str
) -> None:
    assert config.load_config(write(tmp_path, text), required=True) == {"image_format": expected}


def test_trusted_keys_single_string_is_a_one_element_list(tmp_path: Path) -> None:
    path = write(tmp_path, 'trusted_keys = "/etc/tdxupdate/keys.txt"\n')
    assert config.load_config(path, required=True) == {
        "trusted_keys": (Path("/etc/tdxupdate/keys.txt"),)
    }


@pytest.mark.parametrize(
    "url", ["https://m.example/tdx", "http://m.example/tdx", "file:///srv/tdx", "/srv/tdx"]
)
def test_repo_accepts_absolute_directories_and_http_file_urls(tmp_path: Path, url: str) -> None:
    assert config.load_config(write(tmp_path, f'repo = "{url}"\n'), required=True) == {"repo": url}


def test_timeout_integer_becomes_float(tmp_path: Path) -> None:
    assert config.load_config(write(tmp_path, "timeout = 45\n"), required=True) == {"timeout": 45.0}


def test_example_file_uncommented_sets_every_key(tmp_path: Path) -> None:
    text = EXAMPLE.read_text(encoding="utf-8")
    assert config.parse_config(text, EXAMPLE) == {}  # everything is commented out
    uncommented = re.sub(r"(?m)^#(\w+ = )", r"\1", text)
    values = config.parse_config(uncommented, EXAMPLE)
    assert set(values) == set(config.KEYS)


def test_every_key_is_a_settings_field() -> None:
    fields = {f.name for f in dataclasses.fields(Settings)}
    assert set(config.KEYS) <= fields
    assert set(config.REFUSED) & set(config.KEYS) == set()


# --- missing files --------------------------------------------------------------------------


def test_missing_default_file_is_fine(tmp_path: Path) -> None:
    assert config.load_config(tmp_path / "absent.conf", required=False) == {}


def test_missing_named_file_is_config_not_found(tmp_path: Path) -> None:
    path = tmp_path / "absent.conf"
    with pytest.raises(TdxError) as info:
        config.load_config(path, required=True)
    assert info.value.code == "config-not-found"
    assert info.value.exit_code == 66
    assert info.value.message == f"{path}: configuration file does not exist"


def test_directory_is_config_invalid(tmp_path: Path) -> None:
    with pytest.raises(config.ConfigError) as info:
        config.load_config(tmp_path, required=False)
    assert info.value.exit_code == 78
    assert info.value.message == f"{tmp_path}: is a directory, not a configuration file"


# --- errors name the file, the line and the key ---------------------------------------------


def test_unknown_key_names_line_and_suggests(tmp_path: Path) -> None:
    path, err = error_of(tmp_path, '# site\n\nrepo = "/srv/tdx"\n\n\n\ntiemout = 5\n')
    assert err.code == "config-invalid"
    assert err.exit_code == 78
    assert err.message == f"{path}:7: unknown key 'tiemout' (did you mean 'timeout'?)"


@pytest.mark.parametrize(
    ("key", "hint"),
    [
        ("state-dir", "state_dir"),
        ("repository", "repo"),
        ("trusted_key", "trusted_keys"),
        ("strict_comapt", "strict_compat"),
    ],
)
def test_unknown_key_suggestions(tmp_path: Path, key: str, hint: str) -> None:
    path, err = error_of(tmp_path, f"{key} = 1\n")
    assert err.message == f"{path}:1: unknown key {key!r} (did you mean {hint!r}?)"


def test_unknown_key_without_a_close_match_has_no_suggestion(tmp_path: Path) -> None:
    path, err = error_of(tmp_path, "colour = true\n")
    assert err.message == f"{path}:1: unknown key 'colour'"


def test_quoted_key_is_found_on_its_line(tmp_path: Path) -> None:
    path, err = error_of(tmp_path, 'timeout = 3\n"tmeout" = 5\n')
    assert err.message == f"{path}:2: unknown key 'tmeout' (did you mean 'timeout'?)"


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ('timeout = "soon"', 'timeout: expected a number of seconds > 0, got "soon"'),
        ("timeout = 0", "timeout: expected a number of seconds > 0, got 0"),
        ("timeout = -5.5", "timeout: expected a number of seconds > 0, got -5.5"),
        ("timeout = true", "timeout: expected a number of seconds > 0, got true"),
        ("timeout = inf", "timeout: expected a number of seconds > 0, got inf"),
        ("timeout = nan", "timeout: expected a number of seconds > 0, got nan"),
        ('strict_compat = "yes"', 'strict_compat: expected true or false, got "yes"'),
        ("offline = 1", "offline: expected true or false, got 1"),
        (
            'image_format = "b"',
            'image_format: expected "auto", "0x100" or "0x200", got "b"',
        ),
        (
            "image_format = 0x300",
            'image_format: expected "auto", "0x100" or "0x200", got 768',
        ),
        ('state_dir = "var/lib"', 'state_dir: expected an absolute path, got "var/lib"'),
        ('cache_dir = ""', 'cache_dir: expected an absolute path, got ""'),
        ("metrics_file = 5", "metrics_file: expected an absolute path, got 5"),
        (
            'trusted_keys = ["/etc/a", "keys.txt"]',
            'trusted_keys[1]: expected an absolute path, got "keys.txt"',
        ),
        (
            "trusted_keys = 3",
            "trusted_keys: expected a list of absolute file names, got 3",
        ),
        (
            'repo = "ftp://example.com/tdx"',
            'repo: expected a directory or an http(s)/file URL, got "ftp://example.com/tdx"',
        ),
        (
            'repo = "tdx-module-binaries"',
            "repo: expected an absolute directory or an http(s)/file URL, "
            'got "tdx-module-binaries"',
        ),
        ("mapping = []", "mapping: expected a directory or an http(s)/file URL, got a list"),
    ],
)
def test_bad_value_names_file_line_key_and_value(tmp_path: Path, text: str, problem: str) -> None:
    path, err = error_of(tmp_path, f"# comment\n\n{text}\n")
    assert err.message == f"{path}:3: {problem}"


def test_table_where_a_value_belongs_is_reported_at_its_header(tmp_path: Path) -> None:
    path, err = error_of(tmp_path, 'timeout = 5\n\n[repo]\nurl = "https://x"\n')
    assert err.message == (
        f"{path}:3: repo: expected a directory or an http(s)/file URL, got a table"
    )


def test_dotted_key_is_reported_at_its_line(tmp_path: Path) -> None:
    path, err = error_of(tmp_path, 'timeout = 5\nrepo.url = "https://x"\n')
    assert err.message == (
        f"{path}:2: repo: expected a directory or an http(s)/file URL, got a table"
    )


@pytest.mark.parametrize(
    "key", ["cpu_signature", "sysroot", "allow_reinstall", "dry_run", "json", "update", "version"]
)
def test_per_run_settings_are_refused_in_a_file(tmp_path: Path, key: str) -> None:
    path, err = error_of(tmp_path, f'{key} = "x"\n')
    assert err.exit_code == 78
    assert err.message.startswith(f"{path}:1: {key!r} ")
    assert "cannot be set in a configuration file" in err.message or "is an action" in err.message


def test_cpu_signature_refusal_says_why(tmp_path: Path) -> None:
    path, err = error_of(tmp_path, 'cpu_signature = "0x806f8"\n')
    assert err.message == (
        f"{path}:1: 'cpu_signature' cannot be set in a configuration file: a wrong CPU "
        "signature selects a module this CPU cannot run; use --cpu-signature for one run"
    )


def test_every_problem_is_reported_in_line_order_on_one_line(tmp_path: Path) -> None:
    path, err = error_of(tmp_path, 'tiemout = 5\noffline = "no"\ntimeout = "soon"\n')
    assert "\n" not in err.message
    assert [(p.line, p.message) for p in err.problems] == [
        (1, "unknown key 'tiemout' (did you mean 'timeout'?)"),
        (2, 'offline: expected true or false, got "no"'),
        (3, 'timeout: expected a number of seconds > 0, got "soon"'),
    ]
    assert err.message == "; ".join(f"{path}:{p.line}: {p.message}" for p in err.problems)


def test_toml_syntax_error_carries_line_and_column(tmp_path: Path) -> None:
    path, err = error_of(tmp_path, "timeout = 5\nrepo = \n")
    assert err.message == f"{path}:2:8: invalid TOML: Invalid value"


def test_toml_duplicate_key_is_a_syntax_error(tmp_path: Path) -> None:
    path, err = error_of(tmp_path, "timeout = 5\ntimeout = 6\n")
    assert err.message.startswith(f"{path}:2:")
    assert "invalid TOML" in err.message


def test_toml_error_at_end_of_document_names_the_last_line(tmp_path: Path) -> None:
    path, err = error_of(tmp_path, 'timeout = 5\nrepo = "/srv')
    assert err.message == f"{path}:2: invalid TOML: Unterminated string"


def test_not_utf8_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "tdxupdate.conf"
    path.write_bytes(b"timeout = 5\n# caf\xe9\n")
    with pytest.raises(config.ConfigError) as info:
        config.load_config(path, required=False)
    assert info.value.message == f"{path}:2: not UTF-8 text"


# --- which file -----------------------------------------------------------------------------


def test_config_location_explicit_option_is_required() -> None:
    assert config.config_location("/etc/other.conf", {}) == (Path("/etc/other.conf"), True)


def test_config_location_environment_is_required() -> None:
    env = {"TDXUPDATE_CONFIG": "/srv/tdx.conf"}
    assert config.config_location(None, env) == (Path("/srv/tdx.conf"), True)


def test_config_location_option_beats_environment() -> None:
    env = {"TDXUPDATE_CONFIG": "/srv/tdx.conf"}
    assert config.config_location("/etc/a.conf", env) == (Path("/etc/a.conf"), True)


def test_config_location_default_may_be_missing() -> None:
    assert config.config_location(None, {"TDXUPDATE_CONFIG": ""}) == (
        Path("/etc/tdxupdate.conf"),
        False,
    )


# --- precedence -----------------------------------------------------------------------------

LAYERS = ("defaults", "file", "env", "cli")


@pytest.mark.parametrize(
    ("layers", "winner"),
    [
        (("defaults",), "defaults"),
        (("defaults", "file"), "file"),
        (("defaults", "file", "env"), "env"),
        (("defaults", "file", "env", "cli"), "cli"),
        (("defaults", "env"), "env"),
        (("defaults", "cli"), "cli"),
        (("defaults", "file", "cli"), "cli"),
        (("defaults", "env", "cli"), "cli"),
    ],
    ids=lambda v: "+".join(v) if isinstance(v, tuple) else v,
)
def test_merge_layers_command_line_over_environment_over_file_over_defaults(
    layers: tuple[str, ...], winner: str
) -> None:
    given = {name: ({"repo": name} if name in layers else {}) for name in LAYERS}
    merged = config.merge_layers(**given)
    assert merged == {"repo": winner}


def test_merge_layers_lists_are_replaced_not_joined() -> None:
    merged = config.merge_layers(
        defaults={"trusted_keys": ()},
        file={"trusted_keys": (Path("/etc/a"),)},
        env={},
        cli={"trusted_keys": (Path("/etc/b"),)},
    )
    assert merged == {"trusted_keys": (Path("/etc/b"),)}


def parse_cli(args: list[str]) -> tuple[dict[str, object], dict[str, object]]:
    """Parse with the real click command: its values and where each came from."""
    ctx = command.make_context("tdxupdate", args)
    return dict(ctx.params), {name: ctx.get_parameter_source(name) for name in ctx.params}


FILE_VALUES: dict[str, object] = {
    "repo": "/srv/from-file",
    "timeout": 600.0,
    "state_dir": Path("/srv/state-from-file"),
    "trusted_keys": (Path("/etc/from-file.txt"),),
    "strict_compat": True,
}


def test_layer_options_file_fills_in_for_click_defaults(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("TDXUPDATE_REPO", "TDXUPDATE_STATE_DIR", "TDXUPDATE_SYSROOT"):
        monkeypatch.delenv(name, raising=False)
    opts, sources = parse_cli(["--list"])
    merged = config.layer_options(opts, sources, FILE_VALUES)
    assert merged["repo"] == "/srv/from-file"
    assert merged["timeout"] == 600.0
    assert merged["state_dir"] == Path("/srv/state-from-file")
    assert merged["trusted_keys"] == (Path("/etc/from-file.txt"),)
    assert merged["strict_compat"] is True
    # untouched by the file: click's own values
    assert merged["a_list"] is True
    assert merged["image_format"] == "auto"


def test_layer_options_command_line_beats_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TDXUPDATE_REPO", raising=False)
    opts, sources = parse_cli(
        ["--repo", "/srv/cli", "--timeout", "5", "--trusted-keys", "/etc/cli.txt"]
    )
    merged = config.layer_options(opts, sources, FILE_VALUES)
    assert merged["repo"] == "/srv/cli"
    assert merged["timeout"] == 5.0
    assert tuple(merged["trusted_keys"]) == (Path("/etc/cli.txt"),)


def test_layer_options_environment_beats_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TDXUPDATE_REPO", "/srv/env")
    monkeypatch.setenv("TDXUPDATE_STATE_DIR", "/srv/state-env")
    opts, sources = parse_cli([])
    merged = config.layer_options(opts, sources, FILE_VALUES)
    assert merged["repo"] == "/srv/env"
    assert merged["state_dir"] == Path("/srv/state-env")
    assert merged["timeout"] == 600.0  # no environment variable: the file still applies


def test_layer_options_command_line_beats_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TDXUPDATE_REPO", "/srv/env")
    opts, sources = parse_cli(["--repo", "/srv/cli"])
    assert config.layer_options(opts, sources, FILE_VALUES)["repo"] == "/srv/cli"


def test_layer_options_accepts_source_names_as_strings() -> None:
    merged = config.layer_options(
        {"repo": "/cli", "timeout": 300.0},
        {"repo": "COMMANDLINE", "timeout": "DEFAULT"},
        {"repo": "/file", "timeout": 9.0},
    )
    assert merged == {"repo": "/cli", "timeout": 9.0}


@pytest.mark.parametrize("url", ["https://[::1/tdx", "https://[::1]:99999/tdx", "http://h:port/"])
def test_a_malformed_url_is_a_configuration_error_not_an_internal_one(
    tmp_path: Path, url: str
) -> None:
    _, err = error_of(tmp_path, f'repo = "{url}"\n')
    assert err.exit_code == 78
    assert "malformed URL" in err.message


def test_allow_debug_in_a_file_is_refused_because_a_file_never_widens_trust(
    tmp_path: Path,
) -> None:
    path, err = error_of(tmp_path, "allow_debug = true\n")
    assert err.exit_code == 78
    assert err.message.startswith(f"{path}:1: 'allow_debug' cannot be set in a configuration file")
    assert "--allow-debug" in err.message
