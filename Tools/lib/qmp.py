"""A QMP client for the check scripts' python helpers (python3 standard library only).
QMP traffic is appended to $TW_QMP_LOG when set; events are kept for wait_event."""
import json, os, socket, time

LOG = os.environ.get("TW_QMP_LOG")


def log(direction, obj):
    if LOG:
        with open(LOG, "a") as f:
            f.write(f"{time.strftime('%H:%M:%S')} {direction} {json.dumps(obj)}\n")


class QMP:
    """One QMP connection. OSError when QEMU cannot be reached, ConnectionError when it hangs
    up, TimeoutError when it does not answer in time, RuntimeError for an error reply."""

    def __init__(self, path, timeout=30, name=None):
        self.name = name or os.path.basename(path)
        self.s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.s.settimeout(timeout)
        self.s.connect(path)
        self.buf, self.events, self.n = b"", [], 0
        if "QMP" not in self.read(time.monotonic() + timeout):
            raise ConnectionError(f"{self.name}: no QMP greeting")
        self.call("qmp_capabilities", quiet=True)

    def read(self, deadline):
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{self.name}: no message from QEMU in time")
            self.s.settimeout(left)
            try:
                data = self.s.recv(65536)
            except socket.timeout:
                continue
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
            except TimeoutError:
                raise TimeoutError(f"{self.name}: {execute}: no answer within {timeout}s")
            if "event" in r:
                self.events.append(r)
            elif r.get("id") == self.n:
                if not quiet or "error" in r:
                    log(f"{self.name} <-", r)
                if "error" in r:
                    raise RuntimeError(f"{execute}: {r['error'].get('class')}: {r['error'].get('desc')}")
                return r.get("return")

    def wait_event(self, name, match, timeout):
        """The first event NAME whose data MATCH accepts, or None after TIMEOUT seconds."""
        deadline = time.monotonic() + timeout
        while True:
            for i, e in enumerate(self.events):
                if e["event"] == name and match(e.get("data", {})):
                    return self.events.pop(i)
            try:
                r = self.read(deadline)
            except TimeoutError:
                return None
            if "event" in r:
                self.events.append(r)


def run_commands(path, texts):
    """Runs QMP commands given as JSON texts ({"execute": ..., "arguments": ...}) in order on
    one connection, printing each return as one JSON line."""
    q = QMP(path)
    for text in texts:
        cmd = json.loads(text)
        print(json.dumps(q.call(cmd["execute"], cmd.get("arguments"))), flush=True)
