#!/usr/bin/env bash
# tapwire's sandbox, checked on the real binary:
#   1. once serving, /proc/PID/status shows Seccomp 2, NoNewPrivs 1, CapEff and CapBnd empty;
#      RLIMIT_CORE is 0 and RLIMIT_NOFILE the size tapwire set;
#   2. every message stream of the fuzz corpus (Fixtures/fuzz/message, and any crash-* inputs
#      libFuzzer left in Fixtures/fuzz) is replayed into it over its socket, a connection each
#      (Tools/lib/replay-messages.py): it survives them all under --seccomp kill, answers its
#      API afterwards, and the kernel logged no seccomp kill for it;
#   3. the client mode reconnects under the filter (socket + connect after start-up), and
#      logs its advice on a socket it may not open (EACCES) and keeps retrying;
#   4. SIGTERM ends it with status 0 and its socket removed;
#   5. --seccomp log and --seccomp off start as they say (Seccomp 2 and 0).
# The real guests of `make test` (the frontend matrix, reconnect, rate limits) run under the
# default --seccomp kill as well; this script covers the hostile inputs.
#
# Usage: Tools/seccomp-check.sh [--bin-dir .build/release]
# Output: PASS/FAIL lines, "N passed, N failed"; exit status 0 when all passed.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

BIN_DIR=$TW_REPO_ROOT/.build/release
[[ ${1:-} == --bin-dir ]] && BIN_DIR=$2
TAPWIRE=$BIN_DIR/tapwire
CTL=$BIN_DIR/tapwirectl
[[ -x $TAPWIRE && -x $CTL ]] || tw_die "build first: make release (need $TAPWIRE and $CTL)"
tw_require_root
tw_ensure_packages python3:python3

tw_install_traps
TMP=$(mktemp -d /tmp/tw-seccomp.XXXXXX)
tw_at_exit "rm -rf '$TMP'"
NS=tw-sec-$$
tw_netns_create "$NS"

passed=0 failed=0
expect() { # expect DESCRIPTION COMMAND...
    local what=$1; shift
    if "$@"; then
        echo "PASS  $what"
        passed=$((passed + 1))
    else
        echo "FAIL  $what"
        failed=$((failed + 1))
    fi
}
status_field() { awk -v k="$2:" '$1 == k { print $2 }' "/proc/$1/status" 2>/dev/null; }
limit_of() { awk -v k="$2" 'index($0, k) == 1 { print $(NF - 2) }' "/proc/$1/limits" 2>/dev/null; }
# seccomp_kills PID: the kernel's audit lines for seccomp kills (sig=31) of PID.
seccomp_kills() { dmesg 2>/dev/null | grep -a "type=1326" | grep -a " pid=$1 " | grep -ac "sig=31" || true; }
DMESG_OK=0
dmesg >/dev/null 2>&1 && DMESG_OK=1
((DMESG_OK)) || tw_warn "dmesg is not readable here: the kernel's seccomp audit lines cannot be checked"

# start NAME ARGS...: tapwire on a TAP in the namespace, its API on TMP/NAME.api.
start() {
    local name=$1; shift
    tw_spawn "$TMP/$name.log" ip netns exec "$NS" "$TAPWIRE" --socket-path "$TMP/$name.sock" --tap "tws$name" \
        --api-socket "$TMP/$name.api" --name "seccomp-$name" "$@"
    STARTED=$TW_SPAWNED_PID
    tw_at_exit "tw_stop $STARTED 5"
    tw_wait_until 20 "$STARTED" "tapwire $name serving" tw_log_has "$TMP/$name.log" "sandboxed:" ||
        tw_die "tapwire $name did not start: $(tail -n 5 "$TMP/$name.log")"
}

# ---------------------------------------------------------------- 1. the sandbox in place

start main --queues 2
PID=$STARTED
expect "Seccomp 2 (a filter) once serving (read: $(status_field "$PID" Seccomp))" test "$(status_field "$PID" Seccomp)" = 2
expect "NoNewPrivs 1 (read: $(status_field "$PID" NoNewPrivs))" test "$(status_field "$PID" NoNewPrivs)" = 1
expect "CapEff empty (read: $(status_field "$PID" CapEff))" test "$(status_field "$PID" CapEff)" = 0000000000000000
expect "CapBnd empty (read: $(status_field "$PID" CapBnd))" test "$(status_field "$PID" CapBnd)" = 0000000000000000
expect "RLIMIT_CORE 0 (read: $(limit_of "$PID" "Max core file size"))" test "$(limit_of "$PID" "Max core file size")" = 0
nofile=$(limit_of "$PID" "Max open files")
expect "RLIMIT_NOFILE set from the queue count (read: $nofile; the default is 1024 or more)" \
    test "${nofile:-0}" -gt 64 -a "${nofile:-0}" -lt 1024

# ---------------------------------------------------------------- 2. hostile message streams

shopt -s nullglob
inputs=("$TW_REPO_ROOT"/Fixtures/fuzz/message/* "$TW_REPO_ROOT"/Fixtures/fuzz/crash-*)
shopt -u nullglob
survived=0 died_at=
for input in "${inputs[@]}"; do
    python3 "$TW_REPO_ROOT/Tools/lib/replay-messages.py" "$TMP/main.sock" "$input" >>"$TMP/replay.txt" 2>&1 || true
    if ! tw_alive "$PID"; then died_at=$(basename "$input"); break; fi
    survived=$((survived + 1))
done
expect "survives all ${#inputs[@]} corpus streams under --seccomp kill (survived $survived${died_at:+; died at $died_at})" \
    test -z "$died_at"
expect "answers its API after the replay" "$CTL" --api-socket "$TMP/main.api" status
if ((DMESG_OK)); then
    kills=$(seccomp_kills "$PID")
    expect "no seccomp kill logged for it (audit lines: $kills)" test "$kills" = 0
fi
grep -aE ' (critical|error) ' "$TMP/main.log" | head -n 3 | sed 's/^/    log: /' || true

# ---------------------------------------------------------------- 3. client mode reconnects

# A frontend that listens, hangs up on the first connection and keeps the second.
python3 - "$TMP/frontend.sock" >"$TMP/frontend.txt" 2>&1 <<'PY' &
import socket, sys, time
s = socket.socket(socket.AF_UNIX)
s.bind(sys.argv[1])
s.listen(2)
s.settimeout(30)
first, _ = s.accept()
first.close()
second, _ = s.accept()
print("reconnected", flush=True)
time.sleep(3)
PY
FRONTEND=$!
tw_at_exit "tw_stop $FRONTEND 2"
tw_wait_until 10 "$FRONTEND" "the frontend's socket" tw_is_socket "$TMP/frontend.sock" || true
tw_spawn "$TMP/client.log" ip netns exec "$NS" "$TAPWIRE" --client --socket-path "$TMP/frontend.sock" --sink \
    --name seccomp-client
CLIENT=$TW_SPAWNED_PID
tw_at_exit "tw_stop $CLIENT 5"
tw_wait_until 20 "$FRONTEND" "the client's second connection" tw_log_has "$TMP/frontend.txt" reconnected || true
expect "the client mode reconnects under the filter (frontend: $(tr '\n' ' ' <"$TMP/frontend.txt"))" \
    tw_log_has "$TMP/frontend.txt" reconnected
expect "the client-mode tapwire is alive after reconnecting" tw_alive "$CLIENT"
tw_stop "$CLIENT" 5

# A frontend's socket it may not open (as libvirt's mode='server' makes them for another user):
# the EACCES advice is logged and it keeps retrying, under the filter.
python3 - "$TMP/denied.sock" >"$TMP/denied.txt" 2>&1 <<'PY' &
import os, socket, sys, time
s = socket.socket(socket.AF_UNIX)
s.bind(sys.argv[1])
os.chmod(sys.argv[1], 0)
s.listen(1)
time.sleep(8)
PY
DENIED=$!
tw_at_exit "tw_stop $DENIED 2"
tw_wait_until 10 "$DENIED" "the unreachable socket" tw_is_socket "$TMP/denied.sock" || true
tw_spawn "$TMP/denied.log" ip netns exec "$NS" "$TAPWIRE" --client --socket-path "$TMP/denied.sock" --sink \
    --name seccomp-denied
DENIED_TW=$TW_SPAWNED_PID
tw_at_exit "tw_stop $DENIED_TW 5"
tw_wait_until 10 "$DENIED_TW" "the EACCES advice" tw_log_has "$TMP/denied.log" "Permission denied" || true
sleep 1
expect "a socket it may not open: the EACCES advice is logged and it keeps retrying ($(grep -c 'Permission denied' "$TMP/denied.log") line(s))" \
    tw_log_has "$TMP/denied.log" "Permission denied"
expect "the client-mode tapwire is alive after EACCES" tw_alive "$DENIED_TW"
tw_stop "$DENIED_TW" 5

# ---------------------------------------------------------------- 4. a clean end

kill -TERM "$PID"
rc=0
wait "$PID" || rc=$?
expect "SIGTERM ends it with status 0 (got $rc)" test "$rc" = 0
expect "its vhost-user socket is removed at exit" test ! -e "$TMP/main.sock"

# ---------------------------------------------------------------- 5. the other modes

start log --seccomp log
expect "--seccomp log: a filter in place (Seccomp $(status_field "$STARTED" Seccomp))" test "$(status_field "$STARTED" Seccomp)" = 2
tw_stop "$STARTED" 5
start off --seccomp off
expect "--seccomp off: no filter (Seccomp $(status_field "$STARTED" Seccomp))" test "$(status_field "$STARTED" Seccomp)" = 0
tw_stop "$STARTED" 5

echo "$passed passed, $failed failed"
((failed == 0))
