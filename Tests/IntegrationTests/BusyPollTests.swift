import Testing
import Glibc
import VirtioNet
import VhostUserFrontend

/// `--busy-poll`: after traffic the queue pair's thread keeps looking at the rings, so a
/// guest that posts without kicking is still served; without it, such a frame waits.
@Suite(.serialized) struct BusyPollTests {
    /// Sends one kicked frame, then posts a second without a kick; returns whether the
    /// second came back within `waitMilliseconds`.
    private func unkickedFrameIsServed(config: NetDeviceConfig, waitMilliseconds: Int) throws -> Bool {
        let backend = try RunningBackend(config: config)
        defer { backend.stop() }
        let fe = try VhostUserFrontend(connectingTo: backend.socketPath)
        try fe.start()
        let tx = try #require(fe.queues[1])
        let buffer = fe.transmitBuffer(seed: 7)
        tx.driver.post([buffer])
        tx.notify()
        #expect(tx.waitForUsed(count: 1, timeoutMilliseconds: 2000).count == 1, "the kicked frame is served")
        // The used entry is visible before the backend's pass ends: it then asks for kicks and
        // looks at the ring once more, and would take a frame posted in that instant. Post the
        // second one once the pass is surely over (it takes microseconds).
        usleep(100_000)
        tx.driver.post([buffer])
        return tx.waitForUsed(count: 1, timeoutMilliseconds: waitMilliseconds).count == 1
    }

    @Test func aPollingBackendServesFramesPostedWithoutAKick() throws {
        let served = try unkickedFrameIsServed(config: NetDeviceConfig(transmitPollMicroseconds: 0, busyPollMicroseconds: 2_000_000),
                                               waitMilliseconds: 1000)
        #expect(served, "within the 2 s poll window the backend finds the frame in the ring")
    }

    @Test func anEventDrivenBackendWaitsForTheKick() throws {
        let served = try unkickedFrameIsServed(config: NetDeviceConfig(transmitPollMicroseconds: 0, busyPollMicroseconds: 0),
                                               waitMilliseconds: 300)
        #expect(!served, "without polling (and kicks asked for) an unkicked frame stays in the ring")
    }

    @Test func afterThePollWindowKicksWakeTheBackendAgain() throws {
        let backend = try RunningBackend(config: NetDeviceConfig(busyPollMicroseconds: 50_000))
        defer { backend.stop() }
        let fe = try VhostUserFrontend(connectingTo: backend.socketPath)
        try fe.start()
        let tx = try #require(fe.queues[1])
        let buffer = fe.transmitBuffer(seed: 8)
        for round in 0..<3 {
            tx.driver.post([buffer])
            tx.notify()
            #expect(tx.waitForUsed(count: 1, timeoutMilliseconds: 2000).count == 1, "round \(round)")
            usleep(200_000) // the 50 ms window closes; the backend sleeps until the next kick
        }
        #expect(backend.stats(queue: 1).frames == 3)
    }
}
