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

    public var description: String {
        switch self {
        case .availIndexJump(let seen, let expected, let size):
            return "avail index jumped to \(seen) from \(expected), more than the ring size \(size) ahead"
        case .headOutOfRange(let head, let size):
            return "avail ring names head \(head), outside a ring of \(size)"
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
    case nestedIndirect
    case indirectBadLength(UInt32)
    case indirectOutsideMemory(address: UInt64, length: UInt32)
    case wrongDirection(expectedWritable: Bool)
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
        case .nestedIndirect: return "indirect descriptor inside an indirect table"
        case .indirectBadLength(let length): return "indirect table length \(length) is not a non-zero multiple of 16"
        case .indirectOutsideMemory(let address, let length):
            return "indirect table 0x\(String(address, radix: 16)) + \(length) is outside guest memory"
        case .wrongDirection(let expectedWritable):
            return expectedWritable ? "receive buffer is not device-writable" : "transmit buffer is device-writable"
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
        case .indirectNotNegotiated, .indirectWithNext, .nestedIndirect, .indirectBadLength, .indirectOutsideMemory:
            return "bad_indirect"
        case .wrongDirection: return "wrong_direction"
        case .tooManySegments: return "too_many_segments"
        case .tooLarge: return "too_large"
        }
    }
}
