import CTapwire

/// Why a memory table was refused.
public enum GuestMemoryError: Error, Equatable, CustomStringConvertible, Sendable {
    case emptyRegion(index: Int)
    case addressOverflow(index: Int)
    case overlappingGuestRanges(UInt64, UInt64)
    case overlappingUserspaceRanges(UInt64, UInt64)
    case tooManyRegions(count: Int, limit: Int)

    public var description: String {
        switch self {
        case .emptyRegion(let index): return "memory region \(index) has size 0"
        case .addressOverflow(let index): return "memory region \(index) wraps past the end of the 64-bit address space"
        case .overlappingGuestRanges(let a, let b):
            return "guest physical ranges at \(hex(a)) and \(hex(b)) overlap"
        case .overlappingUserspaceRanges(let a, let b):
            return "frontend virtual ranges at \(hex(a)) and \(hex(b)) overlap"
        case .tooManyRegions(let count, let limit): return "\(count) memory regions, at most \(limit) are supported"
        }
    }
}

/// One contiguous piece of guest RAM, already mapped into this process.
public struct MemoryRegion: @unchecked Sendable {
    // @unchecked Sendable: `host` points into a shared mapping that `owner` keeps alive.
    public let guestPhysicalAddress: UInt64
    public let size: UInt64
    /// Where the frontend (QEMU) has this region in its own address space; ring addresses use it.
    public let userspaceAddress: UInt64
    /// The first byte of the region in this process.
    public let host: UnsafeMutableRawPointer
    /// Keeps the mapping alive while any map refers to it (a MemoryMapping or a test buffer).
    public let owner: (AnyObject & Sendable)?

    public init(guestPhysicalAddress: UInt64, size: UInt64, userspaceAddress: UInt64,
                host: UnsafeMutableRawPointer, owner: (AnyObject & Sendable)?) {
        self.guestPhysicalAddress = guestPhysicalAddress
        self.size = size
        self.userspaceAddress = userspaceAddress
        self.host = host
        self.owner = owner
    }

    public var guestEnd: UInt64 { guestPhysicalAddress &+ size }
}

/// The region bounds the packet path searches: plain values in one flat buffer.
@usableFromInline
struct RegionBounds {
    @usableFromInline var guestStart: UInt64
    @usableFromInline var guestEnd: UInt64
    @usableFromInline var userStart: UInt64
    @usableFromInline var userEnd: UInt64
    @usableFromInline var host: UnsafeMutableRawPointer
}

/// An immutable guest memory table. A new table replaces the old one as a whole, so a
/// translation never sees half an update. Every translation is bounds-checked against the
/// mapped regions; nothing outside them is ever handed out.
public final class GuestMemoryMap: @unchecked Sendable {
    // @unchecked Sendable: immutable after init; the region bytes are guest-shared by design.
    public static let maxRegions = 64

    public let regions: [MemoryRegion]
    @usableFromInline let bounds: UnsafeMutableBufferPointer<RegionBounds>

    public init(regions unsorted: [MemoryRegion]) throws(GuestMemoryError) {
        guard unsorted.count <= Self.maxRegions else {
            throw .tooManyRegions(count: unsorted.count, limit: Self.maxRegions)
        }
        for (index, region) in unsorted.enumerated() {
            guard region.size > 0 else { throw .emptyRegion(index: index) }
            let (_, guestOverflow) = region.guestPhysicalAddress.addingReportingOverflow(region.size)
            let (_, userOverflow) = region.userspaceAddress.addingReportingOverflow(region.size)
            guard !guestOverflow, !userOverflow else { throw .addressOverflow(index: index) }
        }
        let sorted = unsorted.sorted { $0.guestPhysicalAddress < $1.guestPhysicalAddress }
        for (a, b) in zip(sorted, sorted.dropFirst()) where a.guestEnd > b.guestPhysicalAddress {
            throw .overlappingGuestRanges(a.guestPhysicalAddress, b.guestPhysicalAddress)
        }
        let byUser = sorted.sorted { $0.userspaceAddress < $1.userspaceAddress }
        for (a, b) in zip(byUser, byUser.dropFirst()) where a.userspaceAddress &+ a.size > b.userspaceAddress {
            throw .overlappingUserspaceRanges(a.userspaceAddress, b.userspaceAddress)
        }
        regions = sorted
        bounds = .allocate(capacity: max(sorted.count, 1))
        for (index, region) in sorted.enumerated() {
            bounds[index] = RegionBounds(guestStart: region.guestPhysicalAddress, guestEnd: region.guestEnd,
                                         userStart: region.userspaceAddress,
                                         userEnd: region.userspaceAddress &+ region.size, host: region.host)
        }
    }

    deinit {
        bounds.deallocate()
    }

    public var regionCount: Int { regions.count }

    public var totalSize: UInt64 { regions.reduce(0) { $0 + $1.size } }

    /// A host pointer to `length` bytes at guest physical `address`, if the whole range lies
    /// inside one region. `length` 0 still needs `address` inside a region.
    @inlinable
    public func hostPointer(guestPhysical address: UInt64, length: UInt64) -> UnsafeMutableRawPointer? {
        for i in 0..<regions.count {
            let region = bounds[i]
            if address >= region.guestStart && address < region.guestEnd {
                guard length <= region.guestEnd &- address else { return nil }
                return region.host + Int(address &- region.guestStart)
            }
        }
        return nil
    }

    /// Same, for a frontend virtual address (how SET_VRING_ADDR names the rings).
    public func hostPointer(userspace address: UInt64, length: UInt64) -> UnsafeMutableRawPointer? {
        for i in 0..<regions.count {
            let region = bounds[i]
            if address >= region.userStart && address < region.userEnd {
                guard length <= region.userEnd &- address else { return nil }
                return region.host + Int(address &- region.userStart)
            }
        }
        return nil
    }

    /// The guest physical address of `length` bytes at host address `pointer`, if they lie
    /// inside one region: how the dirty log names what the device wrote through an iovec.
    @inlinable
    public func guestPhysical(host pointer: UnsafeRawPointer, length: Int) -> UInt64? {
        for i in 0..<regions.count {
            let region = bounds[i]
            let start = UnsafeRawPointer(region.host)
            guard pointer >= start else { continue }
            let offset = UInt64(pointer - start)
            let size = region.guestEnd &- region.guestStart
            if offset < size {
                guard UInt64(length) <= size &- offset else { return nil }
                return region.guestStart &+ offset
            }
        }
        return nil
    }

    /// The end of the highest region: what a dirty log must cover.
    public var guestEnd: UInt64 { regions.last?.guestEnd ?? 0 }

    /// Walks a guest physical range that may cross region boundaries, calling `body` with each
    /// contiguous host piece. Returns false (after calling `body` for none or some pieces) when
    /// any byte of the range is outside guest memory or the range wraps; callers then discard
    /// the pieces they collected. `body` returns false to stop early (e.g. out of iovec room).
    @inlinable
    public func forEachHostSegment(guestPhysical address: UInt64, length: UInt64,
                                   _ body: (UnsafeMutableRawPointer, Int) -> Bool) -> Bool {
        let (end, overflow) = address.addingReportingOverflow(length)
        if overflow { return false }
        var cursor = address
        while cursor < end {
            var found = false
            for i in 0..<regions.count {
                let region = bounds[i]
                if cursor >= region.guestStart && cursor < region.guestEnd {
                    let pieceEnd = min(end, region.guestEnd)
                    if !body(region.host + Int(cursor &- region.guestStart), Int(pieceEnd &- cursor)) { return false }
                    cursor = pieceEnd
                    found = true
                    break
                }
            }
            if !found { return false }
        }
        return true
    }

    /// Copies bytes out of guest memory (bounds-checked, may cross regions).
    public func read(guestPhysical address: UInt64, into buffer: UnsafeMutableRawBufferPointer) -> Bool {
        var offset = 0
        return forEachHostSegment(guestPhysical: address, length: UInt64(buffer.count)) { pointer, count in
            // SAFETY: the segment is inside a mapped region and `offset + count` <= buffer.count
            // because the segments partition exactly `buffer.count` bytes.
            (buffer.baseAddress! + offset).copyMemory(from: pointer, byteCount: count)
            offset += count
            return true
        }
    }

    /// Copies bytes into guest memory (bounds-checked, may cross regions).
    public func write(guestPhysical address: UInt64, from buffer: UnsafeRawBufferPointer) -> Bool {
        var offset = 0
        return forEachHostSegment(guestPhysical: address, length: UInt64(buffer.count)) { pointer, count in
            // SAFETY: as in read(): the destination is inside a mapped region, the source inside `buffer`.
            pointer.copyMemory(from: buffer.baseAddress! + offset, byteCount: count)
            offset += count
            return true
        }
    }
}

/// `0x…` rendering for log lines about addresses.
public func hex<T: BinaryInteger>(_ value: T) -> String { "0x" + String(value, radix: 16) }
