"""A listing replayed from its record (issue 14, tdxupdate.replay): only when every input reads
as it did, byte for byte the full run's output, and never from a record someone else could
have written.

The runs are in-process (``entry.run(args, process=False)``, the function the command runs)
except where the process itself matters (the record kept across processes, a closed stdout).
Nothing here times anything: bench/run.py measures what a replay saves.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from factories.hosts import build_host_tree
from factories.images import Release, make_image, mapping_document, test_key, write_repo

from tdxupdate import cli, config, entry, replay
from tdxupdate.errors import EXIT_CODES, TERMINATING_SIGNALS

SPR = (0x806F8, 0xC06F0)
VERSIONS = ("1.5.06", "1.5.08", "1.5.09", "2.0.02")


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No site configuration file (its absence is an input too) and none of the variables a
    developer's shell might carry."""
    monkeypatch.setattr(config, "DEFAULT_CONFIG", tmp_path / "etc-tdxupdate.conf")
    for name in ("TDXUPDATE_CONFIG", "TDXUPDATE_REPO", "TDXUPDATE_STATE_DIR", "JOURNAL_STREAM"):
        monkeypatch.delenv(name, raising=False)


class World:
    """A host tree, a repository, a trusted-keys file and a cache directory, and the command
    line that lists them."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.host = build_host_tree(root / "host", generation="G5", module="1.5.06", remaining=3)
        rel = [Release(v, min_seamldr_versions=("1.5.00", "2.0.00")) for v in VERSIONS]
        self.repo = write_repo(
            root / "repo",
            {v: make_image(v, cpuids=SPR, module_pages=2) for v in VERSIONS},
            mapping_document(rel),
        )
        self.keys = root / "trusted-keys"
        self.keys.write_text(f"{test_key().fingerprint}\n")
        self.cache = root / "cache"
        # The host tree has the kernel's modes (a write-only ``cancel``, read-only counters);
        # the tests read, copy and rewrite every file, also as a non-root build user. Only the
        # owner's bits are added: what group and others may do is as the tree made it.
        for path in self.host.rglob("*"):
            if not path.is_symlink():
                path.chmod(path.stat().st_mode | (0o700 if path.is_dir() else 0o600))

    def args(self, *extra: str) -> list[str]:
        return [
            "--list",
            *extra,
            "--sysroot",
            str(self.host),
            "--repo",
            str(self.repo),
            "--trusted-keys",
            str(self.keys),
            "--cache-dir",
            str(self.cache),
        ]

    @property
    def records(self) -> list[Path]:
        where = self.cache / replay.DIR_NAME
        return sorted(where.iterdir()) if where.is_dir() else []

    def inputs(self) -> list[Path]:
        """Every file of the host tree, the repository and the keys."""
        files = [p for top in (self.host, self.repo) for p in top.rglob("*") if p.is_file()]
        return sorted([*files, self.keys])


@pytest.fixture
def world(tmp_path: Path) -> World:
    return World(tmp_path / "w")


Outcome = tuple[int | None, str, str]


@pytest.fixture
def full(capfd: pytest.CaptureFixture[str]) -> Callable[[list[str]], Outcome]:
    """The command as the process runs it, recorded when it may be (a replay first)."""

    def _full(args: list[str]) -> Outcome:
        code = entry.run(args, process=False)
        out, err = capfd.readouterr()
        return code, out, err

    return _full


@pytest.fixture
def again(capfd: pytest.CaptureFixture[str]) -> Callable[[list[str]], Outcome]:
    """A replay alone: its exit status (None: a miss) and what it printed."""

    def _again(args: list[str]) -> Outcome:
        capfd.readouterr()
        code = replay.replay(args, hold_signals=False)
        out, err = capfd.readouterr()
        return code, out, err

    return _again


def _no_full_run(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(argv: object = None) -> int:
        raise AssertionError("the full run ran: the replay missed")

    monkeypatch.setattr(cli, "main", refuse)


# --- a hit ---------------------------------------------------------------------------------


@pytest.mark.parametrize("extra", [(), ("--json",), ("-q",)])
def test_an_unchanged_listing_is_printed_again_byte_for_byte(
    world: World,
    full: Callable[[list[str]], Outcome],
    monkeypatch: pytest.MonkeyPatch,
    extra: tuple[str, ...],
) -> None:
    first = full(world.args(*extra))
    assert first[0] == 0
    assert len(world.records) == 1
    _no_full_run(monkeypatch)
    assert full(world.args(*extra)) == first
    assert full(world.args(*extra)) == first


def test_the_record_holds_the_warnings_in_their_order(
    world: World, full: Callable[[list[str]], Outcome], again: Callable[[list[str]], Outcome]
) -> None:
    code, out, err = full(world.args())
    assert "lacks update compatibility" in err  # the running 1.5.06 lacks bit 47
    assert "1.5.09" in out
    assert again(world.args()) == (code, out, err)


def test_another_command_line_or_environment_is_another_record(
    world: World,
    full: Callable[[list[str]], Outcome],
    again: Callable[[list[str]], Outcome],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    full(world.args())
    assert again(world.args("--json"))[0] is None
    monkeypatch.setenv("NO_COLOR", "1")
    assert again(world.args())[0] is None
    monkeypatch.delenv("NO_COLOR")
    monkeypatch.setenv("OLDPWD", "/somewhere/else")  # differs between shells, read by nobody
    assert again(world.args())[0] == 0


# --- every input is read again -----------------------------------------------------------


def _flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes() or b"\0")
    data[offset % len(data)] ^= 0x01
    path.write_bytes(bytes(data))


MUTATIONS: dict[str, Callable[[Path], object]] = {
    "first byte": lambda p: _flip(p, 0),
    "last byte": lambda p: _flip(p, -1),
    "appended": lambda p: p.write_bytes(p.read_bytes() + b"\n"),
    "removed": lambda p: p.unlink(),
    "group-writable": lambda p: p.chmod(0o664),
}


def _content_reads(monkeypatch: pytest.MonkeyPatch) -> set[str]:
    """Filled, at each recorded run's end, with the paths whose bytes it read."""
    paths: set[str] = set()
    real_end = replay.end

    def end(code: int) -> None:
        tape = replay._tape
        if tape is not None:
            paths.update(
                os.fsdecode(path)
                for op, path, _ in tape.ops
                if op in (b"read", b"read1", b"capped", b"head", b"whole")
            )
        real_end(code)

    monkeypatch.setattr(replay, "end", end)
    return paths


def test_any_change_to_any_input_is_a_miss_or_the_same_listing(
    world: World,
    full: Callable[[list[str]], Outcome],
    again: Callable[[list[str]], Outcome],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each mutation of each file of the host tree, the repository and the keys, one at a
    time: a replay either misses or prints exactly what a full run now prints. A change to
    a byte the listing reads (a sysfs file, the mapping, an image's head or size, the keys)
    or to a mode it judges (the keys') must miss; one it does not read (the end of an image,
    a write-only fw_upload file, the mode of a sysfs file) may hit, and then agrees."""
    pristine = tmp_path / "pristine"
    shutil.copytree(world.root, pristine, symlinks=True)
    args = world.args("--json")
    read = _content_reads(monkeypatch)
    assert full(args)[0] == 0
    read_names = {Path(p).relative_to(world.root) for p in read if p.startswith(str(world.root))}
    assert {Path("repo/mapping_file.json"), Path("trusted-keys")} <= read_names
    assert {p.relative_to(world.root) for p in world.repo.rglob("*.blob")} <= read_names
    assert Path("host/proc/cpuinfo") in read_names
    assert Path("host/sys/devices/faux/tdx_host/version") in read_names
    checked = 0
    for name in [p.relative_to(world.root) for p in world.inputs()]:
        for label, mutate in MUTATIONS.items():
            shutil.rmtree(world.root)
            shutil.copytree(pristine, world.root, symlinks=True)
            assert full(args)[0] is not None  # the record of the pristine world
            assert again(args)[0] == 0, "the pristine world must replay"
            mutate(world.root / name)
            replayed = again(args)
            shutil.rmtree(world.cache / replay.DIR_NAME)
            fresh = full(args)
            where = f"{name}: {label}"
            if replayed[0] is not None:
                assert replayed == fresh, where
            if label == "group-writable":
                must_miss = name == Path("trusted-keys")  # judged: no longer trusted
            elif label == "removed":
                must_miss = name in read_names
            else:  # the head of an image is read, the rest only through its size
                must_miss = name in read_names and (name.suffix != ".blob" or label != "last byte")
            if must_miss:
                assert replayed[0] is None, f"{where}: a changed input replayed"
            checked += 1
    assert checked == len(MUTATIONS) * len(world.inputs())


def test_the_configuration_file_appearing_is_a_miss(
    world: World,
    full: Callable[[list[str]], Outcome],
    again: Callable[[list[str]], Outcome],
    tmp_path: Path,
) -> None:
    full(world.args())
    (tmp_path / "etc-tdxupdate.conf").write_text("timeout = 600\n")
    assert again(world.args())[0] is None


def test_a_change_to_the_tools_own_files_is_a_miss(
    world: World,
    full: Callable[[list[str]], Outcome],
    again: Callable[[list[str]], Outcome],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    module = tmp_path / "module.py"
    module.write_text("x = 1\n")
    real = replay._code_files
    monkeypatch.setattr(replay, "_code_files", lambda: [*real(), os.fsencode(module)])
    full(world.args())
    assert again(world.args())[0] == 0
    st = module.stat()
    os.utime(module, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert again(world.args())[0] is None


def test_the_tools_own_files_are_in_the_record(world: World, full: Callable[..., Outcome]) -> None:
    full(world.args())
    (record,) = world.records
    assert record.stat().st_mode & 0o777 == 0o600  # root read some of it from 0400 files
    data = record.read_bytes()
    for name in ("replay.py", "cli.py", "policy.py", "data/intel-releases.json"):
        assert os.fsencode(str(Path(replay.__file__).parent / name)) + b"\0" in data, name


def test_every_path_the_listing_reads_is_recorded(
    world: World, full: Callable[[list[str]], Outcome], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every file the full run opens, every directory it lists and every path it stats, seen
    by an audit hook and by wrapping ``os.stat``/``os.lstat``: each one under the test's tree
    is an input the record names (but the cache itself), and none is outside the tree but
    the interpreter's and the tool's own files."""
    seen: set[str] = set()
    watching = [False]

    def hook(event: str, args: tuple[object, ...]) -> None:
        watched = watching[0] and event in ("open", "os.listdir", "os.scandir")
        if watched and args and isinstance(args[0], (str, bytes, os.PathLike)):
            seen.add(os.fsdecode(args[0]))

    sys.addaudithook(hook)
    for name in ("stat", "lstat"):
        real = getattr(os, name)

        def wrapped(path: object, *a: object, _real: Callable[..., object] = real, **k: object):  # type: ignore[no-untyped-def]
            if watching[0] and k.get("dir_fd") is None and not isinstance(path, int):
                seen.add(os.fsdecode(path))  # type: ignore[arg-type]
            return _real(path, *a, **k)

        monkeypatch.setattr(os, name, wrapped)
    ops: list[tuple[bytes, bytes, int]] = []
    real_end = replay.end

    def end(code: int) -> None:
        if replay._tape is not None:
            ops.extend(replay._tape.ops)
        real_end(code)

    monkeypatch.setattr(replay, "end", end)
    watching[0] = True
    try:
        code = full(world.args("--json"))[0]
    finally:
        watching[0] = False
    assert code == 0
    recorded = {os.fsdecode(path) for _op, path, _param in ops}
    tree = str(world.root)
    cache = str(world.cache)

    package = str(Path(replay.__file__).parent)
    tests = str(Path(__file__).parent)  # pytest's own look at the test modules
    allowed_outside = (sys.prefix, sys.base_prefix, package, os.path.dirname(os.__file__), tests)
    unrecorded = []
    for path in sorted(seen):
        absolute = os.path.abspath(path)
        if absolute.startswith(cache) or not os.path.isabs(path):
            continue  # the cache (opened relative to its directory) is output, not input
        # realpath() resolves component by component: its prefixes are covered by it
        if any(r == absolute or r.startswith(absolute + os.sep) for r in recorded):
            continue
        if absolute.startswith(tree + os.sep) or not absolute.startswith(allowed_outside):
            unrecorded.append(absolute)
    assert unrecorded == [], "\n".join(unrecorded)
    assert {os.fsdecode(p) for op, p, _ in ops if op == b"head"} == {
        str(p) for p in world.repo.rglob("*.blob")
    }


# --- what is never recorded ------------------------------------------------------------------


@pytest.mark.parametrize(
    "extra",
    [
        ("-v",),
        ("--metrics-file", "METRICS"),
        ("--mapping", "/nonexistent/mapping_file.json"),  # fails (66): nothing to repeat
    ],
)
def test_runs_that_are_not_plain_listings_leave_no_record(
    world: World, full: Callable[[list[str]], Outcome], tmp_path: Path, extra: tuple[str, ...]
) -> None:
    extra = tuple(str(tmp_path / "m.prom") if e == "METRICS" else e for e in extra)
    full(world.args(*extra))
    assert world.records == []


def test_an_update_is_never_recorded_nor_replayed(
    world: World, full: Callable[[list[str]], Outcome]
) -> None:
    args = world.args()
    args[args.index("--list")] = "--update"
    full([*args, "--dry-run"])
    assert world.records == []
    assert replay.replay([*args, "--dry-run"], hold_signals=False) is None


def test_a_cache_directory_from_the_configuration_file_is_not_recorded(
    world: World, full: Callable[[list[str]], Outcome], tmp_path: Path
) -> None:
    """The replay finds records without reading the configuration file; a run whose cache
    directory comes from it would write records no replay looks for."""
    elsewhere = tmp_path / "configured-cache"
    (tmp_path / "etc-tdxupdate.conf").write_text(f'cache_dir = "{elsewhere}"\n')
    args = [a for a in world.args() if a not in ("--cache-dir", str(world.cache))]
    assert full(args)[0] == 0
    assert not (elsewhere / replay.DIR_NAME).exists()


# --- a record is a cache file: only root's or this user's -----------------------------------


def _recorded(world: World, full: Callable[[list[str]], Outcome]) -> Path:
    full(world.args())
    (record,) = world.records
    return record


@pytest.mark.parametrize(
    "spoil",
    [
        pytest.param(lambda r: r.chmod(0o666), id="record-writable-by-others"),
        pytest.param(lambda r: r.parent.chmod(0o777), id="listings-dir-writable-by-others"),
        pytest.param(lambda r: r.parent.parent.chmod(0o775), id="cache-dir-group-writable"),
        pytest.param(
            lambda r: (r.rename(r.with_suffix(".x")), r.symlink_to(r.with_suffix(".x").name)),
            id="record-is-a-symlink",
        ),
        pytest.param(lambda r: r.write_bytes(r.read_bytes()[:-1]), id="truncated"),
        pytest.param(lambda r: r.write_bytes(r.read_bytes() + b"x"), id="grown"),
        pytest.param(lambda r: r.write_bytes(b"garbage\n"), id="garbage"),
        pytest.param(lambda r: r.write_bytes(b""), id="empty"),
    ],
)
def test_a_record_others_could_have_written_or_a_damaged_one_is_a_miss(
    world: World,
    full: Callable[[list[str]], Outcome],
    again: Callable[[list[str]], Outcome],
    spoil: Callable[[Path], object],
) -> None:
    spoil(_recorded(world, full))
    assert again(world.args()) == (None, "", "")


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")
def test_a_record_owned_by_another_user_is_a_miss(
    world: World, full: Callable[[list[str]], Outcome], again: Callable[[list[str]], Outcome]
) -> None:
    os.chown(_recorded(world, full), 65534, 65534)
    assert again(world.args()) == (None, "", "")


def test_a_record_under_another_key_is_a_miss(
    world: World, full: Callable[[list[str]], Outcome], again: Callable[[list[str]], Outcome]
) -> None:
    """A record of one command line renamed to the name of another's: the key inside it
    decides, not the name."""
    full(world.args("--json"))
    (json_record,) = world.records
    full(world.args())
    (text_record,) = [r for r in world.records if r != json_record]
    json_record.replace(text_record)
    assert again(world.args())[0] is None


def test_at_most_max_records_are_kept(
    world: World, full: Callable[[list[str]], Outcome], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(replay, "MAX_RECORDS", 2)
    full(world.args())
    where = world.cache / replay.DIR_NAME
    stale, fresh = where / ".abc.1.tmp", where / ".def.2.tmp"  # what a killed writer leaves
    stale.write_bytes(b"x")
    fresh.write_bytes(b"x")
    os.utime(stale, (0, 0))
    for n in range(1, 4):
        full(world.args(*(["-q"] * n)))  # four command lines, four keys
    assert len([r for r in world.records if not r.name.startswith(".")]) == 2
    assert not stale.exists()
    assert fresh.exists()  # perhaps another run's, being written


# --- signals ---------------------------------------------------------------------------------


def test_the_replay_holds_the_signals_tdxupdate_handles() -> None:
    assert set(replay._SIGNALS) == set(TERMINATING_SIGNALS)


def test_the_replays_own_copies_of_shared_rules_agree() -> None:
    """Written out so that a replay imports nothing: the exit status of an unwritable output
    is io-error's."""
    assert EXIT_CODES["io-error"] == replay._IO_ERROR


@pytest.fixture
def sigterm_flag() -> Iterator[list[int]]:
    got: list[int] = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: got.append(signum))
    try:
        yield got
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_a_signal_before_anything_is_printed_leaves_it_to_the_full_run(
    world: World,
    full: Callable[[list[str]], Outcome],
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
    sigterm_flag: list[int],
) -> None:
    """SIGTERM while the record is checked: held, the replay gives way (nothing printed),
    and the signal reaches the handlers once the full run calls ``unblock``."""
    full(world.args())
    real_load = replay._load

    def load(*a: object) -> object:
        os.kill(os.getpid(), signal.SIGTERM)
        return real_load(*a)  # type: ignore[arg-type]

    monkeypatch.setattr(replay, "_load", load)
    try:
        assert replay.replay(world.args(), hold_signals=True) is None
        assert capfd.readouterr() == ("", "")
        assert sigterm_flag == []  # held
    finally:
        replay.unblock()
    assert sigterm_flag == [signal.SIGTERM]
    assert signal.SIGTERM not in signal.pthread_sigmask(signal.SIG_BLOCK, [])


def test_without_a_signal_the_mask_is_given_back(
    world: World, full: Callable[[list[str]], Outcome], capfd: pytest.CaptureFixture[str]
) -> None:
    full(world.args())
    before = signal.pthread_sigmask(signal.SIG_BLOCK, [])
    assert replay.replay(world.args(), hold_signals=True) == 0
    replay.unblock()
    assert signal.pthread_sigmask(signal.SIG_BLOCK, []) == before
    world.keys.write_text("")  # a miss: the full run unblocks after installing its handlers
    assert replay.replay(world.args(), hold_signals=True) is None
    assert set(signal.pthread_sigmask(signal.SIG_BLOCK, [])) >= set(TERMINATING_SIGNALS)
    replay.unblock()
    assert signal.pthread_sigmask(signal.SIG_BLOCK, []) == before


# --- the process --------------------------------------------------------------------------


def _command(world: World, *extra: str, **kw: object) -> subprocess.CompletedProcess[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TDXUPDATE_")}
    env.pop("JOURNAL_STREAM", None)
    env["TDXUPDATE_CONFIG"] = os.devnull  # no site configuration file
    done: subprocess.CompletedProcess[bytes] = subprocess.run(
        [sys.executable, "-m", "tdxupdate", *world.args(*extra)],
        env=env,
        timeout=60,
        check=False,
        **kw,  # type: ignore[call-overload]
    )
    return done


def test_the_command_replays_across_processes_and_records_again_after_a_change(
    world: World,
) -> None:
    first = _command(world, "--json", capture_output=True)
    assert first.returncode == 0, first.stderr
    (record,) = world.records
    inode = record.stat().st_ino
    second = _command(world, "--json", capture_output=True)
    assert (second.returncode, second.stdout, second.stderr) == (0, first.stdout, first.stderr)
    assert record.stat().st_ino == inode  # replayed: a full run writes its record anew
    (world.host / "sys/devices/faux/tdx_host/num_remaining_updates").write_text("2\n")
    third = _command(world, "--json", capture_output=True)
    assert third.returncode == 0
    assert third.stdout != first.stdout  # the remaining count is in the document
    assert record.stat().st_ino != inode


@pytest.mark.parametrize("replayed", [False, True], ids=["full", "replay"])
def test_a_closed_stdout_is_quiet_and_keeps_the_exit_status(world: World, replayed: bool) -> None:
    if replayed:
        whole = _command(world, capture_output=True)
        assert whole.returncode == 0
    read, write = os.pipe()
    os.close(read)
    try:
        done = _command(world, stdout=write, stderr=subprocess.PIPE)
    finally:
        os.close(write)
    assert done.returncode == 0
    assert b"Traceback" not in done.stderr
    assert b"lacks update compatibility" in done.stderr
    if not replayed:
        # what a closed stdout did not show is not a listing to repeat
        assert world.records == []
        whole = _command(world, capture_output=True)
    again = _command(world, capture_output=True)
    assert again.stdout == whole.stdout
    assert b"1.5.09" in again.stdout


def test_a_mapping_file_read_from_a_pipe_is_never_read_twice(world: World) -> None:
    """``--mapping /dev/stdin``: a replay must not consume the pipe to compare it (the full
    run would then read nothing); it misses without reading, and the full run reads it."""
    mapping = (world.repo / "mapping_file.json").read_bytes()
    first = _command(world, "--mapping", "/dev/stdin", input=mapping, capture_output=True)
    assert first.returncode == 0, first.stderr
    shorter = mapping.replace(b'"2.0.02"', b'"2.0.03"')  # a release the repository lacks
    second = _command(world, "--mapping", "/dev/stdin", input=shorter, capture_output=True)
    assert second.returncode == 0, second.stderr
    assert b"2.0.03" in second.stdout
    third = _command(world, "--mapping", "/dev/stdin", input=mapping, capture_output=True)
    assert (third.returncode, third.stdout) == (0, first.stdout)
