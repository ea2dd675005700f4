import Glibc
import CTapwire

/// The rtnetlink numbers tapwire uses, each named once from the kernel's UAPI headers
/// (Sources/CTapwire/include/netlink_shim.h includes them).
public enum RouteNetlink {
    // Message types (linux/rtnetlink.h).
    public static let newLink = UInt16(RTM_NEWLINK)
    public static let getLink = UInt16(RTM_GETLINK)
    public static let setLink = UInt16(RTM_SETLINK)
    public static let deleteLink = UInt16(RTM_DELLINK)
    public static let newNeighbour = UInt16(RTM_NEWNEIGH)

    // Request flags (linux/netlink.h).
    public static let create = UInt16(NLM_F_CREATE)
    public static let replace = UInt16(NLM_F_REPLACE)

    // Address families of the family header (ifi_family, ndm_family).
    public static let familyUnspecified = UInt8(AF_UNSPEC)
    public static let familyBridge = UInt8(AF_BRIDGE)

    // struct ifinfomsg attributes (linux/if_link.h).
    public static let interfaceName = UInt16(IFLA_IFNAME)
    public static let master = UInt16(IFLA_MASTER)
    public static let protocolInfo = UInt16(IFLA_PROTINFO)
    public static let linkInfo = UInt16(IFLA_LINKINFO)
    public static let afSpec = UInt16(IFLA_AF_SPEC)
    // Inside IFLA_LINKINFO.
    public static let infoKind = UInt16(IFLA_INFO_KIND)
    public static let infoData = UInt16(IFLA_INFO_DATA)
    // Inside IFLA_INFO_DATA of kind "bridge" and "tun".
    public static let bridgeVLANFiltering = UInt16(IFLA_BR_VLAN_FILTERING)
    public static let tunPersistent = UInt16(IFLA_TUN_PERSIST)
    // Inside IFLA_PROTINFO of a bridge port (family AF_BRIDGE).
    public static let portLearning = UInt16(IFLA_BRPORT_LEARNING)
    public static let portUnicastFlood = UInt16(IFLA_BRPORT_UNICAST_FLOOD)
    // Inside IFLA_AF_SPEC of a bridge port (linux/if_bridge.h): struct bridge_vlan_info.
    public static let bridgeVLANInfo = UInt16(IFLA_BRIDGE_VLAN_INFO)
    public static let vlanPVID = UInt16(BRIDGE_VLAN_INFO_PVID)
    public static let vlanUntagged = UInt16(BRIDGE_VLAN_INFO_UNTAGGED)
    public static let vlanRangeBegin = UInt16(BRIDGE_VLAN_INFO_RANGE_BEGIN)
    public static let vlanRangeEnd = UInt16(BRIDGE_VLAN_INFO_RANGE_END)

    // struct ndmsg attributes and values (linux/neighbour.h).
    public static let neighbourLinkAddress = UInt16(NDA_LLADDR)
    public static let neighbourVLAN = UInt16(NDA_VLAN)
    public static let neighbourNoARP = UInt16(NUD_NOARP)
    public static let neighbourOnMaster = UInt8(NTF_MASTER)

    /// The family header of link messages.
    public static func interfaceHeader(family: UInt8 = familyUnspecified, index: Int32 = 0) -> ifinfomsg {
        var header = ifinfomsg()
        header.ifi_family = family
        header.ifi_index = index
        return header
    }

    /// The family header of neighbour (FDB) messages.
    public static func neighbourHeader(family: UInt8, index: Int32, state: UInt16, flags: UInt8) -> ndmsg {
        var header = ndmsg()
        header.ndm_family = family
        header.ndm_ifindex = index
        header.ndm_state = state
        header.ndm_flags = flags
        return header
    }
}

/// Rounds up to the 4-byte boundary netlink messages and attributes start on (NLMSG_ALIGN,
/// NLA_ALIGN; function-like macros Swift cannot import).
@inline(__always)
func netlinkAligned(_ length: Int) -> Int {
    let to = Int(TW_NETLINK_ALIGNTO)
    return (length + to - 1) & ~(to - 1)
}

private let messageHeaderSize = MemoryLayout<nlmsghdr>.size
private let attributeHeaderSize = MemoryLayout<nlattr>.size

/// One netlink request being built: nlmsghdr, the family header (ifinfomsg, ndmsg, ...), then
/// attributes, nested ones too, in host byte order as the kernel wants them. The header's
/// length, sequence number and NLM_F_REQUEST|NLM_F_ACK are filled in by `NetlinkSocket`.
public struct NetlinkMessage {
    public private(set) var bytes: [UInt8]

    public init<FamilyHeader: BitwiseCopyable>(type: UInt16, flags: UInt16 = 0, header: FamilyHeader) {
        var message = nlmsghdr()
        message.nlmsg_type = type
        message.nlmsg_flags = flags
        bytes = []
        bytes.reserveCapacity(256)
        append(raw: message)
        append(raw: header)
    }

    /// The bytes of a plain value (a C struct, an integer), then padding to the alignment.
    private mutating func append<T: BitwiseCopyable>(raw value: T) {
        withUnsafeBytes(of: value) { bytes.append(contentsOf: $0) }
        pad()
    }

    private mutating func pad() {
        bytes.append(contentsOf: repeatElement(0, count: netlinkAligned(bytes.count) - bytes.count))
    }

    /// An attribute whose payload is `payload`.
    public mutating func append(_ type: UInt16, bytes payload: some Collection<UInt8>) {
        var attribute = nlattr()
        attribute.nla_len = UInt16(attributeHeaderSize + payload.count)
        attribute.nla_type = type
        withUnsafeBytes(of: attribute) { bytes.append(contentsOf: $0) }
        bytes.append(contentsOf: payload)
        pad()
    }

    /// An attribute holding one integer or C struct (u8, u16, u32, bridge_vlan_info).
    public mutating func append<T: BitwiseCopyable>(_ type: UInt16, value: T) {
        withUnsafeBytes(of: value) { append(type, bytes: $0) }
    }

    /// A NUL-terminated string attribute (IFLA_IFNAME, IFLA_INFO_KIND).
    public mutating func append(_ type: UInt16, string: String) {
        append(type, bytes: Array(string.utf8) + [0])
    }

    /// A nested attribute (NLA_F_NESTED set, as iproute2 does; the kernel masks it off when it
    /// matches types and requires it for a bridge port's IFLA_PROTINFO) holding what `body`
    /// appends.
    public mutating func nest(_ type: UInt16, _ body: (inout NetlinkMessage) -> Void) {
        let start = bytes.count
        append(type | UInt16(NLA_F_NESTED), bytes: EmptyCollection())
        body(&self)
        let length = UInt16(bytes.count - start)
        bytes.withUnsafeMutableBytes { raw in
            // SAFETY: an nlattr was appended at `start` above, so its first field, the u16
            // nla_len, lies inside `bytes`.
            raw.storeBytes(of: length, toByteOffset: start, as: UInt16.self)
        }
    }

    /// The finished message with its length, flags and sequence number in its header.
    fileprivate func finished(sequence: UInt32, extraFlags: UInt16) -> [UInt8] {
        var out = bytes
        out.withUnsafeMutableBytes { raw in
            // SAFETY: `init` appended a whole nlmsghdr at offset 0, so `raw` holds at least
            // messageHeaderSize bytes for the load and the copy back.
            var header = raw.loadUnaligned(as: nlmsghdr.self)
            header.nlmsg_len = UInt32(raw.count)
            header.nlmsg_flags |= extraFlags
            header.nlmsg_seq = sequence
            withUnsafeBytes(of: header) { raw.copyMemory(from: $0) }
        }
        return out
    }
}

/// The attributes of one netlink message or nested attribute, parsed from a copy of its bytes.
/// Every length is checked against what arrived; an attribute that claims more is ignored with
/// everything after it.
public struct NetlinkAttributes {
    private let bytes: [UInt8]
    /// Payload range of each attribute type (the last one wins, as in the kernel's nla_parse).
    private var payloads: [UInt16: Range<Int>] = [:]

    init(_ bytes: some Collection<UInt8>) {
        self.bytes = Array(bytes)
        var offset = 0
        while offset + attributeHeaderSize <= self.bytes.count {
            let header = self.bytes.withUnsafeBytes { raw in
                // SAFETY: offset + attributeHeaderSize <= count (the loop condition).
                raw.loadUnaligned(fromByteOffset: offset, as: nlattr.self)
            }
            let length = Int(header.nla_len)
            guard length >= attributeHeaderSize, offset + length <= self.bytes.count else { break }
            payloads[header.nla_type & UInt16(TW_NLA_TYPE_MASK)] = (offset + attributeHeaderSize)..<(offset + length)
            offset += netlinkAligned(length)
        }
    }

    public func payload(_ type: UInt16) -> ArraySlice<UInt8>? {
        payloads[type].map { bytes[$0] }
    }

    public func nested(_ type: UInt16) -> NetlinkAttributes? {
        payload(type).map(NetlinkAttributes.init)
    }

    /// A NUL-terminated string attribute, without its NUL.
    public func string(_ type: UInt16) -> String? {
        payload(type).map { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
    }

    /// An integer attribute of exactly T's size, host byte order.
    public func integer<T: FixedWidthInteger & BitwiseCopyable>(_ type: UInt16, as _: T.Type = T.self) -> T? {
        guard let range = payloads[type], range.count == MemoryLayout<T>.size else { return nil }
        return bytes.withUnsafeBytes { raw in
            // SAFETY: `range` lies inside `bytes` (checked in init) and holds exactly T's size.
            raw.loadUnaligned(fromByteOffset: range.lowerBound, as: T.self)
        }
    }
}

/// One message the kernel answered with (not the final ack): its type and what follows the
/// nlmsghdr.
public struct NetlinkReply {
    public let type: UInt16
    public let payload: [UInt8]

    /// The family header (ifinfomsg, ndmsg) at the start of the payload, if the payload holds one.
    public func header<FamilyHeader: BitwiseCopyable>(_: FamilyHeader.Type) -> FamilyHeader? {
        guard payload.count >= MemoryLayout<FamilyHeader>.size else { return nil }
        return payload.withUnsafeBytes { raw in
            // SAFETY: the payload holds at least FamilyHeader's size (checked above).
            raw.loadUnaligned(as: FamilyHeader.self)
        }
    }

    /// The attributes after a family header of `FamilyHeader`'s size, aligned.
    public func attributes<FamilyHeader: BitwiseCopyable>(after _: FamilyHeader.Type) -> NetlinkAttributes {
        NetlinkAttributes(payload.dropFirst(netlinkAligned(MemoryLayout<FamilyHeader>.size)))
    }
}

/// A NETLINK_ROUTE socket for a few configuration requests at start-up. Each request asks for
/// an ack (NLM_F_ACK) and waits for it, so a failure is reported by the request that caused
/// it, with the kernel's extended-ack message when it sends one. Closed when released: the
/// sandbox installed after start-up allows no netlink.
public final class NetlinkSocket {
    private let descriptor: Descriptor
    private var sequence: UInt32 = 0
    private var receiveBuffer = [UInt8](repeating: 0, count: 32 * 1024)

    public init() throws(SystemError) {
        descriptor = Descriptor(taking: try retryingInterrupts("socket(AF_NETLINK, NETLINK_ROUTE)") {
            socket(AF_NETLINK, Int32(SOCK_RAW.rawValue) | Int32(SOCK_CLOEXEC.rawValue), NETLINK_ROUTE)
        })
        // Extended acks: the kernel says in words what it refused (older kernels lack it).
        var on: Int32 = 1
        _ = setsockopt(descriptor.raw, SOL_NETLINK, NETLINK_EXT_ACK, &on, socklen_t(MemoryLayout<Int32>.size))
        // The kernel answers at once; a wait this long means something is wrong, not slow.
        try UnixSocket.setReceiveTimeout(descriptor.raw, milliseconds: 5000)
    }

    public func close() { descriptor.close() }

    /// Sends `message` and returns the kernel's answers before its ack. `what` names the
    /// request in the error, e.g. "enslave t0 to br0 (RTM_SETLINK IFLA_MASTER)".
    @discardableResult
    public func request(_ message: NetlinkMessage, _ what: String) throws(SystemError) -> [NetlinkReply] {
        sequence &+= 1
        let bytes = message.finished(sequence: sequence, extraFlags: UInt16(NLM_F_REQUEST | NLM_F_ACK))
        var kernel = sockaddr_nl()
        kernel.nl_family = sa_family_t(AF_NETLINK)
        let sent = try retryingInterrupts("sendto netlink: \(what)") {
            bytes.withUnsafeBytes { raw in
                withUnsafePointer(to: &kernel) { address in
                    address.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                        sendto(descriptor.raw, raw.baseAddress, raw.count, 0, $0, socklen_t(MemoryLayout<sockaddr_nl>.size))
                    }
                }
            }
        }
        guard sent == bytes.count else { throw SystemError("sendto netlink: \(what) (short send)", errno: EMSGSIZE) }
        var replies = [NetlinkReply]()
        while true {
            var from = sockaddr_nl()
            var fromLength = socklen_t(MemoryLayout<sockaddr_nl>.size)
            let count = try retryingInterrupts("recvfrom netlink: \(what)") {
                receiveBuffer.withUnsafeMutableBytes { raw in
                    withUnsafeMutablePointer(to: &from) { address in
                        address.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                            recvfrom(descriptor.raw, raw.baseAddress, raw.count, Int32(MSG_TRUNC), $0, &fromLength)
                        }
                    }
                }
            }
            // MSG_TRUNC: `count` is the datagram's real size, which may exceed the buffer.
            guard count <= receiveBuffer.count else { throw SystemError("recvfrom netlink: \(what) (answer larger than \(receiveBuffer.count) bytes)", errno: EMSGSIZE) }
            guard from.nl_pid == 0 else { continue } // only the kernel answers requests
            var offset = 0
            while offset + messageHeaderSize <= count {
                let header = receiveBuffer.withUnsafeBytes { raw in
                    // SAFETY: offset + messageHeaderSize <= count <= the buffer's size.
                    raw.loadUnaligned(fromByteOffset: offset, as: nlmsghdr.self)
                }
                let length = Int(header.nlmsg_len)
                guard length >= messageHeaderSize, offset + length <= count else {
                    throw .malformedNetlinkAnswer(what)
                }
                defer { offset += netlinkAligned(length) }
                guard header.nlmsg_seq == sequence else { continue } // a late answer to an earlier request
                let body = receiveBuffer[(offset + messageHeaderSize)..<(offset + length)]
                switch Int32(header.nlmsg_type) {
                case NLMSG_ERROR:
                    let error = Self.errorCode(body)
                    if error == 0 { return replies } // the ack
                    let detail = Self.extendedAckMessage(body, flags: header.nlmsg_flags).map { " [kernel: \($0)]" } ?? ""
                    throw SystemError("\(what)\(detail)", errno: -error)
                case NLMSG_DONE:
                    return replies // the end of a dump, which the kernel does not also ack
                case NLMSG_NOOP:
                    continue
                default:
                    replies.append(NetlinkReply(type: header.nlmsg_type, payload: Array(body)))
                }
            }
        }
    }

    /// The negative errno (0 for an ack) at the start of an NLMSG_ERROR body.
    private static func errorCode(_ body: ArraySlice<UInt8>) -> Int32 {
        guard body.count >= MemoryLayout<Int32>.size else { return -EBADMSG }
        return body.withUnsafeBytes { raw in
            // SAFETY: the body holds at least the 4 bytes of nlmsgerr.error (checked above).
            raw.loadUnaligned(as: Int32.self)
        }
    }

    /// NLMSGERR_ATTR_MSG of an extended ack: after struct nlmsgerr and, unless NLM_F_CAPPED,
    /// the rest of our request echoed back.
    private static func extendedAckMessage(_ body: ArraySlice<UInt8>, flags: UInt16) -> String? {
        guard flags & UInt16(NLM_F_ACK_TLVS) != 0, body.count >= MemoryLayout<nlmsgerr>.size else { return nil }
        var start = MemoryLayout<nlmsgerr>.size
        if flags & UInt16(NLM_F_CAPPED) == 0 {
            let echoed = body.withUnsafeBytes { raw in
                // SAFETY: body.count >= sizeof(nlmsgerr), whose last field is the echoed nlmsghdr.
                raw.loadUnaligned(fromByteOffset: MemoryLayout<Int32>.size, as: nlmsghdr.self)
            }
            start = MemoryLayout<Int32>.size + netlinkAligned(Int(echoed.nlmsg_len))
        }
        guard start <= body.count else { return nil }
        return NetlinkAttributes(body.dropFirst(start)).string(UInt16(NLMSGERR_ATTR_MSG.rawValue))
    }
}

extension SystemError {
    /// What the kernel answers a request naming an interface that does not exist.
    public var isNoSuchDevice: Bool { errno == ENODEV }

    /// What the kernel answers a request for something it was built without.
    public var isNotSupported: Bool { errno == EOPNOTSUPP }

    /// A netlink answer that lacks what the request must produce.
    public static func malformedNetlinkAnswer(_ what: String) -> SystemError {
        SystemError("\(what) (malformed answer)", errno: EBADMSG)
    }
}
