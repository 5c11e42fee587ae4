# systemd guests: the init runs as cowtrace-run.service, after docker.service.
# systemd has mounted /proc, /sys, /dev, /run, cgroup2, bpffs, tracefs and
# debugfs; only the ports and overlay are left to set up.
export PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin HOME=/root
fail() {
    echo "$M_FAIL $*" > $C
    echo "cowtrace init: $*" > /dev/console
    sync
    echo o > /proc/sysrq-trigger
    sleep 30
    exit 1
}
mkdir -p /out /root
ulimit -l unlimited
for t in $OUT_PORT $ERR_PORT $C; do stty -F $t raw -echo || fail "cannot set up $t"; done
for m in /sys/kernel/tracing /sys/kernel/debug /sys/fs/bpf; do
    mountpoint -q $m || fail "systemd did not mount $m"
done
modprobe overlay || fail "modprobe overlay failed"
