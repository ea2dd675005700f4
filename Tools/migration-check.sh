#!/usr/bin/env bash
# Live migration of a running guest between two vhost-user backends, back and forth, under load.
#
# Same host (the default): one network namespace plays the host network: a Linux bridge with
# the host address, and two backends (two tapwire processes with the same options, each with
# its own vhost-user socket and TAP, both TAPs in the bridge). A QEMU 10 guest boots on the
# first; a destination QEMU (the same command line plus -incoming defer, its chardev on the
# other backend) is started, the guest migrates to it over a unix socket (migrate-incoming /
# migrate over QMP, max-bandwidth raised first), the old QEMU quits, and so on: the guest goes
# back and forth --round-trips times (2 migrations each), each backend serving a fresh QEMU
# every other migration. Meanwhile three things run the whole time:
#   1. a host->guest TCP stream of deterministic bytes (python3, seeded, paced at
#      --stream-rate), hashed in the guest (nc | sha256sum): a receive buffer the backend
#      wrote during the migration but did not mark dirty arrives stale, and since the guest
#      trusts offloaded checksums it shows only as a different hash;
#   2. guest->host iperf3 (from the guest, Fixtures/guest/mig-guest.sh);
#   3. a 10 ms ping from the host network to the guest; its longest gap between two replies
#      around each migration is that migration's ping gap.
# Checks, per migration: it reaches "completed" (QEMU's downtime and total time reported),
# the new QEMU runs and the old one quits; the backend that lost its QEMU is still alive and
# idle and serves the next one (tapwire: API state, queues running, no fault, connection
# counts); the guest answers the ping after the switch-over (if not, the rings' indexes as
# guest memory holds them go to diagnosis-K.txt, and the run stops there); the guest's announce
# (gratuitous ARP, or the backend's RARP) is seen on the bridge. At the end: the stream's hash
# matches, the stream and every iperf3 session completed (exit 0), and the longest ping gap of
# any migration is under --max-gap-ms.
#
# --two-hosts: two namespaces as two hosts, each with its own bridge and backend, joined by a
# veth underlay between the bridges; a third namespace (the client, on host A's bridge through
# its own veth) runs the ping, the stream and the iperf3 server. QEMU stays in the root
# namespace (the migration stream is a unix socket). After each migration the client must
# reach the guest at its new host: the guest's announce (VIRTIO_NET_F_GUEST_ANNOUNCE: a
# gratuitous ARP; SEND_RARP otherwise) moves the guest MAC in both bridges' FDBs (`bridge
# fdb`, shown before and after the first round trip, checked after every migration).
#
# --backend dpdk: the same with DPDK's vhost PMD + TAP PMD (dpdk-testpmd, io forwarding) as
# the two backends. Each testpmd busy-polls a core: on a 2-core machine the two of them and
# the TCG QEMUs share the cores, so keep these runs short (default 3 round trips).
# --compare: tapwire, then DPDK, with the same settings; prints a table.
#
# Usage: Tools/migration-check.sh [options]
#   --round-trips N        back-and-forth trips, 2 migrations each (default 10; 3 with
#                          --backend dpdk, --two-hosts or --compare)
#   --two-hosts            the two-host topology above
#   --backend tapwire|dpdk backends to migrate between (default tapwire)
#   --compare              run tapwire, then dpdk, same settings; print a table
#   --tapwire BIN          tapwire binary (default $TAPWIRE_BIN or .build/release/tapwire)
#   --tapwire-args "ARGS"  extra options for both tapwire processes (word-split)
#   --log-level LEVEL      tapwire's --log-level (default info; debug/trace to investigate)
#   --mem SIZE             guest memory (default 512M)
#   --stream-rate BYTES/S  pace of the host->guest stream (default 4000000)
#   --iperf-args "ARGS"    extra guest iperf3 client options, e.g. "-b 500M" (default none)
#   --nic-args ",OPT=V..." appended to the virtio-net-pci device on every hop, e.g.
#                          ",event_idx=off"
#   --max-bandwidth B/S    QEMU migrate-set-parameters max-bandwidth (default 4294967296)
#   --dwell SECONDS        time on each host between migrations (default 1)
#   --hop-seconds S        expected seconds per migration, to size the guest's iperf3 run
#                          (default 5; further 10 s sessions run if the migrations take longer)
#   --max-gap-ms MS        the ping gap target each migration must meet (default 1000)
#   --migrate-timeout S    give up on one migration after this long (default 120)
#   --boot-timeout S       wait for the guest (default 120)
#   --out DIR              logs and results (default /var/tmp/tapwire-migration/<time>-...)
#   --guest-dir DIR        guest image (default $TAPWIRE_GUEST_DIR or /var/tmp/tapwire-guest)
#   --summary FILE         also write the run's summary as JSON to FILE (used by --compare)
# Output: one "ROW ..." line per migration and per check on stdout, then the figures and
# "N passed, N failed".
# Exit status: 0 when every check passed; on failure the ends of the backends', QEMUs' and
# the guest console's logs go to stderr.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

usage() { sed -n '2,/^# Exit status/s/^# \{0,1\}//p' "$0"; }

ORIG_ARGS=("$@")
ROUND_TRIPS=
TWO_HOSTS=0
BACKEND=tapwire
COMPARE=0
TAPWIRE=${TAPWIRE_BIN:-$TW_REPO_ROOT/.build/release/tapwire}
TAPWIRE_ARGS=
LOG_LEVEL=info
MEM=512M
STREAM_RATE=4000000
IPERF_ARGS=
NIC_EXTRA=
MAX_BW=4294967296
DWELL=1
HOP_SECONDS=5
MAX_GAP_MS=1000
MIGRATE_TIMEOUT=120
BOOT_TIMEOUT=120
RUN_DIR=
GUEST_DIR=$(tw_guest_dir)
SUMMARY=

need_arg() { (($# >= 2)) || tw_die "$1 needs a value"; }
while (($#)); do
    case $1 in
        --round-trips) need_arg "$@"; ROUND_TRIPS=$2; shift ;;
        --two-hosts) TWO_HOSTS=1 ;;
        --backend) need_arg "$@"; BACKEND=$2; shift ;;
        --compare) COMPARE=1 ;;
        --tapwire) need_arg "$@"; TAPWIRE=$2; shift ;;
        --tapwire-args) need_arg "$@"; TAPWIRE_ARGS=$2; shift ;;
        --log-level) need_arg "$@"; LOG_LEVEL=$2; shift ;;
        --mem) need_arg "$@"; MEM=$2; shift ;;
        --stream-rate) need_arg "$@"; STREAM_RATE=$2; shift ;;
        --iperf-args) need_arg "$@"; IPERF_ARGS=$2; shift ;;
        --nic-args) need_arg "$@"; NIC_EXTRA=$2; shift ;;
        --max-bandwidth) need_arg "$@"; MAX_BW=$2; shift ;;
        --dwell) need_arg "$@"; DWELL=$2; shift ;;
        --hop-seconds) need_arg "$@"; HOP_SECONDS=$2; shift ;;
        --max-gap-ms) need_arg "$@"; MAX_GAP_MS=$2; shift ;;
        --migrate-timeout) need_arg "$@"; MIGRATE_TIMEOUT=$2; shift ;;
        --boot-timeout) need_arg "$@"; BOOT_TIMEOUT=$2; shift ;;
        --out) need_arg "$@"; RUN_DIR=$2; shift ;;
        --guest-dir) need_arg "$@"; GUEST_DIR=$2; shift ;;
        --summary) need_arg "$@"; SUMMARY=$2; shift ;;
        -h | --help) usage; exit 0 ;;
        *) usage >&2; tw_die "unknown argument: $1" ;;
    esac
    shift
done

case $BACKEND in tapwire | dpdk) ;; *) tw_die "--backend must be tapwire or dpdk, not '$BACKEND'" ;; esac
if [[ -z $ROUND_TRIPS ]]; then
    if [[ $BACKEND == dpdk || $TWO_HOSTS == 1 || $COMPARE == 1 ]]; then ROUND_TRIPS=3; else ROUND_TRIPS=10; fi
fi
for v in ROUND_TRIPS STREAM_RATE MAX_BW HOP_SECONDS MAX_GAP_MS MIGRATE_TIMEOUT BOOT_TIMEOUT; do
    [[ ${!v} =~ ^[0-9]+$ && ${!v} -gt 0 ]] || tw_die "--$(echo "$v" | tr '[:upper:]_' '[:lower:]-') must be a positive integer"
done
[[ $DWELL =~ ^[0-9]+(\.[0-9]+)?$ ]] || tw_die "--dwell must be a number of seconds"
[[ $MEM =~ ^[0-9]+[MG]$ ]] || tw_die "--mem must look like 512M or 1G"
MIGRATIONS=$((2 * ROUND_TRIPS))

tw_require_root

# ================================================================ --compare

if ((COMPARE)); then
    # Each backend in a run of its own (its own cleanup), same options; then the table.
    pass_args=()
    skip=0
    for a in "${ORIG_ARGS[@]}"; do
        if ((skip)); then skip=0; continue; fi
        case $a in
            --compare) ;;
            --backend | --summary | --out | --round-trips) skip=1 ;;
            *) pass_args+=("$a") ;;
        esac
    done
    CMP_DIR=$(mktemp -d /tmp/tw-mig-cmp.XXXXXX)
    trap 'rm -rf "$CMP_DIR"' EXIT
    rcs=()
    for be in tapwire dpdk; do
        tw_log "==== --compare: $be, $ROUND_TRIPS round trips"
        rc=0
        # DPDK is the anchor: its ping gap is measured against tapwire's, not held to the target.
        anchor=()
        [[ $be != dpdk ]] || anchor=(--max-gap-ms 600000)
        # Each run's own ROW lines are shown as "row": the comparison's rows below sum them up.
        "$0" "${pass_args[@]}" --backend "$be" --round-trips "$ROUND_TRIPS" --summary "$CMP_DIR/$be.json" "${anchor[@]}" |
            sed -u 's/^ROW /row /' || rc=$?
        rcs+=("$rc")
    done
    echo
    echo "| backend | mode | migrations | completed | median / max downtime (ms) | median / max ping gap (ms) | median / max TAP gap (ms) | median / max tapwire share (ms) | hash ok | checks |"
    echo "|---|---|---|---|---|---|---|---|---|---|"
    passed=0 failed=0 k=0
    for be in tapwire dpdk; do
        f=$CMP_DIR/$be.json rc=${rcs[k]} k=$((k + 1))
        if [[ -s $f ]]; then
            jq -r '"| \(.backend) | \(.mode) | \(.migrations) | \(.completed) | \(.downtime_median_ms) / \(.downtime_max_ms) | \(.gap_median_ms) / \(.gap_max_ms) | \(.tap_gap_median_ms) / \(.tap_gap_max_ms) | \(.share_median_ms) / \(.share_max_ms) (resume \(.resume_median_ms) / \(.resume_max_ms)) | \(.hash_ok) | \(.passed) passed, \(.failed) failed |"' "$f"
            jq -r '"ROW backend=\(.backend) check=\"\(.backend): \(.migrations) migrations, hash, iperf3, ping\" result=\"\(if .failed == 0 then "PASS" else "FAIL" end) (\(.completed) completed, QEMU downtime median \(.downtime_median_ms) ms, ping gap median \(.gap_median_ms) ms, TAP gap median \(.tap_gap_median_ms) ms)\""' "$f" >>"$CMP_DIR/rows"
            passed=$((passed + $(jq -r .passed "$f"))) failed=$((failed + $(jq -r .failed "$f")))
        else
            echo "| $be | - | - | - | - | - | - | - | - | run failed before its summary |"
            echo "ROW backend=$be check=migrations result=\"FAIL (the run failed before its summary, exit $rc)\"" >>"$CMP_DIR/rows"
            failed=$((failed + 1))
        fi
    done
    # The target: tapwire's ping gap at most 1.2x DPDK's in the same run (medians: with a few
    # migrations each, the max is one sample).
    tw_gap=$(jq -r .gap_median_ms "$CMP_DIR/tapwire.json" 2>/dev/null || echo -)
    dpdk_gap=$(jq -r .gap_median_ms "$CMP_DIR/dpdk.json" 2>/dev/null || echo -)
    if awk -v t="$tw_gap" -v d="$dpdk_gap" 'BEGIN { exit !(t != "-" && d != "-" && t + 0 <= 1.2 * d) }'; then
        result="PASS (ping gap median $tw_gap ms against DPDK's $dpdk_gap ms)"
        passed=$((passed + 1))
    else
        result="FAIL (ping gap median $tw_gap ms against DPDK's $dpdk_gap ms: over 1.2x)"
        failed=$((failed + 1))
    fi
    echo
    cat "$CMP_DIR/rows"
    echo "ROW backend=compare check=\"ping gap against DPDK vhost+TAP PMD, same run, at most 1.2x\" result=\"$result\""
    echo "$passed passed, $failed failed"
    for rc in "${rcs[@]}"; do ((rc == 0)) || exit 1; done
    ((failed == 0)) || exit 1
    exit 0
fi

# ================================================================ preparation

MODE=same-host
((TWO_HOSTS)) && MODE=two-hosts
TAPWIRECTL=
if [[ $BACKEND == tapwire ]]; then
    [[ -x $TAPWIRE ]] || tw_die "tapwire binary not found at $TAPWIRE (make release, or --tapwire BIN)"
    TAPWIRE=$(cd "$(dirname "$TAPWIRE")" && pwd)/$(basename "$TAPWIRE")
    TAPWIRECTL=$(dirname "$TAPWIRE")/tapwirectl
    [[ -x $TAPWIRECTL ]] || tw_die "tapwirectl not found next to tapwire ($TAPWIRECTL)"
fi
tw_ensure_packages iperf3:iperf3 ip:iproute2 bridge:iproute2 jq:jq python3:python3 \
    timeout:coreutils dpkg:busybox-static
[[ $BACKEND != dpdk ]] || tw_ensure_packages dpdk-testpmd:dpdk
tw_ensure_qemu10
tw_qemu_select 10

T0=$(tw_now)
"$TW_REPO_ROOT/Tools/guest-image.sh" "$GUEST_DIR" >&2
tw_require_guest_files "$GUEST_DIR" mig-guest.sh

RUN_DIR=${RUN_DIR:-/var/tmp/tapwire-migration/$(date +%Y%m%d-%H%M%S)-$MODE-$BACKEND-$$}
mkdir -p "$RUN_DIR"
RUN_DIR=$(cd "$RUN_DIR" && pwd)
tw_install_traps
# Unix socket paths must stay short: sockets in /tmp, logs in the run directory.
TMP=$(mktemp -d /tmp/tw-mig.XXXXXX)
tw_at_exit "rm -rf '$TMP'"
export TW_QMP_LOG=$RUN_DIR/qmp.log
TWM=$TW_REPO_ROOT/Tools/lib/twmig.py
STOP_FILE=$TMP/stream.stop

# ---------------------------------------------------------------- python helpers

twm() { python3 "$TWM" "$@"; }

# ---------------------------------------------------------------- results

PASSED=0 FAILED=0
declare -a FAIL_REASONS=()
# check NAME OK DETAIL...: one ROW per check.
check() {
    local name=$1 ok=$2; shift 2
    if ((ok)); then
        PASSED=$((PASSED + 1))
        echo "ROW backend=$BACKEND mode=$MODE check=$name result=PASS $*"
    else
        FAILED=$((FAILED + 1))
        FAIL_REASONS+=("$name: $*")
        echo "ROW backend=$BACKEND mode=$MODE check=$name result=FAIL $*"
        tw_warn "FAIL $name: $*"
    fi
}

# ---------------------------------------------------------------- network

GUEST_IP=$TW_GUEST_IP
HOST_IP=$TW_HOST_IP
MAC=$TW_GUEST_MAC
declare -a BE_NS BE_BR BE_TAP BE_SOCK BE_API BE_LOG BE_PID BE_PREFIX BE_UPLINK BE_FRAMES BE_FRAMES_PID
NS_BASE=twmig$$
if ((TWO_HOSTS)); then
    NS_A=${NS_BASE}a NS_B=${NS_BASE}b CLIENT_NS=${NS_BASE}c
    for ns in "$NS_A" "$NS_B" "$CLIENT_NS"; do
        tw_netns_create "$ns"
        tw_netns_no_ipv6 "$ns"
    done
    # Host A: bridge bra; host B: bridge brb; the underlay veth ul-a (A) <-> ul-b (B) joins them.
    ip -n "$NS_A" link add bra type bridge
    ip -n "$NS_B" link add brb type bridge
    ip link add ul-a netns "$NS_A" type veth peer name ul-b netns "$NS_B"
    ip -n "$NS_A" link set ul-a master bra up
    ip -n "$NS_B" link set ul-b master brb up
    # The client: eth0 in its own namespace, its peer cl-a a port of host A's bridge.
    ip link add cl-a netns "$NS_A" type veth peer name eth0 netns "$CLIENT_NS"
    ip -n "$NS_A" link set cl-a master bra up
    ip -n "$CLIENT_NS" addr add "$HOST_IP/$TW_PREFIX_LEN" dev eth0
    ip -n "$CLIENT_NS" link set eth0 up
    ip -n "$NS_A" link set bra up
    ip -n "$NS_B" link set brb up
    BE_NS=("$NS_A" "$NS_B") BE_BR=(bra brb) BE_UPLINK=(ul-a ul-b)
    tw_log "two hosts: $NS_A (bridge bra) and $NS_B (bridge brb) joined by veth ul-a/ul-b; client $CLIENT_NS ($HOST_IP) on bra"
else
    CLIENT_NS=${NS_BASE}h
    tw_netns_create "$CLIENT_NS"
    tw_netns_no_ipv6 "$CLIENT_NS"
    ip -n "$CLIENT_NS" link add br0 type bridge
    ip -n "$CLIENT_NS" addr add "$HOST_IP/$TW_PREFIX_LEN" dev br0
    ip -n "$CLIENT_NS" link set br0 up
    BE_NS=("$CLIENT_NS" "$CLIENT_NS") BE_BR=(br0 br0) BE_UPLINK=(- -)
    tw_log "host network: namespace $CLIENT_NS, bridge br0 with $HOST_IP"
fi
if [[ $BACKEND == tapwire ]]; then BE_TAP=(twm0 twm1); else BE_TAP=(dpm0 dpm1); fi

# ---------------------------------------------------------------- hugepages (dpdk)

if [[ $BACKEND == dpdk ]]; then
    # Two testpmd processes with -m 256: 2 x 128 pages of 2 MiB, plus a margin. Only what we
    # add is given back (other runs may use hugepages too).
    PAGES_NEEDED=300
    [[ $(awk '/^Hugepagesize:/ { print $2 }' /proc/meminfo) == 2048 ]] || tw_die "expected 2 MiB default hugepages"
    free_pages=$(awk '/^HugePages_Free:/ { print $2 }' /proc/meminfo)
    if ((free_pages < PAGES_NEEDED)); then
        added=$((PAGES_NEEDED - free_pages))
        echo $(($(cat /proc/sys/vm/nr_hugepages) + added)) >/proc/sys/vm/nr_hugepages
        tw_at_exit "echo \$((\$(cat /proc/sys/vm/nr_hugepages) - $added)) >/proc/sys/vm/nr_hugepages"
        free_pages=$(awk '/^HugePages_Free:/ { print $2 }' /proc/meminfo)
        ((free_pages >= PAGES_NEEDED)) || tw_die "only $free_pages free hugepages after asking for more (need $PAGES_NEEDED)"
    fi
    HUGE_DIR=$(awk '$3 == "hugetlbfs" { print $2; exit }' /proc/mounts)
    if [[ -z $HUGE_DIR ]]; then
        HUGE_DIR=/dev/hugepages
        mkdir -p "$HUGE_DIR"
        mount -t hugetlbfs nodev "$HUGE_DIR" || tw_die "cannot mount hugetlbfs on $HUGE_DIR"
        tw_at_exit "umount '$HUGE_DIR' 2>/dev/null || true"
    fi
fi

# ---------------------------------------------------------------- backends

# Both backends get exactly the same options (the guest sees the same device on both sides);
# only their socket, API socket and TAP differ.
read -r -a TW_EXTRA <<<"$TAPWIRE_ARGS"
start_backend() {
    local i=$1 ns=${BE_NS[$1]} tap=${BE_TAP[$1]}
    BE_SOCK[i]=$TMP/be$i.sock
    BE_API[i]=$TMP/be$i.api
    BE_LOG[i]=$RUN_DIR/$BACKEND-$i.log
    if [[ $BACKEND == tapwire ]]; then
        local cmd=("$TAPWIRE" --socket-path "${BE_SOCK[i]}" --tap "$tap" --api-socket "${BE_API[i]}"
            --name "mig$i" --mac "$MAC" --log-level "$LOG_LEVEL" "${TW_EXTRA[@]}")
        tw_log "backend $i in $ns: ${cmd[*]}"
        tw_spawn "$RUN_DIR/stamp-$i.log" python3 "$TWM" stamp "${BE_LOG[i]}" ip netns exec "$ns" "${cmd[@]}"
        BE_PID[i]=$TW_SPAWNED_PID
        tw_at_exit "tw_stop ${BE_PID[i]} 5"
        tw_wait_until 20 "${BE_PID[i]}" "tapwire $i's control API" tw_log_has "${BE_LOG[i]}" "control API on" ||
            tw_die "tapwire $i did not start (${BE_LOG[i]})"
    else
        # Forwarding on lcore 1 for backend 0 and on lcore 0 for backend 1: the two busy
        # loops on different cores.
        BE_PREFIX[i]=${NS_BASE}be$i
        local cmd=(dpdk-testpmd --file-prefix="${BE_PREFIX[i]}" -m 256 --no-pci --no-telemetry
            --vdev "net_vhost0,iface=${BE_SOCK[i]},queues=1" --vdev "net_tap0,iface=$tap"
            -l 0-1 --main-lcore "$i" -- --forward-mode=io --auto-start --stats-period=5
            --nb-cores=1 --total-num-mbufs=32768)
        tw_log "backend $i in $ns: ${cmd[*]}"
        tw_spawn "${BE_LOG[i]}" ip netns exec "$ns" "${cmd[@]}"
        BE_PID[i]=$TW_SPAWNED_PID
        tw_at_exit "tw_stop ${BE_PID[i]} 5; rm -rf /var/run/dpdk/${BE_PREFIX[i]}; rm -f '$HUGE_DIR'/${BE_PREFIX[i]}map_*"
        tw_wait_until 60 "${BE_PID[i]}" "testpmd $i's vhost socket" tw_is_socket "${BE_SOCK[i]}" ||
            tw_die "testpmd $i did not start (${BE_LOG[i]})"
    fi
    tw_wait_until 20 "${BE_PID[i]}" "TAP $tap in $ns" tw_netns_has_link "$ns" "$tap" ||
        tw_die "backend $i never created its TAP $tap"
    ip -n "$ns" link set "$tap" master "${BE_BR[i]}"
    ip -n "$ns" link set "$tap" up
    # When the guest's frames reach this TAP (the end of tapwire's share of the downtime).
    BE_FRAMES[i]=$RUN_DIR/frames-$tap.txt
    tw_spawn "$RUN_DIR/frames-$tap.log" ip netns exec "$ns" python3 "$TWM" frames "$tap" "$MAC" "${BE_FRAMES[i]}"
    BE_FRAMES_PID[i]=$TW_SPAWNED_PID
    tw_at_exit "tw_stop $TW_SPAWNED_PID 3"
}

# vm_json I: tapwire I's GET /vm (empty on failure).
vm_json() { "$TAPWIRECTL" --api-socket "${BE_API[$1]}" --json status 2>/dev/null || true; }
metrics_json() { curl -sf --max-time 5 --unix-socket "${BE_API[$1]}" http://localhost/metrics.json 2>/dev/null || true; }

# backend_serving I: what is wrong with backend I as the one serving the running guest (empty:
# nothing): alive, a frontend connected, every queue enabled, running and without a fault.
backend_serving() {
    local i=$1 js
    tw_alive "${BE_PID[i]}" || { echo "backend $i is gone"; return; }
    [[ $BACKEND == tapwire ]] || return 0
    js=$(vm_json "$i")
    [[ -n $js ]] || { echo "tapwire $i's API does not answer"; return; }
    jq -r '[if .state != "connected" then "state \(.state)" else empty end,
            (.queues[] | select((.enabled and .running and .fault == null) | not) |
             "queue \(.index) enabled=\(.enabled) running=\(.running) fault=\(.fault)")] | join("; ")' <<<"$js"
}
# backend_connected I: what is wrong with backend I as the one a destination QEMU just
# connected to (before the migration: the queues start when the guest runs there).
backend_connected() {
    tw_alive "${BE_PID[$1]}" || { echo "backend $1 is gone"; return; }
    [[ $BACKEND == tapwire ]] || return 0
    local state
    state=$(vm_json "$1" | jq -r .state)
    [[ $state == connected ]] || echo "tapwire $1 has no frontend (state ${state:-unknown})"
}
# backend_idle I: what is wrong with backend I as the one whose QEMU just quit.
backend_idle() {
    local i=$1 js
    tw_alive "${BE_PID[i]}" || { echo "backend $i is gone"; return; }
    [[ $BACKEND == tapwire ]] || return 0
    js=$(vm_json "$i")
    [[ -n $js ]] || { echo "tapwire $i's API does not answer"; return; }
    jq -r 'if .state != "waiting" then "state \(.state), not waiting" else empty end' <<<"$js"
}
# wait_ok TIMEOUT FUNC ARGS...: until FUNC prints nothing; prints its last complaint on timeout.
wait_ok() {
    local timeout=$1 why; shift
    local deadline=$((SECONDS + timeout))
    while :; do
        why=$("$@")
        [[ -n $why ]] || return 0
        ((SECONDS < deadline)) || { echo "$why"; return 1; }
        sleep 0.2
    done
}

start_backend 0
start_backend 1

# fdb I: the port bridge I has learned the guest MAC on ("-" if none).
fdb_port() {
    bridge -n "${BE_NS[$1]}" fdb show br "${BE_BR[$1]}" 2>/dev/null |
        awk -v m="$MAC" 'tolower($1) == tolower(m) && $2 == "dev" { print $3; f = 1; exit } END { if (!f) print "-" }'
}
fdb_show() {
    local i
    for i in 0 1; do
        echo "  $1: bridge fdb of ${BE_BR[i]} (${BE_NS[i]}) for $MAC: $(bridge -n "${BE_NS[i]}" fdb show br "${BE_BR[i]}" 2>/dev/null | grep -i "^$MAC" | tr '\n' ';' || true)" >&2
    done
}

# ---------------------------------------------------------------- traffic on the host side

IPERF_SERVER_LOG=$RUN_DIR/iperf3-server.log
tw_spawn "$IPERF_SERVER_LOG" ip netns exec "$CLIENT_NS" iperf3 -s -B "$HOST_IP" --forceflush
IPERF_SERVER_PID=$TW_SPAWNED_PID
tw_at_exit "tw_stop $IPERF_SERVER_PID 3"

# ---------------------------------------------------------------- QEMU

# The guest's iperf3 runs for the time the migrations are expected to take; further short
# sessions follow if they take longer (mig-guest.sh runs them while the stream lasts).
WARMUP=3
LOAD_SECONDS=$((WARMUP + MIGRATIONS * HOP_SECONDS + 5))
GUEST_CMD="sh /etc/tapwire/mig-guest.sh $LOAD_SECONDS $HOST_IP 5001 10"
APPEND="console=ttyS0 panic=-1 quiet tw.ip=$GUEST_IP/$TW_PREFIX_LEN tw.host=$HOST_IP tw.ping=2 tw.cmd=\"$GUEST_CMD\""
[[ -z $IPERF_ARGS ]] || APPEND+=" tw.iperf=\"$IPERF_ARGS\""

declare -a QEMU_PID QMP CONSOLE QEMU_LOG
# qemu_cmd K: the command line of the QEMU for hop K (hop 0 boots; hop K > 0 is the
# destination of migration K), on backend K % 2. Only the chardev's path, the QMP socket and
# the console file differ between hops.
qemu_cmd() {
    local k=$1 be=$(($1 % 2))
    QMP[k]=$TMP/qmp$k.sock
    CONSOLE[k]=$RUN_DIR/console-$k.log
    QEMU_LOG[k]=$RUN_DIR/qemu-$k.log
    QCMD=("$QEMU_BIN" "${QEMU_DATA[@]}" -accel tcg -nodefaults -no-user-config -name tapwire-mig
        -m "$MEM" -object "memory-backend-memfd,id=mem,size=$MEM,share=on"
        -machine "q35,memory-backend=mem" -smp 1
        -kernel "$GUEST_DIR/vmlinuz" -initrd "$GUEST_DIR/initramfs.cpio.gz" -append "$APPEND"
        -display none -serial "file:${CONSOLE[k]}" -no-reboot
        -qmp "unix:${QMP[k]},server=on,wait=off"
        -chardev "socket,id=c0,path=${BE_SOCK[be]}" -netdev vhost-user,id=n0,chardev=c0
        -device "virtio-net-pci,id=nic0,netdev=n0,mac=$MAC$NIC_EXTRA")
    ((k == 0)) || QCMD+=(-incoming defer)
}
start_qemu() {
    local k=$1
    qemu_cmd "$k"
    printf '%q ' "${QCMD[@]}" >"$RUN_DIR/qemu-$k.cmdline"
    echo >>"$RUN_DIR/qemu-$k.cmdline"
    : >"${CONSOLE[k]}"
    tw_spawn "${QEMU_LOG[k]}" "${QCMD[@]}"
    QEMU_PID[k]=$TW_SPAWNED_PID
    tw_at_exit "tw_stop ${QEMU_PID[k]} 5"
}
# quit_qemu K: QMP quit, then wait for the process (SIGTERM/SIGKILL after 10 s). Returns 1
# when it had to be killed.
quit_qemu() {
    local k=$1 i
    twm quit "${QMP[k]}"
    for ((i = 0; i < 100; i++)); do tw_alive "${QEMU_PID[k]}" || break; sleep 0.1; done
    if tw_alive "${QEMU_PID[k]}"; then tw_stop "${QEMU_PID[k]}" 3; return 1; fi
    wait "${QEMU_PID[k]}" 2>/dev/null || true
}
# reply_after EPOCH: the ping got a reply sent after EPOCH.
reply_after() { tail -n 200 "$PING_OUT" 2>/dev/null | awk -v t="$1" '!/^#/ && $2 > t { f = 1 } END { exit !f }'; }
# hmp K COMMAND: an HMP command on QEMU K; its output.
hmp() {
    twm qmp "${QMP[$1]}" "$(jq -cn --arg c "$2" '{execute: "human-monitor-command", arguments: {"command-line": $c}}')" 2>&1 |
        jq -r '. // empty' 2>/dev/null | tr -d '\r' || true
}
# diagnose K WHY: what QEMU K and its backend say about the NIC, into the run directory.
diagnose() {
    local k=$1 be=$(($1 % 2)) out=$RUN_DIR/diagnosis-$1.txt q
    {
        echo "== $2"
        echo "== query-status: $(hmp "$k" 'info status')"
        # Not `info virtio-queue-status`: for a vhost device QEMU answers it with a
        # GET_VRING_BASE, which stops the backend's ring. The rings' indexes are read from
        # guest memory instead.
        for q in 0 1; do
            local vs avail used num
            vs=$(hmp "$k" "info virtio-vhost-queue-status /machine/peripheral/nic0/virtio-backend $q")
            echo "== vhost view of queue $q"; echo "$vs"
            avail=$(awk '/avail_phys:/ { print $2 }' <<<"$vs") used=$(awk '/used_phys:/ { print $2 }' <<<"$vs")
            num=$(awk '/num:/ { print $2; exit }' <<<"$vs")
            if [[ -n $avail && -n $used && -n $num ]]; then
                echo "-- avail flags, idx:"; hmp "$k" "xp /2hx $avail"
                echo "-- used_event:"; hmp "$k" "xp /1hx $(printf '0x%x' $((avail + 4 + 2 * num)))"
                echo "-- used flags, idx:"; hmp "$k" "xp /2hx $used"
                echo "-- avail_event:"; hmp "$k" "xp /1hx $(printf '0x%x' $((used + 4 + 8 * num)))"
            fi
        done
        if [[ $BACKEND == tapwire ]]; then
            echo "== tapwire $be GET /vm"; vm_json "$be"
            echo "== tapwire $be /metrics.json"; metrics_json "$be"
        fi
        echo "== last guest heartbeats"; all_consoles | grep -a '^tw-mig-beat' | tail -n 5
    } >"$out" 2>&1
    tw_warn "diagnosis of hop $k in $out"
}
all_consoles() {
    local k
    for ((k = 0; k < ${#CONSOLE[@]}; k++)); do tr -d '\r' <"${CONSOLE[k]}" 2>/dev/null || true; done
}
consoles_have() { all_consoles | grep -aqF -- "$1"; }

on_failure() {
    ((TW_EXIT_RC != 0)) || return 0
    local k last=$((${#CONSOLE[@]} - 1))
    all_consoles >"$TMP/console.all"
    tw_tail_log "$TMP/console.all" 30 "guest console (all hops, $RUN_DIR/console-*.log)"
    for ((k = (last > 1 ? last - 1 : 0); k <= last; k++)); do
        tw_tail_log "${QEMU_LOG[k]}" 10 "QEMU of hop $k (${QEMU_LOG[k]})"
    done
    tw_tail_log "${BE_LOG[0]}" 25 "backend 0 (${BE_LOG[0]})"
    tw_tail_log "${BE_LOG[1]}" 25 "backend 1 (${BE_LOG[1]})"
    [[ ! -s $TW_QMP_LOG ]] || tw_tail_log "$TW_QMP_LOG" 8 "QMP traffic ($TW_QMP_LOG)"
    tw_log "run directory: $RUN_DIR"
}
tw_at_exit on_failure

tw_log "booting the guest on backend 0 (QEMU $QEMU_VERSION, $MEM, TCG; run dir $RUN_DIR)"
T_BOOT=$(tw_now)
start_qemu 0
rc=0
tw_wait_marker "${CONSOLE[0]}" TW-MIG-LISTENING "$BOOT_TIMEOUT" "${QEMU_PID[0]}" TW-GUEST-FAIL || rc=$?
case $rc in
    0) ;;
    1) tw_die "guest not ready after ${BOOT_TIMEOUT}s" ;;
    2) tw_die "QEMU exited before the guest was ready" ;;
    3) tw_die "guest setup failed: $(tr -d '\r' <"${CONSOLE[0]}" | grep -a -m1 TW-GUEST-FAIL)" ;;
esac
BOOT_SECONDS=$(tw_elapsed "$T_BOOT")
LOAD_T0=$SECONDS
tw_log "guest up after ${BOOT_SECONDS}s; starting the stream (${STREAM_RATE} B/s), the 10 ms ping and the guest's iperf3 (${LOAD_SECONDS}s planned)"
if [[ $BACKEND == tapwire ]]; then
    tw_log "negotiated on backend 0: $(vm_json 0 | jq -r '.negotiated_features | join(",")')"
fi

PING_OUT=$RUN_DIR/ping.txt
tw_spawn "$RUN_DIR/ping.log" ip netns exec "$CLIENT_NS" python3 "$TWM" ping "$GUEST_IP" 0.01 "$PING_OUT"
PING_PID=$TW_SPAWNED_PID
tw_at_exit "tw_stop $PING_PID 3"
# Announces from the guest's MAC as the bridges see them (one sniffer per bridge).
declare -a ANNOUNCE_OUT
nbridges=2
((TWO_HOSTS)) || nbridges=1
for ((i = 0; i < nbridges; i++)); do
    ANNOUNCE_OUT[i]=$RUN_DIR/announce-${BE_BR[i]}.txt
    tw_spawn "$RUN_DIR/sniff-${BE_BR[i]}.log" ip netns exec "${BE_NS[i]}" python3 "$TWM" sniff "${BE_BR[i]}" "$MAC" "${ANNOUNCE_OUT[i]}"
    tw_at_exit "tw_stop $TW_SPAWNED_PID 3"
done
# announces_since EPOCH BACKEND: "garp=N rarp=M" seen since EPOCH by the bridge of BACKEND's host.
announces_since() {
    local f=${ANNOUNCE_OUT[0]}
    ((TWO_HOSTS)) && f=${ANNOUNCE_OUT[$2]}
    awk -v t="$1" '$1 > t { n[$2]++ } END { printf "garp=%d rarp=%d\n", n["garp"], n["rarp"] }' "$f" 2>/dev/null || echo "garp=0 rarp=0"
}
SEED=$((0x7a9e + ROUND_TRIPS))
STREAM_OUT=$RUN_DIR/stream.json
tw_spawn "$RUN_DIR/stream.log" ip netns exec "$CLIENT_NS" python3 "$TWM" send "$GUEST_IP" 5001 "$SEED" \
    "$STREAM_RATE" "$STOP_FILE" "$STREAM_OUT"
STREAM_PID=$TW_SPAWNED_PID
tw_at_exit "tw_stop $STREAM_PID 3"
sleep "$WARMUP"

if ((TWO_HOSTS)); then
    FDB0=$(fdb_port 0) FDB1=$(fdb_port 1)
    tw_log "before the first migration: guest MAC on bra via $FDB0, on brb via $FDB1"
    fdb_show "before"
fi

# ================================================================ migrations

declare -a DOWNTIME GAP TOTAL T_START T_DONE SHARE
WINDOWS=$TMP/windows
: >"$WINDOWS"
COMPLETED=0
for ((m = 1; m <= MIGRATIONS; m++)); do
    from=$(((m - 1) % 2)) to=$((m % 2)) src=$((m - 1))
    why=()
    tw_alive "${QEMU_PID[src]}" || { check "migration-$m" 0 "the source QEMU (hop $src) is gone"; break; }
    start_qemu "$m"
    if ! twm wait-qmp "${QMP[m]}" 30 >/dev/null; then
        check "migration-$m" 0 "the destination QEMU did not come up ($(tail -n 3 "${QEMU_LOG[m]}" | tr '\n' ' '))"
        break
    fi
    # The destination connected to its backend at start-up.
    w=$(wait_ok 10 backend_connected "$to") || why+=("before the migration: $w")
    res=$(twm migrate "${QMP[src]}" "${QMP[m]}" "unix:$TMP/mig$m.sock" "$MAX_BW" "$MIGRATE_TIMEOUT")
    echo "$res" >>"$RUN_DIR/migrations.jsonl"
    status=$(jq -r .status <<<"$res")
    DOWNTIME[m]=$(jq -r '.downtime // "-"' <<<"$res")
    TOTAL[m]=$(jq -r '."total-time" // "-"' <<<"$res")
    T_START[m]=$(jq -r .t_start <<<"$res")
    T_DONE[m]=$(jq -r .t_done <<<"$res")
    if [[ $status != completed ]]; then
        why+=("status $status: $(jq -r '."error-desc" // "no error given"' <<<"$res")")
    else
        COMPLETED=$((COMPLETED + 1))
        [[ $(jq -r '."dst-status"' <<<"$res") == running ]] || why+=("the destination is $(jq -r '."dst-status"' <<<"$res"), not running")
    fi
    if [[ $status == completed ]]; then
        # The source has handed over: it quits, and its backend must outlive that, idle.
        quit_qemu "$src" || why+=("the source QEMU did not quit when asked")
        w=$(wait_ok 10 backend_idle "$from") || why+=("backend $from after its QEMU quit: $w")
        w=$(wait_ok 10 backend_serving "$to") || why+=("backend $to serving the guest: $w")
    else
        # The guest stays where it was; the destination goes.
        quit_qemu "$m" || true
    fi
    tw_alive "${BE_PID[from]}" || why+=("backend $from died")
    tw_alive "${BE_PID[to]}" || why+=("backend $to died")
    if grep -aiE 'vhost|error' "${QEMU_LOG[m]}" | grep -avE 'failed to initialize module|Only modules from the same build' |
        grep -aq .; then
        why+=("QEMU (hop $m) said: $(grep -aiE 'vhost|error' "${QEMU_LOG[m]}" | grep -avE 'failed to initialize module|Only modules' | head -n 2 | tr '\n' ' ')")
    fi
    sleep "$DWELL"
    # The guest answers at its new place (the ping gets a reply sent after the switch-over).
    reachable=1
    if [[ $status == completed ]]; then
        t_done=$(jq -r .t_done <<<"$res")
        for ((i = 0; i < 50; i++)); do reply_after "$t_done" && break; sleep 0.2; done
        if ! reply_after "$t_done"; then
            reachable=0
            why+=("no ping reply from the guest within $((50 / 5 + ${DWELL%.*}))s of the switch-over")
            diagnose "$m" "migration $m: guest unreachable"
        fi
    fi
    fdb=
    if ((TWO_HOSTS)); then
        # The guest is on host $to now: its bridge has the MAC on the backend's TAP, the other
        # bridge on its underlay port.
        f_to=$(fdb_port "$to") f_from=$(fdb_port "$from")
        fdb="fdb_${BE_BR[to]}=$f_to fdb_${BE_BR[from]}=$f_from"
        [[ $f_to == "${BE_TAP[to]}" ]] || why+=("${BE_BR[to]} has the guest MAC on $f_to, not ${BE_TAP[to]}")
        [[ $f_from == "${BE_UPLINK[from]}" ]] || why+=("${BE_BR[from]} has the guest MAC on $f_from, not ${BE_UPLINK[from]}")
        ((m > 2)) || fdb_show "after migration $m (to host $to)"
    fi
    # The destination announced the guest (gratuitous ARP from the guest with
    # GUEST_ANNOUNCE, or the backend's RARP after SEND_RARP).
    announce=$(announces_since "${T_START[m]}" "$to")
    if [[ $status == completed && $announce == "garp=0 rarp=0" ]]; then
        for ((i = 0; i < 10; i++)); do
            sleep 0.2
            announce=$(announces_since "${T_START[m]}" "$to")
            [[ $announce == "garp=0 rarp=0" ]] || break
        done
        [[ $announce != "garp=0 rarp=0" ]] || why+=("no gratuitous ARP or RARP from the guest's MAC after the switch-over")
    fi
    echo "$m ${T_START[m]}" >>"$WINDOWS"
    detail="from=$from to=$to status=$status downtime_ms=${DOWNTIME[m]} total_ms=${TOTAL[m]} setup_ms=$(jq -r '."setup-time" // "-"' <<<"$res") ram_mb=$(jq -r '((."ram-transferred" // 0) / 1048576 | floor)' <<<"$res") dirty_syncs=$(jq -r '."ram-dirty-sync-count" // "-"' <<<"$res") announce:$announce $fdb"
    tw_log "migration $m/$MIGRATIONS backend $from -> $to: $status, downtime ${DOWNTIME[m]} ms, total ${TOTAL[m]} ms"
    if ((${#why[@]})); then
        check "migration-$m" 0 "$detail why=\"$(IFS=';'; echo "${why[*]}")\""
        [[ $status == completed && $reachable == 1 ]] || break
    else
        check "migration-$m" 1 "$detail"
    fi
done
DONE_MIGRATIONS=$((m > MIGRATIONS ? MIGRATIONS : m))
# The QEMU the guest runs in now.
LAST=0
for ((k = 0; k <= DONE_MIGRATIONS; k++)); do tw_alive "${QEMU_PID[k]:-}" && LAST=$k; done

# ================================================================ the end of the load

touch "$STOP_FILE"
tw_log "migrations over; ending the stream and waiting for the guest's iperf3 and hash"
# The planned iperf3 session ends LOAD_SECONDS after the guest started it; a follow-up one
# lasts 10 s more at most.
left=$((LOAD_T0 + LOAD_SECONDS - SECONDS))
deadline=$((SECONDS + (left > 0 ? left : 0) + 40))
# A guest that stopped answering is not waited for.
((${reachable:-1})) || deadline=$((SECONDS + 5))
until consoles_have TW-MIG-DONE; do
    ((SECONDS < deadline)) || break
    tw_alive "${QEMU_PID[LAST]:-}" || break
    sleep 0.5
done
for ((i = 0; i < 100; i++)); do [[ -s $STREAM_OUT ]] && break; sleep 0.2; done
kill -INT "$PING_PID" 2>/dev/null || true
for ((i = 0; i < 30; i++)); do tw_alive "$PING_PID" || break; sleep 0.1; done
tw_stop "$PING_PID" 2
echo "end $(tw_now)" >>"$WINDOWS"

# Windows: migration m from its start to the next one's start (the last to the end of the ping).
awk 'NR > 1 { print prev_name, prev_start, $2 } { prev_name = $1; prev_start = $2 }' "$WINDOWS" >"$TMP/windows.3"
twm gaps "$PING_OUT" "$TMP/windows.3" >"$TMP/gaps"
while read -r name gap; do GAP[name]=$gap; done <"$TMP/gaps"

# Each completed migration's outage, from the backends' stamped logs and the TAPs' frames:
#   share: from the source backend's GET_VRING_BASE (its first "stopped at" log line) to the
#     guest's first frame on the destination's TAP: tapwire's share of the downtime as the
#     migration issue defines it (tapwire only). It has two parts:
#     handover: from that GET_VRING_BASE to the destination's rings running again (its last
#       "started at" line): QEMU stopping the guest, sending the last dirty pages and the device
#       state, and starting the device; tapwire answers each message in microseconds;
#     resume: from the rings running to the guest's first frame on the new TAP: the destination
#       tapwire's start-up and the guest's first transmit;
#   tap_gap: from the guest's last frame on the source's TAP to its first on the destination's.
# outage M -> "share_ms handover_ms resume_ms tap_gap_ms" ("-" where a mark is missing).
outage() {
    local m=$1 from=$(((m - 1) % 2)) to=$((m % 2)) t_stop=- t_run=- t_first t_last
    if [[ $BACKEND == tapwire ]]; then
        t_stop=$(awk -v a="${T_START[m]}" -v b="${T_DONE[m]}" '/ stopped at / && $1 >= a && $1 <= b { print $1; exit }' "${BE_LOG[from]}")
        [[ -n $t_stop ]] || t_stop=-
    fi
    # The source went quiet in the spell that holds the switch-over (or the stop, when known).
    local mark=$t_stop
    [[ $mark != - ]] || mark=${T_DONE[m]}
    t_last=$(awk -v t="$mark" '$1 <= t && ($2 == "-" || $2 > t) { print $1; exit }' "${BE_FRAMES[from]}" 2>/dev/null)
    t_first=$(awk -v t="${t_last:-$mark}" '$2 != "-" && $2 > t { print $2; exit }' "${BE_FRAMES[to]}" 2>/dev/null)
    if [[ $t_stop != - && -n $t_first ]]; then
        t_run=$(awk -v a="$t_stop" -v b="$t_first" '/ started at / && $1 >= a && $1 <= b { t = $1 } END { print t }' "${BE_LOG[to]}")
        [[ -n $t_run ]] || t_run=-
    fi
    awk -v s="$t_stop" -v r="$t_run" -v l="${t_last:--}" -v f="${t_first:--}" '
        function ms(a, b) { return (a == "-" || b == "-") ? "-" : sprintf("%.1f", (b - a) * 1000) }
        BEGIN { print ms(s, f), ms(s, r), ms(r, f), (l == 0 ? "-" : ms(l, f)) }'
}
# The frame sniffers write their last line when stopped.
for ((i = 0; i < 2; i++)); do tw_stop "${BE_FRAMES_PID[i]}" 3; done
declare -a TAP_GAP HANDOVER RESUME
for ((m = 1; m <= DONE_MIGRATIONS; m++)); do
    [[ $(sed -n "${m}p" "$RUN_DIR/migrations.jsonl" | jq -r .status 2>/dev/null) == completed ]] || continue
    read -r SHARE[m] HANDOVER[m] RESUME[m] TAP_GAP[m] < <(outage "$m")
done

# ---------------------------------------------------------------- checks at the end

guest_hash=$(all_consoles | awk '/^TW-MIG-HASH / { print $2, $3; exit }' || true)
sent_hash=$(jq -r '.sha256 // "-"' "$STREAM_OUT" 2>/dev/null || echo -)
sent_bytes=$(jq -r '.bytes // 0' "$STREAM_OUT" 2>/dev/null || echo 0)
sent_error=$(jq -r '.error // empty' "$STREAM_OUT" 2>/dev/null || echo "no result from the sender")
HASH_OK=0
[[ -n $guest_hash && ${guest_hash%% *} == "$sent_hash" && ${guest_hash##* } == "$sent_bytes" ]] && HASH_OK=1
ok=$HASH_OK
[[ -z $sent_error ]] || ok=0
check stream-hash "$ok" "bytes_sent=$sent_bytes sha256_sent=$sent_hash guest=\"${guest_hash:-none}\" sender_error=\"${sent_error:-none}\" longest_send_block_s=$(jq -r '.longest_send_blocked_s // "-"' "$STREAM_OUT" 2>/dev/null || echo -)"

iperf_rcs=$(all_consoles | awk '/^TW-MIG-IPERF-RC / { printf "%s%s", (n++ ? "," : ""), $3 }' || true)
iperf_lines=$(all_consoles | grep -a '^tw-mig-iperf .*sender' | sed 's/  */ /g' | tr '\n' ';' || true)
ok=1
[[ -n $iperf_rcs ]] || ok=0
[[ $iperf_rcs =~ ^(0,)*0$ ]] || ok=0
check guest-iperf3 "$ok" "sessions_rc=${iperf_rcs:-none} planned_s=$LOAD_SECONDS summary=\"$iperf_lines\""

ok=1
((COMPLETED == MIGRATIONS)) || ok=0
check all-migrations "$ok" "completed=$COMPLETED of $MIGRATIONS"

# Backends: alive, and each served its share of QEMUs (tapwire counts its connections).
for i in 0 1; do
    ok=1 detail=
    tw_alive "${BE_PID[i]}" || { ok=0; detail="gone"; }
    if [[ $BACKEND == tapwire ]] && ((ok)); then
        mj=$(metrics_json "$i")
        conns=$(jq -r '.connections_total // "-"' <<<"$mj")
        disc=$(jq -r '.disconnects // "-"' <<<"$mj")
        # Backend 0 served hops 0, 2, 4, ...; backend 1 hops 1, 3, ...
        want=$(((DONE_MIGRATIONS + 2 - i) / 2))
        detail="connections=$conns disconnects=$disc expected_connections=$want"
        [[ $conns == "$want" ]] || ok=0
        if grep -aqE ' (error|critical) tapwire\[' "${BE_LOG[i]}"; then
            detail+=" log_errors=\"$(grep -aE ' (error|critical) tapwire\[' "${BE_LOG[i]}" | head -n 2 | tr '\n' ' ')\""
            ok=0
        fi
    fi
    ((ok)) && detail="alive $detail"
    check "backend-$i-survived" "$ok" "$detail"
done

# Ping gaps: per migration, then the max and the median.
gaps_list=() downs_list=()
for ((m = 1; m <= DONE_MIGRATIONS; m++)); do
    [[ -n ${GAP[m]:-} ]] && gaps_list+=("${GAP[m]}")
    [[ ${DOWNTIME[m]:-"-"} != "-" ]] && downs_list+=("${DOWNTIME[m]}")
done
stats() { # stats N... -> "median max" (or "- -")
    (($#)) || { echo "- -"; return; }
    printf '%s\n' "$@" | sort -n | awk '{ v[NR] = $1 } END { m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2; printf "%g %g\n", m, v[NR] }'
}
read -r GAP_MED GAP_MAX < <(stats "${gaps_list[@]}")
read -r DOWN_MED DOWN_MAX < <(stats "${downs_list[@]}")
shares=() tapgaps=() resumes=()
for ((m = 1; m <= DONE_MIGRATIONS; m++)); do
    [[ ${SHARE[m]:--} == - ]] || shares+=("${SHARE[m]}")
    [[ ${TAP_GAP[m]:--} == - ]] || tapgaps+=("${TAP_GAP[m]}")
    [[ ${RESUME[m]:--} == - ]] || resumes+=("${RESUME[m]}")
done
read -r SHARE_MED SHARE_MAX < <(stats "${shares[@]}")
read -r TAPGAP_MED TAPGAP_MAX < <(stats "${tapgaps[@]}")
read -r RESUME_MED RESUME_MAX < <(stats "${resumes[@]}")
ping_summary=$(grep '^#' "$PING_OUT" 2>/dev/null | sed 's/^# //' || echo "none")
# Each migration's gap must be under the target. QEMU's own downtime (the guest stopped while
# the last pages go) is part of every gap; when that alone reached the target (seen on this
# 2-core TCG machine under load) the backend is judged on what it added beyond it, which must
# stay under half the target. Such migrations are named in the row.
ok=1 excused=
[[ $GAP_MAX != - ]] || ok=0
for ((m = 1; m <= DONE_MIGRATIONS; m++)); do
    g=${GAP[m]:-} d=${DOWNTIME[m]:-"-"}
    [[ -n $g ]] || continue
    awk -v g="$g" -v t="$MAX_GAP_MS" 'BEGIN { exit !(g < t) }' && continue
    if [[ $d != - ]] && awk -v g="$g" -v d="$d" -v t="$MAX_GAP_MS" 'BEGIN { exit !(d >= t && g - d < t / 2) }'; then
        excused+="${excused:+,}migration-$m:qemu_downtime_${d}ms:gap_${g}ms"
        continue
    fi
    ok=0
done
check ping-gap "$ok" "max_ms=$GAP_MAX median_ms=$GAP_MED target_ms=$MAX_GAP_MS${excused:+ over_target_by_qemu_downtime=$excused} tap_gap_median_ms=$TAPGAP_MED tapwire_share_median_ms=$SHARE_MED resume_median_ms=$RESUME_MED ping=\"$ping_summary\""

# ---------------------------------------------------------------- report

echo
echo "migration | from -> to | status | QEMU downtime (ms) | total (ms) | ping gap (ms) | TAP gap (ms) | tapwire share = handover + resume (ms)"
for ((m = 1; m <= DONE_MIGRATIONS; m++)); do
    st=$(sed -n "${m}p" "$RUN_DIR/migrations.jsonl" | jq -r .status 2>/dev/null || echo -)
    printf '%9d | %d -> %d     | %s | %s | %s | %s | %s | %s = %s + %s\n' "$m" $(((m - 1) % 2)) $((m % 2)) "$st" "${DOWNTIME[m]:--}" "${TOTAL[m]:--}" "${GAP[m]:--}" "${TAP_GAP[m]:--}" "${SHARE[m]:--}" "${HANDOVER[m]:--}" "${RESUME[m]:--}"
    echo "ROW backend=$BACKEND mode=$MODE migration=$m status=$st downtime_ms=${DOWNTIME[m]:--} total_ms=${TOTAL[m]:--} ping_gap_ms=${GAP[m]:--} tap_gap_ms=${TAP_GAP[m]:--} tapwire_share_ms=${SHARE[m]:--} handover_ms=${HANDOVER[m]:--} resume_ms=${RESUME[m]:--}"
done
echo "downtime (QEMU): median $DOWN_MED ms, max $DOWN_MAX ms; ping gap: median $GAP_MED ms, max $GAP_MAX ms"
echo "at the TAPs: the guest's last frame on the old TAP to its first on the new: median $TAPGAP_MED ms, max $TAPGAP_MAX ms"
[[ $BACKEND != tapwire ]] ||
    echo "tapwire's share (GET_VRING_BASE at the source to the guest's first frame on the new TAP): median $SHARE_MED ms, max $SHARE_MAX ms; of it, from the destination's rings running to that frame: median $RESUME_MED ms, max $RESUME_MAX ms"
echo "stream: $sent_bytes bytes, sha256 $sent_hash, guest $( ((HASH_OK)) && echo "matches" || echo "DIFFERS: ${guest_hash:-none}")"
echo "ROW backend=$BACKEND mode=$MODE summary migrations=$MIGRATIONS completed=$COMPLETED downtime_median_ms=$DOWN_MED downtime_max_ms=$DOWN_MAX gap_median_ms=$GAP_MED gap_max_ms=$GAP_MAX tap_gap_median_ms=$TAPGAP_MED tap_gap_max_ms=$TAPGAP_MAX share_median_ms=$SHARE_MED share_max_ms=$SHARE_MAX resume_median_ms=$RESUME_MED resume_max_ms=$RESUME_MAX hash_ok=$HASH_OK boot_s=$BOOT_SECONDS total_s=$(tw_elapsed "$T0")"
echo "run directory: $RUN_DIR ($(tw_elapsed "$T0")s)"
if [[ -n $SUMMARY ]]; then
    jq -n --arg backend "$BACKEND" --arg mode "$MODE" --argjson migrations "$MIGRATIONS" \
        --argjson completed "$COMPLETED" --arg dmed "$DOWN_MED" --arg dmax "$DOWN_MAX" \
        --arg gmed "$GAP_MED" --arg gmax "$GAP_MAX" --argjson hash "$HASH_OK" \
        --arg tmed "$TAPGAP_MED" --arg tmax "$TAPGAP_MAX" --arg smed "$SHARE_MED" --arg smax "$SHARE_MAX" --arg rmed "$RESUME_MED" --arg rmax "$RESUME_MAX" \
        --argjson passed "$PASSED" --argjson failed "$FAILED" --arg run_dir "$RUN_DIR" \
        '{backend: $backend, mode: $mode, migrations: $migrations, completed: $completed,
          downtime_median_ms: $dmed, downtime_max_ms: $dmax, gap_median_ms: $gmed, gap_max_ms: $gmax,
          tap_gap_median_ms: $tmed, tap_gap_max_ms: $tmax, share_median_ms: $smed, share_max_ms: $smax, resume_median_ms: $rmed, resume_max_ms: $rmax,
          hash_ok: ($hash == 1), passed: $passed, failed: $failed, run_dir: $run_dir}' >"$SUMMARY"
fi
echo "$PASSED passed, $FAILED failed"
((FAILED == 0)) || exit 1
