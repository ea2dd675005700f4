import Glibc
import CTapwire
import SystemCalls

/// A host TAP interface opened with IFF_TAP | IFF_NO_PI | IFF_VNET_HDR, one descriptor per
/// queue (IFF_MULTI_QUEUE when more than one). Creating the interface needs CAP_NET_ADMIN;
/// attaching to a persistent TAP owned by our user does not.
public final class Tap: @unchecked Sendable {
    // @unchecked Sendable: the queue descriptors are handed to one queue thread each.
    public let name: String
    public let queues: [Descriptor]
    public private(set) var vnetHeaderSize: Int
    public private(set) var offloadFlags: UInt32 = 0
    /// One io_uring per queue, its queue registered as fixed file 0, for batched reads and
    /// writes (one thread serves a queue); empty until `enableBatchedIO`, and where io_uring
    /// is unavailable.
    public private(set) var ioRings: [IOUring] = []
    /// Whether each queue is attached (TUNSETQUEUE); every queue is attached when opened.
    public private(set) var queueAttached: [Bool] = []

    public enum OpenError: Error, CustomStringConvertible, Sendable {
        case noTunDevice(SystemError)
        case setIFF(name: String, SystemError)
        case configure(String, SystemError)
        case badName(String)

        public var description: String {
            switch self {
            case .noTunDevice(let e): return "cannot open /dev/net/tun (\(e)); is the tun module loaded?"
            case .setIFF(let name, let e):
                let hint = e.errno == EPERM
                    ? " (creating a TAP needs CAP_NET_ADMIN; or create it once with `ip tuntap add dev \(name) mode tap vnet_hdr user USER` and run as USER)"
                    : e.errno == EINVAL ? " (does \(name) exist with other flags, e.g. without vnet_hdr or multi_queue?)"
                    : e.errno == EBUSY ? " (another process, e.g. another tapwire or a QEMU with -netdev tap, holds it)" : ""
                return "TUNSETIFF \(name): \(e)\(hint)"
            case .configure(let what, let e): return "\(what): \(e)"
            case .badName(let name): return "TAP name '\(name)' must be 1 to 15 characters"
            }
        }
    }

    /// Opens (creating if needed) `name` with `queueCount` queues. A queue still held by
    /// another descriptor is waited for up to `busyWaitMilliseconds`.
    public init(name: String, queueCount: Int = 1, vnetHeaderSize: Int = 12, busyWaitMilliseconds: Int = 5000) throws(OpenError) {
        guard !name.isEmpty, name.utf8.count < 16 else { throw .badName(name) }
        var flags = TW_IFF_TAP | TW_IFF_NO_PI | TW_IFF_VNET_HDR
        if queueCount > 1 { flags |= TW_IFF_MULTI_QUEUE }
        var opened = [Descriptor]()
        var actualName = name
        for _ in 0..<max(queueCount, 1) {
            let fd: Int32
            do { fd = try retryingInterrupts("open /dev/net/tun") { open("/dev/net/tun", O_RDWR | O_CLOEXEC | O_NONBLOCK) } }
            catch { throw .noTunDevice(error) }
            let descriptor = Descriptor(taking: fd)
            var nameBuffer = [CChar](repeating: 0, count: 16)
            for (i, byte) in actualName.utf8.enumerated() { nameBuffer[i] = CChar(bitPattern: byte) }
            // EBUSY: another descriptor still holds the queue. After a restart that is often our
            // predecessor: the kernel closes a killed process's io_uring (which holds the TAP
            // open) a moment after the process is gone. Wait for it a little.
            var waited = 0
            while tw_tun_set_iff(fd, &nameBuffer, Int32(flags)) < 0 {
                let code = Glibc.errno
                guard code == EBUSY, waited < busyWaitMilliseconds else {
                    throw .setIFF(name: actualName, SystemError("TUNSETIFF", errno: code))
                }
                usleep(20_000)
                waited += 20
            }
            actualName = String(cString: nameBuffer)
            opened.append(descriptor)
        }
        self.name = actualName
        self.queues = opened
        self.queueAttached = [Bool](repeating: true, count: opened.count)
        self.vnetHeaderSize = vnetHeaderSize
        try setVnetHeaderSize(vnetHeaderSize)
    }

    /// The ioctl requests a set-up TAP still issues while serving (queues attached as the
    /// guest enables them, offloads as it acks them, the vnet header size, the MTU).
    public static let servingIoctls: [UInt] = {
        var requests = [UInt](repeating: 0, count: 8)
        let count = requests.withUnsafeMutableBufferPointer { tw_tap_serving_ioctls($0.baseAddress, UInt32($0.count)) }
        return Array(requests.prefix(Int(count)))
    }()

    /// Sets up an io_uring per queue so a batch of frames goes to (or comes from) the TAP in
    /// one syscall.
    /// Throws (and leaves none set up) where io_uring is missing or disabled.
    public func enableBatchedIO(entries: Int) throws(SystemError) {
        var rings = [IOUring]()
        for queue in queues {
            rings.append(try IOUring(entries: entries, fixedFiles: [queue]))
        }
        ioRings = rings
    }

    public func setVnetHeaderSize(_ size: Int) throws(OpenError) {
        for queue in queues where tw_tun_set_vnet_hdr_size(queue.raw, Int32(size)) < 0 {
            throw .configure("TUNSETVNETHDRSZ \(size) on \(name)", SystemError("ioctl", errno: Glibc.errno))
        }
        vnetHeaderSize = size
    }

    /// Tells the kernel which offloads the reader (the guest) accepts. EINVAL means the kernel
    /// lacks one of them.
    public func setOffload(_ flags: UInt32) throws(SystemError) {
        for queue in queues where tw_tun_set_offload(queue.raw, flags) < 0 {
            throw SystemError("TUNSETOFFLOAD 0x\(String(flags, radix: 16)) on \(name)", errno: Glibc.errno)
        }
        offloadFlags = flags
    }

    /// The TUN_F_* flags this kernel accepts, found by trying them in the groups the kernel
    /// insists on (TSO/UFO/USO only with CSUM; USO4 only with USO6). Leaves offloads off.
    public func probeOffloads() -> UInt32 {
        let fd = queues[0].raw
        let csum = UInt32(TW_TUN_F_CSUM)
        var supported: UInt32 = 0
        if tw_tun_set_offload(fd, csum) == 0 { supported |= csum }
        if supported != 0 {
            let groups: [UInt32] = [UInt32(TW_TUN_F_TSO4), UInt32(TW_TUN_F_TSO6),
                                    UInt32(TW_TUN_F_TSO4 | TW_TUN_F_TSO6 | TW_TUN_F_TSO_ECN), UInt32(TW_TUN_F_UFO),
                                    UInt32(TW_TUN_F_USO4 | TW_TUN_F_USO6)]
            for group in groups where tw_tun_set_offload(fd, csum | group) == 0 { supported |= group }
        }
        _ = tw_tun_set_offload(fd, offloadFlags)
        return supported
    }

    public func setUp() throws(SystemError) {
        if tw_if_set_up(name, 1) < 0 { throw SystemError("bring \(name) up", errno: Glibc.errno) }
    }

    public var mtu: Int { Int(tw_if_get_mtu(name)) }

    public func setMTU(_ mtu: Int) throws(SystemError) {
        if tw_if_set_mtu(name, Int32(mtu)) < 0 { throw SystemError("set MTU \(mtu) on \(name)", errno: Glibc.errno) }
    }

    /// Has the kernel drop, before any reaches tapwire (or the guest's memory), every unicast
    /// frame not for `mac`; multicast and broadcast still pass. nil removes the filter. The
    /// filter belongs to the interface, so one queue's descriptor sets it for all.
    public func setUnicastFilter(_ mac: [UInt8]?) throws(SystemError) {
        let rc: Int32
        if let mac {
            precondition(mac.count == 6)
            rc = mac.withUnsafeBufferPointer { tw_tun_set_tx_filter(queues[0].raw, $0.baseAddress) }
        } else {
            rc = tw_tun_set_tx_filter(queues[0].raw, nil)
        }
        if rc < 0 { throw SystemError("TUNSETTXFILTER on \(name)", errno: Glibc.errno) }
    }

    /// Enables or disables one queue of a multiqueue TAP (TUNSETQUEUE). QEMU repeats enables
    /// (every channel change re-enables pair 0); the kernel refuses a queue that is already in
    /// the asked state, so only changes reach it.
    public func setQueueEnabled(_ index: Int, _ enabled: Bool) throws(SystemError) {
        guard queues.count > 1, queueAttached[index] != enabled else { return }
        let flags = enabled ? TW_IFF_ATTACH_QUEUE : TW_IFF_DETACH_QUEUE
        if tw_tun_set_queue(queues[index].raw, Int32(flags)) < 0 {
            throw SystemError("TUNSETQUEUE \(enabled ? "attach" : "detach") \(index) on \(name)", errno: Glibc.errno)
        }
        queueAttached[index] = enabled
    }
}

/// Reads an interface counter ("rx_bytes", "rx_packets", "rx_dropped", "tx_bytes",
/// "tx_packets", "tx_dropped") from /proc/net/dev, which (unlike sysfs) always shows the
/// caller's network namespace.
public func interfaceStatistic(_ interface: String, _ counter: String) -> UInt64? {
    let columns = ["rx_bytes": 0, "rx_packets": 1, "rx_errors": 2, "rx_dropped": 3,
                   "tx_bytes": 8, "tx_packets": 9, "tx_errors": 10, "tx_dropped": 11]
    guard let column = columns[counter] else { return nil }
    let fd = open("/proc/net/dev", O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { return nil }
    defer { close(fd) }
    var bytes = [UInt8]()
    var chunk = [UInt8](repeating: 0, count: 4096)
    while true {
        let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        if n <= 0 { break }
        bytes += chunk[0..<n]
    }
    for line in String(decoding: bytes, as: UTF8.self).split(separator: "\n") {
        let parts = line.split(separator: ":", maxSplits: 1)
        // Names are right-aligned: "  eth0: 1234 ...".
        guard parts.count == 2, parts[0].drop(while: { $0 == " " }) == interface else { continue }
        let values = parts[1].split(separator: " ")
        return column < values.count ? UInt64(values[column]) : nil
    }
    return nil
}
