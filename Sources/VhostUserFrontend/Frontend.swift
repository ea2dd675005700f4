import Glibc
import CTapwire
import SystemCalls
import VhostUser

public struct FrontendError: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// The frontend (QEMU's) side of vhost-user, written for tests, the latency tool and the
/// benchmarks: guest memory in a memfd, rings laid out by `DriverQueue`, kicks and calls on
/// eventfds, every request spoken over a real unix socket.
public final class VhostUserFrontend: @unchecked Sendable {
    // @unchecked Sendable: used from one thread at a time.
    public let socket: Descriptor
    public let arena: GuestArena
    private let memfd: Descriptor
    private let mapping: MemoryMapping
    public private(set) var queues: [Int: FrontendQueue] = [:]
    public var replyAck = false

    /// Connects to a backend listening on `path`, retrying for up to `timeoutMilliseconds`.
    public init(connectingTo path: String, memoryBytes: Int = 64 << 20, timeoutMilliseconds: Int = 5000) throws {
        var waited = 0
        var lastError: Error?
        var connected: Descriptor?
        while waited <= timeoutMilliseconds {
            do { connected = try UnixSocket.connect(path: path); break } catch {
                lastError = error
                usleep(20_000)
                waited += 20
            }
        }
        guard let connected else { throw FrontendError("cannot connect to \(path): \(lastError.map { "\($0)" } ?? "?")") }
        socket = connected
        memfd = try MemFD.make(name: "tapwire-frontend", size: memoryBytes)
        mapping = try MemoryMapping(descriptor: memfd.raw, length: memoryBytes)
        arena = GuestArena(base: mapping.base, size: memoryBytes, fd: memfd.raw, owner: mapping)
    }

    /// Uses an already connected socket (e.g. one end of a socketpair, or an accepted client).
    public init(socket: Descriptor, memoryBytes: Int = 64 << 20) throws {
        self.socket = socket
        memfd = try MemFD.make(name: "tapwire-frontend", size: memoryBytes)
        mapping = try MemoryMapping(descriptor: memfd.raw, length: memoryBytes)
        arena = GuestArena(base: mapping.base, size: memoryBytes, fd: memfd.raw, owner: mapping)
    }

    // MARK: - Raw protocol

    public func send(_ request: VhostUserRequest, payload: [UInt8] = [], fds: [Int32] = [], needReply: Bool = false) throws {
        let flags = HeaderFlags.version | (needReply ? HeaderFlags.needReply : 0)
        try sendRaw(MessageEncoder.encode(request: request.rawValue, flags: flags, payload: payload), fds: fds)
    }

    public func sendRaw(_ bytes: [UInt8], fds: [Int32] = []) throws {
        try bytes.withUnsafeBytes { buffer in try UnixSocket.send(socket.raw, bytes: buffer, fds: fds) }
    }

    /// Reads one reply; nil if the backend hung up.
    public func readReply() throws -> (header: MessageHeader, payload: [UInt8])? {
        var headerBytes = [UInt8](repeating: 0, count: 12)
        let ok = try headerBytes.withUnsafeMutableBytes { try UnixSocket.receiveExactly(socket.raw, into: $0) }
        guard ok else { return nil }
        let header = headerBytes.withUnsafeBytes { MessageHeader(bytes: $0) }
        guard header.flags & HeaderFlags.reply != 0 else { throw FrontendError("reply without the REPLY flag: \(header)") }
        var payload = [UInt8](repeating: 0, count: Int(header.size))
        if header.size > 0 {
            let complete = try payload.withUnsafeMutableBytes { try UnixSocket.receiveExactly(socket.raw, into: $0) }
            guard complete else { return nil }
        }
        return (header, payload)
    }

    /// Sends a request that always has a reply and returns its payload.
    public func query(_ request: VhostUserRequest, payload: [UInt8] = [], fds: [Int32] = []) throws -> [UInt8] {
        try send(request, payload: payload, fds: fds)
        guard let reply = try readReply() else { throw FrontendError("backend hung up after \(request.name)") }
        guard reply.header.request == request.rawValue else {
            throw FrontendError("reply to \(reply.header.request) while waiting for \(request.name)")
        }
        return reply.payload
    }

    public func queryU64(_ request: VhostUserRequest) throws -> UInt64 {
        let payload = try query(request)
        guard payload.count == 8 else { throw FrontendError("\(request.name) reply has \(payload.count) bytes") }
        return payload.withUnsafeBytes { $0.loadUnaligned(as: UInt64.self) }
    }

    /// Sends a request and, if REPLY_ACK was negotiated, waits for its ack (throws on non-zero).
    public func command(_ request: VhostUserRequest, payload: [UInt8] = [], fds: [Int32] = []) throws {
        try send(request, payload: payload, fds: fds, needReply: replyAck)
        guard replyAck else { return }
        let answer: (header: MessageHeader, payload: [UInt8])?
        do { answer = try readReply() } catch let error as SystemError where error.isWouldBlock {
            throw FrontendError("no ack for \(request.name) within the socket's receive timeout")
        }
        guard let reply = answer else { throw FrontendError("backend hung up after \(request.name)") }
        let status = reply.payload.withUnsafeBytes { $0.count == 8 ? $0.loadUnaligned(as: UInt64.self) : UInt64.max }
        guard status == 0 else { throw FrontendError("\(request.name) was refused (status \(status))") }
    }

    // MARK: - The usual start-up, as QEMU does it

    /// Negotiates features (what the backend offers, masked by `wanted`), protocol features,
    /// the memory table and `queueCount` queues of `queueSize`, then enables them.
    @discardableResult
    public func start(wantedFeatures: UInt64 = ~0, queueCount: Int = 2, queueSize: UInt16 = 256) throws -> UInt64 {
        let offered = try queryU64(.getFeatures)
        // VHOST_F_LOG_ALL is acked only while a migration runs, as QEMU does.
        let logAllBit: UInt64 = 1 << 26
        let features = offered & wantedFeatures & ~logAllBit
        let protocolFeaturesBit: UInt64 = 1 << 30
        if features & protocolFeaturesBit != 0 {
            let offeredProtocol = try queryU64(.getProtocolFeatures)
            let wantedProtocol = offeredProtocol & (ProtocolFeature.replyAck.mask | ProtocolFeature.multiqueue.mask
                | ProtocolFeature.config.mask | ProtocolFeature.configureMemSlots.mask | ProtocolFeature.netMTU.mask)
            try send(.setProtocolFeatures, payload: MessageEncoder.u64(wantedProtocol))
            replyAck = wantedProtocol & ProtocolFeature.replyAck.mask != 0
        }
        try command(.setOwner)
        try command(.setFeatures, payload: MessageEncoder.u64(features))
        try setMemTable()
        for index in 0..<queueCount {
            try setUpQueue(index, size: queueSize, eventIndex: features & (1 << 29) != 0)
        }
        if features & protocolFeaturesBit != 0 {
            for index in 0..<queueCount { try command(.setVringEnable, payload: MessageEncoder.vringState(index: UInt32(index), num: 1)) }
        }
        return features
    }

    public var memoryRegion: RegionDescription {
        RegionDescription(guestPhysicalAddress: 0, size: UInt64(arena.size), userspaceAddress: arena.userspaceBase, mmapOffset: 0)
    }

    public func setMemTable() throws {
        try command(.setMemTable, payload: MessageEncoder.memTable([memoryRegion]), fds: [arena.fd])
    }

    /// SET_VRING_NUM/BASE/ADDR/CALL/KICK for one queue with rings in the arena.
    public func setUpQueue(_ index: Int, size: UInt16, eventIndex: Bool, base: UInt16 = 0) throws {
        let driver = DriverQueue(arena: arena, size: size)
        driver.eventIndex = eventIndex
        if base != 0 { driver.setIndices(avail: base, used: base) }
        let queue = try FrontendQueue(index: index, driver: driver)
        queues[index] = queue
        try command(.setVringNum, payload: MessageEncoder.vringState(index: UInt32(index), num: UInt32(size)))
        try command(.setVringBase, payload: MessageEncoder.vringState(index: UInt32(index), num: UInt32(base)))
        let u = arena.userspaceBase
        try command(.setVringAddr, payload: MessageEncoder.vringAddress(
            VringAddress(index: UInt32(index), descriptors: u + driver.descriptorTable, used: u + driver.usedRing, avail: u + driver.availRing)))
        try command(.setVringCall, payload: MessageEncoder.u64(UInt64(index)), fds: [queue.call.raw])
        try command(.setVringKick, payload: MessageEncoder.u64(UInt64(index)), fds: [queue.kick.raw])
    }

    /// GET_VRING_BASE: stops the queue and returns the backend's next avail index.
    public func stopQueue(_ index: Int) throws -> UInt32 {
        let payload = try query(.getVringBase, payload: MessageEncoder.vringState(index: UInt32(index), num: 0))
        return payload.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: 4, as: UInt32.self) }
    }
}

/// One queue as the frontend sees it: the driver rings plus its kick and call eventfds.
public final class FrontendQueue: @unchecked Sendable {
    // @unchecked Sendable: used from one thread at a time.
    public let index: Int
    public let driver: DriverQueue
    public let kick: Descriptor
    public let call: Descriptor

    init(index: Int, driver: DriverQueue) throws {
        self.index = index
        self.driver = driver
        kick = try EventFD.make()
        call = try EventFD.make()
    }

    public func notify() { EventFD.signal(kick.raw) }

    /// Waits until the backend signals the call eventfd (or the timeout passes); true if signalled.
    public func waitForCall(timeoutMilliseconds: Int32) -> Bool {
        var pfd = pollfd(fd: call.raw, events: Int16(POLLIN), revents: 0)
        let n = poll(&pfd, 1, timeoutMilliseconds)
        if n > 0 { EventFD.drain(call.raw); return true }
        return false
    }

    /// Polls the used ring until `count` entries arrived or the timeout passes.
    public func waitForUsed(count: Int, timeoutMilliseconds: Int) -> [DriverQueue.UsedEntry] {
        var collected = [DriverQueue.UsedEntry]()
        let deadline = monotonicNanoseconds() + UInt64(timeoutMilliseconds) * 1_000_000
        while collected.count < count {
            collected += driver.collectUsed()
            if collected.count >= count { break }
            if monotonicNanoseconds() > deadline { break }
            _ = waitForCall(timeoutMilliseconds: 10)
        }
        return collected
    }
}
