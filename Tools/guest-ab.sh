#!/usr/bin/env bash
# A/B of two tapwire option sets with a real guest: boots alternate between A and B (ABBA
# order, so drift in the machine hits both alike), each boot runs iperf3 RUNS times, and the
# means and B/A are printed. For one option's effect; guest-bench.sh compares backends.
# Usage: Tools/guest-ab.sh --a "TAPWIRE ARGS" --b "TAPWIRE ARGS" [--pairs N] [--runs N]
#                          [--time SECONDS] [--reverse] [--tapwire BIN]
#   --reverse  guest->host (iperf3 -R) instead of host->guest
# Example: Tools/guest-ab.sh --a "--rx-coalesce-usecs 0 --tx-coalesce-usecs 0" --b ""
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

A_ARGS=
B_ARGS=
A_SET=0
B_SET=0
PAIRS=3
RUNS=2
TIME=6
REVERSE=()
BIN=$TW_REPO_ROOT/.build/release/tapwire
while (($#)); do
    case $1 in
        --a) A_ARGS=$2; A_SET=1; shift ;;
        --b) B_ARGS=$2; B_SET=1; shift ;;
        --pairs) PAIRS=$2; shift ;;
        --runs) RUNS=$2; shift ;;
        --time) TIME=$2; shift ;;
        --reverse) REVERSE=(-R) ;;
        --tapwire) BIN=$2; shift ;;
        *) tw_die "unknown option $1" ;;
    esac
    shift
done
((A_SET && B_SET)) || tw_die "give both --a \"ARGS\" and --b \"ARGS\" (either may be \"\" for the defaults)"
for n in "$PAIRS" "$RUNS" "$TIME"; do [[ $n =~ ^[1-9][0-9]*$ ]] || tw_die "--pairs, --runs and --time take positive integers, not '$n'"; done
[[ -x $BIN ]] || tw_die "tapwire binary not found at $BIN (make release)"
tw_require_root
tw_ensure_packages jq:jq

results=$(mktemp -d)
E2E_PID=
# A boot still up when we stop (an error, Ctrl-C) is stopped too: its own exit cleans up.
trap '[[ -n $E2E_PID ]] && kill "$E2E_PID" 2>/dev/null; rm -rf "$results"' EXIT

# boot LABEL ARGS: one guest behind tapwire with ARGS; RUNS iperf3 runs into $results/LABEL.
boot() {
    local label=$1 args=$2 log=$results/e2e.log pid ns='' i
    "$TW_REPO_ROOT/Tools/e2e.sh" --tapwire "$BIN" --tapwire-args "$args" --time 1 --hold 3600 \
        --out "$results/run-$label" >"$log" 2>&1 &
    pid=$!
    E2E_PID=$pid
    ns=$(tw_wait_held_guest "$log" "$pid" "$label")
    for ((i = 0; i < RUNS; i++)); do
        ip netns exec "$ns" iperf3 -c "$TW_GUEST_IP" -t "$TIME" --json "${REVERSE[@]}" |
            jq -r '.end.sum_received.bits_per_second / 1e9' | tee -a "$results/$label" | sed "s/^/  $label: /; s/\$/ Gbit\/s/"
    done
    kill "$pid"
    wait "$pid" 2>/dev/null || true
    E2E_PID=
}

for ((p = 1; p <= PAIRS; p++)); do
    tw_log "pair $p/$PAIRS"
    if ((p % 2)); then boot A "$A_ARGS"; boot B "$B_ARGS"; else boot B "$B_ARGS"; boot A "$A_ARGS"; fi
done

mean() { awk '{ s += $1; n++ } END { printf "%.3f", n ? s / n : 0 }' "$results/$1"; }
a=$(mean A)
b=$(mean B)
printf '%s, %d pairs of boots, %d x %ds iperf3 each\n' "$( ((${#REVERSE[@]})) && echo guest-\>host || echo host-\>guest)" "$PAIRS" "$RUNS" "$TIME"
printf 'A [%s]: %s Gbit/s\nB [%s]: %s Gbit/s\n' "$A_ARGS" "$a" "$B_ARGS" "$b"
awk -v a="$a" -v b="$b" 'BEGIN { printf "B/A: %.2fx\n", (a > 0 ? b / a : 0) }'
printf 'RESULT bench=guest-ab a_gbps=%s b_gbps=%s\n' "$a" "$b" >&2
