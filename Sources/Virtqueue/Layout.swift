import CTapwire

/// Split-ring constants from the virtio 1.x spec.
public enum Ring {
    public static let maxSize: UInt16 = 32768
    public static let descriptorSize = 16
    public static let usedElementSize = 8

    public static let descriptorNext: UInt16 = 1
    public static let descriptorWrite: UInt16 = 2
    public static let descriptorIndirect: UInt16 = 4

    /// In avail.flags: the driver does not want interrupts.
    public static let availNoInterrupt: UInt16 = 1
    /// In used.flags: the device does not want kicks.
    public static let usedNoNotify: UInt16 = 1

    public static func descriptorTableBytes(_ size: UInt16) -> UInt64 { UInt64(size) * 16 }
    /// flags, idx, ring[size], used_event
    public static func availRingBytes(_ size: UInt16) -> UInt64 { 6 + 2 * UInt64(size) }
    /// flags, idx, ring[size], avail_event
    public static func usedRingBytes(_ size: UInt16) -> UInt64 { 6 + 8 * UInt64(size) }

    public static func isValidSize(_ size: UInt32) -> Bool {
        size > 0 && size <= UInt32(maxSize) && size & (size - 1) == 0
    }
}

/// Packed-ring constants from the virtio 1.1+ spec ("Packed Virtqueues"). The NEXT, WRITE and
/// INDIRECT descriptor flags have the split ring's values (`Ring.descriptorNext` ...).
public enum PackedRing {
    /// Packed rings hold up to 2^15 descriptors, and need not be a power of two.
    public static let maxSize: UInt16 = 32768
    public static let descriptorSize = 16
    /// The driver's and the device's event suppression areas: off_wrap, then flags.
    public static let eventAreaSize = 4
    public static let descriptorAlignment: UInt64 = 16
    public static let eventAreaAlignment: UInt64 = 4
    /// Byte offsets inside a descriptor (`tw_vring_packed_desc`).
    public static let descriptorLengthOffset = 8
    public static let descriptorIDOffset = 12
    public static let descriptorFlagsOffset = 14
    /// Byte offsets inside an event suppression area (`tw_vring_packed_event`).
    public static let eventOffWrapOffset = 0
    public static let eventFlagsOffset = 2

    /// Flags bit 7: the driver's wrap counter when it made the descriptor available.
    public static let descriptorAvail: UInt16 = 1 << 7
    /// Flags bit 15: the device's wrap counter when it marked the descriptor used.
    public static let descriptorUsed: UInt16 = 1 << 15

    /// In a ring position as vhost-user and the event areas pack it: bit 15 the wrap counter,
    /// bits 0-14 the descriptor index.
    public static let wrapCounterBit: UInt16 = 1 << 15
    public static let indexMask: UInt16 = 0x7FFF
    /// The event areas' flags field: only its two low bits mean anything.
    public static let eventModeMask: UInt16 = 3

    public static func descriptorRingBytes(_ size: UInt16) -> UInt64 { UInt64(size) * UInt64(descriptorSize) }

    public static func isValidSize(_ size: UInt32) -> Bool { size > 0 && size <= UInt32(maxSize) }

    /// Whether a descriptor with `flags` is available to a device expecting `wrapCounter`:
    /// AVAIL matches it and USED does not.
    @inlinable
    public static func isAvailable(_ flags: UInt16, wrapCounter: Bool) -> Bool {
        (flags & descriptorAvail != 0) == wrapCounter && (flags & descriptorUsed != 0) != wrapCounter
    }

    /// The AVAIL and USED bits of a descriptor the device marks used at `wrapCounter`: both equal to it.
    @inlinable
    public static func usedBits(wrapCounter: Bool) -> UInt16 { wrapCounter ? descriptorAvail | descriptorUsed : 0 }
}

/// RING_EVENT_FLAGS_*: what one side of a packed ring asks of the other's notifications.
public enum PackedEventMode: UInt16, Sendable {
    /// Notify after every descriptor.
    case enable = 0
    /// Do not notify.
    case disable = 1
    /// Notify when the descriptor at off_wrap is made available / used (EVENT_IDX only).
    case descriptor = 2
}

/// A place in a packed ring: a descriptor index below the ring size and the wrap counter that
/// goes with it (both sides start at index 0 with the counter set, and flip it past the end).
public struct PackedRingPosition: Equatable, Hashable, Sendable, CustomStringConvertible {
    public var index: UInt16
    public var wrapCounter: Bool

    /// Where both sides start after a reset.
    public static let start = PackedRingPosition(index: 0, wrapCounter: true)

    public init(index: UInt16, wrapCounter: Bool) {
        self.index = index
        self.wrapCounter = wrapCounter
    }

    /// From the 16-bit packing of vhost-user's vring base and the event areas' off_wrap.
    public init(encoded: UInt16) {
        index = encoded & PackedRing.indexMask
        wrapCounter = encoded & PackedRing.wrapCounterBit != 0
    }

    /// Bits 0-14 the index, bit 15 the wrap counter.
    public var encoded: UInt16 { index & PackedRing.indexMask | (wrapCounter ? PackedRing.wrapCounterBit : 0) }

    /// `count` (at most `size`) descriptors further on, flipping the counter past the end.
    @inlinable
    public func advanced(by count: UInt16, size: UInt16) -> PackedRingPosition {
        let next = UInt32(index) + UInt32(count)
        return next >= UInt32(size) ? PackedRingPosition(index: UInt16(next - UInt32(size)), wrapCounter: !wrapCounter)
                                    : PackedRingPosition(index: UInt16(next), wrapCounter: wrapCounter)
    }

    /// `count` (at most `size`) descriptors back.
    @inlinable
    public func retreated(by count: UInt16, size: UInt16) -> PackedRingPosition {
        count > index ? PackedRingPosition(index: index &+ size &- count, wrapCounter: !wrapCounter)
                      : PackedRingPosition(index: index - count, wrapCounter: wrapCounter)
    }

    /// The position counted over two laps, in 0..<2 * size: a lap with the counter set, then one without.
    @inlinable
    public func twoLapIndex(size: UInt16) -> Int { Int(index) + (wrapCounter ? 0 : Int(size)) }

    /// Descriptors from here forward to `other`, in 0..<2 * size.
    @inlinable
    public func distance(to other: PackedRingPosition, size: UInt16) -> Int {
        let laps = 2 * Int(size)
        // An index from the guest (an event area's off_wrap) may be past the ring: still in 0..<laps.
        let difference = (other.twoLapIndex(size: size) - twoLapIndex(size: size)) % laps
        return difference < 0 ? difference + laps : difference
    }

    public var description: String { "\(index)/\(wrapCounter ? 1 : 0)" }
}

/// GET/SET_VRING_BASE's 32-bit value for a packed ring (vhost-user "Vring descriptor indices
/// for packed virtqueues"): bits 0-14 the next descriptor to process and bit 15 the driver's
/// (avail) wrap counter; bits 16-30 where the next used descriptor goes and bit 31 the device's
/// (used) wrap counter.
public struct PackedVringBase: Equatable, Sendable, CustomStringConvertible {
    public var avail: PackedRingPosition
    public var used: PackedRingPosition

    /// A reset ring: both at index 0 with the counters set (0x8000_8000).
    public static let start = PackedVringBase(avail: .start, used: .start)

    public init(avail: PackedRingPosition, used: PackedRingPosition) {
        self.avail = avail
        self.used = used
    }

    public init(num: UInt32) {
        avail = PackedRingPosition(encoded: UInt16(truncatingIfNeeded: num))
        used = PackedRingPosition(encoded: UInt16(truncatingIfNeeded: num >> 16))
    }

    public var num: UInt32 { UInt32(avail.encoded) | UInt32(used.encoded) << 16 }

    /// Both indices inside a ring of `size`, and the used position at most a ring behind avail.
    public func isValid(size: UInt16) -> Bool {
        avail.index < size && used.index < size && used.distance(to: avail, size: size) <= Int(size)
    }

    public var description: String { "avail \(avail), used \(used)" }
}

/// Host pointers to the three parts of a packed ring, already bounds-checked against guest memory.
/// vhost-user's SET_VRING_ADDR names them in the split ring's fields: the descriptor table, the
/// avail ring (the driver's event suppression area) and the used ring (the device's).
public struct PackedRingPointers: @unchecked Sendable {
    // @unchecked Sendable: plain pointers into guest memory; used by one queue thread at a time.
    public var descriptors: UnsafeMutableRawPointer
    /// Written by the driver: whether it wants interrupts.
    public var driverEvent: UnsafeMutableRawPointer
    /// Written by the device: whether it wants kicks.
    public var deviceEvent: UnsafeMutableRawPointer

    public init(descriptors: UnsafeMutableRawPointer, driverEvent: UnsafeMutableRawPointer, deviceEvent: UnsafeMutableRawPointer) {
        self.descriptors = descriptors
        self.driverEvent = driverEvent
        self.deviceEvent = deviceEvent
    }
}

/// Host pointers to the three parts of a split ring, already bounds-checked against guest memory.
public struct RingPointers: @unchecked Sendable {
    // @unchecked Sendable: plain pointers into guest memory; used by one queue thread at a time.
    public var descriptors: UnsafeMutableRawPointer
    public var avail: UnsafeMutableRawPointer
    public var used: UnsafeMutableRawPointer

    public init(descriptors: UnsafeMutableRawPointer, avail: UnsafeMutableRawPointer, used: UnsafeMutableRawPointer) {
        self.descriptors = descriptors
        self.avail = avail
        self.used = used
    }
}

/// Why a queue can no longer be served. Any of these fails the queue until it is reset.
public enum QueueFault: Error, Equatable, CustomStringConvertible, Sendable {
    case availIndexJump(seen: UInt16, expected: UInt16, size: UInt16)
    case headOutOfRange(head: UInt16, size: UInt16)
    /// Packed: a chain went on past the descriptors the driver could have made available
    /// (the ring size less those the device still holds), so where it ends is unknown.
    case chainLongerThanRing(limit: Int)
    /// Packed: a descriptor after the first of a chain is not available (the driver must write
    /// the whole chain before making its first descriptor available).
    case incompleteChain(index: UInt16)
    /// Packed: a chain's buffer id is not below the ring size.
    case bufferIDOutOfRange(id: UInt16, size: UInt16)
    /// Packed: a chain's buffer id belongs to a chain the device has not returned yet.
    case bufferIDInUse(id: UInt16)

    public var description: String {
        switch self {
        case .availIndexJump(let seen, let expected, let size):
            return "avail index jumped to \(seen) from \(expected), more than the ring size \(size) ahead"
        case .headOutOfRange(let head, let size):
            return "avail ring names head \(head), outside a ring of \(size)"
        case .chainLongerThanRing(let limit):
            return "packed chain longer than the \(limit) descriptors the driver could have made available (a loop?)"
        case .incompleteChain(let index):
            return "packed chain goes on at descriptor \(index), which is not available"
        case .bufferIDOutOfRange(let id, let size):
            return "packed chain has buffer id \(id), outside a ring of \(size)"
        case .bufferIDInUse(let id):
            return "packed chain has buffer id \(id), which a chain not yet returned holds"
        }
    }
}

/// Why one descriptor chain was refused. The chain is returned to the guest unused (length 0)
/// and counted; the queue goes on.
public enum ChainFault: Error, Equatable, CustomStringConvertible, Sendable {
    case nextOutOfRange(index: UInt16, tableSize: Int)
    case chainTooLong(limit: Int)
    case bufferOutsideMemory(address: UInt64, length: UInt32)
    case indirectNotNegotiated
    case indirectWithNext
    /// Packed: an indirect descriptor after direct ones in one chain.
    case indirectInChain
    case nestedIndirect
    case indirectBadLength(UInt32)
    case indirectOutsideMemory(address: UInt64, length: UInt32)
    case wrongDirection(expectedWritable: Bool)
    /// Packed: a device-readable descriptor after a device-writable one.
    case readableAfterWritable
    case tooManySegments(limit: Int)
    case tooLarge(bytes: UInt64)

    public var description: String {
        switch self {
        case .nextOutOfRange(let index, let size): return "descriptor next \(index) is outside a table of \(size)"
        case .chainTooLong(let limit): return "descriptor chain longer than \(limit) (a loop?)"
        case .bufferOutsideMemory(let address, let length):
            return "buffer 0x\(String(address, radix: 16)) + \(length) is outside guest memory"
        case .indirectNotNegotiated: return "indirect descriptor without VIRTIO_F_RING_INDIRECT_DESC"
        case .indirectWithNext: return "indirect descriptor with the NEXT flag"
        case .indirectInChain: return "indirect descriptor chained after direct ones"
        case .nestedIndirect: return "indirect descriptor inside an indirect table"
        case .indirectBadLength(let length): return "indirect table length \(length) is not a non-zero multiple of 16"
        case .indirectOutsideMemory(let address, let length):
            return "indirect table 0x\(String(address, radix: 16)) + \(length) is outside guest memory"
        case .wrongDirection(let expectedWritable):
            return expectedWritable ? "receive buffer is not device-writable" : "transmit buffer is device-writable"
        case .readableAfterWritable: return "device-readable descriptor after a device-writable one"
        case .tooManySegments(let limit): return "chain needs more than \(limit) I/O segments"
        case .tooLarge(let bytes): return "chain of \(bytes) bytes is larger than any frame"
        }
    }

    /// Short label for metrics.
    public var reason: String {
        switch self {
        case .nextOutOfRange: return "next_out_of_range"
        case .chainTooLong: return "chain_too_long"
        case .bufferOutsideMemory: return "buffer_outside_memory"
        case .indirectNotNegotiated, .indirectWithNext, .indirectInChain, .nestedIndirect, .indirectBadLength,
             .indirectOutsideMemory:
            return "bad_indirect"
        case .wrongDirection, .readableAfterWritable: return "wrong_direction"
        case .tooManySegments: return "too_many_segments"
        case .tooLarge: return "too_large"
        }
    }
}
