#!/usr/bin/env bash
# Restart survival, with a real guest:
#  1. tapwire is killed with SIGKILL under a running guest and started again: the guest's
#     network must come back without touching the guest (QEMU -chardev ...,reconnect=1).
#  2. the same with a clean SIGTERM restart.
#  3. QEMU goes away and a new QEMU boots: the same tapwire (and TAP) serves it.
#  4. client mode: QEMU listens (server=on), tapwire --client is started first and retries
#     until the socket appears; killed with SIGKILL and restarted, it connects again.
# The TAP is persistent (created with `ip tuntap add`), as an operator would set it up, so
# its host-side address survives tapwire restarts.
# Usage: Tools/reconnect-check.sh [--tapwire BIN]
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

BIN=${TAPWIRE_BIN:-$TW_REPO_ROOT/.build/release/tapwire}
[[ ${1:-} == --tapwire ]] && BIN=$2
[[ -x $BIN ]] || tw_die "tapwire binary not found at $BIN (make release)"
tw_require_root
tw_ensure_packages qemu-system-x86_64:qemu-system-x86 iperf3:iperf3 ip:iproute2
"$TW_REPO_ROOT/Tools/guest-image.sh" >&2
GUEST_DIR=$(tw_guest_dir)

tw_install_traps
TMP=$(mktemp -d /tmp/tw-reconnect.XXXXXX)
tw_at_exit "rm -rf '$TMP'"
SOCK=$TMP/vm.sock
NS=tw-rc-$$
tw_netns_create "$NS"
ip -n "$NS" tuntap add dev tw0 mode tap vnet_hdr
tw_netns_addr "$NS" tw0

TAPWIRE_PID=
start_tapwire() { # start_tapwire TAG [--client]
    tw_spawn "$TMP/tapwire-$1.log" ip netns exec "$NS" "$BIN" --socket-path "$SOCK" --tap tw0 --name reconnect ${2:-}
    TAPWIRE_PID=$TW_SPAWNED_PID
    [[ ${2:-} == --client ]] && return 0
    # Its own log line, not the socket: a killed predecessor leaves its socket file behind.
    if ! tw_wait_until 20 "$TAPWIRE_PID" "tapwire to listen" tw_log_has "$TMP/tapwire-$1.log" "listening on"; then
        tw_tail_log "$TMP/tapwire-$1.log" 20 "tapwire log"
        tw_die "tapwire did not start ($TMP/tapwire-$1.log)"
    fi
}
CHARDEV_MODE=reconnect=1
tw_at_exit 'tw_stop "$TAPWIRE_PID" 5'

QEMU_PID=
boot_guest() {
    local console=$TMP/console-$1.log
    : >"$console"
    tw_spawn "$TMP/qemu-$1.log" qemu-system-x86_64 -accel tcg -nodefaults -no-user-config \
        -m 512M -object memory-backend-memfd,id=mem,size=512M,share=on -machine q35,memory-backend=mem -smp 1 \
        -kernel "$GUEST_DIR/vmlinuz" -initrd "$GUEST_DIR/initramfs.cpio.gz" \
        -append "console=ttyS0 panic=-1 quiet tw.ip=$TW_GUEST_IP/$TW_PREFIX_LEN tw.host=$TW_HOST_IP" \
        -display none -serial "file:$console" -no-reboot \
        -chardev "socket,id=c0,path=$SOCK,$CHARDEV_MODE" -netdev vhost-user,id=n0,chardev=c0 \
        -device "virtio-net-pci,netdev=n0,vectors=0,mac=$TW_GUEST_MAC"
    QEMU_PID=$TW_SPAWNED_PID
    tw_wait_marker "$console" TW-GUEST-READY 120 "$QEMU_PID" TW-GUEST-FAIL || tw_die "guest $1 did not come up ($console)"
}
tw_at_exit 'tw_stop "$QEMU_PID" 5'

# Seconds until the guest answers a ping again (up to 30), or "never".
seconds_until_ping() {
    local start i
    start=$(tw_now)
    for ((i = 0; i < 60; i++)); do
        # shellcheck disable=SC2046
        if ip netns exec "$NS" $(tw_ping_cmd) -c 1 -W 1 "$TW_GUEST_IP" >/dev/null 2>&1; then
            tw_elapsed "$start"
            return 0
        fi
        sleep 0.4
    done
    echo never
    return 1
}

iperf_gbps() { # a short guest->host run: traffic really flows again
    ip netns exec "$NS" iperf3 -c "$TW_GUEST_IP" -t 2 -R --json 2>/dev/null |
        jq -r '.end.sum_received.bits_per_second / 1e9 | . * 100 | floor / 100' 2>/dev/null || echo 0
}

failures=0
check() { # check NAME SECONDS
    if [[ $2 == never ]]; then
        printf '%-44s FAIL: the guest never answered again\n' "$1"
        failures=$((failures + 1))
    else
        printf '%-44s PASS: guest answered after %ss, then iperf3 %s Gbit/s\n' "$1" "$2" "$(iperf_gbps)"
    fi
}

start_tapwire 1
boot_guest 1
check "guest up through tapwire" "$(seconds_until_ping || true)"

tw_log "killing tapwire with SIGKILL under the running guest, then starting it again"
kill -KILL "$TAPWIRE_PID"; wait "$TAPWIRE_PID" 2>/dev/null || true
start_tapwire 2
check "after SIGKILL and restart (guest untouched)" "$(seconds_until_ping || true)"

tw_log "stopping tapwire with SIGTERM, then starting it again"
tw_stop "$TAPWIRE_PID" 5
[[ ! -e $SOCK ]] || tw_warn "socket file still there after SIGTERM"
start_tapwire 3
check "after SIGTERM and restart (guest untouched)" "$(seconds_until_ping || true)"

tw_log "replacing QEMU: the same tapwire must serve the next guest"
tw_stop "$QEMU_PID" 5
boot_guest 2
check "a new QEMU on the same tapwire" "$(seconds_until_ping || true)"
grep -h "frontend" "$TMP"/tapwire-3.log | sed 's/^/  tapwire: /' | tail -4 >&2

tw_log "client mode: QEMU listens, tapwire --client connects (started first, it retries)"
tw_stop "$QEMU_PID" 5
tw_stop "$TAPWIRE_PID" 5
rm -f "$SOCK"
CHARDEV_MODE=server=on,wait=off
start_tapwire 4 --client
sleep 1 # tapwire is now retrying against a socket that does not exist yet
boot_guest 3
check "client mode, tapwire started before QEMU" "$(seconds_until_ping || true)"
kill -KILL "$TAPWIRE_PID"; wait "$TAPWIRE_PID" 2>/dev/null || true
start_tapwire 5 --client
check "client mode, after SIGKILL and restart" "$(seconds_until_ping || true)"

if ((failures)); then
    tw_die "$failures reconnect check(s) failed; logs in $TMP (kept: see above)"
fi
echo "reconnect-check: PASS"
