import Testing
import Foundation
import Glibc
import CTapwire
import SystemCalls
import TapDevice
import VhostUser
import VirtioNet
import VhostUserFrontend

/// With a real TAP: frames the test frontend posts appear on the TAP, and frames the host
/// sends through the TAP land in the guest's receive buffers.
@Suite(.serialized) struct TapTests {
    @Test(.enabled(if: tunAvailable, "needs root and /dev/net/tun"), arguments: [true, false])
    func guestTransmitAppearsOnTheTap(batchedWrites: Bool) throws {
        let name = uniqueTapName(batchedWrites ? "txb" : "txw")
        let backend = try RunningBackend(tapName: name, batchedWrites: batchedWrites)
        defer { backend.stop() }
        #expect(backend.onLoop { $0.device.batchedTapIO } == batchedWrites, "transmit takes the path under test")
        let capture = try PacketSocket(interface: name)
        let fe = try VhostUserFrontend(connectingTo: backend.socketPath)
        try fe.start()
        let tx = try #require(fe.queues[1])
        let rxBefore = interfaceStatistic(name, "rx_packets") ?? 0
        var sent = [[UInt8]]()
        for i in 0..<32 {
            let frame = testFrame(length: 60 + i * 40, seed: UInt8(i))
            sent.append(frame)
            // Header and frame in separate descriptors, as Linux guests often post them.
            let header = fe.arena.allocate(12)
            fe.arena.write(plainHeader, at: header)
            let body = fe.arena.allocate(frame.count)
            fe.arena.write(frame, at: body)
            tx.driver.post([DriverBuffer(address: header, length: 12, writable: false),
                            DriverBuffer(address: body, length: UInt32(frame.count), writable: false)])
        }
        tx.notify()
        #expect(tx.waitForUsed(count: 32, timeoutMilliseconds: 3000).count == 32)
        let captured = capture.receive(count: 32) { $0.count >= 14 && $0[12] == 0x88 && $0[13] == 0xB5 }
        #expect(captured == sent, "the TAP saw exactly the frames, in order")
        #expect((interfaceStatistic(name, "rx_packets") ?? 0) - rxBefore >= 32)
    }

    /// A burst longer than one io_uring batch, with a chain of so many segments that it cannot
    /// share the iovec buffer with the batch before it: every frame still reaches the TAP
    /// whole and in order, and every chain comes back.
    @Test(.enabled(if: tunAvailable, "needs root and /dev/net/tun"), arguments: [true, false])
    func transmitBurstsCrossBatchesInOrder(batchedWrites: Bool) throws {
        let name = uniqueTapName(batchedWrites ? "tbb" : "tbw")
        let backend = try RunningBackend(tapName: name, batchedWrites: batchedWrites)
        defer { backend.stop() }
        let capture = try PacketSocket(interface: name)
        let fe = try VhostUserFrontend(connectingTo: backend.socketPath)
        try fe.start(queueSize: 1024)
        let tx = try #require(fe.queues[1])
        var sent = [[UInt8]]()
        func post(_ frame: [UInt8], segment: Int) {
            let header = fe.arena.allocate(12)
            fe.arena.write(plainHeader, at: header)
            var buffers = [DriverBuffer(address: header, length: 12, writable: false)]
            var offset = 0
            while offset < frame.count {
                let piece = Array(frame[offset..<min(offset + segment, frame.count)])
                let address = fe.arena.allocate(piece.count, alignment: 1)
                fe.arena.write(piece, at: address)
                buffers.append(DriverBuffer(address: address, length: UInt32(piece.count), writable: false))
                offset += piece.count
            }
            #expect(tx.driver.postIndirect(buffers) != nil)
            sent.append(frame)
        }
        // 8 frames of 61 segments (488 iovecs), then one of 601: it does not fit beside them.
        for i in 0..<8 { post(testFrame(length: 600, seed: UInt8(i)), segment: 10) }
        post(testFrame(length: 600, seed: 8), segment: 1)
        // Then 150 small frames: more than two full batches.
        for i in 0..<150 { post(testFrame(length: 60 + i, seed: UInt8(9 + i)), segment: 2048) }
        tx.notify()
        #expect(tx.waitForUsed(count: sent.count, timeoutMilliseconds: 5000).count == sent.count)
        let captured = capture.receive(count: sent.count) { $0.count >= 14 && $0[12] == 0x88 && $0[13] == 0xB5 }
        #expect(captured.count == sent.count)
        #expect(captured == sent, "the TAP saw exactly the frames, in order")
        let stats = backend.stats(queue: 1)
        #expect(stats.frames == UInt64(sent.count))
        #expect(stats.totalDrops == 0)
    }

    @Test(.enabled(if: tunAvailable, "needs root and /dev/net/tun"))
    func hostFramesLandInTheGuestsReceiveBuffers() throws {
        let name = uniqueTapName("rx")
        let backend = try RunningBackend(tapName: name)
        defer { backend.stop() }
        let injector = try PacketSocket(interface: name)
        let fe = try VhostUserFrontend(connectingTo: backend.socketPath)
        // Without MRG_RXBUF: one chain per frame.
        try fe.start(wantedFeatures: ~NetFeature.mergeableRxBuffers)
        let rx = try #require(fe.queues[0])
        var buffers = [UInt16: UInt64]()
        for _ in 0..<64 {
            let buffer = fe.arena.allocate(2048)
            if let head = rx.driver.post([DriverBuffer(address: buffer, length: 2048, writable: true)]) { buffers[head] = buffer }
        }
        rx.notify()
        var sent = [[UInt8]]()
        for i in 0..<16 {
            let frame = testFrame(length: 64 + 50 * i, seed: UInt8(100 + i), destination: [0x52, 0x54, 0, 0x12, 0x34, 0x56])
            sent.append(frame)
            try injector.send(frame)
        }
        var got = [[UInt8]]()
        for entry in rx.waitForUsed(count: 40, timeoutMilliseconds: 2000) {
            let buffer = try #require(buffers[entry.head])
            let bytes = fe.arena.read(buffer, count: Int(entry.length))
            #expect(entry.length >= 12)
            let numBuffers = UInt16(bytes[10]) | UInt16(bytes[11]) << 8
            #expect(numBuffers == 1, "num_buffers is 1 without MRG_RXBUF")
            let frame = Array(bytes[12...])
            if frame.count >= 14 && frame[12] == 0x88 && frame[13] == 0xB5 { got.append(frame) }
        }
        #expect(got == sent, "every injected frame arrived whole with the right used length")
    }

    /// Buffers that each hold a whole frame (no guest GSO, MRG_RXBUF, 2 KiB chains): reads go
    /// in io_uring batches. A burst larger than a batch arrives whole, in order, one chain per
    /// frame, and the chains the last batch did not fill go back to the guest's ring.
    @Test(.enabled(if: tunAvailable, "needs root and /dev/net/tun"), arguments: [true, false])
    func hostBurstsArriveInOrderThroughReadBatches(batchedIO: Bool) throws {
        let name = uniqueTapName(batchedIO ? "rbb" : "rbw")
        let backend = try RunningBackend(tapName: name, batchedWrites: batchedIO)
        defer { backend.stop() }
        let injector = try PacketSocket(interface: name)
        let fe = try VhostUserFrontend(connectingTo: backend.socketPath)
        let features = try fe.start(wantedFeatures: ~NetFeature.guestLargeReceive, queueSize: 512)
        #expect(features & NetFeature.mergeableRxBuffers != 0)
        let rx = try #require(fe.queues[0])
        // The burst waits in the TAP's queue until buffers come: then it is read in batches.
        var sent = [[UInt8]]()
        for i in 0..<300 {
            let frame = testFrame(length: 60 + (i * 37) % 1400, seed: UInt8(truncatingIfNeeded: i), destination: [0x52, 0x54, 0, 0x12, 0x34, 0x56])
            sent.append(frame)
            try injector.send(frame)
        }
        var buffers = [UInt16: UInt64]()
        for _ in 0..<400 {
            let buffer = fe.arena.allocate(2048)
            if let head = rx.driver.post([DriverBuffer(address: buffer, length: 2048, writable: true)]) { buffers[head] = buffer }
        }
        rx.notify()
        var got = [[UInt8]]()
        var deadline = 0
        while got.count < sent.count && deadline < 40 {
            for entry in rx.waitForUsed(count: sent.count - got.count, timeoutMilliseconds: 100) {
                let buffer = try #require(buffers[entry.head])
                let bytes = fe.arena.read(buffer, count: Int(entry.length))
                #expect(entry.length >= 12)
                #expect(UInt16(bytes[10]) | UInt16(bytes[11]) << 8 == 1, "one chain per frame")
                let frame = Array(bytes[12...])
                if frame.count >= 14 && frame[12] == 0x88 && frame[13] == 0xB5 { got.append(frame) }
            }
            deadline += 1
        }
        let stats = backend.stats(queue: 0)
        let firstDifference = zip(got, sent).enumerated().first { $0.element.0 != $0.element.1 }?.offset
        #expect(got.count == sent.count && firstDifference == nil,
                "every injected frame arrived whole, in order: got \(got.count) of \(sent.count), first difference at \(firstDifference.map(String.init) ?? "-"); stats \(stats)")
        #expect(stats.totalDrops == 0)
        if batchedIO {
            #expect(stats.tapBatches > 0 && stats.tapBatches * 4 < stats.frames, "reads went in batches (\(stats.tapBatches) for \(stats.frames) frames)")
        } else {
            #expect(stats.tapBatches == 0)
        }
        // What was not filled went back: a later frame still finds a buffer.
        let late = testFrame(length: 200, seed: 250, destination: [0x52, 0x54, 0, 0x12, 0x34, 0x56])
        try injector.send(late)
        // The host's own IPv6 chatter on the TAP (solicitations, MLD) may arrive first: look
        // through what comes for 2 s, not only at the first entry.
        var sawLate = false
        for _ in 0..<20 where !sawLate {
            for entry in rx.waitForUsed(count: 1, timeoutMilliseconds: 100) {
                let bytes = fe.arena.read(try #require(buffers[entry.head]), count: Int(entry.length))
                if Array(bytes[12...]) == late { sawLate = true }
            }
        }
        #expect(sawLate)
    }

    /// A restarted tapwire may find its TAP still held for a moment (a killed predecessor's
    /// io_uring is closed by the kernel after the process is gone): it waits, then attaches;
    /// and names the problem if the holder never lets go.
    @Test(.enabled(if: tunAvailable, "needs root and /dev/net/tun"))
    func aTapStillHeldIsWaitedFor() throws {
        let name = uniqueTapName("busy")
        let holder = try Tap(name: name)
        do {
            _ = try Tap(name: name, busyWaitMilliseconds: 100)
            Issue.record("a second open of a held single-queue TAP succeeded")
        } catch {
            #expect("\(error)".contains("Device or resource busy") && "\(error)".contains("holds it"), "\(error)")
        }
        let released = Thread { usleep(300_000); holder.queues[0].close() }
        released.start()
        let start = monotonicNanoseconds()
        let second = try Tap(name: name, busyWaitMilliseconds: 3000)
        let waited = (monotonicNanoseconds() - start) / 1_000_000
        #expect(second.name == name)
        #expect(waited >= 200 && waited < 3000, "waited \(waited) ms for the holder")
    }

    @Test(.enabled(if: tunAvailable, "needs root and /dev/net/tun"))
    func theTapSurvivesADisconnect() throws {
        let name = uniqueTapName("dc")
        let backend = try RunningBackend(tapName: name)
        defer { backend.stop() }
        for round in 0..<3 {
            let capture = try PacketSocket(interface: name)
            let fe = try VhostUserFrontend(connectingTo: backend.socketPath)
            try fe.start()
            let tx = try #require(fe.queues[1])
            let frame = testFrame(length: 100, seed: UInt8(round))
            let buffer = fe.transmitBuffer(seed: 0, frame: frame)
            tx.driver.post([buffer])
            tx.notify()
            #expect(tx.waitForUsed(count: 1, timeoutMilliseconds: 2000).count == 1)
            #expect(capture.receive(count: 1) { $0 == frame }.count == 1, "round \(round)")
        }
    }
}
