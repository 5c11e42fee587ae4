# systemd guests: docker.service (Type=notify) is up when this unit starts;
# check that systemd really runs it and that the engine answers.
for u in containerd.service docker.service; do
    systemctl is-active -q $u || {
        systemctl status --no-pager $u > /dev/console 2>&1
        fail "$u is not active"
    }
done
n=0
until docker version >/dev/null 2>&1; do
    n=$((n+1))
    [ $n -gt 600 ] && fail "dockerd did not answer"
    sleep 0.2
done
echo $M_READY > $C
