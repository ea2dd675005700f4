import Testing
import Glibc
import Foundation
import CTapwire
import SystemCalls
import TapDevice
import VhostUser
import VirtioNet
import VhostUserFrontend

/// Runs a command (ip, ethtool) and fails the test with its output if it fails.
@discardableResult
func sh(_ command: String) throws -> String {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: "/bin/sh")
    process.arguments = ["-c", command]
    let pipe = Pipe()
    process.standardOutput = pipe
    process.standardError = pipe
    try process.run()
    let output = String(decoding: pipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
    process.waitUntilExit()
    guard process.terminationStatus == 0 else { throw FrontendError("`\(command)` failed: \(output)") }
    return output
}

/// Only inside a private network namespace (make test runs the suite under `unshare --net`),
/// so the bridges and veths these tests make never meet the host's interfaces.
var inPrivateNetns: Bool {
    tunAvailable && ProcessInfo.processInfo.environment["TAPWIRE_TEST_NETNS"] == "1"
}

/// A 64 KiB TCP/IPv4 frame with the virtio-net header a guest uses for TSO.
func tsoFrame(payload: Int, mss: UInt16, destination: [UInt8]) -> (header: [UInt8], frame: [UInt8]) {
    let ipLength = 20 + 20 + payload
    var frame = destination + [0x02, 0, 0, 0, 0, 0x01] + [0x08, 0x00]
    frame += [0x45, 0, UInt8(ipLength >> 8 & 0xff), UInt8(ipLength & 0xff), 0, 1, 0x40, 0, 64, 6, 0, 0,
              198, 18, 0, 1, 198, 18, 0, 2] // 198.18.0.0/15: the benchmarking range, private to this netns
    // A correct header checksum: the bridge (br_netfilter) drops IPv4 headers without one.
    var sum: UInt32 = 0
    for i in stride(from: 14, to: 34, by: 2) { sum += UInt32(frame[i]) << 8 | UInt32(frame[i + 1]) }
    while sum > 0xffff { sum = (sum & 0xffff) + (sum >> 16) }
    let checksum = ~UInt16(sum)
    frame[24] = UInt8(checksum >> 8)
    frame[25] = UInt8(checksum & 0xff)
    frame += [0x30, 0x39, 0x00, 0x50, 0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x18, 0xff, 0xff, 0, 0, 0, 0]
    for i in 0..<payload { frame.append(UInt8(truncatingIfNeeded: i)) }
    var header = tw_virtio_net_hdr()
    header.flags = NetHeader.flagNeedsChecksum
    header.gso_type = NetHeader.gsoTCPv4
    header.hdr_len = 54
    header.gso_size = mss
    header.csum_start = 34
    header.csum_offset = 16
    let headerBytes = withUnsafeBytes(of: header) { Array($0) }
    return (headerBytes, frame)
}

@Suite(.serialized) struct OffloadTests {
    @Test(.enabled(if: inPrivateNetns, "needs root, /dev/net/tun and a private netns (run by `make test`)"))
    func guestTSOFrameLeavesSegmentedByTheKernel() throws {
        let name = uniqueTapName("so")
        let backend = try RunningBackend(tapName: name)
        defer { backend.stop() }
        // TAP -> bridge -> veth without TSO/GSO: the kernel must segment on the way out.
        try sh("""
            ip link add twbr0 type bridge forward_delay 0 && ip link add twv0 type veth peer name twv1 && \
            ip link set \(name) master twbr0 && ip link set twv0 master twbr0 && \
            ethtool -K twv0 tso off gso off >/dev/null && \
            ip link set twbr0 up && ip link set twv0 up && ip link set twv1 up && sleep 0.5
            """)
        defer { _ = try? sh("ip link del twbr0; ip link del twv0") }
        let capture = try PacketSocket(interface: "twv1")
        let fe = try VhostUserFrontend(connectingTo: backend.socketPath)
        let features = try fe.start()
        #expect(features & NetFeature.hostTSO4 != 0 && features & NetFeature.csum != 0)
        let tx = try #require(fe.queues[1])
        let (header, frame) = tsoFrame(payload: 64_000, mss: 1448, destination: [0x02, 0xaa, 0, 0, 0, 0x02])
        let headerAddress = fe.arena.allocate(12)
        fe.arena.write(header, at: headerAddress)
        let frameAddress = fe.arena.allocate(frame.count)
        fe.arena.write(frame, at: frameAddress)
        tx.driver.post([DriverBuffer(address: headerAddress, length: 12, writable: false),
                        DriverBuffer(address: frameAddress, length: UInt32(frame.count), writable: false)])
        tx.notify()
        #expect(tx.waitForUsed(count: 1, timeoutMilliseconds: 3000).count == 1)
        let segments = capture.receive(count: 45, timeoutMilliseconds: 3000) { $0.count > 14 && $0[12] == 0x08 && $0[13] == 0x00 }
        #expect(segments.count == 45, "64000 bytes at MSS 1448 are 45 segments; saw sizes \(segments.map(\.count))")
        #expect(segments.allSatisfy { $0.count <= 14 + 20 + 20 + 1448 })
        #expect(segments.reduce(0) { $0 + $1.count - 54 } == 64_000, "every payload byte left the TAP once")
        #expect(backend.stats(queue: 1).frames == 1)
    }

    @Test(.enabled(if: tunAvailable, "needs root and /dev/net/tun"))
    func gsoFrameIntoTheTapArrivesAsOneMergedReceive() throws {
        let name = uniqueTapName("mg")
        let backend = try RunningBackend(tapName: name)
        defer { backend.stop() }
        let fe = try VhostUserFrontend(connectingTo: backend.socketPath)
        let features = try fe.start()
        #expect(features & NetFeature.mergeableRxBuffers != 0)
        #expect(features & NetFeature.guestTSO4 != 0)
        // This kernel's TAP takes USO (TUN_F_USO4|USO6 with CSUM), so USO is offered too.
        if let tap = backend.tap, tap.probeOffloads() & UInt32(TW_TUN_F_USO4) != 0 {
            #expect(features & (NetFeature.hostUSO | NetFeature.guestUSO4 | NetFeature.guestUSO6)
                    == NetFeature.hostUSO | NetFeature.guestUSO4 | NetFeature.guestUSO6)
        }
        let rx = try #require(fe.queues[0])
        var buffers = [UInt16: UInt64]()
        for _ in 0..<64 {
            let buffer = fe.arena.allocate(4096)
            if let head = rx.driver.post([DriverBuffer(address: buffer, length: 4096, writable: true)]) { buffers[head] = buffer }
        }
        rx.notify()
        usleep(50_000)
        let injector = try PacketSocket(interface: name, vnetHeader: true)
        let (header, frame) = tsoFrame(payload: 64_000, mss: 1448, destination: [0x52, 0x54, 0, 0x12, 0x34, 0x56])
        // PACKET_VNET_HDR takes the 10-byte legacy header in front of the frame.
        try injector.send(Array(header.prefix(10)) + frame)
        let expectedBuffers = (12 + frame.count + 4095) / 4096
        var used = rx.waitForUsed(count: expectedBuffers, timeoutMilliseconds: 3000)
        // Skip anything the kernel sent on its own (IPv6 router solicitations, ...).
        while let first = used.first, let address = buffers[first.head],
              fe.arena.read(address + 12 + 12, count: 2) != [0x08, 0x00] {
            let count = max(1, min(Int(fe.arena.read(address + 10, count: 1)[0]), used.count))
            used.removeFirst(count)
            used += rx.waitForUsed(count: count, timeoutMilliseconds: 1000)
        }
        let first = try #require(used.first)
        let firstBuffer = try #require(buffers[first.head])
        let received = fe.arena.read(firstBuffer, count: 12)
        let numBuffers = Int(received[10]) | Int(received[11]) << 8
        #expect(numBuffers == expectedBuffers, "num_buffers counts the chains one 64 KiB frame used")
        #expect(received[1] == NetHeader.gsoTCPv4, "the GSO type reaches the guest")
        #expect(Int(received[4]) | Int(received[5]) << 8 == 1448, "and the MSS")
        let total = used.prefix(numBuffers).reduce(0) { $0 + Int($1.length) }
        #expect(total == 12 + frame.count, "used lengths add up to header + frame")
        var reassembled = [UInt8]()
        for entry in used.prefix(numBuffers) { reassembled += fe.arena.read(try #require(buffers[entry.head]), count: Int(entry.length)) }
        #expect(Array(reassembled[12...]) == frame, "the frame arrives byte for byte")
    }
}
