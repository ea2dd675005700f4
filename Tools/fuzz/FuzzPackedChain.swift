// libFuzzer target: packed virtqueues (VIRTIO_F_RING_PACKED) in guest memory that a hostile
// guest controls.
//
// Input: a 32-byte parameter block, then the guest memory image (byte i lands at guest
// physical address i if that address is in a region; the rest of guest memory is zero).
//
//   0  u16  queue size: 1 + v % 64, or 1 + v % 2048 when v >= 0xF000 (packed sizes need not
//           be powers of two)
//   2  u8   flags: 0 INDIRECT_DESC negotiated, 1 EVENT_IDX negotiated,
//                  2 region A against its leading guard page (else its trailing one), 3 same for B,
//                  4 hand the regions to GuestMemoryMap as [B, A],
//                  5 keep appending iovecs across a round's chains (as the RX path batches),
//                  6 undo every other pop and pop again (must give the same chain),
//                  7 return a round's chains in the reverse order (out-of-order completion)
//   3  u8   bits 0-3 direction of rounds 0-3 (1: device-writable, as RX), bits 4-5 rounds - 1,
//           bits 6-7 the driver event area's mode (ENABLE, DISABLE, DESC, reserved)
//   4  u16  region A size / 8 (1 + v % 4096: 8 bytes .. 32 KiB), at guest physical 0
//   6  u16  region B size / 8 (same), at guest physical sizeA + gap
//   8  u16  gap / 8 between A and B in guest physical space (v % 1024)
//  10  u32  descriptor ring, 14 u32 driver area, 18 u32 device area: guest physical addresses,
//           handed to PackedQueue.resolveRing as the frontend's userspace addresses of those bytes
//  22  u32  SET_VRING_BASE's value (PackedVringBase(num:)); refused unless valid for the size
//  26  u8   maxBytes: b < 128: 64 * b (0: 65562), else 1 << (b - 128) (capped at 2^63)
//  27  u16  iovec capacity: 1 + v % 1024
//  29  u8   bits 0-6: before each later round the driver makes this many descriptors available
//           again, from the device's position on, with the bits their slots' wrap counters ask
//           for and the slot's index as buffer id; bit 7: after each round the queue is stopped
//           and started again from its own GET_VRING_BASE value (else only that value is checked)
//  30  u16  the driver event area's off_wrap
//
// Guest memory is FuzzGuestMemory.swift's: two regions behind guard pages, and a model of them
// independent of GuestMemoryMap. The harness walks every chain itself and PackedQueue must
// agree with it: the buffer id, the slots taken, accepted or refused, the iovecs (each inside a
// region), the bytes (within maxBytes) and the faults that fail the queue. Used descriptors must
// land where the driver will look for them, and an interrupt the driver asked for never be missed.
import Glibc
import CTapwire
import GuestMemory
import Virtqueue
import FuzzSupport

private enum Expected {
    case nothing
    case queueFault(QueueFault)
    case chain(id: UInt16, slots: Int, refused: Bool, bytes: UInt64, pieces: [Piece])
}

/// The harness's own packed walk (virtio 1.1+ "Packed Virtqueues", with tapwire's limits: one
/// direction per chain, readable before writable, an indirect table alone in its chain and not
/// nested, a chain cut at the slots the driver could have made available).
private func expectedChain(model: Model, ring: UnsafeMutableRawPointer, size: UInt16, at start: PackedRingPosition,
                           free: Int, held: [UInt16: Int], indirectAllowed: Bool, writable: Bool, maxBytes: UInt64,
                           room: Int) -> Expected {
    if free <= 0 { return .nothing }
    func isAvailable(_ flags: UInt16, _ wrap: Bool) -> Bool { (flags & 0x80 != 0) == wrap && (flags & 0x8000 != 0) != wrap }
    var position = start
    var slots = 0
    var refused = false
    var total: UInt64 = 0
    var pieces: [Piece] = []
    var sawWritable = false
    func direct(_ p: UnsafeRawPointer) -> Bool {
        let addr = p.loadUnaligned(as: UInt64.self), len = p.loadUnaligned(fromByteOffset: 8, as: UInt32.self)
        let flags = p.loadUnaligned(fromByteOffset: 14, as: UInt16.self)
        let isWritable = flags & 2 != 0
        if !isWritable && sawWritable { return false }
        sawWritable = isWritable
        if isWritable != writable { return false }
        if len == 0 { return true }
        total += UInt64(len)
        if total > maxBytes { return false }
        guard let found = model.pieces(gpa: addr, length: UInt64(len)) else { return false }
        for (base, length) in found { pieces.append(Piece(base: base, length: length)) }
        return pieces.count <= room
    }
    var id: UInt16 = 0
    while true {
        slots += 1
        let p = ring + 16 * Int(position.index)
        let addr = p.loadUnaligned(as: UInt64.self), len = p.loadUnaligned(fromByteOffset: 8, as: UInt32.self)
        let flags = p.loadUnaligned(fromByteOffset: 14, as: UInt16.self)
        if !isAvailable(flags, position.wrapCounter) {
            return slots == 1 ? .nothing : .queueFault(.incompleteChain(index: position.index))
        }
        if !refused {
            if flags & 4 != 0 {
                if !indirectAllowed || flags & 1 != 0 || slots > 1 || len == 0 || len % 16 != 0 || len / 16 > 32768 {
                    refused = true
                } else if let table = model.host(gpa: addr, length: UInt64(len)) {
                    for entry in 0..<Int(len / 16) {
                        let e = table + 16 * entry
                        if e.loadUnaligned(fromByteOffset: 14, as: UInt16.self) & 4 != 0 || !direct(e) { refused = true; break }
                    }
                } else {
                    refused = true
                }
            } else if !direct(p) {
                refused = true
            }
        }
        if flags & 1 == 0 {
            id = p.loadUnaligned(fromByteOffset: 12, as: UInt16.self)
            break
        }
        if slots >= free { return .queueFault(.chainLongerThanRing(limit: free)) }
        position = position.advanced(by: 1, size: size)
    }
    if id >= size { return .queueFault(.bufferIDOutOfRange(id: id, size: size)) }
    if held[id] != nil { return .queueFault(.bufferIDInUse(id: id)) }
    return .chain(id: id, slots: slots, refused: refused, bytes: refused ? 0 : total, pieces: refused ? [] : pieces)
}

private func overlaps(_ a: UnsafeMutableRawPointer, _ aCount: Int, _ b: UnsafeMutableRawPointer, _ bCount: Int) -> Bool {
    (UnsafeRawPointer(a)..<UnsafeRawPointer(a + aCount)).overlaps(UnsafeRawPointer(b)..<UnsafeRawPointer(b + bCount))
}

private func run(_ data: UnsafeRawBufferPointer) {
    let input = Reader(data: data)
    let sizeWord = input.u16(0)
    let queueSize = UInt16(1 + Int(sizeWord) % (sizeWord >= 0xF000 ? 2048 : 64))
    let flags = input.u8(2)
    let indirect = flags & 1 != 0, eventIndex = flags & 2 != 0
    let accumulate = flags & 0x20 != 0, undo = flags & 0x40 != 0, reverseReturns = flags & 0x80 != 0
    let directions = input.u8(3)
    let rounds = 1 + Int(directions >> 4) & 3
    let driverMode = UInt16(directions >> 6)
    let sizeA = 8 * (1 + Int(input.u16(4)) % 4096)
    let sizeB = 8 * (1 + Int(input.u16(6)) % 4096)
    let gap = 8 * UInt64(input.u16(8) % 1024)
    let descGPA = UInt64(input.u32(10)), driverGPA = UInt64(input.u32(14)), deviceGPA = UInt64(input.u32(18))
    let base = PackedVringBase(num: input.u32(22))
    let maxByte = input.u8(26)
    let maxBytes: UInt64 = maxByte == 0 ? 65562 : maxByte < 128 ? 64 * UInt64(maxByte) : UInt64(1) << UInt64(min(63, maxByte - 128))
    let capacity = 1 + Int(input.u16(27)) % 1024
    let repost = Int(input.u8(29) & 0x7F)
    let restart = input.u8(29) & 0x80 != 0
    let driverOffWrap = input.u16(30)
    let image = data.count > 32 ? UnsafeRawBufferPointer(rebasing: data[32...]) : UnsafeRawBufferPointer(start: nil, count: 0)

    let (model, memory) = openGuestMemory(sizeA: sizeA, sizeB: sizeB, gap: gap, leadingA: flags & 4 != 0,
                                          leadingB: flags & 8 != 0, reversed: flags & 0x10 != 0, image: image)
    defer { closeGuestMemory() }

    // Ring addresses, resolved by tapwire and by the model.
    let descUser = model.user(gpa: descGPA), driverUser = model.user(gpa: driverGPA), deviceUser = model.user(gpa: deviceGPA)
    var expectedRing: PackedRingPointers?
    if descUser % 16 == 0, driverUser % 4 == 0, deviceUser % 4 == 0,
       let d = model.host(user: descUser, length: 16 * UInt64(queueSize)),
       let a = model.host(user: driverUser, length: 4), let u = model.host(user: deviceUser, length: 4) {
        expectedRing = PackedRingPointers(descriptors: d, driverEvent: a, deviceEvent: u)
    }
    let ring: PackedRingPointers
    switch PackedQueue.resolveRing(memory: memory, size: queueSize, descriptors: descUser, driverArea: driverUser, deviceArea: deviceUser) {
    case .success(let r):
        guard let e = expectedRing else { fail("resolveRing accepted a packed ring outside memory or misaligned") }
        check(r.descriptors == e.descriptors && r.driverEvent == e.driverEvent && r.deviceEvent == e.deviceEvent,
              "resolveRing returned other pointers")
        ring = r
    case .failure(let error):
        check(expectedRing == nil, "resolveRing refused a valid packed ring: \(error)")
        return
    }
    guard base.isValid(size: queueSize) else { return }
    let ringBytes = 16 * Int(queueSize)
    // The driver's wishes, written before the device starts.
    store16(ring.driverEvent, driverOffWrap)
    store16(ring.driverEvent + 2, driverMode)

    var queue = PackedQueue(size: queueSize, ring: ring, memory: memory, base: base, indirectAllowed: indirect, eventIndex: eventIndex)
    let buffers = IOVectorBuffer(capacity: capacity)
    var nextAvail = base.avail
    var nextUsed = base.used
    var heldSlots = base.used.distance(to: base.avail, size: queueSize)
    // The device area may be overwritten by the device's own writes elsewhere (a hostile layout);
    // its contents are checked only while nothing can have clobbered it.
    let deviceAreaApart = !overlaps(ring.deviceEvent, 4, ring.descriptors, ringBytes)
        && !overlaps(ring.deviceEvent, 4, ring.driverEvent, 4)
    var deviceAreaTrusted = deviceAreaApart

    for round in 0..<rounds {
        let writable = directions & (1 << round) != 0
        if writable { deviceAreaTrusted = false }
        if round > 0 {
            // The driver makes descriptors available again from the device's position on.
            var position = nextAvail
            for _ in 0..<min(repost, Int(queueSize)) {
                // Each its slot's index as buffer id, so the ids of one lap differ.
                let d = ring.descriptors + 16 * Int(position.index)
                store16(d + 12, position.index)
                let bits: UInt16 = position.wrapCounter ? 0x80 : 0x8000
                store16(d + 14, load16(d + 14) & ~0x8080 | bits)
                position = position.advanced(by: 1, size: queueSize)
            }
        }
        buffers.removeAll()
        var held: [UInt16: Int] = [:]
        var popped: [(id: UInt16, length: UInt32, slots: Int)] = []
        var pops = 0
        while true {
            if !accumulate { buffers.removeAll() }
            let startCount = buffers.count, startBytes = buffers.totalBytes
            let want = expectedChain(model: model, ring: ring.descriptors, size: queueSize, at: nextAvail, free: Int(queueSize) - heldSlots,
                                     held: held, indirectAllowed: indirect, writable: writable, maxBytes: maxBytes,
                                     room: capacity - startCount)
            let result: PoppedChain?
            do {
                result = try queue.popChain(into: buffers, writable: writable, maxBytes: maxBytes)
            } catch {
                guard case .queueFault(let expected) = want else { fail("popChain threw \(error), model \(want)") }
                check(error == expected, "popChain threw \(error), model \(expected)")
                check(buffers.count == startCount && buffers.totalBytes == startBytes, "a failed pop left iovecs behind")
                if trace { print("round \(round): queue failed: \(error)") }
                return
            }
            guard var chain = result else {
                guard case .nothing = want else { fail("popChain found nothing, model \(want)") }
                break
            }
            guard case .chain(let id, let slots, let refused, let bytes, let pieces) = want else {
                fail("popChain returned \(chain), model \(want)")
            }
            func verify(_ chain: PoppedChain) {
                check(chain.head == id && chain.firstVector == startCount, "id \(chain.head), model \(id)")
                check(buffers.count <= buffers.capacity, "iovec count over capacity")
                if refused {
                    check(chain.fault != nil && chain.bytes == 0, "PackedQueue accepted a chain the model refuses")
                    check(buffers.count == startCount && buffers.totalBytes == startBytes, "a refused chain left iovecs behind")
                    return
                }
                check(chain.fault == nil, "PackedQueue refused a valid chain: \(chain.fault!)")
                check(chain.bytes == bytes && bytes <= maxBytes, "chain bytes \(chain.bytes), model \(bytes)")
                check(buffers.count - startCount == pieces.count, "iovec count \(buffers.count - startCount), model \(pieces.count)")
                for (i, piece) in pieces.enumerated() {
                    let v = buffers.vectors[startCount + i]
                    check(model.insideARegion(v.iov_base!, v.iov_len), "iovec outside every guest memory region")
                    check(v.iov_base! == piece.base && v.iov_len == piece.length, "iovec \(i) differs from the model")
                }
            }
            verify(chain)
            pops += 1
            check(queue.nextAvail == nextAvail.advanced(by: UInt16(slots), size: queueSize), "nextAvail after a pop")
            if undo && pops % 2 == 1 {
                queue.undoPop()
                check(queue.nextAvail == nextAvail, "undoPop did not go back")
                chain = popAgain(queue, chain, into: buffers, startCount: startCount, startBytes: startBytes,
                                 writable: writable, maxBytes: maxBytes)
                verify(chain)
            }
            nextAvail = nextAvail.advanced(by: UInt16(slots), size: queueSize)
            heldSlots += slots
            held[id] = slots
            // Touch every byte of an accepted chain (guard pages and ASan catch a stray iovec).
            if chain.fault == nil {
                for i in startCount..<buffers.count {
                    let v = buffers.vectors[i]
                    if writable { memset(v.iov_base!, 0xA5, v.iov_len) } else { _ = memchr(v.iov_base!, 0x17, v.iov_len) }
                }
            }
            popped.append((id, chain.fault == nil && writable ? UInt32(truncatingIfNeeded: chain.bytes) : 0, slots))
        }

        // Return the round's chains; each used descriptor goes where the used position is.
        if reverseReturns { popped.reverse() }
        var usedSlots: [(index: UInt16, flags: UInt16)] = []
        for entry in popped {
            let slot = ring.descriptors + 16 * Int(nextUsed.index)
            queue.addUsed(head: entry.id, length: entry.length)
            check(slot.loadUnaligned(fromByteOffset: 12, as: UInt16.self) == entry.id
                  && slot.loadUnaligned(fromByteOffset: 8, as: UInt32.self) == entry.length, "used descriptor not written where expected")
            usedSlots.append((nextUsed.index, (nextUsed.wrapCounter ? 0x8080 : 0) | (entry.length > 0 ? 2 : 0)))
            nextUsed = nextUsed.advanced(by: UInt16(entry.slots), size: queueSize)
            check(queue.nextUsed == nextUsed, "nextUsed")
        }
        queue.publishUsed()
        heldSlots -= popped.reduce(0) { $0 + $1.slots }
        for (index, f) in usedSlots {
            let got = load16(ring.descriptors + 16 * Int(index) + 14)
            // The device area (or the driver's) may sit on a used slot; only what the device wrote last is certain.
            if !overlaps(ring.descriptors + 16 * Int(index), 16, ring.deviceEvent, 4) {
                check(got == f, "used flags 0x\(String(got, radix: 16)) at \(index), expected 0x\(String(f, radix: 16))")
            }
        }

        // An interrupt the driver asked for must not be missed; nothing published, none sent.
        let mode = load16(ring.driverEvent + 2) & 3
        let event = PackedRingPosition(encoded: load16(ring.driverEvent))
        let interrupt = queue.needsInterrupt()
        if usedSlots.isEmpty {
            check(!interrupt, "an interrupt for nothing published")
        } else if mode == 1 {
            check(!interrupt, "an interrupt the driver disabled")
        } else if mode != 2 || !eventIndex {
            check(interrupt, "no interrupt with the driver's events enabled")
        } else {
            var position = nextUsed
            for entry in popped.reversed() {
                position = position.retreated(by: UInt16(entry.slots), size: queueSize)
                if position == event { check(interrupt, "no interrupt for the descriptor the driver named (\(event))") }
            }
        }

        // Kicks: the device area says what enableKicks/disableKicks asked.
        let more: Bool
        do { more = try queue.enableKicks() } catch { fail("enableKicks threw \(error)") }
        let next = load16(ring.descriptors + 16 * Int(nextAvail.index) + 14)
        let available = heldSlots < Int(queueSize)
            && (next & 0x80 != 0) == nextAvail.wrapCounter && (next & 0x8000 != 0) != nextAvail.wrapCounter
        check(more == available, "enableKicks reports \(more), the ring says \(available)")
        if deviceAreaTrusted {
            check(load16(ring.deviceEvent + 2) == (eventIndex ? 2 : 0), "device area mode after enableKicks")
            if eventIndex { check(load16(ring.deviceEvent) == nextAvail.encoded, "device area off_wrap after enableKicks") }
        }
        queue.disableKicks()
        if deviceAreaTrusted { check(load16(ring.deviceEvent + 2) == 1, "device area mode after disableKicks") }
        queue.updateAvailEvent()

        // Stop and start again from GET_VRING_BASE, as a reconnect does.
        let state = queue.base
        check(state.avail == nextAvail && state.used == nextUsed, "GET_VRING_BASE \(state), model avail \(nextAvail) used \(nextUsed)")
        if trace { print("round \(round) \(writable ? "rx" : "tx"): \(popped.count) chains, now \(state)") }
        guard restart else { continue }
        let restarted = PackedVringBase(num: state.num)
        check(restarted == state && restarted.isValid(size: queueSize), "GET_VRING_BASE value does not round-trip")
        queue = PackedQueue(size: queueSize, ring: ring, memory: memory, base: restarted, indirectAllowed: indirect, eventIndex: eventIndex)
        deviceAreaTrusted = deviceAreaApart // the new queue writes the device area afresh
    }
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzPackedChain(_ bytes: UnsafePointer<UInt8>?, _ count: Int) -> Int32 {
    run(UnsafeRawBufferPointer(start: count > 0 ? bytes : nil, count: count))
    return 0
}
