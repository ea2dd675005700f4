/// What one VM may send and receive at its vNIC, as a cloud's port security (OpenStack's
/// port_security, libvirt's clean-traffic filter) enforces it: the VM's own MAC, the IP
/// addresses it was given, DHCP to get one, and nothing that makes it a router unless asked.
public struct PortPolicy: Sendable, Equatable {
    /// The only source MAC the guest may send from and the only unicast destination it gets.
    public var mac: [UInt8]
    /// Sources the guest may use, in IPv4/IPv6 headers, as ARP sender and as the target of a
    /// neighbour advertisement. DHCP client traffic (from 0.0.0.0) and the IPv6 link-local
    /// address EUI-64 derives from `mac` are allowed besides.
    public var allowedIPs: [IPNetwork]
    /// Lets the guest send DHCP/DHCPv6 server replies, router advertisements and redirects.
    public var allowRouter: Bool

    /// How many prefixes `allowedIPs` may hold (the packet path keeps them inline).
    public static let maxAllowedIPs = PortFilter.PrefixTable.count

    public init(mac: [UInt8], allowedIPs: [IPNetwork] = [], allowRouter: Bool = false) {
        precondition(mac.count == EthernetHeader.addressLength)
        precondition(allowedIPs.count <= Self.maxAllowedIPs, "callers check the number of prefixes")
        self.mac = mac
        self.allowedIPs = allowedIPs
        self.allowRouter = allowRouter
    }

    /// fe80::/64 with the interface identifier EUI-64 makes of `mac` (RFC 4291 appendix A):
    /// the universal/local bit flipped and ff:fe in the middle. The two halves, big-endian.
    public var linkLocal: (high: UInt64, low: UInt64) {
        let m = mac.map(UInt64.init)
        let low = (m[0] ^ 0x02) << 56 | m[1] << 48 | m[2] << 40 | 0xff << 32 | 0xfe << 24 | m[3] << 16 | m[4] << 8 | m[5]
        return (0xfe80 << 48, low)
    }
}

/// Why port security refused a frame, for the drop counters (`tapwire_drops_total{reason}`).
public enum PortViolation: Int, CaseIterable, Sendable {
    /// Sent from a MAC other than the VM's.
    case spoofedMAC
    /// An IPv4/IPv6 source, or a neighbour advertisement's target or link-layer address, the VM may not use.
    case spoofedIP
    /// An ARP or RARP sender address (hardware or IPv4) the VM may not use.
    case spoofedARP
    /// A DHCP or DHCPv6 server or relay message (UDP from port 67 or 547).
    case rogueDHCP
    /// An IPv6 router advertisement or redirect.
    case rogueRA
    /// Received: unicast for another MAC (the VM must not see its neighbours' traffic).
    case notForThisVM
    /// Neither IPv4, IPv6 nor ARP (e.g. 802.3 LLC frames, LLDP), as libvirt's no-other-l2-traffic.
    case otherProtocol

    public var label: String {
        switch self {
        case .spoofedMAC: return "spoofed_mac"
        case .spoofedIP: return "spoofed_ip"
        case .spoofedARP: return "spoofed_arp"
        case .rogueDHCP: return "rogue_dhcp"
        case .rogueRA: return "rogue_ra"
        case .notForThisVM: return "not_for_this_vm"
        case .otherProtocol: return "other_protocol"
        }
    }
}
