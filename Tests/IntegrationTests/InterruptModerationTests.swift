import Testing
import Foundation
import Glibc
import SystemCalls
import VirtioNet
import VhostUserFrontend

/// Interrupt moderation end to end, with a real TAP: the test frontend behaves like a NAPI
/// guest (it re-arms used_event each time it reaps), and the host sends through the TAP.
@Suite(.serialized) struct InterruptModerationTests {
    static let guestMAC: [UInt8] = [0x52, 0x54, 0, 0x12, 0x34, 0x56]

    /// `bulk`: the rate from which receive counts as bulk (the test's sender is slow).
    private func config(receive: Int, transmit: Int, bulkMegabitsPerSecond: Int = 1000) -> NetDeviceConfig {
        NetDeviceConfig(interruptModeration: InterruptModeration(receiveHoldoffMicroseconds: receive, transmitHoldoffMicroseconds: transmit,
                                                                 bulkMegabitsPerSecond: bulkMegabitsPerSecond))
    }

    /// A backend on a fresh TAP, a started frontend (no guest GSO: 2 KiB buffers hold a
    /// frame), and a packet socket that sends through the TAP towards the guest.
    private struct Rig {
        let name: String
        let backend: RunningBackend
        let injector: PacketSocket
        let fe: VhostUserFrontend
        let rx: FrontendQueue
        let tx: FrontendQueue
    }

    private func rig(_ tag: String, _ config: NetDeviceConfig, quiet: Bool = false) throws -> Rig {
        let name = uniqueTapName(tag)
        let backend = try RunningBackend(tapName: name, config: config)
        do {
            if quiet { silenceIPv6(name) }
            let injector = try PacketSocket(interface: name)
            let fe = try VhostUserFrontend(connectingTo: backend.socketPath)
            _ = try fe.start(wantedFeatures: ~NetFeature.guestLargeReceive, queueSize: 512)
            return Rig(name: name, backend: backend, injector: injector, fe: fe, rx: try #require(fe.queues[0]), tx: try #require(fe.queues[1]))
        } catch {
            backend.stop()
            throw error
        }
    }

    /// Stops the kernel's IPv6 chatter (router solicitations, MLD reports) on the TAP: a
    /// stray frame would bring a receive interrupt at a moment the test does not expect.
    private func silenceIPv6(_ name: String) {
        let path = "/proc/sys/net/ipv6/conf/\(name)/disable_ipv6"
        guard let file = fopen(path, "w") else { return } // no IPv6: no chatter either
        fputs("1", file)
        fclose(file)
    }

    /// Receive buffers of 2 KiB, one frame each (no guest GSO), remembered by head.
    private func postReceiveBuffers(_ fe: VhostUserFrontend, _ rx: FrontendQueue, count: Int, into buffers: inout [UInt16: UInt64]) {
        for _ in 0..<count {
            let buffer = fe.arena.allocate(2048)
            if let head = rx.driver.post([DriverBuffer(address: buffer, length: 2048, writable: true)]) { buffers[head] = buffer }
        }
        rx.notify()
    }

    /// While the host streams frames, a guest that asks after every reap gets at most one
    /// receive interrupt per holdoff, and every frame arrives, in order.
    @Test(.enabled(if: tunAvailable, "needs root and /dev/net/tun"))
    func bulkReceiveInterruptsAreSpacedAndNothingIsLost() throws {
        let r = try rig("imb", config(receive: 20_000, transmit: 0, bulkMegabitsPerSecond: 5))
        defer { r.backend.stop() }
        let (name, backend, fe, rx) = (r.name, r.backend, r.fe, r.rx)
        var buffers = [UInt16: UInt64]()
        // Enough for every frame: the reaping loop stays short (no reposting, no kicks), as
        // a guest's NAPI poll is, even under a sanitizer.
        postReceiveBuffers(fe, rx, count: 500, into: &buffers)

        // 400 frames of 1400 bytes over about 200 ms: 22 Mbit/s, bulk for this backend.
        let frameCount = 400
        let sent = (0..<frameCount).map { testFrame(length: 1400, seed: UInt8(truncatingIfNeeded: $0), destination: Self.guestMAC) }
        let sender = Thread {
            guard let injector = try? PacketSocket(interface: name) else { return }
            for (i, frame) in sent.enumerated() {
                try? injector.send(frame)
                if i % 2 == 1 { usleep(1000) }
            }
        }
        let started = monotonicNanoseconds()
        sender.start()
        var got = [[UInt8]]()
        var calls = 0
        while got.count < frameCount && monotonicNanoseconds() - started < 5_000_000_000 {
            if rx.waitForCall(timeoutMilliseconds: 100) { calls += 1 }
            for entry in rx.driver.collectUsed() { // also re-arms used_event, as NAPI does
                let buffer = buffers.removeValue(forKey: entry.head)
                let bytes = fe.arena.read(try #require(buffer), count: Int(entry.length))
                let frame = Array(bytes[12...])
                if frame.count >= 14 && frame[12] == 0x88 && frame[13] == 0xB5 { got.append(frame) }
            }
        }
        let elapsedMilliseconds = Int((monotonicNanoseconds() - started) / 1_000_000)
        let stats = backend.stats(queue: 0)
        #expect(got == sent, "every frame arrived, in order: \(got.count) of \(frameCount)")
        #expect(stats.totalDrops == 0)
        let spacedBound = elapsedMilliseconds / 20 + 3
        #expect(calls <= spacedBound, "\(calls) interrupts in \(elapsedMilliseconds) ms: at most one per 20 ms holdoff (\(spacedBound))")
        #expect(stats.interruptsHeld > 0)
    }

    /// Frame, interrupt, reap, in lock step at a bulk rate: with moderation each interrupt
    /// waits for the 20 ms holdoff after the previous one; without it, none waits. Medians,
    /// so one slow wake-up of a loaded machine does not decide.
    @Test(.enabled(if: tunAvailable, "needs root and /dev/net/tun"), arguments: [20_000, 0])
    func eachInterruptWaitsForTheHoldoffOnlyWithModeration(holdoffMicroseconds: Int) throws {
        let r = try rig(holdoffMicroseconds > 0 ? "iml" : "imo", config(receive: holdoffMicroseconds, transmit: 0, bulkMegabitsPerSecond: 1))
        defer { r.backend.stop() }
        var buffers = [UInt16: UInt64]()
        postReceiveBuffers(r.fe, r.rx, count: 64, into: &buffers)
        var waits = [UInt64]()
        for i in 0..<31 {
            let sentAt = monotonicNanoseconds()
            try r.injector.send(testFrame(length: 1400, seed: UInt8(i), destination: Self.guestMAC))
            #expect(r.rx.waitForCall(timeoutMilliseconds: 2000), "frame \(i) was interrupted for")
            if i > 0 { waits.append((monotonicNanoseconds() - sentAt) / 1_000_000) } // the first is never held
            _ = r.rx.driver.collectUsed()
        }
        let median = waits.sorted()[waits.count / 2]
        let held = r.backend.stats(queue: 0).interruptsHeld
        if holdoffMicroseconds > 0 {
            #expect(median >= 15, "median wait \(median) ms: each interrupt held to about 20 ms after the previous one")
            #expect(held >= 20)
        } else {
            #expect(median < 15, "median wait \(median) ms: without moderation each interrupt goes at once")
            #expect(held == 0)
        }
    }

    /// Small frames now and then (pings, requests) are never held, even with a long holdoff.
    @Test(.enabled(if: tunAvailable, "needs root and /dev/net/tun"))
    func sparseReceiveIsNotDelayed() throws {
        let r = try rig("ims", config(receive: 2_000_000, transmit: 0))
        defer { r.backend.stop() }
        let (backend, injector, fe, rx) = (r.backend, r.injector, r.fe, r.rx)
        var buffers = [UInt16: UInt64]()
        postReceiveBuffers(fe, rx, count: 64, into: &buffers)
        for i in 0..<5 {
            let sentAt = monotonicNanoseconds()
            try injector.send(testFrame(length: 100, seed: UInt8(i), destination: Self.guestMAC))
            let interrupted = rx.waitForCall(timeoutMilliseconds: 1000)
            let waitedMilliseconds = (monotonicNanoseconds() - sentAt) / 1_000_000
            #expect(interrupted && waitedMilliseconds < 500, "frame \(i): interrupted after \(waitedMilliseconds) ms, holdoff 2 s")
            _ = rx.driver.collectUsed()
            usleep(20_000)
        }
        #expect(backend.stats(queue: 0).interruptsHeld == 0)
    }

    /// A guest that ran out of receive buffers is interrupted at once, held or not: waiting
    /// would only keep it from refilling them.
    @Test(.enabled(if: tunAvailable, "needs root and /dev/net/tun"))
    func aGuestOutOfBuffersIsNotKeptWaiting() throws {
        let r = try rig("imn", config(receive: 5_000_000, transmit: 0, bulkMegabitsPerSecond: 1), quiet: true)
        defer { r.backend.stop() }
        let (backend, injector, fe, rx) = (r.backend, r.injector, r.fe, r.rx)
        var buffers = [UInt16: UInt64]()
        // Chatter the TAP queued before IPv6 went quiet takes some of these; fillers the rest.
        postReceiveBuffers(fe, rx, count: 4, into: &buffers)
        usleep(50_000)
        var taken = rx.driver.collectUsed().count
        for i in taken..<4 { try injector.send(testFrame(length: 60, seed: UInt8(i), destination: Self.guestMAC)) }
        let deadline = monotonicNanoseconds() + 2_000_000_000
        while taken < 4 && monotonicNanoseconds() < deadline {
            _ = rx.waitForCall(timeoutMilliseconds: 10)
            taken += rx.driver.collectUsed().count
        }
        #expect(taken == 4, "no buffer left over from the warm-up")
        _ = rx.waitForCall(timeoutMilliseconds: 0)
        // A first interrupt, so the next one falls inside the 5 s holdoff.
        postReceiveBuffers(fe, rx, count: 1, into: &buffers)
        try injector.send(testFrame(length: 100, seed: 1, destination: Self.guestMAC))
        #expect(rx.waitForCall(timeoutMilliseconds: 2000))
        #expect(rx.driver.collectUsed().count == 1)
        // 60 frames wait in the TAP; 30 buffers take 42 KB of them (bulk here) and run out.
        for i in 0..<60 { try injector.send(testFrame(length: 1400, seed: UInt8(i), destination: Self.guestMAC)) }
        usleep(50_000)
        let postedAt = monotonicNanoseconds()
        postReceiveBuffers(fe, rx, count: 30, into: &buffers)
        let interrupted = rx.waitForCall(timeoutMilliseconds: 2000)
        let waitedMilliseconds = (monotonicNanoseconds() - postedAt) / 1_000_000
        #expect(interrupted && waitedMilliseconds < 1000, "interrupted after \(waitedMilliseconds) ms, not at the end of the 5 s holdoff")
        #expect(rx.driver.collectUsed().count == 30)
        #expect(backend.stats(queue: 0).interruptsHeld >= 1, "the interrupt was held, then released for want of buffers")
    }

    /// While receive interrupts flow, a transmit completion waits for the next one and goes
    /// with it; if none comes, its own timer sends it when the holdoff ends.
    @Test(.enabled(if: tunAvailable, "needs root and /dev/net/tun"))
    func transmitCompletionsRideOnReceiveInterrupts() throws {
        let r = try rig("imt", config(receive: 0, transmit: 400_000), quiet: true)
        defer { r.backend.stop() }
        let (backend, injector, fe, rx, tx) = (r.backend, r.injector, r.fe, r.rx, r.tx)
        var buffers = [UInt16: UInt64]()
        postReceiveBuffers(fe, rx, count: 64, into: &buffers)
        usleep(50_000) // what the TAP sent before IPv6 went quiet arrives now
        _ = rx.waitForCall(timeoutMilliseconds: 0)
        _ = rx.driver.collectUsed()
        let transmitted = fe.transmitBuffer(seed: 3)

        func receiveOne(seed: UInt8) throws {
            try injector.send(testFrame(length: 100, seed: seed, destination: Self.guestMAC))
            #expect(rx.waitForCall(timeoutMilliseconds: 2000), "receive interrupt \(seed)")
            _ = rx.driver.collectUsed()
        }
        /// Sends a frame and waits until its completion is in the used ring.
        func transmitOne() -> UInt64 {
            _ = tx.driver.collectUsed() // re-arms used_event: interrupt me for the next one
            tx.driver.post([transmitted])
            tx.notify()
            let deadline = monotonicNanoseconds() + 2_000_000_000
            while tx.driver.usedIndex == tx.driver.lastUsed && monotonicNanoseconds() < deadline { usleep(200) }
            return monotonicNanoseconds()
        }

        // Carried: the completion is held, then goes with the next receive interrupt.
        try receiveOne(seed: 1)
        _ = transmitOne()
        #expect(!tx.waitForCall(timeoutMilliseconds: 100), "held while receive interrupts flow")
        #expect(backend.stats(queue: 1).interruptsHeld == 1)
        try receiveOne(seed: 2)
        #expect(tx.waitForCall(timeoutMilliseconds: 100), "sent with the receive interrupt")

        // Not carried: the timer sends it when the 400 ms holdoff ends.
        try receiveOne(seed: 3)
        let completedAt = transmitOne()
        #expect(tx.waitForCall(timeoutMilliseconds: 3000), "sent by timer")
        let waitedMilliseconds = (monotonicNanoseconds() - completedAt) / 1_000_000
        #expect(waitedMilliseconds >= 250, "held about 400 ms, waited \(waitedMilliseconds) ms")
        #expect(backend.stats(queue: 1).interruptsHeld == 2)
    }
}
