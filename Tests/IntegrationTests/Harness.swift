import Testing
import Glibc
import Foundation
import Logging
import CTapwire
import SystemCalls
import TapDevice
import VirtioNet
import VhostUser
import VhostUserFrontend
@testable import TapwireDaemon

/// A real tapwire backend loop on its own thread, listening on a temporary unix socket.
final class RunningBackend: @unchecked Sendable {
    let socketPath: String
    let loop: BackendLoop
    let tap: Tap?
    private let done = DispatchSemaphore(value: 0)

    /// `batchedWrites`: transmit through io_uring, as the daemon does by default (`--tap-io auto`).
    init(tapName: String? = nil, config: NetDeviceConfig = NetDeviceConfig(), batchedWrites: Bool = true) throws {
        socketPath = "/tmp/tapwire-test-\(getpid())-\(UInt32.random(in: 0...UInt32.max)).sock"
        var logger = Logger(label: "tapwire-test")
        logger.logLevel = ProcessInfo.processInfo.environment["TAPWIRE_TEST_LOG"].flatMap(Logger.Level.init(rawValue:)) ?? .critical
        if let tapName {
            let opened = try Tap(name: tapName, queueCount: config.queuePairs)
            try opened.setUp()
            if batchedWrites { try opened.enableBatchedIO(entries: 64) }
            tap = opened
        } else {
            tap = nil
        }
        let device = NetDevice(config: config, tap: tap, logger: logger, now: monotonicNanoseconds())
        loop = try BackendLoop(device: device, endpoint: .listen(path: socketPath), logger: logger)
        try loop.prepare()
        let thread = Thread { [loop, done] in
            do { try loop.run() } catch { print("backend loop failed: \(error)") }
            done.signal()
        }
        thread.start()
    }

    /// Runs `body` on the loop thread and waits for its answer.
    func onLoop<T: Sendable>(_ body: @escaping @Sendable (BackendLoop) -> T) -> T {
        let answer = Mailbox<T>()
        loop.mailbox.post { loop in answer.put(loop.withWorkersPaused { body(loop) }) }
        return answer.take()
    }

    func stats(queue: Int) -> QueueStats { onLoop { $0.device.queues[queue].stats } }

    func stop() {
        loop.mailbox.post { $0.stop() }
        done.wait()
    }

    deinit {
        unlink(socketPath)
    }
}

final class Mailbox<T: Sendable>: @unchecked Sendable {
    private var value: T?
    private let ready = DispatchSemaphore(value: 0)
    func put(_ v: T) { value = v; ready.signal() }
    func take() -> T { ready.wait(); return value! }
}

extension QueueStats: @retroactive @unchecked Sendable {}

/// A TAP name unique to this test run.
func uniqueTapName(_ tag: String) -> String { "tw\(tag)\(getpid() % 100000)" }

var tunAvailable: Bool { access("/dev/net/tun", R_OK | W_OK) == 0 && geteuid() == 0 }

/// An Ethernet frame with a local experimental EtherType (0x88B5) that no host stack acts on.
func testFrame(length: Int, seed: UInt8, destination: [UInt8] = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff]) -> [UInt8] {
    var frame = destination + [0x02, 0x00, 0x00, 0x00, 0x00, seed] + [0x88, 0xB5]
    while frame.count < length { frame.append(UInt8(truncatingIfNeeded: frame.count &+ Int(seed))) }
    return frame
}

/// A 12-byte virtio-net header with no offload.
let plainHeader = [UInt8](repeating: 0, count: 12)

extension VhostUserFrontend {
    /// A transmit buffer in guest memory: a plain virtio-net header and `frame` (by default a
    /// 100-byte test frame), to post as a one-descriptor chain as often as a test likes.
    func transmitBuffer(seed: UInt8, frame: [UInt8]? = nil) -> DriverBuffer {
        let bytes = plainHeader + (frame ?? testFrame(length: 100, seed: seed))
        let address = arena.allocate(bytes.count)
        arena.write(bytes, at: address)
        return DriverBuffer(address: address, length: UInt32(bytes.count), writable: false)
    }
}

/// Captures frames on an interface with an AF_PACKET socket.
final class PacketSocket {
    let fd: Descriptor
    let ifindex: Int32
    init(interface: String, vnetHeader: Bool = false) throws {
        ifindex = Int32(tw_if_nametoindex(interface))
        guard ifindex > 0 else { throw FrontendError("no interface \(interface)") }
        let raw = tw_packet_socket(ifindex, vnetHeader ? 1 : 0)
        guard raw >= 0 else { throw SystemError("packet socket on \(interface)", errno: errno) }
        fd = Descriptor(taking: raw)
    }

    func send(_ frame: [UInt8]) throws {
        let n = frame.withUnsafeBytes { tw_packet_send(fd.raw, ifindex, $0.baseAddress, $0.count) }
        guard n == frame.count else { throw SystemError("packet send", errno: errno) }
    }

    /// Frames received (inbound and outbound) until `timeout` passes with none, or `count` arrive.
    func receive(count: Int, timeoutMilliseconds: Int32 = 2000, matching: ([UInt8]) -> Bool = { _ in true }) -> [[UInt8]] {
        var frames = [[UInt8]]()
        var buffer = [UInt8](repeating: 0, count: 70000)
        // One overall deadline: background chatter (IPv6 solicitations) must not keep us here.
        let deadline = monotonicNanoseconds() + UInt64(timeoutMilliseconds) * 1_000_000
        while frames.count < count {
            let now = monotonicNanoseconds()
            if now >= deadline { break }
            var pfd = pollfd(fd: fd.raw, events: Int16(POLLIN), revents: 0)
            if poll(&pfd, 1, Int32((deadline - now) / 1_000_000) + 1) <= 0 { break }
            let n = buffer.withUnsafeMutableBytes { recv(fd.raw, $0.baseAddress, $0.count, 0) }
            if n > 0 {
                let frame = Array(buffer[0..<n])
                if matching(frame) { frames.append(frame) }
            }
        }
        return frames
    }
}
