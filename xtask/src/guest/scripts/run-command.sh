# The command, with its stdout and stderr on their own ports.
echo $M_START > $C
cd /root
/bin/sh /etc/cowtrace/cmd </dev/null >$OUT_PORT 2>$ERR_PORT
rc=$?
cd /
# Setting the mode waits until everything written has been sent.
stty -F $OUT_PORT raw -echo
stty -F $ERR_PORT raw -echo
