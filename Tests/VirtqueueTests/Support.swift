import CTapwire
import GuestMemory
import SystemCalls
import Virtqueue
import VhostUserFrontend

/// Anonymous memory as one guest region at guest physical 0, handed out by `arena`.
struct FakeGuest {
    let mapping: MemoryMapping
    let arena: GuestArena
    let memory: GuestMemoryMap

    init(memoryBytes: Int) throws {
        mapping = try MemoryMapping(anonymousLength: memoryBytes)
        arena = GuestArena(base: mapping.base, size: memoryBytes, fd: -1, owner: mapping)
        memory = try GuestMemoryMap(regions: [MemoryRegion(guestPhysicalAddress: 0, size: UInt64(memoryBytes),
                                                            userspaceAddress: arena.userspaceBase, host: mapping.base, owner: mapping)])
    }

    /// A buffer in guest memory filled with `byte`.
    func buffer(_ length: Int, fill byte: UInt8 = 0) -> UInt64 {
        let gpa = arena.allocate(length, alignment: 8)
        arena.pointer(gpa).initializeMemory(as: UInt8.self, repeating: byte, count: length)
        return gpa
    }
}

/// A fake guest: anonymous memory holding real rings, driven by `DriverQueue` as a guest
/// kernel would, and the device-side `SplitQueue` over the same bytes.
final class RingFixture {
    let guest: FakeGuest
    let arena: GuestArena
    let memory: GuestMemoryMap
    let driver: DriverQueue
    let vectors = IOVectorBuffer(capacity: 64)
    var queue: SplitQueue!

    init(size: UInt16 = 8, memoryBytes: Int = 1 << 20, startIndex: UInt16 = 0, eventIndex: Bool = false, indirect: Bool = true) throws {
        guest = try FakeGuest(memoryBytes: memoryBytes)
        arena = guest.arena
        memory = guest.memory
        driver = DriverQueue(arena: arena, size: size)
        driver.eventIndex = eventIndex
        if startIndex != 0 { driver.setIndices(avail: startIndex, used: startIndex) }
        let u = arena.userspaceBase
        let pointers = try SplitQueue.resolveRing(memory: memory, size: size, descriptors: u + driver.descriptorTable,
                                                  avail: u + driver.availRing, used: u + driver.usedRing).get()
        queue = SplitQueue(size: size, ring: pointers, memory: memory, nextAvail: startIndex, nextUsed: startIndex,
                           indirectAllowed: indirect, eventIndex: eventIndex)
    }

    func buffer(_ length: Int, fill byte: UInt8 = 0) -> UInt64 { guest.buffer(length, fill: byte) }

    func pop(writable: Bool = false, maxBytes: UInt64 = 1 << 20) throws -> PoppedChain? {
        vectors.removeAll()
        return try queue.popChain(into: vectors, writable: writable, maxBytes: maxBytes)
    }
}

/// The driver (guest) side of a packed virtqueue, as Linux's virtio_ring writes it: chains in
/// ring order with the buffer id in every descriptor, the first descriptor made available last
/// (release), used descriptors read back by id and skipped by the chain's length.
final class PackedDriver {
    let arena: GuestArena
    let size: UInt16
    let descriptorRing: UInt64
    let driverArea: UInt64
    let deviceArea: UInt64
    /// The Driver Ring Wrap Counter with the next slot to make available, and where the next
    /// used descriptor will be.
    private(set) var nextAvail = PackedRingPosition.start
    private(set) var nextUsed = PackedRingPosition.start
    private var freeIDs: [UInt16]
    /// Per outstanding buffer id: the slots its chain took.
    private var chainSlots: [UInt16: UInt16] = [:]
    private(set) var freeSlots: Int

    init(arena: GuestArena, size: UInt16) {
        self.arena = arena
        self.size = size
        descriptorRing = arena.allocate(PackedRing.descriptorSize * Int(size), alignment: 16)
        driverArea = arena.allocate(PackedRing.eventAreaSize, alignment: 4)
        deviceArea = arena.allocate(PackedRing.eventAreaSize, alignment: 4)
        arena.pointer(descriptorRing).initializeMemory(as: UInt8.self, repeating: 0, count: PackedRing.descriptorSize * Int(size))
        arena.pointer(driverArea).initializeMemory(as: UInt8.self, repeating: 0, count: PackedRing.eventAreaSize)
        arena.pointer(deviceArea).initializeMemory(as: UInt8.self, repeating: 0, count: PackedRing.eventAreaSize)
        freeIDs = Array((0..<size).reversed())
        freeSlots = Int(size)
    }

    /// Starts both sides somewhere else (as after SET_VRING_BASE mid-lap).
    func setPositions(avail: PackedRingPosition, used: PackedRingPosition) {
        nextAvail = avail
        nextUsed = used
    }

    /// AVAIL set to the wrap counter, USED to its inverse.
    static func availBits(_ wrapCounter: Bool) -> UInt16 { wrapCounter ? PackedRing.descriptorAvail : PackedRing.descriptorUsed }

    private func pointer(_ index: UInt16) -> UnsafeMutableRawPointer {
        arena.pointer(descriptorRing + UInt64(PackedRing.descriptorSize) * UInt64(index))
    }

    /// Writes a raw descriptor (tests use this to build hostile rings); `flags` as given.
    func writeDescriptor(_ index: UInt16, address: UInt64, length: UInt32, id: UInt16, flags: UInt16) {
        pointer(index).storeBytes(of: tw_vring_packed_desc(addr: address, len: length, id: id, flags: 0), as: tw_vring_packed_desc.self)
        tw_store_release_u16(pointer(index) + PackedRing.descriptorFlagsOffset, flags)
    }

    /// Writes raw descriptors from `nextAvail` on, each made available at its slot's wrap
    /// counter (the first last), and moves past them: for chains the honest `post` would not write.
    func postRaw(_ descriptors: [(address: UInt64, length: UInt32, id: UInt16, flags: UInt16)]) {
        var position = nextAvail
        var firstFlags: UInt16 = 0
        for (i, d) in descriptors.enumerated() {
            let flags = d.flags | Self.availBits(position.wrapCounter)
            pointer(position.index).storeBytes(of: tw_vring_packed_desc(addr: d.address, len: d.length, id: d.id, flags: i == 0 ? 0 : flags),
                                               as: tw_vring_packed_desc.self)
            if i == 0 { firstFlags = flags }
            position = position.advanced(by: 1, size: size)
        }
        tw_store_release_u16(pointer(nextAvail.index) + PackedRing.descriptorFlagsOffset, firstFlags)
        nextAvail = position
        freeSlots -= descriptors.count
    }

    /// Posts a chain of direct descriptors; returns its buffer id, or nil if the ring is full.
    @discardableResult
    func post(_ buffers: [DriverBuffer]) -> UInt16? {
        guard !buffers.isEmpty, buffers.count <= freeSlots, let id = freeIDs.popLast() else { return nil }
        postRaw(buffers.enumerated().map { i, b in
            (b.address, b.length, id, (b.writable ? Ring.descriptorWrite : 0) | (i < buffers.count - 1 ? Ring.descriptorNext : 0))
        })
        chainSlots[id] = UInt16(buffers.count)
        return id
    }

    /// Posts the buffers through one indirect table (one ring slot).
    @discardableResult
    func postIndirect(_ buffers: [DriverBuffer]) -> UInt16? {
        guard freeSlots > 0, let id = freeIDs.popLast() else { return nil }
        let table = writeIndirectTable(buffers)
        postRaw([(table, UInt32(PackedRing.descriptorSize * buffers.count), id, Ring.descriptorIndirect)])
        chainSlots[id] = 1
        return id
    }

    /// An indirect table in guest memory, as the driver writes it (only WRITE among the flags).
    func writeIndirectTable(_ buffers: [DriverBuffer]) -> UInt64 {
        let table = arena.allocate(PackedRing.descriptorSize * max(1, buffers.count), alignment: 16)
        for (i, b) in buffers.enumerated() {
            arena.pointer(table + UInt64(PackedRing.descriptorSize * i)).storeBytes(
                of: tw_vring_packed_desc(addr: b.address, len: b.length, id: 0, flags: b.writable ? Ring.descriptorWrite : 0),
                as: tw_vring_packed_desc.self)
        }
        return table
    }

    struct UsedEntry: Equatable {
        var id: UInt16
        var length: UInt32
        /// Where the device wrote it.
        var index: UInt16
        var wroteData: Bool
    }

    /// Takes every used descriptor the device published since the last call and frees their slots.
    func collectUsed() -> [UsedEntry] {
        var out = [UsedEntry]()
        while true {
            let flags = tw_load_acquire_u16(pointer(nextUsed.index) + PackedRing.descriptorFlagsOffset)
            let used = flags & PackedRing.descriptorUsed != 0
            guard used == nextUsed.wrapCounter, (flags & PackedRing.descriptorAvail != 0) == used else { break }
            let d = pointer(nextUsed.index).loadUnaligned(as: tw_vring_packed_desc.self)
            out.append(UsedEntry(id: d.id, length: d.len, index: nextUsed.index, wroteData: flags & Ring.descriptorWrite != 0))
            let slots = chainSlots.removeValue(forKey: d.id) ?? 1
            freeIDs.append(d.id)
            freeSlots += Int(slots)
            nextUsed = nextUsed.advanced(by: slots, size: size)
        }
        return out
    }

    /// The driver's event area: whether (and where) it wants interrupts.
    func setDriverEvent(_ mode: PackedEventMode, at position: PackedRingPosition = .start) {
        arena.pointer(driverArea).storeBytes(of: tw_vring_packed_event(off_wrap: position.encoded, flags: mode.rawValue),
                                             as: tw_vring_packed_event.self)
    }

    /// The device's event area as the device last wrote it.
    var deviceEvent: (mode: UInt16, position: PackedRingPosition) {
        let e = arena.pointer(deviceArea).loadUnaligned(as: tw_vring_packed_event.self)
        return (e.flags, PackedRingPosition(encoded: e.off_wrap))
    }
}

/// A fake guest with one packed ring and the device-side `PackedQueue` over the same bytes.
final class PackedRingFixture {
    let guest: FakeGuest
    let arena: GuestArena
    let memory: GuestMemoryMap
    let driver: PackedDriver
    let vectors = IOVectorBuffer(capacity: 64)
    var queue: PackedQueue!

    init(size: UInt16 = 8, memoryBytes: Int = 1 << 20, base: PackedVringBase = .start, eventIndex: Bool = false,
         indirect: Bool = true) throws {
        guest = try FakeGuest(memoryBytes: memoryBytes)
        arena = guest.arena
        memory = guest.memory
        driver = PackedDriver(arena: arena, size: size)
        driver.setPositions(avail: base.avail, used: base.used)
        try start(base: base, eventIndex: eventIndex, indirect: indirect)
    }

    /// A new device-side queue over the same ring (as after GET/SET_VRING_BASE).
    func start(base: PackedVringBase, eventIndex: Bool = false, indirect: Bool = true) throws {
        let u = arena.userspaceBase
        let pointers = try PackedQueue.resolveRing(memory: memory, size: driver.size, descriptors: u + driver.descriptorRing,
                                                   driverArea: u + driver.driverArea, deviceArea: u + driver.deviceArea).get()
        queue = PackedQueue(size: driver.size, ring: pointers, memory: memory, base: base,
                            indirectAllowed: indirect, eventIndex: eventIndex)
    }

    func buffer(_ length: Int, fill byte: UInt8 = 0) -> UInt64 { guest.buffer(length, fill: byte) }

    func pop(writable: Bool = false, maxBytes: UInt64 = 1 << 20) throws -> PoppedChain? {
        vectors.removeAll()
        return try queue.popChain(into: vectors, writable: writable, maxBytes: maxBytes)
    }

    /// Pops one chain and returns it used at once with `length`.
    func popAndReturn(writable: Bool = false, length: UInt32 = 0) throws -> PoppedChain? {
        guard let chain = try pop(writable: writable) else { return nil }
        queue.addUsed(head: chain.head, length: length)
        return chain
    }
}
