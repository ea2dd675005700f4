#!/usr/bin/env bash
# Request/response latency with a real guest: `ping -f` from the host side into a QEMU guest,
# behind tapwire at its defaults, tapwire with every hold off, and QEMU's own TAP backend.
# One boot cannot serve several backends, so each round boots each backend in turn (the
# order rotates from round to round, so drift in the machine hits all alike) and floods it
# RUNS times. Prints each backend's mean of the average RTTs and the ratios.
# Usage: Tools/latency-guest.sh [--rounds N] [--runs N] [--count N] [--qemu 7.2|10|newest|PATH]
#                               [--tapwire BIN] [--defaults-args "ARGS"]
#   --defaults-args  tapwire's arguments for the "defaults" row (default "": the defaults)
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

ROUNDS=3
RUNS=2
COUNT=3000
QEMU=7.2
BIN=$TW_REPO_ROOT/.build/release/tapwire
DEFAULTS_ARGS=
ALL_ZERO_ARGS="--tx-poll 0 --rx-coalesce-usecs 0 --tx-coalesce-usecs 0"
while (($#)); do
    case $1 in
        --rounds) ROUNDS=$2; shift ;;
        --runs) RUNS=$2; shift ;;
        --count) COUNT=$2; shift ;;
        --qemu) QEMU=$2; shift ;;
        --tapwire) BIN=$2; shift ;;
        --defaults-args) DEFAULTS_ARGS=$2; shift ;;
        -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) tw_die "unknown option $1 (see --help)" ;;
    esac
    shift
done
for n in "$ROUNDS" "$RUNS" "$COUNT"; do [[ $n =~ ^[1-9][0-9]*$ ]] || tw_die "--rounds, --runs and --count take positive integers, not '$n'"; done
[[ -x $BIN ]] || tw_die "tapwire binary not found at $BIN (make release)"
tw_require_root
tw_ensure_packages ping:iputils-ping

results=$(mktemp -d /var/tmp/tapwire-latency-guest.XXXXXX)
E2E_PID=
trap '[[ -n $E2E_PID ]] && kill "$E2E_PID" 2>/dev/null; rm -rf "$results"' EXIT

LABELS=(defaults all-zero qemu-tap)
# boot LABEL: one guest behind that backend; RUNS flood pings, each average RTT (ms) into $results/LABEL.
boot() {
    local label=$1 log=$results/e2e.log pid ns='' i args=()
    case $label in
        defaults) args=(--tapwire "$BIN" --tapwire-args "$DEFAULTS_ARGS") ;;
        all-zero) args=(--tapwire "$BIN" --tapwire-args "$ALL_ZERO_ARGS") ;;
        qemu-tap) args=(--backend qemu-tap) ;;
    esac
    "$TW_REPO_ROOT/Tools/e2e.sh" "${args[@]}" --qemu "$QEMU" --time 1 --hold 3600 --out "$results/run-$label" >"$log" 2>&1 &
    pid=$!
    E2E_PID=$pid
    ns=$(tw_wait_held_guest "$log" "$pid" "$label")
    for ((i = 0; i < RUNS; i++)); do
        # rtt min/avg/max/mdev = 0.041/0.071/0.512/0.020 ms
        ip netns exec "$ns" ping -f -q -c "$COUNT" "$TW_GUEST_IP" | sed -n 's|^rtt [^=]*= [^/]*/\([^/]*\)/.*|\1|p' |
            tee -a "$results/$label" | sed "s/^/  $label: avg /; s/\$/ ms/"
    done
    kill "$pid"
    wait "$pid" 2>/dev/null || true
    E2E_PID=
}

for ((r = 0; r < ROUNDS; r++)); do
    tw_log "round $((r + 1))/$ROUNDS"
    for ((k = 0; k < ${#LABELS[@]}; k++)); do boot "${LABELS[(r + k) % ${#LABELS[@]}]}"; done
done

mean() { awk '{ s += $1; n++ } END { printf "%.4f", n ? s / n : 0 }' "$results/$1"; }
d=$(mean defaults)
z=$(mean all-zero)
q=$(mean qemu-tap)
printf 'ping -f -c %d host->guest, QEMU %s, %d rounds x %d floods per boot, mean of the average RTTs\n' "$COUNT" "$QEMU" "$ROUNDS" "$RUNS"
printf '%-10s %9s %s\n' backend "avg ms" "tapwire args"
printf '%-10s %9s [%s]\n' defaults "$d" "$DEFAULTS_ARGS" all-zero "$z" "$ALL_ZERO_ARGS" qemu-tap "$q" "(-netdev tap,vhost=off)"
awk -v d="$d" -v z="$z" -v q="$q" 'BEGIN {
    printf "defaults/all-zero: %.2fx (target <= 1.10x)\n", (z > 0 ? d / z : 0)
    printf "defaults/qemu-tap: %.2fx (target <= 1.00x)\n", (q > 0 ? d / q : 0)
    printf "all-zero/qemu-tap: %.2fx\n", (q > 0 ? z / q : 0) }'
printf 'RESULT bench=latency-guest defaults_ms=%s all_zero_ms=%s qemu_tap_ms=%s\n' "$d" "$z" "$q" >&2
