# A clean stop, for disks that are kept: stop the engine, remount / read-only.
kill $DOCKERD
n=0; while kill -0 $DOCKERD 2>/dev/null && [ $n -lt 150 ]; do n=$((n+1)); sleep 0.2; done
kill $CONTAINERD
n=0; while kill -0 $CONTAINERD 2>/dev/null && [ $n -lt 50 ]; do n=$((n+1)); sleep 0.2; done
sync
mount -o remount,ro / || rc=125
