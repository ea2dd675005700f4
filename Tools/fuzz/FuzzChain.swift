// libFuzzer target: split virtqueues in guest memory that a hostile guest controls.
//
// Input: a 32-byte parameter block, then the guest memory image (byte i lands at guest
// physical address i if that address is in a region; the rest of guest memory is zero).
//
//   0  u8   queue size: 1 << (b % 10), or 1 << (b % 16) when b >= 240
//   1  u8   flags: 0 INDIRECT_DESC negotiated, 1 EVENT_IDX negotiated,
//                  2 region A sits against its leading guard page (else its trailing one),
//                  3 same for region B, 4 hand the regions to GuestMemoryMap as [B, A],
//                  5 keep appending iovecs across a round's chains (as the RX path batches),
//                  6 undo every other pop and pop again (must give the same chain)
//   2  u16  start index (the queue's nextAvail and nextUsed, as after SET_VRING_BASE)
//   4  u16  region A size / 8 (1 + v % 4096: 8 bytes .. 32 KiB), at guest physical 0
//   6  u16  region B size / 8 (same), at guest physical sizeA + gap
//   8  u16  gap / 8 between A and B in guest physical space (v % 1024; 0: adjacent, so
//           buffers cross from one mapping to the other)
//  10  u32  descriptor table, 14 u32 avail ring, 18 u32 used ring: guest physical addresses,
//           handed to SplitQueue.resolveRing as the frontend's userspace addresses of those bytes
//  22  u8   bits 0-3 direction of rounds 0-3 (1: device-writable, as RX), bits 4-5 rounds - 1
//  23  u8   maxBytes: b < 128: 64 * b (0: 65562), else 1 << (b - 128) (capped at 2^63)
//  24  u16  iovec capacity: 1 + v % 1024
//  26  u16  the driver adds this to avail.idx before each later round
//  28  u8   bit 0: the driver toggles avail.flags NO_INTERRUPT between rounds
//  29..31   guest ranges for GuestMemoryMap's read/write/hostPointer checks
//
// Guest memory is FuzzGuestMemory.swift's: two regions behind guard pages, and a model of them
// independent of GuestMemoryMap. The harness walks every chain itself; SplitQueue must agree
// with it exactly, and every iovec must lie inside a region, checked against the region bounds.
import Glibc
import CTapwire
import GuestMemory
import Virtqueue
import FuzzSupport

private enum Expected: Equatable {
    case accepted(bytes: UInt64, pieces: [Piece])
    case refused
}

/// The harness's own chain walk (virtio 1.x 2.7.5 with tapwire's documented limits: one
/// direction per chain, at most the table size of hops, indirect tables in one region, no
/// nesting, the chain's bytes capped by maxBytes, iovecs capped by the buffer's capacity).
private func expectedChain(model: Model, table descriptorTable: UnsafeMutableRawPointer, size: Int, head: UInt16,
                           indirectAllowed: Bool, writable: Bool, maxBytes: UInt64, room: Int) -> Expected {
    var table = descriptorTable
    var tableSize = size
    var index = Int(head)
    var hops = 0
    var inIndirect = false
    var total: UInt64 = 0
    var pieces: [Piece] = []
    while true {
        if index >= tableSize { return .refused }
        hops += 1
        if hops > tableSize { return .refused }
        let p = table + 16 * index
        let addr = p.loadUnaligned(as: UInt64.self)
        let len = p.loadUnaligned(fromByteOffset: 8, as: UInt32.self)
        let flags = p.loadUnaligned(fromByteOffset: 12, as: UInt16.self)
        let next = p.loadUnaligned(fromByteOffset: 14, as: UInt16.self)
        if flags & 4 != 0 {
            if !indirectAllowed || inIndirect || flags & 1 != 0 { return .refused }
            if len == 0 || len % 16 != 0 || len / 16 > 32768 { return .refused }
            guard let t = model.host(gpa: addr, length: UInt64(len)) else { return .refused }
            table = t
            tableSize = Int(len / 16)
            index = 0
            hops = 0
            inIndirect = true
            continue
        }
        if (flags & 2 != 0) != writable { return .refused }
        if len > 0 {
            total += UInt64(len)
            if total > maxBytes { return .refused }
            guard let found = model.pieces(gpa: addr, length: UInt64(len)) else { return .refused }
            for (base, length) in found { pieces.append(Piece(base: base, length: length)) }
            if pieces.count > room { return .refused }
        }
        if flags & 1 == 0 { return .accepted(bytes: total, pieces: pieces) }
        index = Int(next)
    }
}

private func iovecsDisjoint(_ buffers: IOVectorBuffer, from first: Int) -> Bool {
    var ranges: [(UInt, UInt)] = []
    for i in first..<buffers.count {
        let v = buffers.vectors[i]
        let start = UInt(bitPattern: v.iov_base!)
        ranges.append((start, start + UInt(v.iov_len)))
    }
    ranges.sort { $0.0 < $1.0 }
    for (a, b) in zip(ranges, ranges.dropFirst()) where a.1 > b.0 { return false }
    return true
}

/// GuestMemoryMap's own copy and lookup helpers against the model, on guest ranges the input names.
private func checkMemoryHelpers(_ memory: GuestMemoryMap, _ model: Model, _ input: Reader) {
    for (address, length) in [(UInt64(input.u32(10)) &+ UInt64(input.u8(29)), UInt64(input.u16(30))),
                              (UInt64(input.u32(14)), UInt64(input.u8(29)) << 6),
                              (0xFFFF_FFFF_FFFF_FF00 | UInt64(input.u8(31)), 0x100)] {
        let pieces = model.pieces(gpa: address, length: length)
        let contiguous = model.host(gpa: address, length: length)
        let pointer = memory.hostPointer(guestPhysical: address, length: length)
        check(pointer == contiguous, "hostPointer(guestPhysical: \(address), length: \(length)) = \(String(describing: pointer)), model \(String(describing: contiguous))")
        var bytes = [UInt8](repeating: 0x5A, count: Int(length))
        let read = bytes.withUnsafeMutableBytes { memory.read(guestPhysical: address, into: $0) }
        check(read == (pieces != nil || length == 0), "read(guestPhysical: \(address), \(length)) = \(read)")
        if read, let pieces {
            var expected = [UInt8]()
            for (base, count) in pieces { expected += UnsafeRawBufferPointer(start: base, count: count) }
            check(bytes == expected, "read(guestPhysical:) copied other bytes")
            let wrote = bytes.withUnsafeBytes { memory.write(guestPhysical: address, from: $0) }
            check(wrote, "write(guestPhysical:) failed where read succeeded")
        }
        let user = model.user(gpa: address)
        let userPointer = memory.hostPointer(userspace: user, length: length)
        check(userPointer == model.host(user: user, length: length), "hostPointer(userspace:) disagrees with the model")
    }
}


private func run(_ data: UnsafeRawBufferPointer) {
    let input = Reader(data: data)
    let sizeByte = input.u8(0)
    let queueSize = UInt16(1) << UInt16(sizeByte >= 240 ? sizeByte % 16 : sizeByte % 10)
    let flags = input.u8(1)
    let indirect = flags & 1 != 0
    let eventIndex = flags & 2 != 0
    let accumulate = flags & 0x20 != 0
    let undo = flags & 0x40 != 0
    let startIndex = input.u16(2)
    let sizeA = 8 * (1 + Int(input.u16(4)) % 4096)
    let sizeB = 8 * (1 + Int(input.u16(6)) % 4096)
    let gap = 8 * UInt64(input.u16(8) % 1024)
    let descGPA = UInt64(input.u32(10)), availGPA = UInt64(input.u32(14)), usedGPA = UInt64(input.u32(18))
    let directions = input.u8(22)
    let rounds = 1 + Int(directions >> 4) & 3
    let maxByte = input.u8(23)
    let maxBytes: UInt64 = maxByte == 0 ? 65562 : maxByte < 128 ? 64 * UInt64(maxByte) : UInt64(1) << UInt64(min(63, maxByte - 128))
    let capacity = 1 + Int(input.u16(24)) % 1024
    let bump = input.u16(26)
    let toggleNoInterrupt = input.u8(28) & 1 != 0
    let image = data.count > 32 ? UnsafeRawBufferPointer(rebasing: data[32...]) : UnsafeRawBufferPointer(start: nil, count: 0)

    // Guest memory: two regions in two guarded mappings.
    let (model, memory) = openGuestMemory(sizeA: sizeA, sizeB: sizeB, gap: gap, leadingA: flags & 4 != 0,
                                          leadingB: flags & 8 != 0, reversed: flags & 0x10 != 0, image: image)
    defer { closeGuestMemory() }

    checkMemoryHelpers(memory, model, input)

    // Ring addresses, resolved by tapwire and by the model.
    let descUser = model.user(gpa: descGPA), availUser = model.user(gpa: availGPA), usedUser = model.user(gpa: usedGPA)
    var expectedRing: RingPointers?
    if descUser % 16 == 0, availUser % 2 == 0, usedUser % 4 == 0,
       let d = model.host(user: descUser, length: Ring.descriptorTableBytes(queueSize)),
       let a = model.host(user: availUser, length: Ring.availRingBytes(queueSize)),
       let u = model.host(user: usedUser, length: Ring.usedRingBytes(queueSize)) {
        expectedRing = RingPointers(descriptors: d, avail: a, used: u)
    }
    let ring: RingPointers
    switch SplitQueue.resolveRing(memory: memory, size: queueSize, descriptors: descUser, avail: availUser, used: usedUser) {
    case .success(let r):
        guard let e = expectedRing else { fail("resolveRing accepted rings outside memory or misaligned: \(descGPA) \(availGPA) \(usedGPA) size \(queueSize)") }
        check(r.descriptors == e.descriptors && r.avail == e.avail && r.used == e.used, "resolveRing returned other pointers")
        ring = r
    case .failure(let error):
        check(expectedRing == nil, "resolveRing refused valid rings: \(error)")
        if trace { print("rings refused: \(error)") }
        return
    }

    let queue = SplitQueue(size: queueSize, ring: ring, memory: memory, nextAvail: startIndex, nextUsed: startIndex,
                           indirectAllowed: indirect, eventIndex: eventIndex)
    let buffers = IOVectorBuffer(capacity: capacity)
    let mask = queueSize - 1
    var nextAvail = startIndex
    var nextUsed = startIndex
    var published = startIndex
    var signalled = startIndex // the used index at the last ask
    var signalledValid = false  // false until the first interrupt

    for round in 0..<rounds {
        let writable = directions & (1 << round) != 0
        if round > 0 {
            // The driver posts more (or jumps: a hostile avail.idx).
            store16(ring.avail + 2, load16(ring.avail + 2) &+ bump)
            if toggleNoInterrupt { store16(ring.avail, load16(ring.avail) ^ Ring.availNoInterrupt) }
        }
        buffers.removeAll()
        let pendingAtStart = load16(ring.avail + 2) &- nextAvail
        // A hostile layout can put the used ring (or RX buffers) over avail.idx, so that the
        // device's own writes post more work; the strict bound holds only without that.
        let availBytes = UnsafeRawPointer(ring.avail)..<UnsafeRawPointer(ring.avail + Int(Ring.availRingBytes(queueSize)))
        let usedBytes = UnsafeRawPointer(ring.used)..<UnsafeRawPointer(ring.used + Int(Ring.usedRingBytes(queueSize)))
        let strictBound = !writable && !availBytes.overlaps(usedBytes)
        var popped = 0
        while true {
            if !accumulate { buffers.removeAll() }
            let startCount = buffers.count, startBytes = buffers.totalBytes
            let availIdx = load16(ring.avail + 2)
            let pending = availIdx &- nextAvail
            // What the chain must be, decided before tapwire looks at it.
            var expectedFault: QueueFault?
            var expected: (head: UInt16, chain: Expected)?
            if pending > queueSize {
                expectedFault = .availIndexJump(seen: availIdx, expected: nextAvail, size: queueSize)
            } else if availIdx != nextAvail {
                let head = load16(ring.avail + 4 + 2 * Int(nextAvail & mask))
                if head >= queueSize {
                    expectedFault = .headOutOfRange(head: head, size: queueSize)
                } else {
                    expected = (head, expectedChain(model: model, table: ring.descriptors, size: Int(queueSize), head: head,
                                                    indirectAllowed: indirect, writable: writable, maxBytes: maxBytes,
                                                    room: capacity - startCount))
                }
            }
            let result: PoppedChain?
            do {
                result = try queue.popChain(into: buffers, writable: writable, maxBytes: maxBytes)
            } catch {
                check(error == expectedFault, "popChain threw \(error), expected \(String(describing: expectedFault))")
                if trace { print("round \(round): queue failed: \(error)") }
                return // the queue is failed until reset
            }
            check(expectedFault == nil, "popChain did not fail the queue with \(expectedFault!)")
            guard var chain = result else {
                check(expected == nil, "popChain found nothing with avail.idx \(availIdx) and nextAvail \(nextAvail)")
                break
            }
            guard let (head, want) = expected else { fail("popChain returned a chain with nothing pending") }
            popped += 1
            if strictBound {
                check(popped <= Int(pendingAtStart) && popped <= Int(queueSize),
                      "more chains (\(popped)) than were pending (\(pendingAtStart)) in one round")
            } else if popped > 2 * Int(queueSize) + 16 {
                break // the guest keeps re-posting through the device's own writes; end the round
            }
            nextAvail &+= 1
            check(queue.nextAvail == nextAvail, "nextAvail")
            check(chain.head == head && chain.firstVector == startCount, "head/firstVector")

            func verifyChain(_ chain: PoppedChain) {
                // Whole-buffer invariants first.
                var sum = 0
                for i in 0..<buffers.count { sum += buffers.vectors[i].iov_len }
                check(sum == buffers.totalBytes, "IOVectorBuffer.totalBytes \(buffers.totalBytes) != sum of lengths \(sum)")
                check(buffers.count <= buffers.capacity, "iovec count over capacity")
                switch want {
                case .refused:
                    check(chain.fault != nil, "SplitQueue accepted a chain the model refuses (head \(head), \(chain.bytes) bytes)")
                    check(chain.bytes == 0, "a refused chain reports \(chain.bytes) bytes")
                    check(buffers.count == startCount && buffers.totalBytes == startBytes, "a refused chain left iovecs behind")
                case .accepted(let bytes, let pieces):
                    check(chain.fault == nil, "SplitQueue refused a valid chain (head \(head)): \(chain.fault!)")
                    check(chain.bytes == bytes && bytes <= maxBytes, "chain bytes \(chain.bytes), model \(bytes)")
                    check(buffers.count - startCount == pieces.count, "iovec count \(buffers.count - startCount), model \(pieces.count)")
                    check(buffers.totalBytes - startBytes == Int(bytes), "iovec bytes")
                    var chainSum = 0
                    for (i, piece) in pieces.enumerated() {
                        let v = buffers.vectors[startCount + i]
                        check(v.iov_base != nil && v.iov_len > 0, "empty iovec")
                        check(model.insideARegion(v.iov_base!, v.iov_len),
                              "iovec \(v.iov_base!) + \(v.iov_len) is outside every guest memory region")
                        check(v.iov_base! == piece.base && v.iov_len == piece.length, "iovec \(i) differs from the model")
                        chainSum += v.iov_len
                    }
                    check(UInt64(chainSum) == chain.bytes, "chain bytes != sum of its iovecs")
                }
            }
            verifyChain(chain)
            if trace {
                print("round \(round) \(writable ? "rx" : "tx"): head \(chain.head) \(chain.bytes) bytes in \(buffers.count - startCount) iovecs"
                      + (chain.fault.map { " refused: \($0)" } ?? ""))
            }
            if undo && popped % 2 == 1 {
                queue.undoPop()
                chain = popAgain(queue, chain, into: buffers, startCount: startCount, startBytes: startBytes,
                                 writable: writable, maxBytes: maxBytes)
                verifyChain(chain)
            }
            // Touch every byte of an accepted chain as the datapath would (guard pages and ASan
            // catch an iovec that strays), through IOVectorBuffer's own copy helpers, and check
            // them against a plain walk of the iovecs. Then hand the chain back.
            if chain.fault == nil && chain.bytes > 256 * 1024 {
                // Up to 1024 iovecs of 32 KiB: touch them without copying tens of MiB per input.
                for i in startCount..<buffers.count {
                    let v = buffers.vectors[i]
                    if writable { memset(v.iov_base!, 0xA5, v.iov_len) } else { _ = memchr(v.iov_base!, 0x17, v.iov_len) }
                }
            } else if chain.fault == nil {
                let n = Int(chain.bytes)
                var gathered = [UInt8]()
                gathered.reserveCapacity(n)
                for i in startCount..<buffers.count {
                    let v = buffers.vectors[i]
                    gathered += UnsafeRawBufferPointer(start: v.iov_base!, count: v.iov_len)
                }
                var copy = [UInt8](repeating: 0, count: n + 7)
                let got = copy.withUnsafeMutableBytes { buffers.read(into: $0, startingAt: startCount) }
                check(got == n && Array(copy[..<n]) == gathered, "IOVectorBuffer.read returned \(got) bytes, chain has \(n)")
                if writable && n > 0 {
                    // A header written at an offset, as the RX path writes num_buffers.
                    let offset = Int(popped) % n
                    let header = [UInt8]((0..<min(12, n - offset + 3)).map { UInt8(truncatingIfNeeded: $0 &+ popped) })
                    header.withUnsafeBytes { buffers.write($0, at: offset, startingAt: startCount) }
                    var expectedBytes = gathered
                    for (k, b) in header.enumerated() where offset + k < n { expectedBytes[offset + k] = b }
                    var after = [UInt8]()
                    for i in startCount..<buffers.count {
                        let v = buffers.vectors[i]
                        after += UnsafeRawBufferPointer(start: v.iov_base!, count: v.iov_len)
                    }
                    // Overlapping iovecs (a guest may name the same bytes twice) make the
                    // expected image ambiguous; compare only when they are disjoint.
                    if iovecsDisjoint(buffers, from: startCount) {
                        check(after == expectedBytes, "IOVectorBuffer.write at \(offset) wrote elsewhere")
                    }
                    for i in startCount..<buffers.count {
                        let v = buffers.vectors[i]
                        memset(v.iov_base!, 0xA5, v.iov_len)
                    }
                }
            }
            let length = chain.fault == nil && writable ? UInt32(truncatingIfNeeded: chain.bytes) : 0
            queue.addUsed(head: chain.head, length: length)
            let slot = ring.used + 4 + 8 * Int(nextUsed & mask)
            check(slot.loadUnaligned(as: UInt32.self) == UInt32(chain.head) && slot.loadUnaligned(fromByteOffset: 4, as: UInt32.self) == length,
                  "used element not written where expected")
            nextUsed &+= 1
            check(queue.nextUsed == nextUsed, "nextUsed")
        }

        queue.publishUsed()
        if published != nextUsed {
            check(load16(ring.used + 2) == nextUsed, "used.idx \(load16(ring.used + 2)) after publishUsed, expected \(nextUsed)")
            published = nextUsed
        }
        // Notification suppression, against the spec's formulas; only for entries published
        // since the last ask (an ask after a round that returned nothing tells the guest nothing).
        let wantInterrupt: Bool
        let fresh = published != signalled
        if eventIndex {
            let usedEvent = load16(ring.avail + 4 + 2 * Int(queueSize))
            let new = published, old = signalled
            wantInterrupt = fresh && (!signalledValid || (new &- usedEvent &- 1) < (new &- old))
        } else {
            wantInterrupt = fresh && load16(ring.avail) & Ring.availNoInterrupt == 0
        }
        signalled = published
        if wantInterrupt { signalledValid = true }
        check(queue.needsInterrupt() == wantInterrupt, "needsInterrupt disagrees with the spec (event idx \(eventIndex))")

        do {
            let more = try queue.enableKicks()
            let stillPending = load16(ring.avail + 2) &- nextAvail
            check(stillPending <= queueSize, "enableKicks accepted an avail index jump")
            check(more == (stillPending > 0), "enableKicks reports more=\(more) with \(stillPending) pending")
        } catch {
            let stillPending = load16(ring.avail + 2) &- nextAvail
            check(stillPending > queueSize, "enableKicks threw \(error) with \(stillPending) pending")
            return
        }
        if eventIndex {
            check(load16(ring.used + 4 + 8 * Int(queueSize)) == nextAvail, "avail_event not set by enableKicks")
        } else {
            check(load16(ring.used) == 0, "used.flags not cleared by enableKicks")
        }
        queue.disableKicks()
        if !eventIndex { check(load16(ring.used) == Ring.usedNoNotify, "used.flags not set by disableKicks") }
        queue.updateAvailEvent()
        if eventIndex { check(load16(ring.used + 4 + 8 * Int(queueSize)) == nextAvail, "avail_event not updated") }
    }
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzChain(_ bytes: UnsafePointer<UInt8>?, _ count: Int) -> Int32 {
    run(UnsafeRawBufferPointer(start: count > 0 ? bytes : nil, count: count))
    return 0
}
