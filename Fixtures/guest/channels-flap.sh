#!/bin/sh
# channels-flap.sh [ROUNDS] [SECONDS] [NIC]: switches NIC (default eth0) between 1 and 2
# combined channels (queue pairs) ROUNDS times (default 4), SECONDS apart (default 1), while the
# host drives traffic through it (Tools/qemu10-check.sh); ends at 2 channels. Each change goes
# to QEMU over virtio-net's control queue, and QEMU enables or disables the backend's second
# queue pair with SET_VRING_ENABLE. Prints one line per change; exits non-zero when ethtool
# refused one or the channel count read back is not what was set.
ROUNDS=${1:-4}
SECONDS_APART=${2:-1}
NIC=${3:-eth0}
combined() { ethtool -l "$NIC" | awk '/^Current hardware settings/ { cur = 1 } cur && /^Combined:/ { print $2; exit }'; }
fail=0
set_channels() {
    if ! ethtool -L "$NIC" combined "$1"; then
        echo "tw-flap: ethtool -L $NIC combined $1 failed"
        fail=1
        return
    fi
    now=$(combined)
    echo "tw-flap: $(cut -d' ' -f1 /proc/uptime)s $NIC combined $now"
    [ "$now" = "$1" ] || { echo "tw-flap: asked for $1, $NIC has $now"; fail=1; }
}
i=0
while [ "$i" -lt "$ROUNDS" ]; do
    set_channels 1
    sleep "$SECONDS_APART"
    set_channels 2
    sleep "$SECONDS_APART"
    i=$((i + 1))
done
exit "$fail"
