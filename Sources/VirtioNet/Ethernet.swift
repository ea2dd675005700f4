/// Ethernet addresses as tapwire reads and prints them: six bytes, `52:54:00:12:34:56`.
public enum MACAddress {
    public static let length = 6

    /// Six two-digit hex bytes separated by ':', or nil.
    public static func parse(_ text: String) -> [UInt8]? {
        let parts = text.split(separator: ":", omittingEmptySubsequences: false)
        guard parts.count == length else { return nil }
        let bytes = parts.compactMap { $0.count == 2 ? UInt8($0, radix: 16) : nil }
        return bytes.count == length ? bytes : nil
    }

    public static func format(_ bytes: [UInt8]) -> String {
        bytes.map { byte in
            let hex = String(byte, radix: 16)
            return hex.count == 1 ? "0" + hex : hex
        }.joined(separator: ":")
    }
}

/// The frame a host sends for a VM that moved so that switches learn its new port: a RARP
/// "request reverse" from the VM's MAC to broadcast (RFC 903), as QEMU's own announce sends.
public enum EthernetAnnounce {
    static let etherTypeRARP: [UInt8] = [0x80, 0x35]
    /// hardware type Ethernet (1), protocol IPv4 (0x0800), address lengths 6 and 4, op 3.
    static let rarpHeader: [UInt8] = [0x00, 0x01, 0x08, 0x00, 6, 4, 0x00, 0x03]
    /// Ethernet's minimum frame without its FCS.
    static let minimumFrameLength = 60

    public static func rarp(from mac: [UInt8]) -> [UInt8] {
        precondition(mac.count == MACAddress.length)
        let noIPv4 = [UInt8](repeating: 0, count: 4)
        var frame = [UInt8](repeating: 0xff, count: MACAddress.length) + mac + etherTypeRARP
        frame += rarpHeader + mac + noIPv4 + mac + noIPv4
        frame += [UInt8](repeating: 0, count: max(0, minimumFrameLength - frame.count))
        return frame
    }
}
