import CTapwire
import SystemCalls

public struct MessageHeader: Equatable, Sendable {
    public var request: UInt32
    public var flags: UInt32
    public var size: UInt32

    public init(request: UInt32, flags: UInt32, size: UInt32) {
        self.request = request
        self.flags = flags
        self.size = size
    }

    public init(bytes: UnsafeRawBufferPointer) {
        let raw = bytes.loadUnaligned(as: tw_vu_header.self)
        self.init(request: raw.request, flags: raw.flags, size: raw.size)
    }

    public var needsReply: Bool { flags & HeaderFlags.needReply != 0 }

    /// The header checks that come before the payload is read.
    public func validateAsRequest() throws(ProtocolError) {
        guard flags & HeaderFlags.versionMask == HeaderFlags.version else {
            throw .badVersion(flags: flags)
        }
        guard flags & HeaderFlags.reply == 0 else { throw .unexpectedReply(request: request) }
        guard size <= VhostUserLimits.maxPayload else { throw .payloadTooLarge(request: request, size: size) }
    }
}

/// A memory region as the frontend describes it.
public struct RegionDescription: Equatable, Sendable {
    public var guestPhysicalAddress: UInt64
    public var size: UInt64
    public var userspaceAddress: UInt64
    public var mmapOffset: UInt64

    public init(guestPhysicalAddress: UInt64, size: UInt64, userspaceAddress: UInt64, mmapOffset: UInt64) {
        self.guestPhysicalAddress = guestPhysicalAddress
        self.size = size
        self.userspaceAddress = userspaceAddress
        self.mmapOffset = mmapOffset
    }

    init(raw: tw_vu_region) {
        self.init(guestPhysicalAddress: raw.guest_phys_addr, size: raw.memory_size,
                  userspaceAddress: raw.userspace_addr, mmapOffset: raw.mmap_offset)
    }

    var raw: tw_vu_region {
        tw_vu_region(guest_phys_addr: guestPhysicalAddress, memory_size: size, userspace_addr: userspaceAddress,
                     mmap_offset: mmapOffset)
    }
}

public struct VringAddress: Equatable, Sendable {
    public var index: UInt32
    public var flags: UInt32
    public var descriptors: UInt64
    public var used: UInt64
    public var avail: UInt64
    public var log: UInt64

    public init(index: UInt32, flags: UInt32 = 0, descriptors: UInt64, used: UInt64, avail: UInt64, log: UInt64 = 0) {
        self.index = index
        self.flags = flags
        self.descriptors = descriptors
        self.used = used
        self.avail = avail
        self.log = log
    }
}

/// A validated front-end request. Descriptors it carries are owned by the message and closed
/// when it is dropped, so a request that is refused leaks nothing.
public enum VhostUserMessage: Sendable {
    case getFeatures
    case setFeatures(UInt64)
    case setOwner
    case resetOwner
    case resetDevice
    case setMemTable([RegionDescription], [Descriptor])
    case getMaxMemSlots
    case addMemReg(RegionDescription, Descriptor)
    case remMemReg(RegionDescription)
    case setVringNum(index: UInt32, num: UInt32)
    case setVringAddr(VringAddress)
    case setVringBase(index: UInt32, num: UInt32)
    case getVringBase(index: UInt32)
    case setVringKick(index: UInt32, Descriptor?)
    case setVringCall(index: UInt32, Descriptor?)
    case setVringErr(index: UInt32, Descriptor?)
    case getProtocolFeatures
    case setProtocolFeatures(UInt64)
    case getQueueNum
    case setVringEnable(index: UInt32, enable: Bool)
    case sendRARP(mac: [UInt8])
    case netSetMTU(UInt64)
    case getConfig(offset: UInt32, size: UInt32, flags: UInt32)
    case setConfig(offset: UInt32, flags: UInt32, data: [UInt8])
    case setBackendReqFD(Descriptor)
    /// The dirty-page log for a live migration: `size` bytes at `offset` in the memfd.
    case setLogBase(size: UInt64, offset: UInt64, Descriptor)
    case setLogFD(Descriptor)
    /// A request we know of but do not implement for a net device; it gets an error reply.
    case unsupported(VhostUserRequest)
}

public enum ProtocolError: Error, Equatable, CustomStringConvertible, Sendable {
    case truncatedHeader(got: Int)
    case badVersion(flags: UInt32)
    case unexpectedReply(request: UInt32)
    case payloadTooLarge(request: UInt32, size: UInt32)
    case unknownRequest(UInt32)
    case wrongPayloadSize(request: String, size: UInt32, expected: String)
    case wrongDescriptorCount(request: String, got: Int, expected: Int)
    case tooManyDescriptors
    case tooManyRegions(Int)
    case badConfigRange(offset: UInt32, size: UInt32)
    case peerClosedMidMessage

    public var description: String {
        switch self {
        case .truncatedHeader(let got): return "message header truncated after \(got) of 12 bytes"
        case .badVersion(let flags): return "unsupported protocol version in flags 0x\(String(flags, radix: 16)) (want version 1)"
        case .unexpectedReply(let request): return "request \(request) carries the REPLY flag"
        case .payloadTooLarge(let request, let size):
            return "request \(request) announces \(size) payload bytes (limit \(VhostUserLimits.maxPayload))"
        case .unknownRequest(let request): return "unknown request \(request)"
        case .wrongPayloadSize(let request, let size, let expected):
            return "\(request) with \(size) payload bytes, expected \(expected)"
        case .wrongDescriptorCount(let request, let got, let expected):
            return "\(request) with \(got) file descriptors, expected \(expected)"
        case .tooManyDescriptors: return "message carried more file descriptors than any request takes"
        case .tooManyRegions(let count):
            return "SET_MEM_TABLE with \(count) regions (at most \(VhostUserLimits.maxMemTableRegions))"
        case .badConfigRange(let offset, let size): return "config access at \(offset)+\(size) is outside the 256-byte space"
        case .peerClosedMidMessage: return "frontend closed the connection in the middle of a message"
        }
    }
}

/// Turns a header, its payload and the descriptors that came with it into a message.
public enum MessageDecoder {
    public static func decode(header: MessageHeader, payload: UnsafeRawBufferPointer,
                              descriptors: [Descriptor]) throws(ProtocolError) -> VhostUserMessage {
        guard let request = VhostUserRequest(rawValue: header.request) else { throw .unknownRequest(header.request) }
        let name = request.name
        let size = header.size

        func expectSize(_ expected: UInt32) throws(ProtocolError) {
            guard size == expected else { throw .wrongPayloadSize(request: name, size: size, expected: "\(expected)") }
        }
        func expectNoDescriptors() throws(ProtocolError) {
            guard descriptors.isEmpty else { throw .wrongDescriptorCount(request: name, got: descriptors.count, expected: 0) }
        }
        func u64() -> UInt64 { payload.loadUnaligned(as: UInt64.self) }
        func state() -> tw_vu_vring_state { payload.loadUnaligned(as: tw_vu_vring_state.self) }
        /// KICK/CALL/ERR: a u64 with the index in bits 0-7 and "no fd" in bit 8.
        func vringFile() throws(ProtocolError) -> (UInt32, Descriptor?) {
            try expectSize(8)
            let value = u64()
            let index = UInt32(value & VhostUserLimits.vringIndexMask)
            if value & VhostUserLimits.vringNoFDMask != 0 {
                try expectNoDescriptors()
                return (index, nil)
            }
            guard descriptors.count == 1 else { throw .wrongDescriptorCount(request: name, got: descriptors.count, expected: 1) }
            return (index, descriptors[0])
        }

        switch request {
        case .getFeatures, .getProtocolFeatures, .getQueueNum, .getMaxMemSlots, .setOwner, .resetOwner, .resetDevice:
            // Some frontends send a zero u64 with these; accept 0 or 8 bytes.
            guard size == 0 || size == 8 else { throw .wrongPayloadSize(request: name, size: size, expected: "0 or 8") }
            try expectNoDescriptors()
            switch request {
            case .getFeatures: return .getFeatures
            case .getProtocolFeatures: return .getProtocolFeatures
            case .getQueueNum: return .getQueueNum
            case .getMaxMemSlots: return .getMaxMemSlots
            case .setOwner: return .setOwner
            case .resetOwner: return .resetOwner
            default: return .resetDevice
            }
        case .setFeatures, .setProtocolFeatures, .netSetMTU:
            try expectSize(8)
            try expectNoDescriptors()
            switch request {
            case .setFeatures: return .setFeatures(u64())
            case .setProtocolFeatures: return .setProtocolFeatures(u64())
            default: return .netSetMTU(u64())
            }
        case .setMemTable:
            guard size >= 8 else { throw .wrongPayloadSize(request: name, size: size, expected: "at least 8") }
            let count = Int(payload.loadUnaligned(as: UInt32.self))
            guard count <= VhostUserLimits.maxMemTableRegions else { throw .tooManyRegions(count) }
            // QEMU sends the full 8-slot table; others send only the used entries.
            let used = UInt32(8 + 32 * count)
            let full = UInt32(8 + 32 * VhostUserLimits.maxMemTableRegions)
            guard size == used || size == full else {
                throw .wrongPayloadSize(request: name, size: size, expected: "\(used) or \(full) for \(count) regions")
            }
            guard descriptors.count == count else { throw .wrongDescriptorCount(request: name, got: descriptors.count, expected: count) }
            let regions = (0..<count).map { i in
                RegionDescription(raw: payload.loadUnaligned(fromByteOffset: 8 + 32 * i, as: tw_vu_region.self))
            }
            return .setMemTable(regions, descriptors)
        case .addMemReg, .remMemReg:
            try expectSize(40)
            let region = RegionDescription(raw: payload.loadUnaligned(fromByteOffset: 8, as: tw_vu_region.self))
            if request == .remMemReg {
                // QEMU attaches the region's fd to REM_MEM_REG too; it is not needed and is closed.
                guard descriptors.count <= 1 else { throw .wrongDescriptorCount(request: name, got: descriptors.count, expected: 1) }
                return .remMemReg(region)
            }
            guard descriptors.count == 1 else { throw .wrongDescriptorCount(request: name, got: descriptors.count, expected: 1) }
            return .addMemReg(region, descriptors[0])
        case .setVringNum, .setVringBase, .getVringBase, .setVringEnable:
            try expectSize(8)
            try expectNoDescriptors()
            let s = state()
            switch request {
            case .setVringNum: return .setVringNum(index: s.index, num: s.num)
            case .setVringBase: return .setVringBase(index: s.index, num: s.num)
            case .getVringBase: return .getVringBase(index: s.index)
            default: return .setVringEnable(index: s.index, enable: s.num != 0)
            }
        case .setVringAddr:
            try expectSize(40)
            try expectNoDescriptors()
            let a = payload.loadUnaligned(as: tw_vu_vring_addr.self)
            return .setVringAddr(VringAddress(index: a.index, flags: a.flags, descriptors: a.descriptor, used: a.used,
                                              avail: a.available, log: a.log))
        case .setVringKick:
            let (index, fd) = try vringFile()
            return .setVringKick(index: index, fd)
        case .setVringCall:
            let (index, fd) = try vringFile()
            return .setVringCall(index: index, fd)
        case .setVringErr:
            let (index, fd) = try vringFile()
            return .setVringErr(index: index, fd)
        case .sendRARP:
            try expectSize(8)
            try expectNoDescriptors()
            return .sendRARP(mac: Array(payload.prefix(6)))
        case .getConfig, .setConfig:
            guard size >= 12 else { throw .wrongPayloadSize(request: name, size: size, expected: "at least 12") }
            try expectNoDescriptors()
            let c = payload.loadUnaligned(as: tw_vu_config_header.self)
            guard c.size <= VhostUserLimits.maxConfigSize, c.offset <= VhostUserLimits.maxConfigSize - c.size else {
                throw .badConfigRange(offset: c.offset, size: c.size)
            }
            guard size == 12 + c.size else {
                throw .wrongPayloadSize(request: name, size: size, expected: "\(12 + c.size) (12 + config size)")
            }
            if request == .getConfig { return .getConfig(offset: c.offset, size: c.size, flags: c.flags) }
            return .setConfig(offset: c.offset, flags: c.flags, data: Array(payload[12..<Int(size)]))
        case .setBackendReqFD:
            guard descriptors.count == 1 else { throw .wrongDescriptorCount(request: name, got: descriptors.count, expected: 1) }
            return .setBackendReqFD(descriptors[0])
        case .setLogBase:
            // VhostUserLog: mmap_size, mmap_offset; the memfd comes with it (PROTOCOL_F_LOG_SHMFD).
            try expectSize(VhostUserLimits.logBasePayloadSize)
            guard descriptors.count == 1 else { throw .wrongDescriptorCount(request: name, got: descriptors.count, expected: 1) }
            // SAFETY: expectSize(16) above, so both u64s lie inside the payload.
            return .setLogBase(size: u64(), offset: payload.loadUnaligned(fromByteOffset: 8, as: UInt64.self), descriptors[0])
        case .setLogFD:
            guard size == 0 || size == 8 else { throw .wrongPayloadSize(request: name, size: size, expected: "0 or 8") }
            guard descriptors.count == 1 else { throw .wrongDescriptorCount(request: name, got: descriptors.count, expected: 1) }
            return .setLogFD(descriptors[0])
        default:
            return .unsupported(request)
        }
    }
}

/// Builds messages on the wire: replies from the backend, requests from a frontend.
public enum MessageEncoder {
    public static func encode(request: UInt32, flags: UInt32, payload: [UInt8]) -> [UInt8] {
        var bytes = [UInt8]()
        bytes.reserveCapacity(12 + payload.count)
        withUnsafeBytes(of: tw_vu_header(request: request, flags: flags, size: UInt32(payload.count))) { bytes += $0 }
        bytes += payload
        return bytes
    }

    public static func reply(to request: UInt32, payload: [UInt8]) -> [UInt8] {
        encode(request: request, flags: HeaderFlags.version | HeaderFlags.reply, payload: payload)
    }

    public static func bytes<T>(of value: T) -> [UInt8] {
        withUnsafeBytes(of: value) { Array($0) }
    }

    public static func u64(_ value: UInt64) -> [UInt8] { bytes(of: value) }

    public static func vringState(index: UInt32, num: UInt32) -> [UInt8] {
        bytes(of: tw_vu_vring_state(index: index, num: num))
    }

    public static func vringAddress(_ a: VringAddress) -> [UInt8] {
        bytes(of: tw_vu_vring_addr(index: a.index, flags: a.flags, descriptor: a.descriptors, used: a.used,
                                    available: a.avail, log: a.log))
    }

    public static func memTable(_ regions: [RegionDescription]) -> [UInt8] {
        var payload = bytes(of: UInt32(regions.count)) + bytes(of: UInt32(0))
        for region in regions { payload += bytes(of: region.raw) }
        return payload
    }

    public static func logBase(size: UInt64, offset: UInt64) -> [UInt8] { u64(size) + u64(offset) }

    public static func singleRegion(_ region: RegionDescription) -> [UInt8] {
        u64(0) + bytes(of: region.raw)
    }

    public static func config(offset: UInt32, size: UInt32, flags: UInt32, data: [UInt8]) -> [UInt8] {
        bytes(of: tw_vu_config_header(offset: offset, size: size, flags: flags)) + data
    }
}
