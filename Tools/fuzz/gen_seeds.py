#!/usr/bin/env python3
"""Writes the seed corpora of tapwire's fuzz targets.

  Fixtures/fuzz/message/  vhost-user message streams (the format in Tools/fuzz/FuzzMessage.swift):
                          QEMU-like start-up sequences and one file per request, plus broken ones
  Fixtures/fuzz/chain/    guest memory images with split rings (format in Tools/fuzz/FuzzChain.swift):
                          direct, indirect, wrapped indices, event idx, buffers across two regions,
                          and hostile chains
  Fixtures/fuzz/packed/   guest images with packed rings (format in Tools/fuzz/FuzzPackedChain.swift):
                          chains, indirect tables, wraps of small and odd-sized rings, event
                          suppression, restarts from GET_VRING_BASE, hostile descriptors
  Fixtures/fuzz/portfilter/  a port-security policy and one Ethernet frame (format in
                          Tools/fuzz/FuzzPortFilter.swift): each kind the classifier tells apart,
                          allowed and spoofed, tagged, with extension headers, GSO-long

Usage: Tools/fuzz/gen_seeds.py [--out Fixtures/fuzz]   (deterministic; rewrites the seed files)
"""
import argparse
import os
import struct

# ---------------------------------------------------------------- vhost-user messages

VERSION = 0x1
REPLY = 0x4
NEED_REPLY = 0x8

REQ = dict(GET_FEATURES=1, SET_FEATURES=2, SET_OWNER=3, RESET_OWNER=4, SET_MEM_TABLE=5, SET_LOG_BASE=6,
           SET_LOG_FD=7, SET_VRING_NUM=8, SET_VRING_ADDR=9, SET_VRING_BASE=10, GET_VRING_BASE=11,
           SET_VRING_KICK=12, SET_VRING_CALL=13, SET_VRING_ERR=14, GET_PROTOCOL_FEATURES=15,
           SET_PROTOCOL_FEATURES=16, GET_QUEUE_NUM=17, SET_VRING_ENABLE=18, SEND_RARP=19, NET_SET_MTU=20,
           SET_BACKEND_REQ_FD=21, IOTLB_MSG=22, GET_CONFIG=24, SET_CONFIG=25, RESET_DEVICE=34,
           GET_MAX_MEM_SLOTS=36, ADD_MEM_REG=37, REM_MEM_REG=38, SET_STATUS=39, GET_STATUS=40)

# Features a QEMU virtio-net frontend negotiates with a vhost-user backend.
VIRTIO_FEATURES = ((1 << 0) | (1 << 1) | (1 << 5) | (1 << 11) | (1 << 15) | (1 << 28) | (1 << 29)
                   | (1 << 30) | (1 << 32))
PROTOCOL_FEATURES = (1 << 0) | (1 << 2) | (1 << 3) | (1 << 4) | (1 << 5) | (1 << 9) | (1 << 15)


def record(request, payload=b"", fds=0, flags=VERSION, split=None, size=None):
    """One input record: control byte, then the 12-byte header and the payload."""
    control = fds & 0x0F
    if split is not None:
        control |= 0x10 | (((split - 1) & 7) << 5)
    header = struct.pack("<III", request, flags, len(payload) if size is None else size)
    return bytes([control]) + header + payload


def u64(v):
    return struct.pack("<Q", v)


def state(index, num):
    return struct.pack("<II", index, num)


def region(gpa, size, uaddr, offset):
    return struct.pack("<QQQQ", gpa, size, uaddr, offset)


def mem_table(regions, full=False):
    body = b"".join(region(*r) for r in regions)
    if full:
        body += b"\0" * (32 * (8 - len(regions)))
    return struct.pack("<II", len(regions), 0) + body


def vring_addr(index, desc, used, avail, flags=0, log=0):
    return struct.pack("<IIQQQQ", index, flags, desc, used, avail, log)


def config(offset, size, flags=0, data=None):
    return struct.pack("<III", offset, size, flags) + (data if data is not None else b"\0" * size)


QEMU_RAM = [(0x0, 0xA0000, 0x7F3A_0000_0000, 0), (0xC0000, 0x1FF40000, 0x7F3A_000C_0000, 0xC0000)]


def queue_setup(index, size=256, base=0x7F3A_0010_0000):
    desc = base + index * 0x4000
    return [
        record(REQ["SET_VRING_NUM"], state(index, size)),
        record(REQ["SET_VRING_BASE"], state(index, 0)),
        record(REQ["SET_VRING_ADDR"], vring_addr(index, desc, desc + 0x2000, desc + 0x1000)),
        record(REQ["SET_VRING_KICK"], u64(index), fds=1),
        record(REQ["SET_VRING_CALL"], u64(index), fds=1),
        record(REQ["SET_VRING_ENABLE"], state(index, 1)),
    ]


def qemu_startup(queue_pairs=1, full_table=True, reply_ack=True):
    """The order QEMU 7.2's vhost-user-net start-up uses (vhost_user_backend_init, vhost_dev_start)."""
    msgs = [
        record(REQ["GET_FEATURES"]),
        record(REQ["GET_PROTOCOL_FEATURES"]),
        record(REQ["SET_PROTOCOL_FEATURES"], u64(PROTOCOL_FEATURES)),
        record(REQ["GET_QUEUE_NUM"]),
        record(REQ["GET_MAX_MEM_SLOTS"]),
        record(REQ["SET_BACKEND_REQ_FD"], fds=1),
        record(REQ["SET_OWNER"]),
        record(REQ["GET_FEATURES"]),
    ]
    for q in range(2 * queue_pairs):
        msgs.append(record(REQ["SET_VRING_CALL"], u64(q), fds=1))
        msgs.append(record(REQ["SET_VRING_ERR"], u64(q), fds=1))
    flags = VERSION | (NEED_REPLY if reply_ack else 0)
    msgs.append(record(REQ["SET_FEATURES"], u64(VIRTIO_FEATURES), flags=flags))
    msgs.append(record(REQ["SET_MEM_TABLE"], mem_table(QEMU_RAM, full=full_table), fds=len(QEMU_RAM), flags=flags))
    for q in range(2 * queue_pairs):
        msgs += queue_setup(q)
    msgs.append(record(REQ["NET_SET_MTU"], u64(1500), flags=flags))
    msgs.append(record(REQ["SEND_RARP"], bytes([0x52, 0x54, 0, 0x12, 0x34, 0x56, 0, 0])))
    return b"".join(msgs)


def qemu_stop_and_reconnect():
    msgs = []
    for q in range(2):
        msgs.append(record(REQ["SET_VRING_ENABLE"], state(q, 0)))
        msgs.append(record(REQ["GET_VRING_BASE"], state(q, 0)))
    msgs.append(record(REQ["RESET_DEVICE"]))
    msgs.append(record(REQ["GET_FEATURES"]))
    msgs.append(record(REQ["SET_FEATURES"], u64(VIRTIO_FEATURES)))
    msgs.append(record(REQ["SET_MEM_TABLE"], mem_table(QEMU_RAM[:1]), fds=1))
    msgs += queue_setup(0, size=1024)
    return b"".join(msgs)


def message_seeds():
    seeds = {
        "qemu-startup-1pair": qemu_startup(1),
        "qemu-startup-2pairs-no-reply-ack": qemu_startup(2, full_table=False, reply_ack=False),
        "qemu-stop-reset-reconnect": qemu_stop_and_reconnect(),
        "hotplug-add-rem-mem-reg": b"".join([
            record(REQ["GET_MAX_MEM_SLOTS"]),
            record(REQ["ADD_MEM_REG"], u64(0) + region(0x1_0000_0000, 0x1000_0000, 0x7F40_0000_0000, 0), fds=1),
            record(REQ["REM_MEM_REG"], u64(0) + region(0x1_0000_0000, 0x1000_0000, 0x7F40_0000_0000, 0), fds=1),
            record(REQ["REM_MEM_REG"], u64(0) + region(0xC0000, 0x1FF40000, 0x7F3A_000C_0000, 0xC0000)),
        ]),
        "config-get-set": b"".join([
            record(REQ["GET_CONFIG"], config(0, 12)),
            record(REQ["GET_CONFIG"], config(0, 256)),
            record(REQ["SET_CONFIG"], config(0, 6, data=bytes([0x52, 0x54, 0, 1, 2, 3]))),
            record(REQ["SET_CONFIG"], config(250, 6)),
        ]),
        "kick-call-nofd": b"".join([
            record(REQ["SET_VRING_KICK"], u64(0x100)),
            record(REQ["SET_VRING_CALL"], u64(0x101)),
            record(REQ["SET_VRING_ERR"], u64(0x1FF)),
        ]),
        "header-split-with-fds": b"".join([
            record(REQ["SET_VRING_KICK"], u64(1), fds=1, split=3),
            record(REQ["SET_MEM_TABLE"], mem_table(QEMU_RAM), fds=2, split=8),
            record(REQ["GET_FEATURES"], split=1),
        ]),
        "zero-u64-payload-gets": b"".join(record(REQ[n], u64(0)) for n in
                                          ["GET_FEATURES", "GET_PROTOCOL_FEATURES", "GET_QUEUE_NUM", "SET_OWNER",
                                           "RESET_OWNER", "GET_MAX_MEM_SLOTS", "RESET_DEVICE"]),
        "unsupported-requests": b"".join([
            record(REQ["SET_LOG_BASE"], u64(0) + u64(0x1000), fds=1),
            record(REQ["SET_LOG_FD"], fds=1),
            record(REQ["IOTLB_MSG"], b"\0" * 64),
            record(REQ["SET_STATUS"], u64(0xF)),
            record(REQ["GET_STATUS"]),
            record(REQ["GET_FEATURES"]),
        ]),
        "mem-table-8-regions": record(REQ["SET_MEM_TABLE"],
                                      mem_table([(i << 32, 1 << 30, 0x7F00_0000_0000 + (i << 32), 0) for i in range(8)]),
                                      fds=8),
        # Refused but in step: the stream goes on.
        "refused-then-valid": b"".join([
            record(REQ["SET_FEATURES"], u64(1) + b"\0"),                 # wrong size
            record(REQ["SET_VRING_NUM"], state(0, 256), fds=1),          # unexpected fd
            record(REQ["SET_MEM_TABLE"], mem_table(QEMU_RAM), fds=1),    # fd count mismatch
            record(REQ["SET_MEM_TABLE"], struct.pack("<II", 9, 0) + b"\0" * 288),  # 9 regions
            record(REQ["GET_CONFIG"], config(200, 100)),                 # outside the config space
            record(REQ["SET_VRING_KICK"], u64(0), fds=2),                # two fds
            record(99),                                                  # unknown request
            record(REQ["GET_FEATURES"]),
        ]),
        # Broken framing: the backend must hang up.
        "bad-version": record(REQ["GET_FEATURES"], flags=0x2),
        "reply-flag-from-frontend": record(REQ["GET_FEATURES"], flags=VERSION | REPLY),
        "payload-too-large": record(REQ["SET_CONFIG"], size=4097),
        "truncated-header": bytes([0]) + struct.pack("<III", 1, 1, 0)[:7],
        "truncated-payload": record(REQ["SET_MEM_TABLE"], mem_table(QEMU_RAM), fds=2)[:40],
        "too-many-fds": record(REQ["SET_MEM_TABLE"], mem_table(QEMU_RAM), fds=9),
        "max-payload-4096": record(REQ["SET_CONFIG"], b"\0" * 4096)[:3000],
    }
    for name in ["GET_FEATURES", "SET_OWNER", "GET_PROTOCOL_FEATURES", "GET_QUEUE_NUM", "RESET_DEVICE"]:
        seeds["one-" + name.lower()] = record(REQ[name])
    seeds["one-set_features"] = record(REQ["SET_FEATURES"], u64(VIRTIO_FEATURES))
    seeds["one-set_vring_addr"] = record(REQ["SET_VRING_ADDR"], vring_addr(1, 0x7F00_0000_4000, 0x7F00_0000_6000,
                                                                        0x7F00_0000_5000, flags=1, log=0x1000))
    seeds["one-set_vring_base-wrapped"] = record(REQ["SET_VRING_BASE"], state(0, 0xFFFE))
    seeds["one-get_vring_base"] = record(REQ["GET_VRING_BASE"], state(1, 0))
    seeds["one-set_backend_req_fd"] = record(REQ["SET_BACKEND_REQ_FD"], fds=1)
    seeds["one-send_rarp"] = record(REQ["SEND_RARP"], bytes([2, 0, 0, 0, 0, 1, 0, 0]))
    return seeds


# ---------------------------------------------------------------- split rings

VRING_NEXT, VRING_WRITE, VRING_INDIRECT = 1, 2, 4


class GuestImage:
    """The guest memory image a virtqueue seed carries after its parameter block."""

    def put(self, gpa, data):
        end = gpa + len(data)
        if len(self.image) < end:
            self.image.extend(b"\0" * (end - len(self.image)))
        self.image[gpa:end] = data


class Ring(GuestImage):
    """A guest image with a split ring, written as a Linux guest driver lays it out."""

    def __init__(self, size, size_a=16384, size_b=16384, gap=0, avail_gpa=0x0, desc_gpa=None, used_gpa=None,
                 start=0):
        self.size = size
        self.size_a, self.size_b, self.gap = size_a, size_b, gap
        self.avail = avail_gpa
        self.desc = desc_gpa if desc_gpa is not None else (avail_gpa + 6 + 2 * size + 15) // 16 * 16
        # The used ring is zero at start; put it where the image need not reach (end of region B).
        self.used = used_gpa if used_gpa is not None else size_a + gap + size_b - (6 + 8 * size + 4) // 4 * 4 - 4
        self.image = bytearray()
        self.start = start
        self.avail_idx = start
        self.free = 0
        self.flags = 0
        self.directions = 0
        self.rounds = 1
        self.max_bytes = 0
        self.capacity = 64
        self.bump = 0
        self.toggle = 0
        self.used_event = None
        self.avail_flags = 0

    def descriptor(self, table_gpa, index, addr, length, flags, nxt=0):
        self.put(table_gpa + 16 * index, struct.pack("<QIHH", addr, length, flags, nxt))

    def chain(self, buffers, writable=False, head=None):
        """Posts a chain of (addr, len) buffers from the descriptor table; returns its head."""
        head = self.free if head is None else head
        for i, (addr, length) in enumerate(buffers):
            last = i == len(buffers) - 1
            flags = (0 if last else VRING_NEXT) | (VRING_WRITE if writable else 0)
            self.descriptor(self.desc, head + i, addr, length, flags, 0 if last else head + i + 1)
        self.free = head + len(buffers)
        self.post(head)
        return head

    def indirect(self, table_gpa, buffers, writable=False):
        for i, (addr, length) in enumerate(buffers):
            last = i == len(buffers) - 1
            flags = (0 if last else VRING_NEXT) | (VRING_WRITE if writable else 0)
            self.descriptor(table_gpa, i, addr, length, flags, 0 if last else i + 1)
        head = self.free
        self.descriptor(self.desc, head, table_gpa, 16 * len(buffers), VRING_INDIRECT)
        self.free += 1
        self.post(head)
        return head

    def post(self, head):
        self.put(self.avail + 4 + 2 * (self.avail_idx % self.size), struct.pack("<H", head))
        self.avail_idx = (self.avail_idx + 1) & 0xFFFF

    def encode(self):
        self.put(self.avail, struct.pack("<HH", self.avail_flags, self.avail_idx))
        if self.used_event is not None:
            self.put(self.avail + 4 + 2 * self.size, struct.pack("<H", self.used_event))
        log2 = self.size.bit_length() - 1
        header = struct.pack("<BBHHHHIIIBBHHB3x", log2, self.flags, self.start, self.size_a // 8 - 1,
                             self.size_b // 8 - 1, self.gap // 8, self.desc, self.avail, self.used,
                             self.directions | ((self.rounds - 1) << 4), self.max_bytes, self.capacity - 1,
                             self.bump, self.toggle)
        assert len(header) == 32
        return header + bytes(self.image)


INDIRECT, EVENT_IDX, LEAD_A, LEAD_B, REVERSED, ACCUMULATE, UNDO = 1, 2, 4, 8, 16, 32, 64


def chain_seeds():
    seeds = {}
    B0 = 16384  # guest physical start of region B (adjacent regions)

    r = Ring(8)
    r.chain([(0x2000, 12 + 60)])
    seeds["tx-one-descriptor"] = r

    r = Ring(16)
    r.chain([(0x2000, 12), (0x2100, 1514)])
    r.chain([(0x2800, 12), (0x2900, 100), (B0 + 0x100, 900)])
    r.chain([(B0 + 0x800, 74)])
    seeds["tx-header-and-data-chains"] = r

    r = Ring(64)
    for i in range(8):
        r.chain([(0x2000 + 0x600 * i % 0x1800, 1526)], writable=True)
    r.directions = 0b1
    r.flags = ACCUMULATE
    seeds["rx-mergeable-batch"] = r

    r = Ring(16)
    r.flags = INDIRECT
    r.indirect(0x800, [(0x2000, 12), (0x2100, 1500), (B0 + 0x40, 64)])
    r.indirect(0x900, [(0x3000, 66), (0x3100, 2000)])
    r.chain([(0x3800, 60)])
    seeds["tx-indirect"] = r

    r = Ring(16)
    r.flags = INDIRECT
    r.directions = 0b1
    r.indirect(0x800, [(B0 + 0x1000, 4096), (B0 + 0x2000, 4096), (0x3000, 4096)], writable=True)
    seeds["rx-indirect-big"] = r

    r = Ring(8, start=0xFFFD)
    for i in range(6):
        r.chain([(0x2000 + 0x100 * i, 200)])
    seeds["wrapped-indices"] = r

    r = Ring(16, start=0xFFF0)
    r.flags = EVENT_IDX | INDIRECT
    r.used_event = 0xFFF2
    r.chain([(0x2000, 100)])
    r.indirect(0x800, [(0x2100, 100), (0x2200, 100)])
    r.chain([(0x2300, 100)])
    seeds["event-idx-wrapped"] = r

    r = Ring(8)
    r.chain([(B0 - 100, 300)])  # crosses from mapping A into mapping B
    r.chain([(B0 - 8, 8), (B0, 8)])
    seeds["buffer-across-regions"] = r

    r = Ring(8, gap=4096)
    r.chain([(B0 + 4096 + 64, 500)])
    r.chain([(B0 - 10, 20)])  # runs into the hole
    seeds["regions-with-hole"] = r

    r = Ring(8, size_a=8192, size_b=32768)
    r.flags = LEAD_A | LEAD_B | REVERSED | UNDO
    r.chain([(0x1000, 100)])
    r.chain([(8192 + 32768 - 16, 16)])  # the last bytes of B
    r.chain([(8190, 4)])
    seeds["guard-flush-reversed-undo"] = r

    r = Ring(8, size_a=4096 + 24, size_b=40, used_gpa=0x800)
    r.flags = LEAD_A  # A starts on its page; its odd end is ASan-poisoned up to the page end
    r.chain([(4096 + 16, 8), (4096 + 24, 40)])
    seeds["odd-region-sizes"] = r

    r = Ring(32)
    r.chain([(0x2000, 64)])
    r.chain([(0x2100, 64)])
    r.rounds = 3
    r.directions = 0b010
    r.bump = 1
    r.toggle = 1
    seeds["three-rounds-driver-posts"] = r

    r = Ring(256)
    for i in range(4):
        r.chain([(0x3000 + 0x200 * i, 512)])
    seeds["queue-256"] = r

    r = Ring(1)
    r.chain([(0x100 + 0x2000, 64)])
    seeds["queue-1"] = r

    # Hostile chains: each must be refused (or fail the queue) without a stray access.
    r = Ring(8)
    r.descriptor(r.desc, 0, 0x2000, 64, VRING_NEXT, 1)
    r.descriptor(r.desc, 1, 0x2100, 64, VRING_NEXT, 0)  # loop
    r.post(0)
    seeds["hostile-loop"] = r

    r = Ring(8)
    r.descriptor(r.desc, 0, 0x2000, 64, VRING_NEXT, 9)
    r.post(0)
    seeds["hostile-next-out-of-range"] = r

    r = Ring(8)
    r.flags = INDIRECT
    r.descriptor(0x800, 0, 0x900, 32, VRING_INDIRECT)
    r.descriptor(r.desc, 0, 0x800, 16, VRING_INDIRECT)
    r.post(0)
    r.descriptor(r.desc, 1, 0x800, 16, VRING_INDIRECT | VRING_NEXT, 2)
    r.post(1)
    r.descriptor(r.desc, 2, 0x800, 24, VRING_INDIRECT)
    r.post(2)
    r.descriptor(r.desc, 3, 0x800, 0, VRING_INDIRECT)
    r.post(3)
    r.descriptor(r.desc, 4, 2 * B0 - 16, 32, VRING_INDIRECT)  # table past the end of memory
    r.post(4)
    seeds["hostile-indirect"] = r

    r = Ring(8)
    r.descriptor(r.desc, 0, 0x2000, 64, VRING_INDIRECT)  # not negotiated
    r.post(0)
    r.descriptor(r.desc, 1, 0x2000, 64, VRING_WRITE)  # wrong direction for TX
    r.post(1)
    r.descriptor(r.desc, 2, 0xFFFF_FFFF_FFFF_FFF0, 64, 0)  # wraps the address space
    r.post(2)
    r.descriptor(r.desc, 3, 2 * B0 - 8, 64, 0)  # past the end of memory
    r.post(3)
    r.descriptor(r.desc, 4, 0x2000, 0xFFFF_FFFF, 0)  # too large
    r.post(4)
    seeds["hostile-buffers"] = r

    r = Ring(8)
    r.capacity = 2
    r.chain([(B0 - 4, 8), (0x2000, 8)])  # three segments, room for two
    r.max_bytes = 1  # 64 bytes
    r.chain([(0x2000, 100)])
    seeds["hostile-segments-and-size"] = r

    r = Ring(8)
    r.post(12)  # head outside the ring
    seeds["hostile-head-out-of-range"] = r

    r = Ring(8)
    r.chain([(0x2000, 64)])
    r.avail_idx = 0x40  # jumps further than the ring size
    seeds["hostile-avail-jump"] = r

    r = Ring(8, used_gpa=0x0)  # the used ring over the avail ring
    r.chain([(0x2000, 64)])
    r.chain([(0x2100, 64)])
    seeds["hostile-used-over-avail"] = r

    r = Ring(8, desc_gpa=B0 - 64)  # descriptor table across the region boundary
    seeds["hostile-table-across-regions"] = r
    return seeds


# ---------------------------------------------------------------- packed rings

P_AVAIL, P_USED = 1 << 7, 1 << 15
P_REVERSE_RETURNS = 128
P_RESTART = 0x80  # in the repost byte


class PackedRing(GuestImage):
    """A guest image with a packed ring (format in Tools/fuzz/FuzzPackedChain.swift), written as
    Linux's virtio_ring does: chains in ring order, the buffer id in each descriptor."""

    def __init__(self, size, size_a=16384, size_b=16384, gap=0, desc_gpa=0x0, driver_gpa=None, device_gpa=None,
                 avail=(0, 1), used=(0, 1)):
        self.size = size
        self.size_a, self.size_b, self.gap = size_a, size_b, gap
        self.desc = desc_gpa
        self.driver = driver_gpa if driver_gpa is not None else (desc_gpa + 16 * size + 3) // 4 * 4
        self.device = device_gpa if device_gpa is not None else self.driver + 4
        self.image = bytearray()
        self.avail, self.used = avail, used
        self.index, self.wrap = avail
        self.next_id = 0
        self.flags = 0
        self.directions = 0
        self.rounds = 1
        self.driver_mode = 0
        self.driver_off_wrap = 0
        self.max_bytes = 0
        self.capacity = 64
        self.repost = 0

    def raw(self, addr, length, ident, flags):
        """One descriptor at the driver's position, made available with its slot's counter."""
        bits = P_AVAIL if self.wrap else P_USED
        self.put(self.desc + 16 * self.index, struct.pack("<QIHH", addr, length, ident, flags | bits))
        self.index += 1
        if self.index == self.size:
            self.index, self.wrap = 0, 1 - self.wrap

    def chain(self, buffers, writable=False, ident=None):
        ident = self.next_id if ident is None else ident
        self.next_id += 1
        for i, (addr, length) in enumerate(buffers):
            flags = (VRING_NEXT if i < len(buffers) - 1 else 0) | (VRING_WRITE if writable else 0)
            self.raw(addr, length, ident, flags)
        return ident

    def indirect(self, table_gpa, buffers, writable=False):
        for i, (addr, length) in enumerate(buffers):
            self.put(table_gpa + 16 * i, struct.pack("<QIHH", addr, length, 0, VRING_WRITE if writable else 0))
        ident = self.next_id
        self.next_id += 1
        self.raw(table_gpa, 16 * len(buffers), ident, VRING_INDIRECT)
        return ident

    def encode(self):
        def pos(p):
            return p[0] | (p[1] << 15)
        size_word = self.size - 1 if self.size <= 64 else 0xF000 + (self.size - 1)
        assert (1 + size_word % (2048 if size_word >= 0xF000 else 64)) == self.size
        header = struct.pack("<HBBHHHIIIIBHBH", size_word, self.flags,
                             self.directions | ((self.rounds - 1) << 4) | (self.driver_mode << 6),
                             self.size_a // 8 - 1, self.size_b // 8 - 1, self.gap // 8, self.desc, self.driver,
                             self.device, pos(self.avail) | (pos(self.used) << 16), self.max_bytes, self.capacity - 1,
                             self.repost, self.driver_off_wrap)
        assert len(header) == 32, len(header)
        return header + bytes(self.image)


def packed_seeds():
    seeds = {}
    B0 = 16384

    r = PackedRing(8)
    r.chain([(0x2000, 72)])
    seeds["tx-one-descriptor"] = r

    r = PackedRing(16)
    r.chain([(0x2000, 12), (0x2100, 1514)])
    r.chain([(0x2800, 12), (0x2900, 100), (B0 + 0x100, 900)])
    r.chain([(B0 + 0x800, 74)])
    seeds["tx-header-and-data-chains"] = r

    r = PackedRing(64)
    for i in range(8):
        r.chain([(0x2000 + 0x600 * i % 0x1800, 1526)], writable=True)
    r.directions, r.flags = 0b1, ACCUMULATE
    seeds["rx-batch"] = r

    r = PackedRing(16)
    r.indirect(0x400, [(0x2000, 12), (0x2100, 1000)])
    r.flags = INDIRECT
    seeds["tx-indirect"] = r

    r = PackedRing(16)
    r.indirect(0x400, [(0x2000 + 0x100 * i, 0x100) for i in range(16)], writable=True)
    r.flags, r.directions = INDIRECT, 1
    seeds["rx-indirect-big"] = r

    r = PackedRing(5, avail=(3, 0), used=(3, 0))
    r.chain([(0x2000, 64), (0x2100, 64)])
    r.chain([(0x2000, 64), (0x2100, 64)])
    r.chain([(0x2200, 64)])
    r.rounds, r.repost = 3, 5
    seeds["wrap-size-5-three-rounds"] = r

    r = PackedRing(7, avail=(6, 1), used=(6, 1))
    for _ in range(4):
        r.chain([(0x2000, 64)])
    r.rounds, r.repost = 4, 0x80 | 3
    seeds["wrapped-restart-each-round"] = r

    r = PackedRing(8)
    for _ in range(4):
        r.chain([(0x2000, 64)])
    r.flags = EVENT_IDX
    r.driver_mode, r.driver_off_wrap = 2, 2 | (1 << 15)
    r.rounds, r.repost = 2, 4
    seeds["event-idx-driver-desc"] = r

    r = PackedRing(8)
    r.chain([(0x2000, 64)])
    r.driver_mode = 1
    seeds["driver-events-disabled"] = r

    r = PackedRing(8)
    r.chain([(0x2000, 64)])
    r.driver_mode = 3
    seeds["driver-events-reserved-mode"] = r

    r = PackedRing(16)
    for _ in range(6):
        r.chain([(0x2000, 64), (0x2100, 64)], writable=True)
    r.directions, r.flags = 1, REVERSED | P_REVERSE_RETURNS | UNDO
    seeds["rx-out-of-order-undo"] = r

    r = PackedRing(256, size_a=32768)
    for i in range(32):
        r.chain([(0x5000 + 0x40 * i, 0x40)])
    seeds["queue-256"] = r

    r = PackedRing(2048, size_a=32768, size_b=32768)
    r.chain([(B0 * 2 + 0x100, 100)])
    seeds["queue-2048"] = r

    r = PackedRing(16, gap=4096)
    r.chain([(B0 - 0x80, 0x100)])
    seeds["hostile-buffer-in-gap"] = r

    r = PackedRing(16)
    r.chain([(B0 - 0x80, 0x100)])
    seeds["buffer-across-regions"] = r

    r = PackedRing(4)
    for _ in range(4):
        r.raw(0x2000, 8, 0, VRING_NEXT)
    seeds["hostile-chain-longer-than-ring"] = r

    r = PackedRing(8)
    r.raw(0x2000, 8, 0, VRING_NEXT)
    seeds["hostile-incomplete-chain"] = r

    r = PackedRing(8)
    r.raw(0x2000, 8, 99, 0)
    seeds["hostile-id-out-of-range"] = r

    r = PackedRing(8)
    r.chain([(0x2000, 8)], ident=1)
    r.chain([(0x2100, 8)], ident=1)
    seeds["hostile-id-in-use"] = r

    r = PackedRing(8)
    r.raw(0x400, 0, 0, VRING_INDIRECT)
    r.raw(0x400, 24, 1, VRING_INDIRECT)
    r.raw(0x1 << 30, 32, 2, VRING_INDIRECT)
    r.put(0x480, struct.pack("<QIHH", 0x400, 16, 0, VRING_INDIRECT))
    r.raw(0x480, 16, 3, VRING_INDIRECT)
    r.raw(0x400, 16, 4, VRING_INDIRECT | VRING_NEXT)
    r.raw(0x2000, 8, 4, 0)
    r.flags = INDIRECT
    seeds["hostile-indirect"] = r

    r = PackedRing(8)
    r.raw(0x2000, 8, 0, VRING_NEXT)
    r.raw(0x400, 16, 0, VRING_INDIRECT)
    r.flags = INDIRECT
    seeds["hostile-indirect-in-chain"] = r

    r = PackedRing(8)
    r.raw(0x2000, 8, 0, VRING_NEXT | VRING_WRITE)
    r.raw(0x2100, 8, 0, 0)
    r.raw(0x2200, 8, 1, 0)
    r.directions = 1
    seeds["hostile-directions"] = r

    r = PackedRing(8)
    r.raw(0x1 << 40, 8, 0, 0)
    r.raw(0xFFFF_FFFF_FFFF_FFF0, 0x100, 1, 0)
    r.raw(0, 0xFFFF_FFFF, 2, 0)
    r.max_bytes = 1
    seeds["hostile-buffers"] = r

    r = PackedRing(8, avail=(5, 1), used=(1, 1))
    r.chain([(0x2000, 8), (0x2100, 8), (0x2200, 8), (0x2300, 8), (0x2400, 8)])
    seeds["hostile-chain-into-held-slots"] = r

    r = PackedRing(8, desc_gpa=0x8, driver_gpa=0x202, device_gpa=0x206)
    seeds["hostile-misaligned-rings"] = r

    r = PackedRing(8, device_gpa=0x10)
    r.chain([(0x2000, 8)], writable=True)
    r.directions = 1
    seeds["hostile-device-area-on-ring"] = r

    return seeds


# ---------------------------------------------------------------- port-security frames

PF_MAC = bytes.fromhex("525400123456")
PF_OTHER_MAC = bytes.fromhex("525400aabbcc")
PF_BROADCAST = b"\xff" * 6
PF_IPV4 = bytes([10, 0, 0, 5])
PF_GATEWAY = bytes([10, 0, 0, 1])
PF_IPV6 = bytes.fromhex("20010db8000000000000000000000005")
PF_LINK_LOCAL = bytes.fromhex("fe80000000000000505400fffe123456")
PF_ALL_NODES = bytes.fromhex("ff020000000000000000000000000001")
PF_UNSPECIFIED = bytes(16)
ETH_IPV4, ETH_ARP, ETH_RARP, ETH_IPV6, ETH_VLAN, ETH_QINQ = 0x0800, 0x0806, 0x8035, 0x86DD, 0x8100, 0x88A8
TCP, UDP, ICMPV6, HOP_BY_HOP, FRAGMENT, AUTH = 6, 17, 58, 0, 44, 51
NS, NA, RS, RA, SLLA, TLLA = 135, 136, 133, 134, 1, 2
GSO_LENGTH = 65000


def pf_policy(allow_router=False, networks=((False, 32, PF_IPV4), (False, 24, bytes([192, 168, 7, 0])), (True, 128, PF_IPV6)),
              extra=0):
    """The input's policy record: flags, MAC, the frame's length past the input, networks."""
    out = bytes([(1 if allow_router else 0) | (len(networks) << 1)]) + PF_MAC + struct.pack(">H", extra)
    for v6, length, address in networks:
        out += bytes([(0x80 if v6 else 0) | length]) + address.ljust(16, b"\0")
    return out


def eth(payload, ethertype, src=PF_MAC, dst=PF_OTHER_MAC, tags=()):
    return dst + src + b"".join(struct.pack(">HH", tpid, 100) for tpid in tags) + struct.pack(">H", ethertype) + payload


def ipv4(payload, proto, src=PF_IPV4, frag=0):
    return struct.pack(">BBHHHBBH", 0x45, 0, 20 + len(payload), 1, frag, 64, proto, 0) + src + PF_GATEWAY + payload


def udp(sport, dport, data=bytes(4)):
    return struct.pack(">HHHH", sport, dport, 8 + len(data), 0) + data


def tcp(data=b""):
    return struct.pack(">HH", 40000, 80) + bytes(16) + data


def ipv6(payload, nh, src=PF_IPV6, dst=PF_ALL_NODES):
    return struct.pack(">IHBB", 0x60000000, len(payload), nh, 255) + src + dst + payload


def icmpv6(kind, body=b""):
    return bytes([kind, 0, 0, 0, 0, 0, 0, 0]) + body


def arp(op=1, sender_mac=PF_MAC, sender_ip=PF_IPV4):
    return struct.pack(">HHBBH", 1, ETH_IPV4, 6, 4, op) + sender_mac + sender_ip + bytes(6) + PF_GATEWAY


def portfilter_seeds():
    v4, v6 = (lambda p, proto, **k: eth(ipv4(p, proto, **k), ETH_IPV4)), (lambda p, nh, **k: eth(ipv6(p, nh, **k), ETH_IPV6))
    slla, tlla = bytes([SLLA, 1]) + PF_MAC, bytes([TLLA, 1]) + PF_MAC
    frames = {
        "ipv4-tcp": v4(tcp(), TCP),
        "ipv4-spoofed": v4(tcp(), TCP, src=bytes([10, 0, 0, 6])),
        "dhcp-discover": v4(udp(68, 67), UDP, src=bytes(4)),
        "dhcp-offer": v4(udp(67, 68), UDP),
        "ipv4-later-fragment": v4(udp(67, 68), UDP, frag=185),
        "arp-request": eth(arp(), ETH_ARP),
        "arp-probe": eth(arp(sender_ip=bytes(4)), ETH_ARP, dst=PF_BROADCAST),
        "arp-spoofed-mac": eth(arp(sender_mac=PF_OTHER_MAC), ETH_ARP),
        "rarp": eth(arp(op=3, sender_ip=bytes(4)), ETH_RARP),
        "ipv6-udp": v6(udp(5000, 53), UDP),
        "ipv6-link-local-echo": v6(icmpv6(128), ICMPV6, src=PF_LINK_LOCAL),
        "dhcpv6-reply": v6(udp(547, 546), UDP, src=PF_LINK_LOCAL),
        "ns-dad": v6(icmpv6(NS, PF_IPV6), ICMPV6, src=PF_UNSPECIFIED),
        "ns-slla": v6(icmpv6(NS, PF_IPV6 + slla), ICMPV6, src=PF_LINK_LOCAL),
        "na-tlla": v6(icmpv6(NA, PF_IPV6 + bytes([14, 1]) + bytes(6) + tlla), ICMPV6),
        "rs-slla": v6(icmpv6(RS, slla), ICMPV6, src=PF_LINK_LOCAL),
        "ra": v6(icmpv6(RA, bytes(8) + slla), ICMPV6, src=PF_LINK_LOCAL),
        "mldv2-hop-by-hop": v6(bytes([ICMPV6, 0, 5, 2, 0, 0, 1, 0]) + icmpv6(143), HOP_BY_HOP, src=PF_UNSPECIFIED),
        "hop-by-hop-fragment-udp": v6(bytes([FRAGMENT, 0]) + bytes(6) + bytes([UDP, 0, 0, 1]) + bytes(4) + udp(4000, 4001), HOP_BY_HOP),
        "later-fragment": v6(bytes([UDP, 0, 0x05, 0xc8]) + bytes(4) + udp(547, 546), FRAGMENT),
        "auth-header-ra": v6(bytes([ICMPV6, 4]) + bytes(22) + icmpv6(RA), AUTH, src=PF_LINK_LOCAL),
        "vlan-ipv4": eth(ipv4(tcp(), TCP), ETH_IPV4, tags=(ETH_VLAN,)),
        "qinq-ipv6": eth(ipv6(tcp(), TCP), ETH_IPV6, tags=(ETH_QINQ, ETH_VLAN)),
        "three-tags": eth(ipv4(tcp(), TCP), ETH_IPV4, tags=(ETH_QINQ, ETH_VLAN, ETH_VLAN)),
        "lldp": eth(bytes(46), 0x88CC, dst=bytes.fromhex("0180c200000e")),
        "foreign-mac": eth(ipv4(tcp(), TCP), ETH_IPV4, src=PF_OTHER_MAC),
    }
    seeds = {name: pf_policy() + frame for name, frame in frames.items()}
    seeds["ra-allow-router"] = pf_policy(allow_router=True) + frames["ra"]
    seeds["no-networks-dhcp"] = pf_policy(networks=()) + frames["dhcp-discover"]
    seeds["wide-networks"] = pf_policy(networks=((False, 0, b""), (True, 0, b""))) + frames["ipv4-spoofed"]
    gso = eth(ipv4(tcp(bytes(200)), TCP), ETH_IPV4)
    seeds["gso-ipv4-tcp"] = pf_policy(extra=GSO_LENGTH - len(gso)) + gso
    return seeds


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    parser.add_argument("--out", default=os.path.join(root, "Fixtures", "fuzz"))
    args = parser.parse_args()
    for target, seeds in (("message", message_seeds()), ("chain", {k: v.encode() for k, v in chain_seeds().items()}),
                          ("packed", {k: v.encode() for k, v in packed_seeds().items()}),
                          ("portfilter", portfilter_seeds())):
        directory = os.path.join(args.out, target)
        os.makedirs(directory, exist_ok=True)
        for old in os.listdir(directory):
            if old.startswith("seed-"):
                os.remove(os.path.join(directory, old))
        for name, data in sorted(seeds.items()):
            assert len(data) < 4096, f"{target}/{name} is {len(data)} bytes"
            with open(os.path.join(directory, f"seed-{name}"), "wb") as f:
                f.write(data)
        print(f"{directory}: {len(seeds)} seeds, {sum(len(s) for s in seeds.values())} bytes")


if __name__ == "__main__":
    main()
