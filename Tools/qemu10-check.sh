#!/usr/bin/env bash
# Real-guest checks on QEMU 10 through tapwire, driven over QMP. One boot of a 2-vCPU guest
# serves all three checks:
#   multiqueue   tapwire --queues 2, virtio-net-pci mq=on: iperf3 both ways (4 streams, two
#                guest iperf3 servers pinned to the two vCPUs) must move frames on both queue
#                pairs (tapwire's per-queue counters); then the guest switches between 1 and
#                2 channels several times while traffic runs both ways (QEMU turns the second
#                pair off and on with SET_VRING_ENABLE); at the end both pairs carry traffic.
#   mem-hotplug  -m 512M,slots=4,maxmem=2G: a 128M pc-dimm onlined as kernel memory (receive
#                buffers land there: tapwire's resident pages of that mapping grow), then a
#                256M memfd pc-dimm onlined movable while traffic runs (ADD_MEM_REG), used by
#                guest transmit (iperf3 -Z), offlined and removed with device_del (REM_MEM_REG);
#                traffic must flow after each step.
#   nic-hotplug  a second tapwire (own TAP, own subnet) stays up while the guest gets a NIC
#                through it and loses it again, ROUNDS times (chardev-add, netdev_add,
#                device_add; ping; device_del, netdev_del, chardev-remove); each round must
#                carry traffic, and tapwire's open descriptors must return to their count
#                before the first round.
# Guest side: Fixtures/guest/agent.sh (commands over a second serial port, independent of the
# network), nic-watch.sh (addresses hot-plugged NICs), channels-flap.sh, mem-online.sh.
# All traffic stays inside a network namespace this script creates.
#
# Usage: Tools/qemu10-check.sh [options]
#   --tapwire BIN          tapwire binary (default $TAPWIRE_BIN or .build/release/tapwire)
#   --qemu 10|PATH         QEMU to run (default 10: the one in /opt/qemu-10.0)
#   --rounds N             NIC hot-plug rounds (default 20)
#   --flaps N              1 -> 2 channel round trips while traffic runs (default 4)
#   --time SECONDS         iperf3 duration of each measured run (default 4)
#   --boot-timeout SECONDS wait for the guest (default 150)
#   --out DIR              logs and results (default /var/tmp/tapwire-qemu10/<time>-<pid>)
#   --guest-dir DIR        guest image (default $TAPWIRE_GUEST_DIR or /var/tmp/tapwire-guest)
#   --only LIST            run only these checks (comma-separated: multiqueue,mem-hotplug,nic-hotplug)
# Output: one "ROW frontend=qemu version=... check=... result=PASS|FAIL ..." line per check on
# stdout, then a Markdown table and "N passed, N failed".
# Exit status: 0 when every check passed; on failure the ends of tapwire's, QEMU's and the
# guest console's logs go to stderr.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

usage() { sed -n '2,/^# Exit status/s/^# \{0,1\}//p' "$0"; }

TAPWIRE=${TAPWIRE_BIN:-$TW_REPO_ROOT/.build/release/tapwire}
QEMU_WHICH=10
ROUNDS=20
FLAPS=4
IPERF_TIME=4
BOOT_TIMEOUT=150
RUN_DIR=
GUEST_DIR=$(tw_guest_dir)
ONLY=multiqueue,mem-hotplug,nic-hotplug

need_arg() { (($# >= 2)) || tw_die "$1 needs a value"; }
while (($#)); do
    case $1 in
        --tapwire) need_arg "$@"; TAPWIRE=$2; shift ;;
        --qemu) need_arg "$@"; QEMU_WHICH=$2; shift ;;
        --rounds) need_arg "$@"; ROUNDS=$2; shift ;;
        --flaps) need_arg "$@"; FLAPS=$2; shift ;;
        --time) need_arg "$@"; IPERF_TIME=$2; shift ;;
        --boot-timeout) need_arg "$@"; BOOT_TIMEOUT=$2; shift ;;
        --out) need_arg "$@"; RUN_DIR=$2; shift ;;
        --guest-dir) need_arg "$@"; GUEST_DIR=$2; shift ;;
        --only) need_arg "$@"; ONLY=$2; shift ;;
        -h | --help) usage; exit 0 ;;
        *) usage >&2; tw_die "unknown argument: $1" ;;
    esac
    shift
done
for v in ROUNDS FLAPS IPERF_TIME BOOT_TIMEOUT; do
    [[ ${!v} =~ ^[0-9]+$ && ${!v} -gt 0 ]] || tw_die "--${v,,} must be a positive integer"
done
((ROUNDS <= 200)) || tw_die "--rounds must be at most 200 (one MAC byte and one address each)"

tw_require_root
[[ -x $TAPWIRE ]] || tw_die "tapwire binary not found at $TAPWIRE (make release, or --tapwire BIN)"
TAPWIRE=$(cd "$(dirname "$TAPWIRE")" && pwd)/$(basename "$TAPWIRE")
tw_ensure_packages iperf3:iperf3 ip:iproute2 jq:jq curl:curl python3:python3 timeout:coreutils \
    dpkg:busybox-static
[[ $QEMU_WHICH != 10* ]] || tw_ensure_qemu10
tw_qemu_select "$QEMU_WHICH"
((QEMU_MAJOR >= 10)) || tw_die "this check is for QEMU 10 or later, not $QEMU_VERSION"
QEMU_SHORT=$(echo "$QEMU_VERSION" | cut -d. -f1,2)

T0=$(tw_now)
"$TW_REPO_ROOT/Tools/guest-image.sh" "$GUEST_DIR" >&2
tw_require_guest_files "$GUEST_DIR" agent.sh nic-watch.sh channels-flap.sh mem-online.sh

RUN_DIR=${RUN_DIR:-/var/tmp/tapwire-qemu10/$(date +%Y%m%d-%H%M%S)-$$}
mkdir -p "$RUN_DIR"
RUN_DIR=$(cd "$RUN_DIR" && pwd)
CONSOLE=$RUN_DIR/console.log
: >"$CONSOLE"
TW_A_LOG=$RUN_DIR/tapwire-mq.log
TW_B_LOG=$RUN_DIR/tapwire-hot.log
QEMU_LOG=$RUN_DIR/qemu.log

tw_install_traps
# Unix socket paths must stay short: sockets live in /tmp, logs in the run directory.
TMP=$(mktemp -d /tmp/tw-q10.XXXXXX)
tw_at_exit "rm -rf '$TMP'"
SOCK_A=$TMP/mq.sock API_A=$TMP/mq.api
SOCK_B=$TMP/hot.sock API_B=$TMP/hot.api
QMP_SOCK=$TMP/qmp.sock AGENT_SOCK=$TMP/agent.sock
export TW_QMP_LOG=$RUN_DIR/qmp.log TW_LIB=$TW_REPO_ROOT/Tools/lib

# ---------------------------------------------------------------- QMP and agent client

TWQ=$TMP/twq.py
cat >"$TWQ" <<'PY'
"""QMP and guest-agent client for Tools/qemu10-check.sh (stdlib only).
  twq.py qmp SOCK JSON...           run QMP commands in order on one connection; print each
                                    return as one JSON line; exit 1 at the first error
  twq.py qmp-del SOCK ID TIMEOUT    device_del ID and wait for its DEVICE_DELETED event; print
                                    the seconds it took (exit 124 if it never came)
  twq.py agent SOCK TIMEOUT CMD...  run CMD in the guest (Fixtures/guest/agent.sh); print its
                                    output; exit with its status (124: no answer in time)
QMP traffic is appended to $TW_QMP_LOG when set (Tools/lib/qmp.py)."""
import json, os, socket, sys, time

sys.path.insert(0, os.environ["TW_LIB"])
from qmp import QMP, run_commands  # noqa: E402

def die(msg, rc=1):
    print(f"twq: {msg}", file=sys.stderr)
    sys.exit(rc)

def qmp_main(args):
    try:
        run_commands(args[0], args[1:])
    except RuntimeError as e:
        die(str(e))

def qmp_del_main(args):
    path, dev, timeout = args[0], args[1], float(args[2])
    q = QMP(path)
    t0 = time.monotonic()
    try:
        q.call("device_del", {"id": dev})
    except RuntimeError as e:
        die(str(e))
    if q.wait_event("DEVICE_DELETED", lambda d: d.get("device") == dev, timeout) is None:
        die(f"no DEVICE_DELETED for {dev} within {timeout:g}s", 124)
    print(f"{time.monotonic() - t0:.2f}")

def agent_main(args):
    path, timeout, cmd = args[0], float(args[1]), " ".join(args[2:])
    tag = f"{os.getpid()}x{time.monotonic_ns()}"
    begin, end = f"TW-AGENT-BEGIN {tag}".encode(), f"TW-AGENT-END {tag} ".encode()
    deadline = time.monotonic() + timeout
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(path)
    except OSError as e:
        die(f"cannot reach the guest agent's serial port {path}: {e}", 125)
    s.sendall(f"{tag} {cmd}\n".encode())
    buf = b""
    while True:
        i = buf.find(begin)
        j = buf.find(end, max(i, 0))
        if i >= 0 and j >= 0 and buf.find(b"\n", j) >= 0:
            k = buf.find(b"\n", j)
            sys.stdout.write(buf[i + len(begin):j].lstrip(b"\r\n").decode(errors="replace").replace("\r", ""))
            sys.exit(int(buf[j + len(end):k].strip() or 1))
        left = deadline - time.monotonic()
        if left <= 0:
            die(f"no answer from the guest agent within {timeout:g}s to: {cmd}", 124)
        s.settimeout(left)
        try:
            data = s.recv(65536)
        except socket.timeout:
            continue
        if not data:
            die("the agent's serial port closed", 125)
        buf += data

if __name__ == "__main__":
    mains = {"qmp": qmp_main, "qmp-del": qmp_del_main, "agent": agent_main}
    if len(sys.argv) < 3 or sys.argv[1] not in mains:
        die(__doc__, 2)
    try:
        mains[sys.argv[1]](sys.argv[2:])
    except TimeoutError as e:
        die(str(e), 124)
    except OSError as e:  # QEMU unreachable, or it hung up
        die(f"QMP: {e}")
PY

qmp() { python3 "$TWQ" qmp "$QMP_SOCK" "$@"; }
qmp_del() { python3 "$TWQ" qmp-del "$QMP_SOCK" "$@"; }
# agent TIMEOUT CMD: runs CMD (one line of sh) in the guest.
agent() { python3 "$TWQ" agent "$AGENT_SOCK" "$@"; }

# ---------------------------------------------------------------- helpers

# frames API: per-queue frame counters of the tapwire behind that API socket, "q0 q1 q2 ...".
frames() {
    curl -sf --max-time 10 --unix-socket "$1" http://localhost/metrics.json |
        jq -r '[.queues | sort_by(.index)[] | .frames] | join(" ")' || echo ""
}
vm_status() { curl -sf --max-time 10 --unix-socket "$1" http://localhost/vm; }
# delta "A B C" "D E F" -> "D-A E-B F-C"
delta() { awk -v a="$1" -v b="$2" 'BEGIN { n = split(a, x); split(b, y); for (i = 1; i <= n; i++) printf "%s%d", (i > 1 ? " " : ""), y[i] - x[i]; print "" }'; }
nth() { echo "$1" | awk -v i="$2" '{ print $(i + 1) }'; } # nth "LIST" ZERO_BASED_INDEX
fd_count() { ls "/proc/$1/fd" 2>/dev/null | wc -l; }
fd_list() { ls -l "/proc/$1/fd" 2>/dev/null | awk 'NR > 1 { print $9, $11 }' | sort -n; } # "FD TARGET" lines
log_lines() { wc -l <"$1"; }
# since_line LOG N: the log after its first N lines.
since_line() { tail -n +"$(($2 + 1))" "$1"; }
# mapping_rss PID SIZE_KB: resident KiB of PID's memfd mappings of exactly SIZE_KB ("none" if
# there is none): how much of that guest memory region the process has touched.
mapping_rss() {
    awk -v want="$2" '
        /^[0-9a-f]+-[0-9a-f]+ / { m = ($0 ~ /memfd:/); sz = -1 }
        m && /^Size:/ { sz = $2 }
        m && /^Rss:/ && sz == want { found = 1; sum += $2 }
        END { if (found) print sum; else print "none" }' "/proc/$1/smaps"
}
wait_log() { # wait_log LOG FROM_LINE REGEX TIMEOUT: REGEX appears after line FROM_LINE
    local deadline=$((SECONDS + $4))
    until since_line "$1" "$2" | grep -qE -- "$3"; do
        ((SECONDS < deadline)) || return 1
        sleep 0.2
    done
}

# iperf_run NAME SECONDS PORT STREAMS [ARGS]: one iperf3 client in the netns against the guest;
# JSON in the run dir. Prints Gbit/s (0 on failure). A guest server still busy with the last
# test gets one retry.
iperf_run() {
    local name=$1 secs=$2 port=$3 streams=$4 out parsed try
    shift 4
    out=$RUN_DIR/iperf3-$name.json
    for try in 1 2; do
        timeout --kill-after=5 $((secs + 30)) ip netns exec "$NS" iperf3 -c "$TW_GUEST_IP" -p "$port" \
            -t "$secs" -P "$streams" --connect-timeout 5000 --json "$@" >"$out" 2>"$out.stderr" || true
        if parsed=$(tw_iperf3_parse "$out" 2>"$out.why"); then
            echo "${parsed%% *}"
            return 0
        fi
        grep -q busy "$out" "$out.why" 2>/dev/null || break
        sleep 1
    done
    tw_warn "iperf3 $name: $(cat "$out.why") $(head -c 200 "$out.stderr")"
    echo 0
}
# iperf_pair NAME SECONDS [ARGS]: two clients at once, one per guest vCPU (servers on 5203,
# pinned to vCPU 0, and 5204, pinned to vCPU 1), 2 streams each. Prints "GBPS_A GBPS_B".
iperf_pair() {
    local name=$1 secs=$2 a b
    shift 2
    iperf_run "$name-cpu0" "$secs" 5203 2 "$@" >"$TMP/iperf-a" &
    a=$!
    iperf_run "$name-cpu1" "$secs" 5204 2 "$@" >"$TMP/iperf-b" &
    b=$!
    wait "$a" || true
    wait "$b" || true
    echo "$(cat "$TMP/iperf-a") $(cat "$TMP/iperf-b")"
}
sum2() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a + b }'; }
both_positive() { tw_is_positive "$1" && tw_is_positive "$2"; }

# guest_diagnosis TAG: what the guest says after a failure (through the agent, which needs no
# network), and whether its console shows a stalled vCPU.
guest_diagnosis() {
    local out=$RUN_DIR/guest-$1.txt
    agent 20 'ip -br addr; echo; cat /proc/interrupts | grep -i -e virtio -e LOC; echo; dmesg | tail -n 25' >"$out" 2>&1 ||
        echo "(the guest agent did not answer)" >>"$out"
    tw_log "guest state after the failure: $out"
    if tr -d '\r' <"$CONSOLE" | grep -aq 'rcu: INFO: rcu_preempt detected stalls'; then
        bad "the guest kernel reports an RCU stall: $(tr -d '\r' <"$CONSOLE" | grep -a -m1 -A1 'detected stalls' | tail -n1 | sed 's/^\[[ 0-9.]*\] //' | cut -c1-120) (see $CONSOLE)"
    fi
}

# Results: CHECK_RESULT[name]=PASS|FAIL, CHECK_ROW[name]=key=value..., CHECK_WHY[name]=reasons.
declare -A CHECK_RESULT=() CHECK_ROW=() CHECK_WHY=() CHECK_SECONDS=()
CURRENT=
begin_check() { CURRENT=$1; CHECK_WHY[$1]=; CHECK_ROW[$1]=; CHECK_T0=$(tw_now); tw_log "== check $1"; }
bad() {
    [[ "; ${CHECK_WHY[$CURRENT]}; " != *"; $*; "* ]] || return 0 # said already
    tw_warn "$CURRENT: $*"
    CHECK_WHY[$CURRENT]+="${CHECK_WHY[$CURRENT]:+; }$*"
}
row() { CHECK_ROW[$CURRENT]+="${CHECK_ROW[$CURRENT]:+ }$*"; }
end_check() {
    CHECK_SECONDS[$CURRENT]=$(tw_elapsed "$CHECK_T0")
    if [[ -z ${CHECK_WHY[$CURRENT]} ]]; then CHECK_RESULT[$CURRENT]=PASS; else CHECK_RESULT[$CURRENT]=FAIL; fi
    tw_log "== $CURRENT: ${CHECK_RESULT[$CURRENT]} (${CHECK_SECONDS[$CURRENT]}s)"
}
alive_or_bad() {
    tw_alive "$QEMU_PID" || { bad "QEMU is gone"; return 1; }
    tw_alive "$TW_A_PID" || { bad "tapwire (queues 2) is gone"; return 1; }
    tw_alive "$TW_B_PID" || { bad "tapwire (hot-plug) is gone"; return 1; }
}

on_failure() {
    ((TW_EXIT_RC != 0)) || return 0
    tr -d '\r' <"$CONSOLE" | sed '/^TW-GUEST-ETHTOOL-BEGIN$/,/^TW-GUEST-ETHTOOL-END$/d' >"$TMP/console.short"
    tw_tail_log "$TMP/console.short" 40 "guest console ($CONSOLE)"
    tw_tail_log "$QEMU_LOG" 20 "QEMU output ($QEMU_LOG)"
    # Without the per-message trace lines (they are in the full logs).
    grep -v ' trace ' "$TW_A_LOG" >"$TMP/tw-a.short" 2>/dev/null || true
    grep -v ' trace ' "$TW_B_LOG" >"$TMP/tw-b.short" 2>/dev/null || true
    tw_tail_log "$TMP/tw-a.short" 30 "tapwire --queues 2 ($TW_A_LOG, trace lines left out)"
    tw_tail_log "$TMP/tw-b.short" 30 "tapwire hot-plug ($TW_B_LOG, trace lines left out)"
    [[ ! -s $TW_QMP_LOG ]] || tw_tail_log "$TW_QMP_LOG" 12 "QMP traffic ($TW_QMP_LOG)"
    tw_log "run directory: $RUN_DIR"
}
# Cleanups may run while a command's output is redirected (a signal arrives during it): the
# logs go to the script's own stderr, kept on fd 9.
# (fd 9 is closed for the processes started below: it would count among tapwire's descriptors.)
exec 9>&2
tw_at_exit 'on_failure 2>&9'

# ---------------------------------------------------------------- network, backends

NS=tw-q10-$$
tw_netns_create "$NS"
tw_netns_no_ipv6 "$NS"
HOT_NET=10.78.0
HOT_HOST_IP=$HOT_NET.1

TW_A_PID= TW_B_PID= QEMU_PID= SAMPLER_PID=
tw_at_exit 'tw_stop "$SAMPLER_PID" 1'
tw_log "starting tapwire --queues 2 (TAP tw0) and a second tapwire for hot-plugged NICs (TAP tw1)"
tw_spawn "$TW_A_LOG" ip netns exec "$NS" "$TAPWIRE" --socket-path "$SOCK_A" --tap tw0 --queues 2 \
    --api-socket "$API_A" --name mq --log-level trace 9>&-
TW_A_PID=$TW_SPAWNED_PID
tw_at_exit 'tw_stop "$TW_A_PID" 5'
tw_spawn "$TW_B_LOG" ip netns exec "$NS" "$TAPWIRE" --socket-path "$SOCK_B" --tap tw1 \
    --api-socket "$API_B" --name hot --log-level trace 9>&-
TW_B_PID=$TW_SPAWNED_PID
tw_at_exit 'tw_stop "$TW_B_PID" 5'
for pair in "$TW_A_PID:$TW_A_LOG" "$TW_B_PID:$TW_B_LOG"; do
    tw_wait_until 20 "${pair%%:*}" "tapwire to listen" tw_log_has "${pair#*:}" "control API on" ||
        tw_die "tapwire did not start (${pair#*:})"
done
tw_wait_until 10 "$TW_A_PID" "TAP tw0" tw_netns_has_link "$NS" tw0 || tw_die "no tw0"
tw_wait_until 10 "$TW_B_PID" "TAP tw1" tw_netns_has_link "$NS" tw1 || tw_die "no tw1"
tw_netns_addr "$NS" tw0 "$TW_HOST_IP/$TW_PREFIX_LEN"
tw_netns_addr "$NS" tw1 "$HOT_HOST_IP/24"

# ---------------------------------------------------------------- guest

PRE="/etc/tapwire/agent.sh & /etc/tapwire/nic-watch.sh $HOT_NET & taskset 1 iperf3 -s -D -p 5203; taskset 2 iperf3 -s -D -p 5204; ethtool -L eth0 combined 2"
APPEND="console=ttyS0 panic=-1 quiet tw.ip=$TW_GUEST_IP/$TW_PREFIX_LEN tw.host=$TW_HOST_IP memhp_default_state=offline tw.pre=\"$PRE\""
QEMU_CMD=("$QEMU_BIN" "${QEMU_DATA[@]}" -accel tcg -nodefaults -no-user-config
    -machine q35,memory-backend=mem -smp 2
    -m 512M,slots=4,maxmem=2G -object memory-backend-memfd,id=mem,size=512M,share=on
    -kernel "$GUEST_DIR/vmlinuz" -initrd "$GUEST_DIR/initramfs.cpio.gz" -append "$APPEND"
    -display none -serial "file:$CONSOLE" -serial "unix:$AGENT_SOCK,server=on,wait=off" -no-reboot
    -qmp "unix:$QMP_SOCK,server=on,wait=off"
    -chardev "socket,id=c0,path=$SOCK_A" -netdev vhost-user,id=n0,chardev=c0,queues=2
    -device "virtio-net-pci,netdev=n0,mq=on,vectors=6,mac=$TW_GUEST_MAC"
    -device pcie-root-port,id=hp0,chassis=1,slot=1)
printf '%q ' "${QEMU_CMD[@]}" >"$RUN_DIR/qemu.cmdline"
echo >>"$RUN_DIR/qemu.cmdline"
tw_log "booting the guest (QEMU $QEMU_VERSION, 2 vCPUs, 512M + hot-plug slots; run dir $RUN_DIR)"
T_BOOT=$(tw_now)
tw_spawn "$QEMU_LOG" "${QEMU_CMD[@]}" 9>&-
QEMU_PID=$TW_SPAWNED_PID
tw_at_exit 'tw_stop "$QEMU_PID" 5'
rc=0
tw_wait_marker "$CONSOLE" TW-GUEST-READY "$BOOT_TIMEOUT" "$QEMU_PID" TW-GUEST-FAIL || rc=$?
case $rc in
    0) ;;
    1) tw_die "guest not ready after ${BOOT_TIMEOUT}s" ;;
    2) tw_die "QEMU exited before the guest was ready" ;;
    3) tw_die "guest setup failed: $(tr -d '\r' <"$CONSOLE" | grep -a -m1 TW-GUEST-FAIL)" ;;
esac
tw_wait_marker "$CONSOLE" "tw-agent: ready" 30 "$QEMU_PID" || tw_die "the guest agent did not start"
agent 30 'echo ok' >/dev/null || tw_die "the guest agent does not answer"
BOOT_SECONDS=$(tw_elapsed "$T_BOOT")
tw_log "guest ready after ${BOOT_SECONDS}s"

# ================================================================ A: multiqueue

check_multiqueue() {
    begin_check multiqueue
    alive_or_bad || { end_check; return; }
    local ch st f0 f1 d gbps flap_log enable0 enable1 rc seen
    ch=$(agent 30 "ethtool -l eth0 | awk '/^Current/ { c = 1 } c && /^Combined:/ { print \$2; exit }'" || true)
    st=$(vm_status "$API_A" | jq -r '.queue_pairs_enabled' || echo "?")
    tw_log "guest eth0 has $ch combined channel(s); tapwire has $st queue pair(s) enabled"
    [[ $ch == 2 ]] || bad "guest eth0 has '$ch' combined channels, not 2"
    [[ $st == 2 ]] || bad "tapwire has '$st' queue pairs enabled, not 2"

    # Host -> guest: frames on receive queues 0 and 2; guest -> host: transmit queues 1 and 3.
    local phase
    for phase in initial final; do
        if [[ $phase == final ]]; then
            ch=$(agent 30 "ethtool -l eth0 | awk '/^Current/ { c = 1 } c && /^Combined:/ { print \$2; exit }'" || true)
            st=$(vm_status "$API_A" | jq -c '[.queues[] | .enabled]' || echo "?")
            [[ $ch == 2 ]] || bad "after the flaps eth0 has '$ch' channels, not 2"
            [[ $st == '[true,true,true,true]' ]] || bad "after the flaps tapwire's queues are enabled: $st"
        fi
        f0=$(frames "$API_A")
        read -r ga gb < <(iperf_pair "mq-$phase-h2g" "$IPERF_TIME")
        f1=$(frames "$API_A")
        d=$(delta "$f0" "$f1")
        tw_log "$phase host->guest: $(sum2 "$ga" "$gb") Gbit/s; frames per queue (rx0 tx1 rx2 tx3): $d"
        row "${phase}_h2g_gbps=$(sum2 "$ga" "$gb") ${phase}_h2g_rx_frames=q0:$(nth "$d" 0),q2:$(nth "$d" 2)"
        both_positive "$ga" "$gb" || bad "$phase host->guest iperf3 failed ($ga, $gb Gbit/s)"
        both_positive "$(nth "$d" 0)" "$(nth "$d" 2)" || bad "$phase host->guest did not use both receive queues (rx0 $(nth "$d" 0), rx2 $(nth "$d" 2))"
        f0=$f1
        read -r ga gb < <(iperf_pair "mq-$phase-g2h" "$IPERF_TIME" -R)
        f1=$(frames "$API_A")
        d=$(delta "$f0" "$f1")
        tw_log "$phase guest->host: $(sum2 "$ga" "$gb") Gbit/s; frames per queue (rx0 tx1 rx2 tx3): $d"
        row "${phase}_g2h_gbps=$(sum2 "$ga" "$gb") ${phase}_g2h_tx_frames=q1:$(nth "$d" 1),q3:$(nth "$d" 3)"
        both_positive "$ga" "$gb" || bad "$phase guest->host iperf3 failed ($ga, $gb Gbit/s)"
        both_positive "$(nth "$d" 1)" "$(nth "$d" 3)" || bad "$phase guest->host did not use both transmit queues (tx1 $(nth "$d" 1), tx3 $(nth "$d" 3))"

        [[ $phase == initial ]] || break
        # Channels 1 <-> 2 while traffic runs both ways: host->guest through the server on
        # vCPU 0, guest->host through the one on vCPU 1.
        local flap_secs=$((FLAPS * 3 + 6)) la lb pa pb line0
        line0=$(log_lines "$TW_A_LOG")
        # Sample what tapwire says about its pairs while the guest flaps.
        (while :; do vm_status "$API_A" | jq -r '.queue_pairs_enabled' 2>/dev/null; sleep 0.2; done) >"$RUN_DIR/pairs-enabled.txt" 2>/dev/null &
        SAMPLER_PID=$!
        f0=$(frames "$API_A")
        iperf_run mq-flap-h2g "$flap_secs" 5203 2 >"$TMP/flap-a" &
        pa=$!
        iperf_run mq-flap-g2h "$flap_secs" 5204 2 -R >"$TMP/flap-b" &
        pb=$!
        sleep 2
        tw_log "switching the guest between 1 and 2 channels $FLAPS times while iperf3 runs both ways (${flap_secs}s)"
        rc=0
        tw_interruptible agent $((FLAPS * 30 + 30)) "/etc/tapwire/channels-flap.sh $FLAPS 1" >"$RUN_DIR/channels-flap.txt" 2>&1 || rc=$?
        sed 's/^/  guest: /' "$RUN_DIR/channels-flap.txt" >&2
        ((rc == 0)) || bad "channels-flap.sh exited with $rc"
        wait "$pa" || true
        wait "$pb" || true
        tw_stop "$SAMPLER_PID" 1
        SAMPLER_PID=
        f1=$(frames "$API_A")
        d=$(delta "$f0" "$f1")
        la=$(cat "$TMP/flap-a") lb=$(cat "$TMP/flap-b")
        enable0=$(grep -c 'tw-flap: .* combined 1$' "$RUN_DIR/channels-flap.txt" || true)
        enable1=$(grep -c 'tw-flap: .* combined 2$' "$RUN_DIR/channels-flap.txt" || true)
        local msgs
        msgs=$(since_line "$TW_A_LOG" "$line0" | grep -c 'SET_VRING_ENABLE' || true)
        seen=$(sort -u "$RUN_DIR/pairs-enabled.txt" | grep -E '^[0-9]+$' | paste -sd/ - || true)
        tw_log "during the flaps: host->guest $la, guest->host $lb Gbit/s; $enable0 switches to 1 and $enable1 to 2; $msgs SET_VRING_ENABLE; tapwire reported ${seen:-?} pair(s) enabled; frames $d"
        row "flaps=$((enable0 + enable1)) set_vring_enable_msgs=$msgs pairs_enabled_seen=${seen:-none} flap_h2g_gbps=$la flap_g2h_gbps=$lb"
        row "flap_frames=rx0:$(nth "$d" 0),tx1:$(nth "$d" 1),rx2:$(nth "$d" 2),tx3:$(nth "$d" 3)"
        both_positive "$la" "$lb" || bad "iperf3 during the channel changes failed ($la, $lb Gbit/s)"
        ((enable0 == FLAPS && enable1 == FLAPS)) || bad "the guest made $enable0 + $enable1 channel changes, not $FLAPS + $FLAPS"
        ((msgs >= 2 * FLAPS)) || bad "tapwire got only $msgs SET_VRING_ENABLE during $((2 * FLAPS)) channel changes"
        [[ $seen == 1/2 ]] || tw_warn "tapwire's /vm showed '${seen:-nothing}' pairs enabled while the guest flapped (sampled every 0.2 s)"
        since_line "$TW_A_LOG" "$line0" | grep -E ' (error|critical) ' >"$TMP/errors" || true
        [[ ! -s $TMP/errors ]] || bad "tapwire logged errors during the flaps: $(head -n 2 "$TMP/errors" | cut -c1-200)"
    done
    local drops
    drops=$(curl -sf --unix-socket "$API_A" http://localhost/metrics.json | jq -r '[.queues[] | "q\(.index):\(.drops.queue_disabled // 0)"] | join(",")' || echo "?")
    row "queue_disabled_drops=$drops"
    alive_or_bad || true
    end_check
}

# ================================================================ C: memory hot-plug

MIB=1048576
check_mem_hotplug() {
    begin_check mem-hotplug
    alive_or_bad || { end_check; return; }
    local line0 out rc rss0 rss1 bg g ga gb d secs blocks
    # 1. A 128M dimm onlined as kernel memory (ZONE_NORMAL, which the guest's kernel
    #    allocations, receive buffers included, prefer over the boot memory's DMA32).
    line0=$(log_lines "$TW_A_LOG")
    qmp "{\"execute\":\"object-add\",\"arguments\":{\"qom-type\":\"memory-backend-memfd\",\"id\":\"mem-k\",\"size\":$((128 * MIB)),\"share\":true}}" \
        '{"execute":"device_add","arguments":{"driver":"pc-dimm","id":"dimm-k","memdev":"mem-k"}}' >/dev/null ||
        bad "hot-adding the 128M dimm failed"
    if wait_log "$TW_A_LOG" "$line0" 'ADD_MEM_REG: [0-9]+ region' 20; then
        tw_log "tapwire: $(since_line "$TW_A_LOG" "$line0" | grep -m1 -oE 'ADD_MEM_REG: .*')"
    else
        bad "tapwire logged no ADD_MEM_REG for the 128M dimm"
    fi
    out=$(agent 60 "/etc/tapwire/mem-online.sh online_kernel 1 20" 2>&1) || bad "onlining the 128M dimm failed: $out"
    tw_log "guest onlined (kernel): $(echo "$out" | paste -sd, -)"
    rss0=$(mapping_rss "$TW_A_PID" $((128 * 1024)))
    read -r ga gb < <(iperf_pair mem-k-h2g 3)
    rss1=$(mapping_rss "$TW_A_PID" $((128 * 1024)))
    tw_log "host->guest $(sum2 "$ga" "$gb") Gbit/s; tapwire's resident KiB of the 128M region: $rss0 -> $rss1"
    both_positive "$ga" "$gb" || bad "host->guest after the 128M dimm failed"
    local landed=no
    [[ $rss1 =~ ^[0-9]+$ ]] && ((rss1 > 0)) && landed=yes
    row "rx_buffers_in_hotplugged_mem=$landed rx_dimm_touched_kib=$rss1"

    # 2. The 256M memfd dimm under traffic, onlined movable so that it can go again.
    line0=$(log_lines "$TW_A_LOG")
    iperf_run mem-add-h2g 6 5203 2 >"$TMP/bg" &
    bg=$!
    sleep 1.5
    qmp "{\"execute\":\"object-add\",\"arguments\":{\"qom-type\":\"memory-backend-memfd\",\"id\":\"mem1\",\"size\":$((256 * MIB)),\"share\":true}}" \
        '{"execute":"device_add","arguments":{"driver":"pc-dimm","id":"dimm1","memdev":"mem1"}}' >/dev/null ||
        bad "hot-adding the 256M dimm failed"
    wait "$bg" || true
    g=$(cat "$TMP/bg")
    if wait_log "$TW_A_LOG" "$line0" 'ADD_MEM_REG: [0-9]+ region' 20; then
        row "add=\"$(since_line "$TW_A_LOG" "$line0" | grep -m1 -oE 'ADD_MEM_REG: [0-9]+ region\(s\), [0-9]+ MiB')\""
        tw_log "tapwire: $(since_line "$TW_A_LOG" "$line0" | grep -m1 -oE 'ADD_MEM_REG: .*')"
    else
        bad "tapwire logged no ADD_MEM_REG for the 256M dimm"
    fi
    tw_log "host->guest while the dimm was added: $g Gbit/s"
    tw_is_positive "$g" || bad "host->guest iperf3 across the hot-add failed"
    row "h2g_across_add_gbps=$g"
    out=$(agent 60 "/etc/tapwire/mem-online.sh online_movable 2 20" 2>&1) || bad "onlining the 256M dimm failed: $out"
    blocks=$(echo "$out" | awk '$2 == "online" { print $1 }' | paste -sd' ' -)
    tw_log "guest onlined (movable): $(echo "$out" | paste -sd, -)"
    echo "$out" | grep -q Movable || bad "the 256M dimm is not in ZONE_MOVABLE: $out"
    # Guest transmit from page-cache pages (iperf3 -Z sends its tmpfs file with sendfile), which
    # ZONE_MOVABLE takes first: tapwire then reads frames out of the new region.
    tw_spawn "$RUN_DIR/iperf3-host-server.log" ip netns exec "$NS" iperf3 -s -B "$TW_HOST_IP" -p 5301 9>&-
    local srv=$TW_SPAWNED_PID
    sleep 0.5
    rss0=$(mapping_rss "$TW_A_PID" $((256 * 1024)))
    out=$(agent 60 "iperf3 -c $TW_HOST_IP -p 5301 -t 3 -Z -f g | grep -E 'receiver|error'" 2>&1) ||
        bad "guest iperf3 -Z into the host failed: $out"
    rss1=$(mapping_rss "$TW_A_PID" $((256 * 1024)))
    tw_stop "$srv" 3
    g=$(echo "$out" | awk '/receiver/ { for (i = 1; i < NF; i++) if ($(i + 1) ~ /bits\/sec/) print $i }' | tail -n1)
    tw_log "guest->host (iperf3 -Z) ${g:-?} Gbit/s; tapwire's resident KiB of the 256M region: $rss0 -> $rss1"
    row "g2h_zerocopy_gbps=${g:-0} tx_dimm_touched_kib=$rss1"

    # 3. Offline and remove it: REM_MEM_REG, and traffic goes on.
    out=$(agent 120 "/etc/tapwire/mem-online.sh offline $blocks" 2>&1) || bad "offlining $blocks failed: $out"
    tw_log "guest offlined: $(echo "$out" | paste -sd, -)"
    line0=$(log_lines "$TW_A_LOG")
    iperf_run mem-del-h2g 5 5203 2 >"$TMP/bg" &
    bg=$!
    sleep 1
    rc=0
    secs=$(qmp_del dimm1 60) || rc=$?
    if ((rc == 0)); then
        tw_log "DEVICE_DELETED for dimm1 after ${secs}s"
        row "device_deleted_s=$secs"
        qmp '{"execute":"object-del","arguments":{"id":"mem1"}}' >/dev/null || bad "object-del mem1 failed"
    else
        bad "device_del dimm1 failed or its DEVICE_DELETED never came (rc $rc)"
    fi
    wait "$bg" || true
    g=$(cat "$TMP/bg")
    if wait_log "$TW_A_LOG" "$line0" 'REM_MEM_REG: [0-9]+ region' 20; then
        row "rem=\"$(since_line "$TW_A_LOG" "$line0" | grep -m1 -oE 'REM_MEM_REG: [0-9]+ region\(s\), [0-9]+ MiB')\""
        tw_log "tapwire: $(since_line "$TW_A_LOG" "$line0" | grep -m1 -oE 'REM_MEM_REG: .*')"
    else
        bad "tapwire logged no REM_MEM_REG for the removed dimm"
    fi
    [[ $(mapping_rss "$TW_A_PID" $((256 * 1024))) == none ]] || bad "tapwire still maps a 256M region after REM_MEM_REG"
    tw_is_positive "$g" || bad "host->guest iperf3 across the removal failed"
    local across=$g gc gd
    read -r ga gb < <(iperf_pair mem-after-h2g 3)
    read -r gc gd < <(iperf_pair mem-after-g2h 3 -R)
    tw_log "after the removal: host->guest $(sum2 "$ga" "$gb"), guest->host $(sum2 "$gc" "$gd") Gbit/s (host->guest across the removal: $across)"
    row "h2g_across_rem_gbps=$across after_h2g_gbps=$(sum2 "$ga" "$gb") after_g2h_gbps=$(sum2 "$gc" "$gd")"
    both_positive "$ga" "$gb" || bad "host->guest after the removal failed"
    both_positive "$gc" "$gd" || bad "guest->host after the removal failed"
    grep -E 'MEM_REG.* failed|refused .*MEM_REG' "$TW_A_LOG" >"$TMP/errors" || true
    [[ ! -s $TMP/errors ]] || bad "tapwire refused a memory message: $(head -n 1 "$TMP/errors" | cut -c1-200)"
    alive_or_bad || true
    end_check
}

# ================================================================ B: NIC hot-plug

check_nic_hotplug() {
    begin_check nic-hotplug
    alive_or_bad || { end_check; return; }
    local base r mac ip t f0 f1 d tx rx ok fd_up fd_after del_s rc ping_s disc chardevs
    local fd_min=999999 fd_max=0 del_max=0 ping_max=0 rounds_ok=0 fd_ok=0 t_rounds
    # The first control-API request makes the runtime under it (Swift concurrency on
    # libdispatch) create its epoll, eventfd and timerfd, once for the life of the process:
    # take the baseline after one, since every round reads the counters through the API.
    frames "$API_B" >/dev/null
    sleep 0.5
    fd_list "$TW_B_PID" >"$RUN_DIR/hot-fds-before.txt"
    base=$(fd_count "$TW_B_PID")
    tw_log "tapwire (hot-plug) has $base open descriptors before the first round"
    printf '| round | NIC | ping after | frames rx/tx | fds connected | device_del | fds after |\n|---|---|---|---|---|---|---|\n' >"$RUN_DIR/nic-rounds.md"
    t_rounds=$(tw_now)
    for ((r = 1; r <= ROUNDS; r++)); do
        alive_or_bad || break
        # QEMU's netdev_add waits, monitor and all, until the backend takes the connection;
        # tapwire serves one frontend at a time, so never plug while it still has one.
        if [[ $(vm_status "$API_B" | jq -r .state 2>/dev/null) != waiting ]]; then
            bad "round $r: tapwire (hot-plug) still serves the previous NIC; stopping the rounds"
            break
        fi
        mac=$(printf '52:54:00:78:00:%02x' $((10 + r)))
        ip=$HOT_NET.$((10 + r))
        t=$(tw_now)
        f0=$(frames "$API_B")
        if ! qmp "{\"execute\":\"chardev-add\",\"arguments\":{\"id\":\"hc$r\",\"backend\":{\"type\":\"socket\",\"data\":{\"addr\":{\"type\":\"unix\",\"data\":{\"path\":\"$SOCK_B\"}},\"server\":false}}}}" \
            "{\"execute\":\"netdev_add\",\"arguments\":{\"type\":\"vhost-user\",\"id\":\"hn$r\",\"chardev\":\"hc$r\"}}" \
            "{\"execute\":\"device_add\",\"arguments\":{\"driver\":\"virtio-net-pci\",\"id\":\"hnic$r\",\"netdev\":\"hn$r\",\"mac\":\"$mac\",\"bus\":\"hp0\"}}" \
            >/dev/null 2>"$TMP/qmp.err"; then
            bad "round $r: plugging the NIC failed: $(cat "$TMP/qmp.err")"
        fi
        # The guest's nic-watch.sh gives it $ip; the first answer ends the wait.
        ok=0
        local deadline=$((SECONDS + 30))
        while ((SECONDS < deadline)); do
            # shellcheck disable=SC2046
            if ip netns exec "$NS" $(tw_ping_cmd) -c 1 -W 1 "$ip" >/dev/null 2>&1; then ok=1; break; fi
            sleep 0.2
        done
        ping_s=$(tw_elapsed "$t")
        rx=0
        if ((ok)); then
            # shellcheck disable=SC2046
            ip netns exec "$NS" $(tw_ping_cmd) -c 5 -i 0.2 -W 2 "$ip" >"$TMP/ping.txt" 2>&1 || true
            read -r _ rx _ < <(tw_ping_parse <"$TMP/ping.txt")
        fi
        f1=$(frames "$API_B")
        d=$(delta "$f0" "$f1")
        fd_up=$(fd_count "$TW_B_PID")
        rc=0
        del_s=$(qmp_del "hnic$r" 30 2>"$TMP/qmp.err") || rc=$?
        ((rc == 0)) || { bad "round $r: device_del: $(cat "$TMP/qmp.err")"; del_s=-; }
        qmp "{\"execute\":\"netdev_del\",\"arguments\":{\"id\":\"hn$r\"}}" >/dev/null 2>"$TMP/qmp.err" ||
            bad "round $r: netdev_del: $(cat "$TMP/qmp.err")"
        # QEMU 10's vhost-user netdev deletes its chardev with it; remove it only if it is still there.
        chardevs=$(qmp '{"execute":"query-chardev"}' | jq -r '.[].label' || true)
        if grep -qx "hc$r" <<<"$chardevs"; then
            qmp "{\"execute\":\"chardev-remove\",\"arguments\":{\"id\":\"hc$r\"}}" >/dev/null 2>"$TMP/qmp.err" ||
                bad "round $r: chardev-remove: $(cat "$TMP/qmp.err")"
            CHARDEV_NOTE="chardev-remove needed"
        else
            CHARDEV_NOTE="netdev_del removed the chardev"
        fi
        # tapwire notices the hang-up, then its descriptors must be back where they started.
        tw_wait_until 15 "$TW_B_PID" "tapwire to see round $r's disconnect" \
            eval '(( $(grep -c "frontend disconnected" "$TW_B_LOG") >= r ))' || bad "round $r: tapwire never saw the frontend go"
        local fd_deadline=$((SECONDS + 3))
        while fd_after=$(fd_count "$TW_B_PID") && ((fd_after != base && SECONDS < fd_deadline)); do sleep 0.1; done
        tx=$(nth "$d" 1) rx_frames=$(nth "$d" 0)
        printf '| %d | %s %s | %ss | %s/%s | %s | %ss | %s |\n' "$r" "$ip" "$mac" "$ping_s" "$rx_frames" "$tx" "$fd_up" "$del_s" "$fd_after" >>"$RUN_DIR/nic-rounds.md"
        tw_log "round $r: $ip answered after ${ping_s}s (${rx:-0}/5 more replies), frames rx/tx $rx_frames/$tx, fds $base -> $fd_up -> $fd_after, device_del ${del_s}s"
        if ((ok)) && [[ ${rx:-0} =~ ^[0-9]+$ ]] && ((rx >= 3)) && tw_is_positive "$rx_frames" && tw_is_positive "$tx"; then
            rounds_ok=$((rounds_ok + 1))
        else
            bad "round $r: no traffic through the hot-plugged NIC (ping ok=$ok, replies ${rx:-0}/5, frames rx/tx $rx_frames/$tx)"
        fi
        if ((fd_after == base)); then
            fd_ok=$((fd_ok + 1))
        else
            fd_list "$TW_B_PID" >"$RUN_DIR/hot-fds-round$r.txt"
            bad "round $r: tapwire has $fd_after open descriptors, $base before the first round (new: $(diff "$RUN_DIR/hot-fds-before.txt" "$RUN_DIR/hot-fds-round$r.txt" | sed -n 's/^> //p' | paste -sd, - | cut -c1-160))"
        fi
        ((fd_after < fd_min)) && fd_min=$fd_after
        ((fd_after > fd_max)) && fd_max=$fd_after
        awk -v a="$del_s" -v b="$del_max" 'BEGIN { exit !(a + 0 > b + 0) }' && del_max=$del_s
        awk -v a="$ping_s" -v b="$ping_max" 'BEGIN { exit !(a + 0 > b + 0) }' && ping_max=$ping_s
        if [[ -n ${CHECK_WHY[$CURRENT]} ]]; then
            guest_diagnosis "nic-round$r"
            bad "stopping after round $r (the hot-plug slot may still be taken)"
            break
        fi
    done
    disc=$(grep -c 'frontend disconnected' "$TW_B_LOG" || true)
    grep -E 'refusing a second frontend| (error|critical) ' "$TW_B_LOG" >"$TMP/errors" || true
    [[ ! -s $TMP/errors ]] || bad "tapwire (hot-plug) logged: $(head -n 2 "$TMP/errors" | cut -c1-200)"
    row "rounds=$ROUNDS with_traffic=$rounds_ok fds_before=$base fds_after_min=$fd_min fds_after_max=$fd_max fd_rounds_ok=$fd_ok"
    row "connects=$(grep -c 'frontend connected' "$TW_B_LOG" || true) disconnects=$disc max_ping_s=$ping_max max_device_del_s=$del_max rounds_s=$(tw_elapsed "$t_rounds")"
    row "chardev=\"${CHARDEV_NOTE:-?}\""
    tw_log "per-round figures: $RUN_DIR/nic-rounds.md"
    alive_or_bad || true
    end_check
}

# Each check records its own failures (bad); a command failing inside one must not end the run.
CHECKS=()
for c in multiqueue mem-hotplug nic-hotplug; do
    [[ ,$ONLY, != *,$c,* ]] || CHECKS+=("$c")
done
((${#CHECKS[@]})) || tw_die "--only names none of multiqueue, mem-hotplug, nic-hotplug"
for c in "${CHECKS[@]}"; do "check_${c//-/_}" || true; done

# ---------------------------------------------------------------- report

TOTAL_SECONDS=$(tw_elapsed "$T0")
passed=0 failed=0
for c in multiqueue nic-hotplug mem-hotplug; do
    [[ ,$ONLY, == *,$c,* ]] || continue
    [[ -n ${CHECK_RESULT[$c]:-} ]] || { CHECK_RESULT[$c]=FAIL; CHECK_WHY[$c]="did not run"; CHECK_SECONDS[$c]=0; }
    if [[ ${CHECK_RESULT[$c]} == PASS ]]; then passed=$((passed + 1)); else failed=$((failed + 1)); fi
done
{
    for c in multiqueue nic-hotplug mem-hotplug; do
        [[ ,$ONLY, == *,$c,* ]] || continue
        line="ROW frontend=qemu version=$QEMU_SHORT check=$c result=${CHECK_RESULT[$c]} seconds=${CHECK_SECONDS[$c]} ${CHECK_ROW[$c]:-}"
        [[ -z ${CHECK_WHY[$c]} ]] || line+=" why=\"${CHECK_WHY[$c]//\"/\'}\""
        echo "$line"
    done
    echo
    echo "| check | result | seconds | figures |"
    echo "|---|---|---|---|"
    for c in multiqueue nic-hotplug mem-hotplug; do
        [[ ,$ONLY, == *,$c,* ]] || continue
        echo "| $c | ${CHECK_RESULT[$c]} | ${CHECK_SECONDS[$c]} | ${CHECK_ROW[$c]:-}${CHECK_WHY[$c]:+ — FAILED: ${CHECK_WHY[$c]}} |"
    done
    echo
    echo "QEMU $QEMU_VERSION, guest $(cat "$GUEST_DIR/kernel-package" 2>/dev/null || echo '?') on 2 vCPUs (TCG), boot ${BOOT_SECONDS}s, total ${TOTAL_SECONDS}s; run directory $RUN_DIR"
    stalls=$(tr -d '\r' <"$CONSOLE" | grep -ac 'rcu: INFO: rcu_preempt detected stalls' || true)
    ((stalls == 0)) || echo "note: the guest console shows $stalls RCU stall report(s): a vCPU stopped getting timer interrupts (see $CONSOLE)"
    echo "$passed passed, $failed failed"
} | tee "$RUN_DIR/summary.txt"
((failed == 0)) || exit 1
