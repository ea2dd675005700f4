# shellcheck shell=bash
# shellcheck disable=SC2034 # TW_* variables are read by the sourcing scripts.
# Shared helpers for the tapwire test scripts (e2e, benchmarks).
# Source it from a bash script that runs with `set -euo pipefail`:
#   . "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"
#
# Network rule these helpers are built around: test traffic only goes to
# loopback or into network namespaces the scripts create themselves, so every
# TAP and every host-side ping/iperf3 lives inside such a namespace.

# Guard against double sourcing (a script and a helper may both source it).
if [[ -n ${TW_COMMON_SOURCED:-} ]]; then return 0; fi
TW_COMMON_SOURCED=1

TW_REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
TW_LOG_PREFIX=${TW_LOG_PREFIX:-$(basename "$0" .sh)}

# Default addressing of the test link (host side is the TAP in the netns).
TW_HOST_IP=${TW_HOST_IP:-10.77.0.1}
TW_GUEST_IP=${TW_GUEST_IP:-10.77.0.2}
TW_PREFIX_LEN=${TW_PREFIX_LEN:-24}
TW_GUEST_MAC=${TW_GUEST_MAC:-52:54:00:77:00:02}

# ---------------------------------------------------------------- logging

# All progress goes to stderr so that stdout stays clean for results / JSON.
tw_log()  { printf '%s: %s\n' "$TW_LOG_PREFIX" "$*" >&2; }
tw_warn() { printf '%s: warning: %s\n' "$TW_LOG_PREFIX" "$*" >&2; }
tw_die()  { printf '%s: error: %s\n' "$TW_LOG_PREFIX" "$*" >&2; exit 1; }

tw_require_root() {
    [[ $(id -u) -eq 0 ]] || tw_die "must run as root (needs network namespaces and TAP devices)"
}

# Seconds since the epoch with milliseconds, for phase timings.
tw_now() { date +%s.%N; }
# tw_elapsed START -> "12.3" seconds since START.
tw_elapsed() { awk -v s="$1" -v e="$(tw_now)" 'BEGIN { printf "%.1f", e - s }'; }

# ---------------------------------------------------------------- packages

# tw_ensure_packages SPEC... where SPEC is "command:package" (installed when the
# command is missing) or "dpkg:package" (installed when dpkg does not know it).
# Runs apt-get update once, only if something is actually missing.
tw_ensure_packages() {
    local spec what pkg missing=()
    for spec in "$@"; do
        what=${spec%%:*} pkg=${spec#*:}
        if [[ $what == dpkg ]]; then
            dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
        else
            command -v "$what" >/dev/null 2>&1 || missing+=("$pkg")
        fi
    done
    ((${#missing[@]})) || return 0
    # De-duplicate while keeping order.
    local -A seen=()
    local uniq=()
    for pkg in "${missing[@]}"; do
        [[ -n ${seen[$pkg]:-} ]] || { seen[$pkg]=1; uniq+=("$pkg"); }
    done
    tw_log "installing missing packages: ${uniq[*]}"
    export DEBIAN_FRONTEND=noninteractive
    if [[ -z ${TW_APT_UPDATED:-} ]]; then apt-get update -qq >&2; TW_APT_UPDATED=1; fi
    apt-get install -y -qq --no-install-recommends "${uniq[@]}" >&2
}

# bookworm-backports, with the same mirror and keyring as Debian 12's own list.
tw_ensure_backports() {
    local list=/etc/apt/sources.list.d/tapwire-backports.sources
    if ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
        tw_log "adding bookworm-backports to apt's sources ($list)"
        printf 'Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' >"$list"
        TW_APT_UPDATED=
    fi
    if [[ -z ${TW_APT_UPDATED:-} ]]; then apt-get update -qq >&2; TW_APT_UPDATED=1; fi
}

# QEMU 10.0 beside the system's 7.2: bookworm-backports' packages unpacked into
# TW_QEMU10_PREFIX (below), so installing it replaces nothing.
tw_ensure_qemu10() {
    [[ ! -x $TW_QEMU10_PREFIX/usr/bin/qemu-system-x86_64 ]] || return 0
    tw_ensure_backports
    local dl
    dl=$(mktemp -d)
    tw_log "installing QEMU 10.0 from bookworm-backports into $TW_QEMU10_PREFIX"
    # _apt cannot write into a mktemp folder; the download itself is what we want.
    (cd "$dl" && apt-get download -qq -t bookworm-backports qemu-system-x86 qemu-system-common qemu-system-data 2>&1 |
        grep -v 'unsandboxed' >&2 || true)
    local deb
    for deb in "$dl"/*.deb; do dpkg-deb -x "$deb" "$TW_QEMU10_PREFIX"; done
    rm -rf "$dl"
    [[ -x $TW_QEMU10_PREFIX/usr/bin/qemu-system-x86_64 ]] || tw_die "QEMU 10.0 did not install into $TW_QEMU10_PREFIX"
}

# libvirt 11.3 from bookworm-backports, only its own packages from there (the rest of the
# system, systemd included, stays Debian 12's).
tw_ensure_libvirt() {
    if dpkg-query -W -f '${Version}' libvirt-daemon-driver-qemu 2>/dev/null | grep -q '^11\.'; then return 0; fi
    tw_ensure_backports
    local pkgs=() p
    for p in libvirt-daemon-driver-qemu libvirt-daemon libvirt-clients libvirt-common libvirt0 libvirt-daemon-common libvirt-daemon-log; do
        pkgs+=("$p/bookworm-backports")
    done
    tw_log "installing libvirt 11.3 from bookworm-backports"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >&2
}

# tw_ensure_hugepages PAGES: at least PAGES free 2 MiB hugepages and a hugetlbfs mount, for
# DPDK; HUGE_DIR is left naming the mount. Everything is put back as it was at exit, in
# reverse order: the mount, the page count (DPDK's own page files are the caller's).
tw_ensure_hugepages() {
    local needed=$1 free old
    [[ $(awk '/^Hugepagesize:/ { print $2 }' /proc/meminfo) == 2048 ]] || tw_die "expected 2 MiB default hugepages"
    free=$(awk '/^HugePages_Free:/ { print $2 }' /proc/meminfo)
    if ((free < needed)); then
        old=$(cat /proc/sys/vm/nr_hugepages)
        tw_at_exit "echo $old >/proc/sys/vm/nr_hugepages"
        echo $((old + needed - free)) >/proc/sys/vm/nr_hugepages
        free=$(awk '/^HugePages_Free:/ { print $2 }' /proc/meminfo)
        ((free >= needed)) || tw_die "only $free free hugepages after asking for more (need $needed)"
    fi
    HUGE_DIR=$(awk '$3 == "hugetlbfs" { print $2; exit }' /proc/mounts)
    if [[ -z $HUGE_DIR ]]; then
        HUGE_DIR=/dev/hugepages
        if [[ ! -d $HUGE_DIR ]]; then
            mkdir "$HUGE_DIR"
            tw_at_exit "rmdir '$HUGE_DIR' 2>/dev/null || true"
        fi
        mount -t hugetlbfs nodev "$HUGE_DIR" || tw_die "cannot mount hugetlbfs on $HUGE_DIR"
        tw_at_exit "tw_unmount_hugetlbfs '$HUGE_DIR'"
    fi
}

# tw_unmount_hugetlbfs DIR: the last mappings of a process that just exited may take a moment to go.
tw_unmount_hugetlbfs() {
    local i
    for ((i = 0; i < 50; i++)); do
        umount "$1" 2>/dev/null && return 0
        sleep 0.1
    done
    tw_warn "could not unmount $1: $(umount "$1" 2>&1)"
}

# ---------------------------------------------------------------- cleanup

# A LIFO stack of shell snippets run on exit, so resources are released in the
# reverse order of acquisition (guest, then backend, then netns, then files)
# even when the script fails half-way or is interrupted.
TW_CLEANUPS=()

# Cleanups see the script's exit status in TW_EXIT_RC (e.g. to show logs only
# on failure) and should keep quiet otherwise.
TW_EXIT_RC=0
tw_at_exit() { TW_CLEANUPS+=("$1"); }

tw_run_cleanups() {
    local rc=$? i
    set +e
    trap - EXIT INT TERM
    TW_EXIT_RC=$rc
    # A command cut short by a signal in tw_interruptible must not outlive us.
    [[ -z $TW_FG_PID ]] || tw_stop "$TW_FG_PID" 3
    for ((i = ${#TW_CLEANUPS[@]} - 1; i >= 0; i--)); do
        eval "${TW_CLEANUPS[i]}"
    done
    TW_CLEANUPS=()
    exit "$rc"
}

tw_install_traps() {
    trap tw_run_cleanups EXIT
    # Turn signals into a normal exit so the EXIT trap does the cleanup once.
    trap 'exit 130' INT
    trap 'exit 143' TERM
}

# ---------------------------------------------------------------- processes

# tw_spawn LOGFILE CMD... : start CMD in the background with stdout/stderr in
# LOGFILE; its pid is left in TW_SPAWNED_PID (a function cannot return it via
# $(...) because the job would then belong to a subshell).
TW_SPAWNED_PID=
tw_spawn() {
    local log=$1; shift
    "$@" </dev/null >"$log" 2>&1 &
    TW_SPAWNED_PID=$!
}

# tw_interruptible CMD...: run CMD so that SIGTERM/SIGINT to the script take
# effect at once (bash runs traps only after a foreground child returns, but
# interrupts `wait`). Returns CMD's exit status.
TW_FG_PID=
tw_interruptible() {
    local rc=0
    "$@" &
    TW_FG_PID=$!
    wait "$TW_FG_PID" || rc=$?
    TW_FG_PID=
    return "$rc"
}

tw_alive() { [[ -n ${1:-} ]] && kill -0 "$1" 2>/dev/null; }

# tw_stop PID [GRACE_SECONDS]: SIGTERM, wait up to GRACE, then SIGKILL.
# Only ever called with pids this script started.
tw_stop() {
    local pid=$1 grace=${2:-5} i
    tw_alive "$pid" || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < grace * 10; i++)); do
        tw_alive "$pid" || break
        sleep 0.1
    done
    if tw_alive "$pid"; then kill -KILL "$pid" 2>/dev/null; fi
    wait "$pid" 2>/dev/null || true
}

# ---------------------------------------------------------------- netns

# tw_netns_create NAME: a fresh namespace with lo up, deleted on exit.
tw_netns_create() {
    local ns=$1
    if ip netns list | awk '{print $1}' | grep -qx -- "$ns"; then
        tw_die "network namespace $ns already exists"
    fi
    ip netns add "$ns"
    tw_at_exit "tw_netns_delete '$ns'"
    ip -n "$ns" link set lo up
}

# tw_netns_no_ipv6 NS: IPv6 off in NS, so the kernel sends nothing of its own (router
# solicitations) through a TAP being measured. Through /proc, not sysctl: procps may be missing.
tw_netns_no_ipv6() {
    ip netns exec "$1" sh -c 'for f in /proc/sys/net/ipv6/conf/all/disable_ipv6 /proc/sys/net/ipv6/conf/default/disable_ipv6; do
        [ ! -e "$f" ] || echo 1 >"$f" || exit 1; done'
}

# tw_pick_cpus: BACKEND_CPU and GUEST_CPU for the two sides of a measurement, on different
# cores when there are two.
tw_pick_cpus() {
    if (($(nproc) >= 2)); then BACKEND_CPU=1 GUEST_CPU=0; else BACKEND_CPU=0 GUEST_CPU=0; fi
}

# tw_netns_delete NAME: stop what still runs inside (only our own children can
# be there, the namespace is private to this run), then remove it; the TAPs in
# it go away with it.
tw_netns_delete() {
    local ns=$1 pid
    ip netns list 2>/dev/null | awk '{print $1}' | grep -qx -- "$ns" || return 0
    for pid in $(ip netns pids "$ns" 2>/dev/null); do
        tw_stop "$pid" 3
    done
    ip netns del "$ns" 2>/dev/null || true
}

# tw_netns_addr NS IFACE [ADDR/LEN]: give IFACE the host address and bring it up.
tw_netns_addr() {
    local ns=$1 ifc=$2 addr=${3:-$TW_HOST_IP/$TW_PREFIX_LEN}
    ip -n "$ns" addr replace "$addr" dev "$ifc"
    ip -n "$ns" link set "$ifc" up
}

tw_netns_has_link() { ip -n "$1" link show dev "$2" >/dev/null 2>&1; }

# ---------------------------------------------------------------- waiting

# tw_wait_until TIMEOUT PID DESC CMD...: poll CMD every 0.2 s. Returns 0 when
# CMD succeeds; dies when PID (if non-empty) exits or TIMEOUT seconds pass.
tw_wait_until() {
    local timeout=$1 pid=$2 desc=$3; shift 3
    local deadline=$((SECONDS + timeout))
    while ! "$@"; do
        if [[ -n $pid ]] && ! tw_alive "$pid"; then
            tw_warn "process $pid exited while waiting for $desc"
            return 2
        fi
        ((SECONDS < deadline)) || { tw_warn "timed out after ${timeout}s waiting for $desc"; return 1; }
        sleep 0.2
    done
}

tw_is_socket() { [[ -S $1 ]]; }

# tw_log_has FILE STRING: the (serial console) log contains STRING.
tw_log_has() { [[ -f $1 ]] && grep -aqF -- "$2" "$1"; }

# tw_wait_marker LOG MARKER TIMEOUT PID [FAIL_MARKER]
# Wait for a marker line on the guest console. Returns 0 when seen, 1 on
# timeout, 2 when PID (QEMU) died, 3 when FAIL_MARKER showed up first.
tw_wait_marker() {
    local log=$1 marker=$2 timeout=$3 pid=$4 fail=${5:-}
    local deadline=$((SECONDS + timeout))
    while :; do
        tw_log_has "$log" "$marker" && return 0
        if [[ -n $fail ]] && tw_log_has "$log" "$fail"; then return 3; fi
        tw_alive "$pid" || { tw_log_has "$log" "$marker" && return 0; return 2; }
        ((SECONDS < deadline)) || return 1
        sleep 0.2
    done
}

# tw_extract_between LOG BEGIN END: the lines strictly between the first
# BEGIN and the next END marker, with the serial console's CRs removed.
tw_extract_between() {
    tr -d '\r' <"$1" | awk -v b="$2" -v e="$3" '
        $0 == b && !done { on = 1; next }
        $0 == e && on    { on = 0; done = 1; next }
        on' 
}

# tw_tail_log FILE [LINES] [TITLE]: show the end of a log on stderr, indented.
tw_tail_log() {
    local f=$1 n=${2:-40} title=${3:-$1}
    [[ -s $f ]] || { printf '  (%s is empty or missing)\n' "$title" >&2; return 0; }
    printf -- '----- last %s lines of %s -----\n' "$n" "$title" >&2
    tr -d '\r' <"$f" | tail -n "$n" | sed 's/^/  | /' >&2
    printf -- '-----\n' >&2
}

# ---------------------------------------------------------------- ping

# The host may have iputils ping or only busybox; both are fine for this.
tw_ping_cmd() {
    if command -v ping >/dev/null 2>&1; then echo ping; else echo "busybox ping"; fi
}

# tw_ping_parse < PING_OUTPUT -> "TX RX LOSS_PCT MIN AVG MAX" ("-" when unknown).
# Understands iputils ("rtt min/avg/max/mdev = a/b/c/d ms") and busybox
# ("round-trip min/avg/max = a/b/c ms").
tw_ping_parse() {
    tr -d '\r' | awk '
        / packets transmitted/ {
            # The number right before "packets transmitted" / "(packets) received".
            tx = $0; sub(/ packets transmitted.*/, "", tx); sub(/.* /, "", tx)
            rx = $0; sub(/ (packets )?received.*/, "", rx); sub(/.* /, "", rx)
        }
        /min\/avg\/max/ {
            split($0, parts, "=")
            split(parts[2], v, "/")
            gsub(/[^0-9.]/, "", v[1]); gsub(/[^0-9.]/, "", v[2]); gsub(/[^0-9.]/, "", v[3])
            min = v[1]; avg = v[2]; max = v[3]
        }
        END {
            if (tx == "") { print "- - - - - -"; exit }
            loss = (tx > 0) ? 100 * (tx - rx) / tx : 100
            printf "%s %s %g %s %s %s\n", tx, rx, loss,
                   (min == "" ? "-" : min), (avg == "" ? "-" : avg), (max == "" ? "-" : max)
        }'
}

# ---------------------------------------------------------------- iperf3

# tw_iperf3_parse JSON_FILE -> "GBPS RETRANSMITS" on success; on failure prints
# the iperf3 error (or a reason) on stderr and returns 1.
# Uses the receiver's figure (end.sum_received), which is what reached the
# other side; retransmits come from the sender.
tw_iperf3_parse() {
    local json=$1 err bps rtx
    [[ -s $json ]] || { echo "no iperf3 output" >&2; return 1; }
    if ! jq -e . "$json" >/dev/null 2>&1; then
        echo "iperf3 output is not JSON: $(head -c 200 "$json")" >&2; return 1
    fi
    err=$(jq -r '.error // empty' "$json")
    [[ -z $err ]] || { echo "iperf3: $err" >&2; return 1; }
    bps=$(jq -r '.end.sum_received.bits_per_second // 0' "$json")
    rtx=$(jq -r '.end.sum_sent.retransmits // "-"' "$json")
    awk -v b="$bps" -v r="$rtx" 'BEGIN { printf "%.4f %s\n", b / 1e9, r }'
}

# tw_iperf3_run NS SERVER_IP SECONDS JSON_OUT [EXTRA_ARGS...]: one TCP run from
# inside NS. Returns iperf3's exit status; the JSON is kept for parsing.
tw_iperf3_run() {
    local ns=$1 server=$2 secs=$3 out=$4; shift 4
    # --connect-timeout keeps a dead guest from hanging us for minutes; the
    # outer timeout is a last resort if the transfer itself stalls.
    # On an early exit the netns cleanup stops the client (it runs in there).
    tw_interruptible timeout --kill-after=5 $((secs + 30)) \
        ip netns exec "$ns" iperf3 -c "$server" -t "$secs" --connect-timeout 5000 \
        --json "$@" >"$out" 2>"$out.stderr"
}

# tw_is_positive NUMBER: true when NUMBER parses as > 0.
tw_is_positive() { awk -v x="$1" 'BEGIN { exit !(x + 0 > 0) }'; }

# ---------------------------------------------------------------- QEMU

# Two QEMUs side by side: Debian 12's 7.2 is the system one; bookworm-backports' 10.0 (what
# Debian 13, Ubuntu 24.04+ and Fedora users run) is unpacked into this prefix by
# Tools/install-deps.sh, so both can be tested on one machine.
TW_QEMU10_PREFIX=${TAPWIRE_QEMU10_PREFIX:-/opt/qemu-10.0}

# tw_qemu_select WHICH: WHICH is 7.2, 10 (or 10.0), newest, or the path of a
# qemu-system-x86_64. Sets QEMU_BIN, QEMU_DATA (its -L options: the prefix's data first, then
# the system's firmware, which the prefix lacks), QEMU_VERSION (e.g. 10.0.2) and QEMU_MAJOR.
tw_qemu_select() {
    local which=$1 q10=$TW_QEMU10_PREFIX/usr/bin/qemu-system-x86_64
    QEMU_DATA=()
    case $which in
        7.2 | 7) QEMU_BIN=/usr/bin/qemu-system-x86_64 ;;
        10 | 10.0) QEMU_BIN=$q10 ;;
        newest) if [[ -x $q10 ]]; then QEMU_BIN=$q10; else QEMU_BIN=/usr/bin/qemu-system-x86_64; fi ;;
        /*) QEMU_BIN=$which ;;
        *) tw_die "--qemu takes 7.2, 10, newest or a path, not '$which'" ;;
    esac
    [[ -x $QEMU_BIN ]] || tw_die "no QEMU at $QEMU_BIN (Tools/install-deps.sh installs 7.2 and 10.0)"
    if [[ $QEMU_BIN == "$TW_QEMU10_PREFIX"/* ]]; then
        QEMU_DATA=(-L "$TW_QEMU10_PREFIX/usr/share/qemu" -L /usr/share/qemu)
    fi
    QEMU_VERSION=$("$QEMU_BIN" --version | awk 'NR == 1 { print $4 }')
    QEMU_MAJOR=${QEMU_VERSION%%.*}
    [[ $QEMU_MAJOR =~ ^[0-9]+$ ]] || tw_die "cannot read the version of $QEMU_BIN"
}

# tw_qemu_nic_options: virtio-net-pci options this QEMU needs under TCG. QEMU 7.2 crashes in
# msix_set_vector_notifiers when a vhost-user NIC starts under TCG unless MSI-X is off
# (vectors=0); QEMU 10 runs it with MSI-X.
tw_qemu_nic_options() {
    if ((QEMU_MAJOR < 8)); then echo ",vectors=0"; fi
}

# ---------------------------------------------------------------- guest

# Where Tools/guest-image.sh leaves the kernel and initramfs.
tw_guest_dir() { echo "${TAPWIRE_GUEST_DIR:-/var/tmp/tapwire-guest}"; }

# ---------------------------------------------------------------- benchmarks

# tw_ensure_release_tools TAPWIRE PERF: builds release tapwire and tapwire-perf if missing.
tw_ensure_release_tools() {
    if [[ ! -x $1 || ! -x $2 ]]; then
        tw_log "building release tapwire and tapwire-perf"
        (cd "$TW_REPO_ROOT" && swift build -c release --product tapwire >&2 && swift build -c release --product tapwire-perf >&2) ||
            tw_die "release build failed"
    fi
    [[ -x $1 ]] || tw_die "no tapwire binary at $1"
    [[ -x $2 ]] || tw_die "no tapwire-perf binary at $2"
}

# tw_set_nice N: what the measured processes are started under (NICE, a command prefix), with
# the value in NICE_VALUE; e.g. -19 on a machine busy with other work, so the measured processes
# get nearly all of their cores. Each gets its own session, hence its own scheduler autogroup,
# at nice N: with autogroups (the default) plain nice only ranks processes within one session
# and would not help against other sessions' load.
tw_set_nice() {
    # shellcheck disable=SC2016 # $0 and $@ belong to the inner sh
    NICE=(setsid sh -c 'echo "$0" >/proc/self/autogroup 2>/dev/null; exec nice -n "$0" "$@"' "$1")
    NICE_VALUE=$1
}

# tw_measure_at_nice N: with --nice, the script reads its counters at the same priority as
# what it measures (else its own reads can lag by seconds behind busy-polling processes): its
# session's autogroup gets the nice value for the run and its old one back at exit.
tw_measure_at_nice() {
    [[ -w /proc/$$/autogroup ]] || return 0
    local old
    old=$(awk '{ print $NF }' "/proc/$$/autogroup")
    echo "$1" >"/proc/$$/autogroup"
    tw_at_exit "echo '$old' >'/proc/$$/autogroup' 2>/dev/null || true"
    renice -n "$1" -p $$ >/dev/null
}

# ---------------------------------------------------------------- daemons

# tw_pid_alive PID: PID exists and is not a zombie. For daemons started with -d (libvirtd,
# virtlogd): they are not our children, and PID 1 may be slow to reap them.
tw_pid_alive() {
    [[ -n ${1:-} && -r /proc/$1/stat ]] || return 1
    local state
    state=$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1) || return 1
    [[ -n $state && $state != Z ]]
}

# tw_stop_daemon PID GRACE: SIGTERM, then SIGKILL after GRACE seconds, for a daemon this script
# started that is not its child (tw_stop waits for children).
tw_stop_daemon() {
    local pid=$1 grace=$2 i
    tw_pid_alive "$pid" || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < grace * 10; i++)); do
        tw_pid_alive "$pid" || return 0
        sleep 0.1
    done
    tw_warn "pid $pid ignored SIGTERM for ${grace}s; killing it"
    kill -KILL "$pid" 2>/dev/null || true
}

# tw_wait_held_guest LOG PID LABEL: waits (up to 180 s) until the `Tools/e2e.sh --hold` run
# PID, logging to LOG, holds its guest; prints the guest's network namespace.
tw_wait_held_guest() {
    local log=$1 pid=$2 label=$3 ns= i
    for ((i = 0; i < 180; i++)); do
        ns=$(sed -n 's/.*holding guest and backend .*(netns \([^,]*\),.*/\1/p' "$log")
        [[ -n $ns ]] && break
        kill -0 "$pid" 2>/dev/null || { cat "$log" >&2; tw_die "e2e.sh exited before the guest was up ($label)"; }
        sleep 1
    done
    [[ -n $ns ]] || { kill "$pid"; tw_die "guest not up after 180 s ($label)"; }
    echo "$ns"
}

# tw_task_counters PID: "CPU_NS WAKEUPS WAIT_NS" summed over the process's threads: time on a
# CPU and time runnable but waiting for one (schedstat fields 1 and 2), and voluntary context
# switches (each is a thread that slept and was woken again). Exited threads are not counted.
tw_task_counters() {
    local sched wakeups cpu wait
    sched=$(cat "/proc/$1"/task/*/schedstat 2>/dev/null | awk '{ c += $1; w += $2 } END { printf "%.0f %.0f", c, w }')
    wakeups=$(cat "/proc/$1"/task/*/status 2>/dev/null | awk '/^voluntary_ctxt_switches/ { s += $2 } END { printf "%.0f", s }')
    read -r cpu wait <<<"${sched:-0 0}"
    echo "${cpu:-0} ${wakeups:-0} ${wait:-0}"
}

# tw_require_guest_files DIR FILE...: dies unless the guest image in DIR has each
# /etc/tapwire/FILE. The listing is read whole first: `grep -q` ending a zcat | cpio pipeline
# early would kill them with SIGPIPE, which pipefail reports as a failure.
tw_require_guest_files() {
    local dir=$1 listing f
    shift
    listing=$(zcat "$dir/initramfs.cpio.gz" | cpio -t --quiet 2>/dev/null) ||
        tw_die "cannot list the guest image $dir/initramfs.cpio.gz (Tools/guest-image.sh --force $dir)"
    for f in "$@"; do
        grep -qx "etc/tapwire/$f" <<<"$listing" ||
            tw_die "the guest image lacks /etc/tapwire/$f (Tools/guest-image.sh --force $dir)"
    done
}
