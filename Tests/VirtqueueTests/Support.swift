import GuestMemory
import SystemCalls
import Virtqueue
import VhostUserFrontend

/// A fake guest: anonymous memory holding real rings, driven by `DriverQueue` as a guest
/// kernel would, and the device-side `SplitQueue` over the same bytes.
final class RingFixture {
    let mapping: MemoryMapping
    let arena: GuestArena
    let memory: GuestMemoryMap
    let driver: DriverQueue
    let vectors = IOVectorBuffer(capacity: 64)
    var queue: SplitQueue!

    init(size: UInt16 = 8, memoryBytes: Int = 1 << 20, startIndex: UInt16 = 0, eventIndex: Bool = false, indirect: Bool = true) throws {
        mapping = try MemoryMapping(anonymousLength: memoryBytes)
        arena = GuestArena(base: mapping.base, size: memoryBytes, fd: -1, owner: mapping)
        memory = try GuestMemoryMap(regions: [MemoryRegion(guestPhysicalAddress: 0, size: UInt64(memoryBytes),
                                                            userspaceAddress: arena.userspaceBase, host: mapping.base, owner: mapping)])
        driver = DriverQueue(arena: arena, size: size)
        driver.eventIndex = eventIndex
        if startIndex != 0 { driver.setIndices(avail: startIndex, used: startIndex) }
        let u = arena.userspaceBase
        let pointers = try SplitQueue.resolveRing(memory: memory, size: size, descriptors: u + driver.descriptorTable,
                                                  avail: u + driver.availRing, used: u + driver.usedRing).get()
        queue = SplitQueue(size: size, ring: pointers, memory: memory, nextAvail: startIndex, nextUsed: startIndex,
                           indirectAllowed: indirect, eventIndex: eventIndex)
    }

    /// A buffer in guest memory filled with `byte`.
    func buffer(_ length: Int, fill byte: UInt8 = 0) -> UInt64 {
        let gpa = arena.allocate(length, alignment: 8)
        arena.pointer(gpa).initializeMemory(as: UInt8.self, repeating: byte, count: length)
        return gpa
    }

    func pop(writable: Bool = false, maxBytes: UInt64 = 1 << 20) throws -> PoppedChain? {
        vectors.removeAll()
        return try queue.popChain(into: vectors, writable: writable, maxBytes: maxBytes)
    }
}
