#!/usr/bin/env bash
# Live migration of a running guest between two vhost-user backends, back and forth, under load.
#
# Same host (the default): one network namespace plays the host network: a Linux bridge with
# the host address, and two backends (two tapwire processes with the same options, each with
# its own vhost-user socket and TAP, both TAPs in the bridge). A QEMU 10 guest boots on the
# first; a destination QEMU (the same command line plus -incoming defer, its chardev on the
# other backend) is started, the guest migrates to it over a unix socket (migrate-incoming /
# migrate over QMP, max-bandwidth raised first), the old QEMU quits, and so on: the guest goes
# back and forth --round-trips times (2 migrations each), each backend serving a fresh QEMU
# every other migration. Meanwhile three things run the whole time:
#   1. a host->guest TCP stream of deterministic bytes (python3, seeded, paced at
#      --stream-rate), hashed in the guest (nc | sha256sum): a receive buffer the backend
#      wrote during the migration but did not mark dirty arrives stale, and since the guest
#      trusts offloaded checksums it shows only as a different hash;
#   2. guest->host iperf3 (from the guest, Fixtures/guest/mig-guest.sh);
#   3. a 10 ms ping from the host network to the guest; its longest gap between two replies
#      around each migration is that migration's ping gap.
# Checks, per migration: it reaches "completed" (QEMU's downtime and total time reported),
# the new QEMU runs and the old one quits; the backend that lost its QEMU is still alive and
# idle and serves the next one (tapwire: API state, queues running, no fault, connection
# counts); the guest answers the ping after the switch-over (if not, the rings' indexes as
# guest memory holds them go to diagnosis-K.txt, and the run stops there); the guest's announce
# (gratuitous ARP, or the backend's RARP) is seen on the bridge. At the end: the stream's hash
# matches, the stream and every iperf3 session completed (exit 0), and the longest ping gap of
# any migration is under --max-gap-ms.
#
# --two-hosts: two namespaces as two hosts, each with its own bridge and backend, joined by a
# veth underlay between the bridges; a third namespace (the client, on host A's bridge through
# its own veth) runs the ping, the stream and the iperf3 server. QEMU stays in the root
# namespace (the migration stream is a unix socket). After each migration the client must
# reach the guest at its new host: the guest's announce (VIRTIO_NET_F_GUEST_ANNOUNCE: a
# gratuitous ARP; SEND_RARP otherwise) moves the guest MAC in both bridges' FDBs (`bridge
# fdb`, shown before and after the first round trip, checked after every migration).
#
# --backend dpdk: the same with DPDK's vhost PMD + TAP PMD (dpdk-testpmd, io forwarding) as
# the two backends. Each testpmd busy-polls a core: on a 2-core machine the two of them and
# the TCG QEMUs share the cores, so keep these runs short (default 3 round trips).
# --compare: tapwire, then DPDK, with the same settings; prints a table.
#
# Usage: Tools/migration-check.sh [options]
#   --round-trips N        back-and-forth trips, 2 migrations each (default 10; 3 with
#                          --backend dpdk, --two-hosts or --compare)
#   --two-hosts            the two-host topology above
#   --backend tapwire|dpdk backends to migrate between (default tapwire)
#   --compare              run tapwire, then dpdk, same settings; print a table
#   --tapwire BIN          tapwire binary (default $TAPWIRE_BIN or .build/release/tapwire)
#   --tapwire-args "ARGS"  extra options for both tapwire processes (word-split)
#   --log-level LEVEL      tapwire's --log-level (default info; debug/trace to investigate)
#   --mem SIZE             guest memory (default 512M)
#   --stream-rate BYTES/S  pace of the host->guest stream (default 4000000)
#   --iperf-args "ARGS"    extra guest iperf3 client options, e.g. "-b 500M" (default none)
#   --nic-args ",OPT=V..." appended to the virtio-net-pci device on every hop, e.g.
#                          ",event_idx=off"
#   --max-bandwidth B/S    QEMU migrate-set-parameters max-bandwidth (default 4294967296)
#   --dwell SECONDS        time on each host between migrations (default 1)
#   --hop-seconds S        expected seconds per migration, to size the guest's iperf3 run
#                          (default 5; further 10 s sessions run if the migrations take longer)
#   --max-gap-ms MS        the ping gap target each migration must meet (default 1000)
#   --migrate-timeout S    give up on one migration after this long (default 120)
#   --boot-timeout S       wait for the guest (default 120)
#   --out DIR              logs and results (default /var/tmp/tapwire-migration/<time>-...)
#   --guest-dir DIR        guest image (default $TAPWIRE_GUEST_DIR or /var/tmp/tapwire-guest)
#   --summary FILE         also write the run's summary as JSON to FILE (used by --compare)
# Output: one "ROW ..." line per migration and per check on stdout, then the figures and
# "N passed, N failed".
# Exit status: 0 when every check passed; on failure the ends of the backends', QEMUs' and
# the guest console's logs go to stderr.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

usage() { sed -n '2,/^# Exit status/s/^# \{0,1\}//p' "$0"; }

ORIG_ARGS=("$@")
ROUND_TRIPS=
TWO_HOSTS=0
BACKEND=tapwire
COMPARE=0
TAPWIRE=${TAPWIRE_BIN:-$TW_REPO_ROOT/.build/release/tapwire}
TAPWIRE_ARGS=
LOG_LEVEL=info
MEM=512M
STREAM_RATE=4000000
IPERF_ARGS=
NIC_EXTRA=
MAX_BW=4294967296
DWELL=1
HOP_SECONDS=5
MAX_GAP_MS=1000
MIGRATE_TIMEOUT=120
BOOT_TIMEOUT=120
RUN_DIR=
GUEST_DIR=$(tw_guest_dir)
SUMMARY=

need_arg() { (($# >= 2)) || tw_die "$1 needs a value"; }
while (($#)); do
    case $1 in
        --round-trips) need_arg "$@"; ROUND_TRIPS=$2; shift ;;
        --two-hosts) TWO_HOSTS=1 ;;
        --backend) need_arg "$@"; BACKEND=$2; shift ;;
        --compare) COMPARE=1 ;;
        --tapwire) need_arg "$@"; TAPWIRE=$2; shift ;;
        --tapwire-args) need_arg "$@"; TAPWIRE_ARGS=$2; shift ;;
        --log-level) need_arg "$@"; LOG_LEVEL=$2; shift ;;
        --mem) need_arg "$@"; MEM=$2; shift ;;
        --stream-rate) need_arg "$@"; STREAM_RATE=$2; shift ;;
        --iperf-args) need_arg "$@"; IPERF_ARGS=$2; shift ;;
        --nic-args) need_arg "$@"; NIC_EXTRA=$2; shift ;;
        --max-bandwidth) need_arg "$@"; MAX_BW=$2; shift ;;
        --dwell) need_arg "$@"; DWELL=$2; shift ;;
        --hop-seconds) need_arg "$@"; HOP_SECONDS=$2; shift ;;
        --max-gap-ms) need_arg "$@"; MAX_GAP_MS=$2; shift ;;
        --migrate-timeout) need_arg "$@"; MIGRATE_TIMEOUT=$2; shift ;;
        --boot-timeout) need_arg "$@"; BOOT_TIMEOUT=$2; shift ;;
        --out) need_arg "$@"; RUN_DIR=$2; shift ;;
        --guest-dir) need_arg "$@"; GUEST_DIR=$2; shift ;;
        --summary) need_arg "$@"; SUMMARY=$2; shift ;;
        -h | --help) usage; exit 0 ;;
        *) usage >&2; tw_die "unknown argument: $1" ;;
    esac
    shift
done

case $BACKEND in tapwire | dpdk) ;; *) tw_die "--backend must be tapwire or dpdk, not '$BACKEND'" ;; esac
if [[ -z $ROUND_TRIPS ]]; then
    if [[ $BACKEND == dpdk || $TWO_HOSTS == 1 || $COMPARE == 1 ]]; then ROUND_TRIPS=3; else ROUND_TRIPS=10; fi
fi
for v in ROUND_TRIPS STREAM_RATE MAX_BW HOP_SECONDS MAX_GAP_MS MIGRATE_TIMEOUT BOOT_TIMEOUT; do
    [[ ${!v} =~ ^[0-9]+$ && ${!v} -gt 0 ]] || tw_die "--$(echo "$v" | tr '[:upper:]_' '[:lower:]-') must be a positive integer"
done
[[ $DWELL =~ ^[0-9]+(\.[0-9]+)?$ ]] || tw_die "--dwell must be a number of seconds"
[[ $MEM =~ ^[0-9]+[MG]$ ]] || tw_die "--mem must look like 512M or 1G"
MIGRATIONS=$((2 * ROUND_TRIPS))

tw_require_root

# ================================================================ --compare

if ((COMPARE)); then
    # Each backend in a run of its own (its own cleanup), same options; then the table.
    pass_args=()
    skip=0
    for a in "${ORIG_ARGS[@]}"; do
        if ((skip)); then skip=0; continue; fi
        case $a in
            --compare) ;;
            --backend | --summary | --out | --round-trips) skip=1 ;;
            *) pass_args+=("$a") ;;
        esac
    done
    CMP_DIR=$(mktemp -d /tmp/tw-mig-cmp.XXXXXX)
    trap 'rm -rf "$CMP_DIR"' EXIT
    rcs=()
    for be in tapwire dpdk; do
        tw_log "==== --compare: $be, $ROUND_TRIPS round trips"
        rc=0
        "$0" "${pass_args[@]}" --backend "$be" --round-trips "$ROUND_TRIPS" --summary "$CMP_DIR/$be.json" || rc=$?
        rcs+=("$rc")
    done
    echo
    echo "| backend | mode | migrations | completed | median / max downtime (ms) | median / max ping gap (ms) | hash ok | checks |"
    echo "|---|---|---|---|---|---|---|---|"
    passed=0 failed=0
    for be in tapwire dpdk; do
        f=$CMP_DIR/$be.json
        if [[ -s $f ]]; then
            jq -r '"| \(.backend) | \(.mode) | \(.migrations) | \(.completed) | \(.downtime_median_ms) / \(.downtime_max_ms) | \(.gap_median_ms) / \(.gap_max_ms) | \(.hash_ok) | \(.passed) passed, \(.failed) failed |"' "$f"
            passed=$((passed + $(jq -r .passed "$f"))) failed=$((failed + $(jq -r .failed "$f")))
        else
            echo "| $be | - | - | - | - | - | - | run failed before its summary |"
            failed=$((failed + 1))
        fi
    done
    echo
    echo "$passed passed, $failed failed"
    for rc in "${rcs[@]}"; do ((rc == 0)) || exit 1; done
    ((failed == 0)) || exit 1
    exit 0
fi

# ================================================================ preparation

MODE=same-host
((TWO_HOSTS)) && MODE=two-hosts
TAPWIRECTL=
if [[ $BACKEND == tapwire ]]; then
    [[ -x $TAPWIRE ]] || tw_die "tapwire binary not found at $TAPWIRE (make release, or --tapwire BIN)"
    TAPWIRE=$(cd "$(dirname "$TAPWIRE")" && pwd)/$(basename "$TAPWIRE")
    TAPWIRECTL=$(dirname "$TAPWIRE")/tapwirectl
    [[ -x $TAPWIRECTL ]] || tw_die "tapwirectl not found next to tapwire ($TAPWIRECTL)"
fi
tw_ensure_packages iperf3:iperf3 ip:iproute2 bridge:iproute2 jq:jq python3:python3 \
    timeout:coreutils dpkg:busybox-static
[[ $BACKEND != dpdk ]] || tw_ensure_packages dpdk-testpmd:dpdk
tw_ensure_qemu10
tw_qemu_select 10

T0=$(tw_now)
"$TW_REPO_ROOT/Tools/guest-image.sh" "$GUEST_DIR" >&2
zcat "$GUEST_DIR/initramfs.cpio.gz" | cpio -t --quiet 2>/dev/null | grep -qx etc/tapwire/mig-guest.sh ||
    tw_die "the guest image lacks /etc/tapwire/mig-guest.sh (Tools/guest-image.sh --force $GUEST_DIR)"

RUN_DIR=${RUN_DIR:-/var/tmp/tapwire-migration/$(date +%Y%m%d-%H%M%S)-$MODE-$BACKEND-$$}
mkdir -p "$RUN_DIR"
RUN_DIR=$(cd "$RUN_DIR" && pwd)
tw_install_traps
# Unix socket paths must stay short: sockets in /tmp, logs in the run directory.
TMP=$(mktemp -d /tmp/tw-mig.XXXXXX)
tw_at_exit "rm -rf '$TMP'"
export TWM_LOG=$RUN_DIR/qmp.log
TWM=$TMP/twmig.py
STOP_FILE=$TMP/stream.stop

# ---------------------------------------------------------------- python helpers

cat >"$TWM" <<'PY'
"""Helpers for Tools/migration-check.sh (python3 standard library only).
  twmig.py qmp SOCK JSON...                 run QMP commands on one connection, print each return
  twmig.py wait-qmp SOCK TIMEOUT            wait until QEMU answers on SOCK
  twmig.py migrate SRC DST URI BW TIMEOUT   migrate-incoming URI on DST (started with -incoming
                                            defer), max-bandwidth BW on SRC, migrate, poll until
                                            the end and until DST runs; print one JSON object
  twmig.py quit SOCK                        QMP quit
  twmig.py ping DST INTERVAL OUT            ICMP echo every INTERVAL s (as ping -i); one line per
                                            reply "seq t_sent t_received" (epoch seconds);
                                            "# sent N received M" at SIGINT/SIGTERM
  twmig.py send HOST PORT SEED RATE STOP OUT  paced deterministic TCP stream until the file STOP
                                            exists; then close, wait for the peer to close, and
                                            write {"bytes", "sha256", ...} as JSON to OUT
  twmig.py sniff IFACE MAC OUT             one line "epoch garp|rarp" per announce from MAC
                                            (gratuitous ARP or RARP) seen on IFACE
  twmig.py gaps PINGOUT WINDOWS             WINDOWS: lines "NAME START END" (epoch); prints
                                            "NAME GAP_MS": the longest time between two replies
                                            that overlaps the window
QMP traffic is appended to $TWM_LOG when set."""
import hashlib, json, os, random, select, signal, socket, struct, sys, time

LOG = os.environ.get("TWM_LOG")

def log(direction, obj):
    if LOG:
        with open(LOG, "a") as f:
            f.write(f"{time.strftime('%H:%M:%S')} {direction} {json.dumps(obj)}\n")

def die(msg, rc=1):
    print(f"twmig: {msg}", file=sys.stderr)
    sys.exit(rc)

class QMP:
    def __init__(self, path, timeout=30, name=None):
        self.name = name or os.path.basename(path)
        self.s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.s.settimeout(timeout)
        self.s.connect(path)
        self.buf, self.n = b"", 0
        if "QMP" not in self.read(time.monotonic() + timeout):
            die("no QMP greeting")
        self.call("qmp_capabilities", quiet=True)

    def read(self, deadline):
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            self.s.settimeout(left)
            data = self.s.recv(65536)
            if not data:
                raise ConnectionError(f"{self.name}: QEMU closed the QMP connection")
            self.buf += data
        line, self.buf = self.buf.split(b"\n", 1)
        msg = json.loads(line)
        if "event" in msg:
            log(f"{self.name} event", msg)
        return msg

    def call(self, execute, arguments=None, timeout=60, quiet=False):
        self.n += 1
        msg = {"execute": execute, "id": self.n}
        if arguments is not None:
            msg["arguments"] = arguments
        if not quiet:
            log(f"{self.name} ->", msg)
        self.s.sendall(json.dumps(msg).encode() + b"\n")
        deadline = time.monotonic() + timeout
        while True:
            try:
                r = self.read(deadline)
            except (TimeoutError, socket.timeout):
                raise RuntimeError(f"{self.name}: {execute}: no answer within {timeout}s")
            if "event" in r:
                continue
            if r.get("id") == self.n:
                if not quiet or "error" in r:
                    log(f"{self.name} <-", r)
                if "error" in r:
                    raise RuntimeError(f"{execute}: {r['error'].get('class')}: {r['error'].get('desc')}")
                return r.get("return")

def qmp_main(args):
    q = QMP(args[0])
    for text in args[1:]:
        cmd = json.loads(text)
        try:
            print(json.dumps(q.call(cmd["execute"], cmd.get("arguments"))), flush=True)
        except RuntimeError as e:
            die(str(e))

def wait_qmp_main(args):
    path, timeout = args[0], float(args[1])
    deadline = time.monotonic() + timeout
    while True:
        try:
            q = QMP(path, timeout=5)
            print(json.dumps(q.call("query-status", quiet=True)))
            return
        except (OSError, ConnectionError, RuntimeError):
            if time.monotonic() > deadline:
                die(f"QEMU does not answer on {path} after {timeout:g}s", 124)
            time.sleep(0.1)

def migrate_main(args):
    src_path, dst_path, uri, bw, timeout = args[0], args[1], args[2], int(args[3]), float(args[4])
    out = {"uri": uri}
    try:
        src, dst = QMP(src_path, name="src"), QMP(dst_path, name="dst")
        dst.call("migrate-incoming", {"uri": uri})
        src.call("migrate-set-parameters", {"max-bandwidth": bw})
        out["t_start"] = time.time()
        src.call("migrate", {"uri": uri})
        deadline = time.monotonic() + timeout
        info = {}
        while time.monotonic() < deadline:
            info = src.call("query-migrate", quiet=True)
            if info.get("status") in ("completed", "failed", "cancelled"):
                break
            time.sleep(0.02)
        out["t_done"] = time.time()
        log("src <-", info)
        out["status"] = info.get("status", "none")
        if out["status"] not in ("completed", "failed", "cancelled"):
            out["status"] = f"timeout({info.get('status')})"
            src.call("migrate_cancel")
        for k in ("downtime", "total-time", "setup-time", "expected-downtime", "error-desc"):
            if k in info:
                out[k] = info[k]
        ram = info.get("ram", {})
        for k in ("transferred", "mbps", "dirty-sync-count", "normal", "duplicate"):
            if k in ram:
                out["ram-" + k] = ram[k]
        if out["status"] == "completed":
            state = {}
            while time.monotonic() < deadline + 30:
                state = dst.call("query-status", quiet=True)
                if state.get("status") == "running":
                    break
                time.sleep(0.02)
            out["t_running"] = time.time()
            out["dst-status"] = state.get("status")
            out["src-status"] = src.call("query-status").get("status")
        else:
            try:
                out["dst-status"] = dst.call("query-status").get("status")
            except Exception as e:  # a destination whose load failed quits
                out["dst-status"] = f"gone ({e})"
    except (RuntimeError, ConnectionError, OSError) as e:
        out.setdefault("status", "error")
        out["error-desc"] = str(e)
        out.setdefault("t_start", time.time())
        out.setdefault("t_done", time.time())
    print(json.dumps(out), flush=True)

def quit_main(args):
    try:
        QMP(args[0], timeout=10).call("quit", timeout=10)
    except (RuntimeError, ConnectionError, OSError):
        pass

def checksum(data):
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    s = (s >> 16) + (s & 0xFFFF)
    s += s >> 16
    return ~s & 0xFFFF

def ping_main(args):
    dst, interval, out = args[0], float(args[1]), args[2]
    ident = os.getpid() & 0xFFFF
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    f = open(out, "w", buffering=1)
    sent = received = 0
    sent_at = {}
    stop = []
    signal.signal(signal.SIGINT, lambda *_: stop.append(1))
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    nxt = time.monotonic()
    seq = 0
    while not stop:
        now = time.monotonic()
        if now >= nxt:
            seq = (seq + 1) & 0xFFFF
            payload = b"tapwire-migration-check-" * 2
            hdr = struct.pack("!BBHHH", 8, 0, 0, ident, seq)
            pkt = struct.pack("!BBHHH", 8, 0, checksum(hdr + payload), ident, seq) + payload
            try:
                s.sendto(pkt, (dst, 0))
            except OSError:
                pass
            sent += 1
            sent_at[seq] = time.time()
            nxt += interval
            if nxt < now - 1:  # not scheduled for a while: no burst to catch up
                nxt = now + interval
        try:
            r, _, _ = select.select([s], [], [], max(0, nxt - time.monotonic()))
        except InterruptedError:
            continue
        if r:
            data = s.recv(2048)
            t = time.time()
            ihl = (data[0] & 0x0F) * 4
            typ, _, _, rid, rseq = struct.unpack("!BBHHH", data[ihl:ihl + 8])
            if typ == 0 and rid == ident and rseq in sent_at:
                received += 1
                f.write(f"{rseq} {sent_at.pop(rseq):.6f} {t:.6f}\n")
            if len(sent_at) > 6000:  # forget requests never answered
                for k in sorted(sent_at, key=sent_at.get)[:1000]:
                    del sent_at[k]
    f.write(f"# sent {sent} received {received}\n")
    f.close()

def send_main(args):
    host, port, seed, rate, stop, out = args[0], int(args[1]), int(args[2]), float(args[3]), args[4], args[5]
    res = {"bytes": 0, "sha256": None, "error": None}
    rng = random.Random(seed)
    h = hashlib.sha256()
    chunk = 16384
    sent = 0
    t0 = time.monotonic()
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                s = socket.create_connection((host, port), timeout=5)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        s.settimeout(60)  # a send blocked this long: the connection is dead
        t0 = time.monotonic()
        longest = 0.0
        while not os.path.exists(stop):
            due = t0 + sent / rate
            now = time.monotonic()
            if due > now:
                time.sleep(min(due - now, 0.05))
                continue
            data = rng.randbytes(chunk)
            a = time.monotonic()
            s.sendall(data)
            longest = max(longest, time.monotonic() - a)
            h.update(data)
            sent += len(data)
        s.shutdown(socket.SHUT_WR)
        while s.recv(65536):  # the guest closes once it has read everything
            pass
        s.close()
        res["longest_send_blocked_s"] = round(longest, 3)
    except Exception as e:
        res["error"] = f"{type(e).__name__}: {e}"
    res["bytes"] = sent
    res["sha256"] = h.hexdigest()
    res["seconds"] = round(time.monotonic() - t0, 2)
    with open(out + ".tmp", "w") as f:
        json.dump(res, f)
    os.rename(out + ".tmp", out)

def sniff_main(args):
    """Announces from MAC seen on IFACE: gratuitous ARP (sender IP == target IP) and RARP."""
    iface, mac, out = args[0], bytes.fromhex(args[1].replace(":", "")), args[2]
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
    s.bind((iface, 0))
    f = open(out, "w", buffering=1)
    stop = []
    signal.signal(signal.SIGINT, lambda *_: stop.append(1))
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    while not stop:
        try:
            r, _, _ = select.select([s], [], [], 0.5)
        except InterruptedError:
            continue
        if not r:
            continue
        frame = s.recv(2048)
        if len(frame) < 42 or frame[6:12] != mac:
            continue
        kind = None
        etype = frame[12:14]
        if etype == b"\x80\x35":
            kind = "rarp"
        elif etype == b"\x08\x06" and frame[28:32] == frame[38:42]:
            kind = "garp"
        if kind:
            f.write(f"{time.time():.6f} {kind}\n")

def gaps_main(args):
    replies = []
    with open(args[0]) as f:
        for line in f:
            p = line.split()
            if len(p) == 3 and not line.startswith("#"):
                replies.append(float(p[2]))
    replies.sort()
    with open(args[1]) as f:
        for line in f:
            p = line.split()
            if len(p) != 3:
                continue
            name, a, b = p[0], float(p[1]), float(p[2])
            # The window's end counts as a reply: a guest that stopped answering before it
            # has a gap that lasts until then at least.
            points = sorted([r for r in replies if r < b] + [b])
            if not any(r <= a for r in points):
                points.insert(0, a)
            gap = 0.0
            for x, y in zip(points, points[1:]):
                if y > a and x < b:
                    gap = max(gap, y - x)
            print(f"{name} {gap * 1000:.0f}")

if __name__ == "__main__":
    mains = {"qmp": qmp_main, "wait-qmp": wait_qmp_main, "migrate": migrate_main, "quit": quit_main,
             "ping": ping_main, "send": send_main, "gaps": gaps_main, "sniff": sniff_main}
    if len(sys.argv) < 3 or sys.argv[1] not in mains:
        die(__doc__, 2)
    mains[sys.argv[1]](sys.argv[2:])
PY
twm() { python3 "$TWM" "$@"; }

# ---------------------------------------------------------------- results

PASSED=0 FAILED=0
declare -a FAIL_REASONS=()
# check NAME OK DETAIL...: one ROW per check.
check() {
    local name=$1 ok=$2; shift 2
    if ((ok)); then
        PASSED=$((PASSED + 1))
        echo "ROW backend=$BACKEND mode=$MODE check=$name result=PASS $*"
    else
        FAILED=$((FAILED + 1))
        FAIL_REASONS+=("$name: $*")
        echo "ROW backend=$BACKEND mode=$MODE check=$name result=FAIL $*"
        tw_warn "FAIL $name: $*"
    fi
}

# ---------------------------------------------------------------- network

GUEST_IP=$TW_GUEST_IP
HOST_IP=$TW_HOST_IP
MAC=$TW_GUEST_MAC
declare -a BE_NS BE_BR BE_TAP BE_SOCK BE_API BE_LOG BE_PID BE_PREFIX BE_UPLINK
NS_BASE=twmig$$
if ((TWO_HOSTS)); then
    NS_A=${NS_BASE}a NS_B=${NS_BASE}b CLIENT_NS=${NS_BASE}c
    for ns in "$NS_A" "$NS_B" "$CLIENT_NS"; do
        tw_netns_create "$ns"
        tw_netns_no_ipv6 "$ns"
    done
    # Host A: bridge bra; host B: bridge brb; the underlay veth ul-a (A) <-> ul-b (B) joins them.
    ip -n "$NS_A" link add bra type bridge
    ip -n "$NS_B" link add brb type bridge
    ip link add ul-a netns "$NS_A" type veth peer name ul-b netns "$NS_B"
    ip -n "$NS_A" link set ul-a master bra up
    ip -n "$NS_B" link set ul-b master brb up
    # The client: eth0 in its own namespace, its peer cl-a a port of host A's bridge.
    ip link add cl-a netns "$NS_A" type veth peer name eth0 netns "$CLIENT_NS"
    ip -n "$NS_A" link set cl-a master bra up
    ip -n "$CLIENT_NS" addr add "$HOST_IP/$TW_PREFIX_LEN" dev eth0
    ip -n "$CLIENT_NS" link set eth0 up
    ip -n "$NS_A" link set bra up
    ip -n "$NS_B" link set brb up
    BE_NS=("$NS_A" "$NS_B") BE_BR=(bra brb) BE_UPLINK=(ul-a ul-b)
    tw_log "two hosts: $NS_A (bridge bra) and $NS_B (bridge brb) joined by veth ul-a/ul-b; client $CLIENT_NS ($HOST_IP) on bra"
else
    CLIENT_NS=${NS_BASE}h
    tw_netns_create "$CLIENT_NS"
    tw_netns_no_ipv6 "$CLIENT_NS"
    ip -n "$CLIENT_NS" link add br0 type bridge
    ip -n "$CLIENT_NS" addr add "$HOST_IP/$TW_PREFIX_LEN" dev br0
    ip -n "$CLIENT_NS" link set br0 up
    BE_NS=("$CLIENT_NS" "$CLIENT_NS") BE_BR=(br0 br0) BE_UPLINK=(- -)
    tw_log "host network: namespace $CLIENT_NS, bridge br0 with $HOST_IP"
fi
if [[ $BACKEND == tapwire ]]; then BE_TAP=(twm0 twm1); else BE_TAP=(dpm0 dpm1); fi

# ---------------------------------------------------------------- hugepages (dpdk)

if [[ $BACKEND == dpdk ]]; then
    # Two testpmd processes with -m 256: 2 x 128 pages of 2 MiB, plus a margin. Only what we
    # add is given back (other runs may use hugepages too).
    PAGES_NEEDED=300
    [[ $(awk '/^Hugepagesize:/ { print $2 }' /proc/meminfo) == 2048 ]] || tw_die "expected 2 MiB default hugepages"
    free_pages=$(awk '/^HugePages_Free:/ { print $2 }' /proc/meminfo)
    if ((free_pages < PAGES_NEEDED)); then
        added=$((PAGES_NEEDED - free_pages))
        echo $(($(cat /proc/sys/vm/nr_hugepages) + added)) >/proc/sys/vm/nr_hugepages
        tw_at_exit "echo \$((\$(cat /proc/sys/vm/nr_hugepages) - $added)) >/proc/sys/vm/nr_hugepages"
        free_pages=$(awk '/^HugePages_Free:/ { print $2 }' /proc/meminfo)
        ((free_pages >= PAGES_NEEDED)) || tw_die "only $free_pages free hugepages after asking for more (need $PAGES_NEEDED)"
    fi
    HUGE_DIR=$(awk '$3 == "hugetlbfs" { print $2; exit }' /proc/mounts)
    if [[ -z $HUGE_DIR ]]; then
        HUGE_DIR=/dev/hugepages
        mkdir -p "$HUGE_DIR"
        mount -t hugetlbfs nodev "$HUGE_DIR" || tw_die "cannot mount hugetlbfs on $HUGE_DIR"
        tw_at_exit "umount '$HUGE_DIR' 2>/dev/null || true"
    fi
fi

# ---------------------------------------------------------------- backends

# Both backends get exactly the same options (the guest sees the same device on both sides);
# only their socket, API socket and TAP differ.
read -r -a TW_EXTRA <<<"$TAPWIRE_ARGS"
start_backend() {
    local i=$1 ns=${BE_NS[$1]} tap=${BE_TAP[$1]}
    BE_SOCK[i]=$TMP/be$i.sock
    BE_API[i]=$TMP/be$i.api
    BE_LOG[i]=$RUN_DIR/$BACKEND-$i.log
    if [[ $BACKEND == tapwire ]]; then
        local cmd=("$TAPWIRE" --socket-path "${BE_SOCK[i]}" --tap "$tap" --api-socket "${BE_API[i]}"
            --name "mig$i" --mac "$MAC" --log-level "$LOG_LEVEL" "${TW_EXTRA[@]}")
        tw_log "backend $i in $ns: ${cmd[*]}"
        tw_spawn "${BE_LOG[i]}" ip netns exec "$ns" "${cmd[@]}"
        BE_PID[i]=$TW_SPAWNED_PID
        tw_at_exit "tw_stop ${BE_PID[i]} 5"
        tw_wait_until 20 "${BE_PID[i]}" "tapwire $i's control API" tw_log_has "${BE_LOG[i]}" "control API on" ||
            tw_die "tapwire $i did not start (${BE_LOG[i]})"
    else
        # Forwarding on lcore 1 for backend 0 and on lcore 0 for backend 1: the two busy
        # loops on different cores.
        BE_PREFIX[i]=${NS_BASE}be$i
        local cmd=(dpdk-testpmd --file-prefix="${BE_PREFIX[i]}" -m 256 --no-pci --no-telemetry
            --vdev "net_vhost0,iface=${BE_SOCK[i]},queues=1" --vdev "net_tap0,iface=$tap"
            -l 0-1 --main-lcore "$i" -- --forward-mode=io --auto-start --stats-period=5
            --nb-cores=1 --total-num-mbufs=32768)
        tw_log "backend $i in $ns: ${cmd[*]}"
        tw_spawn "${BE_LOG[i]}" ip netns exec "$ns" "${cmd[@]}"
        BE_PID[i]=$TW_SPAWNED_PID
        tw_at_exit "tw_stop ${BE_PID[i]} 5; rm -rf /var/run/dpdk/${BE_PREFIX[i]}; rm -f '$HUGE_DIR'/${BE_PREFIX[i]}map_*"
        tw_wait_until 60 "${BE_PID[i]}" "testpmd $i's vhost socket" tw_is_socket "${BE_SOCK[i]}" ||
            tw_die "testpmd $i did not start (${BE_LOG[i]})"
    fi
    tw_wait_until 20 "${BE_PID[i]}" "TAP $tap in $ns" tw_netns_has_link "$ns" "$tap" ||
        tw_die "backend $i never created its TAP $tap"
    ip -n "$ns" link set "$tap" master "${BE_BR[i]}"
    ip -n "$ns" link set "$tap" up
}

# vm_json I: tapwire I's GET /vm (empty on failure).
vm_json() { "$TAPWIRECTL" --api-socket "${BE_API[$1]}" --json status 2>/dev/null || true; }
metrics_json() { curl -sf --max-time 5 --unix-socket "${BE_API[$1]}" http://localhost/metrics.json 2>/dev/null || true; }

# backend_serving I: what is wrong with backend I as the one serving the running guest (empty:
# nothing): alive, a frontend connected, every queue enabled, running and without a fault.
backend_serving() {
    local i=$1 js
    tw_alive "${BE_PID[i]}" || { echo "backend $i is gone"; return; }
    [[ $BACKEND == tapwire ]] || return 0
    js=$(vm_json "$i")
    [[ -n $js ]] || { echo "tapwire $i's API does not answer"; return; }
    jq -r '[if .state != "connected" then "state \(.state)" else empty end,
            (.queues[] | select((.enabled and .running and .fault == null) | not) |
             "queue \(.index) enabled=\(.enabled) running=\(.running) fault=\(.fault)")] | join("; ")' <<<"$js"
}
# backend_connected I: what is wrong with backend I as the one a destination QEMU just
# connected to (before the migration: the queues start when the guest runs there).
backend_connected() {
    tw_alive "${BE_PID[$1]}" || { echo "backend $1 is gone"; return; }
    [[ $BACKEND == tapwire ]] || return 0
    local state
    state=$(vm_json "$1" | jq -r .state)
    [[ $state == connected ]] || echo "tapwire $1 has no frontend (state ${state:-unknown})"
}
# backend_idle I: what is wrong with backend I as the one whose QEMU just quit.
backend_idle() {
    local i=$1 js
    tw_alive "${BE_PID[i]}" || { echo "backend $i is gone"; return; }
    [[ $BACKEND == tapwire ]] || return 0
    js=$(vm_json "$i")
    [[ -n $js ]] || { echo "tapwire $i's API does not answer"; return; }
    jq -r 'if .state != "waiting" then "state \(.state), not waiting" else empty end' <<<"$js"
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

start_backend 0
start_backend 1

# fdb I: the port bridge I has learned the guest MAC on ("-" if none).
fdb_port() {
    bridge -n "${BE_NS[$1]}" fdb show br "${BE_BR[$1]}" 2>/dev/null |
        awk -v m="$MAC" 'tolower($1) == tolower(m) && $2 == "dev" { print $3; f = 1; exit } END { if (!f) print "-" }'
}
fdb_show() {
    local i
    for i in 0 1; do
        echo "  $1: bridge fdb of ${BE_BR[i]} (${BE_NS[i]}) for $MAC: $(bridge -n "${BE_NS[i]}" fdb show br "${BE_BR[i]}" 2>/dev/null | grep -i "^$MAC" | tr '\n' ';' || true)" >&2
    done
}

# ---------------------------------------------------------------- traffic on the host side

IPERF_SERVER_LOG=$RUN_DIR/iperf3-server.log
tw_spawn "$IPERF_SERVER_LOG" ip netns exec "$CLIENT_NS" iperf3 -s -B "$HOST_IP" --forceflush
IPERF_SERVER_PID=$TW_SPAWNED_PID
tw_at_exit "tw_stop $IPERF_SERVER_PID 3"

# ---------------------------------------------------------------- QEMU

# The guest's iperf3 runs for the time the migrations are expected to take; further short
# sessions follow if they take longer (mig-guest.sh runs them while the stream lasts).
WARMUP=3
LOAD_SECONDS=$((WARMUP + MIGRATIONS * HOP_SECONDS + 5))
GUEST_CMD="sh /etc/tapwire/mig-guest.sh $LOAD_SECONDS $HOST_IP 5001 10"
APPEND="console=ttyS0 panic=-1 quiet tw.ip=$GUEST_IP/$TW_PREFIX_LEN tw.host=$HOST_IP tw.ping=2 tw.cmd=\"$GUEST_CMD\""
[[ -z $IPERF_ARGS ]] || APPEND+=" tw.iperf=\"$IPERF_ARGS\""

declare -a QEMU_PID QMP CONSOLE QEMU_LOG
# qemu_cmd K: the command line of the QEMU for hop K (hop 0 boots; hop K > 0 is the
# destination of migration K), on backend K % 2. Only the chardev's path, the QMP socket and
# the console file differ between hops.
qemu_cmd() {
    local k=$1 be=$(($1 % 2))
    QMP[k]=$TMP/qmp$k.sock
    CONSOLE[k]=$RUN_DIR/console-$k.log
    QEMU_LOG[k]=$RUN_DIR/qemu-$k.log
    QCMD=("$QEMU_BIN" "${QEMU_DATA[@]}" -accel tcg -nodefaults -no-user-config -name tapwire-mig
        -m "$MEM" -object "memory-backend-memfd,id=mem,size=$MEM,share=on"
        -machine "q35,memory-backend=mem" -smp 1
        -kernel "$GUEST_DIR/vmlinuz" -initrd "$GUEST_DIR/initramfs.cpio.gz" -append "$APPEND"
        -display none -serial "file:${CONSOLE[k]}" -no-reboot
        -qmp "unix:${QMP[k]},server=on,wait=off"
        -chardev "socket,id=c0,path=${BE_SOCK[be]}" -netdev vhost-user,id=n0,chardev=c0
        -device "virtio-net-pci,id=nic0,netdev=n0,mac=$MAC$NIC_EXTRA")
    ((k == 0)) || QCMD+=(-incoming defer)
}
start_qemu() {
    local k=$1
    qemu_cmd "$k"
    printf '%q ' "${QCMD[@]}" >"$RUN_DIR/qemu-$k.cmdline"
    echo >>"$RUN_DIR/qemu-$k.cmdline"
    : >"${CONSOLE[k]}"
    tw_spawn "${QEMU_LOG[k]}" "${QCMD[@]}"
    QEMU_PID[k]=$TW_SPAWNED_PID
    tw_at_exit "tw_stop ${QEMU_PID[k]} 5"
}
# quit_qemu K: QMP quit, then wait for the process (SIGTERM/SIGKILL after 10 s). Returns 1
# when it had to be killed.
quit_qemu() {
    local k=$1 i
    twm quit "${QMP[k]}"
    for ((i = 0; i < 100; i++)); do tw_alive "${QEMU_PID[k]}" || break; sleep 0.1; done
    if tw_alive "${QEMU_PID[k]}"; then tw_stop "${QEMU_PID[k]}" 3; return 1; fi
    wait "${QEMU_PID[k]}" 2>/dev/null || true
}
# reply_after EPOCH: the ping got a reply sent after EPOCH.
reply_after() { tail -n 200 "$PING_OUT" 2>/dev/null | awk -v t="$1" '!/^#/ && $2 > t { f = 1 } END { exit !f }'; }
# hmp K COMMAND: an HMP command on QEMU K; its output.
hmp() {
    twm qmp "${QMP[$1]}" "$(jq -cn --arg c "$2" '{execute: "human-monitor-command", arguments: {"command-line": $c}}')" 2>&1 |
        jq -r '. // empty' 2>/dev/null | tr -d '\r' || true
}
# diagnose K WHY: what QEMU K and its backend say about the NIC, into the run directory.
diagnose() {
    local k=$1 be=$(($1 % 2)) out=$RUN_DIR/diagnosis-$1.txt q
    {
        echo "== $2"
        echo "== query-status: $(hmp "$k" 'info status')"
        # Not `info virtio-queue-status`: for a vhost device QEMU answers it with a
        # GET_VRING_BASE, which stops the backend's ring. The rings' indexes are read from
        # guest memory instead.
        for q in 0 1; do
            local vs avail used num
            vs=$(hmp "$k" "info virtio-vhost-queue-status /machine/peripheral/nic0/virtio-backend $q")
            echo "== vhost view of queue $q"; echo "$vs"
            avail=$(awk '/avail_phys:/ { print $2 }' <<<"$vs") used=$(awk '/used_phys:/ { print $2 }' <<<"$vs")
            num=$(awk '/num:/ { print $2; exit }' <<<"$vs")
            if [[ -n $avail && -n $used && -n $num ]]; then
                echo "-- avail flags, idx:"; hmp "$k" "xp /2hx $avail"
                echo "-- used_event:"; hmp "$k" "xp /1hx $(printf '0x%x' $((avail + 4 + 2 * num)))"
                echo "-- used flags, idx:"; hmp "$k" "xp /2hx $used"
                echo "-- avail_event:"; hmp "$k" "xp /1hx $(printf '0x%x' $((used + 4 + 8 * num)))"
            fi
        done
        if [[ $BACKEND == tapwire ]]; then
            echo "== tapwire $be GET /vm"; vm_json "$be"
            echo "== tapwire $be /metrics.json"; metrics_json "$be"
        fi
        echo "== last guest heartbeats"; all_consoles | grep -a '^tw-mig-beat' | tail -n 5
    } >"$out" 2>&1
    tw_warn "diagnosis of hop $k in $out"
}
all_consoles() {
    local k
    for ((k = 0; k < ${#CONSOLE[@]}; k++)); do tr -d '\r' <"${CONSOLE[k]}" 2>/dev/null || true; done
}
consoles_have() { all_consoles | grep -aqF -- "$1"; }

on_failure() {
    ((TW_EXIT_RC != 0)) || return 0
    local k last=$((${#CONSOLE[@]} - 1))
    all_consoles >"$TMP/console.all"
    tw_tail_log "$TMP/console.all" 30 "guest console (all hops, $RUN_DIR/console-*.log)"
    for ((k = (last > 1 ? last - 1 : 0); k <= last; k++)); do
        tw_tail_log "${QEMU_LOG[k]}" 10 "QEMU of hop $k (${QEMU_LOG[k]})"
    done
    tw_tail_log "${BE_LOG[0]}" 25 "backend 0 (${BE_LOG[0]})"
    tw_tail_log "${BE_LOG[1]}" 25 "backend 1 (${BE_LOG[1]})"
    [[ ! -s $TWM_LOG ]] || tw_tail_log "$TWM_LOG" 8 "QMP traffic ($TWM_LOG)"
    tw_log "run directory: $RUN_DIR"
}
tw_at_exit on_failure

tw_log "booting the guest on backend 0 (QEMU $QEMU_VERSION, $MEM, TCG; run dir $RUN_DIR)"
T_BOOT=$(tw_now)
start_qemu 0
rc=0
tw_wait_marker "${CONSOLE[0]}" TW-MIG-LISTENING "$BOOT_TIMEOUT" "${QEMU_PID[0]}" TW-GUEST-FAIL || rc=$?
case $rc in
    0) ;;
    1) tw_die "guest not ready after ${BOOT_TIMEOUT}s" ;;
    2) tw_die "QEMU exited before the guest was ready" ;;
    3) tw_die "guest setup failed: $(tr -d '\r' <"${CONSOLE[0]}" | grep -a -m1 TW-GUEST-FAIL)" ;;
esac
BOOT_SECONDS=$(tw_elapsed "$T_BOOT")
LOAD_T0=$SECONDS
tw_log "guest up after ${BOOT_SECONDS}s; starting the stream (${STREAM_RATE} B/s), the 10 ms ping and the guest's iperf3 (${LOAD_SECONDS}s planned)"
if [[ $BACKEND == tapwire ]]; then
    tw_log "negotiated on backend 0: $(vm_json 0 | jq -r '.negotiated_features | join(",")')"
fi

PING_OUT=$RUN_DIR/ping.txt
tw_spawn "$RUN_DIR/ping.log" ip netns exec "$CLIENT_NS" python3 "$TWM" ping "$GUEST_IP" 0.01 "$PING_OUT"
PING_PID=$TW_SPAWNED_PID
tw_at_exit "tw_stop $PING_PID 3"
# Announces from the guest's MAC as the bridges see them (one sniffer per bridge).
declare -a ANNOUNCE_OUT
nbridges=2
((TWO_HOSTS)) || nbridges=1
for ((i = 0; i < nbridges; i++)); do
    ANNOUNCE_OUT[i]=$RUN_DIR/announce-${BE_BR[i]}.txt
    tw_spawn "$RUN_DIR/sniff-${BE_BR[i]}.log" ip netns exec "${BE_NS[i]}" python3 "$TWM" sniff "${BE_BR[i]}" "$MAC" "${ANNOUNCE_OUT[i]}"
    tw_at_exit "tw_stop $TW_SPAWNED_PID 3"
done
# announces_since EPOCH BACKEND: "garp=N rarp=M" seen since EPOCH by the bridge of BACKEND's host.
announces_since() {
    local f=${ANNOUNCE_OUT[0]}
    ((TWO_HOSTS)) && f=${ANNOUNCE_OUT[$2]}
    awk -v t="$1" '$1 > t { n[$2]++ } END { printf "garp=%d rarp=%d\n", n["garp"], n["rarp"] }' "$f" 2>/dev/null || echo "garp=0 rarp=0"
}
SEED=$((0x7a9e + ROUND_TRIPS))
STREAM_OUT=$RUN_DIR/stream.json
tw_spawn "$RUN_DIR/stream.log" ip netns exec "$CLIENT_NS" python3 "$TWM" send "$GUEST_IP" 5001 "$SEED" \
    "$STREAM_RATE" "$STOP_FILE" "$STREAM_OUT"
STREAM_PID=$TW_SPAWNED_PID
tw_at_exit "tw_stop $STREAM_PID 3"
sleep "$WARMUP"

if ((TWO_HOSTS)); then
    FDB0=$(fdb_port 0) FDB1=$(fdb_port 1)
    tw_log "before the first migration: guest MAC on bra via $FDB0, on brb via $FDB1"
    fdb_show "before"
fi

# ================================================================ migrations

declare -a DOWNTIME GAP TOTAL T_START
WINDOWS=$TMP/windows
: >"$WINDOWS"
COMPLETED=0
for ((m = 1; m <= MIGRATIONS; m++)); do
    from=$(((m - 1) % 2)) to=$((m % 2)) src=$((m - 1))
    why=()
    tw_alive "${QEMU_PID[src]}" || { check "migration-$m" 0 "the source QEMU (hop $src) is gone"; break; }
    start_qemu "$m"
    if ! twm wait-qmp "${QMP[m]}" 30 >/dev/null; then
        check "migration-$m" 0 "the destination QEMU did not come up ($(tail -n 3 "${QEMU_LOG[m]}" | tr '\n' ' '))"
        break
    fi
    # The destination connected to its backend at start-up.
    w=$(wait_ok 10 backend_connected "$to") || why+=("before the migration: $w")
    res=$(twm migrate "${QMP[src]}" "${QMP[m]}" "unix:$TMP/mig$m.sock" "$MAX_BW" "$MIGRATE_TIMEOUT")
    echo "$res" >>"$RUN_DIR/migrations.jsonl"
    status=$(jq -r .status <<<"$res")
    DOWNTIME[m]=$(jq -r '.downtime // "-"' <<<"$res")
    TOTAL[m]=$(jq -r '."total-time" // "-"' <<<"$res")
    T_START[m]=$(jq -r .t_start <<<"$res")
    if [[ $status != completed ]]; then
        why+=("status $status: $(jq -r '."error-desc" // "no error given"' <<<"$res")")
    else
        COMPLETED=$((COMPLETED + 1))
        [[ $(jq -r '."dst-status"' <<<"$res") == running ]] || why+=("the destination is $(jq -r '."dst-status"' <<<"$res"), not running")
    fi
    if [[ $status == completed ]]; then
        # The source has handed over: it quits, and its backend must outlive that, idle.
        quit_qemu "$src" || why+=("the source QEMU did not quit when asked")
        w=$(wait_ok 10 backend_idle "$from") || why+=("backend $from after its QEMU quit: $w")
        w=$(wait_ok 10 backend_serving "$to") || why+=("backend $to serving the guest: $w")
    else
        # The guest stays where it was; the destination goes.
        quit_qemu "$m" || true
    fi
    tw_alive "${BE_PID[from]}" || why+=("backend $from died")
    tw_alive "${BE_PID[to]}" || why+=("backend $to died")
    if grep -aiE 'vhost|error' "${QEMU_LOG[m]}" | grep -avE 'failed to initialize module|Only modules from the same build' |
        grep -aq .; then
        why+=("QEMU (hop $m) said: $(grep -aiE 'vhost|error' "${QEMU_LOG[m]}" | grep -avE 'failed to initialize module|Only modules' | head -n 2 | tr '\n' ' ')")
    fi
    sleep "$DWELL"
    # The guest answers at its new place (the ping gets a reply sent after the switch-over).
    reachable=1
    if [[ $status == completed ]]; then
        t_done=$(jq -r .t_done <<<"$res")
        for ((i = 0; i < 50; i++)); do reply_after "$t_done" && break; sleep 0.2; done
        if ! reply_after "$t_done"; then
            reachable=0
            why+=("no ping reply from the guest within $((50 / 5 + ${DWELL%.*}))s of the switch-over")
            diagnose "$m" "migration $m: guest unreachable"
        fi
    fi
    fdb=
    if ((TWO_HOSTS)); then
        # The guest is on host $to now: its bridge has the MAC on the backend's TAP, the other
        # bridge on its underlay port.
        f_to=$(fdb_port "$to") f_from=$(fdb_port "$from")
        fdb="fdb_${BE_BR[to]}=$f_to fdb_${BE_BR[from]}=$f_from"
        [[ $f_to == "${BE_TAP[to]}" ]] || why+=("${BE_BR[to]} has the guest MAC on $f_to, not ${BE_TAP[to]}")
        [[ $f_from == "${BE_UPLINK[from]}" ]] || why+=("${BE_BR[from]} has the guest MAC on $f_from, not ${BE_UPLINK[from]}")
        ((m > 2)) || fdb_show "after migration $m (to host $to)"
    fi
    # The destination announced the guest (gratuitous ARP from the guest with
    # GUEST_ANNOUNCE, or the backend's RARP after SEND_RARP).
    announce=$(announces_since "${T_START[m]}" "$to")
    if [[ $status == completed && $announce == "garp=0 rarp=0" ]]; then
        for ((i = 0; i < 10; i++)); do
            sleep 0.2
            announce=$(announces_since "${T_START[m]}" "$to")
            [[ $announce == "garp=0 rarp=0" ]] || break
        done
        [[ $announce != "garp=0 rarp=0" ]] || why+=("no gratuitous ARP or RARP from the guest's MAC after the switch-over")
    fi
    echo "$m ${T_START[m]}" >>"$WINDOWS"
    detail="from=$from to=$to status=$status downtime_ms=${DOWNTIME[m]} total_ms=${TOTAL[m]} setup_ms=$(jq -r '."setup-time" // "-"' <<<"$res") ram_mb=$(jq -r '((."ram-transferred" // 0) / 1048576 | floor)' <<<"$res") dirty_syncs=$(jq -r '."ram-dirty-sync-count" // "-"' <<<"$res") announce:$announce $fdb"
    tw_log "migration $m/$MIGRATIONS backend $from -> $to: $status, downtime ${DOWNTIME[m]} ms, total ${TOTAL[m]} ms"
    if ((${#why[@]})); then
        check "migration-$m" 0 "$detail why=\"$(IFS=';'; echo "${why[*]}")\""
        [[ $status == completed && $reachable == 1 ]] || break
    else
        check "migration-$m" 1 "$detail"
    fi
done
DONE_MIGRATIONS=$((m > MIGRATIONS ? MIGRATIONS : m))
# The QEMU the guest runs in now.
LAST=0
for ((k = 0; k <= DONE_MIGRATIONS; k++)); do tw_alive "${QEMU_PID[k]:-}" && LAST=$k; done

# ================================================================ the end of the load

touch "$STOP_FILE"
tw_log "migrations over; ending the stream and waiting for the guest's iperf3 and hash"
# The planned iperf3 session ends LOAD_SECONDS after the guest started it; a follow-up one
# lasts 10 s more at most.
left=$((LOAD_T0 + LOAD_SECONDS - SECONDS))
deadline=$((SECONDS + (left > 0 ? left : 0) + 40))
# A guest that stopped answering is not waited for.
((${reachable:-1})) || deadline=$((SECONDS + 5))
until consoles_have TW-MIG-DONE; do
    ((SECONDS < deadline)) || break
    tw_alive "${QEMU_PID[LAST]:-}" || break
    sleep 0.5
done
for ((i = 0; i < 100; i++)); do [[ -s $STREAM_OUT ]] && break; sleep 0.2; done
kill -INT "$PING_PID" 2>/dev/null || true
for ((i = 0; i < 30; i++)); do tw_alive "$PING_PID" || break; sleep 0.1; done
tw_stop "$PING_PID" 2
echo "end $(tw_now)" >>"$WINDOWS"

# Windows: migration m from its start to the next one's start (the last to the end of the ping).
awk 'NR > 1 { print prev_name, prev_start, $2 } { prev_name = $1; prev_start = $2 }' "$WINDOWS" >"$TMP/windows.3"
twm gaps "$PING_OUT" "$TMP/windows.3" >"$TMP/gaps"
while read -r name gap; do GAP[name]=$gap; done <"$TMP/gaps"

# ---------------------------------------------------------------- checks at the end

guest_hash=$(all_consoles | awk '/^TW-MIG-HASH / { print $2, $3; exit }' || true)
sent_hash=$(jq -r '.sha256 // "-"' "$STREAM_OUT" 2>/dev/null || echo -)
sent_bytes=$(jq -r '.bytes // 0' "$STREAM_OUT" 2>/dev/null || echo 0)
sent_error=$(jq -r '.error // empty' "$STREAM_OUT" 2>/dev/null || echo "no result from the sender")
HASH_OK=0
[[ -n $guest_hash && ${guest_hash%% *} == "$sent_hash" && ${guest_hash##* } == "$sent_bytes" ]] && HASH_OK=1
ok=$HASH_OK
[[ -z $sent_error ]] || ok=0
check stream-hash "$ok" "bytes_sent=$sent_bytes sha256_sent=$sent_hash guest=\"${guest_hash:-none}\" sender_error=\"${sent_error:-none}\" longest_send_block_s=$(jq -r '.longest_send_blocked_s // "-"' "$STREAM_OUT" 2>/dev/null || echo -)"

iperf_rcs=$(all_consoles | awk '/^TW-MIG-IPERF-RC / { printf "%s%s", (n++ ? "," : ""), $3 }' || true)
iperf_lines=$(all_consoles | grep -a '^tw-mig-iperf .*sender' | sed 's/  */ /g' | tr '\n' ';' || true)
ok=1
[[ -n $iperf_rcs ]] || ok=0
[[ $iperf_rcs =~ ^(0,)*0$ ]] || ok=0
check guest-iperf3 "$ok" "sessions_rc=${iperf_rcs:-none} planned_s=$LOAD_SECONDS summary=\"$iperf_lines\""

ok=1
((COMPLETED == MIGRATIONS)) || ok=0
check all-migrations "$ok" "completed=$COMPLETED of $MIGRATIONS"

# Backends: alive, and each served its share of QEMUs (tapwire counts its connections).
for i in 0 1; do
    ok=1 detail=
    tw_alive "${BE_PID[i]}" || { ok=0; detail="gone"; }
    if [[ $BACKEND == tapwire ]] && ((ok)); then
        mj=$(metrics_json "$i")
        conns=$(jq -r '.connections_total // "-"' <<<"$mj")
        disc=$(jq -r '.disconnects // "-"' <<<"$mj")
        # Backend 0 served hops 0, 2, 4, ...; backend 1 hops 1, 3, ...
        want=$(((DONE_MIGRATIONS + 2 - i) / 2))
        detail="connections=$conns disconnects=$disc expected_connections=$want"
        [[ $conns == "$want" ]] || ok=0
        if grep -aqE ' (error|critical) tapwire\[' "${BE_LOG[i]}"; then
            detail+=" log_errors=\"$(grep -aE ' (error|critical) tapwire\[' "${BE_LOG[i]}" | head -n 2 | tr '\n' ' ')\""
            ok=0
        fi
    fi
    ((ok)) && detail="alive $detail"
    check "backend-$i-survived" "$ok" "$detail"
done

# Ping gaps: per migration, then the max and the median.
gaps_list=() downs_list=()
for ((m = 1; m <= DONE_MIGRATIONS; m++)); do
    [[ -n ${GAP[m]:-} ]] && gaps_list+=("${GAP[m]}")
    [[ ${DOWNTIME[m]:-"-"} != "-" ]] && downs_list+=("${DOWNTIME[m]}")
done
stats() { # stats N... -> "median max" (or "- -")
    (($#)) || { echo "- -"; return; }
    printf '%s\n' "$@" | sort -n | awk '{ v[NR] = $1 } END { m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2; printf "%g %g\n", m, v[NR] }'
}
read -r GAP_MED GAP_MAX < <(stats "${gaps_list[@]}")
read -r DOWN_MED DOWN_MAX < <(stats "${downs_list[@]}")
ping_summary=$(grep '^#' "$PING_OUT" 2>/dev/null | sed 's/^# //' || echo "none")
ok=1
[[ $GAP_MAX != - ]] && awk -v g="$GAP_MAX" -v t="$MAX_GAP_MS" 'BEGIN { exit !(g < t) }' || ok=0
check ping-gap "$ok" "max_ms=$GAP_MAX median_ms=$GAP_MED target_ms=$MAX_GAP_MS ping=\"$ping_summary\""

# ---------------------------------------------------------------- report

echo
echo "migration | from -> to | status | QEMU downtime (ms) | total (ms) | ping gap (ms)"
for ((m = 1; m <= DONE_MIGRATIONS; m++)); do
    st=$(sed -n "${m}p" "$RUN_DIR/migrations.jsonl" | jq -r .status 2>/dev/null || echo -)
    printf '%9d | %d -> %d     | %s | %s | %s | %s\n' "$m" $(((m - 1) % 2)) $((m % 2)) "$st" "${DOWNTIME[m]:--}" "${TOTAL[m]:--}" "${GAP[m]:--}"
    echo "ROW backend=$BACKEND mode=$MODE migration=$m status=$st downtime_ms=${DOWNTIME[m]:--} total_ms=${TOTAL[m]:--} ping_gap_ms=${GAP[m]:--}"
done
echo "downtime (QEMU): median $DOWN_MED ms, max $DOWN_MAX ms; ping gap: median $GAP_MED ms, max $GAP_MAX ms"
echo "stream: $sent_bytes bytes, sha256 $sent_hash, guest $( ((HASH_OK)) && echo "matches" || echo "DIFFERS: ${guest_hash:-none}")"
echo "ROW backend=$BACKEND mode=$MODE summary migrations=$MIGRATIONS completed=$COMPLETED downtime_median_ms=$DOWN_MED downtime_max_ms=$DOWN_MAX gap_median_ms=$GAP_MED gap_max_ms=$GAP_MAX hash_ok=$HASH_OK boot_s=$BOOT_SECONDS total_s=$(tw_elapsed "$T0")"
echo "run directory: $RUN_DIR ($(tw_elapsed "$T0")s)"
if [[ -n $SUMMARY ]]; then
    jq -n --arg backend "$BACKEND" --arg mode "$MODE" --argjson migrations "$MIGRATIONS" \
        --argjson completed "$COMPLETED" --arg dmed "$DOWN_MED" --arg dmax "$DOWN_MAX" \
        --arg gmed "$GAP_MED" --arg gmax "$GAP_MAX" --argjson hash "$HASH_OK" \
        --argjson passed "$PASSED" --argjson failed "$FAILED" --arg run_dir "$RUN_DIR" \
        '{backend: $backend, mode: $mode, migrations: $migrations, completed: $completed,
          downtime_median_ms: $dmed, downtime_max_ms: $dmax, gap_median_ms: $gmed, gap_max_ms: $gmax,
          hash_ok: ($hash == 1), passed: $passed, failed: $failed, run_dir: $run_dir}' >"$SUMMARY"
fi
echo "$PASSED passed, $FAILED failed"
((FAILED == 0)) || exit 1
