import Glibc

/// An IPv4 or IPv6 prefix such as 10.0.0.5/32 or 2001:db8::/64: what `--allowed-ips` lists.
/// A bare address is a host prefix (/32 or /128).
public enum IPNetwork: Sendable, Hashable, CustomStringConvertible {
    case v4(address: UInt32, prefixLength: Int)
    /// The address as two big-endian halves, `high` holding the first 8 bytes.
    case v6(high: UInt64, low: UInt64, prefixLength: Int)

    public static let ipv4Bits = 32
    public static let ipv6Bits = 128

    public struct ParseError: Error, CustomStringConvertible, Equatable {
        public let description: String
    }

    /// Parses one prefix; inet_pton does the address itself (it refuses what is not one).
    public init(parsing text: String) throws(ParseError) {
        let parts = text.split(separator: "/", maxSplits: 1, omittingEmptySubsequences: false)
        let addressText = String(parts[0])
        let prefixText = parts.count == 2 ? String(parts[1]) : nil
        func prefix(max: Int) throws(ParseError) -> Int {
            guard let prefixText else { return max }
            guard let n = Int(prefixText), (0...max).contains(n) else {
                throw ParseError(description: "'\(text)': the prefix length must be 0 to \(max), not '\(prefixText)'")
            }
            return n
        }
        var v4 = in_addr()
        var v6 = in6_addr()
        if inet_pton(AF_INET, addressText, &v4) == 1 {
            let length = try prefix(max: Self.ipv4Bits)
            self = .v4(address: UInt32(bigEndian: v4.s_addr), prefixLength: length)
        } else if inet_pton(AF_INET6, addressText, &v6) == 1 {
            let length = try prefix(max: Self.ipv6Bits)
            let (high, low) = withUnsafeBytes(of: &v6) { bytes in
                (UInt64(bigEndian: bytes.loadUnaligned(as: UInt64.self)),
                 UInt64(bigEndian: bytes.loadUnaligned(fromByteOffset: 8, as: UInt64.self)))
            }
            self = .v6(high: high, low: low, prefixLength: length)
        } else {
            throw ParseError(description: "'\(text)' is not an IPv4 or IPv6 address or prefix (e.g. 10.0.0.5/32, 2001:db8::/64)")
        }
        // 10.0.0.5/24 most likely means the host, not the network: say so rather than guess.
        guard masked == self else {
            throw ParseError(description: "'\(text)' has bits set beyond its prefix; write the network (\(masked)) or the host as /\(prefixLength == 0 ? 0 : isV4 ? Self.ipv4Bits : Self.ipv6Bits)")
        }
    }

    public var isV4: Bool { if case .v4 = self { return true } else { return false } }

    public var prefixLength: Int {
        switch self {
        case .v4(_, let length), .v6(_, _, let length): return length
        }
    }

    /// The mask of an IPv4 prefix.
    @inline(__always)
    static func mask32(_ length: Int) -> UInt32 { length == 0 ? 0 : ~UInt32(0) << UInt32(32 - length) }

    /// The masks of an IPv6 prefix's two halves.
    @inline(__always)
    static func mask128(_ length: Int) -> (UInt64, UInt64) {
        let high = length >= 64 ? ~UInt64(0) : length == 0 ? 0 : ~UInt64(0) << UInt64(64 - length)
        let low = length <= 64 ? 0 : length == 128 ? ~UInt64(0) : ~UInt64(0) << UInt64(128 - length)
        return (high, low)
    }

    var masked: IPNetwork {
        switch self {
        case .v4(let address, let length): return .v4(address: address & Self.mask32(length), prefixLength: length)
        case .v6(let high, let low, let length):
            let (mh, ml) = Self.mask128(length)
            return .v6(high: high & mh, low: low & ml, prefixLength: length)
        }
    }

    @inline(__always)
    public func contains(v4 address: UInt32) -> Bool {
        guard case .v4(let network, let length) = self else { return false }
        return address & Self.mask32(length) == network
    }

    @inline(__always)
    public func contains(v6High high: UInt64, low: UInt64) -> Bool {
        guard case .v6(let nh, let nl, let length) = self else { return false }
        let (mh, ml) = Self.mask128(length)
        return high & mh == nh && low & ml == nl
    }

    public var description: String {
        switch self {
        case .v4(let address, let length):
            var raw = in_addr(s_addr: address.bigEndian)
            return Self.format(AF_INET, &raw, length)
        case .v6(let high, let low, let length):
            var raw = in6_addr()
            withUnsafeMutableBytes(of: &raw) { bytes in
                bytes.storeBytes(of: high.bigEndian, as: UInt64.self)
                bytes.storeBytes(of: low.bigEndian, toByteOffset: 8, as: UInt64.self)
            }
            return Self.format(AF_INET6, &raw, length)
        }
    }

    private static func format<T>(_ family: Int32, _ raw: inout T, _ length: Int) -> String {
        var text = [CChar](repeating: 0, count: Int(INET6_ADDRSTRLEN))
        _ = inet_ntop(family, &raw, &text, socklen_t(text.count))
        return String(cString: text) + "/\(length)"
    }

    /// A comma-separated list, as `--allowed-ips` takes it ("" is none).
    public static func parseList(_ text: String) throws(ParseError) -> [IPNetwork] {
        try parse(text.split(separator: ",").map(\.trimmingSpaces).filter { !$0.isEmpty })
    }

    /// Each prefix of a list, at most `PortPolicy.maxAllowedIPs` of them.
    public static func parse(_ items: [String]) throws(ParseError) -> [IPNetwork] {
        guard items.count <= PortPolicy.maxAllowedIPs else {
            throw ParseError(description: "\(items.count) prefixes; at most \(PortPolicy.maxAllowedIPs) (give a shorter prefix that covers several)")
        }
        var networks = [IPNetwork]()
        for item in items { networks.append(try IPNetwork(parsing: item)) }
        return networks
    }
}

extension Substring {
    var trimmingSpaces: String { String(drop(while: { $0 == " " }).reversed().drop(while: { $0 == " " }).reversed()) }
}
