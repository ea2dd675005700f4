#!/usr/bin/env bash
# The Debian package as an operator meets it: build tapwire_VERSION_amd64.deb (or take one),
# lintian, install it with apt-get, check what it installed (binaries, manual pages,
# completions, systemd units, QEMU's vhost-user descriptor), `systemd-analyze verify` and
# `security` on the installed units, then real QEMU guests through /usr/bin/tapwire: one
# started the way tapwire@.socket starts it (systemd-socket-activate -l SOCKET
# /usr/bin/tapwire --config FILE: socket activation, options from a JSON file), one plain
# (Tools/e2e.sh --tapwire /usr/bin/tapwire); ping and iperf3 both ways through the TAP each
# time. Last, `dpkg --purge tapwire` and a check that nothing it installed is left.
#
# Usage: Tools/package-check.sh [options]
#   --deb FILE         check this .deb (default: build one with Tools/packaging/build-deb.sh)
#   --qemu WHICH       QEMU for the guests: 7.2, 10, newest or a path (default newest)
#   --time SECONDS     iperf3 duration per direction (default 3)
#   --out DIR          run directory (default /var/tmp/tapwire-package/<time>)
# Prints one `ROW check="..." result=PASS|FAIL ...` line per check and "N passed, N failed";
# exits 0 when every check passed. Needs root (it installs a package, makes TAPs and netns).
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"
TW_LOG_PREFIX=package-check

usage() { sed -n '2,/^set -euo/s/^# \{0,1\}//p' "$0" | sed '$d'; }

DEB=
QEMU_WHICH=${TAPWIRE_QEMU:-newest}
IPERF_TIME=3
RUN_DIR=
need_arg() { (($# >= 2)) || tw_die "$1 needs a value"; }
while (($#)); do
    case $1 in
        --deb) need_arg "$@"; DEB=$2; shift ;;
        --qemu) need_arg "$@"; QEMU_WHICH=$2; shift ;;
        --time) need_arg "$@"; IPERF_TIME=$2; shift ;;
        --out) need_arg "$@"; RUN_DIR=$2; shift ;;
        -h | --help) usage; exit 0 ;;
        *) usage >&2; tw_die "unknown argument: $1" ;;
    esac
    shift
done
[[ $IPERF_TIME =~ ^[0-9]+$ && $IPERF_TIME -gt 0 ]] || tw_die "--time must be a positive integer"
tw_require_root

T0=$(tw_now)
tw_ensure_packages lintian:lintian systemd-analyze:systemd systemd-socket-activate:systemd \
    man:man-db dpkg-shlibdeps:dpkg-dev jq:jq bash:bash

RUN_DIR=${RUN_DIR:-/var/tmp/tapwire-package/$(date +%Y%m%d-%H%M%S)-$$}
mkdir -p "$RUN_DIR"
RUN_DIR=$(cd "$RUN_DIR" && pwd)
tw_install_traps

PASSED=0 FAILED=0
# row CHECK PASS|FAIL [KEY=VALUE...]
row() {
    local check=$1 result=$2; shift 2
    echo "ROW check=\"$check\" result=$result${*:+ $*}"
    if [[ $result == PASS ]]; then PASSED=$((PASSED + 1)); else FAILED=$((FAILED + 1)); fi
}
# expect CHECK CMD...: one row from CMD's exit status; CMD's output goes to checks.log and,
# when it fails, to stderr.
expect() {
    local check=$1 out rc=0; shift
    out=$(mktemp)
    "$@" >"$out" 2>&1 || rc=$?
    { echo "== $check (exit $rc)"; cat "$out"; } >>"$RUN_DIR/checks.log"
    if ((rc == 0)); then row "$check" PASS; else tw_tail_log "$out" 20 "$check"; row "$check" FAIL; fi
    rm -f "$out"
}
finish() {
    echo "package-check: $PASSED passed, $FAILED failed ($(tw_elapsed "$T0")s, run directory $RUN_DIR)"
    ((FAILED == 0))
}

# ---------------------------------------------------------------- the .deb

if [[ -z $DEB ]]; then
    tw_log "building the .deb (Tools/packaging/build-deb.sh; several minutes)"
    if DEB=$("$TW_REPO_ROOT/Tools/packaging/build-deb.sh" 2> >(tee "$RUN_DIR/build-deb.log" | grep -v ': warning:' >&2)); then
        row "build the .deb (Tools/packaging/build-deb.sh)" PASS "deb=$DEB"
    else
        row "build the .deb (Tools/packaging/build-deb.sh)" FAIL "log=$RUN_DIR/build-deb.log"
        finish; exit 1
    fi
fi
[[ -f $DEB ]] || tw_die "no such .deb: $DEB"
DEB=$(cd "$(dirname "$DEB")" && pwd)/$(basename "$DEB")
VERSION=$(dpkg-deb -f "$DEB" Version)
tw_log "checking $DEB (tapwire $VERSION)"

# ---------------------------------------------------------------- lintian

# Errors fail the check; warnings (and everything else) are shown.
lint_rc=0
lintian --fail-on error --display-info --tag-display-limit 0 "$DEB" >"$RUN_DIR/lintian.txt" 2>&1 || lint_rc=$?
if [[ -s $RUN_DIR/lintian.txt ]]; then
    tw_log "lintian says:"; sed 's/^/  /' "$RUN_DIR/lintian.txt" >&2
fi
errors=$(grep -c '^E: ' "$RUN_DIR/lintian.txt" || true)
warnings=$(grep -c '^W: ' "$RUN_DIR/lintian.txt" || true)
if ((lint_rc == 0 && errors == 0)); then
    row "lintian: no errors" PASS "errors=$errors warnings=$warnings"
else
    row "lintian: no errors" FAIL "errors=$errors warnings=$warnings exit=$lint_rc"
fi

# ---------------------------------------------------------------- install

if dpkg-query -W -f '${db:Status-Abbrev}' tapwire 2>/dev/null | grep -q '^.[iUFHWt]'; then
    tw_warn "tapwire is already installed ($(dpkg-query -W -f '${Version}' tapwire)): purging it first"
    dpkg --purge tapwire >&2
fi
# Who exists before the package, to tell afterwards that it left no user or group behind.
# (Only names with "tapwire" in them: other software may add its own meanwhile.)
our_accounts() { { getent passwd; getent group; } | cut -d: -f1 | grep tapwire | sort || true; }
our_accounts >"$RUN_DIR/accounts-before"
# Files named like the package's, wherever it could put something (the repo's own apt source,
# say, was there before and stays).
our_names() {
    find /etc /lib/systemd /usr/lib/systemd /usr/share/doc /usr/share/man /usr/share/qemu \
        /usr/share/bash-completion /usr/share/zsh /var/lib/dpkg/info /var/lib/systemd -xdev \
        \( -name 'tapwire*' -o -name '_tapwire*' -o -name '50-tapwire.json' \) 2>/dev/null | sort || true
}
our_names >"$RUN_DIR/names-before"
# However this run ends, the package does not stay installed.
tw_at_exit "if dpkg -s tapwire >/dev/null 2>&1; then dpkg --purge tapwire >/dev/null 2>&1 || true; fi"

if DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$DEB" >"$RUN_DIR/install.log" 2>&1 &&
    [[ $(dpkg-query -W -f '${Status} ${Version}' tapwire) == "install ok installed $VERSION" ]]; then
    row "install with apt-get install ./tapwire_${VERSION}_*.deb" PASS
else
    tw_tail_log "$RUN_DIR/install.log" 20
    row "install with apt-get install ./tapwire_${VERSION}_*.deb" FAIL "log=$RUN_DIR/install.log"
    finish; exit 1
fi
dpkg -L tapwire | sort >"$RUN_DIR/installed-paths"

# ---------------------------------------------------------------- installed files

binaries_ok() {
    local p
    for p in tapwire tapwirectl tapwire-perf; do
        [[ -x /usr/bin/$p ]] || { echo "no /usr/bin/$p"; return 1; }
        # Only Debian's libraries (the Swift runtime is linked in).
        if ldd "/usr/bin/$p" | grep -Eq 'not found|/opt/|libswift'; then ldd "/usr/bin/$p"; return 1; fi
        "/usr/bin/$p" --help >/dev/null || { echo "$p --help failed"; return 1; }
    done
    [[ $(/usr/bin/tapwire --version) == "$VERSION" ]] || { echo "tapwire --version: $(/usr/bin/tapwire --version)"; return 1; }
    /usr/bin/tapwire --print-capabilities | jq -e '.type == "net"' >/dev/null
}
expect "binaries: tapwire, tapwirectl, tapwire-perf run, only Debian libraries, --version $VERSION" binaries_ok

manuals_ok() {
    local p out
    for p in tapwire tapwirectl tapwire-perf; do
        out=$(MANWIDTH=80 man -l "/usr/share/man/man1/$p.1.gz" 2>&1) || { echo "$out"; return 1; }
        grep -q '^NAME' <<<"$out" && grep -q -- "--help" <<<"$out" || { echo "$p.1: $out" | head; return 1; }
        # man-db's index finds it by name too.
        [[ $(man -w "$p") == "/usr/share/man/man1/$p.1.gz" ]] || { echo "man -w $p: $(man -w "$p" 2>&1)"; return 1; }
    done
    MANWIDTH=80 man -l /usr/share/man/man1/tapwire.1.gz | grep -q -- '--socket-path'
}
expect "manual pages: man -l and man -w for all three" manuals_ok

completions_ok() {
    local p
    for p in tapwire tapwirectl tapwire-perf; do
        # bash: the script defines the completion; a completion of "--so" offers --socket-path.
        bash -c ". /usr/share/bash-completion/completions/$p && complete -p $p" >/dev/null || return 1
        head -n 1 "/usr/share/zsh/vendor-completions/_$p" | grep -qx "#compdef $p" || { echo "_$p: no #compdef"; return 1; }
        if command -v zsh >/dev/null; then zsh -n "/usr/share/zsh/vendor-completions/_$p" || return 1; fi
    done
    # shellcheck disable=SC2016 # expanded by the inner bash
    bash -c '. /usr/share/bash-completion/completions/tapwire
        COMP_WORDS=(tapwire --socket-p); COMP_CWORD=1; COMP_LINE="tapwire --socket-p"; COMP_POINT=${#COMP_LINE}
        f=$(complete -p tapwire | sed -n "s/.*-F \([^ ]*\).*/\1/p"); "$f" tapwire --socket-p tapwire
        printf "%s\n" "${COMPREPLY[@]}"' | grep -qx -- '--socket-path'
}
expect "completions: bash (completes --socket-path) and zsh (#compdef) for all three" completions_ok

UNIT_DIR=
for d in /lib/systemd/system /usr/lib/systemd/system; do
    if grep -qx "$d/tapwire@.service" "$RUN_DIR/installed-paths"; then UNIT_DIR=$d; fi
done
units_ok() {
    [[ -n $UNIT_DIR && -f $UNIT_DIR/tapwire@.service && -f $UNIT_DIR/tapwire@.socket ]] || return 1
    grep -q '^ExecStart=/usr/bin/tapwire --config /etc/tapwire/%i.json$' "$UNIT_DIR/tapwire@.service" &&
        grep -q '^ListenStream=/run/tapwire/%i.sock$' "$UNIT_DIR/tapwire@.socket" &&
        jq -e . /etc/tapwire/example.json >/dev/null &&
        grep -qx /etc/tapwire/example.json < <(dpkg-query -W -f '${Conffiles}\n' tapwire | awk '{ print $1 }')
}
expect "units: tapwire@.service and tapwire@.socket installed, /etc/tapwire/example.json a conffile" units_ok

descriptor_ok() {
    local f=/usr/share/qemu/vhost-user/50-tapwire.json bin
    jq -e '.type == "net" and (.description | type == "string") and (.binary | type == "string")' "$f" >/dev/null || return 1
    bin=$(jq -r .binary "$f")
    [[ $bin == /* && -x $bin ]] || { echo "binary $bin is not an executable"; return 1; }
    # The spec's convention: the binary answers --print-capabilities with its type.
    "$bin" --print-capabilities | jq -e '.type == "net"' >/dev/null
}
expect "descriptor: /usr/share/qemu/vhost-user/50-tapwire.json, type net, binary exists, --print-capabilities" descriptor_ok

# ---------------------------------------------------------------- systemd-analyze

# verify: loads the units as systemd would (on a machine without systemd as PID 1 too).
# Messages about other packages' units (say libvirt's, newer than this systemd) are not ours.
verify_rc=0
systemd-analyze verify "$UNIT_DIR/tapwire@.socket" "$UNIT_DIR/tapwire@.service" >"$RUN_DIR/verify.txt" 2>&1 || verify_rc=$?
ours=$(grep -c 'tapwire' "$RUN_DIR/verify.txt" || true)
if ((verify_rc == 0 && ours == 0)); then
    row "systemd-analyze verify tapwire@.socket tapwire@.service" PASS
else
    sed 's/^/  /' "$RUN_DIR/verify.txt" >&2
    row "systemd-analyze verify tapwire@.socket tapwire@.service" FAIL "exit=$verify_rc messages=$ours"
fi

security_rc=0
systemd-analyze security --offline=true "$UNIT_DIR/tapwire@.service" >"$RUN_DIR/security.txt" 2>&1 || security_rc=$?
exposure=$(sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p' "$RUN_DIR/security.txt")
if ((security_rc == 0)) && [[ -n $exposure ]] && awk -v e="$exposure" 'BEGIN { exit !(e <= 3.0) }'; then
    row "systemd-analyze security --offline: exposure at most 3.0" PASS "exposure=$exposure"
else
    tw_tail_log "$RUN_DIR/security.txt" 20
    row "systemd-analyze security --offline: exposure at most 3.0" FAIL "exposure=${exposure:--} exit=$security_rc"
fi

# ---------------------------------------------------------------- real guests

tw_qemu_select "$QEMU_WHICH"
# guest_row CHECK NAME E2E-ARGS...: one Tools/e2e.sh run; extra checks on its tapwire log come
# from the caller through E2E_LOG (the run's tapwire.log) afterwards.
E2E_LOG= E2E_RESULT=
guest_row() {
    local check=$1 name=$2; shift 2
    local out=$RUN_DIR/$name json=$RUN_DIR/$name.json figures
    E2E_LOG=$out/tapwire.log
    E2E_RESULT=PASS
    tw_log "$check"
    tw_interruptible "$TW_REPO_ROOT/Tools/e2e.sh" --backend tapwire --qemu "$QEMU_WHICH" --time "$IPERF_TIME" \
        --out "$out" --json "$@" >"$json" || E2E_RESULT=FAIL
    figures=$(jq -r '"h2g_gbps=\(.iperf3_host_to_guest.gbps) g2h_gbps=\(.iperf3_guest_to_host.gbps) ping_h2g_ms=\(.ping_host_to_guest_ms.avg) ping_g2h_ms=\(.ping_guest_to_host_ms.avg) boot_s=\(.boot_seconds)"' \
        "$json" 2>/dev/null || echo "results=none")
    E2E_FIGURES="qemu=$QEMU_VERSION $figures"
}

# The way tapwire@vm.socket runs it: the socket made by someone else and handed over as fd 3
# (LISTEN_FDS=1, LISTEN_PID), every option from a JSON config file, none on the command line.
CONFIG=$RUN_DIR/twpkg.json
jq -n '{tap: "twpkg0", name: "twpkg-activated", "log-level": "info", "tx-poll": 300}' >"$CONFIG"
guest_row "socket activation: systemd-socket-activate -l SOCKET /usr/bin/tapwire --config FILE, a QEMU guest" activated \
    --tap twpkg0 --launcher "systemd-socket-activate -l {socket} /usr/bin/tapwire --config $CONFIG"
if [[ $E2E_RESULT == PASS ]] && ! grep -q 'listening on inherited fd 3' "$E2E_LOG"; then
    tw_warn "tapwire did not log 'listening on inherited fd 3': it did not take the activated socket"
    E2E_RESULT=FAIL
fi
if [[ $E2E_RESULT == PASS ]] && ! grep -q 'twpkg-activated' "$E2E_LOG"; then
    tw_warn "tapwire's log does not name the VM twpkg-activated: the config file was not read"
    E2E_RESULT=FAIL
fi
[[ $E2E_RESULT == PASS ]] || tw_tail_log "$E2E_LOG" 20 "tapwire log (socket activation)"
row "socket activation (systemd-socket-activate, --config): ping and iperf3 both ways" "$E2E_RESULT" "$E2E_FIGURES"

guest_row "plain: Tools/e2e.sh --tapwire /usr/bin/tapwire" plain --tap twpkg1 --tapwire /usr/bin/tapwire
row "Tools/e2e.sh --tapwire /usr/bin/tapwire: ping and iperf3 both ways" "$E2E_RESULT" "$E2E_FIGURES"

# ---------------------------------------------------------------- removal

running_from_package() {
    local exe pid
    for exe in /proc/[0-9]*/exe; do
        [[ $(readlink "$exe" 2>/dev/null) == /usr/bin/tapwire* ]] || continue
        pid=${exe#/proc/}; echo "${pid%/exe}"
    done
}
left=$(running_from_package)
[[ -z $left ]] || tw_warn "processes still running /usr/bin/tapwire*: $left"

purge_rc=0
dpkg --purge tapwire >"$RUN_DIR/purge.log" 2>&1 || purge_rc=$?
leftovers() {
    local path
    ((purge_rc == 0)) || { cat "$RUN_DIR/purge.log"; return 1; }
    if dpkg-query -W -f '${db:Status-Abbrev}' tapwire 2>/dev/null | grep -q '^.[^n]'; then
        echo "dpkg still knows tapwire: $(dpkg-query -W -f '${Status}' tapwire)"; return 1
    fi
    # Every path the package had: files gone; folders gone unless another package owns them
    # (or other files still live in them).
    while IFS= read -r path; do
        [[ -n $path && $path != /. ]] || continue
        # (A folder may be a symlink to one, as /lib is on a merged-/usr system.)
        if [[ -d $path ]]; then
            if ! dpkg -S "$path" >/dev/null 2>&1 && [[ -z $(ls -A "$path") ]]; then
                echo "left behind (empty folder): $path"
            fi
        elif [[ -e $path || -L $path ]]; then
            echo "left behind: $path"
        fi
    done <"$RUN_DIR/installed-paths" | tee "$RUN_DIR/leftovers.txt"
    [[ ! -s $RUN_DIR/leftovers.txt ]] || return 1
    # Nothing new under the names the package uses (units, enablement links, dpkg's records).
    local found
    found=$(comm -13 "$RUN_DIR/names-before" <(our_names))
    [[ -z $found ]] || { echo "left behind: $found"; return 1; }
    [[ ! -e /usr/bin/tapwire && ! -e /usr/bin/tapwirectl && ! -e /usr/bin/tapwire-perf ]] || return 1
    # No user or group was made (or left).
    diff <(our_accounts) "$RUN_DIR/accounts-before" || return 1
    ! man -w tapwire >/dev/null 2>&1 || { echo "man still finds tapwire"; return 1; }
}
expect "dpkg --purge tapwire: nothing it installed is left (files, units, conffiles, users, groups)" leftovers
[[ ! -s $RUN_DIR/leftovers.txt ]] || sed 's/^/  /' "$RUN_DIR/leftovers.txt" >&2

finish
