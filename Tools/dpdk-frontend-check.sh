#!/usr/bin/env bash
# Correctness check (not a benchmark): tapwire against DPDK's virtio-user frontend (testpmd,
# a vhost-user frontend without a VM), one row per set of virtio-user devargs. Default rows:
# mrg_rxbuf=0, mrg_rxbuf=1, in_order=1, packed_vq=1 (DPDK's defaults are mrg_rxbuf=1,
# in_order=1, packed_vq=0; tapwire offers neither VIRTIO_F_IN_ORDER nor VIRTIO_F_RING_PACKED,
# so DPDK must fall back to plain split rings for the last two).
#
# Each row gets a fresh tapwire (--log-level debug, --tap in a network namespace created
# here, --api-socket for its counters) and one testpmd driven interactively (-i, commands
# through a FIFO, so that `stop` drains a phase and its counters are exact). Checks:
#   up       testpmd's port came up (Link status: up), tapwire acked features (its log) and
#            both queues run without a fault (GET /vm); no RING_PACKED (bit 34) and no
#            IN_ORDER (bit 35) in the acked features; MRG_RXBUF (bit 15) acked exactly when
#            the devargs leave mrg_rxbuf on.
#   g2h      guest -> host: testpmd txonly for a few seconds, 64-byte frames in one segment,
#            then 1500-byte frames in three segments (an indirect descriptor table). testpmd's
#            TX-packets/TX-bytes == tapwire's tx frames/bytes == the TAP's rx_packets/rx_bytes
#            in the namespace; no tapwire drops.
#   h2g      host -> guest: testpmd rxonly while a known number of frames of mixed sizes
#            (60..1514 bytes) is written into the TAP with AF_PACKET, paced. Every frame counted
#            by the TAP (tx_packets), tapwire (rx frames/bytes) and testpmd (RX-packets/RX-bytes),
#            no tapwire drop, no RX-errors. Where mergeable buffers are on, testpmd runs with small
#            mbufs (--mbuf-size 1024, --enable-scatter: 908-byte receive buffers), so frames
#            over 896 bytes span two buffers (num_buffers 2). A frame the TAP refuses because
#            its queue (txqueuelen 10000) is full is sent again (ENOBUFS; it happens only when
#            a process waited long for a CPU on a busy machine): reported, not a failure.
#   h2g-stall  the guest stops polling (forwarding stopped) while 3000 frames arrive: tapwire
#            fills the ring (at most 256 frames), leaves the rest in the TAP's queue, and
#            delivers all of them once testpmd polls again.
#   ping     round trip: testpmd icmpecho (it answers every ARP request and echoes every ICMP
#            echo request, whatever the address) and ping from the namespace through the TAP,
#            56 and 1400 data bytes: every request answered.
#   down     testpmd quits: tapwire logs the disconnect and keeps running; SIGTERM then stops
#            it cleanly (exit status 0).
#   log      no warning, error or critical line in tapwire's log.
# Output: one `ROW ...` line per row, a Markdown table, `N passed, N failed`; exit status 1 if
# any row failed (with the tails of tapwire's log and testpmd's output).
# testpmd runs on CPU 0 (both of its lcores), tapwire on CPU 1. Needs root, 2 cores,
# dpdk-testpmd (Debian: dpdk-dev), python3; 2 MiB hugepages are set up and put back as
# they were. About 1 minute.
#
# Usage: Tools/dpdk-frontend-check.sh [--tapwire BIN] [--variants "DEVARGS ..."]
#                                     [--tx-seconds N] [--rx-frames N] [--rx-pps N] [--stall-frames N]
#                                     [--tapwire-args "ARGS"] [--keep-logs]
# --variants takes space-separated devargs sets, e.g. "mrg_rxbuf=0 in_order=0,mrg_rxbuf=1".
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

TAPWIRE=${TAPWIRE_BIN:-$TW_REPO_ROOT/.build/release/tapwire}
VARIANTS=(mrg_rxbuf=0 mrg_rxbuf=1 in_order=1 packed_vq=1)
TX_SECONDS=2
RX_FRAMES=14000
RX_PPS=20000
STALL_FRAMES=3000
TAPWIRE_ARGS=()
KEEP_LOGS=0
TAP=twdpdk0
GUEST_CPU=0 BACKEND_CPU=1

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }

while (($#)); do
    case $1 in
        --tapwire) TAPWIRE=$2; shift 2 ;;
        --variants) read -r -a VARIANTS <<<"$2"; shift 2 ;;
        --tx-seconds) TX_SECONDS=$2; shift 2 ;;
        --rx-frames) RX_FRAMES=$2; shift 2 ;;
        --rx-pps) RX_PPS=$2; shift 2 ;;
        --stall-frames) STALL_FRAMES=$2; shift 2 ;;
        --tapwire-args) read -r -a TAPWIRE_ARGS <<<"$2"; shift 2 ;;
        --keep-logs) KEEP_LOGS=1; shift ;;
        -h | --help) usage; exit 0 ;;
        *) tw_die "unknown argument '$1' (see --help)" ;;
    esac
done
((${#VARIANTS[@]})) || tw_die "--variants is empty"

tw_require_root
(($(nproc) >= 2)) || tw_die "needs 2 cores: testpmd busy-polls one, tapwire runs on the other"
tw_ensure_packages dpdk-testpmd:dpdk-dev ip:iproute2 jq:jq curl:curl taskset:util-linux stdbuf:coreutils \
    awk:gawk python3:python3-minimal timeout:coreutils
[[ -x $TAPWIRE ]] || tw_die "no tapwire binary at $TAPWIRE (make release)"
PING=$(tw_ping_cmd)
[[ $PING != "busybox ping" ]] || command -v busybox >/dev/null || tw_ensure_packages ping:iputils-ping
DPDK_VERSION=$(dpkg-query -W -f='${Version}' dpdk-dev 2>/dev/null || true)
DPDK_VERSION=${DPDK_VERSION:-$(dpdk-testpmd --version 2>/dev/null | grep -o '[0-9][0-9]\.[0-9][0-9]' | head -1)}
DPDK_SHORT=$(cut -d. -f1,2 <<<"$DPDK_VERSION")

tw_install_traps
STARTED=$(tw_now)
WORK=$(mktemp -d /tmp/tapwire-dpdk-check.XXXXXX)
tw_at_exit "if ((KEEP_LOGS)) || ((TW_EXIT_RC)); then tw_log \"logs kept in $WORK\"; else rm -rf '$WORK'; fi"
SOCK=$WORK/vhost.sock
API=$WORK/api.sock
FIFO=$WORK/testpmd.cmd
PREFIX=twdfc$$

# ---------------------------------------------------------------- hugepages

# One testpmd at a time with -m 256: 128 pages of 2 MiB, plus a margin.
tw_ensure_hugepages 160
tw_at_exit "rm -f '$HUGE_DIR'/${PREFIX}map_*; rm -rf /var/run/dpdk/$PREFIX"

# ---------------------------------------------------------------- namespace

NS=twdfc$$
tw_netns_create "$NS"
# Nothing of the kernel's own (IPv6 router solicitations) goes through the TAP: frame counts
# on the host-to-guest path are then exactly what this script sends.
tw_netns_no_ipv6 "$NS"

# ---------------------------------------------------------------- processes

TAPWIRE_PID='' TESTPMD_PID='' TP_FD='' TP_LOG='' TW_LOG=''
stop_testpmd() {
    if [[ -n $TP_FD ]]; then exec {TP_FD}>&-; TP_FD=''; fi
    [[ -z $TESTPMD_PID ]] || tw_stop "$TESTPMD_PID" 5
    TESTPMD_PID=''
    rm -f "$FIFO"
}
stop_row() {
    stop_testpmd
    [[ -z $TAPWIRE_PID ]] || tw_stop "$TAPWIRE_PID" 5
    TAPWIRE_PID=''
    rm -f "$SOCK" "$API"
}
tw_at_exit stop_row

api() { curl -sf --max-time 5 --unix-socket "$API" "http://tapwire$1" "${@:2}"; }

# start_tapwire LOG: tapwire on BACKEND_CPU in the namespace; waits for its socket, its API
# and its TAP. taskset and `ip netns exec` exec, so the pid is tapwire's.
start_tapwire() {
    TW_LOG=$1
    tw_spawn "$TW_LOG" taskset -c "$BACKEND_CPU" ip netns exec "$NS" "$TAPWIRE" --socket-path "$SOCK" \
        --api-socket "$API" --tap "$TAP" --name dpdk --log-level debug "${TAPWIRE_ARGS[@]}"
    TAPWIRE_PID=$TW_SPAWNED_PID
    tw_wait_until 20 "$TAPWIRE_PID" "tapwire's socket" tw_is_socket "$SOCK" || return 1
    tw_wait_until 10 "$TAPWIRE_PID" "tapwire's control API" api /healthz -o /dev/null || return 1
    tw_wait_until 10 "$TAPWIRE_PID" "$TAP in $NS" tw_netns_has_link "$NS" "$TAP" || return 1
    # The host side of the link; a long queue towards tapwire absorbs a scheduler slice of the
    # sender (the TAP's ring is resized with it).
    ip -n "$NS" link set "$TAP" txqueuelen 10000
    tw_netns_addr "$NS" "$TAP" "$TW_HOST_IP/$TW_PREFIX_LEN"
}

# tp_prompts: prompts testpmd has printed so far (one after every command it ran).
tp_prompts() { grep -ao 'testpmd> ' "$TP_LOG" 2>/dev/null | wc -l; }

# start_testpmd LOG DEVARGS TESTPMD_ARGS...: the guest, both lcores on GUEST_CPU (the main one
# only reads commands), interactive with its stdin on a FIFO that this script holds open for
# reading and writing (so opening it never blocks, and testpmd never sees end of file).
start_testpmd() {
    TP_LOG=$1
    local devargs=$2; shift 2
    rm -f "$FIFO"
    mkfifo "$FIFO"
    exec {TP_FD}<>"$FIFO"
    # shellcheck disable=SC2094
    taskset -c "$GUEST_CPU" stdbuf -oL dpdk-testpmd --file-prefix="$PREFIX" -m 256 --no-pci --no-telemetry \
        --single-file-segments --vdev "net_virtio_user0,path=$SOCK,queues=1,$devargs" \
        --lcores "0@$GUEST_CPU,1@$GUEST_CPU" --main-lcore 1 -- -i --nb-cores=1 --total-num-mbufs=8192 "$@" \
        <"$FIFO" >"$TP_LOG" 2>&1 {TP_FD}>&- &
    TESTPMD_PID=$!
    tw_wait_until 40 "$TESTPMD_PID" "testpmd's prompt" tp_has_prompt
}
tp_has_prompt() { (($(tp_prompts) >= 1)); }

# tp_cmd TIMEOUT COMMAND: runs one testpmd command; its output goes to TP_OUT.
TP_OUT=''
tp_cmd() {
    local timeout=$1 cmd=$2 n off
    n=$(tp_prompts)
    off=$(stat -c %s "$TP_LOG")
    printf '%s\n' "$cmd" >&"$TP_FD"
    tp_more_prompts() { (($(tp_prompts) > n)); }
    if ! tw_wait_until "$timeout" "$TESTPMD_PID" "testpmd to run '$cmd'" tp_more_prompts; then
        TP_OUT=''
        return 1
    fi
    TP_OUT=$(tail -c +$((off + 1)) "$TP_LOG" | tr -d '\r')
}

# tp_port_stats: "RX_PACKETS RX_BYTES RX_ERRORS RX_NOMBUF RX_MISSED TX_PACKETS TX_BYTES TX_ERRORS"
# of port 0 since the last `clear port stats all`.
tp_port_stats() {
    tp_cmd 10 "show port stats 0" || return 1
    awk '{ for (i = 1; i < NF; i++) if ($i ~ /:$/) v[$i] = $(i + 1) }
        END { n = split("RX-packets: RX-bytes: RX-errors: RX-nombuf: RX-missed: TX-packets: TX-bytes: TX-errors:", k, " ")
              # %s, not %d: byte counts pass 2^31 within seconds.
              for (i = 1; i <= n; i++) printf "%s%s", (v[k[i]] ~ /^[0-9]+$/ ? v[k[i]] : 0), (i < n ? " " : "\n") }' <<<"$TP_OUT"
}

# tap_stats: "RX_PACKETS RX_BYTES TX_PACKETS TX_BYTES TX_DROPPED" of the TAP in the namespace.
tap_stats() {
    ip -n "$NS" -s -j link show dev "$TAP" |
        jq -r '.[0].stats64 | "\(.rx.packets) \(.rx.bytes) \(.tx.packets) \(.tx.bytes) \(.tx.dropped)"'
}

# tw_stats: "RX_FRAMES RX_BYTES RX_DROPS TX_FRAMES TX_BYTES TX_DROPS" from tapwire's /metrics.json
# (rx: to the guest, tx: from it), summed over queues.
tw_stats() {
    api /metrics.json | jq -r '[.queues[] | select(.direction == "rx")] as $r | [.queues[] | select(.direction == "tx")] as $t
        | "\($r | map(.frames) | add) \($r | map(.bytes) | add) \($r | map(.drops | add) | add) \($t | map(.frames) | add) \($t | map(.bytes) | add) \($t | map(.drops | add) | add)"'
}

# run_delays: "TESTPMD_NS TAPWIRE_NS": time their threads waited for a CPU (schedstat), so a
# failure under other load on the machine can be told from a stall.
run_delay_ns() { cat "/proc/$1"/task/*/schedstat 2>/dev/null | awk '{ s += $2 } END { printf "%.0f\n", s }'; }
run_delays() { echo "$(run_delay_ns "$TESTPMD_PID") $(run_delay_ns "$TAPWIRE_PID")"; }

# field N "A B C": the Nth word (1-based).
field() { awk -v n="$1" '{ print ($n == "" ? 0 : $n) }' <<<"$2"; }

# The host-to-guest sender: COUNT frames into the TAP with AF_PACKET (qdisc bypassed), sizes
# cycling through 60..1514 bytes, broadcast, EtherType 0x88B5, at PPS frames per second.
# A frame the TAP refuses (ENOBUFS: its queue is full because tapwire is not reading it, e.g.
# while the guest's ring is full or a process waits for a CPU on a busy machine) is sent
# again 1 ms later, for at most 10 s in all: a tapwire that stops reading still fails.
# Prints "SENT BYTES ERRORS REFUSED WHY" (WHY: errno texts of the errors with counts, or -).
inject() {
    local count=$1 pps=$2
    timeout --kill-after=2 $((count / pps + 20)) ip netns exec "$NS" python3 - "$TAP" "$count" "$pps" {TP_FD}>&- <<'EOF'
import errno, socket, sys, time
ifname, count, pps = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
sizes = [60, 64, 128, 576, 897, 1024, 1500, 1514]
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind((ifname, 0))
s.setsockopt(263, 20, 1)  # SOL_PACKET, PACKET_QDISC_BYPASS
head = b"\xff" * 6 + bytes.fromhex("020000770001") + b"\x88\xb5"
sent = nbytes = errors = refused = 0
why = {}
start = time.monotonic()
retry_budget = 10.0
for i in range(count):
    due = start + i / pps
    now = time.monotonic()
    if due > now:
        time.sleep(due - now)
    size = sizes[i % len(sizes)]
    body = i.to_bytes(4, "big") * ((size - len(head)) // 4 + 1)
    frame = head + body[: size - len(head)]
    while True:
        try:
            if s.send(frame) == size:
                sent += 1
                nbytes += size
            else:
                errors += 1
            break
        except OSError as e:
            if e.errno == errno.ENOBUFS and retry_budget > 0:
                refused += 1
                retry_budget -= 0.001
                time.sleep(0.001)
                continue
            errors += 1
            why[e.strerror] = why.get(e.strerror, 0) + 1
            break
print(sent, nbytes, errors, refused, ",".join("%s:%d" % (k.replace(" ", "_"), v) for k, v in why.items()) or "-")
EOF
}

# ---------------------------------------------------------------- one row

# Results of the current row: CHECKS (name=ok|FAIL ...), FAILS (what went wrong), COUNTS.
CHECKS=() FAILS=() COUNTS=()
pass() { CHECKS+=("$1"); }
fail() {
    CHECKS+=("$1:FAIL")
    FAILS+=("$1: $2")
    tw_warn "[$ROW_DEVARGS] $1: $2"
}

# wait_equal TIMEOUT FN EXPECTED: waits until FN prints EXPECTED (a counter catching up).
wait_equal() {
    local timeout=$1 fn=$2 want=$3 deadline=$((SECONDS + $1))
    while [[ $($fn) != "$want" ]]; do
        ((SECONDS < deadline)) || return 1
        sleep 0.1
    done
}
tap_rx_pkts() { field 1 "$(tap_stats)"; }
tw_rx_frames() { field 1 "$(tw_stats)"; }

# check_up DEVARGS: negotiation.
check_up() {
    local devargs=$1 vm raw names want_mrg=1 problems=()
    [[ ,$devargs, == *,mrg_rxbuf=0,* ]] && want_mrg=0
    tp_cmd 10 "show port info 0" || { fail up "testpmd did not answer 'show port info 0'"; return 1; }
    grep -q 'Link status: up' <<<"$TP_OUT" || problems+=("testpmd's port is not up: $(grep 'Link status' <<<"$TP_OUT")")
    tw_wait_until 10 "$TAPWIRE_PID" "tapwire to log the acked features" tw_log_has "$TW_LOG" "features acked:" ||
        problems+=("tapwire logged no 'features acked' line")
    names=$(grep -a 'features acked:' "$TW_LOG" | tail -n 1 | sed 's/.*features acked: //')
    vm=$(api /vm) || { fail up "GET /vm failed"; return 1; }
    raw=$(jq -r .negotiated_features_raw <<<"$vm")
    ACKED_HEX=$(printf '0x%x' "$raw")
    ACKED_NAMES=$names
    [[ $(jq -r .state <<<"$vm") == connected ]] || problems+=("tapwire's state is $(jq -r .state <<<"$vm"), not connected")
    [[ $(jq -r '[.queues[] | select(.running and .enabled and (.fault == null))] | length' <<<"$vm") == 2 ]] ||
        problems+=("not both queues running: $(jq -c .queues <<<"$vm")")
    (((raw >> 34) & 1)) && problems+=("RING_PACKED (bit 34) acked: $ACKED_HEX")
    [[ $names == *bit34* ]] && problems+=("tapwire's log shows bit34 acked: $names")
    (((raw >> 35) & 1)) && problems+=("IN_ORDER (bit 35) acked, tapwire does not offer it: $ACKED_HEX")
    (((raw >> 32) & 1)) || problems+=("VERSION_1 not acked: $ACKED_HEX")
    ((((raw >> 15) & 1) == want_mrg)) || problems+=("MRG_RXBUF acked=$(((raw >> 15) & 1)), expected $want_mrg: $ACKED_HEX")
    # The log line and the API must agree.
    local logged_mrg=0
    [[ " $names " == *" MRG_RXBUF "* ]] && logged_mrg=1
    ((logged_mrg == ((raw >> 15) & 1))) || problems+=("tapwire's log ($names) and GET /vm ($ACKED_HEX) disagree on MRG_RXBUF")
    if ((${#problems[@]})); then fail up "$(IFS=';'; echo "${problems[*]}")"; return 1; fi
    pass up
}

# check_g2h NAME TXPKTS: testpmd txonly with segment lengths TXPKTS for TX_SECONDS.
check_g2h() {
    local name=$1 txpkts=$2 tw0 tw1 tap0 tap1 st tx txb problems=()
    tp_cmd 10 "set fwd txonly" && tp_cmd 10 "set txpkts $txpkts" ||
        { fail "$name" "testpmd did not take the txonly set-up"; return 1; }
    if grep -qi 'error\|invalid\|bad\|fail' <<<"$TP_OUT"; then fail "$name" "testpmd: set txpkts $txpkts: $TP_OUT"; return 1; fi
    tp_cmd 10 "clear port stats all" || { fail "$name" "testpmd did not clear its stats"; return 1; }
    tw0=$(tw_stats) tap0=$(tap_stats)
    tp_cmd 10 start || { fail "$name" "testpmd did not start forwarding"; return 1; }
    grep -q 'txonly packet forwarding' <<<"$TP_OUT" || { fail "$name" "testpmd did not start txonly: $(head -3 <<<"$TP_OUT")"; return 1; }
    sleep "$TX_SECONDS"
    tp_cmd 15 stop || { fail "$name" "testpmd did not stop forwarding"; return 1; }
    st=$(tp_port_stats) || { fail "$name" "no port stats"; return 1; }
    tx=$(field 6 "$st") txb=$(field 7 "$st")
    # Frames still in the ring when testpmd stopped reach the TAP a little later.
    wait_equal 5 tap_rx_pkts "$(($(field 1 "$tap0") + tx))" || true
    tw1=$(tw_stats) tap1=$(tap_stats)
    local tap_n=$(($(field 1 "$tap1") - $(field 1 "$tap0"))) tap_b=$(($(field 2 "$tap1") - $(field 2 "$tap0")))
    local tw_n=$(($(field 4 "$tw1") - $(field 4 "$tw0"))) tw_b=$(($(field 5 "$tw1") - $(field 5 "$tw0")))
    local tw_d=$(($(field 6 "$tw1") - $(field 6 "$tw0")))
    ((tx >= 1000)) || problems+=("testpmd sent only $tx frames in ${TX_SECONDS}s")
    ((tap_n == tx && tw_n == tx)) || problems+=("frames: testpmd sent $tx, tapwire moved $tw_n, the TAP received $tap_n")
    ((tap_b == txb && tw_b == txb)) || problems+=("bytes: testpmd sent $txb, tapwire moved $tw_b, the TAP received $tap_b")
    ((tw_d == 0)) || problems+=("tapwire dropped $tw_d guest frames")
    (($(field 8 "$st") == 0)) || problems+=("testpmd TX-errors $(field 8 "$st")")
    COUNTS+=("$name=$tx")
    if ((${#problems[@]})); then fail "$name" "$(IFS=';'; echo "${problems[*]}")"; return 1; fi
    pass "$name"
}

# check_h2g: testpmd rxonly while RX_FRAMES frames go into the TAP.
check_h2g() {
    local tw0 tw1 tap0 tap1 st out sent sentb errs refused why d0 d1 problems=()
    tp_cmd 10 "set fwd rxonly" && tp_cmd 10 "clear port stats all" && tp_cmd 10 start ||
        { fail h2g "testpmd did not start rxonly"; return 1; }
    grep -q 'rxonly packet forwarding' <<<"$TP_OUT" || { fail h2g "testpmd did not start rxonly: $(head -3 <<<"$TP_OUT")"; return 1; }
    tw0=$(tw_stats) tap0=$(tap_stats) d0=$(run_delays)
    out=$(inject "$RX_FRAMES" "$RX_PPS") || { fail h2g "the AF_PACKET sender failed: $out"; return 1; }
    read -r sent sentb errs refused why <<<"$out"
    wait_equal 5 tw_rx_frames "$(($(field 1 "$tw0") + sent))" || true
    sleep 0.2
    tp_cmd 15 stop || { fail h2g "testpmd did not stop forwarding"; return 1; }
    st=$(tp_port_stats) || { fail h2g "no port stats"; return 1; }
    tw1=$(tw_stats) tap1=$(tap_stats) d1=$(run_delays)
    local rx rxb
    rx=$(field 1 "$st") rxb=$(field 2 "$st")
    local tap_n=$(($(field 3 "$tap1") - $(field 3 "$tap0"))) tap_d=$(($(field 5 "$tap1") - $(field 5 "$tap0")))
    local tw_n=$(($(field 1 "$tw1") - $(field 1 "$tw0"))) tw_b=$(($(field 2 "$tw1") - $(field 2 "$tw0")))
    local tw_d=$(($(field 3 "$tw1") - $(field 3 "$tw0")))
    # Refusals (sent again) are the TAP's tx_dropped; they only happen when tapwire or testpmd
    # waited for a CPU for a long time: say how long, so that a stall can be told apart.
    local waited
    waited="testpmd waited $(field 1 "$d1" | awk -v a="$(field 1 "$d0")" '{ printf "%d", ($1 - a) / 1e6 }') ms for a CPU, tapwire $(field 2 "$d1" | awk -v a="$(field 2 "$d0")" '{ printf "%d", ($1 - a) / 1e6 }') ms"
    ((errs == 0 && sent == RX_FRAMES)) ||
        problems+=("the sender sent $sent of $RX_FRAMES frames ($errs errors: $why; $refused refusals by the full TAP queue; $waited)")
    ((tap_d == refused)) || problems+=("the TAP dropped $tap_d frames, the sender saw $refused refusals")
    ((refused == 0)) || tw_log "[$ROW_DEVARGS] h2g: the TAP's queue was full $refused times (frames sent again); $waited"
    ((tap_n == sent)) || problems+=("the TAP handed tapwire $tap_n of $sent frames ($tap_d dropped: queue full)")
    ((tw_n == sent && tw_b == sentb)) || problems+=("tapwire delivered $tw_n frames/$tw_b bytes of $sent/$sentb ($tw_d dropped)")
    ((rx == sent && rxb == sentb)) || problems+=("testpmd received $rx frames/$rxb bytes of $sent/$sentb")
    (($(field 3 "$st") == 0 && $(field 4 "$st") == 0 && $(field 5 "$st") == 0)) ||
        problems+=("testpmd RX-errors/nombuf/missed: $(field 3 "$st")/$(field 4 "$st")/$(field 5 "$st")")
    COUNTS+=("h2g=$rx/$sent")
    ((refused == 0)) || COUNTS+=("h2g_refused=$refused")
    if ((${#problems[@]})); then fail h2g "$(IFS=';'; echo "${problems[*]}")"; return 1; fi
    pass h2g
}

# check_h2g_stall: the guest stops taking frames (testpmd's forwarding stopped, its receive
# ring fills up) while STALL_FRAMES frames arrive; tapwire must leave the rest in the TAP's
# queue and deliver all of it once testpmd polls again (its refills kick tapwire).
check_h2g_stall() {
    local tw0 tw1 tap0 tap1 st out sent sentb errs refused why mid problems=()
    tp_cmd 10 "set fwd rxonly" && tp_cmd 10 "clear port stats all" ||
        { fail h2g-stall "testpmd did not take rxonly"; return 1; }
    tw0=$(tw_stats) tap0=$(tap_stats)
    out=$(inject "$STALL_FRAMES" "$RX_PPS") || { fail h2g-stall "the AF_PACKET sender failed: $out"; return 1; }
    read -r sent sentb errs refused why <<<"$out"
    sleep 0.3
    # What tapwire could place in the stopped guest's ring (at most its 256 entries).
    mid=$(($(tw_rx_frames) - $(field 1 "$tw0")))
    tp_cmd 10 start || { fail h2g-stall "testpmd did not start rxonly"; return 1; }
    wait_equal 10 tw_rx_frames "$(($(field 1 "$tw0") + sent))" || true
    sleep 0.2
    tp_cmd 15 stop || { fail h2g-stall "testpmd did not stop forwarding"; return 1; }
    st=$(tp_port_stats) || { fail h2g-stall "no port stats"; return 1; }
    tw1=$(tw_stats) tap1=$(tap_stats)
    local rx rxb tap_d=$(($(field 5 "$tap1") - $(field 5 "$tap0"))) tw_n=$(($(field 1 "$tw1") - $(field 1 "$tw0")))
    rx=$(field 1 "$st") rxb=$(field 2 "$st")
    # The TAP's queue (txqueuelen 10000) holds all of them: no refusal here.
    ((errs == 0 && refused == 0 && sent == STALL_FRAMES && tap_d == 0)) ||
        problems+=("the sender sent $sent of $STALL_FRAMES frames ($errs errors: $why; $refused refusals; TAP tx_dropped +$tap_d)")
    ((mid > 0 && mid <= 256)) || problems+=("tapwire delivered $mid frames into the stopped guest's 256-entry ring")
    ((tw_n == sent && rx == sent && rxb == sentb)) ||
        problems+=("after the guest resumed: tapwire delivered $tw_n, testpmd received $rx frames/$rxb bytes of $sent/$sentb")
    COUNTS+=("h2g-stall=$rx/$sent(ring:$mid)")
    if ((${#problems[@]})); then fail h2g-stall "$(IFS=';'; echo "${problems[*]}")"; return 1; fi
    pass h2g-stall
}

# check_ping: testpmd icmpecho, ping from the namespace (56 and 1400 data bytes).
check_ping() {
    local n=5 size out tx rx total_tx=0 total_rx=0 problems=()
    tp_cmd 10 "set fwd icmpecho" && tp_cmd 10 start || { fail ping "testpmd did not start icmpecho"; return 1; }
    grep -q 'icmpecho packet forwarding' <<<"$TP_OUT" || { fail ping "testpmd did not start icmpecho: $(head -3 <<<"$TP_OUT")"; return 1; }
    for size in 56 1400; do
        out=$(timeout --kill-after=2 10 ip netns exec "$NS" $PING -c "$n" -i 0.1 -w 5 -s "$size" "$TW_GUEST_IP" {TP_FD}>&- 2>&1 || true)
        read -r tx rx _ <<<"$(tw_ping_parse <<<"$out")"
        [[ $tx =~ ^[0-9]+$ && $rx =~ ^[0-9]+$ ]] || { tx=0 rx=0; }
        total_tx=$((total_tx + tx)) total_rx=$((total_rx + rx))
        ((tx == n && rx == n)) || problems+=("ping -s $size: $rx of $tx replies ($(tail -n 2 <<<"$out" | tr '\n' ' '))")
    done
    tp_cmd 15 stop || problems+=("testpmd did not stop forwarding")
    COUNTS+=("ping=$total_rx/$total_tx")
    if ((${#problems[@]})); then fail ping "$(IFS=';'; echo "${problems[*]}")"; return 1; fi
    pass ping
}

# check_down: testpmd quits, tapwire sees the disconnect and survives; SIGTERM stops it.
check_down() {
    local problems=() i rc
    printf 'quit\n' >&"$TP_FD" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do tw_alive "$TESTPMD_PID" || break; sleep 0.1; done
    tw_alive "$TESTPMD_PID" && problems+=("testpmd did not quit within 10 s")
    stop_testpmd
    tw_wait_until 10 "$TAPWIRE_PID" "tapwire to see the disconnect" tw_log_has "$TW_LOG" "frontend disconnected" ||
        problems+=("tapwire logged no disconnect")
    sleep 0.3
    if tw_alive "$TAPWIRE_PID"; then
        [[ $(api /vm | jq -r .state) == waiting ]] || problems+=("tapwire is not waiting for a new frontend")
        kill -TERM "$TAPWIRE_PID"
        for ((i = 0; i < 50; i++)); do tw_alive "$TAPWIRE_PID" || break; sleep 0.1; done
        if tw_alive "$TAPWIRE_PID"; then
            problems+=("tapwire did not exit within 5 s of SIGTERM")
        else
            rc=0; wait "$TAPWIRE_PID" || rc=$?
            ((rc == 0)) || problems+=("tapwire exited with status $rc on SIGTERM")
        fi
        TAPWIRE_PID=''
    else
        problems+=("tapwire died when the frontend went away")
    fi
    if ((${#problems[@]})); then fail down "$(IFS=';'; echo "${problems[*]}")"; return 1; fi
    pass down
}

# check_log: nothing in tapwire's log at warning level or above (faults, refused messages).
check_log() {
    local bad
    bad=$(awk '$2 == "warning" || $2 == "error" || $2 == "critical"' "$TW_LOG" | head -n 5)
    if [[ -n $bad ]]; then fail log "tapwire logged: $(tr '\n' ';' <<<"$bad")"; return 1; fi
    pass log
}

# run_row INDEX DEVARGS
run_row() {
    local idx=$1 devargs=$2 t0 extra=()
    ROW_DEVARGS=$devargs CHECKS=() FAILS=() COUNTS=() ACKED_HEX='-' ACKED_NAMES=''
    t0=$(tw_now)
    # Mergeable buffers on (DPDK's default): small mbufs, so that frames span receive buffers.
    [[ ,$devargs, == *,mrg_rxbuf=0,* ]] || extra=(--mbuf-size=1024 --enable-scatter)
    local tw_log=$WORK/row$idx-tapwire.log tp_log=$WORK/row$idx-testpmd.log
    tw_log "row $idx: devargs $devargs"
    if ! start_tapwire "$tw_log"; then
        fail start "tapwire did not start"
    elif ! start_testpmd "$tp_log" "$devargs" "${extra[@]}"; then
        fail start "testpmd did not come up"
    elif check_up "$devargs"; then
        # Segments: one of 64 B, then 60+700+740 B (each fits a 1024-byte mbuf).
        check_g2h g2h-64B 64 || true
        check_g2h g2h-1500B-3seg 60,700,740 || true
        check_h2g || true
        check_h2g_stall || true
        check_ping || true
        check_down || true
    fi
    [[ ! -s $tw_log ]] || check_log || true
    local result=PASS
    ((${#FAILS[@]} == 0)) || result=FAIL
    local secs
    secs=$(tw_elapsed "$t0")
    ROW_RESULT[$idx]=$result
    ROW_CHECKS[$idx]="${CHECKS[*]}"
    ROW_COUNTS[$idx]="${COUNTS[*]}"
    ROW_FEATURES[$idx]=$ACKED_HEX
    printf 'ROW frontend=dpdk-virtio-user version=%s devargs=%s checks="%s" result=%s acked=%s %s secs=%s\n' \
        "$DPDK_SHORT" "$devargs" "${CHECKS[*]}" "$result" "$ACKED_HEX" "${COUNTS[*]}" "$secs"
    if [[ $result == FAIL ]]; then
        local f
        for f in "${FAILS[@]}"; do printf '  failed: %s\n' "$f" >&2; done
        [[ -n $ACKED_NAMES ]] && printf '  tapwire acked: %s\n' "$ACKED_NAMES" >&2
        tw_tail_log "$tw_log" 40 "tapwire log (row $idx, $devargs)"
        tw_tail_log "$tp_log" 40 "testpmd output (row $idx, $devargs)"
        if grep -aqiE 'fail|error|invalid|match|cannot' "$tp_log" 2>/dev/null; then
            printf -- '----- testpmd complaints (row %s) -----\n' "$idx" >&2
            grep -aiE 'fail|error|invalid|match|cannot' "$tp_log" | grep -v 'promiscuous mode' | head -n 15 | sed 's/^/  | /' >&2
        fi
    fi
    stop_row
    # The next row needs the TAP gone (a fresh tapwire creates it again).
    tw_wait_until 5 '' "$TAP to go away" sh -c "! ip -n '$NS' link show dev '$TAP' >/dev/null 2>&1" || true
}

declare -A ROW_RESULT=() ROW_CHECKS=() ROW_COUNTS=() ROW_FEATURES=()
tw_log "tapwire $TAPWIRE; DPDK $DPDK_VERSION; rows: ${VARIANTS[*]}"
for i in "${!VARIANTS[@]}"; do
    run_row "$i" "${VARIANTS[i]}"
done

# ---------------------------------------------------------------- report

passed=0 failed=0
echo
echo "| frontend | version | devargs | what was checked | result |"
echo "|---|---|---|---|---|"
for i in "${!VARIANTS[@]}"; do
    [[ ${ROW_RESULT[$i]} == PASS ]] && passed=$((passed + 1)) || failed=$((failed + 1))
    printf '| dpdk-virtio-user (testpmd) | %s | `%s` | %s (acked %s; %s) | %s |\n' "$DPDK_SHORT" "${VARIANTS[i]}" \
        "${ROW_CHECKS[$i]}" "${ROW_FEATURES[$i]}" "${ROW_COUNTS[$i]}" "${ROW_RESULT[$i]}"
done
echo
echo "checks: up = port up, features acked without RING_PACKED/IN_ORDER, MRG_RXBUF as asked; g2h = testpmd txonly,"
echo "frames/bytes equal at testpmd, tapwire and the TAP; h2g = AF_PACKET into the TAP, testpmd rxonly, every frame"
echo "and byte arrived; h2g-stall = frames queued in the TAP while testpmd did not poll, all delivered once it did"
echo "(ring: frames that fitted the stopped guest's ring); ping = testpmd icmpecho answered every ping (56 and 1400 B);"
echo "down = disconnect survived, clean SIGTERM;"
echo "log = no warning or error in tapwire's log."
echo "DPDK $DPDK_VERSION, tapwire $TAPWIRE; took $(tw_elapsed "$STARTED") s"
echo "$passed passed, $failed failed"
((failed == 0))
