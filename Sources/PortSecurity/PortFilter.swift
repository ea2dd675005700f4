/// Ethernet framing as the filter reads it (IEEE 802.3, 802.1Q).
public enum EthernetHeader {
    public static let addressLength = 6
    public static let size = 14
    static let sourceOffset = 6
    static let typeOffset = 12
    static let vlanTagSize = 4
    /// 802.1ad outer tag plus 802.1Q inner tag: what a guest can stack in practice.
    static let maxVLANTags = 2
    /// EtherType values start here; below it the field is an 802.3 length.
    static let minimumEtherType: UInt16 = 0x0600
}

public enum EtherType {
    public static let ipv4: UInt16 = 0x0800
    public static let arp: UInt16 = 0x0806
    public static let rarp: UInt16 = 0x8035
    public static let vlan: UInt16 = 0x8100
    public static let qinq: UInt16 = 0x88A8
    public static let ipv6: UInt16 = 0x86DD
}

/// IP protocol numbers and the header fields the filter reads (RFC 791, 8200, 826, 4861).
enum IPField {
    static let udp: UInt8 = 17
    static let icmpv6: UInt8 = 58
    static let ipv4MinimumHeader = 20
    static let ipv4ProtocolOffset = 9
    static let ipv4FragmentOffset = 6
    static let ipv4FragmentMask: UInt16 = 0x1fff
    static let ipv4SourceOffset = 12
    static let ipv6Header = 40
    static let ipv6NextHeaderOffset = 6
    static let ipv6SourceOffset = 8
    /// Extension headers walked before giving up (a legitimate chain has a few).
    static let maxExtensionHeaders = 8
    static let hopByHop: UInt8 = 0, routing: UInt8 = 43, fragment: UInt8 = 44, destinationOptions: UInt8 = 60
    static let authentication: UInt8 = 51
    static let fragmentHeader = 8
    /// ARP for IPv4 over Ethernet: htype 1, ptype 0x0800, hlen 6, plen 4, then op and addresses.
    static let arpSize = 28
    static let arpHardwareEthernet: UInt16 = 1
    static let arpSenderMACOffset = 8
    static let arpSenderIPOffset = 14
    static let dhcpServerPort: UInt16 = 67, dhcpClientPort: UInt16 = 68
    static let dhcpv6ServerPort: UInt16 = 547
}

enum ICMPv6 {
    static let routerSolicitation: UInt8 = 133, routerAdvertisement: UInt8 = 134
    static let neighborSolicitation: UInt8 = 135, neighborAdvertisement: UInt8 = 136, redirect: UInt8 = 137
    static let mldReport: UInt8 = 131, mldv2Report: UInt8 = 143
    /// Type, code, checksum, reserved/flags: where a solicitation's or advertisement's target starts.
    static let targetOffset = 8
    static let targetEnd = 24
    /// Router solicitations have no target: options follow the 8-byte header.
    static let solicitationHeader = 8
    static let optionSourceLinkLayer: UInt8 = 1, optionTargetLinkLayer: UInt8 = 2
    static let optionUnit = 8
}

/// The start of a frame in memory, read with every load bounds-checked: a field past the end
/// reads as nil, and the caller decides what a frame too short for its headers means.
struct HeaderBytes {
    let bytes: UnsafeRawBufferPointer
    /// The whole frame's length, of which `bytes` may hold only the start.
    let frameLength: Int

    @inline(__always) func u8(_ offset: Int) -> UInt8? {
        // SAFETY: 0 <= offset < bytes.count.
        offset >= 0 && offset < bytes.count ? bytes.load(fromByteOffset: offset, as: UInt8.self) : nil
    }

    @inline(__always) func u16(_ offset: Int) -> UInt16? {
        // SAFETY: offset + 2 <= bytes.count.
        offset >= 0 && offset + 2 <= bytes.count ? UInt16(bigEndian: bytes.loadUnaligned(fromByteOffset: offset, as: UInt16.self)) : nil
    }

    @inline(__always) func u32(_ offset: Int) -> UInt32? {
        // SAFETY: offset + 4 <= bytes.count.
        offset >= 0 && offset + 4 <= bytes.count ? UInt32(bigEndian: bytes.loadUnaligned(fromByteOffset: offset, as: UInt32.self)) : nil
    }

    @inline(__always) func u64(_ offset: Int) -> UInt64? {
        // SAFETY: offset + 8 <= bytes.count.
        offset >= 0 && offset + 8 <= bytes.count ? UInt64(bigEndian: bytes.loadUnaligned(fromByteOffset: offset, as: UInt64.self)) : nil
    }

    /// A MAC address as the low 48 bits.
    @inline(__always) func mac(_ offset: Int) -> UInt64? {
        guard let high = u16(offset), let low = u32(offset + 2) else { return nil }
        return UInt64(high) << 32 | UInt64(low)
    }
}

/// A `PortPolicy` ready for the packet path: it reads a frame's headers where they lie and
/// says whether the frame may pass, without allocating.
///
/// A class: the datapath holds one reference per service call, and a frame's check passes
/// that reference instead of copying the prefix table.
public final class PortFilter: Sendable {
    public let policy: PortPolicy
    private let mac: UInt64
    private let linkLocal: (high: UInt64, low: UInt64)
    /// `policy.allowedIPs` as masks and networks in inline storage: the per-frame checks
    /// touch no array, so no reference counting either.
    private let prefixes: PrefixTable
    private let prefixCount: Int

    /// Room for `PortPolicy.maxAllowedIPs` prefixes.
    typealias PrefixTable = InlineArray<32, Prefix>

    /// One allowed prefix, an IPv4 one in the low 32 bits of `low`.
    struct Prefix {
        var isV4 = false
        var high: UInt64 = 0, low: UInt64 = 0
        var maskHigh: UInt64 = 0, maskLow: UInt64 = 0
    }

    /// How many bytes of a frame the transmit check reads: Ethernet, two VLAN tags, an IPv6
    /// header with a few extension headers, and the ICMPv6/UDP fields. The datapath copies
    /// this much out of guest memory, checks the copy and sends the copy, so a guest cannot
    /// change a header between the check and the write.
    public static let inspectedBytes = 192

    public init(_ policy: PortPolicy) {
        self.policy = policy
        mac = policy.mac.reduce(0) { $0 << 8 | UInt64($1) }
        linkLocal = policy.linkLocal
        var table = PrefixTable(repeating: Prefix())
        for (i, network) in policy.allowedIPs.enumerated() {
            switch network {
            case .v4(let address, let length):
                table[i] = Prefix(isV4: true, low: UInt64(address), maskLow: UInt64(IPNetwork.mask32(length)))
            case .v6(let high, let low, let length):
                let (maskHigh, maskLow) = IPNetwork.mask128(length)
                table[i] = Prefix(high: high, low: low, maskHigh: maskHigh, maskLow: maskLow)
            }
        }
        prefixes = table
        prefixCount = policy.allowedIPs.count
    }

    /// Checks a frame the guest sends. `frame` is its first bytes (at most `inspectedBytes`),
    /// `frameLength` its whole length. A header that does not fit in `frame` fails the check
    /// of its protocol: what cannot be read cannot be trusted.
    public func checkTransmit(_ frame: UnsafeRawBufferPointer, frameLength: Int) -> PortViolation? {
        let h = HeaderBytes(bytes: UnsafeRawBufferPointer(rebasing: frame.prefix(frameLength)), frameLength: frameLength)
        guard let source = h.mac(EthernetHeader.sourceOffset), source == mac else { return .spoofedMAC }
        var offset = EthernetHeader.typeOffset
        guard var type = h.u16(offset) else { return .spoofedMAC }
        var tags = 0
        while type == EtherType.vlan || type == EtherType.qinq {
            guard tags < EthernetHeader.maxVLANTags, let inner = h.u16(offset + EthernetHeader.vlanTagSize) else { return .otherProtocol }
            offset += EthernetHeader.vlanTagSize
            type = inner
            tags += 1
        }
        let l3 = offset + 2
        switch type {
        case EtherType.ipv4: return checkIPv4(h, at: l3)
        case EtherType.ipv6: return checkIPv6(h, at: l3)
        case EtherType.arp, EtherType.rarp: return checkARP(h, at: l3)
        default: return .otherProtocol
        }
    }

    /// Checks a frame for the guest: unicast only for its own MAC; broadcast and multicast pass.
    public func checkReceive(_ frame: UnsafeRawBufferPointer) -> PortViolation? {
        let h = HeaderBytes(bytes: frame, frameLength: frame.count)
        guard let destination = h.mac(0) else { return .notForThisVM }
        let groupBit: UInt64 = 1 << 40
        return destination & groupBit != 0 || destination == mac ? nil : .notForThisVM
    }

    @inline(__always)
    private func allowedV4(_ address: UInt32) -> Bool {
        let address = UInt64(address)
        for i in 0..<prefixCount where prefixes[i].isV4 && address & prefixes[i].maskLow == prefixes[i].low { return true }
        return false
    }

    @inline(__always)
    private func allowedV6(_ high: UInt64, _ low: UInt64) -> Bool {
        if high == linkLocal.high && low == linkLocal.low { return true }
        for i in 0..<prefixCount where !prefixes[i].isV4
            && high & prefixes[i].maskHigh == prefixes[i].high && low & prefixes[i].maskLow == prefixes[i].low { return true }
        return false
    }

    private func checkARP(_ h: HeaderBytes, at start: Int) -> PortViolation? {
        guard start + IPField.arpSize <= h.bytes.count,
              h.u16(start) == IPField.arpHardwareEthernet, h.u16(start + 2) == EtherType.ipv4,
              h.u8(start + 4) == UInt8(EthernetHeader.addressLength), h.u8(start + 5) == 4,
              h.mac(start + IPField.arpSenderMACOffset) == mac,
              let sender = h.u32(start + IPField.arpSenderIPOffset)
        else { return .spoofedARP }
        // 0.0.0.0: an address probe (RFC 5227) or a RARP request, which claim nothing.
        return sender == 0 || allowedV4(sender) ? nil : .spoofedARP
    }

    private func checkIPv4(_ h: HeaderBytes, at start: Int) -> PortViolation? {
        guard let versionIHL = h.u8(start), versionIHL >> 4 == 4,
              case let headerLength = Int(versionIHL & 0x0f) * 4, headerLength >= IPField.ipv4MinimumHeader,
              start + headerLength <= h.bytes.count,
              let proto = h.u8(start + IPField.ipv4ProtocolOffset), let fragment = h.u16(start + IPField.ipv4FragmentOffset),
              let source = h.u32(start + IPField.ipv4SourceOffset)
        else { return .spoofedIP }
        let l4 = start + headerLength
        var dhcpClient = false
        if proto == IPField.udp && fragment & IPField.ipv4FragmentMask == 0 {
            guard let sourcePort = h.u16(l4), let destinationPort = h.u16(l4 + 2) else { return .spoofedIP }
            if sourcePort == IPField.dhcpServerPort && !policy.allowRouter { return .rogueDHCP }
            dhcpClient = sourcePort == IPField.dhcpClientPort && destinationPort == IPField.dhcpServerPort
        }
        if source == 0 && dhcpClient { return nil }
        return allowedV4(source) ? nil : .spoofedIP
    }

    private func checkIPv6(_ h: HeaderBytes, at start: Int) -> PortViolation? {
        // The whole fixed header, destination included: a header cut short is not sent unchecked.
        guard start + IPField.ipv6Header <= h.bytes.count,
              let version = h.u8(start), version >> 4 == 6, var next = h.u8(start + IPField.ipv6NextHeaderOffset),
              let sourceHigh = h.u64(start + IPField.ipv6SourceOffset), let sourceLow = h.u64(start + IPField.ipv6SourceOffset + 8)
        else { return .spoofedIP }
        var offset = start + IPField.ipv6Header
        var firstFragment = true
        walk: for _ in 0..<IPField.maxExtensionHeaders {
            switch next {
            case IPField.hopByHop, IPField.routing, IPField.destinationOptions:
                guard let following = h.u8(offset), let units = h.u8(offset + 1) else { return .spoofedIP }
                next = following
                offset += (Int(units) + 1) * 8
            case IPField.authentication:
                guard let following = h.u8(offset), let units = h.u8(offset + 1) else { return .spoofedIP }
                next = following
                offset += (Int(units) + 2) * 4
            case IPField.fragment:
                guard let following = h.u8(offset), let fragment = h.u16(offset + 2) else { return .spoofedIP }
                next = following
                offset += IPField.fragmentHeader
                firstFragment = fragment >> 3 == 0
            default:
                break walk
            }
            // Each extension header must lie wholly in what was inspected (RFC 7112 puts the
            // whole chain in the first fragment): a routing header's addresses, say, are not
            // to go out unread.
            guard offset <= h.bytes.count else { return .spoofedIP }
            // Later fragments carry no upper-layer header; only the first is inspected.
            if !firstFragment { break walk }
        }
        let unspecified = sourceHigh == 0 && sourceLow == 0
        if firstFragment {
            switch next {
            case IPField.icmpv6:
                guard let type = h.u8(offset) else { return .spoofedIP }
                if let violation = checkICMPv6(h, type: type, at: offset) { return violation }
                // Duplicate address detection and MLD reports come from :: before an address is ours.
                if unspecified && (type == ICMPv6.neighborSolicitation || type == ICMPv6.mldReport || type == ICMPv6.mldv2Report) {
                    return nil
                }
            case IPField.udp:
                guard let sourcePort = h.u16(offset) else { return .spoofedIP }
                if sourcePort == IPField.dhcpv6ServerPort && !policy.allowRouter { return .rogueDHCP }
            case IPField.hopByHop, IPField.routing, IPField.destinationOptions, IPField.authentication, IPField.fragment:
                // More extension headers than a legitimate sender stacks.
                return .spoofedIP
            default:
                break
            }
        }
        return allowedV6(sourceHigh, sourceLow) ? nil : .spoofedIP
    }

    /// Router messages, and neighbour discovery that claims an address or a link-layer
    /// address (RFC 4861 4.3, 4.4, 4.6): the target must be one of the VM's, and any link-layer
    /// option must carry its MAC.
    private func checkICMPv6(_ h: HeaderBytes, type: UInt8, at start: Int) -> PortViolation? {
        switch type {
        case ICMPv6.routerAdvertisement, ICMPv6.redirect:
            return policy.allowRouter ? nil : .rogueRA
        case ICMPv6.neighborAdvertisement:
            guard let high = h.u64(start + ICMPv6.targetOffset), let low = h.u64(start + ICMPv6.targetOffset + 8),
                  allowedV6(high, low) else { return .spoofedIP }
            return checkLinkLayerOptions(h, from: start + ICMPv6.targetEnd)
        case ICMPv6.neighborSolicitation:
            return checkLinkLayerOptions(h, from: start + ICMPv6.targetEnd)
        case ICMPv6.routerSolicitation:
            return checkLinkLayerOptions(h, from: start + ICMPv6.solicitationHeader)
        default:
            return nil
        }
    }

    private func checkLinkLayerOptions(_ h: HeaderBytes, from start: Int) -> PortViolation? {
        // The message's fixed part (target included) must be there before any option.
        guard start <= h.bytes.count else { return .spoofedIP }
        var offset = start
        while offset < h.bytes.count {
            guard let type = h.u8(offset), let units = h.u8(offset + 1), units > 0 else { return .spoofedIP }
            if type == ICMPv6.optionSourceLinkLayer || type == ICMPv6.optionTargetLinkLayer {
                guard h.mac(offset + 2) == mac else { return .spoofedIP }
            }
            offset += Int(units) * ICMPv6.optionUnit
        }
        // Options past what was inspected would go out unchecked; one that runs past the
        // frame's end is malformed (the kernel's ndisc_parse_options refuses it too).
        return offset != h.frameLength ? .spoofedIP : nil
    }
}
