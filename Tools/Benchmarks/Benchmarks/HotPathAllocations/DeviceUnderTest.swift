import Glibc
import Logging
import CTapwire
import SystemCalls
import TapDevice
import Virtqueue
import VhostUser
import VirtioNet
import PortSecurity
import VhostUserFrontend

struct BenchmarkSetupError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// A production `NetDevice`, set up in-process through the requests QEMU sends (`handle`), over
/// guest memory in a memfd whose rings the test frontend's `DriverQueue` lays out. The
/// benchmarks then call the datapath entry points the queue-pair worker calls
/// (`serviceTransmit`, `serviceReceive`), so the measured code is exactly the packet path.
///
/// The guest's side is written to never allocate: descriptor `i` always describes buffer `i`,
/// set once here, and because tapwire returns chains in the order it takes them, refilling a
/// ring is only publishing heads again.
final class DeviceUnderTest {
    /// 64-byte frames, as in the DPDK comparison: the per-frame cost dominates.
    static let frameBytes = 64
    static let headerBytes = 12
    /// A mergeable receive buffer, about what a Linux guest posts for small frames.
    static let receiveBufferBytes = 2048
    /// A local experimental EtherType (IEEE 802) that no host stack acts on.
    static let etherType: (UInt8, UInt8) = (0x88, 0xB5)

    let device: NetDevice
    let tap: Tap?
    let arena: GuestArena
    let receive: DriverQueue
    let transmit: DriverQueue
    /// The frontend's ends of the call eventfds (the device holds duplicates).
    private let receiveCall: Descriptor
    private let transmitCall: Descriptor
    private let kicks: [Descriptor]
    private let memfd: Descriptor
    private let mapping: MemoryMapping
    private var receiveUsedSeen: UInt16 = 0
    private var transmitUsedSeen: UInt16 = 0
    private let receiveBuffers: UInt64
    private let transmitFrames: UInt64

    /// Whether the guest acks the guest GSO offloads (TSO/UFO/USO): with them a frame may be
    /// 64 KiB and needs several 2 KiB buffers; without them each buffer holds a whole frame
    /// and receive reads go in io_uring batches.
    let guestGSO: Bool

    /// With `portSecurity`, the device runs the port-security checks on every frame, and the
    /// guest sends IPv4/UDP from the MAC and address the policy allows.
    init(tap: Tap?, guestGSO: Bool = true, portSecurity: Bool = false, receiveRingSize: UInt16 = 1024,
         transmitRingSize: UInt16 = 256) throws {
        self.tap = tap
        self.guestGSO = guestGSO
        var logger = Logger(label: "tapwire-bench")
        logger.logLevel = .warning
        let memoryBytes = 8 << 20
        memfd = try MemFD.make(name: "tapwire-bench-guest", size: memoryBytes)
        mapping = try MemoryMapping(descriptor: memfd.raw, length: memoryBytes)
        arena = GuestArena(base: mapping.base, size: memoryBytes, fd: memfd.raw, owner: mapping)
        receive = DriverQueue(arena: arena, size: receiveRingSize)
        transmit = DriverQueue(arena: arena, size: transmitRingSize)
        receiveBuffers = arena.allocate(Int(receiveRingSize) * Self.receiveBufferBytes, alignment: 4096)
        transmitFrames = arena.allocate(Int(transmitRingSize) * Self.transmitSlotBytes, alignment: 4096)
        receiveCall = try EventFD.make()
        transmitCall = try EventFD.make()
        kicks = [try EventFD.make(), try EventFD.make()]

        for i in 0..<receiveRingSize {
            receive.writeDescriptor(i, address: receiveBuffers + UInt64(i) * UInt64(Self.receiveBufferBytes),
                                    length: UInt32(Self.receiveBufferBytes), flags: Ring.descriptorWrite, next: 0)
        }
        // Each transmit chain is one descriptor holding the virtio-net header and the frame,
        // as a Linux guest sends a small frame (VERSION_1: any layout).
        let frame = portSecurity ? Self.allowedTransmitFrame() : Self.transmitFrame()
        for i in 0..<transmitRingSize {
            let slot = transmitFrames + UInt64(i) * UInt64(Self.transmitSlotBytes)
            arena.write(frame, at: slot)
            transmit.writeDescriptor(i, address: slot, length: UInt32(frame.count), flags: 0, next: 0)
        }

        let policy = portSecurity ? PortPolicy(mac: Self.guestMAC, allowedIPs: [.v4(address: Self.guestIPv4, prefixLength: 32)]) : nil
        device = NetDevice(config: NetDeviceConfig(mac: Self.guestMAC, portPolicy: policy), tap: tap, logger: logger,
                           now: monotonicNanoseconds())
        try negotiate()
        receive.eventIndex = device.ackedFeatures & NetFeature.ringEventIndex != 0
        transmit.eventIndex = receive.eventIndex
        guard device.queues[0].isRunning, device.queues[1].isRunning else {
            throw BenchmarkSetupError("queues did not start: \(device.queues[0].fault ?? "-") / \(device.queues[1].fault ?? "-")")
        }
    }

    static let transmitSlotBytes = 128

    /// The virtio-net header (no offload) and a broadcast frame of the benchmark's EtherType.
    static func transmitFrame() -> [UInt8] {
        [UInt8](repeating: 0, count: headerBytes) + ethernetFrame()
    }

    static let guestMAC: [UInt8] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x01]
    static let guestIPv4: UInt32 = 0x0a00_0001

    /// The header and a 64-byte IPv4/UDP broadcast from `guestMAC` and `guestIPv4` (to the
    /// discard port), which port security lets through after reading every header.
    static func allowedTransmitFrame() -> [UInt8] {
        let ipBytes = frameBytes - 14
        var frame: [UInt8] = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff] + guestMAC + [0x08, 0x00]
        frame += [0x45, 0, 0, UInt8(ipBytes), 0, 0, 0, 0, 64, 17, 0, 0, 10, 0, 0, 1, 10, 0, 0, 255]
        frame += [0x30, 0x39, 0, 9, 0, UInt8(ipBytes - 20), 0, 0]
        while frame.count < frameBytes { frame.append(0) }
        return [UInt8](repeating: 0, count: headerBytes) + frame
    }

    static func ethernetFrame() -> [UInt8] {
        var frame: [UInt8] = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02, 0x00, 0x00, 0x00, 0x00, 0x01, etherType.0, etherType.1]
        while frame.count < frameBytes { frame.append(UInt8(truncatingIfNeeded: frame.count)) }
        return frame
    }

    /// What QEMU sends at start-up: every offered feature but LOG_ALL acked (mergeable buffers, event idx,
    /// indirect, offloads; guest GSO only if `guestGSO`), the memory table, then each queue's size, base, addresses, call and
    /// kick, and enable.
    private func negotiate() throws {
        // LOG_ALL is acked only while a migration runs (it needs a dirty log first).
        var features = try u64(reply(.getFeatures, "GET_FEATURES")) & ~NetFeature.logAll
        if !guestGSO { features &= ~NetFeature.guestLargeReceive }
        try expectDone(.setFeatures(features), "SET_FEATURES")
        let protocolFeatures = try u64(reply(.getProtocolFeatures, "GET_PROTOCOL_FEATURES"))
        let wanted = [ProtocolFeature.multiqueue, .replyAck, .netMTU, .configureMemSlots].reduce(UInt64(0)) { $0 | $1.mask }
        try expectDone(.setProtocolFeatures(protocolFeatures & wanted), "SET_PROTOCOL_FEATURES")
        try expectDone(.setOwner, "SET_OWNER")
        let region = RegionDescription(guestPhysicalAddress: 0, size: UInt64(arena.size), userspaceAddress: arena.userspaceBase,
                                       mmapOffset: 0)
        try expectDone(.setMemTable([region], [try duplicate(memfd)]), "SET_MEM_TABLE")
        for (index, driver, call) in [(UInt32(0), receive, receiveCall), (UInt32(1), transmit, transmitCall)] {
            let u = arena.userspaceBase
            try expectDone(.setVringNum(index: index, num: UInt32(driver.size)), "SET_VRING_NUM")
            try expectDone(.setVringBase(index: index, num: 0), "SET_VRING_BASE")
            try expectDone(.setVringAddr(VringAddress(index: index, descriptors: u + driver.descriptorTable,
                                                      used: u + driver.usedRing, avail: u + driver.availRing)), "SET_VRING_ADDR")
            try expectDone(.setVringCall(index: index, try duplicate(call)), "SET_VRING_CALL")
            try expectDone(.setVringKick(index: index, try duplicate(kicks[Int(index)])), "SET_VRING_KICK")
        }
        for index in UInt32(0)...1 { try expectDone(.setVringEnable(index: index, enable: true), "SET_VRING_ENABLE") }
    }

    private func reply(_ message: VhostUserMessage, _ name: String) throws -> [UInt8] {
        switch device.handle(message) {
        case .payload(let bytes): return bytes
        case .done: throw BenchmarkSetupError("\(name) gave no reply")
        case .failed(let reason): throw BenchmarkSetupError("\(name) refused: \(reason)")
        }
    }

    private func expectDone(_ message: VhostUserMessage, _ name: String) throws {
        if case .failed(let reason) = device.handle(message) { throw BenchmarkSetupError("\(name) refused: \(reason)") }
    }

    private func u64(_ bytes: [UInt8]) throws -> UInt64 {
        guard bytes.count == 8 else { throw BenchmarkSetupError("expected an 8-byte reply, got \(bytes.count)") }
        return bytes.withUnsafeBytes { $0.loadUnaligned(as: UInt64.self) }
    }

    /// The device owns what it is given, as with descriptors passed over the socket.
    private func duplicate(_ descriptor: Descriptor) throws -> Descriptor {
        let raw = dup(descriptor.raw)
        guard raw >= 0 else { throw BenchmarkSetupError("dup: errno \(errno)") }
        return Descriptor(taking: raw)
    }

    // MARK: - The guest's side of the packet path (allocation-free)

    /// Makes transmit chains `0..<count` available, one frame each.
    @inline(__always)
    func postTransmit(_ count: Int) {
        for head in 0..<count { transmit.publish(head: UInt16(head)) }
    }

    /// Takes back what the device completed on the transmit ring; returns how many chains.
    @inline(__always)
    func reclaimTransmit() -> Int {
        let used = transmit.usedIndex
        let count = Int(used &- transmitUsedSeen)
        transmitUsedSeen = used
        transmit.setUsedEvent(used)
        EventFD.drain(transmitCall.raw)
        return count
    }

    /// Makes every receive buffer available once (at the start).
    func postAllReceiveBuffers() {
        for head in 0..<receive.size { receive.publish(head: head) }
    }

    /// Takes the frames the device delivered and posts their buffers again, as a guest's NAPI
    /// poll does. Counts frames that are exactly the injected one (length and EtherType);
    /// anything else (another frame, a buffer returned empty) is counted as unexpected.
    @inline(__always)
    func reclaimReceive() -> (frames: Int, unexpected: Int) {
        let used = receive.usedIndex
        var frames = 0
        var unexpected = 0
        let expectedLength = UInt32(Self.headerBytes + Self.frameBytes)
        while receiveUsedSeen != used {
            let slot = UInt64(receiveUsedSeen & (receive.size - 1))
            // SAFETY: the used ring holds `size` elements in the arena (DriverQueue laid it out).
            let element = arena.pointer(receive.usedRing + 4 + 8 * slot).loadUnaligned(as: tw_vring_used_elem.self)
            let head = UInt16(truncatingIfNeeded: element.id)
            let buffer = arena.pointer(receiveBuffers + UInt64(head) * UInt64(Self.receiveBufferBytes))
            // SAFETY: a receive buffer is receiveBufferBytes long; the EtherType sits at 12 + 12.
            let etherTypeMatches = buffer.load(fromByteOffset: Self.headerBytes + 12, as: UInt8.self) == Self.etherType.0
                && buffer.load(fromByteOffset: Self.headerBytes + 13, as: UInt8.self) == Self.etherType.1
            if element.len == expectedLength && etherTypeMatches { frames += 1 } else { unexpected += 1 }
            receive.publish(head: head)
            receiveUsedSeen &+= 1
        }
        receive.setUsedEvent(used)
        EventFD.drain(receiveCall.raw)
        return (frames, unexpected)
    }
}
