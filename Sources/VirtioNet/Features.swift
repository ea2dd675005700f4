import CTapwire

/// Virtio and virtio-net feature bits (virtio 1.2, 5.1.3), as masks.
public enum NetFeature {
    public static let csum: UInt64 = 1 << 0
    public static let guestCsum: UInt64 = 1 << 1
    public static let ctrlGuestOffloads: UInt64 = 1 << 2
    public static let mtu: UInt64 = 1 << 3
    public static let mac: UInt64 = 1 << 5
    public static let guestTSO4: UInt64 = 1 << 7
    public static let guestTSO6: UInt64 = 1 << 8
    public static let guestECN: UInt64 = 1 << 9
    public static let guestUFO: UInt64 = 1 << 10
    public static let hostTSO4: UInt64 = 1 << 11
    public static let hostTSO6: UInt64 = 1 << 12
    public static let hostECN: UInt64 = 1 << 13
    public static let hostUFO: UInt64 = 1 << 14
    public static let mergeableRxBuffers: UInt64 = 1 << 15
    public static let status: UInt64 = 1 << 16
    public static let ctrlVQ: UInt64 = 1 << 17
    public static let guestAnnounce: UInt64 = 1 << 21
    public static let multiqueue: UInt64 = 1 << 22
    public static let guestUSO4: UInt64 = 1 << 54
    public static let guestUSO6: UInt64 = 1 << 55
    public static let hostUSO: UInt64 = 1 << 56

    /// The offloads that let the device hand the guest frames larger than the MTU.
    public static let guestGSO = guestTSO4 | guestTSO6 | guestUFO | guestUSO4 | guestUSO6
    /// Everything to leave out for a guest that takes only MTU-sized frames (ECN goes with TSO).
    public static let guestLargeReceive = guestGSO | guestECN

    /// VHOST_F_LOG_ALL: the frontend is migrating the guest; log every write to its memory.
    public static let logAll: UInt64 = 1 << 26
    public static let ringIndirect: UInt64 = 1 << 28
    public static let ringEventIndex: UInt64 = 1 << 29
    public static let protocolFeatures: UInt64 = 1 << 30
    public static let version1: UInt64 = 1 << 32
    public static let ringPacked: UInt64 = 1 << 34
    public static let ringReset: UInt64 = 1 << 40

    /// Names for logs and the API, in bit order.
    public static let names: [(UInt64, String)] = [
        (csum, "CSUM"), (guestCsum, "GUEST_CSUM"), (ctrlGuestOffloads, "CTRL_GUEST_OFFLOADS"), (mtu, "MTU"),
        (mac, "MAC"), (guestTSO4, "GUEST_TSO4"), (guestTSO6, "GUEST_TSO6"), (guestECN, "GUEST_ECN"),
        (guestUFO, "GUEST_UFO"), (hostTSO4, "HOST_TSO4"), (hostTSO6, "HOST_TSO6"), (hostECN, "HOST_ECN"),
        (hostUFO, "HOST_UFO"), (mergeableRxBuffers, "MRG_RXBUF"), (status, "STATUS"), (ctrlVQ, "CTRL_VQ"),
        (guestAnnounce, "GUEST_ANNOUNCE"), (multiqueue, "MQ"), (logAll, "LOG_ALL"), (ringIndirect, "RING_INDIRECT_DESC"),
        (ringEventIndex, "RING_EVENT_IDX"), (protocolFeatures, "PROTOCOL_FEATURES"), (version1, "VERSION_1"),
        (ringPacked, "RING_PACKED"), (ringReset, "RING_RESET"),
        (guestUSO4, "GUEST_USO4"), (guestUSO6, "GUEST_USO6"), (hostUSO, "HOST_USO"),
    ]

    public static func describe(_ features: UInt64) -> [String] {
        var known: UInt64 = 0
        var out = [String]()
        for (mask, name) in names {
            known |= mask
            if features & mask != 0 { out.append(name) }
        }
        var rest = features & ~known
        while rest != 0 {
            let bit = rest.trailingZeroBitCount
            out.append("bit\(bit)")
            rest &= rest - 1
        }
        return out
    }
}

/// The offloads tapwire can negotiate, and how each maps to the TAP.
public struct Offload: OptionSet, Sendable, Hashable {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }

    /// Guest transmit with partial checksums (CSUM) and segmentation (HOST_*).
    public static let txChecksum = Offload(rawValue: 1 << 0)
    public static let txTSO4 = Offload(rawValue: 1 << 1)
    public static let txTSO6 = Offload(rawValue: 1 << 2)
    public static let txECN = Offload(rawValue: 1 << 3)
    public static let txUFO = Offload(rawValue: 1 << 4)
    public static let txUSO = Offload(rawValue: 1 << 5)
    /// Guest receive (GUEST_*): what the TAP may hand us unsegmented / unchecksummed.
    public static let rxChecksum = Offload(rawValue: 1 << 8)
    public static let rxTSO4 = Offload(rawValue: 1 << 9)
    public static let rxTSO6 = Offload(rawValue: 1 << 10)
    public static let rxECN = Offload(rawValue: 1 << 11)
    public static let rxUFO = Offload(rawValue: 1 << 12)
    public static let rxUSO4 = Offload(rawValue: 1 << 13)
    public static let rxUSO6 = Offload(rawValue: 1 << 14)
    public static let mergeableRxBuffers = Offload(rawValue: 1 << 16)

    public static let all: Offload = [.txChecksum, .txTSO4, .txTSO6, .txECN, .txUFO, .txUSO, .rxChecksum, .rxTSO4,
                                      .rxTSO6, .rxECN, .rxUFO, .rxUSO4, .rxUSO6, .mergeableRxBuffers]

    /// Names accepted by `--offloads LIST` (comma separated), and shown by status output.
    public static let byName: [(String, Offload)] = [
        ("csum", .txChecksum), ("tso4", .txTSO4), ("tso6", .txTSO6), ("ecn", .txECN), ("ufo", .txUFO), ("uso", .txUSO),
        ("guest-csum", .rxChecksum), ("guest-tso4", .rxTSO4), ("guest-tso6", .rxTSO6), ("guest-ecn", .rxECN),
        ("guest-ufo", .rxUFO), ("guest-uso4", .rxUSO4), ("guest-uso6", .rxUSO6), ("mrg-rxbuf", .mergeableRxBuffers),
    ]

    /// Parses `auto`, `none`, or a comma-separated list of names from `byName` (a `tso` shorthand
    /// means tso4,tso6,guest-tso4,guest-tso6 and `csum` alone also enables nothing on receive).
    public static func parse(_ text: String) -> Result<Offload?, OffloadParseError> {
        let trimmed = text.trimmingSpaces()
        if trimmed == "auto" { return .success(nil) }
        if trimmed == "none" || trimmed.isEmpty { return .success([]) }
        var result: Offload = []
        for part in trimmed.split(separator: ",") {
            let name = String(part).trimmingSpaces().lowercased()
            if name == "tso" { result.formUnion([.txTSO4, .txTSO6, .rxTSO4, .rxTSO6]); continue }
            if name == "all" { result.formUnion(.all); continue }
            guard let match = byName.first(where: { $0.0 == name }) else {
                return .failure(OffloadParseError(value: name))
            }
            result.formUnion(match.1)
        }
        return .success(result)
    }

    public var names: [String] { Self.byName.filter { contains($0.1) }.map(\.0) }

    /// The virtio-net features that these offloads allow offering. Dependencies from the spec
    /// (5.1.3.1) are enforced: TSO/UFO/USO need the checksum feature of the same direction.
    public var offeredFeatures: UInt64 {
        var f: UInt64 = 0
        if contains(.txChecksum) {
            f |= NetFeature.csum
            if contains(.txTSO4) { f |= NetFeature.hostTSO4 }
            if contains(.txTSO6) { f |= NetFeature.hostTSO6 }
            if contains(.txECN) && (contains(.txTSO4) || contains(.txTSO6)) { f |= NetFeature.hostECN }
            if contains(.txUFO) { f |= NetFeature.hostUFO }
            if contains(.txUSO) { f |= NetFeature.hostUSO }
        }
        if contains(.rxChecksum) {
            f |= NetFeature.guestCsum
            if contains(.rxTSO4) { f |= NetFeature.guestTSO4 }
            if contains(.rxTSO6) { f |= NetFeature.guestTSO6 }
            if contains(.rxECN) && (contains(.rxTSO4) || contains(.rxTSO6)) { f |= NetFeature.guestECN }
            if contains(.rxUFO) { f |= NetFeature.guestUFO }
            if contains(.rxUSO4) { f |= NetFeature.guestUSO4 }
            if contains(.rxUSO6) { f |= NetFeature.guestUSO6 }
        }
        if contains(.mergeableRxBuffers) { f |= NetFeature.mergeableRxBuffers }
        return f
    }
}

public struct OffloadParseError: Error, CustomStringConvertible, Sendable {
    public let value: String
    public var description: String {
        "--offloads: unknown offload '\(value)'; expected auto, none, or a comma-separated list of "
            + Offload.byName.map(\.0).joined(separator: ", ") + ", tso, all"
    }
}

/// TUNSETOFFLOAD flags for the guest-receive offloads the guest acked (exactly those).
public func tapOffloadFlags(forAckedFeatures features: UInt64) -> UInt32 {
    guard features & NetFeature.guestCsum != 0 else { return 0 }
    var flags = UInt32(TW_TUN_F_CSUM)
    if features & NetFeature.guestTSO4 != 0 { flags |= UInt32(TW_TUN_F_TSO4) }
    if features & NetFeature.guestTSO6 != 0 { flags |= UInt32(TW_TUN_F_TSO6) }
    if features & NetFeature.guestECN != 0 { flags |= UInt32(TW_TUN_F_TSO_ECN) }
    if features & NetFeature.guestUFO != 0 { flags |= UInt32(TW_TUN_F_UFO) }
    if features & NetFeature.guestUSO4 != 0 { flags |= UInt32(TW_TUN_F_USO4) }
    if features & NetFeature.guestUSO6 != 0 { flags |= UInt32(TW_TUN_F_USO6) }
    return flags
}

/// Which offloads a TAP's kernel accepts, from TUNSETOFFLOAD probes.
public func offloads(fromTapFlags flags: UInt32) -> Offload {
    var o: Offload = [.mergeableRxBuffers]
    // Guest transmit offloads need only the kernel's vnet header parser, which every
    // IFF_VNET_HDR TAP has; USO there needs the same kernel support as TUN_F_USO*.
    o.formUnion([.txChecksum, .txTSO4, .txTSO6, .txECN, .txUFO])
    if flags & UInt32(TW_TUN_F_CSUM) != 0 { o.insert(.rxChecksum) }
    if flags & UInt32(TW_TUN_F_TSO4) != 0 { o.insert(.rxTSO4) }
    if flags & UInt32(TW_TUN_F_TSO6) != 0 { o.insert(.rxTSO6) }
    if flags & UInt32(TW_TUN_F_TSO_ECN) != 0 { o.insert(.rxECN) }
    if flags & UInt32(TW_TUN_F_UFO) != 0 { o.insert(.rxUFO) }
    if flags & UInt32(TW_TUN_F_USO4) != 0 { o.formUnion([.rxUSO4, .txUSO]) }
    if flags & UInt32(TW_TUN_F_USO6) != 0 { o.insert(.rxUSO6) }
    return o
}

extension String {
    func trimmingSpaces() -> String {
        var s = Substring(self)
        while s.first == " " { s = s.dropFirst() }
        while s.last == " " { s = s.dropLast() }
        return String(s)
    }
}
