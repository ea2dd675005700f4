import CTapwire

/// virtio_net_hdr constants and the consistency checks applied before a frame reaches the kernel.
public enum NetHeader {
    public static let flagNeedsChecksum: UInt8 = 1
    public static let flagDataValid: UInt8 = 2
    public static let gsoNone: UInt8 = 0
    public static let gsoTCPv4: UInt8 = 1
    public static let gsoUDP: UInt8 = 3
    public static let gsoTCPv6: UInt8 = 4
    public static let gsoUDPL4: UInt8 = 5
    public static let gsoECN: UInt8 = 0x80

    /// With VERSION_1 or MRG_RXBUF (num_buffers follows the legacy header).
    public static let largestSize = 12
    public static let legacySize = 10

    public static func size(forFeatures features: UInt64) -> Int {
        features & (NetFeature.version1 | NetFeature.mergeableRxBuffers) != 0 ? largestSize : legacySize
    }

    public enum Problem: String, Sendable, CaseIterable {
        case gsoWithoutSize = "gso_without_size"
        case gsoNotNegotiated = "gso_not_negotiated"
        case unknownGSOType = "unknown_gso_type"
        case checksumOutsideFrame = "csum_outside_frame"
        case checksumNotNegotiated = "csum_not_negotiated"
        case headerLengthBeyondFrame = "hdr_len_beyond_frame"
        case frameTooShort = "frame_too_short"
        case frameTooLong = "frame_too_long"
    }

    /// Checks a guest-transmitted header against the frame length and the negotiated features.
    /// `frameLength` excludes the virtio-net header.
    @inline(__always)
    public static func validateTransmit(_ h: tw_virtio_net_hdr, frameLength: Int, features: UInt64) -> Problem? {
        if frameLength < 14 { return .frameTooShort }
        if frameLength > 65550 + 4 { return .frameTooLong }
        if h.flags & flagNeedsChecksum != 0 {
            if features & NetFeature.csum == 0 { return .checksumNotNegotiated }
            let start = Int(h.csum_start)
            if start + Int(h.csum_offset) + 2 > frameLength { return .checksumOutsideFrame }
        }
        let type = h.gso_type & ~gsoECN
        if type != gsoNone {
            if h.gso_size == 0 { return .gsoWithoutSize }
            let needed: UInt64
            switch type {
            case gsoTCPv4: needed = NetFeature.hostTSO4
            case gsoTCPv6: needed = NetFeature.hostTSO6
            case gsoUDP: needed = NetFeature.hostUFO
            case gsoUDPL4: needed = NetFeature.hostUSO
            default: return .unknownGSOType
            }
            if features & needed == 0 { return .gsoNotNegotiated }
            if h.gso_type & gsoECN != 0 && features & NetFeature.hostECN == 0 { return .gsoNotNegotiated }
            if Int(h.hdr_len) > frameLength { return .headerLengthBeyondFrame }
        } else if frameLength > 65535 + 18 {
            return .frameTooLong
        }
        return nil
    }
}
