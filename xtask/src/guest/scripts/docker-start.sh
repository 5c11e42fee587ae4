# Docker guests: containerd and dockerd (cgroupfs driver, no networking),
# then wait until the engine answers.
containerd >/var/log/containerd.log 2>&1 &
CONTAINERD=$!
dockerd --containerd=/run/containerd/containerd.sock --storage-driver=overlay2 \
    --data-root=/var/lib/docker --iptables=false --bridge=none >/var/log/dockerd.log 2>&1 &
DOCKERD=$!
n=0
until docker version >/dev/null 2>&1; do
    n=$((n+1))
    if [ $n -gt 600 ]; then
        tail -n 20 /var/log/dockerd.log > /dev/console
        fail "dockerd did not become ready"
    fi
    sleep 0.2
done
echo $M_READY > $C
