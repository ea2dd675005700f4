#!/usr/bin/env bash
# tapwire under libvirt 11.3: real guests booted by libvirt (TCG, memfd-shared memory, direct
# kernel boot, <interface type='vhostuser'>), each checked with ping both ways and iperf3 both
# ways against the host side of tapwire's TAP in a private network namespace:
#   1. QEMU 7.2, mode='client' (tapwire listens), <reconnect>; tapwire killed with SIGKILL and
#      restarted under the running guest;
#   2. QEMU 7.2, mode='server' (QEMU listens, tapwire --client --user USER:libvirt-qemu), the
#      same restart; plus the negative check: tapwire --client as root without --user must log
#      once, within seconds, EACCES on the socket with advice naming --user;
#   3. QEMU 10, mode='client' with <reconnect>;
#   4. QEMU 10, mode='server'.
# It starts virtlogd and libvirtd itself (-d, no systemd) and stops them at exit: one libvirtd for
# the 7.2 rows, one for the 10 rows in a private mount namespace where the system's QEMU module
# folder is QEMU 10's (libvirt probes an emulator with its modules loaded from there), so the
# host's mounts are never touched. At exit every domain, netns, TAP and file it made is gone,
# libvirt's state folders are as they were, and a `tapwire` user it had to create is removed.
#
# Usage: Tools/libvirt-check.sh [options]
#   --tapwire BIN          tapwire binary (default $TAPWIRE_BIN or .build/release/tapwire)
#   --tapwire-args "ARGS"  extra tapwire arguments for the rows (word-split), e.g. "--log-level trace"
#   --time SECONDS         iperf3 duration per direction (default 3)
#   --boot-timeout SECONDS wait for the guest's READY marker (default 120)
#   --mem MIB              guest memory in MiB (default 384)
#   --rows "1 2 3 4"       run only these rows (the negative check rides with the first server row)
#   --user NAME            the user tapwire switches to (default: tapwire, created if missing)
#   --no-qemu10-reconnect  skip the kill and restart of tapwire under the QEMU 10 guests
#   --keep DIR             copy all logs (libvirtd, QEMU, tapwire, consoles, domain XML) to DIR
# Output (stdout): one ROW line per row, a Markdown table, "N passed, N failed".
# Exit status: 0 when every row passed.
set -euo pipefail

. "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

usage() { sed -n '2,/^# Exit status/s/^# \{0,1\}//p' "$0"; }

TAPWIRE=${TAPWIRE_BIN:-$TW_REPO_ROOT/.build/release/tapwire}
TAPWIRE_ARGS=
IPERF_TIME=3
BOOT_TIMEOUT=120
MEM_MIB=384
ROWS="1 2 3 4"
TW_USER=tapwire
QEMU10_RECONNECT=1
KEEP_DIR=

need_arg() { (($# >= 2)) || tw_die "$1 needs a value"; }
while (($#)); do
    case $1 in
        --tapwire) need_arg "$@"; TAPWIRE=$2; shift ;;
        --tapwire-args) need_arg "$@"; TAPWIRE_ARGS=$2; shift ;;
        --time) need_arg "$@"; IPERF_TIME=$2; shift ;;
        --boot-timeout) need_arg "$@"; BOOT_TIMEOUT=$2; shift ;;
        --mem) need_arg "$@"; MEM_MIB=$2; shift ;;
        --rows) need_arg "$@"; ROWS=$2; shift ;;
        --user) need_arg "$@"; TW_USER=$2; shift ;;
        --no-qemu10-reconnect) QEMU10_RECONNECT=0 ;;
        --keep) need_arg "$@"; KEEP_DIR=$2; shift ;;
        -h | --help) usage; exit 0 ;;
        *) usage >&2; tw_die "unknown argument: $1" ;;
    esac
    shift
done
[[ $IPERF_TIME =~ ^[0-9]+$ && $IPERF_TIME -gt 0 ]] || tw_die "--time must be a positive integer"
[[ $BOOT_TIMEOUT =~ ^[0-9]+$ ]] || tw_die "--boot-timeout must be a number of seconds"
[[ $MEM_MIB =~ ^[0-9]+$ && $MEM_MIB -ge 128 ]] || tw_die "--mem takes MiB, at least 128"
for r in $ROWS; do [[ $r =~ ^[1-4]$ ]] || tw_die "--rows takes numbers 1 to 4, not '$r'"; done

tw_require_root
[[ -x $TAPWIRE ]] || tw_die "tapwire binary not found at $TAPWIRE (make release)"
TAPWIRE=$(cd "$(dirname "$TAPWIRE")" && pwd)/$(basename "$TAPWIRE")

# ---------------------------------------------------------------- what this needs

tw_ensure_packages iperf3:iperf3 ip:iproute2 jq:jq curl:curl timeout:coreutils unshare:util-linux \
    nsenter:util-linux dpkg:busybox-static qemu-system-x86_64:qemu-system-x86
# libvirt 11.3 and QEMU 10.0 come from bookworm-backports (helpers in lib/common.sh).
if declare -F tw_ensure_libvirt >/dev/null; then tw_ensure_libvirt; fi
want_qemu10=0
for r in $ROWS; do ((r < 3)) || want_qemu10=1; done
if ((want_qemu10)) && declare -F tw_ensure_qemu10 >/dev/null; then tw_ensure_qemu10; fi
for c in libvirtd virtlogd virsh; do
    command -v "$c" >/dev/null || tw_die "$c is missing: install libvirt 11.3 (Tools/install-deps.sh)"
done
LV_VERSION=$(libvirtd --version | awk '{ print $NF }')
LV_SHORT=$(echo "$LV_VERSION" | cut -d. -f1,2)
[[ $LV_VERSION == 11.* ]] || tw_warn "libvirt is $LV_VERSION here; this check is written for 11.3"
getent group libvirt-qemu >/dev/null || tw_die "no libvirt-qemu group: is libvirt-daemon-driver-qemu installed?"

declare -A QBIN QVER QSHORT
tw_qemu_select 7.2
QBIN[7]=$QEMU_BIN QVER[7]=$QEMU_VERSION QSHORT[7]=$(echo "$QEMU_VERSION" | cut -d. -f1,2)
if ((want_qemu10)); then
    tw_qemu_select 10
    QBIN[10]=$QEMU_BIN QVER[10]=$QEMU_VERSION QSHORT[10]=$QEMU_MAJOR
fi
SYS_MODDIR=/usr/lib/x86_64-linux-gnu/qemu
Q10_MODDIR=$TW_QEMU10_PREFIX/usr/lib/x86_64-linux-gnu/qemu
Q10_DATADIR=$TW_QEMU10_PREFIX/usr/share/qemu
if ((want_qemu10)); then
    [[ -d $Q10_MODDIR && -d $SYS_MODDIR ]] || tw_die "need $Q10_MODDIR and $SYS_MODDIR for the QEMU 10 rows"
fi
LV_URI=qemu:///system
virsh_() { virsh -q -c "$LV_URI" "$@"; }

# libvirtd and virtlogd daemonize (-d): they are not our children, so tw_pid_alive (not a
# zombie) and tw_stop_daemon, not tw_alive and tw_stop.
# pids (not zombies) whose command name is exactly $1
pids_named() {
    local p
    for p in /proc/[0-9]*; do
        [[ $(cat "$p/comm" 2>/dev/null) == "$1" ]] && tw_pid_alive "${p#/proc/}" && echo "${p#/proc/}"
    done
    return 0
}
# This check owns the libvirt daemons it starts and stops: it must not meet someone else's.
for d in libvirtd virtqemud virtlogd; do
    others=$(pids_named "$d" | tr '\n' ' ')
    [[ -z $others ]] || tw_die "a $d is already running (pid $others): this check starts and stops its own libvirt daemons; stop it first"
done

# The --client error advice (a binary built before it would fail the negative check).
HAS_EACCES_ADVICE=0
grep -aq 'may not write to the socket' "$TAPWIRE" && HAS_EACCES_ADVICE=1

"$TW_REPO_ROOT/Tools/guest-image.sh" >&2
GUEST_DIR=$(tw_guest_dir)

T0=$(tw_now)
tw_install_traps

# ---------------------------------------------------------------- scratch, user, state

TMP=$(mktemp -d /tmp/tw-libvirt.XXXXXX)
tw_at_exit "rm -rf '$TMP'"
# libvirt's QEMU (libvirt-qemu) reads the kernel and initramfs from here.
chmod 0755 "$TMP"
# Copies, so that libvirt's DAC relabelling never touches the shared guest image.
KERNEL=$TMP/vmlinuz INITRD=$TMP/initramfs.cpio.gz
cp "$GUEST_DIR/vmlinuz" "$KERNEL"
cp "$GUEST_DIR/initramfs.cpio.gz" "$INITRD"
chmod 0644 "$KERNEL" "$INITRD"
# The vhost-user sockets: a setgid folder of group libvirt-qemu, so that libvirt's QEMU may create
# its socket here (mode='server'), every socket made here belongs to that group, and tapwire
# started with umask 0002 makes one QEMU may connect to (mode='client').
SOCKDIR=$TMP/sock
install -d -m 2770 -o root -g libvirt-qemu "$SOCKDIR"

keep_logs() {
    [[ -n $KEEP_DIR ]] || return 0
    mkdir -p "$KEEP_DIR" && cp -a "$TMP"/*.log "$TMP"/*.xml "$KEEP_DIR"/ 2>/dev/null
    tw_log "logs kept in $KEEP_DIR"
}
tw_at_exit keep_logs

CREATED_USER=0
if ! id -u "$TW_USER" >/dev/null 2>&1; then
    [[ $TW_USER == tapwire ]] || tw_die "no user $TW_USER"
    useradd --system --no-create-home --shell /usr/sbin/nologin tapwire
    CREATED_USER=1
    tw_at_exit "userdel tapwire 2>/dev/null || true"
fi

# libvirt's own state folders: whatever libvirtd and virtlogd add to them during this run is
# removed again at exit (capability cache, QEMU logs, run-time sockets and pid files), so the
# machine's libvirt is left as it was found. Nobody else's libvirt runs (checked above).
LV_STATE_DIRS=(/run/libvirt /var/lib/libvirt/qemu /var/cache/libvirt/qemu /var/log/libvirt)
lv_state_list() { { find "${LV_STATE_DIRS[@]}" -xdev 2>/dev/null || true; } | LC_ALL=C sort; }
lv_state_list >"$TMP/state.before"
restore_libvirt_state() {
    local p
    lv_state_list >"$TMP/state.after"
    # Children sort after their parents: remove in reverse order.
    LC_ALL=C comm -13 "$TMP/state.before" "$TMP/state.after" | LC_ALL=C sort -r | while IFS= read -r p; do
        if [[ -d $p && ! -L $p ]]; then rmdir "$p" 2>/dev/null || rm -rf "$p"; else rm -f "$p"; fi
    done
}
tw_at_exit restore_libvirt_state

# ---------------------------------------------------------------- daemons

cat >"$TMP/virtlogd.conf" <<EOF
log_outputs="3:file:$TMP/virtlogd.log"
EOF
cat >"$TMP/libvirtd.conf" <<EOF
log_outputs="3:file:$TMP/libvirtd.log"
EOF

VIRTLOGD_PID=
stop_virtlogd() {
    [[ -n $VIRTLOGD_PID ]] || return 0
    tw_stop_daemon "$VIRTLOGD_PID" 10
    VIRTLOGD_PID=
}
virtlogd -d -f "$TMP/virtlogd.conf" -p "$TMP/virtlogd.pid" >"$TMP/virtlogd.start.log" 2>&1 ||
    { tw_tail_log "$TMP/virtlogd.start.log" 10 "virtlogd start"; tw_die "virtlogd -d failed"; }
tw_wait_until 10 "" "virtlogd's pid file" test -s "$TMP/virtlogd.pid" || tw_die "virtlogd did not start"
VIRTLOGD_PID=$(cat "$TMP/virtlogd.pid")
tw_at_exit stop_virtlogd

LIBVIRTD_PID=
LIBVIRTD_FOR=
DOM_PREFIX=tw-lv$$-
destroy_our_domains() {
    local d pid
    [[ -n $LIBVIRTD_PID ]] || return 0
    for d in $(virsh_ list --name 2>/dev/null | grep "^$DOM_PREFIX" || true); do
        pid=$(cat "/run/libvirt/qemu/$d.pid" 2>/dev/null || true)
        virsh_ destroy "$d" >/dev/null 2>&1 || { [[ -z $pid ]] || kill -KILL "$pid" 2>/dev/null || true; }
    done
}
stop_libvirtd() {
    [[ -n $LIBVIRTD_PID ]] || return 0
    destroy_our_domains
    tw_stop_daemon "$LIBVIRTD_PID" 20
    LIBVIRTD_PID= LIBVIRTD_FOR=
}
tw_at_exit stop_libvirtd

libvirt_ready() {
    [[ -s $TMP/libvirtd.pid ]] && tw_pid_alive "$(cat "$TMP/libvirtd.pid")" && virsh_ uri >/dev/null 2>&1
}

# start_libvirtd 7|10: one libvirtd for the rows of that QEMU. For 10 it runs in a private mount
# namespace in which the system's module folder is QEMU 10's (bind mount), so libvirt's probe of
# the emulator and the guests' QEMU load matching modules; the host's mounts stay as they were.
start_libvirtd() {
    local qv=$1 try
    [[ $LIBVIRTD_FOR == "$qv" ]] && return 0
    stop_libvirtd
    for try in 1 2 3; do
        rm -f "$TMP/libvirtd.pid"
        echo "== start $try for QEMU $qv" >>"$TMP/libvirtd.start.log"
        if [[ $qv == 10 ]]; then
            # shellcheck disable=SC2016 # $1.. belong to the inner sh
            unshare --mount --propagation private sh -c 'mount --bind "$1" "$2" && exec libvirtd -d -f "$3" -p "$4"' \
                sh "$Q10_MODDIR" "$SYS_MODDIR" "$TMP/libvirtd.conf" "$TMP/libvirtd.pid" >>"$TMP/libvirtd.start.log" 2>&1 || true
        else
            libvirtd -d -f "$TMP/libvirtd.conf" -p "$TMP/libvirtd.pid" >>"$TMP/libvirtd.start.log" 2>&1 || true
        fi
        if tw_wait_until 30 "" "libvirtd to answer" libvirt_ready 2>/dev/null; then
            LIBVIRTD_PID=$(cat "$TMP/libvirtd.pid") LIBVIRTD_FOR=$qv
            break
        fi
        # The first start after installing may fail (network sockets); a second one works.
        [[ ! -s $TMP/libvirtd.pid ]] || tw_stop_daemon "$(cat "$TMP/libvirtd.pid")" 10
        tw_warn "libvirtd start $try for QEMU $qv did not answer; retrying"
        sleep 1
    done
    if [[ -z $LIBVIRTD_PID ]]; then
        tw_tail_log "$TMP/libvirtd.start.log" 20 "libvirtd -d output"
        tw_tail_log "$TMP/libvirtd.log" 20 "libvirtd log"
        return 1
    fi
    if [[ $qv == 10 ]]; then
        local want got host
        want=$(stat -c %d:%i "$Q10_MODDIR") host=$(stat -c %d:%i "$SYS_MODDIR")
        got=$(nsenter -t "$LIBVIRTD_PID" -m stat -c %d:%i "$SYS_MODDIR" 2>/dev/null || true)
        if [[ $got != "$want" || $host == "$want" ]]; then
            tw_warn "libvirtd's module folder is not QEMU 10's (libvirtd sees $got, want $want, host $host)"
            return 1
        fi
    fi
    # libvirt must accept the emulator: its capability probe runs QEMU with its modules.
    if ! virsh_ domcapabilities --emulatorbin "${QBIN[$qv]}" --virttype qemu --machine q35 >"$TMP/domcaps-$qv.xml" 2>"$TMP/domcaps-$qv.err"; then
        tw_warn "libvirt's capability probe of ${QBIN[$qv]} failed: $(head -c 300 "$TMP/domcaps-$qv.err")"
        tw_tail_log "$TMP/libvirtd.log" 20 "libvirtd log"
        return 1
    fi
    tw_log "libvirtd $LV_VERSION (pid $LIBVIRTD_PID) up for QEMU ${QVER[$qv]}"
}

# ---------------------------------------------------------------- one row

HOST_MAC=02:77:00:00:00:01

# domain_xml NAME QEMU(7|10) MODE SOCKET CONSOLE
domain_xml() {
    local name=$1 qv=$2 mode=$3 sock=$4 console=$5 source extra=
    if [[ $mode == client ]]; then
        # QEMU connects; after a lost connection it tries again every second.
        source="<source type='unix' path='$sock' mode='client'>
        <reconnect enabled='yes' timeout='1'/>
      </source>"
    else
        # QEMU listens (libvirt refuses <reconnect> here: the backend reconnects).
        source="<source type='unix' path='$sock' mode='server'/>"
    fi
    if [[ $qv == 7 ]]; then
        # QEMU 7.2 under TCG crashes in msix_set_vector_notifiers with vhost-user: no MSI-X.
        extra="<qemu:override>
    <qemu:device alias='ua-net0'>
      <qemu:frontend>
        <qemu:property name='vectors' type='unsigned' value='0'/>
      </qemu:frontend>
    </qemu:device>
  </qemu:override>"
    else
        # QEMU 10 unpacked in a prefix: its data folder first, the system's firmware after it.
        extra="<qemu:commandline>
    <qemu:arg value='-L'/>
    <qemu:arg value='$Q10_DATADIR'/>
    <qemu:arg value='-L'/>
    <qemu:arg value='/usr/share/qemu'/>
  </qemu:commandline>"
    fi
    cat <<EOF
<domain type='qemu' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>
  <name>$name</name>
  <memory unit='MiB'>$MEM_MIB</memory>
  <vcpu>1</vcpu>
  <memoryBacking>
    <source type='memfd'/>
    <access mode='shared'/>
  </memoryBacking>
  <os>
    <type arch='x86_64' machine='q35'>hvm</type>
    <kernel>$KERNEL</kernel>
    <initrd>$INITRD</initrd>
    <cmdline>console=ttyS0 panic=-1 quiet tw.ip=$TW_GUEST_IP/$TW_PREFIX_LEN tw.host=$TW_HOST_IP</cmdline>
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
    <emulator>${QBIN[$qv]}</emulator>
    <serial type='file'>
      <source path='$console'/>
      <target port='0'/>
    </serial>
    <interface type='vhostuser'>
      <mac address='$TW_GUEST_MAC'/>
      $source
      <model type='virtio'/>
      <alias name='ua-net0'/>
    </interface>
    <controller type='usb' model='none'/>
    <memballoon model='none'/>
  </devices>
  $extra
</domain>
EOF
}

ROW_FAILS=()
row_fail() { ROW_FAILS+=("$1"); tw_warn "row $ROW_ID: $1"; }

# The TAP tapwire creates, given the host address and a fixed MAC (so the guest's neighbour
# entry stays right when a restarted tapwire creates the TAP again).
configure_tap() {
    tw_netns_has_link "$ROW_NS" tw0 || return 1
    ip -n "$ROW_NS" link set tw0 address "$HOST_MAC" 2>/dev/null || true
    tw_netns_addr "$ROW_NS" tw0
}

# start_tapwire TAG: tapwire inside the row's netns (its TAP is born there), as an operator runs
# it: umask 0002 in the setgid socket folder, switching to $TW_USER:libvirt-qemu after start-up.
TW_PID=
start_tapwire() {
    local log=$TMP/$ROW_ID-tapwire-$1.log args=(--socket-path "$ROW_SOCK" --tap tw0 --name "$ROW_ID" --user "$TW_USER:libvirt-qemu"
        --api-socket "$TMP/$ROW_ID-api-$1.sock")
    local extra=()
    read -r -a extra <<<"$TAPWIRE_ARGS"
    args+=("${extra[@]}")
    [[ $ROW_MODE == server ]] && args=(--client "${args[@]}")
    TW_LOGS+=("$log")
    # shellcheck disable=SC2016 # $@ belongs to the inner sh
    tw_spawn "$log" sh -c 'umask 0002; exec "$@"' sh ip netns exec "$ROW_NS" "$TAPWIRE" "${args[@]}"
    TW_PID=$TW_SPAWNED_PID
    if [[ $ROW_MODE == client ]]; then
        tw_wait_until 20 "$TW_PID" "tapwire to listen" tw_log_has "$log" "listening on" || return 1
    fi
    # Its own log line, not the link: right after a SIGKILL the old tapwire's TAP lingers a moment
    # (the kernel closes its io_uring, which holds the TAP, a little later), and an address given
    # to that one would vanish with it.
    tw_wait_until 20 "$TW_PID" "tapwire's TAP" tw_log_has "$log" "TAP tw0 ready" || return 1
    tw_wait_until 10 "$TW_PID" "TAP tw0 in $ROW_NS" configure_tap || return 1
}

ping_h2g() { # ping_h2g COUNT OUT
    # shellcheck disable=SC2046 # tw_ping_cmd may be two words (busybox ping)
    ip netns exec "$ROW_NS" $(tw_ping_cmd) -c "$1" -i 0.5 -W 2 "$TW_GUEST_IP" >"$2" 2>&1 || true
}

iperf_gbps() { # iperf_gbps NAME SECONDS [-R] -> "GBPS" (0 on failure, reason on stderr)
    local name=$1 secs=$2 out=$TMP/$ROW_ID-iperf3-$1.json parsed
    shift 2
    tw_iperf3_run "$ROW_NS" "$TW_GUEST_IP" "$secs" "$out" "$@" || true
    if parsed=$(tw_iperf3_parse "$out" 2>"$out.why"); then
        echo "${parsed%% *}"
    else
        tw_warn "iperf3 $name: $(cat "$out.why") $(head -c 300 "$out.stderr" 2>/dev/null)"
        echo 0
    fi
}

# Seconds until the guest answers a ping from the host again (up to 30 s), or "never".
seconds_until_ping() {
    local start i
    start=$(tw_now)
    for ((i = 0; i < 60; i++)); do
        # shellcheck disable=SC2046
        if ip netns exec "$ROW_NS" $(tw_ping_cmd) -c 1 -W 1 "$TW_GUEST_IP" >/dev/null 2>&1; then
            tw_elapsed "$start"
            return 0
        fi
        sleep 0.3
    done
    echo never
    return 1
}

# The guest's rings in guest memory (indexes, and the event-idx fields), and tapwire's own view
# through its API: what a lost interrupt or a stalled queue looks like. The ring addresses come
# from x-query-virtio-vhost-queue-status, which only reads QEMU's copy; x-query-virtio-queue-status
# would send GET_VRING_BASE, which stops the backend's rings.
ring_diagnostics() {
    local path=/machine/peripheral/ua-net0/virtio-backend q st size avail used hmp api
    for q in 0 1; do
        st=$(virsh_ qemu-monitor-command "$ROW_DOM" "{\"execute\":\"x-query-virtio-vhost-queue-status\",\"arguments\":{\"path\":\"$path\",\"queue\":$q}}" 2>/dev/null) || continue
        size=$(jq -r '.return.num' <<<"$st") avail=$(jq -r '.return["avail-phys"]' <<<"$st") used=$(jq -r '.return["used-phys"]' <<<"$st")
        [[ $size =~ ^[0-9]+$ && $avail =~ ^[0-9]+$ ]] || continue
        hmp() { virsh_ qemu-monitor-command "$ROW_DOM" --hmp "xp /$1hx $2" 2>/dev/null | awk '{ $1 = ""; print }' | tr -s ' ' | sed 's/^ //'; }
        tw_log "ring $q: avail flags/idx $(hmp 2 "$avail"), used_event $(hmp 1 $((avail + 4 + 2 * size))), used flags/idx $(hmp 2 "$used"), avail_event $(hmp 1 $((used + 4 + 8 * size)))"
    done
    for api in "$TMP/$ROW_ID"-api-*.sock; do
        [[ -S $api ]] || continue
        tw_log "tapwire $(basename "$api"): $(curl -s --max-time 3 --unix-socket "$api" http://localhost/vm | jq -c '{state, queues}' 2>/dev/null)"
        curl -s --max-time 3 --unix-socket "$api" http://localhost/metrics 2>/dev/null |
            grep -E '^tapwire_(frames|kicks|interrupts)_total' | sed 's/^/  | /' >&2 || true
    done
}

row_diagnostics() {
    tw_log "row $ROW_ID failed; diagnostics follow"
    ring_diagnostics
    tw_tail_log "$TMP/libvirtd.log" 25 "libvirtd log ($TMP/libvirtd.log)"
    if [[ -f /var/log/libvirt/qemu/$ROW_DOM.log ]]; then
        tw_tail_log "/var/log/libvirt/qemu/$ROW_DOM.log" 25 "the domain's QEMU log (/var/log/libvirt/qemu/$ROW_DOM.log)"
    fi
    local log
    for log in "${TW_LOGS[@]}"; do tw_tail_log "$log" 25 "tapwire log $(basename "$log")"; done
    if [[ -f $ROW_CONSOLE ]]; then
        tr -d '\r' <"$ROW_CONSOLE" | sed '/^TW-GUEST-ETHTOOL-BEGIN$/,/^TW-GUEST-ETHTOOL-END$/c\
(ethtool -k output left out)' >"$TMP/$ROW_ID-console.short"
        tw_tail_log "$TMP/$ROW_ID-console.short" 40 "guest console"
    fi
}

row_teardown() {
    local i
    if virsh_ domstate "$ROW_DOM" >/dev/null 2>&1; then
        virsh_ destroy "$ROW_DOM" >>"$TMP/$ROW_ID-virsh.log" 2>&1 || true
    fi
    for ((i = 0; i < 100; i++)); do tw_pid_alive "$ROW_QEMU_PID" || break; sleep 0.2; done
    # Keep the domain's QEMU log with the rest (libvirt's copy goes at exit).
    cp "/var/log/libvirt/qemu/$ROW_DOM.log" "$TMP/$ROW_ID-qemu.log" 2>/dev/null || true
    rm -f "/var/log/libvirt/qemu/$ROW_DOM.log"
    tw_netns_delete "$ROW_NS"
}

# The negative check: tapwire --client as root, without --user, against the socket QEMU created
# (srwxrwxr-x libvirt-qemu:libvirt-qemu). With its capabilities dropped root may not write to
# it: one error line, within seconds, naming the path, EACCES and --user; no repeats while it
# keeps retrying with back-off.
negative_check() {
    local log=$TMP/$ROW_ID-tapwire-negative.log pid start first= lines t
    NEG_FAILS=()
    TW_LOGS+=("$log")
    tw_log "negative check: tapwire --client as root without --user against $ROW_SOCK"
    start=$(tw_now)
    tw_spawn "$log" ip netns exec "$ROW_NS" "$TAPWIRE" --client --socket-path "$ROW_SOCK" --tap twneg0 --name negative
    pid=$TW_SPAWNED_PID
    neg_error_logged() { grep -a ' error ' "$log" 2>/dev/null | grep -aF -- "$ROW_SOCK" | grep -aE 'Permission denied|EACCES' | grep -aqF -- '--user'; }
    if tw_wait_until 10 "$pid" "the EACCES error line" neg_error_logged; then
        first=$(tw_elapsed "$start")
    else
        NEG_FAILS+=("no error line naming $ROW_SOCK, EACCES/Permission denied and --user within 10 s")
    fi
    # Its retries go on (back-off up to 5 s); the error must not repeat.
    while t=$(tw_elapsed "$start") && awk -v t="$t" 'BEGIN { exit !(t < 9) }'; do sleep 0.5; done
    lines=$(grep -a ' error ' "$log" 2>/dev/null | grep -acF -- "$ROW_SOCK" || true)
    [[ -z $first || $lines -eq 1 ]] || NEG_FAILS+=("the error was logged $lines times in 9 s, not once")
    tw_alive "$pid" || NEG_FAILS+=("tapwire exited instead of retrying")
    tw_stop "$pid" 5
    ((HAS_EACCES_ADVICE)) || NEG_FAILS+=("$TAPWIRE predates the EACCES advice (no 'may not write to the socket' in it): rebuild it")
    NEG_FIRST=${first:--} NEG_LINES=${lines:-0}
    if [[ -s $log ]]; then
        NEG_LINE=$(grep -a -m1 ' error ' "$log" | sed 's/^[^ ]* //' | cut -c1-400 || true)
    fi
}

RESULTS=()   # "frontend|version|mode|checks|result" for the table
PASSED=0 FAILED=0
NEG_DONE=0

emit_row() { # emit_row QV MODE CHECKS RESULT EXTRA
    local qv=$1 mode=$2 checks=$3 result=$4 extra=$5
    echo "ROW frontend=libvirt-$LV_SHORT qemu=${QSHORT[$qv]} mode=$mode checks=\"$checks\" result=$result $extra"
    local mode_text
    if [[ $mode == client ]]; then mode_text="mode='client' (QEMU connects, tapwire listens)"
    else mode_text="mode='server' (QEMU listens, tapwire --client)"; fi
    RESULTS+=("libvirt $LV_VERSION|QEMU ${QVER[$qv]}|$mode_text|$checks|$result")
    if [[ $result == PASS ]]; then PASSED=$((PASSED + 1)); else FAILED=$((FAILED + 1)); fi
}

# run_row ID QEMU(7|10) MODE(client|server) RECONNECT(0|1)
run_row() {
    ROW_ID=r$1 ROW_QV=$2 ROW_MODE=$3
    local reconnect=$4 t_row t_boot rc=0 xml
    ROW_FAILS=() TW_LOGS=()
    ROW_NS=tw-lv$$-$1 ROW_DOM=$DOM_PREFIX$1-q${QSHORT[$2]}-$3
    ROW_SOCK=$SOCKDIR/$ROW_ID.sock ROW_CONSOLE=$TMP/$ROW_ID-console.log ROW_QEMU_PID=
    local checks="ping both ways, iperf3 both ways"
    ((reconnect)) && checks+=", reconnect"
    H2G=0 G2H=0 PING_H=- PING_G=- RECONNECT_S=- BOOT_S=-
    t_row=$(tw_now)
    tw_log "row $1: libvirt $LV_VERSION, QEMU ${QVER[$2]}, mode='$3'"

    if ! start_libvirtd "$ROW_QV"; then
        row_fail "libvirtd for QEMU ${QVER[$2]} did not come up or refused the emulator"
    else
        tw_netns_create "$ROW_NS"
        tw_netns_no_ipv6 "$ROW_NS"
        # mode='server': tapwire --client waits (with back-off) for QEMU's socket; libvirt's QEMU
        # waits for the backend before running the guest, so tapwire goes first in both modes.
        start_tapwire 1 || row_fail "tapwire did not start (or its TAP did not appear)"
    fi

    if ((${#ROW_FAILS[@]} == 0)); then
        xml=$TMP/$ROW_ID-domain.xml
        domain_xml "$ROW_DOM" "$ROW_QV" "$ROW_MODE" "$ROW_SOCK" "$ROW_CONSOLE" >"$xml"
        t_boot=$(tw_now)
        if ! tw_interruptible timeout --kill-after=5 120 virsh -q -c "$LV_URI" create "$xml" >"$TMP/$ROW_ID-virsh.log" 2>&1; then
            row_fail "virsh create failed or hung: $(tr '\n' ' ' <"$TMP/$ROW_ID-virsh.log" | cut -c1-400)"
        fi
    fi
    if ((${#ROW_FAILS[@]} == 0)); then
        tw_wait_until 20 "" "the domain's QEMU pid" test -s "/run/libvirt/qemu/$ROW_DOM.pid" &&
            ROW_QEMU_PID=$(cat "/run/libvirt/qemu/$ROW_DOM.pid")
        [[ -n $ROW_QEMU_PID ]] || row_fail "no QEMU pid for $ROW_DOM"
    fi
    if ((${#ROW_FAILS[@]} == 0)); then
        rc=0
        tw_wait_marker "$ROW_CONSOLE" TW-GUEST-READY "$BOOT_TIMEOUT" "$ROW_QEMU_PID" TW-GUEST-FAIL || rc=$?
        case $rc in
            0) BOOT_S=$(tw_elapsed "$t_boot"); tw_log "row $1: guest ready after ${BOOT_S}s" ;;
            1) row_fail "guest not ready after ${BOOT_TIMEOUT}s" ;;
            2) row_fail "QEMU exited before the guest was ready" ;;
            3) row_fail "guest set-up failed: $(tr -d '\r' <"$ROW_CONSOLE" | grep -a -m1 TW-GUEST-FAIL)" ;;
        esac
    fi

    if ((${#ROW_FAILS[@]} == 0)); then
        local tx rx loss min avg max
        tw_extract_between "$ROW_CONSOLE" TW-GUEST-PING-BEGIN TW-GUEST-PING-END >"$TMP/$ROW_ID-ping-g2h.txt"
        read -r tx rx loss min avg max < <(tw_ping_parse <"$TMP/$ROW_ID-ping-g2h.txt")
        if [[ $rx =~ ^[0-9]+$ && $rx -gt 0 ]]; then PING_G="$min/$avg"; else row_fail "guest->host ping: no replies"; fi
        ping_h2g 5 "$TMP/$ROW_ID-ping-h2g.txt"
        read -r tx rx loss min avg max < <(tw_ping_parse <"$TMP/$ROW_ID-ping-h2g.txt")
        if [[ $rx =~ ^[0-9]+$ && $rx -gt 0 ]]; then PING_H="$min/$avg"; else row_fail "host->guest ping: no replies"; fi
        tw_log "row $1: iperf3 host->guest and guest->host (${IPERF_TIME}s each)"
        H2G=$(iperf_gbps h2g "$IPERF_TIME")
        tw_is_positive "$H2G" || row_fail "iperf3 host->guest moved no data"
        G2H=$(iperf_gbps g2h "$IPERF_TIME" -R)
        tw_is_positive "$G2H" || row_fail "iperf3 guest->host moved no data"
    fi

    if ((${#ROW_FAILS[@]} == 0 && reconnect)); then
        tw_log "row $1: kill -9 tapwire (pid $TW_PID) under the running guest, start it again"
        kill -KILL "$TW_PID" 2>/dev/null || true
        wait "$TW_PID" 2>/dev/null || true
        if start_tapwire 2; then
            RECONNECT_S=$(seconds_until_ping) || row_fail "the guest's ping did not come back within 30 s of the restart"
            if [[ $RECONNECT_S != never ]]; then
                tw_log "row $1: guest answers again ${RECONNECT_S}s after the restart"
                local after
                after=$(iperf_gbps after-restart 2 -R)
                tw_is_positive "$after" || row_fail "iperf3 after the restart moved no data"
            fi
        else
            row_fail "tapwire did not start again"
        fi
    fi

    local result=PASS
    if ((${#ROW_FAILS[@]})); then
        result=FAIL
        row_diagnostics
    fi
    local neg_row=0
    if [[ $ROW_MODE == server ]] && ((!NEG_DONE)) && [[ -n $ROW_QEMU_PID ]] && tw_pid_alive "$ROW_QEMU_PID" && [[ -S $ROW_SOCK ]]; then
        negative_check
        neg_row=1 NEG_DONE=1
    fi
    row_teardown
    emit_row "$ROW_QV" "$ROW_MODE" "$checks" "$result" \
        "h2g=${H2G}Gbit/s g2h=${G2H}Gbit/s ping_h2g_min/avg=${PING_H}ms ping_g2h_min/avg=${PING_G}ms reconnect_s=$RECONNECT_S boot_s=$BOOT_S row_s=$(tw_elapsed "$t_row")${ROW_FAILS:+ why=\"${ROW_FAILS[*]}\"}"
    if ((neg_row)); then
        local nres=PASS
        if ((${#NEG_FAILS[@]})); then
            nres=FAIL
            tw_warn "negative check: ${NEG_FAILS[*]}"
            tw_tail_log "$TMP/$ROW_ID-tapwire-negative.log" 15 "tapwire log (negative check)"
        fi
        emit_row "$ROW_QV" server "tapwire --client as root without --user: one EACCES error naming the socket, with --user advice" "$nres" \
            "error_after_s=$NEG_FIRST error_lines=$NEG_LINES${NEG_FAILS:+ why=\"${NEG_FAILS[*]}\"}"
        [[ -z ${NEG_LINE:-} ]] || tw_log "negative check logged: $NEG_LINE"
    fi
}

# ---------------------------------------------------------------- the rows

for r in $ROWS; do
    case $r in
        1) run_row 1 7 client 1 ;;
        2) run_row 2 7 server 1 ;;
        3) run_row 3 10 client "$QEMU10_RECONNECT" ;;
        4) run_row 4 10 server "$QEMU10_RECONNECT" ;;
    esac
done
stop_libvirtd

# ---------------------------------------------------------------- report

echo
echo "| frontend | version | socket mode | what was checked | result |"
echo "|---|---|---|---|---|"
for line in "${RESULTS[@]}"; do
    IFS='|' read -r f v m c res <<<"$line"
    echo "| $f | $v | $m | $c | $res |"
done
echo
tw_log "total $(tw_elapsed "$T0")s"
echo "$PASSED passed, $FAILED failed"
((FAILED == 0))
