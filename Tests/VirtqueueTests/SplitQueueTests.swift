import Testing
import CTapwire
import Virtqueue
import VhostUserFrontend

@Suite struct ChainWalking {
    @Test func directChainBecomesIOVecsIntoGuestMemory() throws {
        let f = try RingFixture()
        let a = f.buffer(100, fill: 0xAA), b = f.buffer(50, fill: 0xBB)
        let head = f.driver.post([DriverBuffer(address: a, length: 100, writable: false),
                                  DriverBuffer(address: b, length: 50, writable: false)])
        let chain = try #require(try f.pop())
        #expect(chain.head == head)
        #expect(chain.bytes == 150)
        #expect(chain.fault == nil)
        #expect(f.vectors.count == 2)
        #expect(f.vectors.vectors[0].iov_base == f.arena.pointer(a))
        #expect(f.vectors.vectors[1].iov_len == 50)
        #expect(try f.pop() == nil)
    }

    @Test func indirectTableIsFollowed() throws {
        let f = try RingFixture()
        let bufs = (0..<3).map { _ in f.buffer(64) }
        f.driver.postIndirect(bufs.map { DriverBuffer(address: $0, length: 64, writable: true) })
        let chain = try #require(try f.pop(writable: true))
        #expect(chain.fault == nil)
        #expect(chain.bytes == 192)
        #expect(f.vectors.count == 3)
    }

    @Test func indirectRefusedWhenNotNegotiated() throws {
        let f = try RingFixture(indirect: false)
        f.driver.postIndirect([DriverBuffer(address: f.buffer(64), length: 64, writable: true)])
        #expect(try f.pop(writable: true)?.fault == .indirectNotNegotiated)
    }

    @Test func wrapsAroundAt65535() throws {
        let f = try RingFixture(size: 8, startIndex: 65533)
        for _ in 0..<6 { f.driver.post([DriverBuffer(address: f.buffer(10), length: 10, writable: false)]) }
        var heads = [UInt16]()
        while let chain = try f.pop() { heads.append(chain.head); f.queue.addUsed(head: chain.head, length: 0) }
        #expect(heads.count == 6)
        f.queue.publishUsed()
        #expect(f.queue.nextAvail == 3)
        #expect(f.driver.usedIndex == 3)
        #expect(f.driver.collectUsed().map(\.head) == heads)
    }

    @Test func undoPopGivesTheChainBack() throws {
        let f = try RingFixture()
        f.driver.post([DriverBuffer(address: f.buffer(10), length: 10, writable: false)])
        let first = try #require(try f.pop())
        f.queue.undoPop()
        let again = try #require(try f.pop())
        #expect(first.head == again.head)
    }
}

@Suite struct HostileDescriptors {
    @Test func nextOutOfRange() throws {
        let f = try RingFixture(size: 8)
        f.driver.writeDescriptor(0, address: f.buffer(8), length: 8, flags: Ring.descriptorNext, next: 200)
        f.driver.publish(head: 0)
        #expect(try f.pop()?.fault == .nextOutOfRange(index: 200, tableSize: 8))
    }

    @Test func loopIsCutAtTheRingSize() throws {
        let f = try RingFixture(size: 8)
        let b = f.buffer(8)
        f.driver.writeDescriptor(0, address: b, length: 8, flags: Ring.descriptorNext, next: 1)
        f.driver.writeDescriptor(1, address: b, length: 8, flags: Ring.descriptorNext, next: 0)
        f.driver.publish(head: 0)
        #expect(try f.pop()?.fault == .chainTooLong(limit: 8))
        #expect(f.vectors.count == 0, "a refused chain leaves no iovecs behind")
    }

    @Test func bufferOutsideMemoryOrStraddlingTheEnd() throws {
        let f = try RingFixture(memoryBytes: 1 << 20)
        f.driver.writeDescriptor(0, address: 1 << 30, length: 8, flags: 0, next: 0)
        f.driver.publish(head: 0)
        #expect(try f.pop()?.fault == .bufferOutsideMemory(address: 1 << 30, length: 8))
        f.driver.writeDescriptor(1, address: (1 << 20) - 4, length: 8, flags: 0, next: 0)
        f.driver.publish(head: 1)
        #expect(try f.pop()?.fault == .bufferOutsideMemory(address: (1 << 20) - 4, length: 8))
        f.driver.writeDescriptor(2, address: UInt64.max - 2, length: 4096, flags: 0, next: 0)
        f.driver.publish(head: 2)
        #expect(try f.pop()?.fault == .bufferOutsideMemory(address: UInt64.max - 2, length: 4096), "address wrap")
    }

    @Test func hugeLengthsAreRefused() throws {
        let f = try RingFixture()
        f.driver.writeDescriptor(0, address: 0, length: UInt32.max, flags: 0, next: 0)
        f.driver.publish(head: 0)
        #expect(try f.pop(maxBytes: 65536)?.fault == .tooLarge(bytes: UInt64(UInt32.max)))
    }

    @Test func indirectRules() throws {
        let f = try RingFixture()
        let table = f.arena.allocate(64, alignment: 16)
        // nested indirect
        f.arena.pointer(table).storeBytes(of: tw_vring_desc(addr: table, len: 16, flags: Ring.descriptorIndirect, next: 0), as: tw_vring_desc.self)
        f.driver.writeDescriptor(0, address: table, length: 16, flags: Ring.descriptorIndirect, next: 0)
        f.driver.publish(head: 0)
        #expect(try f.pop()?.fault == .nestedIndirect)
        // length not a multiple of 16
        f.driver.writeDescriptor(1, address: table, length: 24, flags: Ring.descriptorIndirect, next: 0)
        f.driver.publish(head: 1)
        #expect(try f.pop()?.fault == .indirectBadLength(24))
        // table outside memory
        f.driver.writeDescriptor(2, address: 1 << 40, length: 32, flags: Ring.descriptorIndirect, next: 0)
        f.driver.publish(head: 2)
        #expect(try f.pop()?.fault == .indirectOutsideMemory(address: 1 << 40, length: 32))
        // INDIRECT together with NEXT
        f.driver.writeDescriptor(3, address: table, length: 16, flags: Ring.descriptorIndirect | Ring.descriptorNext, next: 4)
        f.driver.publish(head: 3)
        #expect(try f.pop()?.fault == .indirectWithNext)
    }

    @Test func receiveBuffersMustBeWritable() throws {
        let f = try RingFixture()
        f.driver.post([DriverBuffer(address: f.buffer(64), length: 64, writable: false)])
        #expect(try f.pop(writable: true)?.fault == .wrongDirection(expectedWritable: true))
        f.driver.post([DriverBuffer(address: f.buffer(64), length: 64, writable: true)])
        #expect(try f.pop(writable: false)?.fault == .wrongDirection(expectedWritable: false))
    }

    @Test func availIndexJumpFailsTheQueue() throws {
        let f = try RingFixture(size: 8)
        f.driver.forceAvailIndex(9)
        #expect(throws: QueueFault.availIndexJump(seen: 9, expected: 0, size: 8)) { try f.pop() }
    }

    @Test func headOutOfRangeFailsTheQueue() throws {
        let f = try RingFixture(size: 8)
        f.driver.publish(head: 77)
        #expect(throws: QueueFault.headOutOfRange(head: 77, size: 8)) { try f.pop() }
    }

    @Test func zeroLengthDescriptorsAddNoIOVec() throws {
        let f = try RingFixture()
        f.driver.post([DriverBuffer(address: f.buffer(8), length: 0, writable: false),
                       DriverBuffer(address: f.buffer(8), length: 8, writable: false)])
        let chain = try #require(try f.pop())
        #expect(chain.bytes == 8)
        #expect(f.vectors.count == 1)
    }
}

@Suite struct Notifications {
    @Test func noInterruptFlagWithoutEventIndex() throws {
        let f = try RingFixture()
        f.driver.post([DriverBuffer(address: f.buffer(8), length: 8, writable: false)])
        let chain = try #require(try f.pop())
        f.queue.addUsed(head: chain.head, length: 0)
        f.queue.publishUsed()
        #expect(f.queue.needsInterrupt())
        f.driver.setAvailFlags(Ring.availNoInterrupt)
        #expect(!f.queue.needsInterrupt())
    }

    @Test func eventIndexInterruptsOnlyWhenCrossingUsedEvent() throws {
        let f = try RingFixture(eventIndex: true)
        for _ in 0..<4 { f.driver.post([DriverBuffer(address: f.buffer(8), length: 8, writable: false)]) }
        f.driver.setUsedEvent(2) // interrupt me once used passes index 2
        // first publish always signals (nothing signalled yet)
        f.queue.addUsed(head: try #require(try f.pop()).head, length: 0)
        f.queue.publishUsed()
        #expect(f.queue.needsInterrupt())
        // used 1 -> 2: event 2 not crossed ((2-2-1)=65535 < 1 is false)
        f.queue.addUsed(head: try #require(try f.pop()).head, length: 0)
        f.queue.publishUsed()
        #expect(!f.queue.needsInterrupt())
        // used 2 -> 3 crosses event 2
        f.queue.addUsed(head: try #require(try f.pop()).head, length: 0)
        f.queue.publishUsed()
        #expect(f.queue.needsInterrupt())
    }

    @Test(arguments: [true, false])
    func nothingPublishedMeansNoInterrupt(eventIndex: Bool) throws {
        let f = try RingFixture(eventIndex: eventIndex)
        #expect(!f.queue.needsInterrupt(), "a service call that returned nothing tells the guest nothing")
        f.driver.post([DriverBuffer(address: f.buffer(8), length: 8, writable: false)])
        f.queue.addUsed(head: try #require(try f.pop()).head, length: 0)
        f.queue.publishUsed()
        #expect(f.queue.needsInterrupt(), "the first entry is signalled")
        #expect(!f.queue.needsInterrupt(), "and only once")
    }

    @Test func askingWithoutRecordingKeepsTheCrossingForLater() throws {
        let f = try RingFixture(eventIndex: true)
        for _ in 0..<4 { f.driver.post([DriverBuffer(address: f.buffer(8), length: 8, writable: false)]) }
        f.queue.addUsed(head: try #require(try f.pop()).head, length: 0)
        f.queue.publishUsed()
        #expect(f.queue.needsInterrupt(), "the first publish signals")
        f.driver.setUsedEvent(1) // interrupt me once used passes index 1
        f.queue.addUsed(head: try #require(try f.pop()).head, length: 0)
        f.queue.publishUsed()
        #expect(f.queue.wantsInterrupt(), "used 1 -> 2 crosses event 1")
        // An interrupt held back: more is published before the backend asks again.
        f.queue.addUsed(head: try #require(try f.pop()).head, length: 0)
        f.queue.publishUsed()
        #expect(f.queue.wantsInterrupt(), "1 -> 3 still crosses it: asking recorded nothing")
        #expect(f.queue.needsInterrupt())
        #expect(!f.queue.wantsInterrupt(), "once sent, the same crossing does not ask again")
    }

    @Test func enableKicksWritesAvailEventAndSeesLateWork() throws {
        let f = try RingFixture(eventIndex: true)
        f.driver.post([DriverBuffer(address: f.buffer(8), length: 8, writable: false)])
        _ = try f.pop()
        #expect(try !f.queue.enableKicks())
        #expect(f.driver.availEvent == 1)
        f.driver.post([DriverBuffer(address: f.buffer(8), length: 8, writable: false)])
        #expect(try f.queue.enableKicks(), "work that arrived before re-arming is reported")
    }

    @Test func withoutEventIndexKicksAreToggledByUsedFlags() throws {
        let f = try RingFixture()
        f.queue.disableKicks()
        #expect(f.driver.usedFlags == Ring.usedNoNotify)
        _ = try f.queue.enableKicks()
        #expect(f.driver.usedFlags == 0)
    }
}
