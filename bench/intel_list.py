"""The stand-in for Intel's ``version_select_and_load.py --list`` (reference-tool.md).

What that script does for a listing, and nothing more: parse the arguments, read the running
module's version from sysfs and the CPU signature from /proc/cpuinfo, ``json.load`` the mapping
file, read each listed image's head for the debug bit and the CPUID table, print one line per
release. No schema, no container rules, no checksum, no signature: this is the floor a listing
that checks everything is measured against.

    python bench/intel_list.py --sysroot HOST --repo REPO
"""

from __future__ import annotations

import argparse
import json
import os
import struct

HEAD = 8192
SIGSTRUCT = 0x1000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sysroot", default="/")
    parser.add_argument("--repo", required=True)
    parser.add_argument("--list", action="store_true")
    args = parser.parse_args()
    tdx = os.path.join(args.sysroot, "sys/devices")
    running = "unknown"
    for dirpath, _dirs, files in os.walk(tdx):
        if "version" in files:
            with open(os.path.join(dirpath, "version")) as f:
                running = f.read().strip()
            break
    with open(os.path.join(args.sysroot, "proc/cpuinfo")) as f:
        fields = dict(line.split(":", 1) for line in f.read().splitlines() if ":" in line)
    cpu = (int(fields.get("cpu family\t", "6")) << 8) | int(fields.get("model\t\t", "0"))
    with open(os.path.join(args.repo, "mapping_file.json")) as f:
        mapping = json.load(f)
    lines = []
    for entry in mapping["tdx_module_releases"]:
        version = entry["version"]
        major_minor = ".".join(version.split(".")[:2])
        path = os.path.join(args.repo, "joined_files", major_minor, f"tdx_module_{version}.blob")
        try:
            with open(path, "rb") as f:
                head = f.read(HEAD)
        except OSError:
            continue
        (module_type,) = struct.unpack_from("<I", head, SIGSTRUCT + 12)
        (count,) = struct.unpack_from("<I", head, SIGSTRUCT + 1024)
        table = struct.unpack_from(f"<{min(count, 255)}I", head, SIGSTRUCT + 1028)
        tags = " [debug]" if module_type >> 31 else ""
        lines.append(f"{version}{tags} cpus={len(table)} running={running} cpu={cpu:#x}")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
