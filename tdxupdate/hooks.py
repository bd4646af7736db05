"""``pre_update`` / ``post_update``: the generic fence for orchestrators without the libvirt hook.

OpenStack, Kubernetes or plain QEMU keep TD launches away from an update with two commands of
their own (issue 10 §1): ``pre_update`` runs after every check and before the first write, and a
failure (non-zero exit, a timeout, a command that cannot be started) stops the update with
``pre-update-failed`` (exit 75, nothing written); ``post_update`` runs after the attempt, whatever
its outcome, as soon as a ``pre_update`` succeeded or when it is the only command configured.

Each command is a shell command line (``/bin/sh -c``, as cron and systemd's ``ExecStart=`` users
expect), run in its own process group with the tool's environment plus ``TDXUPDATE_PHASE``
(``pre-update`` / ``post-update``), ``TDXUPDATE_FROM``, ``TDXUPDATE_TO``, ``TDXUPDATE_SYSROOT``
and, after the attempt, ``TDXUPDATE_RESULT``. It gets ``hook_timeout`` seconds; then its process
group gets SIGTERM and, two seconds later, SIGKILL. Its exit status and the last 4 KiB of its
output (standard output and error, made printable) go into the JSON document and the history.
A signal that interrupts the tool while a command runs ends that command's process group too.

Commands come from the command line or from the configuration file, which is only read when
root or the running user owns it and nobody else can write it (tdxupdate.trustedfile).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tdxupdate import log as _log
from tdxupdate import signals as _signals

#: How much of a command's output is kept (its tail: the error is usually at the end).
OUTPUT_KEPT = 4096
#: How much is read at all; the rest is drained and dropped, so a chatty command cannot
#: fill memory.
_OUTPUT_READ = 64 * 1024
_KILL_GRACE = 2.0


@dataclass(frozen=True)
class HookResult:
    phase: str
    command: str
    #: the exit status; None when it did not exit by itself (timeout) or could not start
    exit_code: int | None
    output: str
    duration_s: float
    timed_out: bool = False
    #: why it could not start (no shell, ...), else None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.exit_code == 0

    def describe(self) -> str:
        if self.error is not None:
            how = f"could not be started ({self.error})"
        elif self.timed_out:
            how = f"did not finish within {self.duration_s:.0f} s and was killed"
        elif self.exit_code is not None and self.exit_code < 0:
            how = f"was killed by {signal.Signals(-self.exit_code).name}"
        else:
            how = f"exited {self.exit_code}"
        last = self.output.strip().splitlines()[-1:] if self.output.strip() else []
        said = f": {_log.remote_text(last[0])}" if last else ""
        return f"{self.phase} command {_log.remote_text(self.command)!r} {how}{said}"

    def to_json(self) -> dict[str, Any]:
        return {
            "command": self.command,
            "exit_code": self.exit_code,
            "timed_out": self.timed_out,
            "duration_s": round(self.duration_s, 3),
            "output": self.output,
            "error": self.error,
        }


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    for sig, wait in ((signal.SIGTERM, _KILL_GRACE), (signal.SIGKILL, None)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def run(phase: str, command: str, timeout: float, env: Mapping[str, str]) -> HookResult:
    """Run one hook command to completion (or to ``timeout``) and describe what it did."""
    started = time.monotonic()
    full_env = {**os.environ, **env, "TDXUPDATE_PHASE": phase}
    tail = bytearray()
    proc: subprocess.Popen[bytes] | None = None
    reader: threading.Thread | None = None
    timed_out = False

    def drain(fd: int) -> None:
        # Keep only the tail: a chatty command costs at most _OUTPUT_READ bytes of memory.
        with contextlib.suppress(OSError):
            while chunk := os.read(fd, 65536):
                tail.extend(chunk)
                del tail[:-_OUTPUT_READ]

    try:
        # A signal between the fork and the ``finally`` below would leave the command running
        # with nobody to end it: it is held until the process is known, then raised here.
        with _signals.critical():
            try:
                proc = subprocess.Popen(
                    ["/bin/sh", "-c", command],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    env=full_env,
                    start_new_session=True,  # its own process group: a timeout ends all of it
                    close_fds=True,
                )
            except OSError as exc:
                return HookResult(phase, command, None, "", 0.0, error=exc.strerror or str(exc))
            assert proc.stdout is not None
            reader = threading.Thread(
                target=drain,
                args=(proc.stdout.fileno(),),
                name=f"tdxupdate-{phase}-output",
                daemon=True,
            )
            reader.start()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            _kill_group(proc)
    finally:
        if proc is not None:
            if proc.poll() is None:  # interrupted by a signal: take the command down too
                _kill_group(proc)
            # the group is gone; a daemon it left holding the pipe must not hold the tool
            if reader is not None:
                reader.join(timeout=_KILL_GRACE)
            with contextlib.suppress(OSError):
                assert proc.stdout is not None
                proc.stdout.close()
    text = bytes(tail).decode("utf-8", "replace")[-OUTPUT_KEPT:]
    return HookResult(
        phase,
        command,
        None if timed_out else proc.returncode,
        text,
        time.monotonic() - started,
        timed_out=timed_out,
    )
