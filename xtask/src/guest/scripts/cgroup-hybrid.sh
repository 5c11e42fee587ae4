# cgroup hybrid guests (systemd's hybrid layout): the v1 hierarchies above,
# and cgroup2 at /sys/fs/cgroup/unified with no controllers, where runc
# also puts each container (so its cgroup v2 id names it).
mkdir -p /sys/fs/cgroup/unified
mount -t cgroup2 -o nsdelegate cgroup2 /sys/fs/cgroup/unified ||
    fail "cannot mount cgroup2 at /sys/fs/cgroup/unified"
