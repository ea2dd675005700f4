import Testing
import PortSecurity

/// One crafted frame, what the filter must say of it, and how many of its bytes that verdict
/// depends on: every field the rules read lies in the first `needed` bytes.
struct Sample: Sendable, CustomTestStringConvertible {
    let name: String
    let frame: [UInt8]
    let verdict: PortViolation?
    let needed: Int
    var allowRouter = false
    /// Where the fixed headers end and ND options begin (nil: the frame has none). A frame cut
    /// exactly between two options is a shorter valid frame, not a truncated one.
    var optionsStart: Int? = nil

    var testDescription: String { "\(name) -> \(verdict?.label ?? "pass")" }
    var filter: PortFilter { PortFilter(Fixture.policy(allowRouter: allowRouter)) }
}

private let eth = Wire.ethernetHeader
private let v4L4 = eth + Wire.ipv4Header
private let v6L4 = eth + Wire.ipv6Header
private let arpEnd = eth + Wire.arpBody
private let ndOptions = v6L4 + Wire.icmpHeader + Wire.ndTarget
private let rsOptions = v6L4 + Wire.icmpHeader
private let ownSLLA = Build.linkLayerOption(Protocol.sourceLinkLayer, Fixture.vmMAC)
private let ownTLLA = Build.linkLayerOption(Protocol.targetLinkLayer, Fixture.vmMAC)
private let otherSLLA = Build.linkLayerOption(Protocol.sourceLinkLayer, Fixture.otherMAC)
private let otherTLLA = Build.linkLayerOption(Protocol.targetLinkLayer, Fixture.otherMAC)
/// `count` destination-options headers, the last followed by TCP.
private func stackedOptions(_ count: Int) -> [UInt8] {
    (1..<count).reduce(Build.optionsHeader(next: Protocol.tcp, payload: Build.tcp())) { chain, _ in
        Build.optionsHeader(next: Protocol.destinationOptions, payload: chain)
    }
}
private let qinq = [Protocol.etherQinQ, Protocol.etherVLAN]
private let dhcpv6Reply = Build.udp(source: Protocol.dhcpv6Server, destination: Protocol.dhcpv6Client)
private let dhcpOffer = Build.udp(source: Protocol.dhcpServer, destination: Protocol.dhcpClient)

/// Allowed traffic: each must pass, untagged or tagged.
let passing: [Sample] = [
    Sample(name: "IPv4 TCP from own address", frame: Build.v4Frame(Build.tcp(), protocol: Protocol.tcp), verdict: nil, needed: v4L4),
    Sample(name: "IPv4 UDP from own subnet", frame: Build.v4Frame(source: Fixture.vmSubnetHost, Build.udp(source: 5353, destination: 53), protocol: Protocol.udp),
           verdict: nil, needed: v4L4 + Wire.udpPorts),
    Sample(name: "IPv4 with options (IHL 7)",
           frame: Build.ethernet(type: Protocol.etherIPv4, payload: Build.ipv4(source: Fixture.vmIPv4, protocol: Protocol.udp, optionWords: 2,
                                                                             payload: Build.udp(source: 1000, destination: 2000))),
           verdict: nil, needed: v4L4 + 2 * 4 + Wire.udpPorts),
    Sample(name: "DHCP discover from 0.0.0.0",
           frame: Build.v4Frame(source: 0, Build.udp(source: Protocol.dhcpClient, destination: Protocol.dhcpServer), protocol: Protocol.udp),
           verdict: nil, needed: v4L4 + Wire.udpPorts),
    Sample(name: "ARP request", frame: Build.ethernet(type: Protocol.etherARP, payload: Build.arp()), verdict: nil, needed: arpEnd),
    Sample(name: "ARP probe (sender 0.0.0.0)", frame: Build.ethernet(type: Protocol.etherARP, payload: Build.arp(senderIP: 0, targetIP: Fixture.vmIPv4)),
           verdict: nil, needed: arpEnd),
    Sample(name: "gratuitous ARP reply", frame: Build.ethernet(destination: Fixture.broadcastMAC, type: Protocol.etherARP,
                                                               payload: Build.arp(operation: Protocol.arpReply, targetIP: Fixture.vmIPv4)),
           verdict: nil, needed: arpEnd),
    Sample(name: "RARP request", frame: Build.ethernet(type: Protocol.etherRARP, payload: Build.arp(operation: Protocol.rarpRequest, senderIP: 0)),
           verdict: nil, needed: arpEnd),
    Sample(name: "IPv6 TCP from own address", frame: Build.v6Frame(next: Protocol.tcp, Build.tcp()), verdict: nil, needed: v6L4),
    Sample(name: "IPv6 UDP from own address", frame: Build.v6Frame(next: Protocol.udp, Build.udp(source: 5000, destination: 53)),
           verdict: nil, needed: v6L4 + Wire.udpSourcePort),
    Sample(name: "ICMPv6 echo from the EUI-64 link-local",
           frame: Build.v6Frame(source: Fixture.vmLinkLocal, next: Protocol.icmpv6, Build.icmpv6(type: Protocol.echoRequest)),
           verdict: nil, needed: v6L4 + Wire.icmpType),
    Sample(name: "DHCPv6 solicit from the link-local",
           frame: Build.v6Frame(source: Fixture.vmLinkLocal, next: Protocol.udp, Build.udp(source: Protocol.dhcpv6Client, destination: Protocol.dhcpv6Server)),
           verdict: nil, needed: v6L4 + Wire.udpSourcePort),
    Sample(name: "DAD neighbour solicitation from ::",
           frame: Build.v6Frame(source: Fixture.unspecifiedIPv6, destination: Fixture.solicitedNode, next: Protocol.icmpv6,
                                Build.neighborSolicitation(target: Fixture.vmIPv6)),
           verdict: nil, needed: ndOptions, optionsStart: ndOptions),
    Sample(name: "MLDv2 report from :: behind hop-by-hop",
           frame: Build.v6Frame(source: Fixture.unspecifiedIPv6, destination: Fixture.mldv2Routers, next: Protocol.hopByHop,
                                Build.optionsHeader(next: Protocol.icmpv6, payload: Build.icmpv6(type: Protocol.mldv2Report))),
           verdict: nil, needed: v6L4 + Wire.extensionUnit + Wire.icmpType),
    Sample(name: "neighbour solicitation with own source link-layer option",
           frame: Build.v6Frame(source: Fixture.vmLinkLocal, destination: Fixture.solicitedNode, next: Protocol.icmpv6,
                                Build.neighborSolicitation(target: Fixture.otherIPv6, options: ownSLLA)),
           verdict: nil, needed: ndOptions + Wire.linkLayerOption, optionsStart: ndOptions),
    Sample(name: "neighbour advertisement of own address, own target link-layer option",
           frame: Build.v6Frame(next: Protocol.icmpv6, Build.neighborAdvertisement(target: Fixture.vmIPv6, options: ownTLLA)),
           verdict: nil, needed: ndOptions + Wire.linkLayerOption, optionsStart: ndOptions),
    Sample(name: "neighbour advertisement of the link-local, a nonce then own option",
           frame: Build.v6Frame(source: Fixture.vmLinkLocal, next: Protocol.icmpv6,
                                Build.neighborAdvertisement(target: Fixture.vmLinkLocal, options: Build.nonceOption(units: 2) + ownTLLA)),
           verdict: nil, needed: ndOptions + 2 * Wire.optionUnit + Wire.linkLayerOption, optionsStart: ndOptions),
    Sample(name: "router solicitation with own source link-layer option",
           frame: Build.v6Frame(source: Fixture.vmLinkLocal, destination: Fixture.allRouters, next: Protocol.icmpv6,
                                Build.routerSolicitation(options: ownSLLA)),
           verdict: nil, needed: rsOptions + Wire.linkLayerOption, optionsStart: rsOptions),
    Sample(name: "hop-by-hop + first fragment + UDP",
           frame: Build.v6Frame(next: Protocol.hopByHop, Build.optionsHeader(next: Protocol.fragment, payload:
               Build.fragment(next: Protocol.udp, payload: Build.udp(source: 4000, destination: 4001)))),
           verdict: nil, needed: v6L4 + Wire.extensionUnit + Wire.fragmentHeader + Wire.udpSourcePort),
    Sample(name: "routing + destination options (3 units) + TCP",
           frame: Build.v6Frame(next: Protocol.routing, Build.optionsHeader(next: Protocol.destinationOptions, payload:
               Build.optionsHeader(next: Protocol.tcp, extraUnits: 3, payload: Build.tcp()))),
           verdict: nil, needed: v6L4 + Wire.extensionUnit + 4 * Wire.extensionUnit),
    Sample(name: "eight stacked destination-options headers",
           frame: Build.v6Frame(next: Protocol.destinationOptions, stackedOptions(PortFilterTests.extensionHeaderLimit)),
           verdict: nil, needed: v6L4 + PortFilterTests.extensionHeaderLimit * Wire.extensionUnit),
    // A later fragment has no upper-layer header: its first bytes are data, here bytes that
    // would read as a DHCPv6 reply. Only the source is checked.
    Sample(name: "non-first IPv6 fragment whose data looks like DHCPv6 from 547",
           frame: Build.v6Frame(next: Protocol.fragment, Build.fragment(next: Protocol.udp, offsetUnits: 185, more: false, payload: dhcpv6Reply)),
           verdict: nil, needed: v6L4 + Wire.fragmentHeader),
    Sample(name: "non-first IPv4 fragment whose data looks like DHCP from 67",
           frame: Build.v4Frame(dhcpOffer, protocol: Protocol.udp, fragmentOffsetUnits: 185), verdict: nil, needed: v4L4),
    Sample(name: "802.1Q IPv4", frame: Build.v4Frame(tags: [Protocol.etherVLAN], Build.tcp(), protocol: Protocol.tcp),
           verdict: nil, needed: v4L4 + Wire.vlanTag),
    Sample(name: "QinQ IPv6", frame: Build.v6Frame(tags: qinq, next: Protocol.tcp, Build.tcp()), verdict: nil, needed: v6L4 + 2 * Wire.vlanTag),
    Sample(name: "QinQ ARP", frame: Build.ethernet(tags: qinq, type: Protocol.etherARP, payload: Build.arp()), verdict: nil, needed: arpEnd + 2 * Wire.vlanTag),
    // With allowRouter, what makes a VM a router passes.
    Sample(name: "DHCP offer with allowRouter", frame: Build.v4Frame(dhcpOffer, protocol: Protocol.udp),
           verdict: nil, needed: v4L4 + Wire.udpPorts, allowRouter: true),
    Sample(name: "DHCPv6 reply with allowRouter", frame: Build.v6Frame(source: Fixture.vmLinkLocal, next: Protocol.udp, dhcpv6Reply),
           verdict: nil, needed: v6L4 + Wire.udpSourcePort, allowRouter: true),
    Sample(name: "router advertisement with allowRouter",
           frame: Build.v6Frame(source: Fixture.vmLinkLocal, next: Protocol.icmpv6, Build.routerAdvertisement()),
           verdict: nil, needed: v6L4 + Wire.icmpType, allowRouter: true),
    Sample(name: "redirect with allowRouter",
           frame: Build.v6Frame(source: Fixture.vmLinkLocal, next: Protocol.icmpv6, Build.redirect(target: Fixture.otherLinkLocal, destination: Fixture.otherIPv6)),
           verdict: nil, needed: v6L4 + Wire.icmpType, allowRouter: true),
]

/// Spoofs, rogue servers and routers, unknown protocols: each refused for its reason.
let refused: [Sample] = [
    Sample(name: "foreign source MAC", frame: Build.v4Frame(mac: Fixture.otherMAC, Build.tcp(), protocol: Protocol.tcp),
           verdict: .spoofedMAC, needed: Wire.ethernetAddresses),
    Sample(name: "broadcast source MAC", frame: Build.v4Frame(mac: Fixture.broadcastMAC, Build.tcp(), protocol: Protocol.tcp),
           verdict: .spoofedMAC, needed: Wire.ethernetAddresses),
    Sample(name: "IPv4 from another address", frame: Build.v4Frame(source: Fixture.otherIPv4, Build.tcp(), protocol: Protocol.tcp),
           verdict: .spoofedIP, needed: v4L4),
    Sample(name: "IPv4 from 0.0.0.0, not DHCP", frame: Build.v4Frame(source: 0, Build.udp(source: 1234, destination: Protocol.dhcpServer), protocol: Protocol.udp),
           verdict: .spoofedIP, needed: v4L4 + Wire.udpPorts),
    Sample(name: "IPv4 TCP from 0.0.0.0", frame: Build.v4Frame(source: 0, Build.tcp(), protocol: Protocol.tcp),
           verdict: .spoofedIP, needed: v4L4),
    Sample(name: "IPv4 header that is not version 4",
           frame: Build.ethernet(type: Protocol.etherIPv4, payload: Build.ipv6(source: Fixture.vmIPv6, next: Protocol.tcp, payload: Build.tcp())),
           verdict: .spoofedIP, needed: eth + 1),
    Sample(name: "ARP with a foreign sender MAC", frame: Build.ethernet(type: Protocol.etherARP, payload: Build.arp(senderMAC: Fixture.otherMAC)),
           verdict: .spoofedARP, needed: arpEnd),
    Sample(name: "ARP with a foreign sender IP", frame: Build.ethernet(type: Protocol.etherARP, payload: Build.arp(senderIP: Fixture.otherIPv4)),
           verdict: .spoofedARP, needed: arpEnd),
    Sample(name: "gratuitous ARP for a neighbour's address",
           frame: Build.ethernet(destination: Fixture.broadcastMAC, type: Protocol.etherARP,
                                 payload: Build.arp(operation: Protocol.arpReply, senderIP: Fixture.gatewayIPv4, targetIP: Fixture.gatewayIPv4)),
           verdict: .spoofedARP, needed: arpEnd),
    Sample(name: "RARP with a foreign sender MAC",
           frame: Build.ethernet(type: Protocol.etherRARP, payload: Build.arp(operation: Protocol.rarpRequest, senderMAC: Fixture.otherMAC, senderIP: 0)),
           verdict: .spoofedARP, needed: arpEnd),
    Sample(name: "DHCP offer (UDP from 67)", frame: Build.v4Frame(dhcpOffer, protocol: Protocol.udp), verdict: .rogueDHCP, needed: v4L4 + Wire.udpPorts),
    Sample(name: "IPv6 from another address", frame: Build.v6Frame(source: Fixture.otherIPv6, next: Protocol.tcp, Build.tcp()),
           verdict: .spoofedIP, needed: v6L4),
    Sample(name: "IPv6 from a neighbour's link-local", frame: Build.v6Frame(source: Fixture.otherLinkLocal, next: Protocol.tcp, Build.tcp()),
           verdict: .spoofedIP, needed: v6L4),
    Sample(name: "ICMPv6 echo from ::", frame: Build.v6Frame(source: Fixture.unspecifiedIPv6, next: Protocol.icmpv6, Build.icmpv6(type: Protocol.echoRequest)),
           verdict: .spoofedIP, needed: v6L4 + Wire.icmpType),
    Sample(name: "neighbour advertisement of a neighbour's address",
           frame: Build.v6Frame(next: Protocol.icmpv6, Build.neighborAdvertisement(target: Fixture.otherIPv6, options: ownTLLA)),
           verdict: .spoofedIP, needed: ndOptions),
    Sample(name: "neighbour advertisement with a foreign target link-layer option",
           frame: Build.v6Frame(next: Protocol.icmpv6, Build.neighborAdvertisement(target: Fixture.vmIPv6, options: otherTLLA)),
           verdict: .spoofedIP, needed: ndOptions + Wire.linkLayerOption, optionsStart: ndOptions),
    Sample(name: "neighbour solicitation with a foreign source link-layer option",
           frame: Build.v6Frame(source: Fixture.vmLinkLocal, destination: Fixture.solicitedNode, next: Protocol.icmpv6,
                                Build.neighborSolicitation(target: Fixture.otherIPv6, options: otherSLLA)),
           verdict: .spoofedIP, needed: ndOptions + Wire.linkLayerOption, optionsStart: ndOptions),
    Sample(name: "DAD solicitation from :: with a foreign option after a nonce",
           frame: Build.v6Frame(source: Fixture.unspecifiedIPv6, destination: Fixture.solicitedNode, next: Protocol.icmpv6,
                                Build.neighborSolicitation(target: Fixture.vmIPv6, options: Build.nonceOption() + otherSLLA)),
           verdict: .spoofedIP, needed: ndOptions + Wire.optionUnit + Wire.linkLayerOption, optionsStart: ndOptions),
    Sample(name: "router solicitation with a foreign source link-layer option",
           frame: Build.v6Frame(source: Fixture.vmLinkLocal, destination: Fixture.allRouters, next: Protocol.icmpv6,
                                Build.routerSolicitation(options: otherSLLA)),
           verdict: .spoofedIP, needed: rsOptions + Wire.linkLayerOption, optionsStart: rsOptions),
    Sample(name: "ND option of length 0",
           frame: Build.v6Frame(source: Fixture.vmLinkLocal, destination: Fixture.allRouters, next: Protocol.icmpv6,
                                Build.routerSolicitation(options: [Protocol.sourceLinkLayer, 0] + Fixture.vmMAC)),
           verdict: .spoofedIP, needed: rsOptions + 2, optionsStart: rsOptions),
    Sample(name: "router advertisement", frame: Build.v6Frame(source: Fixture.vmLinkLocal, next: Protocol.icmpv6, Build.routerAdvertisement()),
           verdict: .rogueRA, needed: v6L4 + Wire.icmpType),
    Sample(name: "redirect",
           frame: Build.v6Frame(source: Fixture.vmLinkLocal, next: Protocol.icmpv6, Build.redirect(target: Fixture.otherLinkLocal, destination: Fixture.otherIPv6)),
           verdict: .rogueRA, needed: v6L4 + Wire.icmpType),
    Sample(name: "router advertisement behind hop-by-hop and a first fragment",
           frame: Build.v6Frame(source: Fixture.vmLinkLocal, next: Protocol.hopByHop, Build.optionsHeader(next: Protocol.fragment, payload:
               Build.fragment(next: Protocol.icmpv6, payload: Build.routerAdvertisement()))),
           verdict: .rogueRA, needed: v6L4 + Wire.extensionUnit + Wire.fragmentHeader + Wire.icmpType),
    Sample(name: "router advertisement behind an authentication header",
           frame: Build.v6Frame(source: Fixture.vmLinkLocal, next: Protocol.authentication,
                                Build.authentication(next: Protocol.icmpv6, payload: Build.routerAdvertisement())),
           verdict: .rogueRA, needed: v6L4 + 24 + Wire.icmpType),
    Sample(name: "DHCPv6 reply (UDP from 547)", frame: Build.v6Frame(source: Fixture.vmLinkLocal, next: Protocol.udp, dhcpv6Reply),
           verdict: .rogueDHCP, needed: v6L4 + Wire.udpSourcePort),
    Sample(name: "non-first IPv6 fragment from another address",
           frame: Build.v6Frame(source: Fixture.otherIPv6, next: Protocol.fragment, Build.fragment(next: Protocol.udp, offsetUnits: 185, more: false, payload: dhcpv6Reply)),
           verdict: .spoofedIP, needed: v6L4),
    Sample(name: "nine stacked destination-options headers",
           frame: Build.v6Frame(next: Protocol.destinationOptions, stackedOptions(PortFilterTests.extensionHeaderLimit + 1)),
           verdict: .spoofedIP, needed: v6L4 + PortFilterTests.extensionHeaderLimit * Wire.extensionUnit),
    Sample(name: "802.1Q IPv4 from another address", frame: Build.v4Frame(source: Fixture.otherIPv4, tags: [Protocol.etherVLAN], Build.tcp(), protocol: Protocol.tcp),
           verdict: .spoofedIP, needed: v4L4 + Wire.vlanTag),
    Sample(name: "QinQ IPv6 from another address", frame: Build.v6Frame(source: Fixture.otherIPv6, tags: qinq, next: Protocol.tcp, Build.tcp()),
           verdict: .spoofedIP, needed: v6L4 + 2 * Wire.vlanTag),
    Sample(name: "QinQ ARP with a foreign sender MAC",
           frame: Build.ethernet(tags: qinq, type: Protocol.etherARP, payload: Build.arp(senderMAC: Fixture.otherMAC)),
           verdict: .spoofedARP, needed: arpEnd + 2 * Wire.vlanTag),
    Sample(name: "QinQ router advertisement", frame: Build.v6Frame(source: Fixture.vmLinkLocal, tags: qinq, next: Protocol.icmpv6, Build.routerAdvertisement()),
           verdict: .rogueRA, needed: v6L4 + 2 * Wire.vlanTag + Wire.icmpType),
    Sample(name: "802.1Q foreign source MAC",
           frame: Build.ethernet(source: Fixture.otherMAC, tags: [Protocol.etherVLAN], type: Protocol.etherIPv4,
                                 payload: Build.ipv4(source: Fixture.vmIPv4, protocol: Protocol.tcp, payload: Build.tcp())),
           verdict: .spoofedMAC, needed: Wire.ethernetAddresses),
    Sample(name: "three VLAN tags", frame: Build.v4Frame(tags: [Protocol.etherQinQ, Protocol.etherVLAN, Protocol.etherVLAN], Build.tcp(), protocol: Protocol.tcp),
           verdict: .otherProtocol, needed: eth + 2 * Wire.vlanTag),
    Sample(name: "LLDP", frame: Build.ethernet(destination: [0x01, 0x80, 0xc2, 0x00, 0x00, 0x0e], type: Protocol.etherLLDP,
                                               payload: [UInt8](repeating: 0, count: Wire.minimumFrame - eth)),
           verdict: .otherProtocol, needed: eth),
    Sample(name: "802.3 length field (LLC)", frame: Build.ethernet(type: 46, payload: [0x42, 0x42, 0x03] + [UInt8](repeating: 0, count: 43)),
           verdict: .otherProtocol, needed: eth),
]

@Suite("PortFilter: what a VM may send and receive")
struct PortFilterTests {
    /// Extension headers a legitimate sender stacks, at most (RFC 8200 lists six kinds).
    static let extensionHeaderLimit = 8

    @Test("allowed traffic passes", arguments: passing)
    func allowedTrafficPasses(_ sample: Sample) {
        #expect(sample.filter.transmit(sample.frame) == nil)
    }

    @Test("spoofs and rogue services are refused for their reason", arguments: refused)
    func spoofsAreRefused(_ sample: Sample) {
        #expect(sample.filter.transmit(sample.frame) == sample.verdict)
    }

    /// What allowRouter lets through, and only that: without it each of these is refused.
    @Test("router traffic needs allowRouter", arguments: passing.filter(\.allowRouter))
    func routerTrafficNeedsAllowRouter(_ sample: Sample) {
        let strict = PortFilter(Fixture.policy(allowRouter: false)).transmit(sample.frame)
        #expect(strict == .rogueDHCP || strict == .rogueRA)
    }

    /// allowRouter does not excuse a spoof.
    @Test func allowRouterStillChecksAddresses() {
        let filter = PortFilter(Fixture.policy(allowRouter: true))
        #expect(filter.transmit(Build.v4Frame(source: Fixture.otherIPv4, dhcpOffer, protocol: Protocol.udp)) == .spoofedIP)
        #expect(filter.transmit(Build.v4Frame(mac: Fixture.otherMAC, dhcpOffer, protocol: Protocol.udp)) == .spoofedMAC)
        #expect(filter.transmit(Build.v6Frame(source: Fixture.otherLinkLocal, next: Protocol.icmpv6, Build.routerAdvertisement())) == .spoofedIP)
    }

    /// With no allowed IPs the VM may still get one (DHCP, DAD) and use its link-local.
    @Test func noAllowedIPs() {
        let filter = PortFilter(PortPolicy(mac: Fixture.vmMAC))
        #expect(filter.transmit(Build.v4Frame(source: 0, Build.udp(source: Protocol.dhcpClient, destination: Protocol.dhcpServer), protocol: Protocol.udp)) == nil)
        #expect(filter.transmit(Build.v4Frame(Build.tcp(), protocol: Protocol.tcp)) == .spoofedIP)
        #expect(filter.transmit(Build.v6Frame(source: Fixture.vmLinkLocal, next: Protocol.tcp, Build.tcp())) == nil)
        #expect(filter.transmit(Build.v6Frame(next: Protocol.tcp, Build.tcp())) == .spoofedIP)
        #expect(filter.transmit(Build.ethernet(type: Protocol.etherARP, payload: Build.arp())) == .spoofedARP)
        #expect(filter.transmit(Build.ethernet(type: Protocol.etherARP, payload: Build.arp(senderIP: 0))) == nil)
    }

    @Test func linkLocalIsTheEUI64OfTheMAC() {
        let linkLocal = Fixture.policy().linkLocal
        #expect(linkLocal.high == 0xfe80_0000_0000_0000)
        #expect(linkLocal.low == 0x5054_00ff_fe12_3456)
    }

    /// Every prefix of every sample, as a frame of that length. A prefix that ends before the
    /// fixed headers the verdict needs must be refused (it cannot pass a check it could not
    /// read); one that holds all of `needed` gets the whole frame's verdict. A cut inside the
    /// ND options is refused unless it falls between two options: then it is a shorter,
    /// well-formed message, which passes only if the options it kept do.
    @Test("every truncation of a frame", arguments: passing + refused)
    func truncatedFrames(_ sample: Sample) {
        let filter = sample.filter
        let fixedEnd = sample.optionsStart ?? sample.needed
        for length in 0...sample.frame.count {
            let prefix = Array(sample.frame.prefix(length))
            let verdict = filter.transmit(prefix)
            if length < fixedEnd {
                #expect(verdict != nil, "\(length) of \(sample.frame.count) bytes passed")
            } else if length >= sample.needed {
                #expect(verdict == sample.verdict, "\(length) of \(sample.frame.count) bytes")
            } else if let start = sample.optionsStart, (length - start) % Wire.optionUnit != 0 {
                #expect(verdict != nil, "\(length) of \(sample.frame.count) bytes: cut inside an option, passed")
            }
        }
    }

    /// The datapath's view of a long frame: it inspects a prefix but the frame goes on. Any
    /// prefix without all of `needed` is refused, whatever the frame's real length; with all
    /// of it, the verdict is the whole frame's.
    @Test("every inspected prefix of a frame", arguments: passing + refused)
    func inspectedPrefixes(_ sample: Sample) {
        let filter = sample.filter
        for shown in 0...sample.frame.count {
            let verdict = filter.transmit(sample.frame, inspected: shown)
            if shown < sample.needed {
                #expect(verdict != nil, "\(shown) of \(sample.frame.count) bytes inspected: passed")
            } else {
                #expect(verdict == sample.verdict, "\(shown) of \(sample.frame.count) bytes inspected")
            }
        }
    }

    /// frameLength, not the buffer, bounds what is read: bytes past the frame are not part of it.
    @Test func bytesPastFrameLengthAreIgnored() {
        let filter = PortFilter(Fixture.policy())
        let ns = Build.v6Frame(source: Fixture.vmLinkLocal, destination: Fixture.solicitedNode, next: Protocol.icmpv6,
                               Build.neighborSolicitation(target: Fixture.otherIPv6))
        // A foreign option after the frame's end: not sent, so not refused.
        #expect(filter.transmit(ns + otherSLLA, frameLength: ns.count) == nil)
        #expect(filter.transmit(ns + otherSLLA) == .spoofedIP)
        let arp = Build.ethernet(type: Protocol.etherARP, payload: Build.arp())
        #expect(filter.transmit(arp, frameLength: arpEnd - 1) == .spoofedARP)
        #expect(filter.transmit(arp, frameLength: 0) == .spoofedMAC)
    }

    /// ND options that go on past what was inspected cannot be vouched for. (Options start at
    /// 78 + 4 * tags + 8 * extension headers, never on a multiple of 8, so none ends exactly at
    /// inspectedBytes: the test uses the last option boundary before it.)
    @Test func ndOptionsBeyondTheInspectedBytes() {
        let filter = PortFilter(Fixture.policy())
        let room = (PortFilter.inspectedBytes - ndOptions) / Wire.optionUnit * Wire.optionUnit
        func na(_ options: [UInt8]) -> [UInt8] {
            Build.v6Frame(next: Protocol.icmpv6, Build.neighborAdvertisement(target: Fixture.vmIPv6, options: options))
        }
        func nonces(_ bytes: Int) -> [UInt8] { Build.nonceOption(units: bytes / Wire.optionUnit) }
        // Options up to the last boundary that fits: all read, all own.
        let fits = na(nonces(room - Wire.linkLayerOption) + ownTLLA)
        #expect(fits.count <= PortFilter.inspectedBytes && fits.count + Wire.optionUnit > PortFilter.inspectedBytes)
        #expect(filter.transmit(fits) == nil)
        // One unit more: the own-MAC option straddles the end of what is inspected.
        let straddles = na(nonces(room) + ownTLLA)
        #expect(filter.transmit(straddles) == .spoofedIP)
        // Two more: the option starts past it (its type cannot even be read).
        let beyond = na(nonces(room + Wire.optionUnit) + ownTLLA)
        #expect(filter.transmit(beyond) == .spoofedIP)
        // The frame that fits, said to go on past its inspected end: whatever follows is unread.
        #expect(filter.transmit(fits, frameLength: fits.count + Wire.optionUnit) == .spoofedIP)
        // An option whose body runs past the inspected bytes to the frame's end: only its
        // header matters, and that was read.
        let longNonce = room + 4 * Wire.optionUnit
        #expect(filter.transmit(na(ownTLLA + nonces(longNonce))) == nil)
        // The same followed by another option, past the inspected bytes: refused.
        #expect(filter.transmit(na(ownTLLA + nonces(longNonce) + ownTLLA)) == .spoofedIP)
    }

    /// A TSO/USO frame: a normal header in the inspected prefix, 65000 bytes in all.
    @Test func gsoSizedFrames() {
        let filter = PortFilter(Fixture.policy())
        let gsoLength = 65000
        let payload = PortFilter.inspectedBytes // enough that the inspected prefix is full
        let tcp4 = Build.v4Frame(Build.tcp(payloadBytes: payload), protocol: Protocol.tcp)
        let tcp6 = Build.v6Frame(next: Protocol.tcp, Build.tcp(payloadBytes: payload))
        let udp6 = Build.v6Frame(next: Protocol.udp, Build.udp(source: 4000, destination: 4001, payloadBytes: payload))
        let vlan4 = Build.v4Frame(tags: qinq, Build.tcp(payloadBytes: payload), protocol: Protocol.tcp)
        for frame in [tcp4, tcp6, udp6, vlan4] {
            #expect(frame.count > PortFilter.inspectedBytes)
            #expect(filter.transmit(frame, frameLength: gsoLength) == nil)
        }
        #expect(filter.transmit(Build.v4Frame(source: Fixture.otherIPv4, Build.tcp(payloadBytes: payload), protocol: Protocol.tcp),
                                frameLength: gsoLength) == .spoofedIP)
        #expect(filter.transmit(Build.v6Frame(next: Protocol.udp, dhcpv6Reply + [UInt8](repeating: 0, count: payload)),
                                frameLength: gsoLength) == .rogueDHCP)
    }

    @Test func receive() {
        let filter = PortFilter(Fixture.policy())
        func frame(to destination: MAC) -> [UInt8] {
            Build.ethernet(source: Fixture.otherMAC, destination: destination, type: Protocol.etherIPv4,
                           payload: Build.ipv4(source: Fixture.gatewayIPv4, destination: Fixture.vmIPv4, protocol: Protocol.tcp, payload: Build.tcp()))
        }
        #expect(filter.receive(frame(to: Fixture.vmMAC)) == nil)
        #expect(filter.receive(frame(to: Fixture.broadcastMAC)) == nil)
        #expect(filter.receive(frame(to: Fixture.ipv4MulticastMAC)) == nil)
        #expect(filter.receive(frame(to: Fixture.ipv6MulticastMAC)) == nil)
        #expect(filter.receive(frame(to: Fixture.otherMAC)) == .notForThisVM)
        // The local-admin bit is not the group bit: 02:... is unicast.
        #expect(filter.receive(frame(to: [0x02] + Fixture.vmMAC.dropFirst())) == .notForThisVM)
        // Differs from the VM's MAC only in its last bit.
        #expect(filter.receive(frame(to: Array(Fixture.vmMAC.dropLast()) + [Fixture.vmMAC[5] ^ 1])) == .notForThisVM)
        // Only the destination address matters: a runt with it passes, a shorter one cannot be read.
        #expect(filter.receive(Fixture.vmMAC) == nil)
        #expect(filter.receive(Array(Fixture.vmMAC.dropLast())) == .notForThisVM)
        #expect(filter.receive([]) == .notForThisVM)
    }

    /// Each violation has its own drop-counter label, in the form Prometheus labels take.
    @Test func violationLabels() {
        let labels = PortViolation.allCases.map(\.label)
        #expect(Set(labels).count == PortViolation.allCases.count)
        #expect(labels.allSatisfy { $0.allSatisfy { $0.isLowercase || $0 == "_" } })
        #expect(PortViolation.spoofedMAC.label == "spoofed_mac")
    }
}
