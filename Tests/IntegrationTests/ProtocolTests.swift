import Testing
import Glibc
import CTapwire
import SystemCalls
import VhostUser
import VirtioNet
import VhostUserFrontend
import Virtqueue

/// A frontend written in the test suite speaks vhost-user to the real backend loop over a
/// unix socket, with memfd guest memory and eventfd kicks and calls.
@Suite(.serialized) struct ProtocolTests {
    @Test func handshakeOffersTheBasicFeatures() throws {
        let backend = try RunningBackend()
        defer { backend.stop() }
        let fe = try VhostUserFrontend(connectingTo: backend.socketPath)
        let features = try fe.queryU64(.getFeatures)
        for bit in [NetFeature.version1, NetFeature.ringIndirect, NetFeature.ringEventIndex, NetFeature.protocolFeatures] {
            #expect(features & bit != 0, "feature \(NetFeature.describe(bit)) offered")
        }
        let protocolFeatures = try fe.queryU64(.getProtocolFeatures)
        #expect(protocolFeatures & ProtocolFeature.replyAck.mask != 0)
        #expect(protocolFeatures & ProtocolFeature.configureMemSlots.mask != 0)
        try fe.send(.setProtocolFeatures, payload: MessageEncoder.u64(protocolFeatures))
        #expect(try fe.queryU64(.getQueueNum) == 1)
        #expect(try fe.queryU64(.getMaxMemSlots) == 64)
        fe.replyAck = true
        try fe.command(.setOwner) // acked with 0
    }

    @Test func transmitInSinkModeReturnsEveryChain() throws {
        let backend = try RunningBackend()
        defer { backend.stop() }
        let fe = try VhostUserFrontend(connectingTo: backend.socketPath)
        try fe.start()
        let tx = try #require(fe.queues[1])
        let buffer = fe.arena.allocate(1514 + 12)
        fe.arena.write(plainHeader + testFrame(length: 1514, seed: 1), at: buffer)
        for _ in 0..<100 { tx.driver.post([DriverBuffer(address: buffer, length: 1526, writable: false)]) }
        tx.notify()
        let used = tx.waitForUsed(count: 100, timeoutMilliseconds: 5000)
        #expect(used.count == 100)
        #expect(used.allSatisfy { $0.length == 0 })
        let stats = backend.stats(queue: 1)
        #expect(stats.frames == 100)
        #expect(stats.bytes == 100 * 1514)
        #expect(try fe.stopQueue(1) == 100, "GET_VRING_BASE reports the next avail index")
    }

    @Test func unknownRequestGetsAnErrorAckAndTheConnectionLives() throws {
        let backend = try RunningBackend()
        defer { backend.stop() }
        let fe = try VhostUserFrontend(connectingTo: backend.socketPath)
        try fe.sendRaw(MessageEncoder.encode(request: 200, flags: HeaderFlags.version | HeaderFlags.needReply, payload: []))
        // REPLY_ACK was not negotiated, so no ack is owed; the connection must still answer.
        #expect(try fe.queryU64(.getQueueNum) == 1)
        try fe.send(.setProtocolFeatures, payload: MessageEncoder.u64(ProtocolFeature.replyAck.mask))
        try fe.sendRaw(MessageEncoder.encode(request: 200, flags: HeaderFlags.version | HeaderFlags.needReply, payload: []))
        let reply = try #require(try fe.readReply())
        #expect(reply.payload != MessageEncoder.u64(0), "unknown request is refused")
        #expect(try fe.queryU64(.getQueueNum) == 1)
    }

    @Test func malformedMessageHangsUpAndTheNextConnectionWorks() throws {
        let backend = try RunningBackend()
        defer { backend.stop() }
        let fdsBefore = openDescriptorCount()
        do {
            let fe = try VhostUserFrontend(connectingTo: backend.socketPath)
            try fe.sendRaw(MessageEncoder.encode(request: 1, flags: 0x2, payload: [])) // version 2
            #expect(try fe.readReply() == nil, "backend hangs up")
        }
        do {
            let fe = try VhostUserFrontend(connectingTo: backend.socketPath)
            try fe.sendRaw(MessageEncoder.encode(request: VhostUserRequest.setFeatures.rawValue, flags: 1, payload: [1, 2, 3]))
            #expect(try fe.readReply() == nil, "wrong payload size: hang up")
        }
        do {
            let fe = try VhostUserFrontend(connectingTo: backend.socketPath)
            // Header claims a 4 GiB payload.
            try fe.sendRaw(MessageEncoder.encode(request: 1, flags: 1, payload: []).prefix(8) + [0xff, 0xff, 0xff, 0xff])
            #expect(try fe.readReply() == nil)
        }
        let fe = try VhostUserFrontend(connectingTo: backend.socketPath)
        try fe.start()
        #expect(backend.onLoop { $0.device.queues[1].isRunning })
        _ = backend.onLoop { _ in 0 } // let the loop settle
        _ = fdsBefore
    }

    @Test func memoryRegionLargerThanItsFileIsRefused() throws {
        let backend = try RunningBackend()
        defer { backend.stop() }
        let fe = try VhostUserFrontend(connectingTo: backend.socketPath, memoryBytes: 1 << 20)
        try fe.send(.setProtocolFeatures, payload: MessageEncoder.u64(ProtocolFeature.replyAck.mask))
        fe.replyAck = true
        let tooBig = RegionDescription(guestPhysicalAddress: 0, size: 1 << 30, userspaceAddress: fe.arena.userspaceBase, mmapOffset: 0)
        #expect(throws: FrontendError.self) {
            try fe.command(.setMemTable, payload: MessageEncoder.memTable([tooBig]), fds: [fe.arena.fd])
        }
        let pastEnd = RegionDescription(guestPhysicalAddress: 0, size: 4096, userspaceAddress: fe.arena.userspaceBase, mmapOffset: 2 << 20)
        #expect(throws: FrontendError.self) {
            try fe.command(.setMemTable, payload: MessageEncoder.memTable([pastEnd]), fds: [fe.arena.fd])
        }
        try fe.setMemTable() // a good table still works
    }

    @Test func badRingSizesAndIndexesAreRefused() throws {
        let backend = try RunningBackend()
        defer { backend.stop() }
        let fe = try VhostUserFrontend(connectingTo: backend.socketPath)
        try fe.send(.setProtocolFeatures, payload: MessageEncoder.u64(ProtocolFeature.replyAck.mask))
        fe.replyAck = true
        for size: UInt32 in [0, 3, 65536] {
            #expect(throws: FrontendError.self, "size \(size)") {
                try fe.command(.setVringNum, payload: MessageEncoder.vringState(index: 0, num: size))
            }
        }
        #expect(throws: FrontendError.self) { try fe.command(.setVringNum, payload: MessageEncoder.vringState(index: 7, num: 256)) }
        #expect(throws: FrontendError.self) { try fe.command(.setVringBase, payload: MessageEncoder.vringState(index: 0, num: 70000)) }
    }

    @Test func ringOutsideMemoryFailsTheQueueAndSignalsItsErrorFd() throws {
        let backend = try RunningBackend()
        defer { backend.stop() }
        let fe = try VhostUserFrontend(connectingTo: backend.socketPath)
        try fe.command(.setFeatures, payload: MessageEncoder.u64(NetFeature.version1))
        try fe.setMemTable()
        let err = try EventFD.make()
        try fe.command(.setVringErr, payload: MessageEncoder.u64(1), fds: [err.raw])
        try fe.command(.setVringNum, payload: MessageEncoder.vringState(index: 1, num: 256))
        try fe.command(.setVringAddr, payload: MessageEncoder.vringAddress(VringAddress(index: 1, descriptors: 0xdead_0000, used: 0xdead_2000, avail: 0xdead_1000)))
        let kick = try EventFD.make()
        try fe.command(.setVringKick, payload: MessageEncoder.u64(1), fds: [kick.raw])
        var pfd = pollfd(fd: err.raw, events: Int16(POLLIN), revents: 0)
        #expect(poll(&pfd, 1, 2000) == 1, "error eventfd signalled")
        #expect(backend.onLoop { $0.device.queues[1].fault } != nil)
        #expect(try fe.queryU64(.getQueueNum) == 1, "the connection lives on")
    }

    @Test func hostileChainsAreReturnedEmptyAndCounted() throws {
        let backend = try RunningBackend()
        defer { backend.stop() }
        let fe = try VhostUserFrontend(connectingTo: backend.socketPath)
        try fe.start()
        let tx = try #require(fe.queues[1])
        tx.driver.writeDescriptor(0, address: 1 << 40, length: 64, flags: 0, next: 0)      // outside memory
        tx.driver.publish(head: 0)
        tx.driver.writeDescriptor(1, address: 0, length: 64, flags: Ring.descriptorNext, next: 1) // loop
        tx.driver.publish(head: 1)
        tx.driver.writeDescriptor(2, address: 0, length: 4, flags: 0, next: 0)             // shorter than a header
        tx.driver.publish(head: 2)
        tx.notify()
        let used = tx.waitForUsed(count: 3, timeoutMilliseconds: 3000)
        #expect(used.map(\.head).sorted() == [0, 1, 2])
        let stats = backend.stats(queue: 1)
        #expect(stats.drops(.badChain) == 2)
        #expect(stats.drops(.badHeader) == 1)
        #expect(stats.frames == 0)
        // Now an avail index that jumps past the ring size fails the queue, not the process.
        tx.driver.forceAvailIndex(tx.driver.availIndex &+ 1000)
        tx.notify()
        usleep(100_000)
        #expect(backend.onLoop { $0.device.queues[1].fault }?.contains("jumped") == true)
        #expect(try fe.queryU64(.getQueueNum) == 1)
    }

    @Test func reconnectGetsACleanDeviceAndLeaksNoDescriptors() throws {
        let backend = try RunningBackend()
        defer { backend.stop() }
        do {
            let warmup = try VhostUserFrontend(connectingTo: backend.socketPath)
            try warmup.start()
        }
        usleep(50_000)
        let before = openDescriptorCount()
        for round in 0..<20 {
            let fe = try VhostUserFrontend(connectingTo: backend.socketPath)
            try fe.start()
            let tx = try #require(fe.queues[1])
            let buffer = fe.arena.allocate(100)
            fe.arena.write(plainHeader + testFrame(length: 60, seed: UInt8(round)), at: buffer)
            tx.driver.post([DriverBuffer(address: buffer, length: 72, writable: false)])
            tx.notify()
            #expect(tx.waitForUsed(count: 1, timeoutMilliseconds: 2000).count == 1, "round \(round)")
        }
        usleep(100_000)
        _ = backend.onLoop { _ in 0 }
        #expect(openDescriptorCount() == before, "no fd leaked across 20 connections")
        #expect(backend.onLoop { $0.device.memory == nil }, "device reset after the last disconnect")
    }

    @Test func disabledRingDropsTransmit() throws {
        let backend = try RunningBackend()
        defer { backend.stop() }
        let fe = try VhostUserFrontend(connectingTo: backend.socketPath)
        try fe.start()
        try fe.command(.setVringEnable, payload: MessageEncoder.vringState(index: 1, num: 0))
        let tx = try #require(fe.queues[1])
        let buffer = fe.arena.allocate(100)
        fe.arena.write(plainHeader + testFrame(length: 60, seed: 9), at: buffer)
        tx.driver.post([DriverBuffer(address: buffer, length: 72, writable: false)])
        tx.notify()
        #expect(tx.waitForUsed(count: 1, timeoutMilliseconds: 2000).count == 1)
        let stats = backend.stats(queue: 1)
        #expect(stats.drops(.queueDisabled) == 1 && stats.frames == 0)
    }
}
