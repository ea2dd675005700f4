#!/usr/bin/env bash
# Tenant isolation at the vNIC (issue #16): three real guests (QEMU, TCG, 256 MiB each), each
# behind its own tapwire with port security (--mac, --allowed-ips) that makes its TAP a port of
# a bridge (--bridge, and --vlan where the kernel can filter VLANs), on two "hosts" (network
# namespaces). Tenant A is A1 (host 1) and A2 (host 2), tenant B is B (host 2); a namespace on
# host 1 plays a second machine of tenant B ("B's peer", a veth, not a guest), so that every
# "B cannot reach A" has a "B can reach B" beside it. Both tenants use one subnet (overlapping
# address plans are what isolation at layer 2 must survive). The guests boot once; the
# underlay between the hosts changes under them, phase by phase:
#   trunk     the hosts' bridges joined by a veth that is an 802.1Q trunk (tagged 10 and 20)
#             (VLAN isolation only: needs bridge VLAN filtering in the kernel)
#   vxlan     the trunk replaced by VXLAN over a veth underlay (UDP 4789), one VNI per tenant
#             (Tools/tenant-topology.sh up)
#   samehost  the underlay removed and A1's tapwire restarted on host 2 (the guest untouched,
#             QEMU reconnects): A1, A2 and B on one host
# Checks in every phase: A1 and A2 reach each other (ping both ways, iperf3 both ways); B
# reaches neither (ping gets no reply, arping gets no ARP reply), A1 reaches neither B nor B's
# peer; B reaches its peer (across hosts); B's eth0 in promiscuous mode receives no frame
# (tcpdump -Q in, the whole phase) whose Ethernet source or destination is A1's or A2's MAC or
# whose IP or ARP addresses include A1's or A2's. Once, in the first phase: each TAP is the
# bridge port tapwire was asked for (its bridge, VLAN 10 or 20 only as PVID untagged, a static
# FDB entry for the guest's MAC, learning and unicast flood off); no legitimate frame was
# dropped (all spoofed_*/rogue_* counters 0 after the traffic above); A2 changing its MAC,
# sending from an address outside its allowed list, and sending gratuitous ARP for A1's
# address each get nothing through (A1's tcpdump sees none of it, A2's TAP none of the spoofed
# MAC) while A2's tapwire counts spoofed_mac / spoofed_ip / spoofed_arp, and after each is
# undone A2 reaches A1 again; a DHCP server on A2 (busybox udhcpd) sees A1's DISCOVER (client
# traffic is allowed) but its OFFER never reaches A1 (no lease) and counts as rogue_dhcp; frames
# put into B's TAP for A2's MAC never reach B (not_for_this_vm) while those for B's own MAC do.
#
# On a kernel without bridge VLAN filtering (no CONFIG_BRIDGE_VLAN_FILTERING / CONFIG_VLAN_8021Q,
# e.g. some cloud kernels), --isolation auto uses a bridge per tenant per host instead
# (tapwire --bridge brt10 / brt20 without --vlan, VXLAN between the hosts), says so, and
# reports the VLAN checks (--vlan ports, the trunk phase) as NOT RUN.
#
# Usage: Tools/tenant-check.sh --tapwire PATH [options]
#   --tapwire BIN            tapwire binary (default $TAPWIRE_BIN or .build/release/tapwire)
#   --qemu 7.2|10|PATH       QEMU for the guests (default 10)
#   --isolation auto|vlan|bridge  one VLAN-filtering bridge per host with tenants as VLANs, or
#                            a bridge per tenant; auto: vlan where the kernel supports it
#   --phases LIST            comma-separated subset of trunk,vxlan,samehost (default: all the
#                            isolation mode allows); they always run in that order
#   --time SECONDS           each iperf3 run (default 3)
#   --boot-timeout SECONDS   wait for each guest (default 180)
#   --out DIR                logs (default /var/tmp/tapwire-tenant/<time>-<pid>)
#   --guest-dir DIR          guest image (default $TAPWIRE_GUEST_DIR or /var/tmp/tapwire-guest)
# Output: PASS/FAIL lines on stderr as checks run; on stdout one "ROW ..." line per check
# (Tools/frontend-matrix.sh reads them), a table and "N passed, N failed".
# Exit status: 0 when every check that ran passed; 1 otherwise or on a set-up failure.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

usage() { sed -n '2,/^# Exit status/s/^# \{0,1\}//p' "$0"; }

TAPWIRE=${TAPWIRE_BIN:-$TW_REPO_ROOT/.build/release/tapwire}
QEMU_WHICH=10
ISOLATION=auto
PHASES=
IPERF_TIME=3
BOOT_TIMEOUT=180
RUN_DIR=
GUEST_DIR=$(tw_guest_dir)

need_arg() { (($# >= 2)) || tw_die "$1 needs a value"; }
while (($#)); do
    case $1 in
        --tapwire) need_arg "$@"; TAPWIRE=$2; shift ;;
        --qemu) need_arg "$@"; QEMU_WHICH=$2; shift ;;
        --isolation) need_arg "$@"; ISOLATION=$2; shift ;;
        --phases) need_arg "$@"; PHASES=$2; shift ;;
        --time) need_arg "$@"; IPERF_TIME=$2; shift ;;
        --boot-timeout) need_arg "$@"; BOOT_TIMEOUT=$2; shift ;;
        --out) need_arg "$@"; RUN_DIR=$2; shift ;;
        --guest-dir) need_arg "$@"; GUEST_DIR=$2; shift ;;
        -h | --help) usage; exit 0 ;;
        *) usage >&2; tw_die "unknown argument: $1" ;;
    esac
    shift
done
case $ISOLATION in auto | vlan | bridge) ;; *) tw_die "--isolation must be auto, vlan or bridge, not '$ISOLATION'" ;; esac
[[ $IPERF_TIME =~ ^[0-9]+$ && $IPERF_TIME -gt 0 ]] || tw_die "--time must be a positive number of seconds"
[[ $BOOT_TIMEOUT =~ ^[0-9]+$ && $BOOT_TIMEOUT -gt 0 ]] || tw_die "--boot-timeout must be a positive number of seconds"
for p in ${PHASES//,/ }; do
    case $p in trunk | vxlan | samehost) ;; *) tw_die "--phases: unknown phase '$p' (trunk, vxlan, samehost)" ;; esac
done

tw_require_root
[[ -x $TAPWIRE ]] || tw_die "tapwire binary not found or not executable: $TAPWIRE (swift build -c release, or --tapwire BIN)"
TAPWIRE=$(cd "$(dirname "$TAPWIRE")" && pwd)/$(basename "$TAPWIRE")
HELP=$("$TAPWIRE" --help 2>&1 || true)
for opt in --mac --allowed-ips --bridge --vlan --api-socket; do
    grep -q -- "$opt" <<<"$HELP" || tw_die "$TAPWIRE has no $opt option: this check needs tapwire's port security and bridge ports (issue #16)"
done
tw_ensure_packages qemu-system-x86_64:qemu-system-x86 ip:iproute2 bridge:iproute2 jq:jq curl:curl \
    python3:python3 iperf3:iperf3 tcpdump:tcpdump dpkg:busybox-static
tw_qemu_select "$QEMU_WHICH"
QEMU_SHORT=$(echo "$QEMU_VERSION" | cut -d. -f1,2)
# QEMU 9.2 renamed the chardev's reconnect=SECONDS to reconnect-ms=MILLISECONDS.
if ((QEMU_MAJOR >= 10)); then RECONNECT=reconnect-ms=1000; else RECONNECT=reconnect=1; fi

T0=$(tw_now)
"$TW_REPO_ROOT/Tools/guest-image.sh" "$GUEST_DIR" >&2
IMAGE_FILES=$(zcat "$GUEST_DIR/initramfs.cpio.gz" | cpio -t --quiet 2>/dev/null)
for f in usr/bin/tcpdump etc/tapwire/agent.sh; do
    grep -qx "$f" <<<"$IMAGE_FILES" ||
        tw_die "the guest image lacks /$f (Tools/guest-image.sh --force $GUEST_DIR)"
done

RUN_DIR=${RUN_DIR:-/var/tmp/tapwire-tenant/$(date +%Y%m%d-%H%M%S)-$$}
mkdir -p "$RUN_DIR"
RUN_DIR=$(cd "$RUN_DIR" && pwd)
tw_install_traps
# Unix socket paths must stay short: sockets in /tmp, logs in the run directory.
TMP=$(mktemp -d /tmp/tw-tenant.XXXXXX)
tw_at_exit "rm -rf '$TMP'"

# ---------------------------------------------------------------- the plan

MEM=256M
NET=10.10.0 PREFIX_LEN=24
VLAN_A=10 VLAN_B=20
VNI_A=10010 VNI_B=20020                # tenant A's and B's VXLAN network identifiers
GUESTS=(A1 A2 B)
declare -A G_IP=([A1]=$NET.11 [A2]=$NET.12 [B]=$NET.20)
declare -A G_MAC=([A1]=52:54:00:10:00:11 [A2]=52:54:00:10:00:12 [B]=52:54:00:20:00:20)
declare -A G_VLAN=([A1]=$VLAN_A [A2]=$VLAN_A [B]=$VLAN_B)
declare -A G_TAP=([A1]=twa1 [A2]=twa2 [B]=twb)
BP_IP=$NET.21 BP_MAC=52:54:00:20:00:21 # tenant B's peer on host 1 (a namespace)
SPOOF_MAC=52:54:00:10:00:99            # what A2 pretends to be
SPOOF_IP=$NET.99                       # outside A2's allowed list
INJECT_SRC_MAC=02:00:00:00:00:01       # frames put into B's TAP from the host side
INJECT_PORT=7777
INJECT_COUNT=5
PING_COUNT=3                           # positive pings; negatives send NEG_PING_COUNT
NEG_PING_COUNT=2
ARPING_WAIT=3
AGENT_TIMEOUT=60
TENANT_BRIDGE_PREFIX=brt               # --isolation bridge: tenant VLAN's bridge is brt<VLAN>
VLAN_BRIDGE=br0                        # --isolation vlan: the one bridge of each host
DROP_REASONS=(spoofed_mac spoofed_ip spoofed_arp rogue_dhcp rogue_ra)
DHCP_POOL_FIRST=$NET.100 DHCP_POOL_LAST=$NET.110

H1=tw-tn1-$$ H2=tw-tn2-$$ NS_BP=tw-tnb-$$
declare -A G_HOST=([A1]=$H1 [A2]=$H2 [B]=$H2)
declare -A G_TWPID=() G_QPID=() G_API=() G_SOCK=() G_AGENT=() G_CONSOLE=()
for g in "${GUESTS[@]}"; do
    G_SOCK[$g]=$TMP/$g.sock G_API[$g]=$TMP/$g.api G_AGENT[$g]=$TMP/$g.agent G_CONSOLE[$g]=$RUN_DIR/console-$g.log
done

for ns in "$H1" "$H2" "$NS_BP"; do tw_netns_create "$ns"; done

# Can this kernel filter VLANs on a bridge? (Asked in a namespace of our own.)
VLAN_OK=0
if ip -n "$H1" link add twprobe0 type bridge vlan_filtering 1 2>/dev/null; then VLAN_OK=1; ip -n "$H1" link del twprobe0; fi
case $ISOLATION in
    auto) if ((VLAN_OK)); then ISOLATION=vlan; else ISOLATION=bridge; fi ;;
    vlan) ((VLAN_OK)) || tw_die "--isolation vlan: the kernel ($(uname -r)) cannot filter VLANs on a bridge (no CONFIG_BRIDGE_VLAN_FILTERING)" ;;
esac
if [[ -z $PHASES ]]; then
    if [[ $ISOLATION == vlan ]]; then PHASES=trunk,vxlan,samehost; else PHASES=vxlan,samehost; fi
fi
# Always in this order: the samehost phase moves A1 for good.
wanted=,$PHASES, PHASES=
for p in trunk vxlan samehost; do [[ $wanted != *,$p,* ]] || PHASES+=${PHASES:+,}$p; done
[[ $ISOLATION == vlan || ,$PHASES, != *,trunk,* ]] || tw_die "the trunk phase needs VLANs (--isolation vlan, and a kernel that filters them)"
bridge_of() { if [[ $ISOLATION == vlan ]]; then echo "$VLAN_BRIDGE"; else echo "$TENANT_BRIDGE_PREFIX$1"; fi; }
TOPOLOGY_ARGS=(--tenant "$VLAN_A:$VNI_A" --tenant "$VLAN_B:$VNI_B")
[[ $ISOLATION == vlan ]] || TOPOLOGY_ARGS+=(--tenant-bridges "$TENANT_BRIDGE_PREFIX")
tw_log "isolation: $ISOLATION; phases: $PHASES; QEMU $QEMU_VERSION; run directory $RUN_DIR"

# ---------------------------------------------------------------- results

ROWS=() PASSED=0 FAILED=0
# check PHASE NAME OK DETAIL: one PASS/FAIL line (stderr) and one ROW (stdout).
check() {
    local phase=$1 name=$2 ok=$3 detail=$4 result
    if ((ok)); then result=PASS; PASSED=$((PASSED + 1)); else result=FAIL; FAILED=$((FAILED + 1)); fi
    printf '%s: %s %s: %s (%s)\n' "$TW_LOG_PREFIX" "$result" "$phase" "$name" "$detail" >&2
    ROWS+=("$phase|$name|$result|$detail")
    echo "ROW frontend=tenant-isolation qemu=$QEMU_SHORT mode=$phase check=\"$name\" result=\"$result (${detail//\"/\'})\""
}
# not_run PHASE NAME WHY: a check this machine cannot do, reported as such.
not_run() {
    printf '%s: NOT RUN %s: %s (%s)\n' "$TW_LOG_PREFIX" "$1" "$2" "$3" >&2
    ROWS+=("$1|$2|NOT RUN|$3")
    echo "ROW frontend=tenant-isolation qemu=$QEMU_SHORT mode=$1 check=\"$2\" result=\"NOT RUN ($3)\""
}
if [[ $ISOLATION == bridge ]]; then
    why="the kernel ($(uname -r)) has no bridge VLAN filtering (CONFIG_BRIDGE_VLAN_FILTERING)"
    ((VLAN_OK)) && why="--isolation bridge was asked for"
    not_run trunk "tapwire --vlan access ports and the 802.1Q trunk between the hosts" "$why; tenants are a bridge each instead"
fi

on_failure() {
    ((TW_EXIT_RC != 0 || FAILED != 0)) || return 0
    local g
    for g in "${GUESTS[@]}"; do
        sed '/TW-GUEST-ETHTOOL-BEGIN/,/TW-GUEST-ETHTOOL-END/d' "${G_CONSOLE[$g]}" >"$TMP/console-$g.short"
        tw_tail_log "$TMP/console-$g.short" 15 "guest $g console (${G_CONSOLE[$g]})"
        for log in "$RUN_DIR"/tapwire-"$g"-*.log; do tw_tail_log "$log" 15 "tapwire $g ($log)"; done
    done
    tw_log "run directory: $RUN_DIR"
}
tw_at_exit on_failure

# ---------------------------------------------------------------- guest agent and injector

cat >"$TMP/agent.py" <<'PY'
"""agent.py SOCK TIMEOUT CMD...: run CMD (one line of sh) in a guest through
Fixtures/guest/agent.sh on its second serial port; print the output, exit with its status
(124: no answer in time, 125: the port is unreachable)."""
import os, socket, sys, time
path, timeout, cmd = sys.argv[1], float(sys.argv[2]), " ".join(sys.argv[3:])
tag = f"{os.getpid()}x{time.monotonic_ns()}"
begin, end = f"TW-AGENT-BEGIN {tag}".encode(), f"TW-AGENT-END {tag} ".encode()
deadline = time.monotonic() + timeout
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
try:
    s.connect(path)
except OSError as e:
    print(f"agent: cannot reach {path}: {e}", file=sys.stderr)
    sys.exit(125)
s.sendall(f"{tag} {cmd}\n".encode())
buf = b""
while True:
    i = buf.find(begin)
    j = buf.find(end, max(i, 0))
    k = buf.find(b"\n", j) if j >= 0 else -1
    if i >= 0 and k >= 0:
        sys.stdout.write(buf[i + len(begin):j].lstrip(b"\r\n").decode(errors="replace").replace("\r", ""))
        sys.exit(int(buf[j + len(end):k].strip() or 1))
    left = deadline - time.monotonic()
    if left <= 0:
        print(f"agent: no answer within {timeout:g}s to: {cmd}", file=sys.stderr)
        sys.exit(124)
    s.settimeout(left)
    try:
        data = s.recv(65536)
    except socket.timeout:
        continue
    if not data:
        print("agent: the serial port closed", file=sys.stderr)
        sys.exit(125)
    buf += data
PY
cat >"$TMP/inject.py" <<'PY'
"""inject.py IFACE COUNT SRC_MAC DST_MAC SRC_IP DST_IP PORT: put COUNT IPv4/UDP frames into
IFACE from the host side (so they go out of it, towards whatever is behind it)."""
import socket, struct, sys
ifc, count, smac, dmac, sip, dip, port = sys.argv[1], int(sys.argv[2]), *sys.argv[3:7], int(sys.argv[7])
mac = lambda m: bytes.fromhex(m.replace(":", ""))
payload = b"tapwire tenant-check"
udp = struct.pack("!HHHH", port, port, 8 + len(payload), 0) + payload
hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0,
                  socket.inet_aton(sip), socket.inet_aton(dip))
s = sum(struct.unpack("!10H", hdr))
while s >> 16:
    s = (s & 0xFFFF) + (s >> 16)
hdr = hdr[:10] + struct.pack("!H", ~s & 0xFFFF) + hdr[12:]
frame = mac(dmac) + mac(smac) + b"\x08\x00" + hdr + udp
sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
sock.bind((ifc, 0))
for _ in range(count):
    sock.send(frame)
PY

# agent GUEST TIMEOUT CMD: CMD's output; its status is the command's. The agent reads one
# line per command.
agent() {
    local g=$1 t=$2; shift 2
    [[ $* != *$'\n'* ]] || tw_die "internal: a guest command must be one line: $*"
    python3 "$TMP/agent.py" "${G_AGENT[$g]}" "$t" "$@"
}
# agent_log GUEST NAME CMD: agent with the output kept in the run directory and printed.
agent_log() {
    local g=$1 name=$2 rc=0; shift 2
    agent "$g" "$AGENT_TIMEOUT" "$@" >"$RUN_DIR/$PHASE-$name.txt" 2>&1 || rc=$?
    cat "$RUN_DIR/$PHASE-$name.txt"
    return "$rc"
}

# ---------------------------------------------------------------- host side

# drops GUEST REASON: the guest's tapwire's drop count for REASON, all queues and directions.
drops() {
    curl -s --max-time 5 --unix-socket "${G_API[$1]}" http://tapwire/metrics |
        awk -v r="reason=\"$2\"" '$1 ~ /^tapwire_drops_total\{/ && index($1, r) { s += $2 } END { print s + 0 }'
}
# tap_rx GUEST: frames the guest's tapwire wrote into its TAP (the TAP's rx counter).
tap_rx() { ip netns exec "${G_HOST[$1]}" cat "/sys/class/net/${G_TAP[$1]}/statistics/rx_packets"; }
# tap_tx_dropped GUEST: frames for the guest the TAP dropped (its unicast filter, TUNSETTXFILTER).
tap_tx_dropped() { ip netns exec "${G_HOST[$1]}" cat "/sys/class/net/${G_TAP[$1]}/statistics/tx_dropped"; }

# make_bridge NS NAME: a bridge (VLAN-filtering with --isolation vlan), up.
make_bridge() {
    ip -n "$1" link show dev "$2" >/dev/null 2>&1 && return 0
    if [[ $ISOLATION == vlan ]]; then
        ip -n "$1" link add "$2" type bridge vlan_filtering 1
    else
        ip -n "$1" link add "$2" type bridge
    fi
    ip -n "$1" link set dev "$2" up
}

# start_tapwire GUEST: the guest's tapwire in its host's namespace, port security on, its TAP
# a port of the tenant's bridge there.
start_tapwire() {
    local g=$1 ns=${G_HOST[$1]} br args log=$RUN_DIR/tapwire-$1-${G_HOST[$1]%-*}.log
    br=$(bridge_of "${G_VLAN[$g]}")
    make_bridge "$ns" "$br"
    args=(--socket-path "${G_SOCK[$g]}" --tap "${G_TAP[$g]}" --name "$g" --api-socket "${G_API[$g]}"
        --mac "${G_MAC[$g]}" --allowed-ips "${G_IP[$g]}/32" --bridge "$br")
    [[ $ISOLATION != vlan ]] || args+=(--vlan "${G_VLAN[$g]}")
    echo "ip netns exec $ns $TAPWIRE ${args[*]}" >"${log%.log}.cmdline"
    tw_spawn "$log" ip netns exec "$ns" "$TAPWIRE" "${args[@]}"
    G_TWPID[$g]=$TW_SPAWNED_PID
    tw_wait_until 20 "${G_TWPID[$g]}" "tapwire $g's control API" tw_is_socket "${G_API[$g]}" ||
        { tw_tail_log "$log" 20 "tapwire $g"; tw_die "tapwire $g did not start"; }
    tw_wait_until 10 "${G_TWPID[$g]}" "TAP ${G_TAP[$g]}" tw_netns_has_link "$ns" "${G_TAP[$g]}" || tw_die "no TAP for $g"
    ip -n "$ns" link set dev "${G_TAP[$g]}" up
}

boot_guest() {
    local g=$1 append
    : >"${G_CONSOLE[$g]}"
    append="console=ttyS0 panic=-1 quiet tw.ip=${G_IP[$g]}/$PREFIX_LEN tw.host=127.0.0.1 tw.ping=1 tw.pre=\"/etc/tapwire/agent.sh &\""
    # shellcheck disable=SC2054 # the commas belong to QEMU's option values
    local cmd=("$QEMU_BIN" "${QEMU_DATA[@]}" -accel tcg -nodefaults -no-user-config
        -m "$MEM" -object "memory-backend-memfd,id=mem,size=$MEM,share=on" -machine q35,memory-backend=mem -smp 1
        -kernel "$GUEST_DIR/vmlinuz" -initrd "$GUEST_DIR/initramfs.cpio.gz" -append "$append"
        -display none -serial "file:${G_CONSOLE[$g]}" -serial "unix:${G_AGENT[$g]},server=on,wait=off" -no-reboot
        -chardev "socket,id=c0,path=${G_SOCK[$g]},$RECONNECT" -netdev vhost-user,id=n0,chardev=c0
        -device "virtio-net-pci,netdev=n0$(tw_qemu_nic_options),mac=${G_MAC[$g]}")
    printf '%q ' "${cmd[@]}" >"$RUN_DIR/qemu-$g.cmdline"
    tw_spawn "$RUN_DIR/qemu-$g.log" "${cmd[@]}"
    G_QPID[$g]=$TW_SPAWNED_PID
}

wait_guest() {
    local g=$1 rc=0
    tw_wait_marker "${G_CONSOLE[$g]}" TW-GUEST-READY "$BOOT_TIMEOUT" "${G_QPID[$g]}" TW-GUEST-FAIL || rc=$?
    ((rc == 0)) || { tw_tail_log "${G_CONSOLE[$g]}" 20 "guest $g"; tw_die "guest $g did not come up (status $rc)"; }
    tw_wait_marker "${G_CONSOLE[$g]}" "tw-agent: ready" 30 "${G_QPID[$g]}" || tw_die "guest $g's agent did not start"
    agent "$g" 30 'echo ok' >/dev/null || tw_die "guest $g's agent does not answer"
}

# ---------------------------------------------------------------- guest-side probes

# ping_replies GUEST DST COUNT NAME: replies GUEST got from DST.
ping_replies() {
    local out
    out=$(agent_log "$1" "$4" "ping -c $3 -i 0.3 -W 1 $2" || true)
    tw_ping_parse <<<"$out" | awk '{ print ($2 ~ /^[0-9]+$/) ? $2 : 0 }'
}
# arp_replies GUEST DST NAME: ARP replies GUEST got for DST (busybox arping's count).
arp_replies() {
    local out
    out=$(agent_log "$1" "$3" "arping -c $NEG_PING_COUNT -w $ARPING_WAIT -I eth0 $2" || true)
    sed -n 's/^Received \([0-9]*\) response.*/\1/p' <<<"$out" | tail -n 1 | grep . || echo "?"
}
# sniff_start GUEST NAME / sniff_stop GUEST NAME: a promiscuous capture of what eth0 receives.
sniff_start() {
    agent "$1" 30 "ip link set eth0 promisc on; tcpdump -Z root -i eth0 -Q in -nn -U -w /tmp/$2.pcap >/tmp/$2.log 2>&1 </dev/null & echo \$! >/tmp/$2.pid; i=0; until grep -q listening /tmp/$2.log; do i=\$((i + 1)); [ \$i -lt 100 ] || exit 1; sleep 0.1; done" >/dev/null ||
        tw_die "tcpdump did not start in $1: $(agent "$1" 10 "cat /tmp/$2.log" 2>&1)"
}
sniff_stop() {
    agent "$1" 30 "kill -INT \$(cat /tmp/$2.pid); while kill -0 \$(cat /tmp/$2.pid) 2>/dev/null; do sleep 0.1; done; cat /tmp/$2.log" \
        >"$RUN_DIR/$PHASE-$2-tcpdump.txt" 2>&1 || true
}
# sniff_count GUEST NAME [FILTER]: frames of the capture that match FILTER ("?" if unreadable).
# -Z root: the guest has no tcpdump user to drop to, even for reading a file.
sniff_count() {
    local n filter=
    [[ -z ${3:-} ]] || filter="'$3'"
    n=$(agent "$1" 30 "tcpdump -Z root -r /tmp/$2.pcap -nn -e $filter 2>/tmp/$2.rerr | tee /tmp/$2.match | wc -l; cat /tmp/$2.rerr >&2") || n="?"
    agent "$1" 10 "cat /tmp/$2.rerr; head -n 5 /tmp/$2.match" >>"$RUN_DIR/$PHASE-$2-tcpdump.txt" 2>&1 || true
    n=$(head -n 1 <<<"$n")
    [[ $n =~ ^[0-9]+$ ]] || n="?"
    echo "$n"
}
# ip_hex IP: the address as a 32-bit hex word, for tcpdump's arp[14:4] (sender address).
ip_hex() { local IFS=.; read -r -a o <<<"$1"; printf '0x%02x%02x%02x%02x' "${o[@]}"; }
# The frames of tenant A that B must never receive.
A_FILTER="ether host ${G_MAC[A1]} or ether host ${G_MAC[A2]} or host ${G_IP[A1]} or host ${G_IP[A2]}"

# iperf_gbps CLIENT SERVER_IP NAME [-R]: the receiver's Gbit/s ("0" when it failed).
iperf_gbps() {
    local g=$1 ip=$2 name=$3; shift 3
    agent "$g" $((IPERF_TIME + AGENT_TIMEOUT)) "iperf3 -c $ip -t $IPERF_TIME --connect-timeout 5000 --json $*" \
        >"$RUN_DIR/$PHASE-$name.json" 2>&1 || true
    local parsed
    if parsed=$(tw_iperf3_parse "$RUN_DIR/$PHASE-$name.json" 2>&1); then echo "${parsed%% *}"; else echo 0; fi
}
is_num() { [[ $1 =~ ^[0-9]+$ ]]; }

# ---------------------------------------------------------------- bring-up

for g in "${GUESTS[@]}"; do start_tapwire "$g"; done
# shellcheck disable=SC2016 # expanded at exit: A1's tapwire is replaced on the way
tw_at_exit 'for g in "${!G_TWPID[@]}"; do tw_stop "${G_TWPID[$g]}" 5; done'
# Tenant B's peer: a veth from host 1's tenant-B bridge (an access port of VLAN 20 there).
BP_BR=$(bridge_of "$VLAN_B")
make_bridge "$H1" "$BP_BR"
ip -n "$NS_BP" link add bp0 type veth peer name twbp netns "$H1"
ip -n "$NS_BP" link set dev bp0 address "$BP_MAC"
tw_netns_addr "$NS_BP" bp0 "$BP_IP/$PREFIX_LEN"
ip -n "$H1" link set dev twbp master "$BP_BR" up
if [[ $ISOLATION == vlan ]]; then
    bridge -n "$H1" vlan add dev twbp vid "$VLAN_B" pvid untagged
    bridge -n "$H1" vlan del dev twbp vid 1
fi

T_BOOT=$(tw_now)
for g in "${GUESTS[@]}"; do boot_guest "$g"; done
# shellcheck disable=SC2016 # expanded at exit
tw_at_exit 'for g in "${!G_QPID[@]}"; do tw_stop "${G_QPID[$g]}" 5; done'
for g in "${GUESTS[@]}"; do wait_guest "$g"; done
BOOT_SECONDS=$(tw_elapsed "$T_BOOT")
tw_log "three guests ready after ${BOOT_SECONDS}s"

# ---------------------------------------------------------------- the checks

# port_checks: each TAP is the bridge port tapwire was asked to make it.
port_checks() {
    local g ns tap br link fdb vlans ok detail
    for g in "${GUESTS[@]}"; do
        ns=${G_HOST[$g]} tap=${G_TAP[$g]} br=$(bridge_of "${G_VLAN[$g]}")
        link=$(bridge -n "$ns" -d link show dev "$tap" 2>&1 | tr '\n' ' ')
        fdb=$(bridge -n "$ns" fdb show dev "$tap" 2>&1 | grep -i "^${G_MAC[$g]} " | tr '\n' ' ')
        ok=1 detail="$tap in $br"
        [[ $link == *"master $br "* ]] || { ok=0; detail+=", not a port of $br"; }
        [[ $link == *"learning off"* ]] || { ok=0; detail+=", learning not off"; }
        [[ $link == *" flood off"* ]] || { ok=0; detail+=", unicast flood not off"; }
        [[ $fdb == *master* && ($fdb == *static* || $fdb == *permanent*) ]] || { ok=0; detail+=", no static FDB entry for ${G_MAC[$g]}"; }
        if [[ $ISOLATION == vlan ]]; then
            vlans=$(bridge -n "$ns" -j vlan show dev "$tap" | jq -c '[.[].vlans[] | {vlan, flags}]')
            [[ $vlans == "[{\"vlan\":${G_VLAN[$g]},\"flags\":[\"PVID\",\"Egress Untagged\"]}]" ]] ||
                { ok=0; detail+=", VLANs $vlans instead of ${G_VLAN[$g]} PVID untagged only"; }
            detail+=" VLAN ${G_VLAN[$g]}"
        fi
        ((ok == 0)) || detail+=": static FDB ${G_MAC[$g]}, learning and unicast flood off"
        check "$PHASE" "$g's TAP is the bridge port asked for" "$ok" "$detail"
    done
}

# reach_checks: tenant A connected, tenant B cut off from it; B's sniffer runs meanwhile.
reach_checks() {
    local where=$1 n m
    sniff_start B "b-sniff"
    n=$(ping_replies A1 "${G_IP[A2]}" "$PING_COUNT" a1-ping-a2) m=$(ping_replies A2 "${G_IP[A1]}" "$PING_COUNT" a2-ping-a1)
    check "$PHASE" "A1 and A2 ping each other ($where)" $((n > 0 && m > 0)) "A1->A2 $n/$PING_COUNT, A2->A1 $m/$PING_COUNT replies"
    local up down
    up=$(iperf_gbps A2 "${G_IP[A1]}" iperf-a2-a1) down=$(iperf_gbps A2 "${G_IP[A1]}" iperf-a1-a2 -R)
    check "$PHASE" "iperf3 between A1 and A2 both ways ($where)" "$(tw_is_positive "$up" && tw_is_positive "$down" && echo 1 || echo 0)" \
        "A2->A1 $up Gbit/s, A1->A2 $down Gbit/s, ${IPERF_TIME}s each"
    local g pa aa
    for g in A1 A2; do
        pa=$(ping_replies B "${G_IP[$g]}" "$NEG_PING_COUNT" "b-ping-$g") aa=$(arp_replies B "${G_IP[$g]}" "b-arping-$g")
        local place="across hosts"
        [[ ${G_HOST[$g]} != "${G_HOST[B]}" ]] || place="same host"
        check "$PHASE" "B cannot reach $g ($place)" $((pa == 0 && aa == 0)) "ping $pa/$NEG_PING_COUNT replies, arping $aa ARP replies"
    done
    pa=$(ping_replies A1 "${G_IP[B]}" "$NEG_PING_COUNT" a1-ping-b) aa=$(ping_replies A1 "$BP_IP" "$NEG_PING_COUNT" a1-ping-bpeer)
    check "$PHASE" "A1 cannot reach B or B's peer" $((pa == 0 && aa == 0)) "ping B $pa/$NEG_PING_COUNT, B's peer $aa/$NEG_PING_COUNT replies"
    if [[ ${G_HOST[B]} != "$H1" && $PHASE != samehost ]]; then
        n=$(ping_replies B "$BP_IP" "$PING_COUNT" b-ping-bpeer)
        check "$PHASE" "B reaches its peer on the other host" $((n > 0)) "$n/$PING_COUNT replies"
    fi
}

# sniff_checks: what B's promiscuous eth0 received in this phase.
sniff_checks() {
    local foreign total
    sniff_stop B "b-sniff"
    foreign=$(sniff_count B "b-sniff" "$A_FILTER") total=$(sniff_count B "b-sniff" "")
    check "$PHASE" "B (promiscuous) received none of tenant A's frames" "$([[ $foreign == 0 ]] && echo 1 || echo 0)" \
        "$foreign of the $total frames B received in this phase carried A1's or A2's MAC or IP"
}

# legit_checks: nothing legitimate was dropped so far.
legit_checks() {
    local g r n detail='' ok=1
    for g in "${GUESTS[@]}"; do
        for r in "${DROP_REASONS[@]}"; do
            n=$(drops "$g" "$r")
            ((n == 0)) || { ok=0; detail+=" $g $r=$n"; }
        done
    done
    check "$PHASE" "no legitimate frame dropped (ARP, IPv4, IPv6 link-local, iperf3)" "$ok" \
        "${detail:-${DROP_REASONS[*]} all 0 on A1, A2 and B}"
}

# spoof_checks: A2 misbehaves, A1 watches.
spoof_checks() {
    local m0 m1 r0 r1 n seen
    sniff_start A1 "a1-sniff"
    # A different MAC: every frame A2 sends carries it, so none may reach the bridge.
    m0=$(drops A2 spoofed_mac)
    agent_log A2 spoof-mac-on "ip link set eth0 address $SPOOF_MAC" >/dev/null || tw_die "A2 could not change its MAC"
    r0=$(tap_rx A2)
    n=$(ping_replies A2 "${G_IP[A1]}" "$PING_COUNT" a2-ping-spoofed-mac)
    m1=$(drops A2 spoofed_mac) r1=$(tap_rx A2)
    agent_log A2 spoof-mac-off "ip link set eth0 address ${G_MAC[A2]}" >/dev/null || tw_die "A2 could not restore its MAC"
    check "$PHASE" "A2 with another MAC gets nothing through" $((n == 0 && m1 > m0 && r1 == r0)) \
        "ping $n/$PING_COUNT replies, spoofed_mac $m0 -> $m1, frames into A2's TAP +$((r1 - r0))"
    n=$(ping_replies A2 "${G_IP[A1]}" "$PING_COUNT" a2-ping-mac-restored)
    check "$PHASE" "A2 reaches A1 again with its own MAC" $((n > 0)) "$n/$PING_COUNT replies"

    # An address outside A2's allowed list (A1 known by a fixed neighbour entry, so the
    # frames are IPv4 from that address, not ARP).
    m0=$(drops A2 spoofed_ip)
    agent_log A2 spoof-ip-on "ip addr add $SPOOF_IP/32 dev eth0 && arp -i eth0 -s ${G_IP[A1]} ${G_MAC[A1]}" >/dev/null ||
        tw_die "A2 could not add $SPOOF_IP and a fixed neighbour entry for A1: $(cat "$RUN_DIR/$PHASE-spoof-ip-on.txt")"
    n=$( (agent_log A2 a2-ping-spoofed-ip "ping -c $PING_COUNT -i 0.3 -W 1 -I $SPOOF_IP ${G_IP[A1]}" || true) | tw_ping_parse | awk '{ print $2 }')
    m1=$(drops A2 spoofed_ip)
    agent_log A2 spoof-ip-off "ip addr del $SPOOF_IP/32 dev eth0; arp -i eth0 -d ${G_IP[A1]}" >/dev/null || true
    is_num "$n" || n=0
    check "$PHASE" "A2 sending from $SPOOF_IP (not allowed) gets nothing through" $((n == 0 && m1 > m0)) \
        "ping $n/$PING_COUNT replies, spoofed_ip $m0 -> $m1"

    # Gratuitous ARP claiming A1's address (arping sends only from a local address: A2 takes
    # A1's for the moment).
    m0=$(drops A2 spoofed_arp)
    agent_log A2 spoof-arp "ip addr add ${G_IP[A1]}/32 dev eth0 && arping -U -c $NEG_PING_COUNT -I eth0 -s ${G_IP[A1]} ${G_IP[A1]}; ip addr del ${G_IP[A1]}/32 dev eth0" >/dev/null || true
    m1=$(drops A2 spoofed_arp)
    n=$(ping_replies A2 "${G_IP[A1]}" "$PING_COUNT" a2-ping-restored)
    sniff_stop A1 "a1-sniff"
    seen=$(sniff_count A1 "a1-sniff" "ether src $SPOOF_MAC or host $SPOOF_IP or (arp and ether src ${G_MAC[A2]} and arp[14:4] = $(ip_hex "${G_IP[A1]}"))")
    check "$PHASE" "A2's gratuitous ARP for A1's address is dropped" $((m1 > m0)) "spoofed_arp $m0 -> $m1"
    check "$PHASE" "A1 received none of A2's spoofed frames" "$([[ $seen == 0 ]] && echo 1 || echo 0)" \
        "$seen frames from $SPOOF_MAC, from/to $SPOOF_IP, or ARP from A2 claiming ${G_IP[A1]}"
    check "$PHASE" "A2 reaches A1 again after the spoofing is undone" $((n > 0)) "$n/$PING_COUNT replies"
}

# dhcp_checks: a DHCP server on A2 answers A1's DISCOVER; the answer must not arrive.
dhcp_checks() {
    local d0 d1 client server offered
    d0=$(drops A2 rogue_dhcp)
    agent_log A2 udhcpd-start "printf 'interface eth0\nstart $DHCP_POOL_FIRST\nend $DHCP_POOL_LAST\nlease_file /tmp/udhcpd.leases\noption subnet 255.255.255.0\n' >/tmp/udhcpd.conf; touch /tmp/udhcpd.leases; udhcpd -f /tmp/udhcpd.conf >/tmp/udhcpd.log 2>&1 </dev/null & echo \$! >/tmp/udhcpd.pid" >/dev/null
    client=$(agent_log A1 udhcpc "udhcpc -f -n -q -i eth0 -t 3 -T 1 -s /bin/true 2>&1; echo udhcpc-exit=\$?" || true)
    server=$(agent_log A2 udhcpd-stop "kill \$(cat /tmp/udhcpd.pid); cat /tmp/udhcpd.log" || true)
    d1=$(drops A2 rogue_dhcp)
    offered=0
    grep -qi 'offer' <<<"$server" && offered=1
    check "$PHASE" "A1's DHCP DISCOVER reaches a DHCP server of its tenant (A2)" "$offered" \
        "udhcpd on A2: $(grep -ci 'offer' <<<"$server") OFFER line(s) in its log"
    local lease=0
    grep -qi 'lease of\|obtained' <<<"$client" && lease=1
    check "$PHASE" "A2's DHCP OFFER never reaches A1 (rogue_dhcp)" $((lease == 0 && d1 > d0)) \
        "A1's udhcpc: $(grep -o 'udhcpc-exit=[0-9]*' <<<"$client"), $( ((lease)) && echo "got a lease" || echo "no lease"); rogue_dhcp $d0 -> $d1"
}

# inject_checks: unicast for another VM put into B's TAP is not delivered to B. tapwire has the
# TAP's own filter drop it in the kernel (counted in the TAP's tx_dropped); what gets past that
# is dropped by tapwire as not_for_this_vm. Either way it must be counted, and never arrive.
inject_checks() {
    local n0 n1 k0 k1 mine foreign
    sniff_start B "b-inject"
    n0=$(drops B not_for_this_vm) k0=$(tap_tx_dropped B)
    ip netns exec "${G_HOST[B]}" python3 "$TMP/inject.py" "${G_TAP[B]}" "$INJECT_COUNT" "$INJECT_SRC_MAC" "${G_MAC[A2]}" "$BP_IP" "${G_IP[A2]}" "$INJECT_PORT"
    ip netns exec "${G_HOST[B]}" python3 "$TMP/inject.py" "${G_TAP[B]}" "$INJECT_COUNT" "$INJECT_SRC_MAC" "${G_MAC[B]}" "$BP_IP" "${G_IP[B]}" "$INJECT_PORT"
    sleep 1
    n1=$(drops B not_for_this_vm) k1=$(tap_tx_dropped B)
    sniff_stop B "b-inject"
    mine=$(sniff_count B "b-inject" "udp port $INJECT_PORT and ether dst ${G_MAC[B]}")
    foreign=$(sniff_count B "b-inject" "udp port $INJECT_PORT and not ether dst ${G_MAC[B]}")
    check "$PHASE" "unicast for A2's MAC put into B's TAP never reaches B, and is counted" \
        "$([[ $foreign == 0 && $mine == "$INJECT_COUNT" ]] && ((n1 - n0 + k1 - k0 >= INJECT_COUNT)) && echo 1 || echo 0)" \
        "B received $foreign of $INJECT_COUNT for A2 and $mine of $INJECT_COUNT for itself; TAP tx_dropped +$((k1 - k0)), not_for_this_vm +$((n1 - n0))"
}

first=1
for PHASE in ${PHASES//,/ }; do
    T_PHASE=$(tw_now)
    case $PHASE in
    trunk)
        "$TW_REPO_ROOT/Tools/tenant-topology.sh" up --underlay vlan "${TOPOLOGY_ARGS[@]}" "$H1" "$H2" >&2
        where="across hosts, VLAN trunk"
        ;;
    vxlan)
        "$TW_REPO_ROOT/Tools/tenant-topology.sh" down "$H1" "$H2" >&2
        "$TW_REPO_ROOT/Tools/tenant-topology.sh" up --underlay vxlan "${TOPOLOGY_ARGS[@]}" "$H1" "$H2" >&2
        where="across hosts, VXLAN"
        ;;
    samehost)
        "$TW_REPO_ROOT/Tools/tenant-topology.sh" down "$H1" "$H2" >&2
        tw_log "moving A1 to host 2: its tapwire restarts there, QEMU reconnects"
        tw_stop "${G_TWPID[A1]}" 5
        G_HOST[A1]=$H2 G_API[A1]=$TMP/A1-h2.api
        start_tapwire A1
        tw_wait_until 30 "${G_TWPID[A1]}" "A1's QEMU to reconnect" \
            sh -c "curl -s --unix-socket '${G_API[A1]}' http://tapwire/metrics | grep -q '^tapwire_queue_pairs_enabled 1'" ||
            tw_die "A1's QEMU did not reconnect to the restarted tapwire"
        where="same host"
        ;;
    esac
    ((first == 0)) || port_checks
    if [[ $PHASE == vxlan ]]; then
        vx0=$(ip netns exec "$H2" cat "/sys/class/net/vx$VLAN_A/statistics/tx_packets")
    fi
    reach_checks "$where"
    if [[ $PHASE == vxlan ]]; then
        vx1=$(ip netns exec "$H2" cat "/sys/class/net/vx$VLAN_A/statistics/tx_packets")
        check "$PHASE" "tenant A's traffic crossed in its VXLAN tunnel" $((vx1 > vx0)) "vx$VLAN_A (VNI $VNI_A) on host 2 sent $((vx1 - vx0)) frames"
    fi
    if ((first)); then
        legit_checks
        spoof_checks
        dhcp_checks
        inject_checks
    fi
    sniff_checks
    tw_log "phase $PHASE took $(tw_elapsed "$T_PHASE")s"
    first=0
done

TOTAL_SECONDS=$(tw_elapsed "$T0")
echo
echo "Tenant isolation ($(date -u +%Y-%m-%d), kernel $(uname -r), QEMU $QEMU_VERSION, isolation $ISOLATION, ${TOTAL_SECONDS}s, boot ${BOOT_SECONDS}s):"
echo "| phase | check | result | detail |"
echo "|---|---|---|---|"
for row in "${ROWS[@]}"; do
    IFS='|' read -r p c r d <<<"$row"
    echo "| $p | $c | $r | $d |"
done
for row in "${ROWS[@]}"; do
    IFS='|' read -r p c r d <<<"$row"
    [[ $r != FAIL ]] || echo "tenant-check FAILED: $p: $c: $d"
done
echo "tenant-check: $PASSED passed, $FAILED failed (logs in $RUN_DIR)"
((FAILED == 0))
