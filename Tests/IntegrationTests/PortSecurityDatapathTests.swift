import Testing
import Glibc
import SystemCalls
import TapDevice
import VirtioNet
import PortSecurity
import VhostUserFrontend

/// Port security on the packet path, with a real TAP: what the guest may not send never
/// reaches the TAP and is counted by reason; unicast for another MAC never reaches the guest.
@Suite(.serialized) struct PortSecurityDatapathTests {
    static let vmMAC: [UInt8] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56]
    static let otherMAC: [UInt8] = [0x52, 0x54, 0x00, 0x65, 0x43, 0x21]
    static let vmIP: [UInt8] = [10, 0, 0, 5]
    static let policy = PortPolicy(mac: vmMAC, allowedIPs: [.v4(address: 0x0a00_0005, prefixLength: 32)])

    /// An IPv4/UDP frame (port 9, discard) whose payload starts with `seed`.
    static func udpFrame(from mac: [UInt8] = vmMAC, source: [UInt8] = vmIP, to destination: [UInt8] = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
                         seed: UInt8, payload: Int = 64) -> [UInt8] {
        let udpLength = 8 + payload
        let ipLength = 20 + udpLength
        var frame = destination + mac + [0x08, 0x00]
        frame += [0x45, 0, UInt8(ipLength >> 8), UInt8(ipLength & 0xff), 0, 0, 0, 0, 64, 17, 0, 0] + source + [10, 0, 0, 1]
        frame += [0x30, 0x39, 0, 9, UInt8(udpLength >> 8), UInt8(udpLength & 0xff), 0, 0]
        frame += (0..<payload).map { UInt8(truncatingIfNeeded: Int(seed) &+ $0) }
        return frame
    }

    static func isTestFrame(_ frame: [UInt8]) -> Bool {
        frame.count > 42 && frame[12] == 0x08 && frame[13] == 0x00 && frame[23] == 17 && frame[36] == 0 && frame[37] == 9
    }

    @Test(.enabled(if: tunAvailable, "needs root and /dev/net/tun"), arguments: [true, false])
    func onlyWhatTheVMMaySendReachesTheTap(batchedWrites: Bool) throws {
        let name = uniqueTapName(batchedWrites ? "psb" : "psw")
        let backend = try RunningBackend(tapName: name, config: NetDeviceConfig(mac: Self.vmMAC, portPolicy: Self.policy),
                                         batchedWrites: batchedWrites)
        defer { backend.stop() }
        let capture = try PacketSocket(interface: name)
        let fe = try VhostUserFrontend(connectingTo: backend.socketPath)
        try fe.start()
        let tx = try #require(fe.queues[1])
        var allowed = [[UInt8]]()
        var posted = 0
        for i in 0..<40 {
            let seed = UInt8(i)
            let frame: [UInt8]
            switch i % 4 {
            case 1: frame = Self.udpFrame(from: Self.otherMAC, seed: seed)
            case 2: frame = Self.udpFrame(source: [10, 0, 0, 6], seed: seed)
            default: frame = Self.udpFrame(seed: seed, payload: 64 + i)
            }
            if i % 4 == 0 || i % 4 == 3 { allowed.append(frame) }
            if i % 4 == 3 {
                // Headers in 1-byte descriptors: the checked copy must replace them exactly.
                let header = fe.arena.allocate(12)
                fe.arena.write(plainHeader, at: header)
                var buffers = [DriverBuffer(address: header, length: 12, writable: false)]
                for byte in frame.prefix(48) {
                    let address = fe.arena.allocate(1, alignment: 1)
                    fe.arena.write([byte], at: address)
                    buffers.append(DriverBuffer(address: address, length: 1, writable: false))
                }
                let rest = Array(frame.dropFirst(48))
                let body = fe.arena.allocate(rest.count)
                fe.arena.write(rest, at: body)
                buffers.append(DriverBuffer(address: body, length: UInt32(rest.count), writable: false))
                #expect(tx.driver.postIndirect(buffers) != nil)
            } else {
                tx.driver.post([fe.transmitBuffer(seed: seed, frame: frame)])
            }
            posted += 1
        }
        tx.notify()
        #expect(tx.waitForUsed(count: posted, timeoutMilliseconds: 3000).count == posted)
        let captured = capture.receive(count: allowed.count, timeoutMilliseconds: 1000, matching: Self.isTestFrame)
        #expect(captured == allowed, "the TAP saw exactly the allowed frames, whole and in order")
        let stats = backend.stats(queue: 1)
        #expect(stats.drops(.portSecurity(.spoofedMAC)) == 10)
        #expect(stats.drops(.portSecurity(.spoofedIP)) == 10)
        #expect(stats.frames == UInt64(allowed.count))
    }

    /// The kernel's TAP filter drops them first (counted in the TAP's tx_dropped); without
    /// it, tapwire's own check does (counted as not_for_this_vm).
    @Test(.enabled(if: tunAvailable, "needs root and /dev/net/tun"), arguments: [true, false], [true, false])
    func unicastForAnotherMACNeverReachesTheGuest(batchedIO: Bool, kernelFilter: Bool) throws {
        let name = uniqueTapName((batchedIO ? "prb" : "prw") + (kernelFilter ? "k" : "u"))
        let backend = try RunningBackend(tapName: name, config: NetDeviceConfig(mac: Self.vmMAC, portPolicy: Self.policy),
                                         batchedWrites: batchedIO)
        defer { backend.stop() }
        let tap = try #require(backend.tap)
        if !kernelFilter { try tap.setUnicastFilter(nil) }
        let tapDroppedBefore = interfaceStatistic(name, "tx_dropped") ?? 0
        let injector = try PacketSocket(interface: name)
        let fe = try VhostUserFrontend(connectingTo: backend.socketPath)
        // Without guest GSO: 2 KiB buffers each hold a frame, so batched reads are used.
        try fe.start(wantedFeatures: ~NetFeature.guestLargeReceive, queueSize: 256)
        let rx = try #require(fe.queues[0])
        var buffers = [UInt16: UInt64]()
        for _ in 0..<128 {
            let buffer = fe.arena.allocate(2048)
            if let head = rx.driver.post([DriverBuffer(address: buffer, length: 2048, writable: true)]) { buffers[head] = buffer }
        }
        var expected = [[UInt8]]()
        var foreign = 0
        for i in 0..<60 {
            let destination: [UInt8]
            switch i % 3 {
            case 0: destination = Self.vmMAC
            case 1: destination = Self.otherMAC; foreign += 1
            default: destination = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff]
            }
            let frame = Self.udpFrame(from: [0x02, 0, 0, 0, 0, 1], to: destination, seed: UInt8(i))
            if i % 3 != 1 { expected.append(frame) }
            try injector.send(frame)
        }
        rx.notify()
        var got = [[UInt8]]()
        for _ in 0..<20 where got.count < expected.count {
            for entry in rx.waitForUsed(count: expected.count - got.count, timeoutMilliseconds: 100) {
                let buffer = try #require(buffers[entry.head])
                let frame = Array(fe.arena.read(buffer, count: Int(entry.length)).dropFirst(12))
                if Self.isTestFrame(frame) { got.append(frame) }
            }
        }
        #expect(got == expected, "the guest got its own unicast and the broadcasts, in order, and nothing else")
        let tapDropped = (interfaceStatistic(name, "tx_dropped") ?? 0) - tapDroppedBefore
        let tapwireDropped = backend.stats(queue: 0).drops(.portSecurity(.notForThisVM))
        if kernelFilter {
            #expect(tapDropped == UInt64(foreign) && tapwireDropped == 0, "the TAP dropped \(tapDropped), tapwire \(tapwireDropped)")
        } else {
            #expect(tapwireDropped == UInt64(foreign), "tapwire dropped \(tapwireDropped) (the TAP \(tapDropped))")
        }
    }
}
