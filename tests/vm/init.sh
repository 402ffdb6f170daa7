#!/bin/busybox sh
# PID 1 of the thinsnap test VM (busybox initramfs). Loads the kernel
# modules listed in /modorder, mounts the host's / read-only over 9p with a
# tmpfs overlay on top, mounts the job directory (9p, read-write) and runs
# the guest agent (thinsnap-vm guest) chrooted into that root.
/bin/busybox --install -s /bin
mkdir -p /sbin && ln -sf /bin/busybox /sbin/modprobe
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev

arg() { tr ' ' '\n' < /proc/cmdline | sed -n "s/^$1=//p" | tail -n 1; }
AGENT=$(arg thinsnap.agent)
MODULES=$(arg thinsnap.modules)
KV=$(uname -r)

fail() { echo "thinsnap-vm init: $*"; echo "THINSNAP-VM-INIT-FAILED"; poweroff -f; }

while read -r m; do
  insmod "/lib/modules/$KV/$m" || echo "thinsnap-vm init: insmod $m failed"
done < /modorder

mkdir -p /host /rw /newroot
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=512000,cache=loose hostroot /host || fail "mounting the host root over 9p"
mount -t tmpfs -o mode=0755 tmpfs /rw || fail "tmpfs"
mkdir -p /rw/upper /rw/work
mount -t overlay overlay -o lowerdir=/host,upperdir=/rw/upper,workdir=/rw/work /newroot || fail "overlay root"
for d in proc sys dev run tmp; do mkdir -p /newroot/$d; done
mount -t proc proc /newroot/proc
mount -t sysfs sys /newroot/sys
mount -t devtmpfs dev /newroot/dev
mkdir -p /newroot/dev/pts /newroot/dev/shm
mount -t devpts devpts /newroot/dev/pts
mount -t tmpfs -o mode=1777 tmpfs /newroot/dev/shm
mount -t tmpfs -o mode=0755 tmpfs /newroot/run
mount -t tmpfs -o mode=1777 tmpfs /newroot/tmp
mount -t cgroup2 cgroup2 /newroot/sys/fs/cgroup 2>/dev/null
# Host directories hidden by the mounts above (a checkout under /tmp):
# shared again by the runner, read-only with a tmpfs overlay like /.
SHARES=$(arg thinsnap.shares)
i=0
for dir in $(echo "$SHARES" | tr ',' ' '); do
  mkdir -p "/rw/share$i/lower" "/rw/share$i/upper" "/rw/share$i/work" "/newroot$dir"
  mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=512000,cache=loose "share$i" "/rw/share$i/lower" || fail "mounting share $dir"
  mount -t overlay overlay -o "lowerdir=/rw/share$i/lower,upperdir=/rw/share$i/upper,workdir=/rw/share$i/work" "/newroot$dir" || fail "overlay on share $dir"
  i=$((i+1))
done
mkdir -p /newroot/run/thinsnap-vm
mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 job /newroot/run/thinsnap-vm || fail "mounting the job directory"
if [ -n "$MODULES" ] && [ -d "/newroot$MODULES" ]; then
  mkdir -p "/newroot/lib/modules/$KV"
  mount --bind "/newroot$MODULES" "/newroot/lib/modules/$KV"
fi
ip link set lo up 2>/dev/null
hostname thinsnap-vm
echo "THINSNAP-VM-BOOTED $(cut -d' ' -f1 /proc/uptime)"
chroot /newroot "$AGENT" guest /run/thinsnap-vm/job.json
echo "THINSNAP-VM-AGENT-EXIT $?"
sync
poweroff -f
