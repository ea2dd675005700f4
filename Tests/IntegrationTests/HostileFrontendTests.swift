import Testing
import Glibc
import Foundation
import CTapwire
import SystemCalls
import VhostUser
import VirtioNet
import VhostUserFrontend

/// Frontends that do things in the wrong order or send too much.
@Suite(.serialized) struct HostileFrontendTests {
    func sendOneFrame(_ fe: VhostUserFrontend, seed: UInt8) -> Int {
        let tx = fe.queues[1]!
        let buffer = fe.transmitBuffer(seed: seed)
        tx.driver.post([buffer])
        tx.notify()
        return tx.waitForUsed(count: 1, timeoutMilliseconds: 2000).count
    }

    @Test func kickBeforeMemoryStartsOnceMemoryArrives() throws {
        let backend = try RunningBackend()
        defer { backend.stop() }
        let fe = try VhostUserFrontend(connectingTo: backend.socketPath)
        fe.replyAck = false
        try fe.command(.setFeatures, payload: MessageEncoder.u64(NetFeature.version1))
        // Queue 1 fully described and kicked, but no memory table yet.
        let driver = DriverQueue(arena: fe.arena, size: 64)
        let kick = try EventFD.make(), call = try EventFD.make()
        try fe.command(.setVringNum, payload: MessageEncoder.vringState(index: 1, num: 64))
        try fe.command(.setVringBase, payload: MessageEncoder.vringState(index: 1, num: 0))
        let u = fe.arena.userspaceBase
        try fe.command(.setVringAddr, payload: MessageEncoder.vringAddress(VringAddress(index: 1, descriptors: u + driver.descriptorTable, used: u + driver.usedRing, avail: u + driver.availRing)))
        try fe.command(.setVringCall, payload: MessageEncoder.u64(1), fds: [call.raw])
        try fe.command(.setVringKick, payload: MessageEncoder.u64(1), fds: [kick.raw])
        _ = try fe.queryU64(.getQueueNum) // replies come in order: everything above is handled
        #expect(backend.onLoop { $0.device.queues[1].isRunning } == false, "no memory, no ring")
        try fe.setMemTable()
        _ = try fe.queryU64(.getQueueNum)
        #expect(backend.onLoop { $0.device.queues[1].isRunning }, "the ring starts once memory is known")
        let buffer = fe.transmitBuffer(seed: 1)
        driver.post([buffer])
        EventFD.signal(kick.raw)
        var used = [DriverQueue.UsedEntry]()
        for _ in 0..<100 where used.isEmpty { used = driver.collectUsed(); usleep(10_000) }
        #expect(used.count == 1)
    }

    @Test func tooManyDescriptorsOnOneMessageHangUpAndLeakNothing() throws {
        let backend = try RunningBackend()
        defer { backend.stop() }
        do { _ = try VhostUserFrontend(connectingTo: backend.socketPath) } // warm up lazily opened fds
        _ = try sh("true") // Foundation's Process keeps a few descriptors from its first use
        usleep(50_000)
        let before = openDescriptorCount()
        // Eight descriptors on a request that takes one: refused, connection dropped.
        let fe = try VhostUserFrontend(connectingTo: backend.socketPath)
        let extra = try (0..<8).map { _ in try EventFD.make() }
        try fe.send(.setVringKick, payload: MessageEncoder.u64(0), fds: extra.map(\.raw))
        #expect(try fe.readReply() == nil, "backend hangs up")
        // Twelve: more than the backend's control buffer holds (the kernel truncates, MSG_CTRUNC).
        let script = """
        import os, socket, struct, sys
        s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])
        fds = [os.eventfd(0) for _ in range(12)]
        socket.send_fds(s, [struct.pack("<IIIQ", 12, 1, 8, 0)], fds)
        s.settimeout(3)
        try:
            print("closed" if s.recv(16) == b"" else "answered")
        except ConnectionResetError:
            print("closed")
        """
        let scriptPath = backend.socketPath + ".py"
        try script.write(toFile: scriptPath, atomically: true, encoding: .utf8)
        defer { unlink(scriptPath) }
        let output = try sh("python3 \(scriptPath) \(backend.socketPath)")
        #expect(output.contains("closed"), "hang up after a truncated descriptor list: \(output)")
        usleep(100_000)
        _ = backend.onLoop { _ in 0 }
        #expect(openDescriptorCount() == before + 2 + 8, "only the test's own socket and eventfds remain open")
        _ = fe
    }

    @Test func memoryTableReplacedUnderLiveRings() throws {
        let backend = try RunningBackend()
        defer { backend.stop() }
        let fe = try VhostUserFrontend(connectingTo: backend.socketPath)
        try fe.start()
        #expect(sendOneFrame(fe, seed: 1) == 1)
        // The same RAM announced again (as QEMU does after a memory map change).
        try fe.setMemTable()
        _ = try fe.queryU64(.getQueueNum)
        #expect(backend.onLoop { $0.device.queues[1].isRunning })
        #expect(sendOneFrame(fe, seed: 2) == 1, "the ring kept its position across the new table")
        #expect(backend.stats(queue: 1).frames == 2)
        // A table that no longer covers the rings fails those queues, not the process.
        let tiny = RegionDescription(guestPhysicalAddress: 0, size: 4096, userspaceAddress: 0x1000_0000, mmapOffset: 0)
        try fe.command(.setMemTable, payload: MessageEncoder.memTable([tiny]), fds: [fe.arena.fd])
        _ = try fe.queryU64(.getQueueNum)
        #expect(backend.onLoop { $0.device.queues[1].fault } != nil)
        #expect(try fe.queryU64(.getQueueNum) == 1)
    }
}
