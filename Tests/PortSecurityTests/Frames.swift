import Glibc
import PortSecurity

/// Wire layout of the headers the tests build: written down here from the RFCs, apart from
/// the filter's own constants, so that a wrong offset in the filter cannot agree with itself.
enum Wire {
    static let macLength = 6
    static let ethernetHeader = 14
    /// Destination and source MAC: where the EtherType (or the first VLAN tag) starts.
    static let ethernetAddresses = 12
    static let vlanTag = 4
    static let ipv4Header = 20
    static let ipv6Header = 40
    static let udpHeader = 8
    /// Source and destination port: what the IPv4 checks read of UDP.
    static let udpPorts = 4
    /// The source port: what the IPv6 checks read of UDP.
    static let udpSourcePort = 2
    static let tcpHeader = 20
    static let arpBody = 28
    /// An ICMPv6 message's type byte.
    static let icmpType = 1
    /// Type, code, checksum and 4 reserved/flag bytes.
    static let icmpHeader = 8
    static let ndTarget = 16
    /// A source/target link-layer address option for Ethernet: type, length 1 (unit), MAC.
    static let linkLayerOption = 8
    static let optionUnit = 8
    static let extensionUnit = 8
    static let fragmentHeader = 8
    static let minimumFrame = 60

    static let ipv4Version: UInt8 = 0x45
    static let ipv6Version: UInt8 = 0x60
    static let hopLimit: UInt8 = 64
    static let ndHopLimit: UInt8 = 255
}

enum Protocol {
    static let tcp: UInt8 = 6, udp: UInt8 = 17, icmpv6: UInt8 = 58
    static let hopByHop: UInt8 = 0, routing: UInt8 = 43, fragment: UInt8 = 44, destinationOptions: UInt8 = 60
    static let authentication: UInt8 = 51, noNextHeader: UInt8 = 59

    static let etherIPv4: UInt16 = 0x0800, etherARP: UInt16 = 0x0806, etherRARP: UInt16 = 0x8035
    static let etherIPv6: UInt16 = 0x86DD, etherVLAN: UInt16 = 0x8100, etherQinQ: UInt16 = 0x88A8
    static let etherLLDP: UInt16 = 0x88CC

    static let arpRequest: UInt16 = 1, arpReply: UInt16 = 2, rarpRequest: UInt16 = 3
    static let arpEthernet: UInt16 = 1

    static let dhcpServer: UInt16 = 67, dhcpClient: UInt16 = 68
    static let dhcpv6Client: UInt16 = 546, dhcpv6Server: UInt16 = 547

    static let echoRequest: UInt8 = 128, mldv2Report: UInt8 = 143
    static let routerSolicitation: UInt8 = 133, routerAdvertisement: UInt8 = 134
    static let neighborSolicitation: UInt8 = 135, neighborAdvertisement: UInt8 = 136, redirect: UInt8 = 137
    static let sourceLinkLayer: UInt8 = 1, targetLinkLayer: UInt8 = 2, nonceOption: UInt8 = 14
}

typealias MAC = [UInt8]

func ipv4(_ text: String) -> UInt32 {
    var raw = in_addr()
    precondition(inet_pton(AF_INET, text, &raw) == 1, "bad IPv4 literal \(text)")
    return UInt32(bigEndian: raw.s_addr)
}

func ipv6(_ text: String) -> [UInt8] {
    var raw = in6_addr()
    precondition(inet_pton(AF_INET6, text, &raw) == 1, "bad IPv6 literal \(text)")
    return withUnsafeBytes(of: &raw) { Array($0) }
}

/// The VM under test, its neighbours and the addresses the frames use.
enum Fixture {
    static let vmMAC: MAC = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56]
    static let otherMAC: MAC = [0x52, 0x54, 0x00, 0xaa, 0xbb, 0xcc]
    static let broadcastMAC: MAC = Array(repeating: 0xff, count: Wire.macLength)
    static let ipv4MulticastMAC: MAC = [0x01, 0x00, 0x5e, 0x00, 0x00, 0x01]
    static let ipv6MulticastMAC: MAC = [0x33, 0x33, 0x00, 0x00, 0x00, 0x01]
    /// fe80::/64 with the EUI-64 of vmMAC: 52 -> 50 (universal/local bit), ff:fe inserted.
    static let vmLinkLocal = ipv6("fe80::5054:ff:fe12:3456")
    static let otherLinkLocal = ipv6("fe80::5054:ff:feaa:bbcc")
    static let vmIPv4 = ipv4("10.0.0.5")
    static let vmSubnetHost = ipv4("192.168.7.200")
    static let otherIPv4 = ipv4("10.0.0.6")
    static let gatewayIPv4 = ipv4("10.0.0.1")
    static let vmIPv6 = ipv6("2001:db8::5")
    static let otherIPv6 = ipv6("2001:db8::6")
    static let unspecifiedIPv6 = ipv6("::")
    static let allNodes = ipv6("ff02::1")
    static let allRouters = ipv6("ff02::2")
    static let mldv2Routers = ipv6("ff02::16")
    static let solicitedNode = ipv6("ff02::1:ff00:5")

    static func policy(allowRouter: Bool = false) -> PortPolicy {
        PortPolicy(mac: vmMAC,
                   allowedIPs: [.v4(address: vmIPv4, prefixLength: IPNetwork.ipv4Bits),
                                .v4(address: ipv4("192.168.7.0"), prefixLength: 24),
                                try! IPNetwork(parsing: "2001:db8::5")],
                   allowRouter: allowRouter)
    }
}

/// Big-endian byte appending: the builder's one primitive.
struct Bytes {
    var array: [UInt8] = []
    var count: Int { array.count }
    mutating func u8(_ v: UInt8) { array.append(v) }
    mutating func u16(_ v: UInt16) { array += [UInt8(v >> 8), UInt8(truncatingIfNeeded: v)] }
    mutating func u32(_ v: UInt32) { u16(UInt16(v >> 16)); u16(UInt16(truncatingIfNeeded: v)) }
    mutating func append(_ bytes: [UInt8]) { array += bytes }
    mutating func zeros(_ n: Int) { array += [UInt8](repeating: 0, count: n) }
}

/// Frames as a guest would send them. Every function returns the whole frame (Ethernet
/// included) or an L3/L4 part that `ethernet` wraps.
enum Build {
    static func ethernet(source: MAC = Fixture.vmMAC, destination: MAC = Fixture.otherMAC,
                         tags: [UInt16] = [], type: UInt16, payload: [UInt8]) -> [UInt8] {
        var b = Bytes()
        b.append(destination)
        b.append(source)
        for (index, tpid) in tags.enumerated() {
            b.u16(tpid)
            b.u16(UInt16(100 + index)) // the VLAN id: any
        }
        b.u16(type)
        b.append(payload)
        return b.array
    }

    static func ipv4(source: UInt32, destination: UInt32 = Fixture.gatewayIPv4, protocol proto: UInt8,
                     fragmentOffsetUnits: UInt16 = 0, moreFragments: Bool = false, optionWords: Int = 0,
                     payload: [UInt8]) -> [UInt8] {
        var b = Bytes()
        let headerLength = Wire.ipv4Header + 4 * optionWords
        b.u8(Wire.ipv4Version + UInt8(optionWords))
        b.u8(0)
        b.u16(UInt16(headerLength + payload.count))
        b.u16(0x1234) // identification
        b.u16((moreFragments ? 0x2000 : 0) | fragmentOffsetUnits)
        b.u8(Wire.hopLimit)
        b.u8(proto)
        b.u16(0) // checksum: the filter does not read it
        b.u32(source)
        b.u32(destination)
        b.zeros(4 * optionWords) // options: end-of-list padding
        b.append(payload)
        return b.array
    }

    static func udp(source: UInt16, destination: UInt16, payloadBytes: Int = 12) -> [UInt8] {
        var b = Bytes()
        b.u16(source)
        b.u16(destination)
        b.u16(UInt16(Wire.udpHeader + payloadBytes))
        b.u16(0)
        b.zeros(payloadBytes)
        return b.array
    }

    static func tcp(payloadBytes: Int = 0) -> [UInt8] {
        var b = Bytes()
        b.u16(40000)
        b.u16(80)
        b.zeros(Wire.tcpHeader - 4 + payloadBytes)
        return b.array
    }

    static func arp(operation: UInt16 = Protocol.arpRequest, senderMAC: MAC = Fixture.vmMAC, senderIP: UInt32 = Fixture.vmIPv4,
                    targetIP: UInt32 = Fixture.gatewayIPv4) -> [UInt8] {
        var b = Bytes()
        b.u16(Protocol.arpEthernet)
        b.u16(Protocol.etherIPv4)
        b.u8(UInt8(Wire.macLength))
        b.u8(4)
        b.u16(operation)
        b.append(senderMAC)
        b.u32(senderIP)
        b.zeros(Wire.macLength)
        b.u32(targetIP)
        return b.array
    }

    static func ipv6(source: [UInt8], destination: [UInt8] = Fixture.allNodes, next: UInt8, payload: [UInt8]) -> [UInt8] {
        var b = Bytes()
        b.u32(UInt32(Wire.ipv6Version) << 24)
        b.u16(UInt16(payload.count))
        b.u8(next)
        b.u8(Wire.ndHopLimit)
        b.append(source)
        b.append(destination)
        b.append(payload)
        return b.array
    }

    /// Hop-by-hop, routing or destination options: next header, length in 8-byte units
    /// beyond the first, padding.
    static func optionsHeader(next: UInt8, extraUnits: UInt8 = 0, payload: [UInt8]) -> [UInt8] {
        var b = Bytes()
        b.u8(next)
        b.u8(extraUnits)
        b.zeros(Wire.extensionUnit * (Int(extraUnits) + 1) - 2) // PadN content: any
        b.append(payload)
        return b.array
    }

    static func fragment(next: UInt8, offsetUnits: UInt16 = 0, more: Bool = true, payload: [UInt8]) -> [UInt8] {
        var b = Bytes()
        b.u8(next)
        b.u8(0)
        b.u16(offsetUnits << 3 | (more ? 1 : 0))
        b.u32(0xfeed_f00d) // identification
        b.append(payload)
        return b.array
    }

    /// Authentication header (RFC 4302): its length counts 4-byte words minus 2.
    static func authentication(next: UInt8, payload: [UInt8]) -> [UInt8] {
        let words = 6 // 12 bytes of fixed fields plus a 12-byte ICV
        var b = Bytes()
        b.u8(next)
        b.u8(UInt8(words - 2))
        b.zeros(4 * words - 2)
        b.append(payload)
        return b.array
    }

    static func icmpv6(type: UInt8, body: [UInt8] = []) -> [UInt8] {
        var b = Bytes()
        b.u8(type)
        b.u8(0)
        b.u16(0)
        b.zeros(Wire.icmpHeader - 4)
        b.append(body)
        return b.array
    }

    static func linkLayerOption(_ type: UInt8, _ mac: MAC) -> [UInt8] {
        [type, UInt8(Wire.linkLayerOption / Wire.optionUnit)] + mac
    }

    /// An option the filter has no business with (a nonce, RFC 3971), `units` * 8 bytes.
    static func nonceOption(units: Int = 1) -> [UInt8] {
        [Protocol.nonceOption, UInt8(units)] + [UInt8](repeating: 0x5a, count: units * Wire.optionUnit - 2)
    }

    static func neighborSolicitation(target: [UInt8], options: [UInt8] = []) -> [UInt8] {
        icmpv6(type: Protocol.neighborSolicitation, body: target + options)
    }

    static func neighborAdvertisement(target: [UInt8], options: [UInt8] = []) -> [UInt8] {
        icmpv6(type: Protocol.neighborAdvertisement, body: target + options)
    }

    static func routerSolicitation(options: [UInt8] = []) -> [UInt8] {
        icmpv6(type: Protocol.routerSolicitation, body: options)
    }

    static func routerAdvertisement() -> [UInt8] {
        // Reachable time and retransmit timer, then a source link-layer option.
        icmpv6(type: Protocol.routerAdvertisement, body: [UInt8](repeating: 0, count: 8) + linkLayerOption(Protocol.sourceLinkLayer, Fixture.vmMAC))
    }

    static func redirect(target: [UInt8], destination: [UInt8]) -> [UInt8] {
        icmpv6(type: Protocol.redirect, body: target + destination)
    }

    /// Whole frames for the common shapes.
    static func v4Frame(source: UInt32 = Fixture.vmIPv4, mac: MAC = Fixture.vmMAC, tags: [UInt16] = [], _ l4: [UInt8],
                        protocol proto: UInt8, fragmentOffsetUnits: UInt16 = 0) -> [UInt8] {
        ethernet(source: mac, tags: tags, type: Protocol.etherIPv4,
                 payload: ipv4(source: source, protocol: proto, fragmentOffsetUnits: fragmentOffsetUnits, payload: l4))
    }

    static func v6Frame(source: [UInt8] = Fixture.vmIPv6, destination: [UInt8] = Fixture.allNodes, tags: [UInt16] = [],
                        next: UInt8, _ payload: [UInt8]) -> [UInt8] {
        ethernet(tags: tags, type: Protocol.etherIPv6, payload: ipv6(source: source, destination: destination, next: next, payload: payload))
    }
}

extension PortFilter {
    /// `checkTransmit` as the datapath calls it: the first `inspected` bytes of `frame`
    /// (at most `inspectedBytes`), copied into a buffer of exactly that size so that a read
    /// past them is ASan's and the test's to see, and the frame's whole length.
    func transmit(_ frame: [UInt8], inspected: Int? = nil, frameLength: Int? = nil) -> PortViolation? {
        let length = frameLength ?? frame.count
        let shown = min(inspected ?? frame.count, frame.count, PortFilter.inspectedBytes)
        let copy = UnsafeMutableRawBufferPointer.allocate(byteCount: shown, alignment: 1)
        defer { copy.deallocate() }
        // SAFETY: copy holds exactly `shown` bytes and frame has at least that many.
        frame.withUnsafeBytes { copy.copyMemory(from: UnsafeRawBufferPointer(rebasing: $0.prefix(shown))) }
        return checkTransmit(UnsafeRawBufferPointer(copy), frameLength: length)
    }

    func receive(_ frame: [UInt8]) -> PortViolation? {
        frame.withUnsafeBytes { checkReceive($0) }
    }
}
