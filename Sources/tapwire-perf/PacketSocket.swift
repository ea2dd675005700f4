import Glibc
import CTapwire
import SystemCalls

/// An AF_PACKET socket bound to one interface (the TAP), non-blocking, through CTapwire's
/// `tw_packet_socket` / `tw_packet_send`. It must be opened in the interface's network namespace.
final class PacketSocket {
    let fd: Descriptor
    let ifindex: Int32
    let interface: String

    private static let solPacket: Int32 = 263
    private static let packetQdiscBypass: Int32 = 20
    private static let packetIgnoreOutgoing: Int32 = 23

    /// `ignoreOutgoing`: do not see frames sent on the interface (our own echoes);
    /// `bypassQdisc`: hand frames straight to the driver (as a fast packet generator does).
    init(interface: String, ignoreOutgoing: Bool, bypassQdisc: Bool) throws {
        self.interface = interface
        ifindex = Int32(bitPattern: tw_if_nametoindex(interface))
        guard ifindex > 0 else {
            throw ToolError("no interface \(interface) in this network namespace (run the tool with `ip netns exec NS` where the TAP lives)")
        }
        let raw = tw_packet_socket(ifindex, 0)
        guard raw >= 0 else { throw ToolError("AF_PACKET socket on \(interface): \(SystemError("socket", errno: errno))") }
        fd = Descriptor(taking: raw)
        if ignoreOutgoing { try set(Self.packetIgnoreOutgoing, "PACKET_IGNORE_OUTGOING") }
        if bypassQdisc { try set(Self.packetQdiscBypass, "PACKET_QDISC_BYPASS") }
    }

    private func set(_ option: Int32, _ name: String) throws {
        var one: Int32 = 1
        if setsockopt(fd.raw, Self.solPacket, option, &one, socklen_t(MemoryLayout<Int32>.size)) < 0 {
            throw ToolError("setsockopt \(name) on \(interface): \(SystemError("setsockopt", errno: errno))")
        }
    }

    /// Sends one frame; returns bytes sent or -errno.
    @inline(__always)
    func send(_ frame: UnsafeRawPointer, count: Int) -> Int {
        resultOrNegativeErrno { tw_packet_send(fd.raw, ifindex, frame, count) }
    }

    /// Receives one frame into `buffer`; returns its length or -errno (-EAGAIN when none).
    @inline(__always)
    func receive(into buffer: UnsafeMutableRawBufferPointer) -> Int {
        resultOrNegativeErrno { recv(fd.raw, buffer.baseAddress, buffer.count, 0) }
    }
}
