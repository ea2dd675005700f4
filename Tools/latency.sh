#!/usr/bin/env bash
# Round-trip latency through tapwire without a VM: guest TX -> tapwire -> TAP -> back into
# the TAP -> tapwire -> guest RX, measured by `tapwire-perf latency` (HdrHistogram).
#
# tapwire runs in a private network namespace with its TAP; tapwire-perf runs in the same
# namespace, plays the guest on tapwire's socket and, on the host side, echoes every frame it
# reads from the TAP straight back into it (AF_PACKET): no IP address, ARP or route needed.
# Two runs: the tool's guest and echo sleeping in poll() on the RX call eventfd and the packet
# socket (as a guest and a host would), then spinning instead (what is left is mostly tapwire's
# and the kernel's share). tapwire itself is event-driven in both.
#
# Usage: Tools/latency.sh [--count N] [--interval-us N] [--frame-size N] [--mergeable] [--tapwire-args "ARGS"]
#                         [--nice N] [--tapwire BIN] [--perf BIN]
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

TAPWIRE=$TW_REPO_ROOT/.build/release/tapwire
PERF=$TW_REPO_ROOT/.build/release/tapwire-perf
COUNT=10000
INTERVAL=0
FRAME=64
EXTRA=()
NICE=() # --nice N: the measured processes' command prefix (tw_set_nice in lib/common.sh)
TAPWIRE_EXTRA=()
TAP=twlat0

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }

while (($#)); do
    case $1 in
        --count) COUNT=$2; shift 2 ;;
        --interval-us) INTERVAL=$2; shift 2 ;;
        --tapwire-args) read -r -a TAPWIRE_EXTRA <<<"$2"; shift 2 ;;
        --frame-size) FRAME=$2; shift 2 ;;
        --mergeable) EXTRA+=(--mergeable); shift ;;
        --tapwire) TAPWIRE=$2; shift 2 ;;
        --perf) PERF=$2; shift 2 ;;
        --nice) tw_set_nice "$2"; shift 2 ;;
        -h | --help) usage; exit 0 ;;
        *) tw_die "unknown argument '$1' (see --help)" ;;
    esac
done

tw_require_root
tw_ensure_packages ip:iproute2 jq:jq taskset:util-linux
tw_ensure_release_tools "$TAPWIRE" "$PERF"

tw_install_traps
if ((${#NICE[@]})); then tw_measure_at_nice "$NICE_VALUE"; fi
WORK=$(mktemp -d /tmp/tapwire-latency.XXXXXX)
tw_at_exit "rm -rf '$WORK'"
NS=twlat$$
tw_netns_create "$NS"
tw_netns_no_ipv6 "$NS"
tw_pick_cpus

SOCK=$WORK/vhost.sock
tw_spawn "$WORK/tapwire.log" "${NICE[@]}" taskset -c "$BACKEND_CPU" ip netns exec "$NS" "$TAPWIRE" --socket-path "$SOCK" --tap "$TAP" "${TAPWIRE_EXTRA[@]}"
TAPWIRE_PID=$TW_SPAWNED_PID
tw_at_exit "tw_stop $TAPWIRE_PID 5"
if ! tw_wait_until 10 "$TAPWIRE_PID" "tapwire's socket" tw_is_socket "$SOCK"; then
    tw_tail_log "$WORK/tapwire.log" 20 "tapwire log"
    tw_die "tapwire did not start"
fi
ip -n "$NS" link set "$TAP" up

rows=()
for mode in sleep busy; do
    args=(--socket "$SOCK" --tap "$TAP" --count "$COUNT" --interval-us "$INTERVAL" --frame-size "$FRAME" --json "${EXTRA[@]}")
    [[ $mode == busy ]] && args+=(--busy-poll)
    out=$WORK/$mode.json
    read -r cpu0 _ < <(tw_task_counters "$TAPWIRE_PID")
    if ! tw_interruptible "${NICE[@]}" taskset -c "$GUEST_CPU" ip netns exec "$NS" "$PERF" latency "${args[@]}" >"$out" 2>"$out.err"; then
        tw_tail_log "$out.err" 20 "tapwire-perf stderr"
        tw_tail_log "$WORK/tapwire.log" 20 "tapwire log"
        [[ -s $out ]] || tw_die "tapwire-perf latency ($mode) failed"
        tw_warn "round trips were lost ($mode): $(jq -r .lost "$out")"
    fi
    read -r cpu1 _ < <(tw_task_counters "$TAPWIRE_PID")
    # Each round trip is two frames through tapwire: the guest's out to the TAP, the echo back in.
    rows+=("$(jq -r --arg m "$mode" --argjson cpu $((cpu1 - cpu0)) \
        '[$m, .round_trips, .lost, .min_us, .p50_us, .p90_us, .p99_us, .p99_9_us, .max_us, .mean_us,
          (if $cpu > 0 then 2 * .round_trips / ($cpu / 1e9) / 1000 else 0 end)] | @tsv' "$out")")
done

echo
echo "round trip guest -> tapwire -> $TAP -> echo -> tapwire -> guest, ${FRAME}-byte frames, interval ${INTERVAL} us (microseconds)"
printf '%-6s %8s %5s %8s %8s %8s %8s %8s %9s %8s %10s\n' mode trips lost min p50 p90 p99 p99.9 max mean kframes/s
for row in "${rows[@]}"; do
    # shellcheck disable=SC2086 # the tab-separated fields become printf's arguments
    printf '%-6s %8s %5s %8.1f %8.1f %8.1f %8.1f %8.1f %9.1f %8.1f %10.1f\n' $row
done
echo "(sleep: the tool's guest and echo block in poll() as a guest and a host would; busy: they spin; tapwire is event-driven in both;"
echo " kframes/s: thousands of frames per CPU-second of tapwire's threads)"
echo "machine: $(nproc) cores, $(uname -r), load average $(cut -d' ' -f1-3 /proc/loadavg)"
