import Testing
import Glibc
import SystemCalls
import VhostUser
import VirtioNet
import VhostUserFrontend

/// Live migration from the backend's side: the dirty log QEMU hands over with SET_LOG_BASE,
/// the pages tapwire marks in it, hostile log messages, and the announce on the destination.
@Suite(.serialized) struct MigrationTests {
    static let page: UInt64 = 4096

    /// The frontend's side of a dirty log: a sealed memfd, as QEMU makes it, and its bits.
    final class Bitmap {
        let fd: Descriptor
        let mapping: MemoryMapping
        let bytes: Int

        init(coveringGuestBytes guestBytes: Int, sealed: Bool = true) throws {
            bytes = guestBytes / Int(MigrationTests.page) / 8
            fd = try MemFD.make(name: "tapwire-test-log", size: bytes, sealed: sealed)
            mapping = try MemoryMapping(descriptor: fd.raw, length: bytes)
        }

        /// The guest physical pages marked dirty.
        var pages: Set<UInt64> {
            var marked = Set<UInt64>()
            let bits = mapping.base.assumingMemoryBound(to: UInt8.self)
            for byte in 0..<bytes where bits[byte] != 0 {
                for bit in 0..<8 where bits[byte] & (1 << bit) != 0 { marked.insert(UInt64(byte * 8 + bit)) }
            }
            return marked
        }

        func clear() { memset(mapping.base, 0, bytes) }
    }

    static func pages(of address: UInt64, length: UInt64) -> Set<UInt64> {
        Set((address / page)...((address + length - 1) / page))
    }

    /// QEMU's steps when a migration starts: SET_LOG_BASE (whose empty reply it waits for),
    /// SET_FEATURES with LOG_ALL, and SET_VRING_ADDR with VHOST_VRING_F_LOG for every queue.
    static func startLogging(_ fe: VhostUserFrontend, features: UInt64, bitmap: Bitmap) throws {
        let reply = try fe.query(.setLogBase, payload: MessageEncoder.logBase(size: UInt64(bitmap.bytes), offset: 0), fds: [bitmap.fd.raw])
        #expect(reply.isEmpty, "SET_LOG_BASE is answered with an empty reply")
        try fe.command(.setFeatures, payload: MessageEncoder.u64(features | NetFeature.logAll))
        for (index, queue) in fe.queues.sorted(by: { $0.key < $1.key }) {
            let d = queue.driver
            let u = fe.arena.userspaceBase
            try fe.command(.setVringAddr, payload: MessageEncoder.vringAddress(VringAddress(
                index: UInt32(index), flags: VhostUserLimits.vringFlagLog, descriptors: u + d.descriptorTable, used: u + d.usedRing,
                avail: u + d.availRing, log: d.usedRing)))
        }
    }

    @Test func migrationFeaturesAreOffered() throws {
        let backend = try RunningBackend()
        defer { backend.stop() }
        let fe = try VhostUserFrontend(connectingTo: backend.socketPath)
        #expect(try fe.queryU64(.getFeatures) & NetFeature.logAll != 0)
        let protocolFeatures = try fe.queryU64(.getProtocolFeatures)
        #expect(protocolFeatures & ProtocolFeature.logSharedMemory.mask != 0)
        #expect(protocolFeatures & ProtocolFeature.rarp.mask != 0)
        #expect(protocolFeatures & ProtocolFeature.pagefault.mask == 0, "postcopy is not offered")
    }

    /// Receive marks exactly the pages of the buffers a frame filled (header and num_buffers
    /// included) and the used ring; transmit only the used ring; nothing once logging stops.
    @Test(.enabled(if: tunAvailable, "needs root and /dev/net/tun"))
    func writesIntoGuestMemoryAreLogged() throws {
        let name = uniqueTapName("mig")
        let backend = try RunningBackend(tapName: name)
        defer { backend.stop() }
        let injector = try PacketSocket(interface: name)
        let fe = try VhostUserFrontend(connectingTo: backend.socketPath)
        let features = try fe.start(wantedFeatures: ~NetFeature.guestLargeReceive)
        let bitmap = try Bitmap(coveringGuestBytes: fe.arena.size)
        try Self.startLogging(fe, features: features, bitmap: bitmap)
        #expect(backend.onLoop { $0.device.loggingDirtyPages })
        let rx = try #require(fe.queues[0])
        let tx = try #require(fe.queues[1])
        let usedRingPages = Self.pages(of: rx.driver.usedRing, length: 6 + 8 * UInt64(rx.driver.size))
        let txUsedRingPages = Self.pages(of: tx.driver.usedRing, length: 6 + 8 * UInt64(tx.driver.size))

        // Eight 2 KiB receive buffers, each straddling a page boundary, on pages nothing else
        // uses: enough that the host's own chatter cannot take them all before the frame.
        let start = (fe.arena.allocate(18 * Int(Self.page), alignment: Int(Self.page)) + Self.page) + Self.page - 1024
        let posted = (0..<8).map { start + 2 * Self.page * UInt64($0) }
        bitmap.clear()
        var buffers = [UInt16: UInt64]()
        for address in posted {
            if let head = rx.driver.post([DriverBuffer(address: address, length: 2048, writable: true)]) { buffers[head] = address }
        }
        rx.notify()
        let frame = testFrame(length: 1500, seed: 7, destination: [0x52, 0x54, 0, 0x12, 0x34, 0x56])
        try injector.send(frame)
        // The host's own chatter (IPv6 solicitations) may take a buffer too: every used entry
        // counts, and a buffer left unfilled must stay unmarked.
        var used = [DriverQueue.UsedEntry]()
        var gotFrame = false
        let deadline = monotonicNanoseconds() + 3_000_000_000
        while !gotFrame && used.count < posted.count && monotonicNanoseconds() < deadline {
            for entry in rx.waitForUsed(count: 1, timeoutMilliseconds: 500) {
                used.append(entry)
                let bytes = fe.arena.read(try #require(buffers[entry.head]), count: Int(entry.length))
                if bytes.count == 12 + frame.count && Array(bytes[12...]) == frame { gotFrame = true }
            }
        }
        #expect(gotFrame, "the injected frame arrived")
        usleep(20_000)
        used += rx.driver.collectUsed()
        // Pages are marked before the used entry is published: read the log, then see what
        // chatter filled meanwhile, whose pages may (not must) be marked too.
        let marked = bitmap.pages
        let late = rx.driver.collectUsed()
        var expected = usedRingPages
        var allowed = usedRingPages
        var filled = Set<UInt64>()
        for (entries, required) in [(used, true), (late, false)] {
            for entry in entries {
                let address = try #require(buffers[entry.head])
                filled.insert(address)
                let pages = Self.pages(of: address, length: UInt64(max(entry.length, 12)))
                if required { expected.formUnion(pages) }
                allowed.formUnion(pages)
            }
        }
        used += late
        #expect(expected.isSubset(of: marked) && marked.isSubset(of: allowed),
                "exactly the filled buffers' pages (header and num_buffers included) and the used ring")
        for address in posted where !filled.contains(address) {
            #expect(marked.isDisjoint(with: Self.pages(of: address, length: 2048).subtracting(allowed)), "not a buffer still waiting")
        }
        // Receive stops here, so that chatter cannot mark pages in the transmit checks below.
        let receiveResume = try fe.stopQueue(0)
        used += rx.driver.collectUsed()
        #expect(receiveResume == UInt32(used.count), "receive resumes after the chains it filled")

        // Transmit reads guest memory: only its used ring is marked.
        bitmap.clear()
        let buffer = fe.transmitBuffer(seed: 3)
        tx.driver.post([buffer])
        tx.notify()
        #expect(tx.waitForUsed(count: 1, timeoutMilliseconds: 3000).count == 1)
        usleep(20_000)
        #expect(bitmap.pages == txUsedRingPages, "transmit marks its used ring and nothing else")

        // Logging off: no more marks.
        try fe.command(.setFeatures, payload: MessageEncoder.u64(features))
        #expect(backend.onLoop { !$0.device.loggingDirtyPages })
        bitmap.clear()
        tx.driver.post([fe.transmitBuffer(seed: 4)])
        tx.notify()
        #expect(tx.waitForUsed(count: 1, timeoutMilliseconds: 3000).count == 1)
        #expect(bitmap.pages.isEmpty)
        // The exact position to resume from: every chain posted was consumed once.
        #expect(try fe.stopQueue(1) == 2)
    }

    /// Each bad SET_LOG_BASE is refused with a reason and the connection hung up (QEMU then
    /// fails the migration instead of copying memory nobody logged); nothing is logged.
    @Test func hostileLogMessagesAreRefused() throws {
        let backend = try RunningBackend()
        defer { backend.stop() }
        func refused(_ what: String, _ send: (VhostUserFrontend) throws -> Void) throws {
            let fe = try VhostUserFrontend(connectingTo: backend.socketPath)
            try UnixSocket.setReceiveTimeout(fe.socket.raw, milliseconds: 2000)
            try fe.start()
            try send(fe)
            #expect(try fe.readReply() == nil, "hung up: \(what)")
            #expect(backend.onLoop { $0.device.dirtyLog == nil && !$0.device.loggingDirtyPages }, "no log: \(what)")
        }
        // Half the bitmap 64 MiB of guest memory needs.
        try refused("log smaller than guest memory") { fe in
            let small = try Bitmap(coveringGuestBytes: fe.arena.size / 2)
            try fe.send(.setLogBase, payload: MessageEncoder.logBase(size: UInt64(small.bytes), offset: 0), fds: [small.fd.raw])
        }
        try refused("offset past the end of the memfd") { fe in
            let log = try Bitmap(coveringGuestBytes: fe.arena.size)
            try fe.send(.setLogBase, payload: MessageEncoder.logBase(size: UInt64(log.bytes), offset: 1 << 20), fds: [log.fd.raw])
        }
        // A file its owner can truncate under the mapping (the log would fault mid-write).
        try refused("log not sealed against shrinking") { fe in
            let unsealed = try Bitmap(coveringGuestBytes: fe.arena.size, sealed: false)
            try fe.send(.setLogBase, payload: MessageEncoder.logBase(size: UInt64(unsealed.bytes), offset: 0), fds: [unsealed.fd.raw])
        }
        try refused("SET_LOG_BASE without a descriptor") { fe in
            try fe.send(.setLogBase, payload: MessageEncoder.logBase(size: 2048, offset: 0))
        }
        try refused("LOG_ALL before any log") { fe in
            try fe.send(.setFeatures, payload: MessageEncoder.u64(NetFeature.version1 | NetFeature.logAll))
        }
    }

    /// QEMU replaces the log while logging is on when guest memory grows: the new one is
    /// written from then on, the old one no more.
    @Test(.enabled(if: tunAvailable, "needs root and /dev/net/tun"))
    func aReplacedLogTakesOverWhileLogging() throws {
        let name = uniqueTapName("mgr")
        let backend = try RunningBackend(tapName: name)
        defer { backend.stop() }
        let fe = try VhostUserFrontend(connectingTo: backend.socketPath)
        let features = try fe.start()
        let old = try Bitmap(coveringGuestBytes: fe.arena.size)
        try Self.startLogging(fe, features: features, bitmap: old)
        let new = try Bitmap(coveringGuestBytes: 2 * fe.arena.size)
        #expect(try fe.query(.setLogBase, payload: MessageEncoder.logBase(size: UInt64(new.bytes), offset: 0), fds: [new.fd.raw]).isEmpty)
        old.clear()
        let tx = try #require(fe.queues[1])
        tx.driver.post([fe.transmitBuffer(seed: 5)])
        tx.notify()
        #expect(tx.waitForUsed(count: 1, timeoutMilliseconds: 3000).count == 1)
        usleep(20_000)
        #expect(old.pages.isEmpty, "the old log is no longer written")
        #expect(!new.pages.isEmpty, "the new one is")
    }

    /// SEND_RARP puts a RARP from the guest's MAC into the TAP for the bridges to learn.
    @Test(.enabled(if: tunAvailable, "needs root and /dev/net/tun"))
    func sendRARPAnnouncesTheGuestOnTheTap() throws {
        let name = uniqueTapName("rarp")
        let backend = try RunningBackend(tapName: name)
        defer { backend.stop() }
        let capture = try PacketSocket(interface: name)
        let fe = try VhostUserFrontend(connectingTo: backend.socketPath)
        try fe.start()
        let mac: [UInt8] = [0x52, 0x54, 0x00, 0xab, 0xcd, 0xef]
        try fe.command(.sendRARP, payload: mac + [0, 0])
        let frames = capture.receive(count: 1) { $0.count >= 14 && $0[12] == 0x80 && $0[13] == 0x35 }
        let frame = try #require(frames.first)
        #expect(Array(frame[0..<6]) == [UInt8](repeating: 0xff, count: 6), "broadcast")
        #expect(Array(frame[6..<12]) == mac, "from the guest's MAC")
        #expect(Array(frame[22..<28]) == mac, "RARP sender hardware address")
    }
}
