#!/usr/bin/env bash
# The operator's view, against a running tapwire: capabilities dropped (CapEff 0), the
# control API through tapwirectl and curl, one-line errors, a live limit change, and a
# fully unprivileged tapwire on a persistent TAP an administrator made for its user.
# Usage: Tools/control-check.sh [--bin-dir .build/release]
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

BIN_DIR=$TW_REPO_ROOT/.build/release
[[ ${1:-} == --bin-dir ]] && BIN_DIR=$2
TAPWIRE=$BIN_DIR/tapwire
CTL=$BIN_DIR/tapwirectl
[[ -x $TAPWIRE && -x $CTL ]] || tw_die "build first: make release (need $TAPWIRE and $CTL)"
tw_ensure_packages jq:jq
tw_require_root
tw_ensure_packages jq:jq curl:curl setpriv:util-linux

tw_install_traps
TMP=$(mktemp -d /tmp/tw-control.XXXXXX)
chmod 755 "$TMP"
tw_at_exit "rm -rf '$TMP'"
NS=tw-ctl-$$
tw_netns_create "$NS"
API=$TMP/vm.api

failures=0
pass() { printf 'PASS  %s\n' "$1"; }
fail() { printf 'FAIL  %s\n' "$1"; failures=$((failures + 1)); }
expect() { # expect DESCRIPTION COMMAND...
    local what=$1; shift
    if "$@"; then pass "$what"; else fail "$what"; fi
}

tw_spawn "$TMP/tapwire.log" ip netns exec "$NS" "$TAPWIRE" --socket-path "$TMP/vm.sock" --tap twc0 \
    --api-socket "$API" --name ctl-check --tx-bandwidth 50Mbit
PID=$TW_SPAWNED_PID
tw_at_exit "tw_stop $PID 5"
tw_wait_until 20 "$PID" "the API socket" tw_is_socket "$API" || tw_die "tapwire did not start: $(tail -5 "$TMP/tapwire.log")"
sleep 0.2

capeff=$(awk '/^CapEff:/ { print $2 }' "/proc/$PID/status")
expect "CapEff is 0 once running (read back: $capeff)" test "$capeff" = 0000000000000000

status=$("$CTL" --api-socket "$API" status --json)
expect "tapwirectl status --json: waiting for a frontend, TAP twc0" \
    test "$(jq -r '.state + " " + .tap' <<<"$status")" = "waiting twc0"
expect "tapwirectl status shows the start-up limit" grep -q "50 Mbit/s" <<<"$("$CTL" --api-socket "$API" status)"
expect "curl /metrics is Prometheus text with tapwire_up 1" \
    grep -qx "tapwire_up 1" <<<"$(curl -s --unix-socket "$API" http://localhost/metrics)"
expect "tapwirectl stats prints a table per queue" grep -q "tx" <<<"$("$CTL" --api-socket "$API" stats)"

"$CTL" --api-socket "$API" limit --tx-bandwidth 200Mbit --rx-ops 5000 >/dev/null
now=$("$CTL" --api-socket "$API" status --json)
expect "tapwirectl limit changes the limits live" \
    test "$(jq -r '.limits.tx_human + " | " + .limits.rx_human' <<<"$now" | grep -c "200 Mbit/s.*5000")" = 1

# A rate change through the API shows in the measured rate: 20 Mbit/s, then 80 Mbit/s.
PERF=$BIN_DIR/tapwire-perf
if [[ -x $PERF ]]; then
    measure_mbit() {
        ip netns exec "$NS" "$PERF" transmit --socket "$TMP/vm.sock" --frame-size 1514 --duration 3 --warmup 1 --json |
            jq -r '.window_bits_per_second / 1e6'
    }
    "$CTL" --api-socket "$API" limit --tx-bandwidth 20Mbit >/dev/null
    before=$(measure_mbit)
    "$CTL" --api-socket "$API" limit --tx-bandwidth 80Mbit >/dev/null
    after=$(measure_mbit)
    expect "a limit changed through the API shows in the measured rate: ${before} -> ${after} Mbit/s (limits 20 -> 80)" \
        awk -v b="$before" -v a="$after" 'BEGIN { exit !(b > 19 && b < 21 && a > 76 && a < 84) }'
    "$CTL" --api-socket "$API" limit --tx-bandwidth 200Mbit --rx-ops 5000 >/dev/null
else
    fail "tapwire-perf not built ($PERF): cannot measure a rate change"
fi

if out=$("$CTL" --api-socket "$API" limit --tx-bandwidth 10Mbitz 2>&1); then
    fail "a bad limit is refused"
else
    expect "a bad limit is refused with one line naming the flag: $out" test "$(wc -l <<<"$out")" -eq 1 -a -n "$(grep -- --tx-bandwidth <<<"$out")"
fi
if out=$("$CTL" --api-socket "$TMP/nothing.api" status 2>&1); then
    fail "a missing socket is an error"
else
    expect "a missing socket is one clear line: $out" test "$(wc -l <<<"$out")" -eq 1
fi
code=$(curl -s -o "$TMP/err.json" -w '%{http_code}' --unix-socket "$API" -X PATCH -d '{"tx": {"bandwidth": 5}' http://localhost/vm/limits)
expect "malformed JSON is a 400 with an error body ($(cat "$TMP/err.json"))" test "$code" = 400 -a -n "$(jq -r .error "$TMP/err.json")"

tw_stop "$PID" 5
expect "SIGTERM removes the vhost-user socket" test ! -e "$TMP/vm.sock"

# Fully unprivileged: an administrator creates a persistent TAP for user nobody once.
ip -n "$NS" tuntap add dev twu0 mode tap vnet_hdr user nobody
ip -n "$NS" link set twu0 up
mkdir -m 777 "$TMP/unpriv"
tw_spawn "$TMP/unpriv.log" ip netns exec "$NS" setpriv --reuid=nobody --regid=nogroup --clear-groups \
    --inh-caps=-all --bounding-set=-all "$TAPWIRE" --socket-path "$TMP/unpriv/vm.sock" --tap twu0 --name unpriv
UPID=$TW_SPAWNED_PID
tw_at_exit "tw_stop $UPID 5"
if tw_wait_until 10 "$UPID" "the unprivileged socket" tw_is_socket "$TMP/unpriv/vm.sock"; then
    expect "runs as nobody with no capabilities on a persistent TAP (uid $(awk '/^Uid:/ { print $2 }' "/proc/$UPID/status"), CapEff $(awk '/^CapEff:/ { print $2 }' "/proc/$UPID/status"))" \
        test "$(awk '/^CapEff:/ { print $2 }' "/proc/$UPID/status")" = 0000000000000000
else
    fail "unprivileged tapwire did not start: $(tail -3 "$TMP/unpriv.log")"
fi

((failures == 0)) || tw_die "$failures control check(s) failed (logs: $TMP/*.log)"
echo "control-check: PASS"
