#!/bin/sh
# /init (PID 1) of the real-kernel test VM, busybox sh (real-kernel-tier.md §4.2, mode B).
#
# The host's / arrives read-only over 9p (tag "hostroot") and the test runs chrooted in it,
# so the guest uses exactly the host's Python, venv and checkout. The read-write results
# share (tag "rkshare") is mounted at /dev/rk inside the chroot (devtmpfs is writable and
# never holds a checkout); the host runner put the script to run there as run.sh. A scratch
# tmpfs is mounted at /dev/rk-tmp, and tmpfs over /tmp and /run unless the kernel command
# line says rk_host_tmp=1 / rk_host_run=1 (the runner does when the checkout or the Python
# installation lives there). The script's exit status goes to /dev/rk/rc, to the console as
# "rk: exit rc=N" and to qemu's exit status through isa-debug-exit ((N << 1) | 1).
# There is no fallback: without the hostroot share the run fails loudly.
export PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin HOME=/root
mount -t proc proc /proc
mount -t sysfs sysfs /sys
# DEVTMPFS_MOUNT does not apply to an initramfs
mount -t devtmpfs devtmpfs /dev
exec </dev/console >/dev/console 2>&1

fail() {
  echo "rk: init failed: $*"
  echo "rk: exit rc=125"
  printf '\175' | dd of=/dev/port bs=1 seek=244 count=1 2>/dev/null
  reboot -f
}

R=/host
mkdir -p $R
mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144,ro,cache=loose hostroot $R \
  || fail "cannot mount the 9p share 'hostroot' (the host's / read-only)"
mount -t proc proc $R/proc || fail "mount proc"
mount -t sysfs sysfs $R/sys || fail "mount sysfs"
mount -t devtmpfs devtmpfs $R/dev || fail "mount devtmpfs"
if [ "${rk_host_tmp:-0}" != 1 ]; then mount -t tmpfs -o mode=1777 tmpfs $R/tmp || fail "mount /tmp"; fi
if [ "${rk_host_run:-0}" != 1 ]; then mount -t tmpfs -o mode=0755 tmpfs $R/run || fail "mount /run"; fi
mkdir -p $R/dev/rk $R/dev/rk-tmp
mount -t tmpfs -o mode=1777 tmpfs $R/dev/rk-tmp || fail "mount /dev/rk-tmp"
# no cache=loose here: the host reads what the guest writes
mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 rkshare $R/dev/rk \
  || fail "cannot mount the 9p share 'rkshare' (results, read-write)"
[ -f $R/dev/rk/run.sh ] || fail "no run.sh in the results share"
echo "rk: ready uptime=$(cut -d' ' -f1 /proc/uptime) cpus=$(grep -c ^processor /proc/cpuinfo)"

chroot $R /bin/sh -c 'cd /dev/rk && exec /bin/sh /dev/rk/run.sh'
rc=$?

echo "rk: exit rc=$rc uptime=$(cut -d' ' -f1 /proc/uptime)"
echo $rc > $R/dev/rk/rc
sync
printf "\\$(printf %o $((rc & 0x7f)))" | dd of=/dev/port bs=1 seek=244 count=1 2>/dev/null
# qemu -no-reboot turns this into an exit when isa-debug-exit did not end the VM
reboot -f
