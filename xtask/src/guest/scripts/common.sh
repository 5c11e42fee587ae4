# Mounts and setup common to both guest kinds (the init runs as PID 1).
export PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin HOME=/root
fail() {
    echo "$M_FAIL $*" > $C
    echo "cowtrace init: $*" > /dev/console
    sync
    echo o > /proc/sysrq-trigger
    sleep 30
    exit 1
}
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
echo 1 > /proc/sys/kernel/sysrq
mkdir -p /dev/pts /dev/shm /run /tmp /out /root
mount -t devpts -o gid=5,mode=620,ptmxmode=666 devpts /dev/pts
mount -t tmpfs -o mode=1777 tmpfs /dev/shm
mount -t tmpfs -o mode=755 tmpfs /run
mount -t tmpfs -o mode=1777 tmpfs /tmp
mount -t tracefs tracefs /sys/kernel/tracing
mount -t debugfs debugfs /sys/kernel/debug
mount -t bpf -o mode=700 bpf /sys/fs/bpf
mount -t cgroup2 -o nsdelegate cgroup2 /sys/fs/cgroup
ulimit -l unlimited
hostname cowtrace
# Loopback up, as on any host: local servers (the metrics endpoint, a
# Prometheus scraping it) listen there. Whichever of these the root has.
ip link set lo up 2>/dev/null || busybox ip link set lo up 2>/dev/null ||
    busybox ifconfig lo 127.0.0.1 up || fail "cannot bring up the loopback interface"
for t in $OUT_PORT $ERR_PORT $C; do stty -F $t raw -echo || fail "cannot set up $t"; done
modprobe overlay || fail "modprobe overlay failed"
