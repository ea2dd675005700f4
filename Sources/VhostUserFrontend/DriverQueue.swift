import CTapwire
import Virtqueue

/// Guest RAM for a test or tool frontend: one memfd, shared with the backend, with a bump
/// allocator handing out guest physical addresses (guest physical 0 is the start).
public final class GuestArena: @unchecked Sendable {
    // @unchecked Sendable: tests and tools use an arena from one thread at a time.
    public let base: UnsafeMutableRawPointer
    public let size: Int
    public let fd: Int32
    private var next = 0
    private let owner: AnyObject

    public init(base: UnsafeMutableRawPointer, size: Int, fd: Int32, owner: AnyObject) {
        self.base = base
        self.size = size
        self.fd = fd
        self.owner = owner
    }

    /// Frontend virtual address of guest physical 0 (what SET_MEM_TABLE's userspace_addr says).
    public var userspaceBase: UInt64 { UInt64(UInt(bitPattern: base)) }

    public func allocate(_ bytes: Int, alignment: Int = 64) -> UInt64 {
        next = (next + alignment - 1) & ~(alignment - 1)
        precondition(next + bytes <= size, "test arena exhausted")
        defer { next += bytes }
        return UInt64(next)
    }

    public func pointer(_ gpa: UInt64) -> UnsafeMutableRawPointer { base + Int(gpa) }

    public func write(_ bytes: [UInt8], at gpa: UInt64) {
        bytes.withUnsafeBytes { pointer(gpa).copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
    }

    public func read(_ gpa: UInt64, count: Int) -> [UInt8] {
        Array(UnsafeRawBufferPointer(start: pointer(gpa), count: count))
    }
}

/// One buffer of a chain the driver posts.
public struct DriverBuffer: Sendable {
    public var address: UInt64
    public var length: UInt32
    public var writable: Bool

    public init(address: UInt64, length: UInt32, writable: Bool) {
        self.address = address
        self.length = length
        self.writable = writable
    }
}

/// The driver (guest) side of a split virtqueue, writing real descriptor tables and rings into
/// an arena, as a guest kernel would. Used to drive the backend in tests and tools.
public final class DriverQueue: @unchecked Sendable {
    // @unchecked Sendable: driven from one thread at a time.
    public let arena: GuestArena
    public let size: UInt16
    public let descriptorTable: UInt64
    public let availRing: UInt64
    public let usedRing: UInt64
    public var eventIndex = false
    private var freeHeads: [UInt16]
    private var chainLengths: [UInt16: Int] = [:]
    public private(set) var availIndex: UInt16 = 0
    public private(set) var lastUsed: UInt16 = 0

    public init(arena: GuestArena, size: UInt16) {
        self.arena = arena
        self.size = size
        descriptorTable = arena.allocate(16 * Int(size), alignment: 16)
        availRing = arena.allocate(6 + 2 * Int(size), alignment: 2)
        usedRing = arena.allocate(6 + 8 * Int(size), alignment: 4)
        freeHeads = Array((0..<size).reversed())
        memsetZero(descriptorTable, 16 * Int(size))
        memsetZero(availRing, 6 + 2 * Int(size))
        memsetZero(usedRing, 6 + 8 * Int(size))
    }

    private func memsetZero(_ gpa: UInt64, _ count: Int) {
        arena.pointer(gpa).initializeMemory(as: UInt8.self, repeating: 0, count: count)
    }

    public var freeCount: Int { freeHeads.count }

    /// Starts the indices somewhere else (e.g. near 65535 to test wrap-around).
    public func setIndices(avail: UInt16, used: UInt16) {
        availIndex = avail
        lastUsed = used
        arena.pointer(availRing + 2).storeBytes(of: avail, as: UInt16.self)
        arena.pointer(usedRing + 2).storeBytes(of: used, as: UInt16.self)
    }

    /// Writes a raw descriptor (tests use this to build hostile tables).
    public func writeDescriptor(_ index: UInt16, address: UInt64, length: UInt32, flags: UInt16, next: UInt16) {
        arena.pointer(descriptorTable + 16 * UInt64(index))
            .storeBytes(of: tw_vring_desc(addr: address, len: length, flags: flags, next: next), as: tw_vring_desc.self)
    }

    /// Puts `head` in the avail ring and publishes the new avail index (release).
    public func publish(head: UInt16) {
        arena.pointer(availRing + 4 + 2 * UInt64(availIndex & (size - 1))).storeBytes(of: head, as: UInt16.self)
        availIndex &+= 1
        tw_store_release_u16(arena.pointer(availRing + 2), availIndex)
    }

    /// Sets avail->idx to anything (hostile tests).
    public func forceAvailIndex(_ value: UInt16) {
        tw_store_release_u16(arena.pointer(availRing + 2), value)
    }

    /// Posts a chain of direct descriptors; returns its head, or nil if the table is full.
    @discardableResult
    public func post(_ buffers: [DriverBuffer]) -> UInt16? {
        guard buffers.count <= freeHeads.count, !buffers.isEmpty else { return nil }
        let ids = (0..<buffers.count).map { _ in freeHeads.removeLast() }
        for (i, buffer) in buffers.enumerated() {
            let last = i == buffers.count - 1
            var flags: UInt16 = buffer.writable ? Ring.descriptorWrite : 0
            if !last { flags |= Ring.descriptorNext }
            writeDescriptor(ids[i], address: buffer.address, length: buffer.length, flags: flags, next: last ? 0 : ids[i + 1])
        }
        chainLengths[ids[0]] = ids.count
        chainMembers[ids[0]] = ids
        publish(head: ids[0])
        return ids[0]
    }

    private var chainMembers: [UInt16: [UInt16]] = [:]

    /// Posts the buffers through one indirect table (one ring descriptor).
    @discardableResult
    public func postIndirect(_ buffers: [DriverBuffer]) -> UInt16? {
        guard let head = freeHeads.popLast() else { return nil }
        let table = arena.allocate(16 * buffers.count, alignment: 16)
        for (i, buffer) in buffers.enumerated() {
            let last = i == buffers.count - 1
            var flags: UInt16 = buffer.writable ? Ring.descriptorWrite : 0
            if !last { flags |= Ring.descriptorNext }
            arena.pointer(table + 16 * UInt64(i)).storeBytes(
                of: tw_vring_desc(addr: buffer.address, len: buffer.length, flags: flags, next: last ? 0 : UInt16(i + 1)),
                as: tw_vring_desc.self)
        }
        writeDescriptor(head, address: table, length: UInt32(16 * buffers.count), flags: Ring.descriptorIndirect, next: 0)
        chainMembers[head] = [head]
        publish(head: head)
        return head
    }

    public struct UsedEntry: Equatable, Sendable {
        public var head: UInt16
        public var length: UInt32
    }

    public var usedIndex: UInt16 { tw_load_acquire_u16(arena.pointer(usedRing + 2)) }

    /// Takes every used entry the device published since the last call and frees their descriptors.
    public func collectUsed() -> [UsedEntry] {
        let published = usedIndex
        var out = [UsedEntry]()
        while lastUsed != published {
            let element = arena.pointer(usedRing + 4 + 8 * UInt64(lastUsed & (size - 1))).loadUnaligned(as: tw_vring_used_elem.self)
            let head = UInt16(truncatingIfNeeded: element.id)
            out.append(UsedEntry(head: head, length: element.len))
            if let members = chainMembers.removeValue(forKey: head) { freeHeads.append(contentsOf: members) }
            lastUsed &+= 1
        }
        if eventIndex {
            // used_event: interrupt me after the next entry.
            arena.pointer(availRing + 4 + 2 * UInt64(size)).storeBytes(of: lastUsed, as: UInt16.self)
        }
        return out
    }

    /// avail_event as the device last wrote it (event idx).
    public var availEvent: UInt16 { tw_load_relaxed_u16(arena.pointer(usedRing + 4 + 8 * UInt64(size))) }

    public var usedFlags: UInt16 { tw_load_relaxed_u16(arena.pointer(usedRing)) }

    /// Sets avail->flags (e.g. VRING_AVAIL_F_NO_INTERRUPT) or used_event.
    public func setAvailFlags(_ flags: UInt16) { arena.pointer(availRing).storeBytes(of: flags, as: UInt16.self) }
    public func setUsedEvent(_ value: UInt16) { arena.pointer(availRing + 4 + 2 * UInt64(size)).storeBytes(of: value, as: UInt16.self) }
}
