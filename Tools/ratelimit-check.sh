#!/usr/bin/env bash
# Checks tapwire's guest-transmit rate limiter against what really reaches the TAP, and
# measures what the limiter costs per frame.
#
#   1. Accuracy: for 10 Mbit/s (1514-byte frames), 200 Mbit/s and 2 Gbit/s (64 KiB TSO
#      frames) a release tapwire runs in a private network namespace with
#      `--tap twrl0 --tx-bandwidth RATE`; `tapwire-perf transmit` (the guest) keeps its TX
#      ring full. The rate is the TAP's rx_bytes from /proc/net/dev read inside the namespace
#      (sysfs would show the root namespace's view) over a window that starts after a warm-up,
#      so the bucket's initial burst (80 KiB, or 5 ms of rate) is not counted. PASS when the
#      measured rate is within the tolerance and no frame was lost (every posted chain came
#      back used and every completed frame is counted on the TAP). The machine may be
#      shared: the table shows how long tapwire waited for a CPU (schedstat run delay), and a
#      run that failed while tapwire was starved (over 100 ms) is measured again (--attempts).
#   2. Cost: 64-byte frames with no limit vs a 100 Gbit/s limit that never throttles,
#      both into the TAP and in --sink mode (no TAP: the ring and limiter alone); frames/s,
#      wall-clock ns per frame, and tapwire's CPU time per frame (utime+stime).
#
# Traffic stays inside the namespace this script creates. Usage:
#   Tools/ratelimit-check.sh [--seconds N] [--warmup S] [--tolerance PCT]
#                            [--cost-seconds N] [--cost-runs N] [--no-cost] [--attempts N]
#                            [--wait-quiet N] [--nice N]
#                            [--tapwire BIN] [--perf BIN]
# Exit status: 0 all PASS, 1 a failure (or a setup error).
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

TAPWIRE=$TW_REPO_ROOT/.build/release/tapwire
PERF=$TW_REPO_ROOT/.build/release/tapwire-perf
WINDOW=5
WARMUP=1
TOLERANCE=3
COST_SECONDS=3
COST_RUNS=3
ATTEMPTS=3
STARVED_MS=100
DO_COST=1
WAIT_QUIET=0
NICE=() # --nice N: the measured processes' command prefix (tw_set_nice in lib/common.sh)
TAP=twrl0

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }

while (($#)); do
    case $1 in
        --seconds) WINDOW=$2; shift 2 ;;
        --warmup) WARMUP=$2; shift 2 ;;
        --tolerance) TOLERANCE=$2; shift 2 ;;
        --cost-seconds) COST_SECONDS=$2; shift 2 ;;
        --cost-runs) COST_RUNS=$2; shift 2 ;;
        --attempts) ATTEMPTS=$2; shift 2 ;;
        --no-cost) DO_COST=0; shift ;;
        --tapwire) TAPWIRE=$2; shift 2 ;;
        --perf) PERF=$2; shift 2 ;;
        --wait-quiet) WAIT_QUIET=$2; shift 2 ;;
        --nice) tw_set_nice "$2"; shift 2 ;;
        -h | --help) usage; exit 0 ;;
        *) tw_die "unknown argument '$1' (see --help)" ;;
    esac
done

tw_require_root
tw_ensure_packages ip:iproute2 jq:jq curl:curl taskset:util-linux awk:gawk
tw_ensure_release_tools "$TAPWIRE" "$PERF"

tw_install_traps
if ((${#NICE[@]})); then tw_measure_at_nice "$NICE_VALUE"; fi
WORK=$(mktemp -d /tmp/tapwire-ratelimit.XXXXXX)
tw_at_exit "rm -rf '$WORK'"
NS=twrl$$
tw_netns_create "$NS"
# No IPv6 chatter (router solicitations) on the TAP.
tw_netns_no_ipv6 "$NS"
# The guest loop and tapwire on different cores when there are two.
tw_pick_cpus
CLK_TCK=$(getconf CLK_TCK)

# ---------------------------------------------------------------- helpers

TAPWIRE_PID=
TAPWIRE_API=
# start_tapwire NAME ARGS...: tapwire in the namespace, pinned; waits for its socket.
start_tapwire() {
    local name=$1; shift
    SOCK=$WORK/$name.sock TAPWIRE_API=$WORK/$name.api TAPWIRE_LOG=$WORK/$name.log
    # taskset and `ip netns exec` both exec, so the pid is tapwire's own.
    tw_spawn "$TAPWIRE_LOG" "${NICE[@]}" taskset -c "$BACKEND_CPU" ip netns exec "$NS" "$TAPWIRE" \
        --socket-path "$SOCK" --api-socket "$TAPWIRE_API" --name "$name" "$@"
    TAPWIRE_PID=$TW_SPAWNED_PID
    if ! tw_wait_until 10 "$TAPWIRE_PID" "tapwire's socket $SOCK" tw_is_socket "$SOCK"; then
        tw_tail_log "$TAPWIRE_LOG" 20 "tapwire log"
        tw_die "tapwire ($*) did not start"
    fi
}

stop_tapwire() {
    tw_stop "$TAPWIRE_PID" 5
    TAPWIRE_PID=
}
# shellcheck disable=SC2016 # expanded when the cleanup runs
tw_at_exit '[[ -z $TAPWIRE_PID ]] || tw_stop "$TAPWIRE_PID" 3'

# proc_dev_rx_bytes: the TAP's rx_bytes as the namespace sees it.
proc_dev_rx_bytes() {
    ip netns exec "$NS" cat /proc/net/dev | awk -v ifc="$TAP:" '$1 == ifc { print $2; found = 1 } END { exit !found }'
}

# run_delay_ns PID: time the process's threads spent runnable but waiting for a CPU
# (schedstat field 2, summed over /proc/PID/task).
run_delay_ns() { cat "/proc/$1"/task/*/schedstat 2>/dev/null | awk '{ s += $2 } END { printf "%.0f\n", s }'; }

# background_busy_pct SECONDS: how busy the CPUs were (all processes, % of all cores) over a
# short sample before we start anything: other load on a shared machine skews every figure.
background_busy_pct() {
    local a b
    a=$(awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 + $9, $5 + $6 }' /proc/stat)
    sleep "$1"
    b=$(awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 + $9, $5 + $6 }' /proc/stat)
    awk -v a="$a" -v b="$b" 'BEGIN { split(a, x, " "); split(b, y, " "); busy = y[1] - x[1]; idle = y[2] - x[2]
        printf "%.0f\n", (busy + idle > 0) ? 100 * busy / (busy + idle) : 0 }'
}

# cpu_ticks PID: utime + stime (fields 14 and 15; the comm field has no spaces here).
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }

# metric JQ: a value from tapwire's /metrics.json (queue 1 is the guest's TX queue).
metric() { curl -sf --max-time 5 --unix-socket "$TAPWIRE_API" http://tapwire/metrics.json | jq -r "$1"; }

# perf_transmit OUT ARGS...: tapwire-perf transmit in the namespace (it reads the TAP's
# counters there), pinned to the guest core, JSON to OUT.
perf_transmit() {
    local out=$1; shift
    local rc=0
    tw_interruptible "${NICE[@]}" taskset -c "$GUEST_CPU" ip netns exec "$NS" "$PERF" transmit --socket "$SOCK" --json "$@" \
        >"$out" 2>"$out.err" || rc=$?
    if [[ ! -s $out ]] || ! jq -e . "$out" >/dev/null 2>&1; then
        tw_tail_log "$out.err" 20 "tapwire-perf stderr"
        tw_tail_log "$TAPWIRE_LOG" 20 "tapwire log"
        tw_die "tapwire-perf transmit $* failed (exit $rc) without a result"
    fi
    return "$rc"
}

fmt_rate() { awk -v b="$1" 'BEGIN {
    if (b >= 1e9) printf "%.4f Gbit/s", b / 1e9; else if (b >= 1e6) printf "%.4f Mbit/s", b / 1e6; else printf "%.1f kbit/s", b / 1e3 }'; }

# ---------------------------------------------------------------- 1. accuracy

# Other work on the machine competes with what we measure: say how busy it was, and with
# --wait-quiet N wait up to N seconds for it to calm down (under 15% busy) first.
BACKGROUND=$(background_busy_pct 1)
quiet_deadline=$((SECONDS + WAIT_QUIET))
while ((BACKGROUND > 15 && SECONDS < quiet_deadline)); do
    tw_log "the CPUs are ${BACKGROUND}% busy with other work; waiting for quiet (--wait-quiet)"
    sleep 4
    BACKGROUND=$(background_busy_pct 1)
done
if ((BACKGROUND > 15)); then
    tw_warn "the CPUs were ${BACKGROUND}% busy with other work before the run: the figures below are skewed by it$( ((${#NICE[@]})) || echo " (--nice -19 gives the measured processes priority over it)")"
fi

tw_log "rate accuracy: ${WARMUP}s warm-up, ${WINDOW}s window per rate, tolerance ${TOLERANCE}%"
failures=0
accuracy_rows=()
# limit-spec  bits/s  transmit-args  frame-label
cases=(
    "10Mbit 10000000 --frame-size=1514 1514 B"
    "200Mbit 200000000 --tso TSO 64 KiB"
    "2Gbit 2000000000 --tso TSO 64 KiB"
)
for c in "${cases[@]}"; do
    read -r spec bps args label <<<"$c"
    # A run in which tapwire spent more than STARVED_MS waiting for a CPU (other load on
    # the machine) says nothing about the limiter: such a run is repeated, up to ATTEMPTS.
    for ((attempt = 1; attempt <= ATTEMPTS; attempt++)); do
        start_tapwire "rl-$spec" --tap "$TAP" --tx-bandwidth "$spec"
        ip -n "$NS" link set "$TAP" up
        before=$(proc_dev_rx_bytes) || tw_die "$TAP is not in namespace $NS"
        out=$WORK/rate-$spec-$attempt.json
        rc=0
        wait0=$(run_delay_ns "$TAPWIRE_PID")
        # shellcheck disable=SC2086 # $args is one or two words on purpose
        perf_transmit "$out" $args --warmup "$WARMUP" --duration "$WINDOW" --tap "$TAP" || rc=$?
        wait1=$(run_delay_ns "$TAPWIRE_PID")
        after=$(proc_dev_rx_bytes)
        throttled=$(metric '.queues[1].throttled_events')
        drops=$(metric '[.queues[1].drops[]] | add')
        stop_tapwire
        starved_ms=$(((wait1 - wait0) / 1000000))
        measured=$(jq -r .tap_window_bits_per_second "$out")
        completions=$(jq -r .window_bits_per_second "$out")
        lost=$(jq -r '.posted - .completed + .completed_not_on_tap' "$out")
        whole_tool=$(jq -r .tap_rx_bytes "$out")
        error=$(awk -v m="$measured" -v l="$bps" 'BEGIN { printf "%+.2f", 100 * (m - l) / l }')
        verdict=PASS
        if ! awk -v e="$error" -v t="$TOLERANCE" 'BEGIN { exit !(e <= t && e >= -t) }'; then verdict=FAIL; fi
        if [[ $lost != 0 || $rc != 0 || $drops != 0 ]]; then verdict=FAIL; fi
        # The tool's whole-run TAP count and this script's own /proc/net/dev reading must agree.
        if [[ $((after - before)) != "$whole_tool" ]]; then
            tw_warn "$spec: /proc/net/dev says $((after - before)) bytes, tapwire-perf $whole_tool"
            verdict=FAIL
        fi
        tw_log "$spec (attempt $attempt): TAP $(fmt_rate "$measured"), error $error%, lost $lost, drops $drops, tapwire waited ${starved_ms} ms for a CPU: $verdict"
        [[ $verdict == FAIL && $lost == 0 && $starved_ms -gt $STARVED_MS && $attempt -lt $ATTEMPTS ]] || break
        tw_warn "$spec: tapwire was starved of CPU by other load (${starved_ms} ms run-queue wait); measuring again"
    done
    [[ $verdict == PASS ]] || failures=$((failures + 1))
    accuracy_rows+=("$(printf '%-12s %-11s %-17s %-17s %8s%%  %-4s %9s %8s  %s' \
        "$spec/s" "$label" "$(fmt_rate "$measured")" "$(fmt_rate "$completions")" "$error" "$lost" "$starved_ms" "$attempt" "$verdict")")
done

# ---------------------------------------------------------------- 2. cost

cost_rows=()
if ((DO_COST)); then
    tw_log "limiter cost: 64-byte frames, ${COST_RUNS} x ${COST_SECONDS}s per configuration (medians)"
    median() { sort -g | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
    for mode in tap sink; do
        declare -A fps=() cpu=()
        for ((run = 1; run <= COST_RUNS; run++)); do
            # Alternate the configurations so that drifting background load hits both alike.
            for limit in none 100Gbit; do
                backend_args=(--tap "$TAP")
                [[ $mode == sink ]] && backend_args=(--sink)
                [[ $limit == none ]] || backend_args+=(--tx-bandwidth "$limit")
                start_tapwire "cost-$mode-$limit" "${backend_args[@]}"
                [[ $mode == sink ]] || ip -n "$NS" link set "$TAP" up
                out=$WORK/cost-$mode-$limit-$run.json
                t0=$(cpu_ticks "$TAPWIRE_PID")
                perf_transmit "$out" --frame-size 64 --duration "$COST_SECONDS" ||
                    tw_die "cost run $mode/$limit lost frames: $(cat "$out")"
                t1=$(cpu_ticks "$TAPWIRE_PID")
                throttled=$(metric '.queues[1].throttled_events')
                stop_tapwire
                [[ $throttled == 0 ]] || tw_warn "$mode/$limit: the limiter throttled $throttled times (it should never)"
                frames=$(jq -r .completed "$out")
                fps[$limit]+="$(jq -r .frames_per_second "$out") "
                cpu[$limit]+="$(awk -v t=$((t1 - t0)) -v hz="$CLK_TCK" -v f="$frames" 'BEGIN { printf "%.1f", t / hz * 1e9 / f }') "
            done
        done
        base_fps='' base_cpu=''
        for limit in none 100Gbit; do
            f=$(tr ' ' '\n' <<<"${fps[$limit]}" | grep . | median)
            c=$(tr ' ' '\n' <<<"${cpu[$limit]}" | grep . | median)
            wall=$(awk -v f="$f" 'BEGIN { printf "%.1f", 1e9 / f }')
            delta=
            if [[ $limit == none ]]; then
                base_fps=$f base_cpu=$c
            else
                delta=$(awk -v f="$f" -v bf="$base_fps" -v c="$c" -v bc="$base_cpu" \
                    'BEGIN { printf "%+.1f ns wall, %+.1f ns CPU (%+.1f%% frames/s)", 1e9 / f - 1e9 / bf, c - bc, 100 * (f - bf) / bf }')
            fi
            cost_rows+=("$(printf '%-5s %-9s %14s %12s %14s   %s' "$mode" "$limit" \
                "$(awk -v f="$f" 'BEGIN { printf "%.0f", f }')" "$wall" "$c" "$delta")")
            tw_log "cost $mode/$limit: $f frames/s (runs: ${fps[$limit]}), tapwire CPU ns/frame ${cpu[$limit]}"
        done
        unset fps cpu
    done
fi

# ---------------------------------------------------------------- report

echo
echo "tapwire rate limiter: guest transmit, measured on the TAP (rx_bytes in /proc/net/dev of the namespace)"
echo "window ${WINDOW}s after ${WARMUP}s warm-up; PASS = within ${TOLERANCE}% and no frame lost"
echo "(rq-wait: ms tapwire waited for a CPU during the run; a starved run out of tolerance is repeated)"
printf '%-12s %-11s %-17s %-17s %9s  %-4s %9s %8s  %s\n' limit frames "measured (TAP)" "completions" error lost "rq-wait" attempts result
for row in "${accuracy_rows[@]}"; do echo "$row"; done
if ((DO_COST)); then
    echo
    echo "limiter cost per frame (64-byte frames, ring 256; medians of $COST_RUNS x ${COST_SECONDS}s; 100Gbit never throttles)"
    printf '%-5s %-9s %14s %12s %14s   %s\n' mode limit "frames/s" "ns/frame" "CPU ns/frame" "limit on vs off"
    for row in "${cost_rows[@]}"; do echo "$row"; done
    echo "(ns/frame = 1e9 / frames/s; CPU ns/frame = tapwire's utime+stime / frames; sink = no TAP)"
fi
echo "measured processes ran at: $( ((${#NICE[@]})) && echo "nice ${NICE[-1]} (own autogroup)" || echo "the default priority")"
echo "other work before the run: ${BACKGROUND}% of the CPUs busy"
echo "machine: $(nproc) cores, $(uname -r), $(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo), load average $(cut -d' ' -f1-3 /proc/loadavg)"
if ((failures)); then
    echo "RESULT: FAIL ($failures rate(s) out of tolerance or with lost frames)"
    exit 1
fi
echo "RESULT: PASS"
