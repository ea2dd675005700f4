#!/usr/bin/env python3
"""Helpers for the live-migration checks, Tools/migration-check.sh and
Tools/libvirt-migration-check.sh (python3 standard library only).
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
  twmig.py frames IFACE MAC OUT            the quiet spells of the frames from MAC that IFACE
                                            receives from its backend: a line "FROM TO" (epoch)
                                            for each spell of 20 ms or more (FROM 0 before the
                                            first frame), "FROM -" for the last at SIGTERM
  twmig.py stamp OUT CMD...                 run CMD with its stdout and stderr into OUT, each
                                            line prefixed with "epoch " (tapwire's own log has
                                            whole seconds); SIGTERM/SIGINT are passed on
  twmig.py gaps PINGOUT WINDOWS             WINDOWS: lines "NAME START END" (epoch); prints
                                            "NAME GAP_MS": the longest time between two replies
                                            that overlaps the window
QMP traffic is appended to $TW_QMP_LOG when set (Tools/lib/qmp.py)."""
import hashlib, json, os, random, select, signal, socket, struct, sys, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from qmp import QMP, log, run_commands  # noqa: E402


def die(msg, rc=1):
    print(f"twmig: {msg}", file=sys.stderr)
    sys.exit(rc)

def qmp_main(args):
    try:
        run_commands(args[0], args[1:])
    except (RuntimeError, TimeoutError) as e:
        die(str(e))

def wait_qmp_main(args):
    path, timeout = args[0], float(args[1])
    deadline = time.monotonic() + timeout
    while True:
        try:
            q = QMP(path, timeout=5)
            print(json.dumps(q.call("query-status", quiet=True)))
            return
        except (OSError, ConnectionError, RuntimeError, TimeoutError):
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

ETH_ALEN = 6
ETH_P_ALL = 0x0003


def frames_from(iface, mac, snaplen):
    """(epoch, frame, packet type) of each frame whose source is MAC seen on IFACE, until
    SIGINT or SIGTERM."""
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    s.bind((iface, 0))
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
        frame, addr = s.recvfrom(snaplen)
        if frame[ETH_ALEN:2 * ETH_ALEN] == mac:
            yield time.time(), frame, addr[2]


def sniff_main(args):
    """Announces from MAC seen on IFACE: gratuitous ARP (sender IP == target IP) and RARP."""
    iface, mac, out = args[0], bytes.fromhex(args[1].replace(":", "")), args[2]
    with open(out, "w", buffering=1) as f:
        for now, frame, _ in frames_from(iface, mac, 2048):
            if len(frame) < 42:
                continue
            kind, etype = None, frame[12:14]
            if etype == b"\x80\x35":
                kind = "rarp"
            elif etype == b"\x08\x06" and frame[28:32] == frame[38:42]:
                kind = "garp"
            if kind:
                f.write(f"{now:.6f} {kind}\n")


def frames_main(args):
    iface, mac, out = args[0], bytes.fromhex(args[1].replace(":", "")), args[2]
    last = 0.0
    with open(out, "w", buffering=1) as f:
        for now, frame, packet_type in frames_from(iface, mac, 64):
            # What the host sends into the TAP is PACKET_OUTGOING; the backend's frames are
            # not. The backend's own RARP (SEND_RARP) is not the guest's traffic.
            if packet_type == socket.PACKET_OUTGOING or frame[12:14] == b"\x80\x35":
                continue
            if now - last >= 0.020:
                f.write(f"{last:.6f} {now:.6f}\n")
            last = now
        f.write(f"{last:.6f} -\n")

def stamp_main(args):
    import subprocess
    out, cmd = args[0], args[1:]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda n, _: p.send_signal(n))
    with open(out, "ab", buffering=0) as f:
        for line in p.stdout:
            f.write(f"{time.time():.6f} ".encode() + line)
    sys.exit(p.wait())

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
             "ping": ping_main, "send": send_main, "gaps": gaps_main, "sniff": sniff_main,
             "frames": frames_main, "stamp": stamp_main}
    if len(sys.argv) < 3 or sys.argv[1] not in mains:
        die(__doc__, 2)
    mains[sys.argv[1]](sys.argv[2:])
