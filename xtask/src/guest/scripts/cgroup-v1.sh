# cgroup v1 guests: in place of cgroup2, a tmpfs at /sys/fs/cgroup with one
# v1 hierarchy per controller the kernel has, and a named systemd one, as
# a host booted with cgroup v1 has them (and Docker there expects).
# cgroup2 is never mounted, so /proc/PID/cgroup has no `0::` line.
mount -t tmpfs -o mode=755 cgroup /sys/fs/cgroup
while read -r name hier num enabled; do
    case $name in '#'*) continue ;; esac
    [ "$enabled" = 1 ] || continue
    mkdir -p /sys/fs/cgroup/$name
    mount -t cgroup -o $name cgroup /sys/fs/cgroup/$name ||
        fail "cannot mount the cgroup v1 $name hierarchy"
done < /proc/cgroups
mkdir -p /sys/fs/cgroup/systemd
mount -t cgroup -o none,name=systemd cgroup /sys/fs/cgroup/systemd ||
    fail "cannot mount the cgroup v1 name=systemd hierarchy"
