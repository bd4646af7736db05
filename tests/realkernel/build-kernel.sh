#!/bin/bash
# Build (or reuse) the kernel and initramfs of the real-kernel test tier
# (real-kernel-tier.md §3, §4.1; tests/realkernel/README.md).
#
#   tests/realkernel/build-kernel.sh    # prints kernel=PATH, initrd=PATH, info=PATH on stdout
#
# What it does:
#   1. installs the Debian packages it needs with apt-get (when run as root and they are
#      missing): qemu-system-x86, busybox-static and cpio always; linux-source-6.1 and the
#      build tools only when the kernel is not cached yet;
#   2. builds a tinyconfig-based x86_64 kernel with CONFIG_FW_UPLOAD and lib/test_firmware.c
#      (kernel-options.txt), with test_firmware.patch applied: uploads up to 4 MiB (the
#      largest Format B image is 2,039,808 bytes), upload_read returns the first page of a
#      larger upload, and upload_inject_next injects an error into the next real upload;
#   3. builds the busybox-only initramfs whose /init is guest-init.sh;
#   4. caches both under $TDXUPDATE_RK_CACHE (default
#      ${XDG_CACHE_HOME:-$HOME/.cache}/tdxupdate/realkernel), in a directory named after the
#      kernel source version and a hash of the recipe (kernel-options.txt,
#      test_firmware.patch, this script's RECIPE, gcc version). A second run costs seconds.
#
# Environment:
#   TDXUPDATE_RK_CACHE  cache root (see above)
#   RK_JOBS             make -j value (default: number of CPUs)
#   RK_NO_APT=1         never run apt-get; fail when a package is missing
#   RK_KEEP_BUILD=1     keep the unpacked source and object tree ($CACHE/build) after a build
#
# Every message goes to stderr; stdout carries only the three lines above. Exit status is
# non-zero, with the reason on stderr, when anything is missing or fails.
set -euo pipefail

# The whole script is one brace group, so bash reads all of it before running any of it: a
# checkout changing this file during a 3-minute build cannot change what the build does.
{
# Bump when the build steps change in a way the hashed inputs do not capture.
RECIPE="tinyconfig+options bzImage v1"
INITRAMFS_RECIPE="busybox-only hostroot v1"
SRC_PKG=linux-source-6.1
SRC_TAR=/usr/src/linux-source-6.1.tar.xz
RUN_PKGS=(qemu-system-x86 busybox-static cpio)
BUILD_PKGS=("$SRC_PKG" build-essential bc flex bison libelf-dev libssl-dev xz-utils patch)

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CACHE=${TDXUPDATE_RK_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tdxupdate/realkernel}
JOBS=${RK_JOBS:-$(nproc)}

log() { echo "build-kernel: $*" >&2; }
die() { echo "build-kernel: error: $*" >&2; exit 1; }

missing_pkgs() {
  local p
  for p in "$@"; do
    [ "$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null)" = installed ] || echo "$p"
  done
}

ensure_pkgs() {
  local missing
  missing=$(missing_pkgs "$@" | tr '\n' ' ')
  [ -z "${missing// /}" ] && return 0
  [ "${RK_NO_APT:-0}" = 1 ] && die "missing Debian packages: $missing(RK_NO_APT=1 forbids apt-get)"
  [ "$(id -u)" = 0 ] || die "missing Debian packages: $missing(run as root or install them: apt-get install $missing)"
  command -v apt-get >/dev/null || die "missing packages $missing and no apt-get on this host"
  log "installing $missing"
  export DEBIAN_FRONTEND=noninteractive
  # shellcheck disable=SC2086
  if ! apt-get install -y --no-install-recommends $missing >&2; then
    apt-get update >&2 || die "apt-get update failed"
    # shellcheck disable=SC2086
    apt-get install -y --no-install-recommends $missing >&2 || die "apt-get install $missing failed"
  fi
}

# The version of the kernel source: the installed package, else the candidate apt would
# install (so a cache hit needs neither the 138 MB source package nor the build tools).
source_version() {
  local v
  v=$(dpkg-query -W -f='${Version}' "$SRC_PKG" 2>/dev/null || true)
  if [ -z "$v" ] || [ "$(dpkg-query -W -f='${db:Status-Status}' "$SRC_PKG" 2>/dev/null)" != installed ]; then
    v=$(apt-cache policy "$SRC_PKG" 2>/dev/null | sed -n 's/^ *Candidate: *//p')
    if [ -z "$v" ] || [ "$v" = "(none)" ]; then
      [ "$(id -u)" = 0 ] && [ "${RK_NO_APT:-0}" != 1 ] && apt-get update >&2
      v=$(apt-cache policy "$SRC_PKG" 2>/dev/null | sed -n 's/^ *Candidate: *//p')
    fi
  fi
  [ -n "$v" ] && [ "$v" != "(none)" ] || die "cannot determine the version of $SRC_PKG (no apt source offers it)"
  echo "$v"
}

ensure_pkgs "${RUN_PKGS[@]}"
command -v qemu-system-x86_64 >/dev/null || die "qemu-system-x86_64 not found after installing qemu-system-x86"
[ -x /bin/busybox ] || die "/bin/busybox not found after installing busybox-static"

SRCVER=$(source_version)
GCCVER=$(gcc -dumpfullversion 2>/dev/null || echo none)
CFGHASH=$( { echo "$RECIPE"; echo "gcc $GCCVER"; cat "$HERE/kernel-options.txt" "$HERE/test_firmware.patch"; } \
           | sha256sum | cut -c1-12)
KEY="linux-${SRCVER//[^A-Za-z0-9.+-]/_}-$CFGHASH"
OUT=$CACHE/$KEY
mkdir -p "$CACHE"

# One builder at a time per cache (parallel CI jobs, or a test run and a manual build).
exec 9>"$CACHE/.lock"
flock 9

build_kernel() {
  local t0 work src obj opts o missing=""
  t0=$(date +%s)
  ensure_pkgs "${BUILD_PKGS[@]}"
  local inst
  inst=$(dpkg-query -W -f='${Version}' "$SRC_PKG")
  [ "$inst" = "$SRCVER" ] || die "$SRC_PKG $inst is installed but the cache key was computed for $SRCVER"
  [ -f "$SRC_TAR" ] || die "$SRC_TAR not found (package $SRC_PKG)"
  work=$CACHE/build
  src=$work/linux-source-6.1
  obj=$work/out
  rm -rf "$work"
  mkdir -p "$work"
  log "unpacking $SRC_TAR"
  tar -C "$work" -xJf "$SRC_TAR"
  log "applying test_firmware.patch"
  patch -d "$src" -p1 --forward --quiet <"$HERE/test_firmware.patch" || die "test_firmware.patch does not apply to $SRC_PKG $SRCVER"
  grep -q '^#define TEST_UPLOAD_MAX_SIZE	SZ_4M$' "$src/lib/test_firmware.c" \
    || die "lib/test_firmware.c: TEST_UPLOAD_MAX_SIZE was not raised to SZ_4M"
  log "configuring (tinyconfig + kernel-options.txt)"
  make -C "$src" O="$obj" tinyconfig >"$work/config.log" 2>&1 || die "make tinyconfig failed (see $work/config.log)"
  opts=$(grep -v '^[[:space:]]*\(#\|$\)' "$HERE/kernel-options.txt")
  local args=()
  for o in $opts; do args+=(--enable "$o"); done
  "$src/scripts/config" --file "$obj/.config" "${args[@]}"
  make -C "$src" O="$obj" olddefconfig >>"$work/config.log" 2>&1 || die "make olddefconfig failed"
  for o in $opts; do
    grep -q "^CONFIG_$o=y\$" "$obj/.config" || missing="$missing CONFIG_$o"
  done
  [ -z "$missing" ] || die "options dropped by olddefconfig (a dependency is missing):$missing"
  log "building bzImage with make -j$JOBS (about 3 minutes on 2 CPUs)"
  if ! make -C "$src" O="$obj" -j"$JOBS" bzImage >"$work/build.log" 2>&1; then
    tail -40 "$work/build.log" >&2
    die "kernel build failed (log: $work/build.log)"
  fi
  local stage=$CACHE/.stage-$KEY.$$
  rm -rf "$stage"
  mkdir -p "$stage"
  cp "$obj/arch/x86/boot/bzImage" "$stage/bzImage"
  cp "$obj/.config" "$stage/config"
  cp "$HERE/test_firmware.patch" "$HERE/kernel-options.txt" "$stage/"
  local secs=$(($(date +%s) - t0))
  cat >"$stage/build-info.txt" <<EOF
source=$SRC_PKG $SRCVER
recipe=$RECIPE
gcc=$GCCVER
key=$KEY
built=$(date -u +%Y-%m-%dT%H:%M:%SZ)
build_seconds=$secs
jobs=$JOBS
EOF
  rm -rf "$OUT"
  mv "$stage" "$OUT"
  [ "${RK_KEEP_BUILD:-0}" = 1 ] || rm -rf "$work"
  log "kernel built in ${secs}s: $OUT/bzImage"
}

if [ -s "$OUT/bzImage" ] && [ -s "$OUT/build-info.txt" ]; then
  log "cached kernel: $OUT/bzImage"
else
  build_kernel
fi

# The initramfs: busybox and guest-init.sh only, 0.4 s to build; cached next to the kernel
# under a name that hashes its inputs.
BBVER=$(dpkg-query -W -f='${Version}' busybox-static)
IHASH=$( { echo "$INITRAMFS_RECIPE"; echo "busybox $BBVER"; cat "$HERE/guest-init.sh"; } | sha256sum | cut -c1-12)
INITRD=$OUT/initramfs-$IHASH.cpio.gz
if [ ! -s "$INITRD" ]; then
  st=$(mktemp -d "$CACHE/.initramfs.XXXXXX")
  trap 'rm -rf "$st"' EXIT
  mkdir -p "$st"/{bin,sbin,usr/bin,usr/sbin,proc,sys,dev,tmp,run,etc,root,host}
  cp /bin/busybox "$st/bin/busybox"
  # the applet list contains "busybox" itself: never link over the binary
  for a in $(/bin/busybox --list); do [ -e "$st/bin/$a" ] || ln -s busybox "$st/bin/$a"; done
  echo 'root:x:0:0:root:/root:/bin/sh' >"$st/etc/passwd"
  echo 'root:x:0:' >"$st/etc/group"
  install -m 0755 "$HERE/guest-init.sh" "$st/init"
  (cd "$st" && find . -print0 | LC_ALL=C sort -z | cpio --null -o -H newc -R 0:0 --quiet) \
    | gzip -1 >"$INITRD.tmp"
  mv "$INITRD.tmp" "$INITRD"
  log "initramfs built: $INITRD"
fi
echo "kernel=$OUT/bzImage"
echo "initrd=$INITRD"
echo "info=$OUT/build-info.txt"
exit 0
}
