# Docker guests, first stage: load the virtio modules ($MODULES), mount
# /dev/vda, copy the payload onto it and switch_root to the payload's init.
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
fail() { echo "$M_FAIL $*" > $C; echo o > /proc/sysrq-trigger; sleep 30; exit 1; }
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
echo 1 > /proc/sys/kernel/sysrq
for m in $MODULES; do insmod "$m" || fail "insmod $m failed"; done
n=0
while [ ! -b /dev/vda ]; do n=$((n+1)); [ $n -gt 200 ] && fail "no /dev/vda"; sleep 0.05; done
mkdir -p /newroot
mount -t ext4 /dev/vda /newroot || fail "cannot mount /dev/vda"
cp -a /payload/. /newroot/ || fail "cannot copy the payload"
umount /proc /sys /dev
exec switch_root /newroot /etc/cowtrace/init
