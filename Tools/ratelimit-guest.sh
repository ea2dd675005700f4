#!/usr/bin/env bash
# Per-VM rate limiting with a real guest: iperf3 host->guest under --rx-bandwidth and
# guest->host under --tx-bandwidth must give TCP goodput between 90% and 103% of the limit.
# Usage: Tools/ratelimit-guest.sh [--rate-mbit 100] [--time 8] [--tapwire BIN]
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

RATE=100
TIME=8
BIN=${TAPWIRE_BIN:-$TW_REPO_ROOT/.build/release/tapwire}
while (($#)); do
    case $1 in
        --rate-mbit) RATE=$2; shift ;;
        --time) TIME=$2; shift ;;
        --tapwire) BIN=$2; shift ;;
        *) tw_die "unknown option $1" ;;
    esac
    shift
done
tw_ensure_packages jq:jq

run() { # run DIRECTION-FLAG JQ-FIELD -> goodput in Mbit/s
    "$TW_REPO_ROOT/Tools/e2e.sh" --backend tapwire --tapwire "$BIN" --time "$TIME" --json \
        --tapwire-args "$1 ${RATE}Mbit" | jq -r "$2 * 1000"
}

failures=0
report() { # report LABEL MBIT
    local verdict
    verdict=$(awk -v g="$2" -v r="$RATE" 'BEGIN { p = 100 * g / r; printf "%.1f%% of the limit: %s", p, (p >= 90 && p <= 103) ? "PASS" : "FAIL" }')
    printf '%-34s limit %4s Mbit/s  goodput %7.1f Mbit/s  %s\n' "$1" "$RATE" "$2" "$verdict"
    [[ $verdict == *PASS ]] || failures=$((failures + 1))
}

h2g=$(run --rx-bandwidth .iperf3_host_to_guest.gbps)
report "host->guest with --rx-bandwidth" "$h2g"
g2h=$(run --tx-bandwidth .iperf3_guest_to_host.gbps)
report "guest->host with --tx-bandwidth" "$g2h"
((failures == 0)) || tw_die "$failures rate-limit check(s) outside 90%..103%"
echo "ratelimit-guest: PASS"
