#!/bin/sh
# nic-watch.sh NET [INTERVAL]: gives every NIC that appears after boot (any ethN but eth0) an
# address and brings it up, for hot-plug tests (Tools/qemu10-check.sh). NET is the first three
# octets of a /24 (e.g. 10.78.0); the last octet is the NIC's MAC's last byte, so each
# hot-plugged NIC (each with its own MAC) gets its own address: 52:54:00:78:00:0b -> NET.11.
# A NIC that is removed and comes back with another MAC is configured again. One console line
# per NIC configured: "tw-nic-watch: eth1 52:54:00:78:00:0b -> 10.78.0.11/24".
# Start it from tw.pre: tw.pre="/etc/tapwire/nic-watch.sh 10.78.0 &".
NET=${1:?usage: nic-watch.sh NET [INTERVAL]}
INTERVAL=${2:-0.1}
STATE=/run/nic-watch
mkdir -p "$STATE"
echo "tw-nic-watch: watching for new NICs ($NET.0/24)"
while :; do
    for dir in /sys/class/net/eth*; do
        [ -e "$dir/address" ] || continue
        nic=${dir##*/}
        [ "$nic" != eth0 ] || continue
        read -r mac <"$dir/address" 2>/dev/null || continue
        done_mac=
        [ ! -f "$STATE/$nic" ] || read -r done_mac <"$STATE/$nic"
        [ "$done_mac" != "$mac" ] || continue
        last=$((0x${mac##*:}))
        ip addr flush dev "$nic" 2>/dev/null
        if ip addr add "$NET.$last/24" dev "$nic" && ip link set "$nic" up; then
            echo "$mac" >"$STATE/$nic"
            echo "tw-nic-watch: $nic $mac -> $NET.$last/24"
        else
            echo "tw-nic-watch: configuring $nic ($mac) failed; retrying"
        fi
    done
    sleep "$INTERVAL"
done
