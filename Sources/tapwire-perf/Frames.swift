/// Frames the tool sends, built once before a run.
enum Frames {
    /// The local experimental EtherType: no host stack acts on it.
    static let etherType: [UInt8] = [0x88, 0xB5]
    static let broadcast: [UInt8] = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff]
    /// Source MAC of the frames the tool sends (locally administered).
    static let source: [UInt8] = [0x02, 0x00, 0x74, 0x77, 0x70, 0x66]
    /// Written at offset 14 of every plain frame, before the 8-byte sequence number.
    static let magic: UInt32 = 0x7477_7066 // "twpf"
    static let magicOffset = 14
    static let sequenceOffset = 18
    static let minimumPlainLength = 26

    /// A frame of `length` bytes to the broadcast MAC with EtherType 0x88B5, the magic and a
    /// sequence number (0) after the Ethernet header, then a byte pattern.
    static func plain(length: Int, destination: [UInt8] = broadcast) -> [UInt8] {
        var frame = destination + source + etherType
        withUnsafeBytes(of: magic.bigEndian) { frame += $0 }
        frame += [UInt8](repeating: 0, count: 8)
        while frame.count < length { frame.append(UInt8(truncatingIfNeeded: frame.count)) }
        return Array(frame.prefix(max(length, minimumPlainLength)))
    }

    /// True if `frame` (at `pointer`, `count` bytes) is one of ours; returns its sequence number.
    @inline(__always)
    static func sequence(in pointer: UnsafeRawPointer, count: Int) -> UInt64? {
        guard count >= minimumPlainLength, pointer.load(fromByteOffset: 12, as: UInt8.self) == 0x88,
              pointer.load(fromByteOffset: 13, as: UInt8.self) == 0xB5,
              UInt32(bigEndian: pointer.loadUnaligned(fromByteOffset: magicOffset, as: UInt32.self)) == magic
        else { return nil }
        return pointer.loadUnaligned(fromByteOffset: sequenceOffset, as: UInt64.self)
    }

    /// A TCP/IPv4 frame of `payload` bytes for TSO: a valid IPv4 header checksum, the TCP
    /// checksum field holding the pseudo-header sum (CHECKSUM_PARTIAL, as a guest kernel leaves
    /// it), and the 12-byte virtio-net header that asks for segmentation at `mss`.
    /// Addresses are in 198.18.0.0/15 (the benchmarking range) and the destination MAC is not
    /// the TAP's, so the host drops the frame as soon as it sees it (PACKET_OTHERHOST).
    static func tso(payload: Int, mss: UInt16) -> (header: [UInt8], frame: [UInt8]) {
        precondition(payload + 40 <= 65535, "an IPv4 datagram holds at most 65495 bytes of TCP payload")
        let destination: [UInt8] = [0x02, 0xaa, 0x00, 0x00, 0x00, 0x02]
        let ipLength = 20 + 20 + payload
        var frame = destination + source + [0x08, 0x00]
        let sourceIP: [UInt8] = [198, 18, 0, 1], destinationIP: [UInt8] = [198, 18, 0, 2]
        frame += [0x45, 0, UInt8(ipLength >> 8), UInt8(ipLength & 0xff), 0, 1, 0x40, 0, 64, 6, 0, 0]
        frame += sourceIP + destinationIP
        let ipChecksum = ~fold(sum16(frame[14..<34]))
        frame[24] = UInt8(ipChecksum >> 8)
        frame[25] = UInt8(ipChecksum & 0xff)
        // TCP: ports 12345 -> 80, seq 1, data offset 5, PSH|ACK, window 65535.
        frame += [0x30, 0x39, 0x00, 0x50, 0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x18, 0xff, 0xff, 0, 0, 0, 0]
        let tcpLength = 20 + payload
        let pseudo = fold(sum16(sourceIP[...]) + sum16(destinationIP[...]) + 6 + UInt32(tcpLength))
        frame[50] = UInt8(pseudo >> 8)
        frame[51] = UInt8(pseudo & 0xff)
        frame.reserveCapacity(frame.count + payload)
        for i in 0..<payload { frame.append(UInt8(truncatingIfNeeded: i)) }
        var header = [UInt8](repeating: 0, count: 12)
        header[0] = 1 // VIRTIO_NET_HDR_F_NEEDS_CSUM
        header[1] = 1 // VIRTIO_NET_HDR_GSO_TCPV4
        store16(&header, 2, 54) // hdr_len: Ethernet + IPv4 + TCP
        store16(&header, 4, mss) // gso_size
        store16(&header, 6, 34) // csum_start: the TCP header
        store16(&header, 8, 16) // csum_offset: TCP checksum field
        return (header, frame)
    }

    private static func store16(_ bytes: inout [UInt8], _ offset: Int, _ value: UInt16) {
        bytes[offset] = UInt8(value & 0xff)
        bytes[offset + 1] = UInt8(value >> 8)
    }

    private static func sum16(_ bytes: ArraySlice<UInt8>) -> UInt32 {
        var sum: UInt32 = 0
        var i = bytes.startIndex
        while i + 1 < bytes.endIndex {
            sum += UInt32(bytes[i]) << 8 | UInt32(bytes[i + 1])
            i += 2
        }
        if i < bytes.endIndex { sum += UInt32(bytes[i]) << 8 }
        return sum
    }

    private static func fold(_ value: UInt32) -> UInt16 {
        var sum = value
        while sum > 0xffff { sum = (sum & 0xffff) + (sum >> 16) }
        return UInt16(sum)
    }
}
