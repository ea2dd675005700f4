#!/bin/sh
# mem-online.sh STATE COUNT [SECONDS]: waits (up to SECONDS, default 20) until COUNT memory
# blocks are offline (hot-added memory with memhp_default_state=offline), then onlines each of
# them with STATE (online_kernel: ZONE_NORMAL, which kernel allocations such as receive
# buffers prefer; online_movable: ZONE_MOVABLE, which can be offlined and removed again).
# Prints one line per block: "memory34 online Movable"; exits non-zero if a block did not go
# online. For Tools/qemu10-check.sh.
# mem-online.sh offline BLOCK... offlines those blocks (retrying while pages migrate).
STATE=${1:?usage: mem-online.sh online_kernel|online_movable COUNT [SECONDS] | offline BLOCK...}
MEM=/sys/devices/system/memory
if [ "$STATE" = offline ]; then
    shift
    rc=0
    for b in "$@"; do
        i=0
        until echo offline >"$MEM/$b/state" 2>/dev/null; do
            i=$((i + 1))
            [ "$i" -lt 20 ] || { echo "$b: offline refused ($(cat "$MEM/$b/state"))"; rc=1; break; }
            sleep 0.5
        done
        echo "$b $(cat "$MEM/$b/state")"
    done
    exit "$rc"
fi
COUNT=${2:?COUNT}
WAIT=${3:-20}
offline_blocks() {
    for m in "$MEM"/memory*; do
        [ "$(cat "$m/state" 2>/dev/null)" = offline ] && echo "${m##*/}"
    done
}
i=0
while [ "$(offline_blocks | wc -l)" -lt "$COUNT" ]; do
    i=$((i + 1))
    [ "$i" -le $((WAIT * 10)) ] || { echo "only $(offline_blocks | wc -l) of $COUNT blocks appeared"; exit 1; }
    sleep 0.1
done
rc=0
for b in $(offline_blocks); do
    echo "$STATE" >"$MEM/$b/state" || rc=1
    echo "$b $(cat "$MEM/$b/state") $(cat "$MEM/$b/valid_zones")"
done
exit "$rc"
