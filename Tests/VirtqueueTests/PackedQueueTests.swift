import Testing
import CTapwire
import Virtqueue
import VhostUserFrontend

private func readable(_ address: UInt64, _ length: UInt32) -> DriverBuffer { DriverBuffer(address: address, length: length, writable: false) }
private func writable(_ address: UInt64, _ length: UInt32) -> DriverBuffer { DriverBuffer(address: address, length: length, writable: true) }

@Suite struct PackedChains {
    @Test func oneDescriptorBecomesOneIOVec() throws {
        let f = try PackedRingFixture()
        let a = f.buffer(100, fill: 0xAA)
        let id = try #require(f.driver.post([readable(a, 100)]))
        let chain = try #require(try f.pop())
        #expect(chain.head == id)
        #expect(chain.bytes == 100 && chain.fault == nil)
        #expect(f.vectors.count == 1)
        #expect(f.vectors.vectors[0].iov_base == f.arena.pointer(a))
        #expect(f.queue.nextAvail == PackedRingPosition(index: 1, wrapCounter: true))
        #expect(try f.pop() == nil)
        #expect(!f.queue.hasPending())
    }

    @Test func chainTakesOneSlotPerDescriptorAndComesBackOnItsFirst() throws {
        let f = try PackedRingFixture()
        let first = try #require(f.driver.post([readable(f.buffer(12), 12), readable(f.buffer(100), 100), readable(f.buffer(50), 50)]))
        let second = try #require(f.driver.post([readable(f.buffer(60), 60)]))
        let a = try #require(try f.pop())
        #expect(a.head == first && a.bytes == 162 && f.vectors.count == 3)
        let b = try #require(try f.pop())
        #expect(b.head == second && b.bytes == 60)
        #expect(f.queue.nextAvail.index == 4)
        f.queue.addUsed(head: a.head, length: 0)
        f.queue.addUsed(head: b.head, length: 0)
        #expect(f.queue.nextUsed.index == 4, "the used position skips the chain's three slots")
        #expect(f.driver.collectUsed().isEmpty, "nothing is visible before publishUsed")
        f.queue.publishUsed()
        let used = f.driver.collectUsed()
        #expect(used.map(\.id) == [first, second])
        #expect(used.map(\.index) == [0, 3], "each used descriptor on its chain's first slot")
    }

    @Test func chainsReturnedOutOfOrderGoWhereTheUsedPositionIs() throws {
        let f = try PackedRingFixture()
        let long = try #require(f.driver.post([readable(f.buffer(8), 8), readable(f.buffer(8), 8)]))
        let short = try #require(f.driver.post([readable(f.buffer(8), 8)]))
        _ = try f.pop(); _ = try f.pop()
        f.queue.addUsed(head: short, length: 0)
        f.queue.addUsed(head: long, length: 0)
        f.queue.publishUsed()
        let used = f.driver.collectUsed()
        #expect(used.map(\.id) == [short, long])
        #expect(used.map(\.index) == [0, 1])
        #expect(f.queue.nextUsed == f.driver.nextUsed)
    }

    @Test func usedDescriptorsSayWhetherDataWasWritten() throws {
        let f = try PackedRingFixture()
        f.driver.post([writable(f.buffer(64), 64)])
        f.driver.post([writable(f.buffer(64), 64)])
        _ = try f.popAndReturn(writable: true, length: 42)
        _ = try f.popAndReturn(writable: true, length: 0)
        f.queue.publishUsed()
        let used = f.driver.collectUsed()
        #expect(used.map(\.length) == [42, 0])
        #expect(used.map(\.wroteData) == [true, false])
    }

    @Test func indirectTableIsFollowed() throws {
        let f = try PackedRingFixture()
        let id = try #require(f.driver.postIndirect((0..<3).map { _ in writable(f.buffer(64), 64) }))
        let chain = try #require(try f.pop(writable: true))
        #expect(chain.head == id && chain.fault == nil)
        #expect(chain.bytes == 192 && f.vectors.count == 3)
        #expect(f.queue.nextAvail.index == 1, "an indirect chain takes one ring slot")
    }

    @Test func indirectRefusedWhenNotNegotiated() throws {
        let f = try PackedRingFixture(indirect: false)
        f.driver.postIndirect([writable(f.buffer(64), 64)])
        #expect(try f.pop(writable: true)?.fault == .indirectNotNegotiated)
    }

    @Test func undoPopGivesTheChainsBack() throws {
        let f = try PackedRingFixture()
        f.driver.post([readable(f.buffer(8), 8), readable(f.buffer(8), 8)])
        f.driver.post([readable(f.buffer(8), 8)])
        let a = try #require(try f.pop()), b = try #require(try f.pop())
        f.queue.undoPop(2)
        #expect(f.queue.nextAvail == .start)
        #expect(try f.pop()?.head == a.head)
        #expect(try f.pop()?.head == b.head)
        f.queue.undoPop()
        #expect(try f.pop()?.head == b.head)
    }

    /// A ring of 5 (packed rings need not be a power of two), chains of one to three
    /// descriptors, many laps: both wrap counters flip where they should and nothing is lost.
    @Test func manyLapsOfASmallRing() throws {
        let f = try PackedRingFixture(size: 5)
        var posted = 0
        for round in 0..<60 {
            let descriptors = 1 + round % 3
            let id = try #require(f.driver.post((0..<descriptors).map { _ in writable(f.buffer(16), 16) }))
            let chain = try #require(try f.pop(writable: true))
            #expect(chain.head == id && chain.bytes == UInt64(16 * descriptors))
            f.queue.addUsed(head: chain.head, length: UInt32(round))
            f.queue.publishUsed()
            posted += descriptors
            #expect(f.queue.nextAvail == f.driver.nextAvail && f.queue.nextUsed == f.driver.nextAvail)
            #expect(f.driver.collectUsed().map(\.length) == [UInt32(round)])
        }
        #expect(posted == 120)
        // 120 slots in a ring of 5: 24 laps, the counters back where they started.
        #expect(f.queue.nextAvail == .start && f.queue.nextUsed == .start)
    }

    @Test func aFullRingIsTakenWholeAndNotReadPast() throws {
        let f = try PackedRingFixture(size: 4)
        for _ in 0..<4 { f.driver.post([readable(f.buffer(8), 8)]) }
        var chains: [PoppedChain] = []
        while let chain = try f.pop() { chains.append(chain) }
        #expect(chains.count == 4)
        #expect(!f.queue.hasPending(), "every slot is held by the device")
        for chain in chains { f.queue.addUsed(head: chain.head, length: 0) }
        #expect(try f.pop() == nil, "slots added used but not published are still held")
        f.queue.publishUsed()
        #expect(f.driver.collectUsed().count == 4)
        f.driver.post([readable(f.buffer(8), 8)])
        #expect(try f.pop()?.fault == nil)
        #expect(f.queue.nextAvail == PackedRingPosition(index: 1, wrapCounter: false))
    }
}

@Suite struct PackedHostileDescriptors {
    @Test func bufferOutsideMemoryOrStraddlingTheEnd() throws {
        let f = try PackedRingFixture(memoryBytes: 1 << 20)
        f.driver.postRaw([(1 << 30, 8, 0, 0)])
        #expect(try f.pop()?.fault == .bufferOutsideMemory(address: 1 << 30, length: 8))
        f.driver.postRaw([((1 << 20) - 4, 8, 1, 0)])
        #expect(try f.pop()?.fault == .bufferOutsideMemory(address: (1 << 20) - 4, length: 8))
        f.driver.postRaw([(UInt64.max - 2, 4096, 2, 0)])
        #expect(try f.pop()?.fault == .bufferOutsideMemory(address: UInt64.max - 2, length: 4096), "address wrap")
    }

    @Test func aRefusedChainIsConsumedWholeAndReturnedByItsID() throws {
        let f = try PackedRingFixture()
        f.driver.postRaw([(1 << 30, 8, 3, Ring.descriptorNext), (f.buffer(8), 8, 3, Ring.descriptorNext), (f.buffer(8), 8, 3, 0)])
        let chain = try #require(try f.pop())
        #expect(chain.fault == .bufferOutsideMemory(address: 1 << 30, length: 8))
        #expect(chain.head == 3 && chain.bytes == 0 && f.vectors.count == 0)
        #expect(f.queue.nextAvail.index == 3, "all three slots are consumed")
        f.queue.addUsed(head: chain.head, length: 0)
        f.queue.publishUsed()
        #expect(f.queue.nextUsed.index == 3)
    }

    @Test func hugeLengthsAreRefused() throws {
        let f = try PackedRingFixture()
        f.driver.postRaw([(0, UInt32.max, 0, 0)])
        #expect(try f.pop(maxBytes: 65536)?.fault == .tooLarge(bytes: UInt64(UInt32.max)))
    }

    @Test func indirectRules() throws {
        let f = try PackedRingFixture()
        let table = f.driver.writeIndirectTable([readable(f.buffer(8), 8)])
        // zero and unaligned lengths
        f.driver.postRaw([(table, 0, 0, Ring.descriptorIndirect)])
        #expect(try f.pop()?.fault == .indirectBadLength(0))
        f.driver.postRaw([(table, 24, 1, Ring.descriptorIndirect)])
        #expect(try f.pop()?.fault == .indirectBadLength(24))
        // table outside memory
        f.driver.postRaw([(1 << 40, 32, 2, Ring.descriptorIndirect)])
        #expect(try f.pop()?.fault == .indirectOutsideMemory(address: 1 << 40, length: 32))
        // nested
        let nested = f.arena.allocate(16, alignment: 16)
        f.arena.pointer(nested).storeBytes(of: tw_vring_packed_desc(addr: table, len: 16, id: 0, flags: Ring.descriptorIndirect),
                                           as: tw_vring_packed_desc.self)
        f.driver.postRaw([(nested, 16, 3, Ring.descriptorIndirect)])
        #expect(try f.pop()?.fault == .nestedIndirect)
        // INDIRECT with NEXT, and an indirect descriptor after a direct one
        f.driver.postRaw([(table, 16, 4, Ring.descriptorIndirect | Ring.descriptorNext), (f.buffer(8), 8, 4, 0)])
        #expect(try f.pop()?.fault == .indirectWithNext)
        f.driver.postRaw([(f.buffer(8), 8, 5, Ring.descriptorNext), (table, 16, 5, Ring.descriptorIndirect)])
        #expect(try f.pop()?.fault == .indirectInChain)
        #expect(f.queue.nextAvail.wrapCounter == false, "eight slots taken in a ring of eight")
    }

    @Test func aChainLongerThanTheRingFailsTheQueue() throws {
        let f = try PackedRingFixture(size: 4)
        let b = f.buffer(8)
        f.driver.postRaw((0..<4).map { _ in (b, 8, 0, Ring.descriptorNext) })
        #expect(throws: QueueFault.chainLongerThanRing(limit: 4)) { try f.pop() }
    }

    @Test func aChainCannotRunIntoSlotsTheDeviceHolds() throws {
        let f = try PackedRingFixture(size: 4)
        f.driver.post([readable(f.buffer(8), 8)])
        _ = try f.pop() // held: one slot
        let b = f.buffer(8)
        f.driver.postRaw((0..<3).map { _ in (b, 8, 1, Ring.descriptorNext) })
        #expect(throws: QueueFault.chainLongerThanRing(limit: 3)) { try f.pop() }
        #expect(f.vectors.count == 0)
    }

    @Test func aChainWhoseNextDescriptorIsNotAvailableFailsTheQueue() throws {
        let f = try PackedRingFixture()
        // Slot 0 says NEXT; slot 1 was never made available.
        f.driver.writeDescriptor(0, address: f.buffer(8), length: 8, id: 0, flags: Ring.descriptorNext | PackedDriver.availBits(true))
        #expect(throws: QueueFault.incompleteChain(index: 1)) { try f.pop() }
    }

    @Test func bufferIDOutOfRangeFailsTheQueue() throws {
        let f = try PackedRingFixture(size: 8)
        f.driver.postRaw([(f.buffer(8), 8, 99, 0)])
        #expect(throws: QueueFault.bufferIDOutOfRange(id: 99, size: 8)) { try f.pop() }
    }

    @Test func bufferIDStillHeldFailsTheQueue() throws {
        let f = try PackedRingFixture()
        f.driver.postRaw([(f.buffer(8), 8, 2, 0)])
        _ = try f.pop()
        f.driver.postRaw([(f.buffer(8), 8, 2, 0)])
        #expect(throws: QueueFault.bufferIDInUse(id: 2)) { try f.pop() }
    }

    @Test func directionRules() throws {
        let f = try PackedRingFixture()
        f.driver.post([readable(f.buffer(64), 64)])
        #expect(try f.pop(writable: true)?.fault == .wrongDirection(expectedWritable: true))
        f.driver.post([writable(f.buffer(64), 64)])
        #expect(try f.pop(writable: false)?.fault == .wrongDirection(expectedWritable: false))
        f.driver.post([writable(f.buffer(64), 64), readable(f.buffer(64), 64)])
        #expect(try f.pop(writable: true)?.fault == .readableAfterWritable)
        f.driver.postIndirect([writable(f.buffer(64), 64), readable(f.buffer(64), 64)])
        #expect(try f.pop(writable: true)?.fault == .readableAfterWritable, "inside an indirect table too")
    }

    @Test func ringAddressesAreChecked() throws {
        let f = try PackedRingFixture()
        let u = f.arena.userspaceBase
        let d = u + f.driver.descriptorRing
        #expect(PackedQueue.resolveRing(memory: f.memory, size: 8, descriptors: d + 8, driverArea: u + f.driver.driverArea,
                                        deviceArea: u + f.driver.deviceArea).error == .misalignedPacked)
        #expect(PackedQueue.resolveRing(memory: f.memory, size: 8, descriptors: d, driverArea: u + (1 << 20),
                                        deviceArea: u + f.driver.deviceArea).error
                == .outsideMemory(part: "driver event area", address: u + (1 << 20)))
        #expect(PackedQueue.resolveRing(memory: f.memory, size: 8, descriptors: u + (1 << 20) - 64, driverArea: u + f.driver.driverArea,
                                        deviceArea: u + f.driver.deviceArea).error
                == .outsideMemory(part: "descriptor ring", address: u + (1 << 20) - 64))
    }
}

extension Result {
    var error: Failure? {
        if case .failure(let error) = self { return error }
        return nil
    }
}

@Suite struct PackedNotifications {
    private func returnOne(_ f: PackedRingFixture) throws {
        f.driver.post([readable(f.buffer(8), 8)])
        _ = try #require(try f.popAndReturn())
        f.queue.publishUsed()
        _ = f.driver.collectUsed()
    }

    @Test(arguments: [false, true])
    func driverEnablesAndDisablesInterrupts(eventIndex: Bool) throws {
        let f = try PackedRingFixture(eventIndex: eventIndex)
        #expect(!f.queue.needsInterrupt(), "nothing published, nothing to tell")
        try returnOne(f)
        #expect(f.queue.needsInterrupt())
        #expect(!f.queue.needsInterrupt(), "and only once")
        f.driver.setDriverEvent(.disable)
        try returnOne(f)
        #expect(!f.queue.needsInterrupt())
        f.driver.setDriverEvent(.enable)
        try returnOne(f)
        #expect(f.queue.needsInterrupt())
    }

    @Test func descriptorModeCountsOnlyWithEventIndex() throws {
        let f = try PackedRingFixture(eventIndex: false)
        try returnOne(f)
        #expect(f.queue.needsInterrupt())
        f.driver.setDriverEvent(.descriptor, at: PackedRingPosition(index: 6, wrapCounter: true))
        try returnOne(f)
        #expect(f.queue.needsInterrupt(), "without EVENT_IDX, DESC asks like ENABLE")
    }

    @Test func eventIndexInterruptsWhenTheNamedDescriptorIsUsed() throws {
        let f = try PackedRingFixture(size: 4, eventIndex: true)
        try returnOne(f) // used 0 -> 1; the first interrupt always goes out
        #expect(f.queue.needsInterrupt())
        f.driver.setDriverEvent(.descriptor, at: PackedRingPosition(index: 2, wrapCounter: true))
        try returnOne(f) // used descriptor at 1
        #expect(!f.queue.needsInterrupt())
        try returnOne(f) // used descriptor at 2: the one named
        #expect(f.queue.needsInterrupt())
        // Across the wrap: name index 0 of the next lap.
        f.driver.setDriverEvent(.descriptor, at: PackedRingPosition(index: 0, wrapCounter: false))
        try returnOne(f) // at 3
        #expect(!f.queue.needsInterrupt())
        try returnOne(f) // at 0, counter flipped
        #expect(f.queue.needsInterrupt())
        // A position with the wrong counter is a lap away: not reached.
        f.driver.setDriverEvent(.descriptor, at: PackedRingPosition(index: 1, wrapCounter: true))
        try returnOne(f) // at 1 of the lap with the counter clear
        #expect(!f.queue.needsInterrupt())
    }

    @Test func aChainsSlotsAreCrossedAsOne() throws {
        let f = try PackedRingFixture(size: 8, eventIndex: true)
        try returnOne(f)
        #expect(f.queue.needsInterrupt())
        // The driver names slot 2, inside the next chain (slots 1-3).
        f.driver.setDriverEvent(.descriptor, at: PackedRingPosition(index: 2, wrapCounter: true))
        f.driver.post([readable(f.buffer(8), 8), readable(f.buffer(8), 8), readable(f.buffer(8), 8)])
        _ = try f.popAndReturn()
        f.queue.publishUsed()
        #expect(f.queue.needsInterrupt())
    }

    @Test func askingWithoutRecordingKeepsTheWindow() throws {
        let f = try PackedRingFixture(eventIndex: true)
        try returnOne(f)
        #expect(f.queue.needsInterrupt())
        f.driver.setDriverEvent(.descriptor, at: PackedRingPosition(index: 1, wrapCounter: true))
        try returnOne(f)
        #expect(f.queue.wantsInterrupt())
        try returnOne(f)
        #expect(f.queue.wantsInterrupt(), "1 -> 3 still passes index 1: asking recorded nothing")
        #expect(f.queue.needsInterrupt())
        #expect(!f.queue.wantsInterrupt())
    }

    @Test func forgottenSignalSendsTheNextInterrupt() throws {
        let f = try PackedRingFixture(eventIndex: true)
        try returnOne(f)
        #expect(f.queue.needsInterrupt())
        f.driver.setDriverEvent(.descriptor, at: PackedRingPosition(index: 7, wrapCounter: true))
        f.queue.forgetSignalledState()
        try returnOne(f)
        #expect(f.queue.needsInterrupt())
    }

    @Test func kicksWithoutEventIndex() throws {
        let f = try PackedRingFixture()
        f.queue.disableKicks()
        #expect(f.driver.deviceEvent.mode == PackedEventMode.disable.rawValue)
        #expect(try !f.queue.enableKicks())
        #expect(f.driver.deviceEvent.mode == PackedEventMode.enable.rawValue)
        f.driver.post([readable(f.buffer(8), 8)])
        #expect(try f.queue.enableKicks(), "work that arrived before re-arming is reported")
        f.queue.updateAvailEvent()
        #expect(f.driver.deviceEvent.mode == PackedEventMode.enable.rawValue, "no kick point without EVENT_IDX")
    }

    @Test func kicksWithEventIndexNameOurPosition() throws {
        let f = try PackedRingFixture(size: 4, eventIndex: true)
        #expect(try !f.queue.enableKicks())
        #expect(f.driver.deviceEvent.mode == PackedEventMode.descriptor.rawValue)
        #expect(f.driver.deviceEvent.position == .start)
        for _ in 0..<5 {
            f.driver.post([readable(f.buffer(8), 8)])
            _ = try f.popAndReturn()
            f.queue.publishUsed()
            _ = f.driver.collectUsed()
        }
        f.queue.updateAvailEvent()
        #expect(f.driver.deviceEvent.position == PackedRingPosition(index: 1, wrapCounter: false))
        f.queue.disableKicks()
        #expect(f.driver.deviceEvent.mode == PackedEventMode.disable.rawValue)
        f.queue.updateAvailEvent()
        #expect(f.driver.deviceEvent.mode == PackedEventMode.descriptor.rawValue, "a batch's end re-arms the kick point")
    }
}

@Suite struct PackedVringBaseState {
    @Test func encodesAsVhostUserLaysItOut() {
        #expect(PackedVringBase.start.num == 0x8000_8000)
        let base = PackedVringBase(avail: PackedRingPosition(index: 5, wrapCounter: false), used: PackedRingPosition(index: 3, wrapCounter: true))
        #expect(base.num == 0x8003_0005)
        #expect(PackedVringBase(num: 0x8003_0005) == base)
        #expect(PackedVringBase(num: 0x7FFF_FFFF) == PackedVringBase(avail: PackedRingPosition(index: 0x7FFF, wrapCounter: true),
                                                                     used: PackedRingPosition(index: 0x7FFF, wrapCounter: false)))
    }

    @Test func validity() {
        let p = { (i: UInt16, w: Bool) in PackedRingPosition(index: i, wrapCounter: w) }
        #expect(PackedVringBase(avail: p(3, true), used: p(1, true)).isValid(size: 8))
        #expect(PackedVringBase(avail: p(1, false), used: p(1, true)).isValid(size: 8), "a whole ring held")
        #expect(!PackedVringBase(avail: p(2, false), used: p(1, true)).isValid(size: 8), "more than a ring held")
        #expect(!PackedVringBase(avail: p(1, true), used: p(3, true)).isValid(size: 8), "used ahead of avail")
        #expect(!PackedVringBase(avail: p(8, true), used: p(8, true)).isValid(size: 8), "index past the ring")
    }

    /// Stop mid-lap (GET_VRING_BASE), start a new queue from the 32-bit value (SET_VRING_BASE),
    /// and go on across the wrap as if nothing happened.
    @Test func roundTripMidLap() throws {
        let f = try PackedRingFixture(size: 8)
        for _ in 0..<5 {
            f.driver.post([readable(f.buffer(8), 8), readable(f.buffer(8), 8)])
            _ = try f.popAndReturn()
            f.queue.publishUsed()
            _ = f.driver.collectUsed()
        }
        #expect(f.queue.nextAvail == PackedRingPosition(index: 2, wrapCounter: false))
        f.queue.publishUsed()
        let num = f.queue.base.num
        #expect(num == 0x0002_0002)
        try f.start(base: PackedVringBase(num: num))
        for _ in 0..<9 {
            let id = try #require(f.driver.post([readable(f.buffer(8), 8), readable(f.buffer(8), 8), readable(f.buffer(8), 8)]))
            #expect(try f.popAndReturn()?.head == id)
            f.queue.publishUsed()
            #expect(f.driver.collectUsed().map(\.id) == [id])
        }
        #expect(f.queue.nextAvail == f.driver.nextAvail && f.queue.nextUsed == f.driver.nextUsed)
    }

    @Test func slotsBetweenUsedAndAvailAreHeld() throws {
        let base = PackedVringBase(avail: PackedRingPosition(index: 3, wrapCounter: true), used: .start)
        let f = try PackedRingFixture(size: 4, base: base)
        f.driver.postRaw([(f.buffer(8), 8, 0, Ring.descriptorNext), (f.buffer(8), 8, 0, 0)])
        #expect(throws: QueueFault.chainLongerThanRing(limit: 1)) { try f.pop() }
    }
}
