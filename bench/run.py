"""Benchmarks: speed and memory, each reported as a ratio against a baseline measured in the
same run (never as absolute thresholds, and never inside the test suite).

    python bench/run.py            # all
    python bench/run.py verify     # one

* ``verify``   — full verification of a 2,039,808-byte image (the largest the kernel takes)
  against the floor of any verifier: one SHA-384 pass over the same bytes.
* ``convert``  — A→B conversion of that image against a plain ``bytes`` copy of it.
* ``list``     — ``--list`` over a 20-image repository: bytes read from disk against the bytes
  in the repository (the listing must read only the heads), and wall time against one
  ``python -c pass`` start-up.
* ``watch``    — CPU time the uploader spends watching ``status`` during a 2 s kernel-side
  update, against the wall time it waited (the poll schedule must cost next to nothing).
* ``memory``   — peak RSS growth while verifying and converting one maximal image, against the
  image size.
* ``listing``  — issue 14: cold ``--list`` (text and ``--json``) on a 20-release repository
  against ``bench/intel_list.py``, the stand-in for Intel's script (it parses the same mapping
  file and reads the same image heads, and verifies nothing), paired and interleaved: with
  every input unchanged since the last run (the usual run: replayed from its record,
  tdxupdate.replay), with an input changed (every head and the mapping judged again, the
  verdicts kept), and the first run (nothing kept).
* ``scale``    — the same at 500, 1,000 and 2,000 releases, replayed and judged from verdicts:
  the ratio, and the cost per release of each (the slope between the sizes; linear means a
  constant slope).
* ``rss``      — peak RSS of the whole process: ``--list`` at 20 and 2,000 releases, and
  ``--verify`` of a 3-page and of a 496-page image (flat means a ratio near 1).
* ``done``     — kernel done to ``upload()`` returning: the status watch's reaction after the
  (plain-file) kernel flips ``status`` to idle, over 40 updates at varied durations; then kernel
  done to process exit of a whole ``python -m tdxupdate --update`` (``bench/done_child.py``),
  against a bare process exit measured the same way.
* ``mapping``  — peak Python allocation (tracemalloc) while loading the costliest mapping files
  the loader's bounds let through, each at the 1 MiB cap (``tests/fuzz/shapes.py``), per byte
  read, against the same figure for Intel's own file; and the same hostile shape with the
  structural bounds switched off (what the size cap alone allowed), at a quarter of the cap.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

from factories.images import make_image, test_key, write_repo  # noqa: E402

from tdxupdate import imagebuild, imagecheck, uploader  # noqa: E402
from tdxupdate.image import FORMAT_A, FORMAT_B  # noqa: E402

MAX_MODULE_PAGES = 496


def best_of(fn: Callable[[], object], repeat: int = 5) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def big_image(fmt: int = FORMAT_B) -> bytes:
    return make_image("1.5.24", fmt=fmt, module_pages=MAX_MODULE_PAGES)


def bench_verify() -> None:
    data = big_image()
    trusted = {test_key().fingerprint}
    t_verify = best_of(lambda: imagecheck.verify(data, trusted_signers=trusted))
    t_sha = best_of(lambda: hashlib.sha384(data).digest())
    print(
        f"verify: {len(data)} bytes in {t_verify * 1e3:.1f} ms; "
        f"{t_verify / t_sha:.2f}x one SHA-384 pass ({t_sha * 1e3:.1f} ms)"
    )


def bench_convert() -> None:
    data = big_image(FORMAT_A)
    t_conv = best_of(lambda: imagebuild.convert(data, FORMAT_B))
    t_copy = best_of(lambda: bytearray(data))
    print(
        f"convert A->B: {t_conv * 1e3:.1f} ms; {t_conv / t_copy:.1f}x a plain copy "
        f"({t_copy * 1e3:.2f} ms; the checksum pass dominates)"
    )


def bench_list() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        versions = [f"1.5.{u:02d}" for u in range(6, 26)]
        repo = write_repo(
            Path(tmp) / "repo", {v: make_image(v, module_pages=200) for v in versions}
        )
        host = Path(tmp) / "host"
        from factories.hosts import build_host_tree

        build_host_tree(host)
        keys = Path(tmp) / "keys"
        keys.write_text(test_key().fingerprint + "\n")
        total = sum(p.stat().st_size for p in repo.rglob("*.blob"))
        cmd = [
            sys.executable,
            "-m",
            "tdxupdate",
            "--list",
            "--json",
            "--sysroot",
            str(host),
            "--repo",
            str(repo),
            "--trusted-keys",
            str(keys),
        ]
        t_list = best_of(lambda: subprocess.run(cmd, check=True, capture_output=True), 3)
        t_py = best_of(lambda: subprocess.run([sys.executable, "-c", "pass"], check=True), 3)
        # Bytes read, from the kernel's own accounting of the child's reads; the same run
        # with the images removed is the baseline (Python, the modules, the mapping file).
        with_images = _child_read_bytes(cmd)
        for blob in repo.rglob("*.blob"):
            blob.unlink()
        without = _child_read_bytes(cmd)
        read = with_images - without
        print(
            f"list: 20 images, {total} bytes in the repository, {read} bytes of them read "
            f"({read / total:.4f}x the repository, {read / 20:.0f} per image); wall "
            f"{t_list * 1e3:.0f} ms = {t_list / t_py:.1f}x a bare Python start-up "
            f"({t_py * 1e3:.0f} ms)"
        )


def _child_read_bytes(cmd: list[str]) -> int:
    """rchar of a child: bytes it read through read(2) (from /proc/<pid>/io before it exits)."""
    code = (
        "import runpy, sys, atexit\n"
        "def report():\n"
        "    for line in open('/proc/self/io'):\n"
        "        if line.startswith('rchar'):\n"
        "            sys.stderr.write('RCHAR ' + line.split()[1] + '\\n')\n"
        "atexit.register(report)\n"
        "from tdxupdate.cli import main\n"
        "rc = main(sys.argv[1:])\n"
    )
    out = subprocess.run([sys.executable, "-c", code, *cmd[3:]], capture_output=True, text=True)
    for line in out.stderr.splitlines():
        if line.startswith("RCHAR "):
            return int(line.split()[1])
    raise RuntimeError(out.stderr)


def bench_watch() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        for name, content in {
            "loading": "0\n",
            "status": "idle\n",
            "error": "",
            "remaining_size": "0\n",
            "data": "",
        }.items():
            (d / name).write_text(content)
        busy_for = 2.0

        # A plain-file stand-in: after loading=0 the "kernel" is busy for busy_for seconds.
        real_write = os.write

        def fake_write(fd: int, data: bytes | memoryview) -> int:  # type: ignore[override]
            n = real_write(fd, data)
            if bytes(data) == b"0" and os.readlink(f"/proc/self/fd/{fd}").endswith("loading"):
                (d / "status").write_text("transferring\n")
                threading.Timer(busy_for, lambda: (d / "status").write_text("idle\n")).start()
            return n

        os.write = fake_write  # type: ignore[assignment]
        try:
            cpu0 = time.process_time()
            t0 = time.perf_counter()
            uploader.upload(d, b"x" * 8192, timeout=30)
            wall = time.perf_counter() - t0
            cpu = time.process_time() - cpu0
        finally:
            os.write = real_write  # type: ignore[assignment]
        print(
            f"watch: {wall:.2f} s waited for the kernel, {cpu * 1e3:.1f} ms CPU "
            f"({cpu / wall * 100:.2f}% of one core)"
        )


def bench_memory() -> None:
    import tracemalloc

    data = big_image(FORMAT_A)
    tracemalloc.start()
    v = imagecheck.verify(data, trusted_signers={test_key().fingerprint})
    out = imagebuild.convert(data, FORMAT_B)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert v.ok
    assert len(out) > 0
    print(
        f"memory: peak Python allocation {peak / 1e6:.2f} MB verifying and converting a "
        f"{len(data) / 1e6:.2f} MB image ({peak / len(data):.2f}x the image; the converted "
        "copy itself is 1x)"
    )


def _mapping_peak(data: bytes) -> tuple[int, float]:
    import tracemalloc

    from tdxupdate.catalog import parse_catalog
    from tdxupdate.errors import DataError

    tracemalloc.start()
    t0 = time.perf_counter()
    with contextlib.suppress(DataError):
        parse_catalog(data, "bench.json")
    elapsed = time.perf_counter() - t0
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak, elapsed


def bench_mapping() -> None:
    from fuzz.shapes import WORST_CASES, worst_case

    from tdxupdate import catalog

    real = (ROOT / "mapping_samples" / "mapping_file.json").read_bytes()
    _mapping_peak(real)  # jsonschema's import and the compiled schema are paid once, not per file
    base, _ = _mapping_peak(real)
    print(f"mapping: Intel's file, {len(real)} bytes: peak {base / len(real):.1f} bytes per byte")
    for name in WORST_CASES:
        data = worst_case(name)
        peak, elapsed = _mapping_peak(data)
        print(
            f"  {name}: {len(data)} bytes, peak {peak / 1e6:.1f} MB = {peak / len(data):.1f} "
            f"bytes per byte ({peak / len(data) / (base / len(real)):.2f}x Intel's file), "
            f"{elapsed:.2f} s traced"
        )
    head = '{"Header":{"Version":"1.0"},"tdx_module_releases":['
    size = catalog.MAX_MAPPING_SIZE // 4
    data = (head + ",".join(["{}"] * ((size - len(head) - 2) // 3)) + "]}").encode()
    bounded, _ = _mapping_peak(data)
    real_check = catalog._check_counts
    catalog._check_counts = lambda text, source: None  # type: ignore[assignment]
    try:
        unbounded, elapsed = _mapping_peak(data)
    finally:
        catalog._check_counts = real_check
    print(
        f"  {len(data)} bytes of {{}} releases: refused at {bounded / len(data):.1f} bytes per "
        f"byte; without the structural bounds {unbounded / len(data):.0f} bytes per byte "
        f"({unbounded / 1e6:.0f} MB, {elapsed:.1f} s traced)"
    )


# --- issue 14: against Intel's script ---------------------------------------------------------

INTEL = ROOT / "bench" / "intel_list.py"


def _compiled() -> None:
    """Byte-compile the package, as pip and dh_python3 do on install: a tree run with
    PYTHONDONTWRITEBYTECODE would otherwise compile every module on every start."""
    import compileall

    compileall.compile_dir(str(ROOT / "tdxupdate"), quiet=1)


def paired(
    a: list[str], b: list[str], runs: int = 15, before: Callable[[], None] | None = None
) -> tuple[float, float, float]:
    """Median wall seconds of ``a`` and ``b`` run in turn (A B A B ...), and the median of the
    pair-by-pair ratios A/B: pairing keeps the ratio meaningful on a machine whose speed
    drifts."""
    import statistics

    ta: list[float] = []
    tb: list[float] = []
    for i in range(runs + 1):
        if before is not None:
            before()
        t0 = time.perf_counter()
        subprocess.run(a, check=True, capture_output=True)
        t1 = time.perf_counter()
        subprocess.run(b, check=True, capture_output=True)
        t2 = time.perf_counter()
        if i:  # the first pair warms the page cache
            ta.append(t1 - t0)
            tb.append(t2 - t1)
    ratio = statistics.median(x / y for x, y in zip(ta, tb, strict=True))
    return statistics.median(ta), statistics.median(tb), ratio


def _list_cmd(paths: dict[str, Path], cache: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "tdxupdate", "--list", *extra,
        "--sysroot", str(paths["host"]), "--repo", str(paths["repo"]),
        "--trusted-keys", str(paths["keys"]), "--cache-dir", str(cache),
    ]  # fmt: skip


def _intel_cmd(paths: dict[str, Path]) -> list[str]:
    return [sys.executable, str(INTEL), "--list", "--sysroot", str(paths["host"]),
            "--repo", str(paths["repo"])]  # fmt: skip


def _forget_records(cache: Path) -> Callable[[], None]:
    """Before a run: the listing records gone, the verdicts kept (a listing whose inputs
    changed since the last run: every image head and the mapping are judged again, from the
    verdict store)."""
    import shutil

    from tdxupdate import replay

    return lambda: shutil.rmtree(cache / replay.DIR_NAME, ignore_errors=True)


def bench_listing() -> None:
    import shutil

    import repos

    _compiled()
    with tempfile.TemporaryDirectory() as tmp:
        paths = repos.build(Path(tmp), 20)
        cache = Path(tmp) / "cache"
        intel = _intel_cmd(paths)
        for label, extra in (("--list", ()), ("--list --json", ("--json",))):
            cmd = _list_cmd(paths, cache, *extra)
            subprocess.run(cmd, check=True, capture_output=True)  # the record a run leaves
            ta, tb, ratio = paired(cmd, intel)
            print(
                f"listing: {label}, 20 releases, inputs unchanged (replayed): {ta * 1e3:.0f} ms; "
                f"Intel's script stand-in {tb * 1e3:.0f} ms; ratio {ratio:.2f}x"
            )
        cmd = _list_cmd(paths, cache, "--json")
        ta, tb, ratio = paired(cmd, intel, 9, _forget_records(cache))
        print(
            f"listing: --list --json, 20 releases, inputs changed (verdicts kept): "
            f"{ta * 1e3:.0f} ms; stand-in {tb * 1e3:.0f} ms; ratio {ratio:.2f}x"
        )
        ta, tb, ratio = paired(cmd, intel, 9, lambda: shutil.rmtree(cache, ignore_errors=True))
        print(
            f"listing: --list --json, 20 releases, first run (no verdicts): {ta * 1e3:.0f} ms; "
            f"stand-in {tb * 1e3:.0f} ms; ratio {ratio:.2f}x"
        )


def bench_scale() -> None:
    import repos

    _compiled()
    sizes = (500, 1000, 2000)
    with tempfile.TemporaryDirectory() as tmp:
        ours: dict[int, float] = {}
        judged: dict[int, float] = {}
        theirs: dict[int, float] = {}
        for n in sizes:
            paths = repos.build(Path(tmp) / str(n), n)
            cache = Path(tmp) / str(n) / "cache"
            cmd = _list_cmd(paths, cache, "--json")
            subprocess.run(cmd, check=True, capture_output=True)
            ours[n], theirs[n], ratio = paired(cmd, _intel_cmd(paths), 7)
            print(
                f"scale: --list --json, {n} releases, replayed: {ours[n] * 1e3:.0f} ms; "
                f"stand-in {theirs[n] * 1e3:.0f} ms; ratio {ratio:.2f}x"
            )
            judged[n], _tb, ratio = paired(cmd, _intel_cmd(paths), 5, _forget_records(cache))
            print(
                f"scale: --list --json, {n} releases, inputs changed (verdicts kept): "
                f"{judged[n] * 1e3:.0f} ms; ratio {ratio:.2f}x"
            )
            if n == sizes[-1]:
                import shutil

                ta, tb, ratio = paired(
                    cmd, _intel_cmd(paths), 3, lambda c=cache: shutil.rmtree(c, ignore_errors=True)
                )
                print(
                    f"scale: --list --json, {n} releases, first run (no verdicts): "
                    f"{ta * 1e3:.0f} ms; stand-in {tb * 1e3:.0f} ms; ratio {ratio:.2f}x"
                )
        for lo, hi in itertools.pairwise(sizes):
            per = (ours[hi] - ours[lo]) / (hi - lo) * 1e3
            per_judged = (judged[hi] - judged[lo]) / (hi - lo) * 1e3
            base = (theirs[hi] - theirs[lo]) / (hi - lo) * 1e3
            print(
                f"scale: {lo}->{hi} releases: {per:.3f} ms per release replayed, "
                f"{per_judged:.3f} judged from verdicts; stand-in {base:.3f} ms per release "
                f"({per / base:.1f}x, {per_judged / base:.1f}x)"
            )


def _peak_rss(cmd: list[str]) -> int:
    """Peak RSS in KiB of the tool run as ``cmd`` (best of 3): VmHWM of its own process, read
    at exit (a reaped child's ru_maxrss would include the forked copy of this one). ``cmd`` is
    ``python -m tdxupdate ...`` or ``python SCRIPT ...`` (the stand-in)."""
    run = (
        "sys.argv = sys.argv[1:]\nrunpy.run_path(sys.argv[0], run_name='__main__')\n"
        if cmd[1] != "-m"
        else "from tdxupdate.entry import main\nmain()\n"
    )
    code = (
        "import atexit, runpy, sys\n"
        "def report():\n"
        "    for line in open('/proc/self/status'):\n"
        "        if line.startswith('VmHWM:'):\n"
        "            sys.stderr.write('HWM ' + line.split()[1] + '\\n')\n"
        "atexit.register(report)\n" + run
    )
    args = cmd[3:] if cmd[1] == "-m" else cmd[1:]
    best = 0
    for _ in range(3):
        out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True)
        hwm = [int(ln.split()[1]) for ln in out.stderr.splitlines() if ln.startswith("HWM ")]
        if not hwm:
            raise RuntimeError(out.stderr)
        best = hwm[0] if not best else min(best, hwm[0])
    return best


def bench_rss() -> None:
    import repos

    _compiled()
    with tempfile.TemporaryDirectory() as tmp:
        peaks = {}
        stand_in = {}
        for n in (20, 2000):
            paths = repos.build(Path(tmp) / str(n), n)
            cmd = _list_cmd(paths, Path(tmp) / str(n) / "cache", "--json")
            subprocess.run(cmd, check=True, capture_output=True)  # the verdicts a run leaves
            peaks[n] = _peak_rss(cmd)
            stand_in[n] = _peak_rss(_intel_cmd(paths))
        per = (peaks[2000] - peaks[20]) * 1024 / 1980
        base = (stand_in[2000] - stand_in[20]) * 1024 / 1980
        print(
            f"rss: --list --json peak {peaks[20] / 1024:.1f} MiB at 20 releases, "
            f"{peaks[2000] / 1024:.1f} MiB at 2,000 ({peaks[2000] / peaks[20]:.2f}x for 100x "
            f"the releases, {per / 1024:.1f} KiB a release); stand-in {stand_in[20] / 1024:.1f}"
            f" / {stand_in[2000] / 1024:.1f} MiB ({stand_in[2000] / stand_in[20]:.2f}x, "
            f"{base / 1024:.1f} KiB a release)"
        )
        small = Path(tmp) / "small.blob"
        small.write_bytes(make_image("1.5.24", module_pages=1))
        big = Path(tmp) / "big.blob"
        big.write_bytes(big_image())
        keys = Path(tmp) / "keys"
        keys.write_text(test_key().fingerprint + "\n")
        sizes = {}
        for blob in (small, big):
            cmd = [sys.executable, "-m", "tdxupdate", "--verify", str(blob), "--json",
                   "--trusted-keys", str(keys)]  # fmt: skip
            sizes[blob.name] = (blob.stat().st_size, _peak_rss(cmd))
        (s_size, s_rss), (b_size, b_rss) = sizes["small.blob"], sizes["big.blob"]
        print(
            f"rss: --verify peak {s_rss / 1024:.1f} MiB for a {s_size}-byte image, "
            f"{b_rss / 1024:.1f} MiB for {b_size} bytes ({b_rss / s_rss:.2f}x for "
            f"{b_size / s_size:.0f}x the bytes; growth {(b_rss - s_rss) * 1024 / b_size:.1f} "
            "bytes per image byte)"
        )


def _done_watch() -> None:
    import statistics

    reactions: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        real_write = os.write
        flipped: list[float] = []

        def finish() -> None:
            # the instant is taken first: the watch may see idle and return before this
            # thread runs again
            flipped.append(time.perf_counter())
            (d / "status").write_text("idle\n")

        for i in range(40):
            for name, content in {
                "loading": "0\n", "status": "idle\n", "error": "", "remaining_size": "0\n",
                "data": "",
            }.items():  # fmt: skip
                (d / name).write_text(content)
            busy_for = 0.05 + 0.0137 * i  # 50 ms to 0.6 s: every phase of the poll schedule

            def fake_write(fd: int, data: bytes | memoryview, busy: float = busy_for) -> int:
                n = real_write(fd, data)
                if bytes(data) == b"0" and os.readlink(f"/proc/self/fd/{fd}").endswith("loading"):
                    (d / "status").write_text("transferring\n")
                    threading.Timer(busy, finish).start()
                return n

            os.write = fake_write  # type: ignore[assignment]
            try:
                flipped.clear()
                uploader.upload(d, b"x" * 8192, timeout=30)
                reactions.append(time.perf_counter() - flipped[0])
            finally:
                os.write = real_write  # type: ignore[assignment]
    print(
        f"done: kernel done -> upload() returns: median {statistics.median(reactions) * 1e3:.1f}"
        f" ms, max {max(reactions) * 1e3:.1f} ms over {len(reactions)} updates (the poll "
        f"schedule's bound: {uploader.MAX_POLL_INTERVAL * 1e3:.0f} ms)"
    )


def _done_end_to_end(runs: int = 30) -> None:
    """Kernel done -> process exit of a whole ``python -m tdxupdate --update`` (status watch,
    version read-back, history fsync, metrics, JSON document, interpreter exit): the child
    (``bench/done_child.py``) stamps CLOCK_MONOTONIC as its stand-in kernel finishes, this
    process as it reaps the child. The baseline is the same measure around a bare exit."""
    import statistics

    from factories.hosts import build_host_tree

    _compiled()
    child = ROOT / "bench" / "done_child.py"
    ours: list[float] = []
    bare: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        repo = write_repo(d / "repo", {v: make_image(v) for v in ("1.5.06", "1.5.07")})
        keys = d / "keys"
        keys.write_text(test_key().fingerprint + "\n")
        stamp = d / "flipped"
        for i in range(runs + 1):
            host = build_host_tree(d / f"host-{i}", seamldr="1.5.00")
            busy = 0.05 + 0.55 * i / runs  # 50 ms to 0.6 s: every phase of the poll schedule
            cmd = [
                sys.executable, str(child), f"{busy:.4f}", str(stamp), "--",
                "--update", "1.5.07", "--json", "--sysroot", str(host), "--repo", str(repo),
                "--trusted-keys", str(keys), "--state-dir", str(d / "state"),
                "--cache-dir", str(d / "cache"), "--metrics-file", str(d / "tdxupdate.prom"),
            ]  # fmt: skip
            subprocess.run(cmd, check=True, capture_output=True)
            reaped = time.monotonic()
            took = reaped - float(stamp.read_text())
            subprocess.run([sys.executable, str(child), "exit", str(stamp)], check=True)
            reaped = time.monotonic()
            if i:  # the first run warms the page cache
                ours.append(took)
                bare.append(reaped - float(stamp.read_text()))
    print(
        f"done: kernel done -> process exit (--update end to end): median "
        f"{statistics.median(ours) * 1e3:.1f} ms, max {max(ours) * 1e3:.1f} ms over {runs} "
        f"updates; baseline, a bare process exit measured the same way: median "
        f"{statistics.median(bare) * 1e3:.1f} ms"
    )


def bench_done() -> None:
    _done_watch()
    _done_end_to_end()


BENCHES = {
    "verify": bench_verify,
    "convert": bench_convert,
    "list": bench_list,
    "watch": bench_watch,
    "memory": bench_memory,
    "mapping": bench_mapping,
    "listing": bench_listing,
    "scale": bench_scale,
    "rss": bench_rss,
    "done": bench_done,
}

if __name__ == "__main__":
    for name in sys.argv[1:] or list(BENCHES):
        BENCHES[name]()
