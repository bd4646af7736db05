"""The child of ``bench/run.py done``: one ``tdxupdate --update`` against a plain-file host
whose "kernel" is a patched ``os.write``.

When the tool writes ``0`` to ``loading`` the stand-in kernel reports ``transferring``; after
``BUSY`` seconds a timer thread installs the new module the way the kernel shows it (the
``version`` attribute and the remaining-updates counter change) and flips ``status`` to
``idle``, and writes the CLOCK_MONOTONIC instant of that flip to ``FLIPPED``. The parent takes
the instant it reaps this process; the difference is kernel done to process exit, every step
after the status watch included (version read-back, history fsync, metrics, interpreter
exit).

    python bench/done_child.py BUSY FLIPPED -- <tdxupdate arguments>
    python bench/done_child.py exit FLIPPED     # the baseline: the flip, then a bare exit
"""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path


def _write_stamp(path: str, when: float | None = None) -> None:
    with open(path, "w") as f:
        f.write(repr(time.monotonic() if when is None else when))


def main() -> int:
    busy_arg, stamp = sys.argv[1], sys.argv[2]
    if busy_arg == "exit":
        _write_stamp(stamp)
        return 0
    args = sys.argv[sys.argv.index("--") + 1 :]
    sysroot = Path(args[args.index("--sysroot") + 1])
    target = args[args.index("--update") + 1]
    tdx = sysroot / "sys/devices/faux/tdx_host"
    upload = tdx / "firmware/tdx_module"
    real_write = os.write

    def finish() -> None:
        (tdx / "version").write_text(target + "\n")
        remaining = int((tdx / "num_remaining_updates").read_text())
        (tdx / "num_remaining_updates").write_text(f"{remaining - 1}\n")
        done = time.monotonic()  # before the flip: the tool may react before this thread runs on
        (upload / "status").write_text("idle\n")
        _write_stamp(stamp, done)

    def fake_write(fd: int, data: bytes | memoryview) -> int:
        n = real_write(fd, data)
        if bytes(data) == b"0" and os.readlink(f"/proc/self/fd/{fd}").endswith("loading"):
            (upload / "status").write_text("transferring\n")
            threading.Timer(float(busy_arg), finish).start()
        return n

    import runpy

    from tdxupdate import fwupload

    # The host tree is plain files: let the upload through as if it were sysfs.
    fwupload.filesystem_type = lambda *a, **k: "sysfs"  # type: ignore[assignment]
    os.write = fake_write  # type: ignore[assignment]

    sys.argv = ["tdxupdate", *args]
    runpy.run_module("tdxupdate", run_name="__main__", alter_sys=True)  # python -m tdxupdate
    return 0  # not reached: tdxupdate/__main__.py raises SystemExit


if __name__ == "__main__":
    sys.exit(main())
