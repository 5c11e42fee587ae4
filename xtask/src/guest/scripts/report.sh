# /out as a base64 tar, the exit status, then power off.
if [ -n "$(ls -A /out 2>/dev/null)" ]; then
    echo $M_OUT_BEGIN > $C
    tar -C /out -cf - . | base64 > $C
    echo $M_OUT_END > $C
fi
echo "$M_EXIT $rc" > $C
stty -F $C raw -echo
sync
echo o > /proc/sysrq-trigger
sleep 30
