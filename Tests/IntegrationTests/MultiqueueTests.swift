import Testing
import Glibc
import CTapwire
import SystemCalls
import TapDevice
import VhostUser
import VirtioNet
import VhostUserFrontend

/// Two queue pairs, one TAP queue each (IFF_MULTI_QUEUE), carrying traffic at once.
@Suite(.serialized) struct MultiqueueTests {
    @Test(.enabled(if: tunAvailable, "needs root and /dev/net/tun"))
    func twoQueuePairsCarryTrafficAtOnce() throws {
        let name = uniqueTapName("mq")
        let backend = try RunningBackend(tapName: name, config: NetDeviceConfig(queuePairs: 2))
        defer { backend.stop() }
        let capture = try PacketSocket(interface: name)
        let fe = try VhostUserFrontend(connectingTo: backend.socketPath)
        #expect(try fe.queryU64(.getQueueNum) == 2)
        let features = try fe.start(queueCount: 4)
        #expect(features & NetFeature.multiqueue != 0)

        // Both receive queues get buffers; both transmit queues get frames, then one kick each.
        var rxBuffers = [Int: [UInt16: UInt64]]()
        for rxIndex in [0, 2] {
            let rx = try #require(fe.queues[rxIndex])
            var map = [UInt16: UInt64]()
            for _ in 0..<32 {
                let buffer = fe.arena.allocate(4096)
                if let head = rx.driver.post([DriverBuffer(address: buffer, length: 4096, writable: true)]) { map[head] = buffer }
            }
            rxBuffers[rxIndex] = map
            rx.notify()
        }
        for (pair, txIndex) in [1, 3].enumerated() {
            let tx = try #require(fe.queues[txIndex])
            for i in 0..<50 {
                let buffer = fe.arena.allocate(212)
                fe.arena.write(plainHeader + testFrame(length: 200, seed: UInt8(pair * 100 + i)), at: buffer)
                tx.driver.post([DriverBuffer(address: buffer, length: 212, writable: false)])
            }
        }
        fe.queues[1]!.notify()
        fe.queues[3]!.notify()
        #expect(fe.queues[1]!.waitForUsed(count: 50, timeoutMilliseconds: 3000).count == 50)
        #expect(fe.queues[3]!.waitForUsed(count: 50, timeoutMilliseconds: 3000).count == 50)
        let seen = capture.receive(count: 100) { $0.count == 200 && $0[12] == 0x88 && $0[13] == 0xB5 }
        let seeds = Set(seen.map { $0[11] })
        #expect(seen.count == 100, "all frames of both transmit queues reached the TAP")
        #expect(seeds.contains(0) && seeds.contains(100), "from both queue pairs")
        #expect(backend.stats(queue: 1).frames == 50 && backend.stats(queue: 3).frames == 50)

        // Host -> guest: many flows, spread by the kernel over the TAP's queues.
        let injector = try PacketSocket(interface: name)
        for flow in 0..<64 {
            var frame = [0x52, 0x54, 0, 0x12, 0x34, 0x56, 0x02, 0, 0, 0, UInt8(flow), 1, 0x08, 0x00]
            frame += [0x45, 0, 0, 46, 0, 1, 0x40, 0, 64, 17, 0, 0, 198, 18, 1, UInt8(flow), 198, 18, 0, 2]
            frame += [0x30, UInt8(flow), 0x30, 0x39, 0, 26, 0, 0] + [UInt8](repeating: 0xee, count: 18)
            try injector.send(frame)
        }
        var received = 0
        var perQueue = [Int: Int]()
        let deadline = monotonicNanoseconds() + 3_000_000_000
        while received < 64 && monotonicNanoseconds() < deadline {
            for rxIndex in [0, 2] {
                let entries = fe.queues[rxIndex]!.driver.collectUsed()
                // Look the whole batch up before reposting: a repost may reuse a head id
                // that appears later in the same batch.
                var addresses = [UInt64]()
                for entry in entries {
                    guard let address = rxBuffers[rxIndex]!.removeValue(forKey: entry.head) else {
                        Issue.record("queue \(rxIndex): used head \(entry.head) (length \(entry.length)) was not outstanding")
                        return
                    }
                    addresses.append(address)
                    let bytes = fe.arena.read(address, count: Int(entry.length))
                    if bytes.count > 24 && bytes[12 + 12] == 0x08 && bytes[12 + 13] == 0x00 && bytes[12 + 23] == 17 {
                        received += 1
                        perQueue[rxIndex, default: 0] += 1
                    }
                }
                // Give the buffers back, as a guest refills its ring.
                for address in addresses {
                    if let head = fe.queues[rxIndex]!.driver.post([DriverBuffer(address: address, length: 4096, writable: true)]) {
                        rxBuffers[rxIndex]![head] = address
                    }
                }
            }
            fe.queues[0]!.notify()
            fe.queues[2]!.notify()
            usleep(10_000)
        }
        #expect(received == 64, "every injected frame reached one of the receive queues")
        #expect(perQueue.count == 2, "the kernel spread flows over both TAP queues: \(perQueue)")
    }
    /// QEMU repeats SET_VRING_ENABLE (pair 0 again at every channel change, pair 1 off several
    /// times at start-up): only changes reach the TAP, whose queues follow the guest's pairs.
    @Test(.enabled(if: tunAvailable, "needs root and /dev/net/tun"))
    func repeatedEnablesOnlyChangeTheTapQueueOnce() throws {
        let name = uniqueTapName("mqe")
        let backend = try RunningBackend(tapName: name, config: NetDeviceConfig(queuePairs: 2))
        defer { backend.stop() }
        let fe = try VhostUserFrontend(connectingTo: backend.socketPath)
        try fe.start(queueCount: 4)
        for (index, enable): (UInt32, UInt32) in [(2, 0), (2, 0), (0, 1), (0, 1), (3, 0)] {
            try fe.command(.setVringEnable, payload: MessageEncoder.vringState(index: index, num: enable))
        }
        #expect(backend.onLoop { $0.device.tap?.queueAttached ?? [] } == [true, false], "pair 1's TAP queue detached once")
        try fe.command(.setVringEnable, payload: MessageEncoder.vringState(index: 2, num: 1))
        #expect(backend.onLoop { $0.device.tap?.queueAttached ?? [] } == [true, true])
    }
}
