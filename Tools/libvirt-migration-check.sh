#!/usr/bin/env bash
# Live migration under libvirt 11.3 (QEMU 10, TCG) of a domain whose NIC is
# <interface type='vhostuser'> on tapwire, with `virsh migrate --live`, between two hosts
# emulated on this machine, back and forth, while the guest's connections must survive.
#
# Each host is one libvirtd (started with -d, no systemd) in namespaces of its own: a network
# namespace with a bridge (lvmbr0) and the host's address on it, and a mount + UTS namespace
# with its own hostname and private /run (so /run/libvirt and /run/tapwire), /etc/libvirt
# (libvirtd.conf with its own host_uuid: libvirt refuses to migrate to the same host UUID),
# /var/lib/libvirt, /var/cache/libvirt and /var/log/libvirt, and QEMU 10's module folder
# over the system's (as in Tools/libvirt-check.sh). Each host runs its own tapwire inside
# those namespaces, with the same options and --mac, creating its own TAP (lvmtap0, a port of
# its bridge), on /run/tapwire/vm.sock as the README's libvirt section has it. The two bridges
# are joined by a veth underlay, which also carries the migration stream (--migrateuri
# tcp://HOST-ADDRESS); a third namespace, the client, sits on host a's bridge. virsh talks to
# both daemons through their unix sockets (non-peer-to-peer migration: virsh drives both).
# The domain XML is the same on both hosts: memfd-shared memory, direct kernel boot (each host
# has its own copy of the guest image), the vhost-user NIC in mode='client' with <reconnect>.
#
# While the domain migrates a -> b -> a ..., the client runs a 10 ms ping to the guest, a
# paced TCP stream of known bytes hashed in the guest, and an iperf3 server the guest sends to
# (Fixtures/guest/mig-guest.sh; the helpers are Tools/lib/twmig.py). Checked per
# migration: virsh migrate completes; the domain runs on the destination and is gone from the
# source; libvirt's completed-job statistics (downtime, time); the destination tapwire
# (tapwirectl --json status) is connected with every queue enabled and running, no fault, and
# its queues resumed at the migrated ring positions (not at 0; equal to where the source
# tapwire stopped them, when it logs that) without disagreeing with the ring; the source
# tapwire is idle again; the guest answers the ping after the switch-over; the guest's
# announce reached the destination bridge and both bridges' FDBs point at the new host. At the
# end: the stream's hash matches (the TCP connection survived every migration), every guest
# iperf3 session completed, both tapwires are alive without errors, and each migration's
# longest ping gap is under --max-gap-ms.
# At exit every domain, daemon, namespace, TAP and file it made is gone, and a user it had to
# create is removed; on failure the ends of the libvirtd, QEMU, tapwire and console logs are
# shown.
#
# Usage: Tools/libvirt-migration-check.sh [options]
#   --tapwire BIN            tapwire binary (default $TAPWIRE_BIN or .build/release/tapwire;
#                            tapwirectl must be next to it)
#   --migrations N           live migrations, alternating a -> b, b -> a (default 2)
#   --keep DIR               copy all logs (libvirtd, QEMU, tapwire, consoles, XML) to DIR
#   --mem MIB                guest memory in MiB (default 384)
#   --max-gap-ms MS          the longest ping gap a migration may cause (default 3000)
#   --migrate-timeout S      give up on one `virsh migrate` after this long (default 120)
#   --boot-timeout S         wait for the guest (default 120)
#   --iperf-args "ARGS"      the guest's iperf3 client options (default "-b 100M")
#   --user NAME              the user tapwire switches to (default tapwire; if there is no
#                            such user, one is created for the run and removed)
#   --no-destination-tapwire negative check: host b gets no tapwire, so the first migration
#                            must fail, cleanly and with a diagnosis (the run FAILs)
# Output (stdout): one ROW line per migration and per check (frontend-matrix.sh reads them),
# the per-migration figures (libvirt's downtime, ping gap) and "N passed, N failed".
# Exit status: 0 when every check passed; on failure the ends of the logs go to stderr.
set -euo pipefail

. "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

usage() { sed -n '2,/^# Exit status/s/^# \{0,1\}//p' "$0"; }

TAPWIRE=${TAPWIRE_BIN:-$TW_REPO_ROOT/.build/release/tapwire}
MIGRATIONS=2
KEEP_DIR=
MEM_MIB=384
MAX_GAP_MS=3000
MIGRATE_TIMEOUT=120
BOOT_TIMEOUT=120
IPERF_ARGS="-b 100M"
TW_USER=tapwire
NO_DEST_TAPWIRE=0

need_arg() { (($# >= 2)) || tw_die "$1 needs a value"; }
while (($#)); do
    case $1 in
        --tapwire) need_arg "$@"; TAPWIRE=$2; shift ;;
        --migrations) need_arg "$@"; MIGRATIONS=$2; shift ;;
        --keep) need_arg "$@"; KEEP_DIR=$2; shift ;;
        --mem) need_arg "$@"; MEM_MIB=$2; shift ;;
        --max-gap-ms) need_arg "$@"; MAX_GAP_MS=$2; shift ;;
        --migrate-timeout) need_arg "$@"; MIGRATE_TIMEOUT=$2; shift ;;
        --boot-timeout) need_arg "$@"; BOOT_TIMEOUT=$2; shift ;;
        --iperf-args) need_arg "$@"; IPERF_ARGS=$2; shift ;;
        --user) need_arg "$@"; TW_USER=$2; shift ;;
        --no-destination-tapwire) NO_DEST_TAPWIRE=1 ;;
        -h | --help) usage; exit 0 ;;
        *) usage >&2; tw_die "unknown argument: $1" ;;
    esac
    shift
done
for v in MIGRATIONS MAX_GAP_MS MIGRATE_TIMEOUT BOOT_TIMEOUT; do
    [[ ${!v} =~ ^[0-9]+$ && ${!v} -gt 0 ]] || tw_die "--$(echo "$v" | tr '[:upper:]_' '[:lower:]-') must be a positive integer"
done
[[ $MEM_MIB =~ ^[0-9]+$ && $MEM_MIB -ge 256 ]] || tw_die "--mem takes MiB, at least 256"

tw_require_root
[[ -x $TAPWIRE ]] || tw_die "tapwire binary not found at $TAPWIRE (make release, or --tapwire BIN)"
TAPWIRE=$(cd "$(dirname "$TAPWIRE")" && pwd)/$(basename "$TAPWIRE")
TAPWIRECTL=$(dirname "$TAPWIRE")/tapwirectl
[[ -x $TAPWIRECTL ]] || tw_die "tapwirectl not found next to tapwire ($TAPWIRECTL)"

# ---------------------------------------------------------------- what this needs

tw_ensure_packages iperf3:iperf3 ip:iproute2 bridge:iproute2 jq:jq python3:python3 curl:curl \
    timeout:coreutils unshare:util-linux nsenter:util-linux dpkg:busybox-static cpio:cpio
tw_ensure_libvirt
tw_ensure_qemu10
for c in libvirtd virsh; do
    command -v "$c" >/dev/null || tw_die "$c is missing: install libvirt 11.3 (Tools/install-deps.sh)"
done
LV_VERSION=$(libvirtd --version | awk '{ print $NF }')
LV_SHORT=$(echo "$LV_VERSION" | cut -d. -f1,2)
[[ $LV_VERSION == 11.* ]] || tw_warn "libvirt is $LV_VERSION here; this check is written for 11.3"
getent group libvirt-qemu >/dev/null || tw_die "no libvirt-qemu group: is libvirt-daemon-driver-qemu installed?"
tw_qemu_select 10
QEMU_SHORT=$(echo "$QEMU_VERSION" | cut -d. -f1,2)
SYS_MODDIR=/usr/lib/x86_64-linux-gnu/qemu
Q10_MODDIR=$TW_QEMU10_PREFIX/usr/lib/x86_64-linux-gnu/qemu
Q10_DATADIR=$TW_QEMU10_PREFIX/usr/share/qemu
[[ -d $Q10_MODDIR && -d $SYS_MODDIR ]] || tw_die "need $Q10_MODDIR and $SYS_MODDIR (QEMU 10's modules replace the system's for libvirt)"

GUEST_DIR=$(tw_guest_dir)
"$TW_REPO_ROOT/Tools/guest-image.sh" "$GUEST_DIR" >&2
tw_require_guest_files "$GUEST_DIR" mig-guest.sh

T0=$(tw_now)
tw_install_traps

# ---------------------------------------------------------------- scratch, helpers, user

# Short paths: unix sockets live here. libvirt's QEMU (libvirt-qemu) reads each host's files.
TMP=$(mktemp -d /tmp/tw-lvmig.XXXXXX)
tw_at_exit "rm -rf '$TMP'"
chmod 0755 "$TMP"

# The traffic helpers (ping with reply times, the hashed stream, the announce sniffer, ping
# gaps), shared with Tools/migration-check.sh.
TWM=$TW_REPO_ROOT/Tools/lib/twmig.py
twm() { python3 "$TWM" "$@"; }

keep_logs() {
    [[ -n $KEEP_DIR ]] || return 0
    mkdir -p "$KEEP_DIR" || return 0
    local h
    cp -a "$TMP"/*.log "$TMP"/*.xml "$TMP"/*.txt "$KEEP_DIR"/ 2>/dev/null
    for h in a b; do
        [[ -d $TMP/$h ]] || continue
        mkdir -p "$KEEP_DIR/host-$h"
        cp -a "$TMP/$h"/*.log "$TMP/$h"/etc/*.conf "$KEEP_DIR/host-$h"/ 2>/dev/null
        cp -a "$TMP/$h/log/qemu/." "$KEEP_DIR/host-$h"/ 2>/dev/null
    done
    tw_log "logs kept in $KEEP_DIR"
}
tw_at_exit keep_logs

if ! id -u "$TW_USER" >/dev/null 2>&1; then
    [[ $TW_USER == tapwire ]] || tw_die "no user $TW_USER"
    # Not "tapwire": another check may create and remove that one while this runs.
    TW_USER=tw-lvmig-$$
    useradd --system --no-create-home --shell /usr/sbin/nologin "$TW_USER"
    tw_at_exit "userdel '$TW_USER' 2>/dev/null || true"
fi

# ---------------------------------------------------------------- results

PASSED=0 FAILED=0
ROW_BASE="frontend=libvirt-$LV_SHORT qemu=$QEMU_SHORT mode=two-hosts"
# check NAME OK CHECKED DETAIL [FIGURES]: one ROW line; FIGURES go into the result, e.g.
# result="PASS (downtime 12 ms)", which frontend-matrix.sh shows in its table.
check() {
    local name=$1 ok=$2 checked=$3 detail=$4 result
    if ((ok)); then result=PASS; else result=FAIL; fi
    [[ -z ${5:-} ]] || result="\"$result ($5)\""
    if ((ok)); then
        PASSED=$((PASSED + 1))
        echo "ROW $ROW_BASE check=\"$checked\" result=$result name=$name $detail"
    else
        FAILED=$((FAILED + 1))
        echo "ROW $ROW_BASE check=\"$checked\" result=$result name=$name $detail"
        tw_warn "FAIL $name: $detail"
    fi
}

# ---------------------------------------------------------------- network

GUEST_IP=$TW_GUEST_IP
CLIENT_IP=$TW_HOST_IP
MAC=$TW_GUEST_MAC
NSP=twlvm$$
declare -A NS HOST_IP UPLINK
NS[a]=${NSP}a NS[b]=${NSP}b CLIENT_NS=${NSP}c
HOST_IP[a]=10.79.0.1 HOST_IP[b]=10.79.0.2
UPLINK[a]=lvmul-a UPLINK[b]=lvmul-b
BR=lvmbr0 TAP=lvmtap0
for ns in "${NS[a]}" "${NS[b]}" "$CLIENT_NS"; do
    tw_netns_create "$ns"
    tw_netns_no_ipv6 "$ns"
done
for h in a b; do
    ip -n "${NS[$h]}" link add "$BR" type bridge
    ip -n "${NS[$h]}" addr add "${HOST_IP[$h]}/24" dev "$BR"
done
# The underlay joins the two bridges; the hosts' addresses (and so the migration stream) and
# the guest's frames share it, as on a flat network.
ip link add lvmul-a netns "${NS[a]}" type veth peer name lvmul-b netns "${NS[b]}"
ip link add lvmcl-a netns "${NS[a]}" type veth peer name eth0 netns "$CLIENT_NS"
ip -n "${NS[a]}" link set lvmul-a master "$BR" up
ip -n "${NS[b]}" link set lvmul-b master "$BR" up
ip -n "${NS[a]}" link set lvmcl-a master "$BR" up
ip -n "$CLIENT_NS" addr add "$CLIENT_IP/$TW_PREFIX_LEN" dev eth0
ip -n "$CLIENT_NS" link set eth0 up
ip -n "${NS[a]}" link set "$BR" up
ip -n "${NS[b]}" link set "$BR" up
tw_log "hosts: a = netns ${NS[a]} (${HOST_IP[a]} on $BR), b = netns ${NS[b]} (${HOST_IP[b]} on $BR), joined by veth lvmul-a/lvmul-b; client $CLIENT_NS ($CLIENT_IP) on a's bridge"

# ---------------------------------------------------------------- the two hosts' libvirtd

DOM=tw-lvmig-$$
CONSOLE_PATH=/var/log/libvirt/qemu/$DOM-console.log
declare -A LV_PID URI HOST_DIR
for h in a b; do
    d=$TMP/$h
    HOST_DIR[$h]=$d
    mkdir -p "$d"/{etc,run,lib/boot,cache,log/qemu}
    chmod 0755 "$d" "$d/lib" "$d/lib/boot"
    # Each host's own copy of the guest image (libvirt relabels what its QEMU opens).
    cp "$GUEST_DIR/vmlinuz" "$GUEST_DIR/initramfs.cpio.gz" "$d/lib/boot/"
    chmod 0644 "$d/lib/boot/"*
    n=${HOST_IP[$h]##*.}
    cat >"$d/etc/libvirtd.conf" <<EOF
log_outputs="3:file:$d/libvirtd.log"
host_uuid="7a3e1b2c-0000-4000-8000-$(printf '%012d' "$n")"
EOF
    # stdio_handler: QEMU's log goes to /var/log/libvirt/qemu (this host's) without virtlogd.
    # No cgroups: both hosts' QEMU would get the same machine cgroup (same name, same domain id).
    cat >"$d/etc/qemu.conf" <<EOF
stdio_handler = "file"
cgroup_controllers = [ ]
remember_owner = 0
migration_address = "${HOST_IP[$h]}"
EOF
    URI[$h]="qemu+unix:///system?socket=$d/run/libvirt-sock"
done
virsh_() { local h=$1; shift; virsh -q -c "${URI[$h]}" "$@"; }

# start_host H: libvirtd of host H in its netns and a private mount + UTS namespace.
start_host() {
    local h=$1 d=${HOST_DIR[$1]} try
    for try in 1 2 3; do
        rm -f "$d/libvirtd.pid"
        echo "== start $try" >>"$d/libvirtd.start.log"
        # mount -n: nothing is written to the host's /run/mount/utab.
        # shellcheck disable=SC2016 # $1.. belong to the inner sh
        ip netns exec "${NS[$h]}" unshare --mount --uts --propagation private sh -c '
            set -e
            d=$1
            mount -n -t tmpfs -o mode=0755 tw-lvmig-run /run
            mkdir /run/libvirt /run/tapwire
            # The socket folder of the README: setgid, group libvirt-qemu.
            chgrp libvirt-qemu /run/tapwire
            chmod 2770 /run/tapwire
            mount -n --bind "$d/run" /run/libvirt
            mount -n --bind "$d/etc" /etc/libvirt
            mount -n --bind "$d/lib" /var/lib/libvirt
            mount -n --bind "$d/cache" /var/cache/libvirt
            mount -n --bind "$d/log" /var/log/libvirt
            mount -n --bind "$2" "$3"
            hostname "$4"
            exec libvirtd -d -f "$d/etc/libvirtd.conf" -p "$d/libvirtd.pid"' \
            sh "$d" "$Q10_MODDIR" "$SYS_MODDIR" "tw-lvmig-$h" >>"$d/libvirtd.start.log" 2>&1 || true
        if tw_wait_until 30 "" "libvirtd of host $h" lv_ready "$h" 2>/dev/null; then
            LV_PID[$h]=$(cat "$d/libvirtd.pid")
            break
        fi
        [[ ! -s $d/libvirtd.pid ]] || tw_stop_daemon "$(cat "$d/libvirtd.pid")" 10
        tw_warn "libvirtd of host $h did not answer (start $try); retrying"
        sleep 1
    done
    if [[ -z ${LV_PID[$h]:-} ]]; then
        tw_tail_log "$d/libvirtd.start.log" 20 "libvirtd -d output (host $h)"
        tw_tail_log "$d/libvirtd.log" 20 "libvirtd log (host $h)"
        tw_die "libvirtd of host $h did not come up"
    fi
    if ! virsh_ "$h" domcapabilities --emulatorbin "$QEMU_BIN" --virttype qemu --machine q35 >"$d/domcaps.xml" 2>"$d/domcaps.err"; then
        tw_tail_log "$d/libvirtd.log" 20 "libvirtd log (host $h)"
        tw_die "libvirt of host $h refused $QEMU_BIN: $(head -c 300 "$d/domcaps.err")"
    fi
    tw_log "host $h: libvirtd $LV_VERSION (pid ${LV_PID[$h]}), hostname tw-lvmig-$h, host UUID $(virsh_ "$h" capabilities | sed -n 's/.*<uuid>\(.*\)<\/uuid>.*/\1/p' | head -n 1)"
}
lv_ready() {
    local d=${HOST_DIR[$1]}
    [[ -s $d/libvirtd.pid ]] && tw_pid_alive "$(cat "$d/libvirtd.pid")" && virsh_ "$1" uri >/dev/null 2>&1
}
# host_exec H CMD...: CMD inside host H (its libvirtd's network, mount and UTS namespaces).
host_exec() { local h=$1; shift; nsenter -t "${LV_PID[$h]}" -m -n -u "$@"; }
# qemu_pid H: host H's QEMU of the domain (empty if none).
qemu_pid() {
    local p
    p=$(cat "${HOST_DIR[$1]}/run/qemu/$DOM.pid" 2>/dev/null || true)
    if [[ -n $p ]] && tw_pid_alive "$p"; then echo "$p"; fi
}
stop_host() {
    local h=$1 pid i
    [[ -n ${LV_PID[$h]:-} ]] || return 0
    if virsh_ "$h" domstate "$DOM" >/dev/null 2>&1; then
        pid=$(qemu_pid "$h")
        timeout 30 virsh -q -c "${URI[$h]}" destroy "$DOM" >/dev/null 2>&1 || { [[ -z $pid ]] || kill -KILL "$pid" 2>/dev/null || true; }
        for ((i = 0; i < 50; i++)); do [[ -n $(qemu_pid "$h") ]] || break; sleep 0.2; done
    fi
    tw_stop_daemon "${LV_PID[$h]}" 20
    LV_PID[$h]=
}
# Started a first, stopped a last (the netns deletions after them stop whatever is left).
tw_at_exit "stop_host a"
start_host a
tw_at_exit "stop_host b"
start_host b

# ---------------------------------------------------------------- the two tapwires

# Both with the same options (the guest must see the same device) and --mac; each on its own
# TAP, which it creates in its host's network namespace, as an operator starts it: umask 0002
# in the setgid socket folder, switching to $TW_USER:libvirt-qemu after start-up.
declare -A TW_PID TW_LOG TW_API
TW_OPTS=(--socket-path /run/tapwire/vm.sock --tap "$TAP" --mac "$MAC" --name "$DOM"
    --user "$TW_USER:libvirt-qemu" --log-level debug)
start_tapwire() {
    local h=$1
    TW_LOG[$h]=$TMP/$h/tapwire.log
    TW_API[$h]=$TMP/$h/api.sock
    tw_log "host $h: tapwire ${TW_OPTS[*]} --api-socket ${TW_API[$h]}"
    # shellcheck disable=SC2016 # $@ belongs to the inner sh
    tw_spawn "${TW_LOG[$h]}" nsenter -t "${LV_PID[$h]}" -m -n -u sh -c 'umask 0002; exec "$@"' sh \
        "$TAPWIRE" "${TW_OPTS[@]}" --api-socket "${TW_API[$h]}"
    TW_PID[$h]=$TW_SPAWNED_PID
    tw_at_exit "tw_stop ${TW_PID[$h]} 5"
    tw_wait_until 20 "${TW_PID[$h]}" "tapwire of host $h to listen" tw_log_has "${TW_LOG[$h]}" "listening on" &&
        tw_wait_until 20 "${TW_PID[$h]}" "tapwire's TAP on host $h" tw_netns_has_link "${NS[$h]}" "$TAP" || {
        tw_tail_log "${TW_LOG[$h]}" 20 "tapwire log (host $h)"
        tw_die "tapwire of host $h did not start"
    }
    ip -n "${NS[$h]}" link set "$TAP" master "$BR"
    ip -n "${NS[$h]}" link set "$TAP" up
}
start_tapwire a
if ((NO_DEST_TAPWIRE)); then
    tw_warn "--no-destination-tapwire: host b gets no tapwire; the first migration must fail"
else
    start_tapwire b
fi

vm_json() { [[ -n ${TW_API[$1]:-} ]] && "$TAPWIRECTL" --api-socket "${TW_API[$1]}" --json status 2>/dev/null || true; }
# tapwire_serving H: what is wrong with host H's tapwire as the one serving the guest (empty:
# nothing): alive, a frontend connected, every queue enabled, running and without a fault.
tapwire_serving() {
    local js
    tw_alive "${TW_PID[$1]:-}" || { echo "no tapwire runs on host $1"; return; }
    js=$(vm_json "$1")
    [[ -n $js ]] || { echo "the API of host $1's tapwire does not answer"; return; }
    jq -r '[if .state != "connected" then "state \(.state)" else empty end,
            if (.queues | length) == 0 then "no queues" else empty end,
            (.queues[] | select((.enabled and .running and .fault == null) | not) |
             "queue \(.index) enabled=\(.enabled) running=\(.running) fault=\(.fault)")] | join("; ")' <<<"$js"
}
# tapwire_idle H: what is wrong with host H's tapwire once its QEMU left.
tapwire_idle() {
    local state
    tw_alive "${TW_PID[$1]:-}" || { echo "host $1's tapwire is gone"; return; }
    state=$(vm_json "$1" | jq -r .state 2>/dev/null)
    [[ $state == waiting ]] || echo "state ${state:-unknown}, not waiting"
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
# queues_text H: "0:rx:running,1:tx:running" from host H's tapwire API (with any further
# fields its queues have, e.g. ring indexes, as key=value).
queues_text() {
    vm_json "$1" | jq -r '[.queues[] | "\(.index):\(.direction):\(if .running then "running" else "stopped" end)" +
        (to_entries | map(select(.key | IN("index", "direction", "running", "enabled", "size", "fault") | not) |
         select(.value != null) | ":\(.key)=\(.value)") | join(""))] | join(",")' 2>/dev/null || true
}

# ---------------------------------------------------------------- client traffic

IPERF_SERVER_LOG=$TMP/iperf3-server.log
tw_spawn "$IPERF_SERVER_LOG" ip netns exec "$CLIENT_NS" iperf3 -s -B "$CLIENT_IP" --forceflush
tw_at_exit "tw_stop $TW_SPAWNED_PID 3"

# ---------------------------------------------------------------- the domain

WARMUP=3
HOP_SECONDS=12
LOAD_SECONDS=$((WARMUP + MIGRATIONS * HOP_SECONDS + 5))
GUEST_CMD="sh /etc/tapwire/mig-guest.sh $LOAD_SECONDS $CLIENT_IP 5001 10"
CMDLINE="console=ttyS0 panic=-1 quiet tw.ip=$GUEST_IP/$TW_PREFIX_LEN tw.host=$CLIENT_IP tw.ping=2 tw.cmd=\"$GUEST_CMD\""
[[ -z $IPERF_ARGS ]] || CMDLINE+=" tw.iperf=\"$IPERF_ARGS\""
XML=$TMP/domain.xml
cat >"$XML" <<EOF
<domain type='qemu' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>
  <name>$DOM</name>
  <memory unit='MiB'>$MEM_MIB</memory>
  <vcpu>1</vcpu>
  <memoryBacking>
    <source type='memfd'/>
    <access mode='shared'/>
  </memoryBacking>
  <os>
    <type arch='x86_64' machine='q35'>hvm</type>
    <kernel>/var/lib/libvirt/boot/vmlinuz</kernel>
    <initrd>/var/lib/libvirt/boot/initramfs.cpio.gz</initrd>
    <cmdline>$CMDLINE</cmdline>
  </os>
  <features>
    <acpi/>
    <apic/>
  </features>
  <clock offset='utc'/>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>$QEMU_BIN</emulator>
    <serial type='file'>
      <source path='$CONSOLE_PATH' append='on'/>
      <target port='0'/>
    </serial>
    <interface type='vhostuser'>
      <mac address='$MAC'/>
      <source type='unix' path='/run/tapwire/vm.sock' mode='client'>
        <reconnect enabled='yes' timeout='1'/>
      </source>
      <model type='virtio'/>
      <alias name='ua-net0'/>
    </interface>
    <controller type='usb' model='none'/>
    <memballoon model='none'/>
  </devices>
  <qemu:commandline>
    <qemu:arg value='-L'/>
    <qemu:arg value='$Q10_DATADIR'/>
    <qemu:arg value='-L'/>
    <qemu:arg value='/usr/share/qemu'/>
  </qemu:commandline>
</domain>
EOF
console_of() { echo "${HOST_DIR[$1]}/log/qemu/$DOM-console.log"; }
qemu_log_of() { echo "${HOST_DIR[$1]}/log/qemu/$DOM.log"; }
all_consoles() { local h f; for h in a b; do f=$(console_of "$h"); [[ ! -f $f ]] || tr -d '\r' <"$f"; done; }
consoles_have() { all_consoles | grep -aqF -- "$1"; }

on_failure() {
    ((TW_EXIT_RC != 0 || FAILED > 0)) || return 0
    local h
    tw_log "diagnosis follows; ${KEEP_DIR:+all logs are kept in $KEEP_DIR}${KEEP_DIR:-rerun with --keep DIR to keep all logs}"
    for h in a b; do
        [[ -n ${HOST_DIR[$h]:-} ]] || continue
        tw_tail_log "${HOST_DIR[$h]}/libvirtd.log" 15 "libvirtd log of host $h"
        tw_tail_log "$(qemu_log_of "$h")" 12 "QEMU log of host $h (libvirt's /var/log/libvirt/qemu/$DOM.log there)"
        if [[ -n ${TW_LOG[$h]:-} ]]; then
            tw_tail_log "${TW_LOG[$h]}" 15 "tapwire log of host $h"
            [[ -z ${LV_PID[$h]:-} ]] || tw_log "host $h tapwire status: $(vm_json "$h" | jq -c '{state, queues}' 2>/dev/null)"
        else
            tw_log "host $h: no tapwire was started"
        fi
    done
    all_consoles | grep -av '^tw-mig-beat' | sed '/^TW-GUEST-ETHTOOL-BEGIN$/,/^TW-GUEST-ETHTOOL-END$/c\
(ethtool -k output left out)' >"$TMP/console.all" || true
    tw_tail_log "$TMP/console.all" 20 "guest console (both hosts)"
    [[ ! -s $TMP/virsh.log ]] || tw_tail_log "$TMP/virsh.log" 15 "virsh"
}
tw_at_exit on_failure

tw_log "creating $DOM on host a (QEMU $QEMU_VERSION, ${MEM_MIB} MiB, TCG)"
T_BOOT=$(tw_now)
if ! timeout --kill-after=5 120 virsh -q -c "${URI[a]}" create "$XML" >>"$TMP/virsh.log" 2>&1; then
    tw_die "virsh create failed or hung: $(tail -n 3 "$TMP/virsh.log" | tr '\n' ' ' | cut -c1-400)"
fi
has_qemu() { [[ -n $(qemu_pid "$1") ]]; }
tw_wait_until 20 "" "the domain's QEMU pid on host a" has_qemu a || tw_die "no QEMU for $DOM on host a"
rc=0
tw_wait_marker "$(console_of a)" TW-MIG-LISTENING "$BOOT_TIMEOUT" "$(qemu_pid a)" TW-GUEST-FAIL || rc=$?
case $rc in
    0) ;;
    1) tw_die "guest not ready after ${BOOT_TIMEOUT}s" ;;
    2) tw_die "QEMU exited before the guest was ready" ;;
    3) tw_die "guest set-up failed: $(tr -d '\r' <"$(console_of a)" | grep -a -m1 TW-GUEST-FAIL)" ;;
esac
BOOT_S=$(tw_elapsed "$T_BOOT")
w=$(wait_ok 10 tapwire_serving a) || tw_die "host a's tapwire after boot: $w"
tw_log "guest up on host a after ${BOOT_S}s; tapwire a: $(queues_text a); starting the 10 ms ping, the stream and the guest's iperf3"

PING_OUT=$TMP/ping.txt
tw_spawn "$TMP/ping.log" ip netns exec "$CLIENT_NS" python3 "$TWM" ping "$GUEST_IP" 0.01 "$PING_OUT"
PING_PID=$TW_SPAWNED_PID
tw_at_exit "tw_stop $PING_PID 3"
declare -A ANNOUNCE_OUT
for h in a b; do
    ANNOUNCE_OUT[$h]=$TMP/announce-$h.txt
    tw_spawn "$TMP/sniff-$h.log" ip netns exec "${NS[$h]}" python3 "$TWM" sniff "$BR" "$MAC" "${ANNOUNCE_OUT[$h]}"
    tw_at_exit "tw_stop $TW_SPAWNED_PID 3"
done
announces_since() { # EPOCH HOST -> "garp=N rarp=M" seen by HOST's bridge since EPOCH
    awk -v t="$1" '$1 > t { n[$2]++ } END { printf "garp=%d rarp=%d\n", n["garp"], n["rarp"] }' "${ANNOUNCE_OUT[$2]}" 2>/dev/null || echo "garp=0 rarp=0"
}
STOP_FILE=$TMP/stream.stop
STREAM_OUT=$TMP/stream.json
tw_spawn "$TMP/stream.log" ip netns exec "$CLIENT_NS" python3 "$TWM" send "$GUEST_IP" 5001 $((0x1a7e + MIGRATIONS)) \
    4000000 "$STOP_FILE" "$STREAM_OUT"
STREAM_PID=$TW_SPAWNED_PID
tw_at_exit "tw_stop $STREAM_PID 3"
sleep "$WARMUP"
reply_after() { tail -n 300 "$PING_OUT" 2>/dev/null | awk -v t="$1" '!/^#/ && $2 > t { f = 1 } END { exit !f }'; }
reply_after "$(tw_now | awk '{ printf "%.3f", $1 - 2 }')" || tw_die "the client gets no ping reply from the guest before the first migration"
fdb_port() { # HOST -> the port HOST's bridge learned the guest MAC on ("-" if none)
    bridge -n "${NS[$1]}" fdb show br "$BR" 2>/dev/null |
        awk -v m="$MAC" 'tolower($1) == tolower(m) && $2 == "dev" { print $3; f = 1; exit } END { if (!f) print "-" }'
}

# ---------------------------------------------------------------- migrations

# ring_starts LOG FROM_BYTE: "INDEX AVAIL USED" for the last start of each queue logged after
# FROM_BYTE (tapwire's "queue N (rx) started at avail A, used U (size S)", or the debug line
# "queue N started: size S, avail A, used U" of older builds).
ring_starts() {
    tail -c +$(($2 + 1)) "$1" 2>/dev/null | sed -n -e 's/.*queue \([0-9]*\) ([rt]x) started at avail \([0-9]*\), used \([0-9]*\).*/\1 \2 \3/p' \
        -e 's/.*queue \([0-9]*\) started: size [0-9]*, avail \([0-9]*\), used \([0-9]*\).*/\1 \2 \3/p' |
        awk '{ a[$1] = $2; u[$1] = $3 } END { for (q in a) print q, a[q], u[q] }' | sort -n
}
# ring_stops LOG FROM_BYTE: "INDEX BASE" for queues stopped after FROM_BYTE (GET_VRING_BASE;
# "queue N (rx) stopped at B", logged by tapwire builds that have it).
ring_stops() {
    tail -c +$(($2 + 1)) "$1" 2>/dev/null | sed -n 's/.*queue \([0-9]*\) ([rt]x) stopped at \([0-9]*\).*/\1 \2/p' |
        awk '{ b[$1] = $2 } END { for (q in b) print q, b[q] }' | sort -n
}
log_size() { stat -c %s "$1" 2>/dev/null || echo 0; }

declare -A R_DOWN R_TOTAL R_GAP R_WHY R_STATUS R_DETAIL R_FROM R_TO
WINDOWS=$TMP/windows
: >"$WINDOWS"
COMPLETED=0
DONE=0
HERE=a
for ((m = 1; m <= MIGRATIONS; m++)); do
    src=$HERE
    if [[ $src == a ]]; then dst=b; else dst=a; fi
    R_FROM[$m]=$src R_TO[$m]=$dst
    why=()
    # What an operator checks first: the destination's tapwire is up, on the socket the
    # domain XML names. Without it the destination QEMU waits for its backend (<reconnect>)
    # and the migration hangs: it is still tried (what libvirt does is part of the diagnosis),
    # for 30 s at most.
    limit=$MIGRATE_TIMEOUT
    if ! tw_alive "${TW_PID[$dst]:-}"; then
        why+=("host $dst runs no tapwire: start it (same options, same --mac) before migrating")
    elif ! host_exec "$dst" test -S /run/tapwire/vm.sock; then
        why+=("host $dst has no /run/tapwire/vm.sock")
    fi
    ((${#why[@]} == 0 || limit <= 30)) || limit=30
    src_tw_off=$(log_size "${TW_LOG[$src]}") dst_tw_off=$(log_size "${TW_LOG[$dst]:-/nonexistent}")
    dst_q_off=$(log_size "$(qemu_log_of "$dst")")
    t_start=$(tw_now)
    echo "$m $t_start" >>"$WINDOWS"
    tw_log "migration $m/$MIGRATIONS: virsh -c ${URI[$src]} migrate --live --verbose $DOM ${URI[$dst]} --migrateuri tcp://${HOST_IP[$dst]}"
    echo "== migration $m: $src -> $dst" >>"$TMP/virsh.log"
    rc=0
    tw_interruptible timeout --kill-after=10 "$limit" virsh -c "${URI[$src]}" migrate --live --verbose \
        "$DOM" "${URI[$dst]}" --migrateuri "tcp://${HOST_IP[$dst]}" >"$TMP/migrate-$m.txt" 2>&1 || rc=$?
    t_done=$(tw_now)
    tr '\r' '\n' <"$TMP/migrate-$m.txt" | grep -av '^$' >>"$TMP/virsh.log" || true
    progress=$(tr '\r' '\n' <"$TMP/migrate-$m.txt" | grep -ao 'Migration: \[[^]]*\]' | tail -n 1 || true)
    R_DOWN[$m]=- R_TOTAL[$m]=-
    if ((rc == 0)); then
        R_STATUS[$m]=completed
        COMPLETED=$((COMPLETED + 1))
        HERE=$dst
        virsh_ "$dst" domjobinfo --completed "$DOM" >"$TMP/jobinfo-$m.txt" 2>&1 || true
        R_DOWN[$m]=$(awk -F: '/^Total downtime/ { split($2, v, " "); print v[1] }' "$TMP/jobinfo-$m.txt")
        R_TOTAL[$m]=$(awk -F: '/^Time elapsed:/ { split($2, v, " "); print v[1] }' "$TMP/jobinfo-$m.txt")
        [[ -n ${R_DOWN[$m]} ]] || { R_DOWN[$m]=-; why+=("no downtime in domjobinfo --completed on host $dst: $(head -n 2 "$TMP/jobinfo-$m.txt" | tr '\n' ' ')"); }
        [[ -n ${R_TOTAL[$m]} ]] || R_TOTAL[$m]=-
        state=$(virsh_ "$dst" domstate "$DOM" 2>&1 || true)
        [[ $state == running ]] || why+=("the domain is '$state' on host $dst, not running")
        if virsh_ "$src" domstate "$DOM" >/dev/null 2>&1; then why+=("the domain is still defined on host $src"); fi
        [[ -n $(qemu_pid "$dst") ]] || why+=("no QEMU on host $dst")
        [[ -z $(qemu_pid "$src") ]] || why+=("host $src's QEMU is still running")
    elif ((rc == 124 || rc == 137)); then
        R_STATUS[$m]=timeout
        why+=("virsh migrate did not finish within ${limit}s (${progress:-no progress shown})")
    else
        R_STATUS[$m]=failed
        why+=("virsh migrate failed (exit $rc): $(tr '\r' '\n' <"$TMP/migrate-$m.txt" | grep -a 'error' | head -n 3 | tr '\n' ' ' | cut -c1-500)")
    fi
    rings=- queues=-
    if [[ ${R_STATUS[$m]} == completed ]]; then
        w=$(wait_ok 15 tapwire_serving "$dst") || why+=("host $dst's tapwire: $w")
        w=$(wait_ok 15 tapwire_idle "$src") || why+=("host $src's tapwire after its QEMU left: $w")
        queues=$(queues_text "$dst")
        # The migrated ring positions: each destination queue started where the source's stopped.
        starts=$(ring_starts "${TW_LOG[$dst]}" "$dst_tw_off")
        stops=$(ring_stops "${TW_LOG[$src]}" "$src_tw_off")
        if [[ -n $starts ]]; then
            rings=$(awk '{ printf "%s%s:avail=%s,used=%s", (NR > 1 ? ";" : ""), $1, $2, $3 }' <<<"$starts")
        else
            why+=("host $dst's tapwire logged no queue start after the migration (its ring positions are unknown)")
        fi
        while read -r q a u; do
            [[ -n $q ]] || continue
            ((a != 0 || u != 0)) || why+=("queue $q on host $dst started at 0, not at the migrated position")
            b=$(awk -v q="$q" '$1 == q { print $2 }' <<<"$stops")
            [[ -z $b || $b == "$a" ]] || why+=("queue $q: host $src's tapwire stopped at $b, host $dst's started at $a")
        done <<<"$starts"
        [[ -z $stops ]] || rings+=" src_stopped=$(awk '{ printf "%s%s:%s", (NR > 1 ? ";" : ""), $1, $2 }' <<<"$stops")"
        if tail -c +$((dst_tw_off + 1)) "${TW_LOG[$dst]}" | grep -aq 'resuming at'; then
            why+=("host $dst's tapwire: $(tail -c +$((dst_tw_off + 1)) "${TW_LOG[$dst]}" | grep -a -m1 'resuming at' | cut -c1-200)")
        fi
        # QEMU's own messages (not the command line libvirt logs before them).
        qerr=$(tail -c +$((dst_q_off + 1)) "$(qemu_log_of "$dst")" 2>/dev/null | grep -a 'qemu-system-x86_64: ' |
            grep -aiE 'vhost|error|fail' | grep -avE 'failed to initialize module|Only modules from the same build' |
            head -n 2 | tr '\n' ' ' || true)
        [[ -z $qerr ]] || why+=("host $dst's QEMU said: $qerr")
        # The guest answers at its new place.
        for ((i = 0; i < 50; i++)); do reply_after "$t_done" && break; sleep 0.2; done
        reply_after "$t_done" || why+=("no ping reply from the guest within 10 s of the switch-over")
        # Its announce reached the destination's bridge, and both bridges follow it.
        announce=$(announces_since "$t_start" "$dst")
        for ((i = 0; i < 15; i++)); do [[ $announce == "garp=0 rarp=0" ]] || break; sleep 0.2; announce=$(announces_since "$t_start" "$dst"); done
        [[ $announce != "garp=0 rarp=0" ]] || why+=("no gratuitous ARP or RARP from the guest's MAC on host $dst's bridge")
        f_dst=$(fdb_port "$dst") f_src=$(fdb_port "$src")
        [[ $f_dst == "$TAP" ]] || why+=("host $dst's bridge has the guest MAC on $f_dst, not $TAP")
        [[ $f_src == "${UPLINK[$src]}" ]] || why+=("host $src's bridge has the guest MAC on $f_src, not ${UPLINK[$src]}")
        R_DETAIL[$m]="queues=\"$queues\" rings=\"$rings\" announce=\"$announce\" fdb_$dst=$f_dst fdb_$src=$f_src"
    else
        # What the destination QEMU said (e.g. that it cannot reach its vhost-user backend).
        qerr=$(tail -c +$((dst_q_off + 1)) "$(qemu_log_of "$dst")" 2>/dev/null | grep -a 'qemu-system-x86_64: ' |
            grep -avE 'failed to initialize module|Only modules from the same build|terminating on signal' |
            sed 's/^[^ ]* qemu-system-x86_64: //' | sort -u | head -n 2 | tr '\n' ' ' || true)
        [[ -z $qerr ]] || why+=("host $dst's QEMU: $qerr")
        R_DETAIL[$m]="progress=\"${progress:-none}\""
        # Where the domain is now (libvirt resumes it on the source when a migration fails).
        R_DETAIL[$m]+=" state_$src=\"$(virsh_ "$src" domstate "$DOM" 2>&1 | head -n 1)\" state_$dst=\"$(virsh_ "$dst" domstate "$DOM" 2>&1 | head -n 1)\""
    fi
    R_WHY[$m]=$(IFS=';'; echo "${why[*]}" | tr '"' "'")
    DONE=$m
    tw_log "migration $m ($src -> $dst): ${R_STATUS[$m]}, downtime ${R_DOWN[$m]} ms, total ${R_TOTAL[$m]} ms${why:+; problems: ${R_WHY[$m]}}"
    [[ ${R_STATUS[$m]} == completed ]] || break
    sleep 2
done

# ---------------------------------------------------------------- the end of the load

touch "$STOP_FILE"
tw_log "migrations over; ending the stream, waiting for the guest's hash and iperf3"
deadline=$((SECONDS + 45))
until consoles_have TW-MIG-DONE; do
    ((SECONDS < deadline)) || break
    [[ -n $(qemu_pid "$HERE") ]] || break
    sleep 0.5
done
for ((i = 0; i < 50; i++)); do [[ -s $STREAM_OUT ]] && break; sleep 0.2; done
kill -INT "$PING_PID" 2>/dev/null || true
for ((i = 0; i < 30; i++)); do tw_alive "$PING_PID" || break; sleep 0.1; done
tw_stop "$PING_PID" 2
echo "end $(tw_now)" >>"$WINDOWS"
awk 'NR > 1 { print prev_name, prev_start, $2 } { prev_name = $1; prev_start = $2 }' "$WINDOWS" >"$TMP/windows.3"
twm gaps "$PING_OUT" "$TMP/windows.3" >"$TMP/gaps.txt" 2>/dev/null || true
while read -r name gap; do R_GAP[$name]=$gap; done <"$TMP/gaps.txt"

# ---------------------------------------------------------------- rows

for ((m = 1; m <= DONE; m++)); do
    gap=${R_GAP[$m]:--}
    why=${R_WHY[$m]}
    if [[ $gap == - ]] || ! awk -v g="$gap" -v t="$MAX_GAP_MS" 'BEGIN { exit !(g < t) }'; then
        why+="${why:+;}longest ping gap ${gap} ms, target < $MAX_GAP_MS ms"
    fi
    ok=1
    [[ ${R_STATUS[$m]} == completed && -z $why ]] || ok=0
    check "migration-$m" "$ok" "live migration $m, host ${R_FROM[$m]} -> ${R_TO[$m]} (virsh migrate --live): the domain runs there, tapwire's queues running from the migrated ring positions, ping gap < $MAX_GAP_MS ms, announce and FDBs follow" \
        "status=${R_STATUS[$m]} downtime_ms=${R_DOWN[$m]} total_ms=${R_TOTAL[$m]} ping_gap_ms=$gap ${R_DETAIL[$m]}${why:+ why=\"$why\"}" \
        "libvirt downtime ${R_DOWN[$m]} ms, ping gap $gap ms"
done
if ((DONE < MIGRATIONS)); then
    check migrations-done 0 "$MIGRATIONS live migrations" "done=$DONE completed=$COMPLETED of $MIGRATIONS"
fi

guest_hash=$(all_consoles | awk '/^TW-MIG-HASH / { print $2, $3; exit }' || true)
sent_hash=$(jq -r '.sha256 // "-"' "$STREAM_OUT" 2>/dev/null || echo -)
sent_bytes=$(jq -r '.bytes // 0' "$STREAM_OUT" 2>/dev/null || echo 0)
sent_error=$(jq -r '.error // empty' "$STREAM_OUT" 2>/dev/null || echo "no result from the sender")
ok=0
[[ -n $guest_hash && ${guest_hash%% *} == "$sent_hash" && ${guest_hash##* } == "$sent_bytes" && -z $sent_error && $sent_bytes -gt 0 ]] && ok=1
check tcp-stream "$ok" "one TCP connection (client -> guest, hashed in the guest) across all $COMPLETED migrations" \
    "bytes=$sent_bytes sha256=${sent_hash:0:16}... guest=\"${guest_hash:0:16}${guest_hash:+... ${guest_hash##* }}\" sender_error=\"${sent_error:-none}\"" \
    "$((sent_bytes / 1048576)) MiB, sha256 $( ((ok)) && echo matches || echo differs)"

iperf_rcs=$(all_consoles | awk '/^TW-MIG-IPERF-RC / { printf "%s%s", (n++ ? "," : ""), $3 }' || true)
iperf_sum=$(all_consoles | grep -a '^tw-mig-iperf .*sender' | sed 's/  */ /g' | tr '\n' ';' || true)
ok=0
[[ $iperf_rcs =~ ^(0,)*0$ ]] && ok=1
check guest-iperf3 "$ok" "guest -> client iperf3 ($IPERF_ARGS) across the migrations" "sessions_rc=${iperf_rcs:-none} summary=\"$iperf_sum\""

for h in a b; do
    ok=1 detail=
    if [[ -z ${TW_PID[$h]:-} ]]; then
        ok=0 detail="not started"
    elif ! tw_alive "${TW_PID[$h]}"; then
        ok=0 detail="gone"
    else
        detail="alive state=$(vm_json "$h" | jq -r .state 2>/dev/null)"
        if grep -aqE ' (error|critical) ' "${TW_LOG[$h]}"; then
            ok=0 detail+=" log_errors=\"$(grep -aE ' (error|critical) ' "${TW_LOG[$h]}" | head -n 2 | tr '\n' ' ' | cut -c1-300)\""
        fi
    fi
    check "tapwire-$h" "$ok" "host $h's tapwire alive, no errors" "$detail"
done
final_state=$(virsh_ "$HERE" domstate "$DOM" 2>&1 || true)
ok=0
[[ $final_state == running ]] && ok=1
check domain-final "$ok" "the domain runs on its last host at the end" "host=$HERE state=\"$final_state\""

# ---------------------------------------------------------------- figures

echo
echo "migration | hosts  | status    | libvirt total downtime (ms) | time elapsed (ms) | longest ping gap (ms)"
for ((m = 1; m <= DONE; m++)); do
    printf '%9d | %s -> %s | %-9s | %27s | %17s | %s\n' "$m" "${R_FROM[$m]}" "${R_TO[$m]}" "${R_STATUS[$m]}" "${R_DOWN[$m]}" "${R_TOTAL[$m]}" "${R_GAP[$m]:--}"
done
echo "ping: $(grep '^#' "$PING_OUT" 2>/dev/null | sed 's/^# //' || echo none); boot ${BOOT_S}s; total $(tw_elapsed "$T0")s"
echo "$PASSED passed, $FAILED failed"
((FAILED == 0))
