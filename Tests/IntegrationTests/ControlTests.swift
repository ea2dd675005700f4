import Testing
import Glibc
import Logging
import ControlAPI
import RateLimiter
import SystemCalls
import VhostUser
import VirtioNet
import VhostUserFrontend
@testable import TapwireDaemon

/// The control API served by the real backend loop, over a real unix socket.
@Suite(.serialized) struct ControlTests {
    func withControl(_ body: (RunningBackend, ControlClient) async throws -> Void) async throws {
        let backend = try RunningBackend(config: NetDeviceConfig(txLimits: DirectionLimits(bandwidth: try LimitParser.bandwidth("50Mbit", flag: "--tx-bandwidth"))))
        defer { backend.stop() }
        let apiPath = backend.socketPath + ".api"
        var logger = Logger(label: "api-test")
        logger.logLevel = .critical
        let server = ControlServer(socketPath: apiPath, backend: LoopControlBackend(mailbox: backend.loop.mailbox, name: "vm-test", socketPath: backend.socketPath), logger: logger)
        try await server.start()
        do {
            try await body(backend, ControlClient(socketPath: apiPath))
        } catch {
            await server.shutdown()
            throw error
        }
        await server.shutdown()
    }

    @Test func statusFollowsTheConnection() async throws {
        try await withControl { backend, client in
            let waiting = try await client.status()
            #expect(waiting.state == .waiting)
            #expect(waiting.name == "vm-test")
            #expect(waiting.limits.txHuman.contains("50 Mbit/s"))
            let fe = try VhostUserFrontend(connectingTo: backend.socketPath)
            try fe.start()
            let connected = try await client.status()
            #expect(connected.state == .connected)
            #expect(connected.negotiatedFeatures.contains("VERSION_1"))
            #expect(connected.queues.count == 2 && connected.queues.allSatisfy(\.running))
        }
    }

    @Test func metricsCountWhatTheGuestSent() async throws {
        try await withControl { backend, client in
            let fe = try VhostUserFrontend(connectingTo: backend.socketPath)
            try fe.start()
            let tx = try #require(fe.queues[1])
            let buffer = fe.transmitBuffer(seed: 3)
            for _ in 0..<10 { tx.driver.post([buffer]) }
            tx.notify()
            #expect(tx.waitForUsed(count: 10, timeoutMilliseconds: 3000).count == 10)
            let metrics = try await client.metrics()
            let txQueue = try #require(metrics.queues.first { $0.index == 1 })
            #expect(txQueue.frames == 10 && txQueue.bytes == 1000)
            let text = try await client.prometheus()
            #expect(text.contains("tapwire_frames_total{queue=\"1\",direction=\"tx\"} 10"))
        }
    }

    @Test func limitsChangeLiveThroughTheAPI() async throws {
        try await withControl { backend, client in
            let update = LimitUpdate(tx: try DirectionUpdate.parse(bandwidth: "200Mbit", ops: "1000", bandwidthFlag: "tx.bandwidth", opsFlag: "tx.ops"),
                                     rx: try DirectionUpdate.parse(bandwidth: "10MB", ops: nil, bandwidthFlag: "rx.bandwidth", opsFlag: "rx.ops"))
            let status = try await client.updateLimits(update)
            #expect(status.limits.txHuman.contains("200 Mbit/s"))
            let inDevice = backend.onLoop { $0.device.currentLimits }
            #expect(inDevice.tx.bandwidth == (try LimitParser.bandwidth("200Mbit", flag: "x")))
            #expect(inDevice.tx.ops == (try LimitParser.ops("1000", flag: "x")))
            #expect(inDevice.rx.bandwidth == (try LimitParser.bandwidth("10MB", flag: "x")))
            _ = try await client.updateLimits(LimitUpdate(tx: DirectionUpdate.removeAll))
            #expect(backend.onLoop { $0.device.currentLimits.tx.isUnlimited })
        }
    }

    @Test func shapedTransmitIsHeldNotDropped() async throws {
        // 1 frame per 10 ms: 20 frames must all come back, none dropped, and not all at once.
        let backend = try RunningBackend(config: NetDeviceConfig(txLimits: DirectionLimits(ops: BucketConfig(size: 1, refillTimeNanoseconds: 10_000_000))))
        defer { backend.stop() }
        let fe = try VhostUserFrontend(connectingTo: backend.socketPath)
        try fe.start()
        let tx = try #require(fe.queues[1])
        let buffer = fe.transmitBuffer(seed: 4)
        for _ in 0..<20 { tx.driver.post([buffer]) }
        tx.notify()
        let early = tx.waitForUsed(count: 20, timeoutMilliseconds: 50)
        #expect(early.count < 20, "the limiter holds frames back")
        let rest = tx.waitForUsed(count: 20 - early.count, timeoutMilliseconds: 3000)
        #expect(early.count + rest.count == 20, "every held frame is sent once tokens exist")
        let stats = backend.stats(queue: 1)
        #expect(stats.frames == 20 && stats.totalDrops == 0)
        #expect(stats.throttledEvents > 0)
        #expect(stats.throttledNanoseconds > 100_000_000, "time held back is accounted once the ring empties")
    }
}
