#!/usr/bin/env bash
# tapwire against DPDK's own vhost-user backend, driven by the same DPDK frontend, in one run.
#
# The "guest" is DPDK testpmd with a virtio-user port (a vhost-user frontend, no VM). The
# backend is either tapwire or testpmd with DPDK's vhost PMD (+ its TAP PMD). Every TAP lives
# in a network namespace this script creates; no traffic leaves it.
#
#   (a) guest transmit -> TAP, 64-byte frames: frontend txonly; tapwire --tap vs DPDK
#       vhost PMD + TAP PMD forwarding (io). Counted on the TAP: rx_packets in /proc/net/dev
#       of the namespace, over a fixed window after a warm-up.
#   (b) the same with 1500-byte frames.
#   (c) guest transmit into the backend alone (64 B): tapwire --sink vs the vhost PMD in rxonly
#       mode. Counted at the frontend (TX-packets: frames it put in the ring; nothing leaves a
#       sink, so every one is consumed), cross-checked with tapwire's own counter
#       (/metrics.json on --api-socket).
#   (d) host -> guest through the TAP (64 B): `tapwire-perf inject` writes frames into the
#       TAP with AF_PACKET; frontend rxonly. Counted at the frontend (RX-packets: what the guest
#       got). Two cores, and the frontend busy-polls one: the generator shares the backend's
#       core (--inject-cpu), at the same priority. A busy-polling backend then gets half of
#       that core, an event-driven one what it needs; the TAP queue is made long (txqueuelen
#       10000, env TXQUEUELEN) for both so that it absorbs a scheduler slice of the generator.
#   (e) tapwire's frames per CPU-second in each row (utime+stime from /proc/PID/stat over the
#       window), next to DPDK's (a busy-polling backend burns its core whatever it does).
#
# The window opens and closes when the frontend prints its statistics (testpmd --stats-period
# 1 prints about every 2 s here), so testpmd's cumulative counters cover exactly the window.
# DPDK busy-polls, tapwire is event-driven: the frontend's forwarding lcore is core 0, the
# backend (tapwire via taskset, or DPDK's forwarding lcore) core 1. Needs 2 cores, root,
# hugepages (set up here and put back as they were), `dpdk-testpmd` (Debian: dpdk-dev).
# On a machine busy with other work use --nice -19 (see below); BENCH_DEBUG=1 logs raw counters.
#
# --port-security: the cost of port security (issue #16). Each row runs tapwire twice, in
#   turn, instead of tapwire and DPDK: "tapwire" with --mac, and "tw+ps" with --mac and
#   --allowed-ips (which turns port security on), so the only difference is the check. The
#   frontend's frames are fixed so that they pass: virtio-user's mac= devarg is FE_MAC (the
#   source MAC of txonly's frames, and tapwire's --mac), txonly's --tx-ip is TX_IP_SRC,TX_IP_DST
#   (--allowed-ips is TX_IP_SRC/32), --eth-peer a unicast neighbour. In each tw+ps run the
#   script checks, on the API, that port security is on and that no frame was dropped by it
#   (every tapwire_drops_total of a port-security reason is 0; a filter that drops everything
#   would measure nothing), then narrows --allowed-ips live and checks that spoofed_ip drops
#   start (a filter that checks nothing would not cost anything either). The report gives each
#   row's backend CPU time per frame both ways and their ratio (target at 64 B: under 5%).
#   --repeat N runs each pair N times alternately and reports medians (default 3 with it).
#
# Usage: Tools/bench-dpdk.sh [--seconds N] [--warmup S] [--rows abcd] [--wait-quiet N] [--nice N]
#                            [--inject-cpu N] [--tapwire BIN] [--perf BIN] [--tapwire-args "ARGS"]
#                            [--scrape-ms N] [--port-security] [--repeat N]
# --tapwire-args adds options to every tapwire run, e.g. "--tap-io writev" to measure the
# one-writev-per-frame path instead of io_uring batches.
# --scrape-ms N: the cost of being scraped (issue #18). Each row runs tapwire twice, in turn,
#   instead of tapwire and DPDK: "tapwire" alone and "tw+scr" with GET /metrics on its
#   --api-socket every N ms during the window (as a Prometheus would); the report gives both
#   rates, their ratio and how many scrapes were answered. --repeat N (default 3) as above.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

TAPWIRE=$TW_REPO_ROOT/.build/release/tapwire
PERF=$TW_REPO_ROOT/.build/release/tapwire-perf
WINDOW=5
WARMUP=2
ROWS=abcd
WAIT_QUIET=0
INJECT_CPU=1
TXQUEUELEN=${TXQUEUELEN:-10000}
NICE=() # --nice N: the measured processes' command prefix (tw_set_nice in lib/common.sh)
TAPWIRE_ARGS=()
TAP=twb0
SCRAPE_MS=0
PORT_SECURITY=0
REPEAT=''
# The frontend's frames (all modes; --port-security allows exactly these). 198.18.0.0/15 is
# the benchmarking range (RFC 2544); the MACs are locally administered.
FE_MAC=02:74:77:62:00:01
PEER_MAC=02:74:77:62:00:02
TX_IP_SRC=198.18.0.1
TX_IP_DST=198.18.0.2
# Drop reasons port security counts under (PortViolation.label).
PS_REASONS='spoofed_mac|spoofed_ip|spoofed_arp|rogue_dhcp|rogue_ra|not_for_this_vm|other_protocol'

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }

while (($#)); do
    case $1 in
        --seconds) WINDOW=$2; shift 2 ;;
        --warmup) WARMUP=$2; shift 2 ;;
        --rows) ROWS=$2; shift 2 ;;
        --inject-cpu) INJECT_CPU=$2; shift 2 ;;
        --tapwire) TAPWIRE=$2; shift 2 ;;
        --perf) PERF=$2; shift 2 ;;
        --tapwire-args) read -r -a TAPWIRE_ARGS <<<"$2"; shift 2 ;;
        --wait-quiet) WAIT_QUIET=$2; shift 2 ;;
        --scrape-ms) SCRAPE_MS=$2; shift 2 ;;
        --port-security) PORT_SECURITY=1; shift ;;
        --repeat) REPEAT=$2; shift 2 ;;
        --nice) tw_set_nice "$2"; shift 2 ;;
        -h | --help) usage; exit 0 ;;
        *) tw_die "unknown argument '$1' (see --help)" ;;
    esac
done

((!PORT_SECURITY || !SCRAPE_MS)) || tw_die "--port-security and --scrape-ms are separate comparisons: give one"
[[ -n $REPEAT ]] || REPEAT=$((PORT_SECURITY || SCRAPE_MS ? 3 : 1))
((REPEAT >= 1)) || tw_die "--repeat must be at least 1"
if ((PORT_SECURITY)); then KINDS=(tapwire tw+ps); elif ((SCRAPE_MS)); then KINDS=(tapwire tw+scr); else KINDS=(tapwire dpdk); fi
tw_require_root
(($(nproc) >= 2)) || tw_die "needs 2 cores: DPDK's frontend and backend both busy-poll (on one core they share it and measure nothing)"
tw_ensure_packages dpdk-testpmd:dpdk-dev ip:iproute2 jq:jq curl:curl taskset:util-linux stdbuf:coreutils awk:gawk
tw_ensure_release_tools "$TAPWIRE" "$PERF"
if ((PORT_SECURITY)); then
    [[ $("$TAPWIRE" --help 2>&1) == *--allowed-ips* ]] || tw_die "$TAPWIRE has no --allowed-ips (port security): rebuild it"
fi

tw_install_traps
if ((${#NICE[@]})); then tw_measure_at_nice "$NICE_VALUE"; fi
STARTED=$(tw_now)
WORK=$(mktemp -d /tmp/tapwire-bench-dpdk.XXXXXX)
tw_at_exit "rm -rf '$WORK'"
SOCK=$WORK/vhost.sock
API=$WORK/api.sock
FE_PREFIX=twbfe$$
BE_PREFIX=twbbe$$

# ---------------------------------------------------------------- hugepages

# Two testpmd processes with -m 512 each: 512 pages of 2 MiB, plus a margin.
tw_ensure_hugepages 600
# DPDK leaves its page files and runtime directory behind; ours carry our prefixes.
tw_at_exit "rm -f '$HUGE_DIR'/${FE_PREFIX}map_* '$HUGE_DIR'/${BE_PREFIX}map_*; rm -rf /var/run/dpdk/$FE_PREFIX /var/run/dpdk/$BE_PREFIX"

# ---------------------------------------------------------------- namespace

NS=twbd$$
tw_netns_create "$NS"
tw_netns_no_ipv6 "$NS"

# ---------------------------------------------------------------- processes

BACKEND_PID='' FRONTEND_PID='' INJECT_PID='' SCRAPER_PID=''
stop_all() {
    stop_scraper
    [[ -z $FRONTEND_PID ]] || tw_stop "$FRONTEND_PID" 10
    [[ -z $INJECT_PID ]] || tw_stop "$INJECT_PID" 5
    [[ -z $BACKEND_PID ]] || tw_stop "$BACKEND_PID" 10
    FRONTEND_PID='' INJECT_PID='' BACKEND_PID=''
    rm -f "$SOCK" "$API"
}
tw_at_exit stop_all

is_tapwire() { [[ $1 == tapwire || $1 == tw+ps || $1 == tw+scr ]]; }

# start_backend KIND MODE LOG: KIND tapwire|tw+ps|dpdk, MODE tap|sink.
start_backend() {
    local kind=$1 mode=$2 log=$3
    if is_tapwire "$kind"; then
        local args=(--tap "$TAP")
        [[ $mode == sink ]] && args=(--sink)
        # With --port-security both tapwire runs offer the same MAC; tw+ps adds the check.
        ((PORT_SECURITY)) && args+=(--mac "$FE_MAC")
        [[ $kind == tw+ps ]] && args+=(--allowed-ips "$TX_IP_SRC/32")
        # taskset and `ip netns exec` exec: the pid is tapwire's.
        tw_spawn "$log" "${NICE[@]}" taskset -c 1 ip netns exec "$NS" "$TAPWIRE" --socket-path "$SOCK" --api-socket "$API" "${args[@]}" "${TAPWIRE_ARGS[@]}"
    else
        local vdevs=(--vdev "net_vhost0,iface=$SOCK") fwd=rxonly
        [[ $mode == tap ]] && { vdevs+=(--vdev "net_tap0,iface=$TAP"); fwd=io; }
        # The TAP PMD creates its TAP in the namespace testpmd runs in. --main-lcore 0 leaves
        # lcore 1 to forward. stdbuf: stats lines reach the log as they are printed.
        tw_spawn "$log" "${NICE[@]}" ip netns exec "$NS" stdbuf -oL dpdk-testpmd --file-prefix="$BE_PREFIX" -m 512 --no-pci \
            "${vdevs[@]}" -l 0-1 --main-lcore 0 -- --forward-mode="$fwd" --auto-start --stats-period=1 \
            --nb-cores=1 --total-num-mbufs=32768
    fi
    BACKEND_PID=$TW_SPAWNED_PID
    if ! tw_wait_until 30 "$BACKEND_PID" "the $kind backend's socket" tw_is_socket "$SOCK"; then
        tw_tail_log "$log" 30 "$kind backend log"
        tw_die "the $kind backend did not start"
    fi
    if [[ $mode == tap ]]; then
        tw_wait_until 10 "$BACKEND_PID" "$TAP in $NS" tw_netns_has_link "$NS" "$TAP" || tw_die "no $TAP in $NS"
        ip -n "$NS" link set "$TAP" up
    fi
}

# start_frontend LOG TESTPMD_FORWARD_ARGS...: the DPDK guest, forwarding on core 0.
start_frontend() {
    local log=$1; shift
    tw_spawn "$log" "${NICE[@]}" stdbuf -oL dpdk-testpmd --file-prefix="$FE_PREFIX" -m 512 --no-pci --single-file-segments \
        --vdev "net_virtio_user0,path=$SOCK,queues=1,mac=$FE_MAC" -l 0-1 --main-lcore 1 -- \
        --auto-start --stats-period=1 --nb-cores=1 --total-num-mbufs=32768 "$@"
    FRONTEND_PID=$TW_SPAWNED_PID
    # testpmd says "<mode> packet forwarding - ports=N - cores=..." once it forwards.
    if ! tw_wait_until 40 "$FRONTEND_PID" "the DPDK frontend to start forwarding" tw_log_has "$log" "packet forwarding - ports="; then
        tw_tail_log "$log" 30 "frontend log"
        tw_die "the DPDK frontend did not start forwarding"
    fi
    if tw_log_has "$log" "forwarding - ports=0"; then
        tw_tail_log "$log" 30 "frontend log"
        tw_die "the DPDK frontend has no port: it could not connect to $SOCK"
    fi
}

# ---------------------------------------------------------------- counters

# tap_counters: "rx_packets tx_packets tx_dropped" of the TAP, as its namespace sees them
# (zeros when there is no TAP: the sink rows).
tap_counters() {
    ip netns exec "$NS" cat /proc/net/dev |
        awk -v ifc="$TAP:" '$1 == ifc { print $3, $11, $13; found = 1 } END { if (!found) print 0, 0, 0 }'
}
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
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
run_delay_ns() { cat "/proc/$1"/task/*/schedstat 2>/dev/null | awk '{ s += $2 } END { printf "%.0f\n", s }'; }
# testpmd_mark LOG: waits for testpmd's next statistics block and prints
# "<time> <cumulative TX-packets> <cumulative RX-packets>" of it (the frontend has one port).
testpmd_mark() {
    local log=$1 n deadline=$((SECONDS + 5))
    n=$(grep -ac 'Tx-pps:' "$log")
    while (($(grep -ac 'Tx-pps:' "$log") == n)); do
        ((SECONDS < deadline)) || return 1
        sleep 0.005
    done
    local now
    now=$(tw_now)
    tr -d '\r' <"$log" | awk -v t="$now" '$1 == "TX-packets:" { tx = $2 } $1 == "RX-packets:" { rx = $2 } END { print t, tx + 0, rx + 0 }'
}
# start_scraper FILE: one curl GETs /metrics every SCRAPE_MS ms (--rate; one process, so the
# scraper's own cost stays small), as many times as fit in the window; each answer's status
# code goes to FILE. stop_scraper waits for the last one.
start_scraper() {
    curl -s --max-time $((WINDOW + 10)) --unix-socket "$API" --rate "$((60000 / SCRAPE_MS))/m" -o /dev/null \
        -w '%{http_code}\n' "http://tapwire/metrics?scrape=[1-$((WINDOW * 1000 / SCRAPE_MS))]" >"$1" 2>/dev/null &
    SCRAPER_PID=$!
}
stop_scraper() {
    [[ -z $SCRAPER_PID ]] || wait "$SCRAPER_PID" 2>/dev/null || true
    SCRAPER_PID=''
}
tapwire_tx_frames() { curl -sf --max-time 5 --unix-socket "$API" http://tapwire/metrics.json | jq -r '.queues[1].frames'; }
# port_security_drops [REASON]: tapwire's frames dropped by port security (of REASON, or of
# any of its reasons), all queues, from /metrics.
port_security_drops() {
    local reasons=${1:-$PS_REASONS}
    curl -sf --max-time 5 --unix-socket "$API" http://tapwire/metrics |
        awk -v re="reason=\"($reasons)\"" '/^tapwire_drops_total[{]/ && $0 ~ re { n += $NF } END { printf "%d\n", n }'
}
# port_security_check ROW: in a tw+ps run, after the window. Port security must be on and
# have dropped nothing (the frames were measured, not discarded); then, told live that the
# frames' source is no longer allowed, it must drop them as spoofed_ip (it really checks).
port_security_check() {
    local row=$1 enabled drops before after
    enabled=$(curl -sf --max-time 5 --unix-socket "$API" http://tapwire/vm/port-security | jq -r .enabled)
    [[ $enabled == true ]] || tw_die "row $row/tw+ps: GET /vm/port-security says enabled=$enabled"
    drops=$(port_security_drops)
    ((drops == 0)) || tw_die "row $row/tw+ps: port security dropped $drops of testpmd's frames ($(curl -sf --unix-socket "$API" http://tapwire/metrics | grep '^tapwire_drops_total' | tr '\n' ' ')): the row measured drops, not the check"
    before=$(port_security_drops spoofed_ip)
    curl -sf --max-time 5 --unix-socket "$API" -X PATCH -H 'Content-Type: application/json' \
        -d "{\"allowed_ips\": [\"${TX_IP_DST}/32\"]}" http://tapwire/vm/port-security >/dev/null ||
        tw_die "row $row/tw+ps: PATCH /vm/port-security failed"
    sleep 0.5
    after=$(port_security_drops spoofed_ip)
    ((after > before)) || tw_die "row $row/tw+ps: with $TX_IP_SRC no longer allowed, nothing was dropped as spoofed_ip: the check is not running"
    PS_NOTE="port security on, 0 frames dropped in the window; $((after - before)) dropped as spoofed_ip in 0.5 s once $TX_IP_SRC was disallowed"
}

# ---------------------------------------------------------------- one measurement

# txonly's frames: from FE_MAC (the port's mac= devarg) and TX_IP_SRC, to a unicast neighbour.
TX_FRAMES=(--tx-ip="$TX_IP_SRC,$TX_IP_DST" --eth-peer="0,$PEER_MAC")

# measure ROW KIND: runs one backend for one row; sets RATE (frames/s at the row's counting
# point), OFFERED (frontend pps), BCPU (backend CPU cores), RQWAIT (backend run-queue wait ms),
# NOTE (extra facts).
measure() {
    local row=$1 kind=$2 mode=tap size=64 fe_args=() log_be=$WORK/$1-$2-backend.log log_fe=$WORK/$1-$2-frontend.log
    case $row in
        a) fe_args=(--forward-mode=txonly --txpkts=64 "${TX_FRAMES[@]}") ;;
        b) fe_args=(--forward-mode=txonly --txpkts=1500 "${TX_FRAMES[@]}") size=1500 ;;
        c) fe_args=(--forward-mode=txonly --txpkts=64 "${TX_FRAMES[@]}") mode=sink ;;
        d) fe_args=(--forward-mode=rxonly) ;;
    esac
    start_backend "$kind" "$mode" "$log_be"
    start_frontend "$log_fe" "${fe_args[@]}"
    if [[ $row == d ]]; then
        # A long TAP queue (both backends alike): the generator and the backend share a core,
        # and the queue must hold what arrives during the generator's scheduler slice.
        ip -n "$NS" link set "$TAP" txqueuelen "$TXQUEUELEN"
        tw_spawn "$WORK/$row-$kind-inject.log" "${NICE[@]}" taskset -c "$INJECT_CPU" ip netns exec "$NS" "$PERF" inject --tap "$TAP" \
            --frame-size "$size" --duration "$(awk -v w="$WARMUP" -v s="$WINDOW" 'BEGIN { print w + s + 6 }')" --json
        INJECT_PID=$TW_SPAWNED_PID
    fi
    sleep "$WARMUP"
    tw_alive "$FRONTEND_PID" || { tw_tail_log "$log_fe" 30 "frontend log"; tw_die "row $row/$kind: the frontend died"; }
    # The window opens and closes as the frontend prints its per-second statistics, so its
    # cumulative counters belong exactly to the window; the other counters are read right after.
    local m0 m1 c0 c1 w0 w1 k0='' k1='' tap0='' tap1=''
    m0=$(testpmd_mark "$log_fe") || tw_die "row $row/$kind: the frontend stopped printing statistics"
    c0=$(cpu_ticks "$BACKEND_PID") w0=$(run_delay_ns "$BACKEND_PID") tap0=$(tap_counters)
    is_tapwire "$kind" && [[ $row == c ]] && k0=$(tapwire_tx_frames)
    local scrapes=$WORK/$row-$kind-scrapes
    [[ $kind == tw+scr ]] && start_scraper "$scrapes"
    sleep "$WINDOW"
    m1=$(testpmd_mark "$log_fe") || tw_die "row $row/$kind: the frontend stopped printing statistics"
    stop_scraper
    c1=$(cpu_ticks "$BACKEND_PID") w1=$(run_delay_ns "$BACKEND_PID") tap1=$(tap_counters)
    is_tapwire "$kind" && [[ $row == c ]] && k1=$(tapwire_tx_frames)
    PS_NOTE=''
    [[ $kind == tw+ps ]] && port_security_check "$row"
    [[ -z ${BENCH_DEBUG:-} ]] || tw_log "row $row/$kind marks: [$m0] [$m1] tap [$tap0] [$tap1] cpu $c0 $c1"
    local t0 t1 ftx0 ftx1 frx0 frx1 secs
    read -r t0 ftx0 frx0 <<<"$m0"
    read -r t1 ftx1 frx1 <<<"$m1"
    secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')
    per_s() { awk -v d="$1" -v s="$secs" 'BEGIN { printf "%.0f", d / s }'; }
    # tap_counters: rx_packets tx_packets tx_dropped
    local tap_rx tap_tx tap_drop
    tap_rx=$(($(cut -d' ' -f1 <<<"$tap1") - $(cut -d' ' -f1 <<<"$tap0")))
    tap_tx=$(($(cut -d' ' -f2 <<<"$tap1") - $(cut -d' ' -f2 <<<"$tap0")))
    tap_drop=$(($(cut -d' ' -f3 <<<"$tap1") - $(cut -d' ' -f3 <<<"$tap0")))
    BCPU=$(awk -v d=$((c1 - c0)) -v hz="$(getconf CLK_TCK)" -v s="$secs" 'BEGIN { printf "%.2f", d / hz / s }')
    RQWAIT=$(((w1 - w0) / 1000000))
    case $row in
        a | b)
            RATE=$(per_s "$tap_rx")
            NOTE="the frontend put $(per_s $((ftx1 - ftx0)))/s in the ring"
            ;;
        c)
            RATE=$(per_s $((ftx1 - ftx0)))
            NOTE=''
            [[ -z $k0 ]] || NOTE="tapwire's own count: $(per_s $((k1 - k0)))/s"
            ;;
        d)
            RATE=$(per_s $((frx1 - frx0)))
            NOTE="TAP: the backend read $(per_s "$tap_tx")/s, the kernel dropped $(per_s "$tap_drop")/s (queue full)"
            ;;
    esac
    [[ -z $PS_NOTE ]] || NOTE+="; $PS_NOTE"
    stop_all
    [[ -e $scrapes ]] && NOTE+="; $(grep -cx 200 "$scrapes" || true) /metrics scrapes answered in the window (every ${SCRAPE_MS} ms)"
    if [[ $row == d && -s $WORK/$row-$kind-inject.log ]]; then
        NOTE+="; the generator sent $(jq -r '.frames_per_second | floor' "$WORK/$row-$kind-inject.log" 2>/dev/null || echo '?')/s"
    fi
    tw_log "row $row $kind: $RATE frames/s, backend CPU $BCPU cores, waited ${RQWAIT} ms for a CPU; $NOTE"
}

# ---------------------------------------------------------------- run

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

declare -A TITLE=(
    [a]="(a) guest TX -> TAP, 64 B"
    [b]="(b) guest TX -> TAP, 1500 B"
    [c]="(c) guest TX -> backend sink, 64 B"
    [d]="(d) host -> guest via TAP, 64 B"
)
declare -A RES=()
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
tw_log "rows $ROWS, ${WARMUP}s warm-up + ${WINDOW}s window each, backends ${KINDS[*]}, $REPEAT run(s) each; load average $load_before"
# median LIST: the median of space-separated numbers (the lower middle of an even count).
median() { tr ' ' '\n' <<<"$1" | sed '/^$/d' | sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
# ns_per_frame RATE CPU: backend CPU time per frame, in ns.
ns_per_frame() { awk -v r="$1" -v c="$2" 'BEGIN { if (r > 0) printf "%.1f", c / r * 1e9; else print 0 }'; }
for ((i = 0; i < ${#ROWS}; i++)); do
    row=${ROWS:i:1}
    [[ -n ${TITLE[$row]:-} ]] || tw_die "unknown row '$row' (rows are a, b, c, d)"
    # With --repeat the backends take turns, so drift in the machine's load hits both alike.
    for ((r = 1; r <= REPEAT; r++)); do
        for kind in "${KINDS[@]}"; do
            measure "$row" "$kind"
            RES[$row.$kind.rates]+=" $RATE" RES[$row.$kind.cpus]+=" $BCPU" RES[$row.$kind.costs]+=" $(ns_per_frame "$RATE" "$BCPU")"
            RES[$row.$kind.rq]=$RQWAIT RES[$row.$kind.note]=$NOTE
        done
    done
    for kind in "${KINDS[@]}"; do
        RES[$row.$kind.rate]=$(median "${RES[$row.$kind.rates]}") RES[$row.$kind.cpu]=$(median "${RES[$row.$kind.cpus]}")
        RES[$row.$kind.cost]=$(median "${RES[$row.$kind.costs]}")
    done
done

# ---------------------------------------------------------------- report

mpps() { awk -v r="$1" 'BEGIN { printf "%.3f", r / 1e6 }'; }
per_cpu() { awk -v r="$1" -v c="$2" 'BEGIN { if (c > 0) printf "%.3f", r / c / 1e6; else print "-" }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2fx", a / b; else print "-" }'; }

if ((PORT_SECURITY)); then
    echo
    echo "port security's cost: tapwire --mac $FE_MAC, without and with --allowed-ips $TX_IP_SRC/32 (tw+ps), same testpmd frontend"
    echo "${WINDOW}s window after ${WARMUP}s warm-up, medians of $REPEAT alternating runs; cost = backend CPU time / frames, in ns"
    printf '%-36s %9s %9s | %8s %8s | %9s %9s %9s\n' row "tw Mpps" "ps Mpps" "tw CPU" "ps CPU" "tw ns/fr" "ps ns/fr" "ps/tw"
    for ((i = 0; i < ${#ROWS}; i++)); do
        row=${ROWS:i:1}
        t=tapwire p=tw+ps
        printf '%-36s %9s %9s | %8s %8s | %9s %9s %9s\n' "${TITLE[$row]}" "$(mpps "${RES[$row.$t.rate]}")" "$(mpps "${RES[$row.$p.rate]}")" \
            "${RES[$row.$t.cpu]}" "${RES[$row.$p.cpu]}" "${RES[$row.$t.cost]}" "${RES[$row.$p.cost]}" "$(ratio "${RES[$row.$p.cost]}" "${RES[$row.$t.cost]}")"
    done
    echo
    for ((i = 0; i < ${#ROWS}; i++)); do
        row=${ROWS:i:1}
        for kind in "${KINDS[@]}"; do
            printf '  %s %-8s rates/s%s, ns/frame%s; last run: %s\n' "${TITLE[$row]%%,*}" "$kind:" "${RES[$row.$kind.rates]}" "${RES[$row.$kind.costs]}" "${RES[$row.$kind.note]:-}"
        done
    done
    for row in a c; do
        [[ $ROWS == *$row* ]] || continue
        extra=$(awk -v p="${RES[$row.tw+ps.cost]}" -v t="${RES[$row.tapwire.cost]}" 'BEGIN { if (t > 0) printf "%+.1f", (p / t - 1) * 100; else print "?" }')
        verdict=$(awk -v e="$extra" 'BEGIN { print (e != "?" && e + 0 < 5) ? "under" : "NOT under" }')
        echo "port security at 64 B, row ($row): ${extra}% CPU per frame ($verdict the 5% target)"
    done
    echo "machine: $(nproc) cores, kernel $(uname -r), DPDK $(dpkg-query -W -f='${Version}' dpdk-dev 2>/dev/null || echo '?'); other work before the run: ${BACKGROUND}% of the CPUs busy; load average before $load_before, after $(cut -d' ' -f1-3 /proc/loadavg); took $(tw_elapsed "$STARTED") s"
    exit 0
fi

if ((SCRAPE_MS)); then
    echo
    echo "a /metrics scrape every ${SCRAPE_MS} ms: tapwire without (tw) and with it (tw+scr), same testpmd frontend"
    echo "${WINDOW}s window after ${WARMUP}s warm-up, medians of $REPEAT alternating runs"
    printf '%-36s %9s %9s %9s | %8s %8s\n' row "tw Mpps" "scr Mpps" "scr/tw" "tw CPU" "scr CPU"
    for ((i = 0; i < ${#ROWS}; i++)); do
        row=${ROWS:i:1}
        t=tapwire s=tw+scr
        printf '%-36s %9s %9s %9s | %8s %8s\n' "${TITLE[$row]}" "$(mpps "${RES[$row.$t.rate]}")" "$(mpps "${RES[$row.$s.rate]}")" \
            "$(ratio "${RES[$row.$s.rate]}" "${RES[$row.$t.rate]}")" "${RES[$row.$t.cpu]}" "${RES[$row.$s.cpu]}"
    done
    echo
    for ((i = 0; i < ${#ROWS}; i++)); do
        row=${ROWS:i:1}
        for kind in "${KINDS[@]}"; do
            printf '  %s %-8s rates/s%s; last run: %s\n' "${TITLE[$row]%%,*}" "$kind:" "${RES[$row.$kind.rates]}" "${RES[$row.$kind.note]:-}"
        done
    done
    echo "machine: $(nproc) cores, kernel $(uname -r); other work before the run: ${BACKGROUND}% of the CPUs busy; load average before $load_before, after $(cut -d' ' -f1-3 /proc/loadavg); took $(tw_elapsed "$STARTED") s"
    exit 0
fi

echo
echo "tapwire vs DPDK vhost PMD, same DPDK virtio-user frontend (testpmd); ${WINDOW}s window after ${WARMUP}s warm-up"
echo "rates in Mpps; CPU in cores used by the backend process; frames/CPU-s in M (e): rate / backend CPU"
printf '%-36s %9s %9s %9s | %8s %8s | %14s %14s %8s\n' row tapwire DPDK "tw/DPDK" "tw CPU" "DPDK CPU" "tw Mfr/CPU-s" "DPDK Mfr/CPU-s" "tw/DPDK"
for ((i = 0; i < ${#ROWS}; i++)); do
    row=${ROWS:i:1}
    tr=${RES[$row.tapwire.rate]} dr=${RES[$row.dpdk.rate]} tc=${RES[$row.tapwire.cpu]} dc=${RES[$row.dpdk.cpu]}
    printf '%-36s %9s %9s %9s | %8s %8s | %14s %14s %8s\n' "${TITLE[$row]}" "$(mpps "$tr")" "$(mpps "$dr")" "$(ratio "$tr" "$dr")" \
        "$tc" "$dc" "$(per_cpu "$tr" "$tc")" "$(per_cpu "$dr" "$dc")" \
        "$(ratio "$(awk -v r="$tr" -v c="$tc" 'BEGIN { print (c > 0) ? r / c : 0 }')" "$(awk -v r="$dr" -v c="$dc" 'BEGIN { print (c > 0) ? r / c : 0 }')")"
done
echo
echo "counted at: (a)(b) the TAP's rx_packets in the namespace; (c) the frontend's TX-packets; (d) the frontend's RX-packets"
for ((i = 0; i < ${#ROWS}; i++)); do
    row=${ROWS:i:1}
    for kind in tapwire dpdk; do
        printf '  %s %-7s %s; backend waited %s ms for a CPU\n' "${TITLE[$row]%%,*}" "$kind:" "${RES[$row.$kind.note]:-}" "${RES[$row.$kind.rq]}"
    done
done
echo "machine: $(nproc) cores, kernel $(uname -r), CPU $(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo), DPDK $(dpkg-query -W -f='${Version}' dpdk-dev 2>/dev/null || echo '?')"
echo "measured processes ran at: $( ((${#NICE[@]})) && echo "nice ${NICE[-1]} (own autogroup)" || echo "the default priority")"
echo "other work before the run: ${BACKGROUND}% of the CPUs busy; load average before $load_before, after $(cut -d' ' -f1-3 /proc/loadavg); took $(tw_elapsed "$STARTED") s"
