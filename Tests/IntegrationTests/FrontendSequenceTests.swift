import Testing
import Glibc
import SystemCalls
import VhostUser
import VirtioNet
import VhostUserFrontend

/// The message sequences real frontends send, replayed against the real backend loop over a
/// unix socket, in their order and with their REPLY_ACK flags (taken from tapwire's trace log
/// under each frontend).
@Suite(.serialized) struct FrontendSequenceTests {
    /// QEMU 10.0 resets the device twice while it initialises it, after it has handed over the
    /// call and error eventfds, and waits for the ack of each SET_VRING_ENABLE that follows.
    /// RESET_DEVICE used to forget the negotiated protocol features, so no ack came and QEMU
    /// waited for ever before the guest booted.
    @Test func qemu10StartUpResetsTheDeviceAndStillAcks() throws {
        let backend = try RunningBackend()
        defer { backend.stop() }
        let fe = try VhostUserFrontend(connectingTo: backend.socketPath)
        // A missing reply fails the test in 2 s instead of hanging it.
        try UnixSocket.setReceiveTimeout(fe.socket.raw, milliseconds: 2000)

        let offered = try fe.queryU64(.getFeatures)
        let offeredProtocol = try fe.queryU64(.getProtocolFeatures)
        let wantedProtocol = offeredProtocol & (ProtocolFeature.multiqueue.mask | ProtocolFeature.replyAck.mask
            | ProtocolFeature.resetDevice.mask | ProtocolFeature.configureMemSlots.mask | ProtocolFeature.netMTU.mask)
        #expect(wantedProtocol & ProtocolFeature.resetDevice.mask != 0, "RESET_DEVICE is offered")
        try fe.send(.setProtocolFeatures, payload: MessageEncoder.u64(wantedProtocol))
        fe.replyAck = true
        #expect(try fe.queryU64(.getQueueNum) == 1)
        _ = try fe.queryU64(.getMaxMemSlots)
        try fe.send(.setOwner)
        _ = try fe.queryU64(.getFeatures)
        let errors = try (0..<2).map { _ in try EventFD.make() }
        let initialCalls = try (0..<2).map { _ in try EventFD.make() }
        for index in 0..<2 {
            try fe.send(.setVringCall, payload: MessageEncoder.u64(UInt64(index)), fds: [initialCalls[index].raw])
            try fe.send(.setVringErr, payload: MessageEncoder.u64(UInt64(index)), fds: [errors[index].raw])
        }
        for _ in 0..<2 {
            try fe.send(.resetDevice)
            for index: UInt32 in 0..<2 {
                // Throws on the 2 s timeout if the backend owes this ack and does not send it.
                try fe.command(.setVringEnable, payload: MessageEncoder.vringState(index: index, num: 1))
            }
        }
        let features = offered & ~NetFeature.guestGSO & ~NetFeature.logAll
        try fe.send(.setFeatures, payload: MessageEncoder.u64(features))
        try fe.command(.addMemReg, payload: MessageEncoder.singleRegion(fe.memoryRegion), fds: [fe.arena.fd])
        for index in 0..<2 { try fe.setUpQueue(index, size: 256, eventIndex: features & NetFeature.ringEventIndex != 0) }

        // Rings enabled before SET_FEATURES stay enabled, so frames flow (sink mode: returned used).
        let tx = try #require(fe.queues[1])
        tx.driver.post([fe.transmitBuffer(seed: 1)])
        tx.notify()
        #expect(tx.waitForUsed(count: 1, timeoutMilliseconds: 3000).count == 1, "transmit works after QEMU 10's start-up")
        #expect(backend.stats(queue: 1).drops(.queueDisabled) == 0)

        // The error eventfd from before the resets still tells QEMU of a broken queue.
        tx.driver.forceAvailIndex(tx.driver.availIndex &+ 1000)
        tx.notify()
        var pfd = pollfd(fd: errors[1].raw, events: Int16(POLLIN), revents: 0)
        #expect(poll(&pfd, 1, 2000) == 1, "error eventfd given before RESET_DEVICE is signalled")
    }

    /// What QEMU 10 passes to the guest from a backend's offer: GUEST_ANNOUNCE (QEMU then has
    /// the guest announce itself after a migration), never RING_RESET (QEMU 10 does not tell a
    /// vhost-user backend when the guest resets one ring), and no control-queue feature of its own.
    @Test func offersOnlyWhatItCanHonourWithQEMU10() throws {
        let backend = try RunningBackend()
        defer { backend.stop() }
        let fe = try VhostUserFrontend(connectingTo: backend.socketPath)
        let offered = try fe.queryU64(.getFeatures)
        #expect(offered & NetFeature.guestAnnounce != 0)
        #expect(offered & NetFeature.ringReset == 0)
        #expect(offered & NetFeature.ringPacked == 0, "packed rings are not built yet")
        #expect(offered & (NetFeature.ctrlVQ | NetFeature.ctrlGuestOffloads) == 0, "QEMU keeps the control queue")
        #expect(try fe.queryU64(.getProtocolFeatures) & ProtocolFeature.status.mask == 0)
    }

    /// QEMU stops every queue with GET_VRING_BASE, also one that never started (the guest never
    /// set it up): the answer is the base QEMU set, or 0, and the queue stays usable.
    @Test func getVringBaseOfARingThatNeverStarted() throws {
        let backend = try RunningBackend()
        defer { backend.stop() }
        let fe = try VhostUserFrontend(connectingTo: backend.socketPath)
        try UnixSocket.setReceiveTimeout(fe.socket.raw, milliseconds: 2000)
        #expect(try fe.stopQueue(0) == 0)
        try fe.send(.setVringBase, payload: MessageEncoder.vringState(index: 1, num: 42))
        #expect(try fe.stopQueue(1) == 42)
        #expect(try fe.stopQueue(1) == 42, "asking twice changes nothing")
        try fe.start()
        let tx = try #require(fe.queues[1])
        tx.driver.post([fe.transmitBuffer(seed: 3)])
        tx.notify()
        #expect(tx.waitForUsed(count: 1, timeoutMilliseconds: 3000).count == 1, "the queue starts normally afterwards")
    }

    /// QEMU 10 (MSI-X) hands over the guest's real interrupt eventfd with a SET_VRING_CALL that
    /// follows the kick: what tapwire signalled before went to a placeholder. The new eventfd
    /// is signalled at once, and the next interrupt is not suppressed by event idx.
    @Test func aNewCallEventfdOnARunningQueueIsSignalled() throws {
        let backend = try RunningBackend()
        defer { backend.stop() }
        let fe = try VhostUserFrontend(connectingTo: backend.socketPath)
        try fe.start()
        let tx = try #require(fe.queues[1])
        tx.driver.post([fe.transmitBuffer(seed: 1)])
        tx.notify()
        #expect(tx.waitForUsed(count: 1, timeoutMilliseconds: 3000).count == 1)
        let replacement = try EventFD.make()
        try fe.command(.setVringCall, payload: MessageEncoder.u64(1), fds: [replacement.raw])
        var pfd = pollfd(fd: replacement.raw, events: Int16(POLLIN), revents: 0)
        #expect(poll(&pfd, 1, 2000) == 1, "the new call eventfd is signalled")
    }

    /// GET_VRING_BASE stops a queue while the frontend keeps (and may still signal) its kick
    /// eventfd: the backend must stop watching it, not wake on it for ever.
    @Test func kicksAfterGetVringBaseAreNotWatched() throws {
        let backend = try RunningBackend()
        defer { backend.stop() }
        let fe = try VhostUserFrontend(connectingTo: backend.socketPath)
        try fe.start()
        let tx = try #require(fe.queues[1])
        _ = try fe.stopQueue(1)
        let before = backend.stats(queue: 1).kicks
        for _ in 0..<5 { tx.notify() }
        usleep(200_000)
        #expect(backend.stats(queue: 1).kicks - before == 0, "a stopped queue's kicks are not counted")
    }

    /// QEMU 7.2 never resets during start-up: features, then memory table, then queues with
    /// their enables after the kick.
    @Test func qemu72StartUp() throws {
        let backend = try RunningBackend()
        defer { backend.stop() }
        let fe = try VhostUserFrontend(connectingTo: backend.socketPath)
        try UnixSocket.setReceiveTimeout(fe.socket.raw, milliseconds: 2000)
        try fe.start()
        let tx = try #require(fe.queues[1])
        tx.driver.post([fe.transmitBuffer(seed: 2)])
        tx.notify()
        #expect(tx.waitForUsed(count: 1, timeoutMilliseconds: 3000).count == 1)
    }

    /// A disconnect is not a reset: the next frontend starts from nothing, protocol features
    /// included, so it must not get acks it did not ask for.
    @Test func disconnectForgetsProtocolFeatures() throws {
        let backend = try RunningBackend()
        defer { backend.stop() }
        do {
            let fe = try VhostUserFrontend(connectingTo: backend.socketPath)
            try fe.start()
            #expect(backend.onLoop { $0.device.replyAckNegotiated })
        }
        let fe = try VhostUserFrontend(connectingTo: backend.socketPath)
        #expect(try fe.queryU64(.getQueueNum) == 1)
        #expect(backend.onLoop { !$0.device.replyAckNegotiated }, "a new connection negotiates afresh")
    }
}
