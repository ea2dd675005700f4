#!/usr/bin/env bash
# Soak: one tapwire, hundreds of frontend sessions: connect, traffic, then a clean close,
# a SIGKILLed frontend mid-traffic, random garbage, or a message cut off half-way. After a
# warm-up, tapwire's open descriptors must not change and its resident memory must not grow.
# Bounded: stops after --cycles or --minutes, whichever comes first.
# Usage: Tools/soak.sh [--cycles 400] [--minutes 10] [--bin-dir .build/release]
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

CYCLES=400
MINUTES=10
BIN_DIR=$TW_REPO_ROOT/.build/release
while (($#)); do
    case $1 in
        --cycles) CYCLES=$2; shift ;;
        --minutes) MINUTES=$2; shift ;;
        --bin-dir) BIN_DIR=$2; shift ;;
        *) tw_die "unknown option $1" ;;
    esac
    shift
done
PERF=$BIN_DIR/tapwire-perf
[[ -x $BIN_DIR/tapwire && -x $PERF ]] || tw_die "build first: make release"
tw_require_root

tw_install_traps
TMP=$(mktemp -d /tmp/tw-soak.XXXXXX)
tw_at_exit "rm -rf '$TMP'"
NS=tw-soak-$$
tw_netns_create "$NS"
SOCK=$TMP/vm.sock
tw_spawn "$TMP/tapwire.log" ip netns exec "$NS" "$BIN_DIR/tapwire" --socket-path "$SOCK" --tap twsoak0 --name soak --log-level warning
PID=$TW_SPAWNED_PID
tw_at_exit "tw_stop $PID 5"
tw_wait_until 20 "$PID" "tapwire's socket" tw_is_socket "$SOCK" || tw_die "tapwire did not start"

fds() { find "/proc/$PID/fd" -mindepth 1 -maxdepth 1 | wc -l; }
rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$PID/status"; }

session() { # one frontend session, of kind $1
    case $1 in
        clean) "$PERF" transmit --socket "$SOCK" --duration 0.2 --warmup 0 >/dev/null 2>&1 ;;
        kill) { timeout -s KILL 0.4 "$PERF" transmit --socket "$SOCK" --duration 5 --warmup 0 >/dev/null 2>&1 || true; } 2>/dev/null ;;
        garbage) python3 -c '
import os, socket, sys
s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); s.sendall(os.urandom(int.from_bytes(os.urandom(2), "little") % 2048 + 1))
try: s.recv(64)
except OSError: pass' "$SOCK" 2>/dev/null || true ;;
        half) python3 -c '
import socket, struct, sys, time
s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])
s.sendall(struct.pack("<III", 5, 1, 264) + b"\0" * 20)  # SET_MEM_TABLE cut short
time.sleep(0.05); s.close()' "$SOCK" 2>/dev/null || true ;;
    esac
}

kinds=(clean kill garbage clean half kill)
deadline=$(( $(date +%s) + MINUTES * 60 ))
warmup=$(( CYCLES / 10 > 10 ? CYCLES / 10 : 10 ))
base_fds= base_rss=
for ((i = 1; i <= CYCLES; i++)); do
    session "${kinds[i % ${#kinds[@]}]}"
    tw_alive "$PID" || tw_die "tapwire died in cycle $i: $(tail -5 "$TMP/tapwire.log")"
    if ((i == warmup)); then
        sleep 0.3
        base_fds=$(fds) base_rss=$(rss_kib)
        tw_log "after $warmup warm-up cycles: $base_fds fds, RSS $base_rss KiB"
    fi
    if ((i % 50 == 0)); then tw_log "cycle $i: $(fds) fds, RSS $(rss_kib) KiB"; fi
    (( $(date +%s) < deadline )) || { tw_log "time limit reached after $i cycles"; break; }
done
cycles=$((i > CYCLES ? CYCLES : i))
sleep 0.5
end_fds=$(fds) end_rss=$(rss_kib)
growth=$((end_rss - base_rss))
printf 'soak: %d sessions (clean, SIGKILLed, garbage, half messages): fds %d -> %d, RSS %d -> %d KiB (%+d KiB)\n' \
    "$cycles" "$base_fds" "$end_fds" "$base_rss" "$end_rss" "$growth"
((end_fds == base_fds)) || tw_die "descriptor count changed: $base_fds -> $end_fds (leak)"
# Allocator noise is a few hundred KiB; a per-session leak of even 1 KiB would show over hundreds.
((growth < 2048)) || tw_die "resident memory grew by $growth KiB"
echo "soak: PASS"
