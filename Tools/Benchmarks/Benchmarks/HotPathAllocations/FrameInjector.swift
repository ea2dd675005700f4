import Glibc
import CTapwire
import SystemCalls

/// Sends one pre-built frame out of an interface with a raw AF_PACKET socket: on a TAP, what
/// goes out of the interface is what the TAP's reader (tapwire) reads. Protocol 0, so the
/// socket receives nothing (not even its own frames). No allocation per frame: the frame is
/// built once and each send is one sendto.
final class FrameInjector {
    let ifindex: Int32
    private let socket: Descriptor
    private let frame: UnsafeMutableRawBufferPointer

    init(interface: String, frame bytes: [UInt8]) throws {
        ifindex = Int32(tw_if_nametoindex(interface))
        guard ifindex > 0 else { throw BenchmarkSetupError("no interface \(interface)") }
        let raw = Glibc.socket(AF_PACKET, Int32(SOCK_RAW.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard raw >= 0 else { throw BenchmarkSetupError("AF_PACKET socket: errno \(errno) (needs CAP_NET_RAW)") }
        socket = Descriptor(taking: raw)
        frame = .allocate(byteCount: bytes.count, alignment: 16)
        frame.copyBytes(from: bytes)
    }

    deinit {
        frame.deallocate()
    }

    /// Sends the frame `count` times; returns how many the kernel took.
    @inline(__always)
    func send(_ count: Int) -> Int {
        var sent = 0
        // SAFETY: `frame` is allocated for this object's lifetime and sendto only reads it.
        for _ in 0..<count where tw_packet_send(socket.raw, ifindex, frame.baseAddress, frame.count) == frame.count {
            sent += 1
        }
        return sent
    }
}
