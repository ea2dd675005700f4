#!/usr/bin/env python3
"""Replays vhost-user message streams, in the fuzz corpus's format (Tools/fuzz/FuzzMessage.swift),
into a running backend's socket, one connection per file. Python 3 standard library only.

  replay-messages.py SOCKET FILE...

A file is a sequence of records: a control byte (bits 0-3: how many descriptors go with the
message, fresh eventfds; bit 4: the header goes in two pieces, the first of 1 + bits 5-7
bytes), then a 12-byte header and the payload its size field gives (fewer at the end of the
file: a frontend that hangs up mid-message). Replies are read and dropped. Prints one line per
file: "FILE messages=N replies_bytes=M" and exits 1 if a connection could not be made."""
import os, socket, struct, sys, time

HEADER = 12
MAX_PAYLOAD = 4096  # VhostUserLimits.maxPayload
MAX_MESSAGES = 64   # as the fuzz target


def records(data):
    pos, out = 0, []
    while len(out) < MAX_MESSAGES and pos < len(data):
        control = data[pos]
        pos += 1
        if pos >= len(data):
            break
        start, end = pos, min(len(data), pos + HEADER)
        if end - start == HEADER:
            size = struct.unpack_from("<I", data, start + 8)[0]
            end = min(len(data), end + size) if size <= MAX_PAYLOAD else len(data)
        split = 1 + (control >> 5) if control & 0x10 else None
        out.append((control & 0x0F, split, data[start:end]))
        pos = end
    return out


def drain(sock, seconds):
    got, deadline = 0, time.monotonic() + seconds
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return got
        sock.settimeout(left)
        try:
            data = sock.recv(65536)
        except (socket.timeout, BlockingIOError):
            return got
        except OSError:
            return got
        if not data:
            return got
        got += len(data)


def replay(path, name):
    with open(name, "rb") as f:
        data = f.read()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    deadline = time.monotonic() + 10
    while True:
        try:
            sock.connect(path)
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    sent = replies = 0
    for count, split, wire in records(data):
        fds = [os.eventfd(0, os.EFD_CLOEXEC) for _ in range(count)]
        pieces = [wire[:split], wire[split:]] if split and split < len(wire) else [wire]
        try:
            for n, piece in enumerate(pieces):
                if n == 0 and fds:
                    socket.send_fds(sock, [piece], fds)
                else:
                    sock.sendall(piece)
            sent += 1
        except OSError:
            break  # the backend ended the connection: what a hostile stream earns
        finally:
            for fd in fds:
                os.close(fd)
        replies += drain(sock, 0.02)
    replies += drain(sock, 0.2)
    sock.close()
    print(f"{os.path.basename(name)} messages={sent} replies_bytes={replies}", flush=True)


def main():
    if len(sys.argv) < 3:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    for name in sys.argv[2:]:
        replay(sys.argv[1], name)


if __name__ == "__main__":
    main()
