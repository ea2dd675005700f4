#!/bin/sh
# mig-guest.sh SECONDS HOST [PORT [MORE]]: the guest's side of Tools/migration-check.sh, run
# from tw.cmd while the VM migrates back and forth under it.
#  - receives one TCP stream on PORT (default 5001) and hashes it; when the sender closes it:
#      TW-MIG-HASH <sha256> <bytes>
#  - sends to the iperf3 server on HOST (guest->host) for SECONDS; if the stream is still
#    running when that ends (the migrations took longer than the host planned), runs further
#    sessions of MORE seconds (default 10) until it is over. After each session:
#      TW-MIG-IPERF-RC <session> <exit status>   then iperf3's summary lines
#  - TW-MIG-LISTENING    once the receiver listens (the host then connects)
#  - TW-MIG-DONE         when both are over
# Extra iperf3 client options (e.g. "-b 500M") come from tw.iperf="..." on the kernel
# command line.
SECS=${1:?seconds}
HOST=${2:?host}
PORT=${3:-5001}
MORE=${4:-10}
IPERF_OPTS=$(sed -n 's/.*tw\.iperf="\([^"]*\)".*/\1/p' /proc/cmdline)

rm -f /tmp/mig-fifo
mkfifo /tmp/mig-fifo
# The byte count from a second reader of the same stream (busybox sh has no process
# substitution).
wc -c </tmp/mig-fifo >/tmp/mig-bytes &
WC=$!
(nc -l -p "$PORT" </dev/null | tee /tmp/mig-fifo | sha256sum >/tmp/mig-hash) &
RX=$!
i=0
until netstat -ltn 2>/dev/null | grep -q ":$PORT "; do
    i=$((i + 1)); [ $i -lt 50 ] || break
    sleep 0.1
done
echo "TW-MIG-LISTENING"

# A heartbeat on the console every 2 s while the test runs: the guest's uptime and eth0's
# counters, so a host that lost the guest's network can tell a hung guest from a silent NIC.
(
    while [ ! -e /tmp/mig-done ]; do
        s=/sys/class/net/eth0/statistics
        echo "tw-mig-beat up=$(cut -d' ' -f1 /proc/uptime) rx=$(cat $s/rx_packets) tx=$(cat $s/tx_packets) rx_drop=$(cat $s/rx_dropped) tx_drop=$(cat $s/tx_dropped)"
        sleep 2
    done
) &

n=0
while :; do
    n=$((n + 1))
    # shellcheck disable=SC2086 # IPERF_OPTS is word-split on purpose
    iperf3 -c "$HOST" -t "$SECS" -i 0 $IPERF_OPTS >/tmp/mig-iperf 2>&1
    echo "TW-MIG-IPERF-RC $n $?"
    grep -E 'sender|receiver|error' /tmp/mig-iperf | sed "s/^/tw-mig-iperf $n: /"
    kill -0 "$RX" 2>/dev/null || break
    SECS=$MORE
done

wait "$RX"
wait "$WC"
echo "TW-MIG-HASH $(cut -d' ' -f1 /tmp/mig-hash) $(tr -d ' ' </tmp/mig-bytes)"
touch /tmp/mig-done
echo "TW-MIG-DONE"
