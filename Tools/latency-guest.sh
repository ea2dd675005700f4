#!/usr/bin/env bash
# Request/response latency, in one run: `ping -f` from the host into a real QEMU guest behind
# tapwire at its defaults, tapwire with every hold off, and QEMU's own TAP backend; then
# `tapwire-perf latency` (Tools/latency.sh) at the two tapwire settings. One boot cannot serve
# several backends, so each round boots each backend in turn (the order rotates from round to
# round, so drift in the machine hits all alike) and floods it RUNS times.
#
# Beside each figure it counts what a round trip costs, to show where its time goes:
#   CPU      the backend's and QEMU's threads' time on a CPU (schedstat), and frames per
#            CPU-second of both together (a flood ping moves 2 frames per round trip);
#   wait     their time runnable but waiting for a CPU (schedstat);
#   wake-ups their threads' voluntary context switches (a thread that slept and was woken);
#   syscalls their system calls (perf stat raw_syscalls:sys_enter; "-" without perf);
#   kicks and interrupts as tapwire counted them (its API; QEMU's TAP backend has no such count);
#   idle     tapwire's CPU over 3 s after each boot, before any flood (it must be 0%).
# Usage: Tools/latency-guest.sh [--rounds N] [--runs N] [--count N] [--tool-count N]
#                               [--qemu 7.2|10|newest|PATH] [--tapwire BIN] [--defaults-args "ARGS"]
#   --defaults-args  tapwire's arguments for the "defaults" row (default "": the defaults)
#   --tool-count N   round trips per tapwire-perf latency run (default 2000; 0: skip the tool)
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

ROUNDS=3
RUNS=2
COUNT=3000
TOOL_COUNT=2000
QEMU=7.2
BIN=$TW_REPO_ROOT/.build/release/tapwire
CTL=$TW_REPO_ROOT/.build/release/tapwirectl
DEFAULTS_ARGS=
ALL_ZERO_ARGS="--tx-poll 0 --rx-coalesce-usecs 0 --tx-coalesce-usecs 0"
IDLE_SECONDS=3
while (($#)); do
    case $1 in
        --rounds) ROUNDS=$2; shift ;;
        --runs) RUNS=$2; shift ;;
        --count) COUNT=$2; shift ;;
        --tool-count) TOOL_COUNT=$2; shift ;;
        --qemu) QEMU=$2; shift ;;
        --tapwire) BIN=$2; CTL=$(dirname "$2")/tapwirectl; shift ;;
        --defaults-args) DEFAULTS_ARGS=$2; shift ;;
        -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) tw_die "unknown option $1 (see --help)" ;;
    esac
    shift
done
for n in "$ROUNDS" "$RUNS" "$COUNT"; do [[ $n =~ ^[1-9][0-9]*$ ]] || tw_die "--rounds, --runs and --count take positive integers, not '$n'"; done
[[ $TOOL_COUNT =~ ^[0-9]+$ ]] || tw_die "--tool-count takes a number, not '$TOOL_COUNT'"
[[ -x $BIN && -x $CTL ]] || tw_die "tapwire or tapwirectl not found beside $BIN (make release)"
tw_require_root
tw_ensure_packages ping:iputils-ping jq:jq perf:linux-perf

# perf reads tracepoints through tracefs; without it (or perf) the syscall columns show "-".
mountpoint -q /sys/kernel/tracing 2>/dev/null || mount -t tracefs nodev /sys/kernel/tracing 2>/dev/null || true
PERF_OK=0
perf stat -x, -e raw_syscalls:sys_enter -- true >/dev/null 2>&1 && PERF_OK=1
((PERF_OK)) || tw_warn "perf cannot count raw_syscalls:sys_enter here: the syscall columns show '-'"

results=$(mktemp -d /var/tmp/tapwire-latency-guest.XXXXXX)
E2E_PID=
trap '[[ -n $E2E_PID ]] && kill "$E2E_PID" 2>/dev/null; rm -rf "$results"' EXIT

# syscalls_start PID NAME: counts PID's system calls until syscalls_stop; then
# syscalls_count NAME prints the count ("-" without perf). syscalls_stop runs in this shell,
# not in $(...), so that it can wait for perf to write its count.
PERF_PIDS=()
syscalls_start() {
    rm -f "$results/perf-$2"
    ((PERF_OK)) || return 0
    perf stat -x, -e raw_syscalls:sys_enter -p "$1" -o "$results/perf-$2" &
    PERF_PIDS+=($!)
}
syscalls_stop() {
    ((${#PERF_PIDS[@]})) || return 0
    kill -INT "${PERF_PIDS[@]}" 2>/dev/null || true
    wait "${PERF_PIDS[@]}" 2>/dev/null || true
    PERF_PIDS=()
}
syscalls_count() {
    [[ -f $results/perf-$1 ]] || { echo -; return; }
    awk -F, '/raw_syscalls:sys_enter/ { print ($1 ~ /^[0-9]+$/ ? $1 : "-"); found = 1 } END { if (!found) print "-" }' "$results/perf-$1"
}
# tapwire_counts SOCKET: "KICKS INTERRUPTS" over all queues ("- -" without an API socket).
tapwire_counts() {
    [[ -S ${1:-} ]] || { echo "- -"; return; }
    "$CTL" --api-socket "$1" --json stats | jq -r '[([.queues[].kicks] | add), ([.queues[].interrupts] | add)] | @tsv'
}
# delta A B: B - A, or "-" when either is not a number.
delta() { [[ $1 =~ ^[0-9]+$ && $2 =~ ^[0-9]+$ ]] && echo $(($2 - $1)) || echo -; }

LABELS=(defaults all-zero qemu-tap)
# boot LABEL: one guest behind that backend; RUNS flood pings. Each appends to $results/LABEL
# "avg_ms backend_cpu_ns qemu_cpu_ns backend_wakeups qemu_wakeups backend_syscalls qemu_syscalls kicks interrupts
#  backend_wait_ns qemu_wait_ns".
boot() {
    local label=$1 log=$results/e2e.log pid ns='' i args=() api='' qpid bpid
    case $label in
        defaults) api=$results/api.sock; args=(--tapwire "$BIN" --tapwire-args "$DEFAULTS_ARGS --api-socket $api") ;;
        all-zero) api=$results/api.sock; args=(--tapwire "$BIN" --tapwire-args "$ALL_ZERO_ARGS --api-socket $api") ;;
        qemu-tap) args=(--backend qemu-tap) ;;
    esac
    "$TW_REPO_ROOT/Tools/e2e.sh" "${args[@]}" --qemu "$QEMU" --time 1 --hold 3600 --out "$results/run-$label" >"$log" 2>&1 &
    pid=$!
    E2E_PID=$pid
    ns=$(tw_wait_held_guest "$log" "$pid" "$label")
    read -r qpid bpid < <(sed -n 's/.*holding guest .*qemu pid \([0-9]*\), backend pid \([0-9a-z]*\)).*/\1 \2/p' "$log")
    [[ $bpid == none ]] && bpid=
    if [[ -n $bpid ]]; then
        # An idle guest (nothing sent to it) must cost tapwire no CPU: its threads sleep.
        local i0 i1
        read -r i0 _ < <(tw_task_counters "$bpid")
        sleep "$IDLE_SECONDS"
        read -r i1 _ < <(tw_task_counters "$bpid")
        echo $((i1 - i0)) >>"$results/idle-$label"
    fi
    for ((i = 0; i < RUNS; i++)); do
        local q0 q1 b0='0 0 0' b1='0 0 0' k0 k1 avg qsys bsys=-
        q0=$(tw_task_counters "$qpid")
        [[ -z $bpid ]] || b0=$(tw_task_counters "$bpid")
        k0=$(tapwire_counts "$api")
        syscalls_start "$qpid" qemu
        [[ -z $bpid ]] || syscalls_start "$bpid" backend
        # rtt min/avg/max/mdev = 0.041/0.071/0.512/0.020 ms
        avg=$(ip netns exec "$ns" ping -f -q -c "$COUNT" "$TW_GUEST_IP" | sed -n 's|^rtt [^=]*= [^/]*/\([^/]*\)/.*|\1|p')
        syscalls_stop
        qsys=$(syscalls_count qemu)
        [[ -z $bpid ]] || bsys=$(syscalls_count backend)
        q1=$(tw_task_counters "$qpid")
        [[ -z $bpid ]] || b1=$(tw_task_counters "$bpid")
        k1=$(tapwire_counts "$api")
        [[ -n $avg ]] || tw_die "ping -f into the guest gave no RTT ($label)"
        read -r qc0 qw0 qd0 <<<"$q0"; read -r qc1 qw1 qd1 <<<"$q1"
        read -r bc0 bw0 bd0 <<<"$b0"; read -r bc1 bw1 bd1 <<<"$b1"
        read -r kk0 ki0 <<<"$k0"; read -r kk1 ki1 <<<"$k1"
        echo "$avg $((bc1 - bc0)) $((qc1 - qc0)) $((bw1 - bw0)) $((qw1 - qw0)) $bsys $qsys $(delta "$kk0" "$kk1") $(delta "$ki0" "$ki1") $((bd1 - bd0)) $((qd1 - qd0))" >>"$results/$label"
        echo "  $label: avg $avg ms"
    done
    kill "$pid"
    wait "$pid" 2>/dev/null || true
    E2E_PID=
}

# tool LABEL ARGS: one Tools/latency.sh run; appends "p50_us p99_us kframes_per_cpu_s" (its sleep row) to $results/tool-LABEL.
tool() {
    local label=$1 args=$2 out=$results/tool.out
    "$TW_REPO_ROOT/Tools/latency.sh" --count "$TOOL_COUNT" --tapwire "$BIN" --perf "$(dirname "$BIN")/tapwire-perf" \
        --tapwire-args "$args" >"$out" 2>&1 || { cat "$out" >&2; tw_die "Tools/latency.sh failed ($label)"; }
    awk '$1 == "sleep" { print $5, $7, $NF }' "$out" | tee -a "$results/tool-$label" | sed "s/^/  tool $label: p50 p99 kframes\/cpu-s /"
}

for ((r = 0; r < ROUNDS; r++)); do
    tw_log "round $((r + 1))/$ROUNDS"
    for ((k = 0; k < ${#LABELS[@]}; k++)); do boot "${LABELS[(r + k) % ${#LABELS[@]}]}"; done
    if ((TOOL_COUNT)); then
        if ((r % 2)); then tool all-zero "$ALL_ZERO_ARGS"; tool defaults "$DEFAULTS_ARGS"
        else tool defaults "$DEFAULTS_ARGS"; tool all-zero "$ALL_ZERO_ARGS"; fi
    fi
done

# summary LABEL: the mean RTT, then per round trip: CPU (us) of the backend and of QEMU,
# frames per CPU-second of both, wake-ups and syscalls of each, kicks and interrupts.
summary() {
    awk -v label="$1" -v count="$COUNT" '
        function per(sum, n) { return n ? sprintf("%.2f", sum / n) : "-" }
        { rtt += $1; bc += $2; qc += $3; bw += $4; qw += $5; n++; trips += count
          if ($6 != "-") { bs += $6; nbs += count }; if ($7 != "-") { qs += $7; nqs += count }
          if ($8 != "-") { kk += $8; nk += count }; if ($9 != "-") { ki += $9; ni += count }; bd += $10; qd += $11 }
        END { printf "%-10s %8.4f %8.1f %8.1f %9.0f %6s %6s %7s %7s %6s %6s %8.1f %8.1f\n", label, rtt / n,
              bc / trips / 1000, qc / trips / 1000, (bc + qc) ? 2 * trips / ((bc + qc) / 1e9) : 0,
              per(bw, trips), per(qw, trips), per(bs, nbs), per(qs, nqs), per(kk, nk), per(ki, ni),
              bd / trips / 1000, qd / trips / 1000 }' "$results/$1"
}
mean() { awk '{ s += $1; n++ } END { printf "%.4f", n ? s / n : 0 }' "$results/$1"; }
d=$(mean defaults)
z=$(mean all-zero)
q=$(mean qemu-tap)
echo
printf 'ping -f -c %d host->guest, QEMU %s, %d rounds x %d floods per boot; per round trip: CPU us, wake-ups, syscalls, kicks, interrupts\n' "$COUNT" "$QEMU" "$ROUNDS" "$RUNS"
printf '%-10s %8s %8s %8s %9s %6s %6s %7s %7s %6s %6s %8s %8s\n' backend "avg ms" "cpu:bk" "cpu:qemu" "frames/s" "wk:bk" "wk:qemu" "sys:bk" "sys:qemu" kicks irqs "wait:bk" "wait:qemu"
for label in "${LABELS[@]}"; do summary "$label"; done
echo "(bk: tapwire's threads, none for qemu-tap; frames/s: frames per CPU-second of the backend and QEMU together;"
echo " wait: us the threads were runnable but waited for a CPU)"
for label in defaults all-zero; do
    awk -v label="$label" -v secs="$IDLE_SECONDS" '{ s += $1; n++ } END {
        printf "idle guest, %s: tapwire %.3f%% of a CPU (%d x %d s)\n", label, n ? s / n / (secs * 1e9) * 100 : 0, n, secs }' "$results/idle-$label"
done
echo "defaults: [$DEFAULTS_ARGS]  all-zero: [$ALL_ZERO_ARGS]  qemu-tap: -netdev tap,vhost=off"
awk -v d="$d" -v z="$z" -v q="$q" 'BEGIN {
    printf "defaults/all-zero: %.2fx (target <= 1.10x)\n", (z > 0 ? d / z : 0)
    printf "defaults/qemu-tap: %.2fx (target <= 1.00x)\n", (q > 0 ? d / q : 0)
    printf "all-zero/qemu-tap: %.2fx (target <= 1.00x)\n", (q > 0 ? z / q : 0) }'
if ((TOOL_COUNT)); then
    med() { sort -n | awk '{ v[NR] = $1 } END { print NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
    dp50=$(cut -d' ' -f1 "$results/tool-defaults" | med); zp50=$(cut -d' ' -f1 "$results/tool-all-zero" | med)
    dp99=$(cut -d' ' -f2 "$results/tool-defaults" | med); zp99=$(cut -d' ' -f2 "$results/tool-all-zero" | med)
    dcpu=$(cut -d' ' -f3 "$results/tool-defaults" | med); zcpu=$(cut -d' ' -f3 "$results/tool-all-zero" | med)
    echo
    printf 'tapwire-perf latency, %d round trips x %d runs each, medians (us; kframes per tapwire CPU-second)\n' "$TOOL_COUNT" "$ROUNDS"
    printf '%-10s %8s %8s %8s\n' setting p50 p99 kframes/s defaults "$dp50" "$dp99" "$dcpu" all-zero "$zp50" "$zp99" "$zcpu"
    awk -v a="$dp50" -v b="$zp50" -v c="$dp99" -v e="$zp99" 'BEGIN {
        printf "defaults/all-zero: p50 %.2fx (target <= 1.20x), p99 %.2fx (target <= 1.50x)\n", (b > 0 ? a / b : 0), (e > 0 ? c / e : 0) }'
fi
printf 'RESULT bench=latency-guest defaults_ms=%s all_zero_ms=%s qemu_tap_ms=%s\n' "$d" "$z" "$q" >&2
