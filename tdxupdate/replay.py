"""A listing whose every input is unchanged is printed again, not recomputed (issue 14).

``--list`` is a function of what it reads: the command line, the environment, the host's
sysfs and /proc files, the configuration and trusted-keys files, the mapping file, the image
heads and the directories it lists, and the tool's own code. A full run records each of those
reads as it happens (:func:`note`: the operation, the path and the *result it used*), and what it
printed. The next run with the same command line, environment and output streams repeats every
read (the same system calls, in the same order) and, only when every result is the same byte for
byte, prints what the full run printed, with its exit code, without importing the rest of the
tool. Anything different is a miss, and the full run computes the listing (and records it again).

This is the verdict store (:mod:`tdxupdate.verdicts`) applied to the whole listing: a verdict
for exact bytes, computed once. The same rules hold:

* Only ``--list`` with a local repository, no metrics file, no ``-v``, no ``--simulate``, an
  exit status 0 and reads that all ended in data or an errno is recorded (the full run decides,
  :func:`accept`); ``--update`` never looks here.
* The records live in ``<cache-dir>/listings/``, reached as :mod:`tdxupdate.safedir` reaches
  every cache file: a directory owned by someone else or writable by group or others is refused,
  a symbolic link inside is never followed, a record not owned by root (or this user) or
  writable by group or others is ignored. A record that is unreadable, malformed or from another
  tool version is a miss, never an error. It is written atomically; at most
  :data:`MAX_RECORDS` are kept.
* A record names its inputs; it is not trusted for their content: every input is read again
  and compared (one BLAKE2b digest over every result, in order). The tool's own files (every module
  the full run imported outside the standard library, and the package's data) are compared by
  size, modification time and inode, so an upgrade or an edit is a miss.

This module imports only what the interpreter has already loaded and two of its built-in
modules: the replay costs the reads and one hash, not the tool's start-up.
"""

from __future__ import annotations

# The C halves of signal and hashlib: the Python modules build enums (signal) or load OpenSSL
# (hashlib, 3 ms and 3 MiB) before the replay could start.
import _signal as signal
import os
import stat
import sys

from tdxupdate import __version__

try:  # BLAKE2b is built into the interpreter: hashlib would load OpenSSL (3 ms, 3 MiB)
    from _blake2 import blake2b as _hash
except ImportError:  # pragma: no cover - an interpreter built without it
    from hashlib import blake2b as _hash

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (mypy knows the name)
if TYPE_CHECKING:  # annotations only: typing and collections.abc cost a start-up
    from collections.abc import Callable, Iterable, Sequence
    from typing import Any, TextIO

__all__ = ["MAX_RECORDS", "accept", "begin", "note", "poison", "replay", "unblock"]

DIR_NAME = "listings"
#: records kept in the directory; the oldest beyond this are removed when one is written
MAX_RECORDS = 16
#: a record larger than this (its printed output, mostly) is neither written nor read
MAX_RECORD = 64 << 20
_MAGIC = b"tdxupdate-listing-record 1\n"
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK
#: the signals tdxupdate handles (errors.TERMINATING_SIGNALS, a test checks; not imported: light)
_SIGNALS = tuple(
    getattr(signal, name)
    for name in ("SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2", "SIGALRM")
    if hasattr(signal, name)
)
#: environment variables that differ between two shells and that neither tdxupdate, click nor
#: Python reads: left out of the key so that they do not turn every run into a miss
_VOLATILE = frozenset(
    {"_", "OLDPWD", "PWD", "SHLVL", "SSH_CLIENT", "SSH_CONNECTION", "SSH_TTY",
     "XDG_SESSION_ID", "TERM_SESSION_ID", "WINDOWID", "INVOCATION_ID"}
)  # fmt: skip
_CHUNK = 65536

Part = bytes | int
#: the exit status of a run whose output could not be written (errors.EXIT_CODES["io-error"])
_IO_ERROR = 74


# --- the reads: one implementation per operation, shared by the record and the replay -------


def _frame(h: Any, op: bytes, path: bytes, param: int, parts: Sequence[Part]) -> None:
    h.update(b"%s\0%s\0%d\0" % (op, path, param))
    for part in parts:
        if type(part) is int:
            h.update(b"i%d\0" % part)
        else:
            assert isinstance(part, bytes)
            h.update(b"b%d\0" % len(part))
            h.update(part)


def _errno(exc: OSError) -> tuple[Part, ...]:
    return (b"E", exc.errno or -1)


def _loop_read(fd: int, limit: int) -> bytes:
    chunks: list[bytes] = []
    total = 0
    while total < limit:
        chunk = os.read(fd, min(_CHUNK, limit - total))
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
    return b"".join(chunks)


def _open(path: bytes, flags: int) -> int | None:
    """``path`` opened for a second read, or None when that read could change or wait for what
    it reads: only a regular file (or /dev/null) is read again, never a pipe, a FIFO or a
    terminal (O_NONBLOCK: opening a FIFO does not wait for a writer). A full run that read one
    then always misses, and the full run reads it itself, unconsumed."""
    fd = os.open(path, flags | os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    if stat.S_ISREG(os.fstat(fd).st_mode) or path == os.fsencode(os.devnull):
        return fd
    os.close(fd)
    return None


def _reread(path: bytes, flags: int, body: Callable[[int], tuple[Part, ...]]) -> tuple[Part, ...]:
    """``body`` of ``path`` opened by :func:`_open`; ``X`` for a file not read again, the errno
    of a failed open or read."""
    try:
        fd = _open(path, flags)
        if fd is None:
            return (b"X",)
        try:
            return body(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        return _errno(exc)


def _op_read(path: bytes, limit: int) -> tuple[Part, ...]:
    """:meth:`Sysroot.read`: until EOF or ``limit`` bytes."""
    return _reread(path, 0, lambda fd: (b"D", _loop_read(fd, limit)))


def _op_read1(path: bytes, limit: int) -> tuple[Part, ...]:
    """:meth:`Sysroot.read_once`: one ``read()``."""
    return _reread(path, 0, lambda fd: (b"D", os.read(fd, limit)))


def stat_parts(st: os.stat_result) -> tuple[Part, ...]:
    """What a decision may take from a file's status."""
    return (b"S", st.st_mode, st.st_uid, st.st_gid, st.st_size)


def _op_stat(path: bytes, _param: int) -> tuple[Part, ...]:
    try:
        return stat_parts(os.stat(path))
    except OSError as exc:
        return _errno(exc)


def _op_lexists(path: bytes, _param: int) -> tuple[Part, ...]:
    return (int(os.path.lexists(path)),)


def _op_exists(path: bytes, _param: int) -> tuple[Part, ...]:
    return (int(os.path.exists(path)),)


def _op_isdir(path: bytes, _param: int) -> tuple[Part, ...]:
    return (int(os.path.isdir(path)),)


def names_parts(names: Iterable[str | bytes]) -> tuple[Part, ...]:
    return (b"L", b"\0".join(sorted(os.fsencode(n) for n in names)))


def _op_listdir(path: bytes, _param: int) -> tuple[Part, ...]:
    try:
        return names_parts(os.listdir(path))
    except OSError as exc:
        return _errno(exc)


def _op_subdirs(path: bytes, _param: int) -> tuple[Part, ...]:
    """:meth:`LocalRepository.images`: the entries of ``path`` that are directories."""
    try:
        with os.scandir(path) as entries:
            return names_parts(e.name for e in entries if e.is_dir())
    except OSError as exc:
        return _errno(exc)


def _op_realpath(path: bytes, _param: int) -> tuple[Part, ...]:
    return (os.path.realpath(path),)


def _op_capped(path: bytes, limit: int) -> tuple[Part, ...]:
    """:func:`tdxupdate.trustedfile.read_capped`: up to one byte more than ``limit``, with the
    owner and mode its caller judges."""
    return _reread(
        path, os.O_NOCTTY, lambda fd: (*stat_parts(os.fstat(fd)), _loop_read(fd, limit + 1))
    )


def _op_head(path: bytes, limit: int) -> tuple[Part, ...]:
    """:func:`tdxupdate.sources.local.read_head` (which reads nothing of a non-regular file)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                return (b"N",)
            return (b"D", st.st_size, _loop_read(fd, limit))
        finally:
            os.close(fd)
    except OSError as exc:
        return _errno(exc)


def _op_whole(path: bytes, limit: int) -> tuple[Part, ...]:
    """:func:`tdxupdate.sources.local.load_catalog`: until EOF, at most one chunk past
    ``limit``."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
        try:
            st = os.fstat(fd)
            if stat.S_ISDIR(st.st_mode):
                return (b"I",)
            if not stat.S_ISREG(st.st_mode) and path != os.fsencode(os.devnull):
                return (b"X",)
            return (b"D", _loop_read(fd, limit + 1))
        finally:
            os.close(fd)
    except OSError as exc:
        return _errno(exc)


def _op_clickpath(path: bytes, _param: int) -> tuple[Part, ...]:
    """What ``click.Path`` judges an option's path by: its type and whether it is readable
    (:class:`tdxupdate.cli_options.CheckedPath`)."""
    try:
        st = os.stat(path)
    except OSError as exc:
        return _errno(exc)
    return (b"C", stat.S_IFMT(st.st_mode), int(os.access(path, os.R_OK)))


def note_clickpath(path: str | os.PathLike[str]) -> None:
    if _tape is not None:
        raw = os.fsencode(path)
        note(b"clickpath", raw, 0, *_op_clickpath(raw, 0))


_OPS = {
    b"read": _op_read,
    b"read1": _op_read1,
    b"stat": _op_stat,
    b"lexists": _op_lexists,
    b"exists": _op_exists,
    b"isdir": _op_isdir,
    b"listdir": _op_listdir,
    b"subdirs": _op_subdirs,
    b"realpath": _op_realpath,
    b"capped": _op_capped,
    b"head": _op_head,
    b"whole": _op_whole,
    b"clickpath": _op_clickpath,
}


# --- recording (the full run) ----------------------------------------------------------------


class _Tee:
    """sys.stdout or sys.stderr during a recorded run: writes go through and are kept.

    Anything but the attributes writing needs (``buffer``, say) means output could bypass the
    copy: the run is then not recorded."""

    def __init__(self, stream: TextIO, fd: int, tape: _Tape) -> None:
        self._stream = stream
        self._fd = fd
        self._tape = tape

    def write(self, text: str) -> int:
        if type(text) is not str:
            n = self._stream.write(text)  # click probes with b"": a text stream refuses it
            self._tape.poison("a non-text write")
            return n
        try:
            n = self._stream.write(text)
        except BaseException:  # stdout closed, full, gone: what was shown is not all there is
            self._tape.poison("a write failed")
            raise
        self._tape.out.append((self._fd, text))
        return n

    def flush(self) -> None:
        try:
            self._stream.flush()
        except BaseException:
            self._tape.poison("a flush failed")
            raise

    def isatty(self) -> bool:
        return self._stream.isatty()

    def fileno(self) -> int:
        return self._stream.fileno()

    @property
    def encoding(self) -> str:
        return self._stream.encoding

    @property
    def errors(self) -> str | None:
        return self._stream.errors

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._stream, name)  # one the stream lacks (click asks for "color")
        self._tape.poison(f"output stream attribute {name}")
        return value


class _Tape:
    def __init__(self, key: bytes, cache_dir: str) -> None:
        self.key = key
        self.cache_dir = cache_dir
        self.ops: list[tuple[bytes, bytes, int]] = []
        self.digest = _hash()
        self.out: list[tuple[int, str]] = []
        #: the full run said it may be recorded (:func:`accept`)
        self.accepted = False
        #: why it may not be after all, whatever it said
        self.why_not: str | None = None
        self.streams: tuple[Any, Any] = (sys.stdout, sys.stderr)

    def poison(self, why: str) -> None:
        self.why_not = why


_tape: _Tape | None = None


def note(op: bytes, path: str | bytes | os.PathLike[str], param: int, *parts: Part) -> None:
    """A read the listing made, with the result it used (the parts :data:`_OPS` returns)."""
    tape = _tape
    if tape is None:
        return
    raw = os.fsencode(path)
    tape.ops.append((op, raw, param))
    _frame(tape.digest, op, raw, param, parts)


def note_error(op: bytes, path: str | bytes | os.PathLike[str], param: int, exc: OSError) -> None:
    note(op, path, param, *_errno(exc))


def poison(why: str) -> None:
    """Something this run read or decided cannot be repeated by a replay: do not record it."""
    if _tape is not None:
        _tape.poison(why)


def recording() -> bool:
    return _tape is not None


def begin(args: Sequence[str]) -> bool:
    """Start recording a process's run (the entry point calls this once, before the tool's
    modules are imported); False when ``args`` cannot be replayed."""
    global _tape
    found = _where(args)
    if found is None:
        return False
    key, cache_dir = found
    tape = _Tape(key, cache_dir)
    out, err = tape.streams
    sys.stdout = _Tee(out, 1, tape)
    sys.stderr = _Tee(err, 2, tape)
    _tape = tape
    return True


def accept(cache_dir: os.PathLike[str] | str | None, *, eligible: bool) -> None:
    """The full run's word: this run is a listing a replay can repeat (``eligible``) and its
    cache directory is ``cache_dir`` (None: the default)."""
    tape = _tape
    if tape is None:
        return
    if not eligible:
        tape.poison("not a plain local listing")
    elif os.path.abspath(os.fspath(cache_dir or default_cache_dir())) != tape.cache_dir:
        tape.poison("the cache directory comes from the configuration file")
    else:
        tape.accepted = True


def end(code: int) -> None:
    """Stop recording; keep the record when the run was eligible and ``code`` is 0. Never
    raises: a record that cannot be written changes nothing."""
    global _tape
    tape, _tape = _tape, None
    if tape is None:
        return
    sys.stdout, sys.stderr = tape.streams
    if code != 0 or not tape.accepted or tape.why_not is not None:
        return
    try:
        _write(tape, code)
    except Exception:  # a cache: the run's outcome is printed already
        return


def _code_files() -> list[bytes]:
    """The tool's own files: the package (code and data) and every module imported from
    outside the standard library (site-packages and dist-packages count as outside, wherever
    they lie)."""
    stdlib = os.path.dirname(os.__file__) + os.sep
    installed = (f"{os.sep}site-packages{os.sep}", f"{os.sep}dist-packages{os.sep}")
    found: set[str] = set()
    package = os.path.dirname(os.path.abspath(__file__))
    for top, dirs, files in os.walk(package):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        found.update(os.path.join(top, f) for f in files)
    for module in list(sys.modules.values()):
        path = getattr(module, "__file__", None)
        if not isinstance(path, str):
            continue
        if not path.startswith(stdlib) or any(part in path for part in installed):
            found.add(os.path.abspath(path))
    return sorted(os.fsencode(p) for p in found)


def _file_id(path: bytes) -> bytes:
    try:
        st = os.stat(path)
    except OSError as exc:
        return b"E%d" % (exc.errno or -1)
    return b"%d:%d:%d:%d" % (st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev)


def _write(tape: _Tape, code: int) -> None:
    from pathlib import Path

    from tdxupdate.safedir import open_dir

    out, err = tape.streams
    encoded: list[tuple[int, bytes]] = []
    for fd, text in tape.out:
        stream = out if fd == 1 else err
        encoded.append((fd, text.encode(stream.encoding, stream.errors or "strict")))
    files = _code_files()
    fields: list[bytes] = [
        tape.key,
        tape.digest.hexdigest().encode(),
        b"%d" % code,
        b"%d" % len(tape.ops),
    ]
    for op, path, param in tape.ops:
        fields += (op, b"%d" % param, path)
    fields.append(b"%d" % len(files))
    for path in files:
        fields += (path, _file_id(path))
    fields.append(b"%d" % len(encoded))
    for fd, data in encoded:
        fields += (b"%d" % fd, b"%d" % len(data))
    header = b"\0".join(fields)
    body = b"".join(data for _fd, data in encoded)
    record = b"%s%d\n%s%s" % (_MAGIC, len(header), header, body)
    if len(record) > MAX_RECORD:
        return
    with open_dir(Path(tape.cache_dir), "cache directory") as top, top.subdir(DIR_NAME) as sub:
        _store(sub, tape.key.decode()[:32], record)
        _prune(sub)


def _store(directory: Any, name: str, record: bytes) -> None:
    """``record`` as ``name``, atomically (a temporary file renamed over it) and without
    fsync: after a crash a lost or torn record is a miss, and a listing must not wait for the
    disk."""
    # not SafeDir.mkstemp: its secrets module loads OpenSSL, a few ms of every full listing
    tmp = f".{name}.{os.getpid()}.{os.urandom(6).hex()}"
    fd = directory.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(record)  # 0600: it holds what root read, some of it root's only to read
        directory.replace(tmp, name)
    except BaseException:
        with _quiet():
            directory.unlink(tmp)
        raise


def _prune(directory: Any) -> None:
    """Keep the newest :data:`MAX_RECORDS` records; remove temporary files a killed writer
    left (older than an hour)."""
    import time

    ages = []
    for name in directory.names():
        try:
            age = directory.lstat(name).st_mtime_ns
        except OSError:
            continue
        if len(name) == 32 and all(c in "0123456789abcdef" for c in name):
            ages.append((age, name))
        elif name.startswith(".") and age < time.time_ns() - 3600 * 10**9:
            with _quiet():
                directory.unlink(name)
    for _age, name in sorted(ages)[:-MAX_RECORDS]:
        with _quiet():
            directory.unlink(name)


def _quiet() -> Any:
    import contextlib

    return contextlib.suppress(OSError)


# --- where a record would be -----------------------------------------------------------------


def default_cache_dir() -> str:
    """``/var/cache/tdxupdate`` for root, ``$XDG_CACHE_HOME/tdxupdate`` otherwise (the rule
    :func:`tdxupdate.settings.default_cache_dir` gives as a Path), without importing pathlib."""
    if os.geteuid() == 0:
        return "/var/cache/tdxupdate"
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "tdxupdate")


def _where(args: Sequence[str]) -> tuple[bytes, str] | None:
    """The key of this run and the cache directory its record would be in, or None when a run
    with these arguments and this environment is never recorded."""
    if "--list" not in args or os.environ.get("JOURNAL_STREAM"):
        return None
    cache_dir: str | None = None
    for i, arg in enumerate(args):
        if arg == "--":
            break
        if arg == "--cache-dir" and i + 1 < len(args):
            cache_dir = args[i + 1]
        elif arg.startswith("--cache-dir="):
            cache_dir = arg.partition("=")[2]
    try:
        cache_dir = os.path.abspath(cache_dir or default_cache_dir())
        cwd = os.getcwd()
        streams = []
        for fd, stream in ((1, sys.stdout), (2, sys.stderr)):
            streams.append(
                b"%d:%d:%s:%s"
                % (
                    fd,
                    os.isatty(fd),
                    os.fsencode(getattr(stream, "encoding", None) or "-"),
                    os.fsencode(getattr(stream, "errors", None) or "-"),
                )
            )
    except (OSError, RuntimeError, KeyError, ValueError):
        return None
    h = _hash(_MAGIC)
    for item in (
        __version__,
        sys.version,
        sys.executable,
        repr(sys.flags),
        repr(sys.warnoptions),
        repr(sorted(getattr(sys, "_xoptions", {}).items())),
        cwd,
        f"{os.geteuid()}:{os.getegid()}:{sorted(os.getgroups())}",
    ):
        h.update(os.fsencode(item) + b"\0")
    h.update(b"\0".join(os.fsencode(a) for a in args) + b"\0\0")
    for name in sorted(os.environ):
        if name not in _VOLATILE:
            h.update(os.fsencode(name) + b"=" + os.fsencode(os.environ[name]) + b"\0")
    h.update(b"\0".join(streams))
    return h.hexdigest().encode(), cache_dir


# --- the replay --------------------------------------------------------------------------------


_blocked: set[int] | None = None


def unblock() -> None:
    """Deliver what the replay held back: the full run calls this once its handlers are in."""
    global _blocked
    if _blocked is not None:
        previous, _blocked = _blocked, None
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def replay(args: Sequence[str], *, hold_signals: bool = True) -> int | None:
    """Print the recorded output of this exact listing and return its exit status, or None (a
    miss: the full run follows). With ``hold_signals`` (the process's entry point) the
    signals tdxupdate handles are held from here: until the output is written on a hit, and on
    a miss until :func:`unblock` (the full run's handlers then take them)."""
    global _blocked
    found = _where(args)
    if found is None:
        return None
    if hold_signals:
        _blocked = signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
    try:
        record = _load(*found)
    except Exception:
        return None
    if record is None:
        return None
    if hold_signals and set(signal.sigpending()) & set(_SIGNALS):
        return None  # asked to stop before anything was printed: the full run says so
    code, chunks, fd = record
    try:
        _print(chunks, fd)
    except OSError as exc:  # stdout refused the output (ENOSPC, EIO): as the full run says it
        try:
            why = os.fsencode(exc.strerror or str(exc))
            _write_all(2, b"tdxupdate: error: cannot write the listing: %s\n" % why)
        except OSError:
            pass
        return _IO_ERROR
    finally:
        os.close(fd)
    return code


def _load(key: bytes, cache_dir: str) -> tuple[int, list[tuple[int, int]], int] | None:
    """The record of ``key`` when every input it names reads as it did: its exit status, its
    output chunks and the open record positioned at the output; None otherwise."""
    from tdxupdate.trustedfile import unsafe_dir

    top = os.open(cache_dir, _DIR_FLAGS)
    try:
        if unsafe_dir(os.fstat(top)) is not None:
            return None
        sub = os.open(DIR_NAME, _DIR_FLAGS | os.O_NOFOLLOW, dir_fd=top)
    finally:
        os.close(top)
    try:
        if unsafe_dir(os.fstat(sub)) is not None:
            return None
        fd = os.open(key.decode()[:32], _FILE_FLAGS, dir_fd=sub)
    finally:
        os.close(sub)
    try:
        found = _check(fd, key)
    except BaseException:
        os.close(fd)
        raise
    if found is None:
        os.close(fd)
    return found


def _check(fd: int, key: bytes) -> tuple[int, list[tuple[int, int]], int] | None:
    from tdxupdate.trustedfile import unsafe

    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or unsafe(st) is not None or st.st_size > MAX_RECORD:
        return None
    head = os.pread(fd, len(_MAGIC) + 24, 0)
    if not head.startswith(_MAGIC):
        return None
    size_line, newline, _ = head[len(_MAGIC) :].partition(b"\n")
    if not newline or not size_line.isdigit():
        return None
    start = len(_MAGIC) + len(size_line) + 1
    header = os.pread(fd, int(size_line), start)
    if len(header) != int(size_line):
        return None
    fields = header.split(b"\0")
    if fields[0] != key:
        return None
    pos = 4
    digest = _hash()
    for _ in range(int(fields[3])):
        op, param, path = fields[pos], int(fields[pos + 1]), fields[pos + 2]
        pos += 3
        _frame(digest, op, path, param, _OPS[op](path, param))
    if digest.hexdigest().encode() != fields[1]:
        return None
    for _ in range(int(fields[pos])):
        path, ident = fields[pos + 1], fields[pos + 2]
        pos += 2
        if _file_id(path) != ident:
            return None
    pos += 1
    chunks = []
    total = 0
    for _ in range(int(fields[pos])):
        chunk = (int(fields[pos + 1]), int(fields[pos + 2]))
        pos += 2
        if chunk[0] not in (1, 2):
            return None
        chunks.append(chunk)
        total += chunk[1]
    if pos + 1 != len(fields) or start + len(header) + total != st.st_size:
        return None
    os.lseek(fd, start + len(header), os.SEEK_SET)
    return int(fields[2]), chunks, fd


def _print(chunks: list[tuple[int, int]], source: int) -> None:
    """Copy the recorded output to stdout and stderr in the order it was written. A closed
    stdout is not an error (the full run's ``_echo`` does the same): the rest of it goes
    nowhere."""
    stdout_open = True
    for fd, size in chunks:
        left = size
        while left:
            data = os.read(source, min(left, 1 << 20))
            if not data:
                raise OSError("the record was truncated")
            left -= len(data)
            if fd == 1 and not stdout_open:
                continue
            try:
                _write_all(fd, data)
            except BrokenPipeError:
                if fd == 1:
                    stdout_open = False
                    devnull = os.open(os.devnull, os.O_WRONLY)
                    os.dup2(devnull, 1)
                    os.close(devnull)
            except OSError:
                if fd == 1:
                    raise


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
