#!/usr/bin/env bash
# Real-guest comparison in one run: the same guest, device options and iperf3 load through
# QEMU's own TAP backend (-netdev tap,vhost=off), through tapwire, and through tapwire with
# --offloads none. Rounds are interleaved so machine noise hits every backend alike; the
# table shows medians and ratios against QEMU's TAP backend. With --qemu "7.2 10" (the default
# when both are installed) every backend runs under each QEMU, and each QEMU's rows are
# compared with its own TAP backend: QEMU 7.2 with vectors=0, QEMU 10 with MSI-X.
# Usage: Tools/guest-bench.sh [--rounds N] [--time SECONDS] [--tapwire BIN] [--qemu "7.2 10"] [--out FILE]
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

ROUNDS=3
TIME=5
BIN=$TW_REPO_ROOT/.build/release/tapwire
OUT=
QEMUS=
while (($#)); do
    case $1 in
        --rounds) ROUNDS=$2; shift ;;
        --time) TIME=$2; shift ;;
        --tapwire) BIN=$2; shift ;;
        --out) OUT=$2; shift ;;
        --qemu) QEMUS=$2; shift ;;
        *) tw_die "unknown option $1" ;;
    esac
    shift
done
tw_ensure_packages jq:jq
[[ -x $BIN ]] || tw_die "tapwire binary not found at $BIN (make release)"

if [[ -z $QEMUS ]]; then
    QEMUS=7.2
    [[ ! -x $TW_QEMU10_PREFIX/usr/bin/qemu-system-x86_64 ]] || QEMUS="7.2 10"
fi
read -r -a qemus <<<"$QEMUS"
backends=("qemu-tap" "tapwire" "tapwire-no-offloads")
backend_args=("--backend qemu-tap" "--backend tapwire --tapwire $BIN" "--backend tapwire --tapwire $BIN --tapwire-args --offloads=none")
names=() args=()
for q in "${qemus[@]}"; do
    for i in "${!backends[@]}"; do
        names+=("${backends[$i]}@qemu-$q")
        args+=("${backend_args[$i]} --qemu $q")
    done
done
results=$(mktemp -d)
trap 'rm -rf "$results"' EXIT

for ((round = 1; round <= ROUNDS; round++)); do
    for i in "${!names[@]}"; do
        tw_log "round $round/$ROUNDS: ${names[$i]}"
        # shellcheck disable=SC2086 # the argument strings are meant to split
        if ! "$TW_REPO_ROOT/Tools/e2e.sh" ${args[$i]} --time "$TIME" --json > "$results/${names[$i]}.round$round.json"; then
            tw_warn "${names[$i]} round $round failed; see its run directory"
        fi
    done
done

median() { sort -n | awk '{ v[NR] = $1 } END { if (NR == 0) print "nan"; else if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
metric() { # metric NAME JQ-PATH
    # NAME.roundN.json: a NAME-prefix glob would also catch "tapwire-no-offloads" for "tapwire".
    cat "$results/$1".round*.json 2>/dev/null | jq -r "select(.ok == true) | $2 // empty" | median
}

{
    printf 'Real guest (TCG, 1 vCPU), %s rounds of %ss, medians; ratio = backend / qemu-tap under the same QEMU\n' "$ROUNDS" "$TIME"
    printf 'machine: %s, %s cores, kernel %s\n' "$(hostname)" "$(nproc)" "$(uname -r)"
    printf '%-32s %14s %14s %14s %14s %10s %10s\n' backend "host->guest" ratio "guest->host" ratio "ping min" ratio
    for q in "${qemus[@]}"; do
        base_h2g=$(metric "qemu-tap@qemu-$q" .iperf3_host_to_guest.gbps)
        base_g2h=$(metric "qemu-tap@qemu-$q" .iperf3_guest_to_host.gbps)
        base_ping=$(metric "qemu-tap@qemu-$q" .ping_host_to_guest_ms.min)
        for b in "${backends[@]}"; do
            name="$b@qemu-$q"
            h2g=$(metric "$name" .iperf3_host_to_guest.gbps)
            g2h=$(metric "$name" .iperf3_guest_to_host.gbps)
            ping=$(metric "$name" .ping_host_to_guest_ms.min)
            awk -v n="$name" -v a="$h2g" -v b="$g2h" -v p="$ping" -v ba="$base_h2g" -v bb="$base_g2h" -v bp="$base_ping" \
                'BEGIN { printf "%-32s %9.2f Gb/s %13.2fx %9.2f Gb/s %13.2fx %7.3f ms %9.2fx\n", n, a, a / ba, b, b / bb, p, p / bp }'
            printf 'RESULT bench=guest backend=%s h2g_gbps=%s g2h_gbps=%s ping_min_ms=%s\n' "$name" "$h2g" "$g2h" "$ping" >&2
        done
    done
} | tee "${OUT:-/dev/null}"
