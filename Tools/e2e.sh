#!/usr/bin/env bash
# End-to-end check: boot the test guest behind a network backend and measure
# ping and iperf3 both ways between the guest and a TAP inside a private
# network namespace.
#
# Usage: Tools/e2e.sh [options]
#   --backend tapwire|qemu-tap  backend to test (default tapwire); qemu-tap is
#                               QEMU's own TAP backend (vhost=off), the reference
#   --tapwire BIN               tapwire binary (default $TAPWIRE_BIN or
#                               .build/release/tapwire under the repo root)
#   --tapwire-args "ARGS"       extra arguments for tapwire (word-split)
#   --launcher "CMD"            start the backend with CMD (word-split) instead of
#                               `BIN --socket-path SOCKET --tap TAP`; {socket} and {tap}
#                               in CMD become the vhost-user socket's path and the TAP's
#                               name, --tapwire-args are appended. CMD runs in the test's
#                               netns and must create the socket (the TAP may come later,
#                               when QEMU connects), e.g. "systemd-socket-activate -l
#                               {socket} /usr/bin/tapwire --config FILE" (tapwire only)
#   --tap NAME                  the host-side TAP's name (default tw0, qt0 for qemu-tap)
#   --qemu 7.2|10|newest|PATH   which QEMU runs the guest (default newest: 10.0 when
#                               Tools/install-deps.sh installed it beside 7.2)
#   --time SECONDS              iperf3 duration per direction (default 5)
#   --mem SIZE                  guest memory, e.g. 512M (default 512M)
#   --boot-timeout SECONDS      wait for the guest's READY marker (default 120)
#   --append "PARAMS"           extra guest kernel parameters (tw.pre=, tw.cmd=, ...)
#   --qemu-args "ARGS"          extra QEMU arguments (word-split)
#   --nic-args ",OPT=V..."      appended to the virtio-net-pci device (e.g. ",packed=on")
#   --out DIR                   run directory for logs and results (default
#                               /var/tmp/tapwire-e2e/<time>-<backend>)
#   --guest-dir DIR             guest image directory (default $TAPWIRE_GUEST_DIR
#                               or /var/tmp/tapwire-guest)
#   --show-offloads             print the guest's `ethtool -k eth0`
#   --hold SECONDS              keep guest and backend up this long after the
#                               checks (alias --keep-going-seconds)
#   --json                      print results as one JSON object on stdout
#                               instead of the text summary
# Exit status: 0 when both pings got replies and both iperf3 runs moved data.
set -euo pipefail

. "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

usage() { sed -n '2,/^# Exit status/s/^# \{0,1\}//p' "$0"; }

BACKEND=tapwire
TAPWIRE=${TAPWIRE_BIN:-$TW_REPO_ROOT/.build/release/tapwire}
TAPWIRE_ARGS=
LAUNCHER=
TAP_NAME=
QEMU_WHICH=${TAPWIRE_QEMU:-newest}
IPERF_TIME=5
MEM=512M
BOOT_TIMEOUT=120
APPEND_EXTRA=
QEMU_EXTRA=
NIC_EXTRA=
RUN_DIR=
GUEST_DIR=$(tw_guest_dir)
SHOW_OFFLOADS=0
HOLD=0
JSON=0

need_arg() { (($# >= 2)) || tw_die "$1 needs a value"; }
while (($#)); do
    case $1 in
        --backend) need_arg "$@"; BACKEND=$2; shift ;;
        --tapwire) need_arg "$@"; TAPWIRE=$2; shift ;;
        --tapwire-args) need_arg "$@"; TAPWIRE_ARGS=$2; shift ;;
        --launcher) need_arg "$@"; LAUNCHER=$2; shift ;;
        --tap) need_arg "$@"; TAP_NAME=$2; shift ;;
        --qemu) need_arg "$@"; QEMU_WHICH=$2; shift ;;
        --time) need_arg "$@"; IPERF_TIME=$2; shift ;;
        --mem) need_arg "$@"; MEM=$2; shift ;;
        --boot-timeout) need_arg "$@"; BOOT_TIMEOUT=$2; shift ;;
        --append) need_arg "$@"; APPEND_EXTRA=$2; shift ;;
        --qemu-args) need_arg "$@"; QEMU_EXTRA=$2; shift ;;
        --nic-args) need_arg "$@"; NIC_EXTRA=$2; shift ;;
        --out) need_arg "$@"; RUN_DIR=$2; shift ;;
        --guest-dir) need_arg "$@"; GUEST_DIR=$2; shift ;;
        --show-offloads) SHOW_OFFLOADS=1 ;;
        --hold | --keep-going-seconds) need_arg "$@"; HOLD=$2; shift ;;
        --json) JSON=1 ;;
        -h | --help) usage; exit 0 ;;
        *) usage >&2; tw_die "unknown argument: $1" ;;
    esac
    shift
done

case $BACKEND in tapwire | qemu-tap) ;; *) tw_die "--backend must be tapwire or qemu-tap, not '$BACKEND'" ;; esac
[[ $IPERF_TIME =~ ^[0-9]+$ && $IPERF_TIME -gt 0 ]] || tw_die "--time must be a positive integer"
[[ $HOLD =~ ^[0-9]+$ ]] || tw_die "--hold must be a number of seconds"
[[ $MEM =~ ^[0-9]+[MG]$ ]] || tw_die "--mem must look like 512M or 1G"
[[ -z $LAUNCHER || $BACKEND == tapwire ]] || tw_die "--launcher starts a vhost-user backend: only with --backend tapwire"
[[ -z $TAP_NAME || $TAP_NAME =~ ^[A-Za-z0-9_.-]{1,15}$ ]] || tw_die "--tap must be an interface name (at most 15 characters)"

tw_require_root

# Fail fast, before any slow setup, when the binary under test is missing.
if [[ $BACKEND == tapwire && -z $LAUNCHER ]]; then
    [[ -x $TAPWIRE ]] || tw_die "tapwire binary not found or not executable: $TAPWIRE
  build it first (swift build -c release) or pass --tapwire BIN / set TAPWIRE_BIN"
    TAPWIRE=$(cd "$(dirname "$TAPWIRE")" && pwd)/$(basename "$TAPWIRE")
fi

tw_ensure_packages qemu-system-x86_64:qemu-system-x86 iperf3:iperf3 ip:iproute2 \
    jq:jq timeout:coreutils dpkg:busybox-static
tw_qemu_select "$QEMU_WHICH"

T0=$(tw_now)

# ---------------------------------------------------------------- guest image

"$TW_REPO_ROOT/Tools/guest-image.sh" "$GUEST_DIR"
KERNEL=$GUEST_DIR/vmlinuz
INITRD=$GUEST_DIR/initramfs.cpio.gz

# ---------------------------------------------------------------- run state

RUN_DIR=${RUN_DIR:-/var/tmp/tapwire-e2e/$(date +%Y%m%d-%H%M%S)-$BACKEND-$$}
mkdir -p "$RUN_DIR"
RUN_DIR=$(cd "$RUN_DIR" && pwd)
CONSOLE=$RUN_DIR/console.log
: >"$CONSOLE"

tw_install_traps
# Sockets and other scratch files; the run dir (logs, results) is kept.
TMP=$(mktemp -d /tmp/tw-e2e.XXXXXX)
tw_at_exit "rm -rf '$TMP'"
SOCK=$TMP/vm.sock

NS=tw-e2e-$$
tw_netns_create "$NS"

BACKEND_PID=
QEMU_PID=
HOST_IF=
# On failure, show what the guest and the backend said.
on_failure() {
    ((TW_EXIT_RC != 0)) || return 0
    # The offload listing is long and rarely the reason; leave it out here.
    tr -d '\r' <"$CONSOLE" | sed '/^TW-GUEST-ETHTOOL-BEGIN$/,/^TW-GUEST-ETHTOOL-END$/c\
(ethtool -k output: see guest-ethtool-k.txt)' >"$TMP/console.short"
    tw_tail_log "$TMP/console.short" 40 "guest console ($CONSOLE)"
    [[ ! -s $RUN_DIR/qemu.log ]] || tw_tail_log "$RUN_DIR/qemu.log" 20 "qemu output"
    [[ ! -s $RUN_DIR/tapwire.log ]] || tw_tail_log "$RUN_DIR/tapwire.log" 30 "tapwire output"
    tw_log "run directory: $RUN_DIR"
}
tw_at_exit on_failure

# ---------------------------------------------------------------- backend

NETDEV_ARGS=()
QEMU_PREFIX=()
case $BACKEND in
tapwire)
    HOST_IF=${TAP_NAME:-tw0}
    read -r -a extra <<<"$TAPWIRE_ARGS"
    # tapwire runs inside the netns so the TAP it creates is born there; the
    # vhost-user socket is a file, so QEMU in the root namespace still reaches it.
    if [[ -n $LAUNCHER ]]; then
        launcher=${LAUNCHER//\{socket\}/$SOCK}
        launcher=${launcher//\{tap\}/$HOST_IF}
        read -r -a launch <<<"$launcher"
        tw_log "starting the backend in netns $NS: ${launch[*]} ${extra[*]}"
        tw_spawn "$RUN_DIR/tapwire.log" ip netns exec "$NS" "${launch[@]}" "${extra[@]}"
    else
        tw_log "starting tapwire in netns $NS: $TAPWIRE --socket-path $SOCK --tap $HOST_IF ${extra[*]}"
        tw_spawn "$RUN_DIR/tapwire.log" ip netns exec "$NS" "$TAPWIRE" \
            --socket-path "$SOCK" --tap "$HOST_IF" "${extra[@]}"
    fi
    BACKEND_PID=$TW_SPAWNED_PID
    tw_at_exit "tw_stop $BACKEND_PID 5"
    tw_wait_until 20 "$BACKEND_PID" "tapwire's socket $SOCK" tw_is_socket "$SOCK" ||
        tw_die "tapwire did not create its vhost-user socket"
    NETDEV_ARGS=(-chardev "socket,id=c0,path=$SOCK"
        -netdev "vhost-user,id=n0,chardev=c0")
    ;;
qemu-tap)
    HOST_IF=${TAP_NAME:-qt0}
    # Pre-create the TAP so it is addressed before the guest pings; QEMU
    # attaches to it by name (it would otherwise create one itself).
    ip -n "$NS" tuntap add dev "$HOST_IF" mode tap vnet_hdr
    tw_netns_addr "$NS" "$HOST_IF"
    NETDEV_ARGS=(-netdev "tap,id=n0,ifname=$HOST_IF,script=no,downscript=no,vhost=off")
    # QEMU must open the TAP from inside the namespace.
    QEMU_PREFIX=(ip netns exec "$NS")
    ;;
esac

# tapwire creates its TAP at start-up; configure it as soon as it exists.
configure_host_if() {
    if tw_netns_has_link "$NS" "$HOST_IF"; then
        tw_netns_addr "$NS" "$HOST_IF"
        return 0
    fi
    return 1
}
HOST_IF_READY=0
if [[ $BACKEND == tapwire ]]; then
    if tw_wait_until 10 "$BACKEND_PID" "TAP $HOST_IF in $NS" configure_host_if; then
        HOST_IF_READY=1
    else
        tw_alive "$BACKEND_PID" || tw_die "tapwire exited"
        tw_warn "$HOST_IF not there yet; will configure it once the guest connects"
    fi
else
    HOST_IF_READY=1
fi

# ---------------------------------------------------------------- guest

read -r -a qemu_extra <<<"$QEMU_EXTRA"
APPEND="console=ttyS0 panic=-1 quiet tw.ip=$TW_GUEST_IP/$TW_PREFIX_LEN tw.host=$TW_HOST_IP $APPEND_EXTRA"
# Same machine and device for both backends so figures compare: TCG (no
# nested KVM here), memfd-shared memory (vhost-user needs it), and what this
# QEMU's NIC needs under TCG (tw_qemu_nic_options).
QEMU_CMD=("${QEMU_PREFIX[@]}" "$QEMU_BIN" "${QEMU_DATA[@]}"
    -accel tcg -nodefaults -no-user-config
    -m "$MEM" -object "memory-backend-memfd,id=mem,size=$MEM,share=on"
    -machine "q35,memory-backend=mem" -smp 1
    -kernel "$KERNEL" -initrd "$INITRD" -append "$APPEND"
    -display none -serial "file:$CONSOLE" -no-reboot
    "${NETDEV_ARGS[@]}"
    -device "virtio-net-pci,netdev=n0$(tw_qemu_nic_options),mac=$TW_GUEST_MAC$NIC_EXTRA"
    "${qemu_extra[@]}")
printf '%q ' "${QEMU_CMD[@]}" >"$RUN_DIR/qemu.cmdline"
echo >>"$RUN_DIR/qemu.cmdline"

tw_log "booting guest ($BACKEND backend, QEMU $QEMU_VERSION, $MEM, console $CONSOLE)"
T_BOOT=$(tw_now)
tw_spawn "$RUN_DIR/qemu.log" "${QEMU_CMD[@]}"
QEMU_PID=$TW_SPAWNED_PID
tw_at_exit "tw_stop $QEMU_PID 5"

if ((!HOST_IF_READY)); then
    tw_wait_until 60 "$QEMU_PID" "TAP $HOST_IF in $NS" configure_host_if ||
        tw_die "tapwire never created $HOST_IF in $NS"
fi

rc=0
tw_wait_marker "$CONSOLE" TW-GUEST-READY "$BOOT_TIMEOUT" "$QEMU_PID" TW-GUEST-FAIL || rc=$?
case $rc in
    0) ;;
    1) tw_die "guest not ready after ${BOOT_TIMEOUT}s" ;;
    2) tw_die "QEMU exited before the guest was ready" ;;
    3) tw_die "guest setup failed: $(tr -d '\r' <"$CONSOLE" | grep -a -m1 TW-GUEST-FAIL)" ;;
esac
BOOT_SECONDS=$(tw_elapsed "$T_BOOT")
tw_log "guest ready after ${BOOT_SECONDS}s"

tw_extract_between "$CONSOLE" TW-GUEST-PING-BEGIN TW-GUEST-PING-END >"$RUN_DIR/ping-guest-to-host.txt"
tw_extract_between "$CONSOLE" TW-GUEST-ETHTOOL-BEGIN TW-GUEST-ETHTOOL-END >"$RUN_DIR/guest-ethtool-k.txt"
[[ -s $RUN_DIR/guest-ethtool-k.txt ]] || tw_warn "no ethtool -k output from the guest"

# ---------------------------------------------------------------- checks

failures=()

read -r G_TX G_RX G_LOSS G_MIN G_AVG G_MAX < <(tw_ping_parse <"$RUN_DIR/ping-guest-to-host.txt")
[[ $G_RX =~ ^[0-9]+$ && $G_RX -gt 0 ]] || failures+=("guest->host ping: no replies")

tw_log "ping host->guest"
# shellcheck disable=SC2046 # tw_ping_cmd may be two words (busybox ping)
ip netns exec "$NS" $(tw_ping_cmd) -c 5 -i 0.5 -W 2 "$TW_GUEST_IP" >"$RUN_DIR/ping-host-to-guest.txt" 2>&1 || true
read -r H_TX H_RX H_LOSS H_MIN H_AVG H_MAX < <(tw_ping_parse <"$RUN_DIR/ping-host-to-guest.txt")
[[ $H_RX =~ ^[0-9]+$ && $H_RX -gt 0 ]] || failures+=("host->guest ping: no replies")

# iperf3 client in the netns against the guest's server: plain is host->guest,
# -R makes the guest send.
iperf_dir() {
    local name=$1 label=$2; shift 2
    local out=$RUN_DIR/iperf3-$name.json parsed
    tw_log "iperf3 $label (${IPERF_TIME}s)"
    if ! tw_iperf3_run "$NS" "$TW_GUEST_IP" "$IPERF_TIME" "$out" "$@"; then
        tw_warn "iperf3 $label exited non-zero"
    fi
    if parsed=$(tw_iperf3_parse "$out" 2>"$out.why"); then
        echo "$parsed"
    else
        tw_warn "iperf3 $label: $(cat "$out.why") $(head -c 300 "$out.stderr" 2>/dev/null)"
        echo "0 -"
    fi
}
read -r H2G_GBPS H2G_RTX < <(iperf_dir h2g "host->guest")
tw_is_positive "$H2G_GBPS" || failures+=("iperf3 host->guest failed or moved no data")
read -r G2H_GBPS G2H_RTX < <(iperf_dir g2h "guest->host" -R)
tw_is_positive "$G2H_GBPS" || failures+=("iperf3 guest->host failed or moved no data")

TOTAL_SECONDS=$(tw_elapsed "$T0")

# ---------------------------------------------------------------- report

OK=true
((${#failures[@]} == 0)) || OK=false
KERNEL_PKG=$(cat "$GUEST_DIR/kernel-package" 2>/dev/null || echo unknown)
num_or_null() { if [[ $1 == - || -z $1 ]]; then echo null; else echo "$1"; fi; }
jq -n \
    --arg backend "$BACKEND" --arg qemu "$QEMU_VERSION" --arg run_dir "$RUN_DIR" --arg kernel "$KERNEL_PKG" \
    --argjson ok "$OK" \
    --argjson iperf_time "$IPERF_TIME" \
    --argjson boot_s "$BOOT_SECONDS" --argjson total_s "$TOTAL_SECONDS" \
    --argjson h2g_gbps "$H2G_GBPS" --argjson h2g_rtx "$(num_or_null "$H2G_RTX")" \
    --argjson g2h_gbps "$G2H_GBPS" --argjson g2h_rtx "$(num_or_null "$G2H_RTX")" \
    --argjson hp_min "$(num_or_null "$H_MIN")" --argjson hp_avg "$(num_or_null "$H_AVG")" \
    --argjson hp_max "$(num_or_null "$H_MAX")" --argjson hp_loss "$(num_or_null "$H_LOSS")" \
    --argjson gp_min "$(num_or_null "$G_MIN")" --argjson gp_avg "$(num_or_null "$G_AVG")" \
    --argjson gp_max "$(num_or_null "$G_MAX")" --argjson gp_loss "$(num_or_null "$G_LOSS")" \
    --rawfile offloads "$RUN_DIR/guest-ethtool-k.txt" \
    --args '{
        backend: $backend, qemu: $qemu, ok: $ok, failures: $ARGS.positional,
        kernel: $kernel, run_dir: $run_dir,
        boot_seconds: $boot_s, total_seconds: $total_s, iperf_seconds: $iperf_time,
        ping_host_to_guest_ms: {min: $hp_min, avg: $hp_avg, max: $hp_max, loss_pct: $hp_loss},
        ping_guest_to_host_ms: {min: $gp_min, avg: $gp_avg, max: $gp_max, loss_pct: $gp_loss},
        iperf3_host_to_guest: {gbps: $h2g_gbps, retransmits: $h2g_rtx},
        iperf3_guest_to_host: {gbps: $g2h_gbps, retransmits: $g2h_rtx},
        guest_offloads: $offloads
    }' "${failures[@]}" >"$RUN_DIR/results.json"

gbps_text() {
    if tw_is_positive "$1"; then
        echo "$1 Gbit/s (${IPERF_TIME}s, retransmits $2)"
    else
        echo "FAILED (see $RUN_DIR/iperf3-*.json)"
    fi
}
{
    echo "backend           : $BACKEND"
    echo "qemu              : $QEMU_VERSION ($QEMU_BIN)"
    echo "guest kernel      : $KERNEL_PKG (boot to ready ${BOOT_SECONDS}s)"
    echo "ping host->guest  : min/avg/max = $H_MIN/$H_AVG/$H_MAX ms ($H_RX/$H_TX replies)"
    echo "ping guest->host  : min/avg/max = $G_MIN/$G_AVG/$G_MAX ms ($G_RX/$G_TX replies)"
    echo "iperf3 host->guest: $(gbps_text "$H2G_GBPS" "$H2G_RTX")"
    echo "iperf3 guest->host: $(gbps_text "$G2H_GBPS" "$G2H_RTX")"
    echo "run directory     : $RUN_DIR (${TOTAL_SECONDS}s total)"
    # One grep-able line per figure ("-" when it could not be measured).
    result() { echo "RESULT backend=$BACKEND metric=$1 value=$2"; }
    result ping_h2g_min_ms "$H_MIN"; result ping_h2g_avg_ms "$H_AVG"; result ping_h2g_max_ms "$H_MAX"
    result ping_g2h_min_ms "$G_MIN"; result ping_g2h_avg_ms "$G_AVG"; result ping_g2h_max_ms "$G_MAX"
    result h2g_gbps "$H2G_GBPS"; result g2h_gbps "$G2H_GBPS"
    result h2g_retransmits "$H2G_RTX"; result g2h_retransmits "$G2H_RTX"
    result boot_s "$BOOT_SECONDS"
} >"$RUN_DIR/summary.txt"

if ((JSON)); then
    cat "$RUN_DIR/results.json"
else
    cat "$RUN_DIR/summary.txt"
    if ((SHOW_OFFLOADS)); then
        echo "guest ethtool -k eth0:"
        sed 's/^/  /' "$RUN_DIR/guest-ethtool-k.txt"
    fi
fi
# With --json, offloads go to stderr so stdout stays one JSON document.
if ((JSON && SHOW_OFFLOADS)); then sed 's/^/  /' "$RUN_DIR/guest-ethtool-k.txt" >&2; fi

if ((HOLD > 0)); then
    tw_log "holding guest and backend for ${HOLD}s (netns $NS, guest $TW_GUEST_IP, qemu pid $QEMU_PID, backend pid ${BACKEND_PID:-none})"
    tw_interruptible sleep "$HOLD"
fi

if ((${#failures[@]})); then
    for f in "${failures[@]}"; do tw_log "FAIL: $f"; done
    exit 1
fi
tw_log "PASS ($BACKEND)"
