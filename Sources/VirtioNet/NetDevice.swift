import Glibc
import CTapwire
import Logging
import SystemCalls
import GuestMemory
import Virtqueue
import VhostUser
import TapDevice
import RateLimiter
import PortSecurity

/// What the operator chose for this VM's device.
public struct NetDeviceConfig: Sendable {
    public var queuePairs: Int
    /// Offloads the operator allows (nil: everything the TAP supports).
    public var offloads: Offload?
    public var mac: [UInt8]?
    public var mtu: Int?
    public var txLimits: DirectionLimits
    public var rxLimits: DirectionLimits
    /// Frames per service call before other queues get a turn.
    public var batchBudget: Int
    /// After a transmit burst empties the ring, look again this much later before asking the
    /// guest for kicks again (0: ask at once; nil: adaptive, only while traffic streams, see
    /// `TransmitPollPolicy`). Under load the guest then keeps posting without exiting to kick
    /// for every frame, which is what costs a TCG guest most.
    public var transmitPollMicroseconds: Int?
    /// After any work, a queue pair's thread keeps polling its rings and TAP for this long
    /// with kicks off instead of sleeping (0: event-driven). Trades a core for latency.
    public var busyPollMicroseconds: Int
    /// How interrupts are spaced out while data streams (`InterruptModeration.off`: never).
    public var interruptModeration: InterruptModeration
    /// What the guest may send and receive (nil: port security off, every frame passes).
    public var portPolicy: PortPolicy?

    /// Both interrupt holdoffs by default (chosen on this 2-core TCG machine, see README).
    public static let defaultHoldoffMicroseconds = 300
    public static let defaultInterruptModeration = InterruptModeration(receiveHoldoffMicroseconds: defaultHoldoffMicroseconds,
                                                                       transmitHoldoffMicroseconds: defaultHoldoffMicroseconds)

    public init(queuePairs: Int = 1, offloads: Offload? = nil, mac: [UInt8]? = nil, mtu: Int? = nil,
                txLimits: DirectionLimits = DirectionLimits(), rxLimits: DirectionLimits = DirectionLimits(),
                batchBudget: Int = 256, transmitPollMicroseconds: Int? = nil, busyPollMicroseconds: Int = 0,
                interruptModeration: InterruptModeration = NetDeviceConfig.defaultInterruptModeration,
                portPolicy: PortPolicy? = nil) {
        self.queuePairs = queuePairs
        self.offloads = offloads
        self.mac = mac
        self.mtu = mtu
        self.txLimits = txLimits
        self.rxLimits = rxLimits
        self.batchBudget = batchBudget
        self.transmitPollMicroseconds = transmitPollMicroseconds
        self.busyPollMicroseconds = busyPollMicroseconds
        self.interruptModeration = interruptModeration
        self.portPolicy = portPolicy
    }

    /// A fresh transmit poll policy for one queue pair, from `transmitPollMicroseconds`.
    public var transmitPollPolicy: TransmitPollPolicy {
        TransmitPollPolicy(transmitPollMicroseconds.map { $0 == 0 ? .off : .fixed(microseconds: $0) } ?? .adaptive)
    }
}

/// A handler's verdict on one request.
public enum HandlerReply {
    /// Done; an ack (0) is sent only if the frontend asked for one.
    case done
    /// A reply payload the request always gets.
    case payload([UInt8])
    /// Refused; the reason is logged and returned as a non-zero ack if one was asked for.
    case failed(String)
}

/// One VM's virtio-net device as the vhost-user protocol drives it. Lives on the device's
/// event-loop thread; nothing here is shared.
public final class NetDevice {
    public let config: NetDeviceConfig
    public let tap: Tap?
    public let logger: Logger
    /// Offloads this device may offer: the operator's choice within what the TAP supports.
    public let availableOffloads: Offload
    public private(set) var ackedFeatures: UInt64 = 0
    public private(set) var ackedProtocolFeatures: UInt64 = 0
    public private(set) var featuresSet = false
    public private(set) var memory: GuestMemoryMap?
    public private(set) var headerSize = 12
    public private(set) var frontendMTU: Int?
    /// The frontend's dirty-page log (SET_LOG_BASE); written only while LOG_ALL is acked.
    public private(set) var dirtyLog: DirtyLog?
    public var loggingDirtyPages: Bool { ackedFeatures & NetFeature.logAll != 0 && dirtyLog != nil }
    public let queues: [QueueState]
    /// Port security, read by the packet path once per service call; changed only while the
    /// queue threads are parked (`updatePortPolicy`).
    public private(set) var portFilter: PortFilter?
    private var mappedRegions: [(description: RegionDescription, region: MemoryRegion)] = []
    private var configSpace: [UInt8]
    var rxFrameCapacityNeeded = 65550 + 12

    /// Called after any change that may start, stop or re-route a queue (the loop re-registers fds).
    public var onQueuesChanged: () -> Void = {}

    /// GUEST_ANNOUNCE: after a migration QEMU has the guest announce itself (through the control
    /// queue, which QEMU keeps), instead of sending SEND_RARP. RING_RESET is never offered: QEMU 10
    /// passes it to the guest but resets a queue only for its kernel vhost backend, so a guest that
    /// resets a ring (`ethtool -G`) would start it afresh while tapwire kept its old indexes.
    /// LOG_ALL: live migration, with the dirty log that SET_LOG_BASE hands over.
    public static let backendFeatures: UInt64 = NetFeature.version1 | NetFeature.ringIndirect | NetFeature.ringEventIndex
        | NetFeature.protocolFeatures | NetFeature.status | NetFeature.guestAnnounce | NetFeature.logAll

    /// CONFIG is not offered: QEMU's net device never uses it and warns when offered, but
    /// GET_CONFIG/SET_CONFIG are still answered for frontends that send them.
    public static let supportedProtocolFeatures: [ProtocolFeature] = [
        .multiqueue, .replyAck, .netMTU, .resetDevice, .configureMemSlots, .logSharedMemory, .rarp,
    ]

    public init(config: NetDeviceConfig, tap: Tap?, logger: Logger, now: UInt64) {
        self.config = config
        self.tap = tap
        self.logger = logger
        let supported = tap.map { offloads(fromTapFlags: $0.probeOffloads()) } ?? Offload.all
        availableOffloads = (config.offloads ?? .all).intersection(supported)
        queues = (0..<(2 * config.queuePairs)).map { index in
            QueueState(index: index, limits: index % 2 == 0 ? config.rxLimits : config.txLimits,
                       moderation: config.interruptModeration, now: now)
        }
        for pair in 0..<config.queuePairs {
            queues[2 * pair].partner = queues[2 * pair + 1]
            queues[2 * pair + 1].partner = queues[2 * pair]
        }
        if let tap, tap.ioRings.count == config.queuePairs {
            // A pair's two queues share its ring: one thread serves both, a batch at a time.
            for pair in 0..<config.queuePairs {
                queues[2 * pair].tapRing = tap.ioRings[pair]
                queues[2 * pair + 1].tapRing = tap.ioRings[pair]
            }
        }
        portFilter = config.portPolicy.map(PortFilter.init)
        configSpace = [UInt8](repeating: 0, count: 24)
        buildConfigSpace()
        filterUnicastAtTheTap()
    }

    public var offeredFeatures: UInt64 {
        var f = Self.backendFeatures | availableOffloads.offeredFeatures
        if config.queuePairs > 1 { f |= NetFeature.multiqueue }
        if config.mac != nil { f |= NetFeature.mac }
        if config.mtu != nil { f |= NetFeature.mtu }
        return f
    }

    public var offeredProtocolFeatures: UInt64 {
        Self.supportedProtocolFeatures.reduce(0) { $0 | $1.mask }
    }

    public var protocolFeaturesNegotiated: Bool { ackedFeatures & NetFeature.protocolFeatures != 0 }
    public var replyAckNegotiated: Bool { ackedProtocolFeatures & ProtocolFeature.replyAck.mask != 0 }
    /// Whether TAP reads and writes go in io_uring batches (else one readv/writev per frame).
    public var batchedTapIO: Bool { queues.count > 1 && queues[1].tapRing != nil }
    public var mergeableRxBuffers: Bool { ackedFeatures & NetFeature.mergeableRxBuffers != 0 }

    /// virtio_net_config: mac, status, max_virtqueue_pairs, mtu, speed, duplex.
    private func buildConfigSpace() {
        var bytes = [UInt8](repeating: 0, count: 24)
        if let mac = config.mac { for i in 0..<6 { bytes[i] = mac[i] } }
        bytes[6] = 1 // VIRTIO_NET_S_LINK_UP
        bytes[8] = UInt8(config.queuePairs & 0xff)
        bytes[9] = UInt8(config.queuePairs >> 8)
        let mtu = config.mtu ?? 1500
        bytes[10] = UInt8(mtu & 0xff)
        bytes[11] = UInt8(mtu >> 8)
        let speed = UInt32.max // unknown
        withUnsafeBytes(of: speed) { for i in 0..<4 { bytes[12 + i] = $0[i] } }
        bytes[16] = 0xff // duplex unknown
        configSpace = bytes
    }

    // MARK: - Requests

    public func handle(_ message: VhostUserMessage) -> HandlerReply {
        switch message {
        case .getFeatures:
            return .payload(MessageEncoder.u64(offeredFeatures))
        case .setFeatures(let features):
            return setFeatures(features)
        case .getProtocolFeatures:
            return .payload(MessageEncoder.u64(offeredProtocolFeatures))
        case .setProtocolFeatures(let features):
            let unknown = features & ~offeredProtocolFeatures
            guard unknown == 0 else { return .failed("SET_PROTOCOL_FEATURES acks unoffered bits 0x\(String(unknown, radix: 16))") }
            ackedProtocolFeatures = features
            return .done
        case .setOwner:
            return .done
        case .resetOwner, .resetDevice:
            resetDevice()
            return .done
        case .getQueueNum:
            return .payload(MessageEncoder.u64(UInt64(config.queuePairs)))
        case .getMaxMemSlots:
            return .payload(MessageEncoder.u64(UInt64(GuestMemoryMap.maxRegions)))
        case .setMemTable(let regions, let fds):
            return setMemTable(regions, fds)
        case .addMemReg(let region, let fd):
            return addRegion(region, fd)
        case .remMemReg(let region):
            return removeRegion(region)
        case .setVringNum(let index, let num):
            guard let queue = queue(index) else { return .failed("SET_VRING_NUM for queue \(index), only \(queues.count) exist") }
            guard Ring.isValidSize(num) else { return .failed("SET_VRING_NUM \(num) for queue \(index): not a power of two in 1...32768") }
            guard queue.ring == nil else { return .failed("SET_VRING_NUM for running queue \(index)") }
            queue.size = UInt16(num)
            return .done
        case .setVringAddr(let address):
            return setVringAddress(address)
        case .setVringBase(let index, let num):
            guard let queue = queue(index) else { return .failed("SET_VRING_BASE for queue \(index), only \(queues.count) exist") }
            guard num <= UInt32(UInt16.max) else { return .failed("SET_VRING_BASE \(num) for queue \(index) exceeds 16 bits") }
            guard queue.ring == nil else { return .failed("SET_VRING_BASE for running queue \(index)") }
            queue.base = UInt16(num)
            return .done
        case .getVringBase(let index):
            guard let queue = queue(index) else { return .failed("GET_VRING_BASE for queue \(index), only \(queues.count) exist") }
            let base = stopQueue(queue)
            return .payload(MessageEncoder.vringState(index: index, num: UInt32(base)))
        case .setVringKick(let index, let fd):
            guard let queue = queue(index) else { return .failed("SET_VRING_KICK for queue \(index), only \(queues.count) exist") }
            guard let fd else { return .failed("SET_VRING_KICK without a descriptor for queue \(index): polling mode is not supported") }
            queue.kick = fd
            queue.started = true
            if !protocolFeaturesNegotiated { queue.enabled = true }
            startIfReady(queue)
            onQueuesChanged()
            return .done
        case .setVringCall(let index, let fd):
            guard let queue = queue(index) else { return .failed("SET_VRING_CALL for queue \(index), only \(queues.count) exist") }
            queue.call = fd
            queue.callFD = fd?.raw ?? -1
            if let ring = queue.ring, let fd {
                // QEMU 10 sends the guest's interrupt eventfd after the kick that started the
                // ring: an interrupt already sent went to its placeholder and was lost, and
                // event-idx suppression would never send another. Tell the guest again now.
                ring.forgetSignalledState()
                EventFD.signal(fd.raw)
            }
            return .done
        case .setVringErr(let index, let fd):
            guard let queue = queue(index) else { return .failed("SET_VRING_ERR for queue \(index), only \(queues.count) exist") }
            queue.err = fd
            return .done
        case .setVringEnable(let index, let enable):
            guard let queue = queue(index) else { return .failed("SET_VRING_ENABLE for queue \(index), only \(queues.count) exist") }
            // QEMU sends this before SET_FEATURES acks PROTOCOL_FEATURES (offering it is enough).
            queue.enabled = enable
            if queue.isReceive, let tap, tap.queues.count > 1 {
                do { try tap.setQueueEnabled(queue.pair, enable) } catch { logger.warning("\(error)") }
            }
            onQueuesChanged()
            return .done
        case .sendRARP(let mac):
            return announce(mac: mac)
        case .setLogBase(let size, let offset, let fd):
            return setLogBase(size: size, offset: offset, fd)
        case .setLogFD:
            // Only kernel vhost signals log updates through it; the descriptor is closed.
            return .done
        case .netSetMTU(let mtu):
            guard mtu >= 68, mtu <= 65535 else { return .failed("NET_SET_MTU \(mtu) outside 68...65535") }
            frontendMTU = Int(mtu)
            logger.info("frontend set MTU \(mtu)")
            return .done
        case .getConfig(let offset, let size, _):
            var out = [UInt8](repeating: 0, count: Int(size))
            for i in 0..<Int(size) where Int(offset) + i < configSpace.count { out[i] = configSpace[Int(offset) + i] }
            return .payload(MessageEncoder.config(offset: offset, size: size, flags: 0, data: out))
        case .setConfig(let offset, _, let data):
            // Only the MAC is writable (as with VIRTIO_NET_F_CTRL_MAC_ADDR); other bytes are read-only.
            guard offset + UInt32(data.count) <= 6 else { return .failed("SET_CONFIG at \(offset)+\(data.count): only the MAC is writable") }
            for (i, byte) in data.enumerated() { configSpace[Int(offset) + i] = byte }
            return .done
        case .setBackendReqFD:
            return .done
        case .unsupported(let request):
            return .failed("\(request.name) is not supported by a net backend")
        }
    }

    private func queue(_ index: UInt32) -> QueueState? {
        Int(index) < queues.count ? queues[Int(index)] : nil
    }

    private func setFeatures(_ features: UInt64) -> HandlerReply {
        let unknown = features & ~offeredFeatures
        guard unknown == 0 else {
            return .failed("SET_FEATURES acks features that were not offered: \(NetFeature.describe(unknown).joined(separator: ","))")
        }
        // QEMU turns LOG_ALL on and off while the guest runs (start and end of a migration).
        if queues.contains(where: { $0.ring != nil }) && (features ^ ackedFeatures) & ~NetFeature.logAll != 0 {
            return .failed("SET_FEATURES changes features while queues are running")
        }
        if features & NetFeature.logAll != 0 && dirtyLog == nil {
            return .failed("SET_FEATURES acks LOG_ALL, but no SET_LOG_BASE gave a log to write")
        }
        let loggingChanged = (features ^ ackedFeatures) & NetFeature.logAll != 0
        ackedFeatures = features
        if loggingChanged {
            applyDirtyLog()
            logger.info("dirty-page logging \(features & NetFeature.logAll != 0 ? "on: a migration is under way" : "off")")
        }
        featuresSet = true
        headerSize = NetHeader.size(forFeatures: features)
        if !protocolFeaturesNegotiated { for queue in queues where queue.started { queue.enabled = true } }
        if let tap {
            do {
                try tap.setVnetHeaderSize(headerSize)
                try tap.setOffload(tapOffloadFlags(forAckedFeatures: features))
            } catch {
                return .failed("configuring \(tap.name) for the acked features: \(error)")
            }
        }
        let guestGSO = features & NetFeature.guestGSO != 0
        let mtu = max(tap?.mtu ?? 1500, frontendMTU ?? 0, config.mtu ?? 0, 1500)
        rxFrameCapacityNeeded = headerSize + (guestGSO ? 65550 : mtu + 18)
        logger.info("features acked: \(NetFeature.describe(features).joined(separator: " "))")
        return .done
    }

    // MARK: - Memory

    private func setMemTable(_ regions: [RegionDescription], _ fds: [Descriptor]) -> HandlerReply {
        var mapped = [(description: RegionDescription, region: MemoryRegion)]()
        for (i, description) in regions.enumerated() {
            switch mapRegion(description, fds[i]) {
            case .success(let region): mapped.append((description, region))
            case .failure(let reason): return .failed("SET_MEM_TABLE region \(i): \(reason)")
            }
        }
        return install(mapped, what: "SET_MEM_TABLE")
    }

    private func addRegion(_ description: RegionDescription, _ fd: Descriptor) -> HandlerReply {
        guard mappedRegions.count < GuestMemoryMap.maxRegions else {
            return .failed("ADD_MEM_REG: already \(mappedRegions.count) regions (GET_MAX_MEM_SLOTS said \(GuestMemoryMap.maxRegions))")
        }
        switch mapRegion(description, fd) {
        case .success(let region): return install(mappedRegions + [(description, region)], what: "ADD_MEM_REG")
        case .failure(let reason): return .failed("ADD_MEM_REG: \(reason)")
        }
    }

    private func removeRegion(_ description: RegionDescription) -> HandlerReply {
        guard let at = mappedRegions.firstIndex(where: {
            $0.description.guestPhysicalAddress == description.guestPhysicalAddress
                && $0.description.size == description.size
                && $0.description.userspaceAddress == description.userspaceAddress
        }) else {
            return .failed("REM_MEM_REG: no region at guest \(hex(description.guestPhysicalAddress)) size \(description.size)")
        }
        var remaining = mappedRegions
        remaining.remove(at: at)
        return install(remaining, what: "REM_MEM_REG")
    }

    private func mapRegion(_ d: RegionDescription, _ fd: Descriptor) -> Result<MemoryRegion, MapFailure> {
        guard d.size > 0 else { return .failure(MapFailure("size 0")) }
        let (length, overflow) = d.size.addingReportingOverflow(d.mmapOffset)
        guard !overflow, length <= UInt64(Int.max) else { return .failure(MapFailure("size + mmap_offset overflows")) }
        let fileSize: UInt64
        do { fileSize = try fd.fileSize() } catch { return .failure(MapFailure("\(error)")) }
        // A mapping past the end of its file would SIGBUS on the first guest access.
        guard fileSize >= length else {
            return .failure(MapFailure("size \(d.size) + mmap_offset \(d.mmapOffset) exceeds the \(fileSize)-byte file"))
        }
        let mapping: MemoryMapping
        do { mapping = try MemoryMapping(descriptor: fd.raw, length: Int(length)) } catch { return .failure(MapFailure("\(error)")) }
        return .success(MemoryRegion(guestPhysicalAddress: d.guestPhysicalAddress, size: d.size, userspaceAddress: d.userspaceAddress,
                                     host: mapping.base + Int(d.mmapOffset), owner: mapping))
    }

    /// Replaces the memory table as a whole; running rings are re-resolved against it and
    /// keep their positions. The fds were only needed for mmap and close when dropped.
    private func install(_ regions: [(description: RegionDescription, region: MemoryRegion)], what: String) -> HandlerReply {
        let map: GuestMemoryMap
        do { map = try GuestMemoryMap(regions: regions.map(\.region)) } catch { return .failed("\(what): \(error)") }
        mappedRegions = regions
        memory = map
        logger.info("\(what): \(regions.count) region(s), \(map.totalSize >> 20) MiB of guest memory")
        if let dirtyLog, map.guestEnd > dirtyLog.coveredBytes {
            // QEMU grows the log before it adds memory; pages past its end cannot be marked.
            logger.error("\(what): guest memory now reaches \(hex(map.guestEnd)), past the dirty log's \(hex(dirtyLog.coveredBytes)); writes there go unlogged until a larger SET_LOG_BASE")
        }
        for queue in queues where queue.ring != nil || queue.started {
            let position = queue.ring.map { ($0.nextAvail, $0.nextUsed) }
            queue.ring = nil
            startIfReady(queue, resumeAt: position)
        }
        onQueuesChanged()
        return .done
    }

    // MARK: - Queues

    private func setVringAddress(_ a: VringAddress) -> HandlerReply {
        guard let queue = queue(a.index) else { return .failed("SET_VRING_ADDR for queue \(a.index), only \(queues.count) exist") }
        guard a.flags & ~VhostUserLimits.vringFlagLog == 0 else {
            return .failed("SET_VRING_ADDR flags 0x\(String(a.flags, radix: 16)): only VHOST_VRING_F_LOG (1) is defined")
        }
        queue.address = a
        if queue.ring != nil {
            let position = (queue.ring!.nextAvail, queue.ring!.nextUsed)
            queue.ring = nil
            startIfReady(queue, resumeAt: position)
            onQueuesChanged()
        }
        return .done
    }

    /// Builds the running ring once size, addresses, memory and kick are all known.
    func startIfReady(_ queue: QueueState, resumeAt position: (UInt16, UInt16)? = nil) {
        guard queue.started, queue.ring == nil, queue.fault == nil, queue.size > 0,
              let address = queue.address, let memory else { return }
        switch SplitQueue.resolveRing(memory: memory, size: queue.size, descriptors: address.descriptors,
                                      avail: address.avail, used: address.used) {
        case .failure(let error):
            failQueue(queue, "cannot start: \(error)")
        case .success(let pointers):
            var nextAvail = position?.0 ?? queue.base
            var nextUsed = position?.1 ?? queue.base
            if position == nil {
                // After a backend restart the frontend's base is its used index; trust the ring
                // itself if the two disagree (frames in flight are resent or dropped, never corrupt).
                let ringUsed = tw_load_acquire_u16(pointers.used + 2)
                if ringUsed != queue.base {
                    logger.warning("queue \(queue.index): base \(queue.base) but used index \(ringUsed) in the ring; resuming at \(ringUsed)")
                    nextAvail = ringUsed
                    nextUsed = ringUsed
                }
            }
            queue.ring = SplitQueue(size: queue.size, ring: pointers, memory: memory, nextAvail: nextAvail, nextUsed: nextUsed,
                                    indirectAllowed: ackedFeatures & NetFeature.ringIndirect != 0,
                                    eventIndex: ackedFeatures & NetFeature.ringEventIndex != 0)
            applyDirtyLog(to: queue)
            logger.info("queue \(queue.index) (\(queue.isReceive ? "rx" : "tx")) started at avail \(nextAvail), used \(nextUsed) (size \(queue.size))")
        }
    }

    /// Stops a queue (GET_VRING_BASE) and returns where the next frontend should resume.
    private func stopQueue(_ queue: QueueState) -> UInt16 {
        let base = queue.ring?.nextAvail ?? queue.base
        queue.ring?.publishUsed()
        // A held interrupt must not be lost with the ring.
        queue.releaseHeldInterrupt(now: monotonicNanoseconds())
        queue.ring = nil
        queue.started = false
        queue.kick = nil
        queue.fault = nil
        queue.base = base
        onQueuesChanged()
        // With "started at", marks a migration's or restart's hand-over in the log
        // (Tools/migration-check.sh times the downtime's parts from them).
        logger.info("queue \(queue.index) (\(queue.isReceive ? "rx" : "tx")) stopped at \(base): the next frontend resumes there")
        return base
    }

    /// Stops serving a queue the guest broke, tells the frontend through the error eventfd,
    /// and keeps the rest of the device going.
    /// Runs on whichever thread serves the queue: it only marks the queue; that thread's
    /// loop stops watching it (QueueState.isRunning turns false).
    func failQueue(_ queue: QueueState, _ reason: String) {
        logger.error("queue \(queue.index) failed: \(reason)")
        queue.fault = reason
        if let err = queue.err { EventFD.signal(err.raw) }
    }

    /// The frontend went away: back to the state of a fresh connection; the TAP and counters stay.
    public func resetConnection() {
        resetDevice()
        for queue in queues { queue.dropNotifiers() }
        ackedProtocolFeatures = 0
    }

    /// RESET_DEVICE, and RESET_OWNER, which QEMU sends instead where RESET_DEVICE is not
    /// offered: the device goes back to its initial state. What was negotiated for the
    /// connection stays: its protocol features (QEMU 10 resets the device during start-up and
    /// then waits for the REPLY_ACK of its next SET_VRING_ENABLE) and the frontend's eventfds.
    public func resetDevice() {
        for queue in queues { queue.resetRing() }
        memory = nil
        mappedRegions = []
        ackedFeatures = 0
        featuresSet = false
        dirtyLog = nil
        headerSize = 12
        frontendMTU = nil
        if let tap { try? tap.setOffload(0) }
        onQueuesChanged()
    }

    // MARK: - Live migration

    /// SET_LOG_BASE: maps the frontend's dirty log, which must cover all of guest memory and
    /// must never shrink under us (a mapping past the end of a truncated file faults). The
    /// reply is an empty message: QEMU waits for it before it turns logging on.
    private func setLogBase(size: UInt64, offset: UInt64, _ fd: Descriptor) -> HandlerReply {
        guard size > 0 else { return .failed("SET_LOG_BASE: a log of 0 bytes") }
        let (length, overflow) = size.addingReportingOverflow(offset)
        guard !overflow, length <= UInt64(Int.max) else { return .failed("SET_LOG_BASE: size \(size) + offset \(offset) overflows") }
        guard MemFD.cannotShrink(fd.raw) else {
            return .failed("SET_LOG_BASE: the log's file is not sealed against shrinking (F_SEAL_SHRINK), so it could be truncated under the mapping")
        }
        let fileSize: UInt64
        do { fileSize = try fd.fileSize() } catch { return .failed("SET_LOG_BASE: \(error)") }
        guard fileSize >= length else {
            return .failed("SET_LOG_BASE: size \(size) + offset \(offset) exceeds the \(fileSize)-byte file")
        }
        let mapping: MemoryMapping
        do { mapping = try MemoryMapping(descriptor: fd.raw, length: Int(length)) } catch { return .failed("SET_LOG_BASE: \(error)") }
        let log = DirtyLog(bitmap: mapping.base + Int(offset), byteCount: size, owner: mapping)
        if let memory, memory.guestEnd > log.coveredBytes {
            return .failed("SET_LOG_BASE: a log of \(size) bytes covers guest memory up to \(hex(log.coveredBytes)), but it reaches \(hex(memory.guestEnd))")
        }
        dirtyLog = log
        applyDirtyLog()
        logger.info("dirty log of \(size) bytes for guest memory up to \(hex(log.coveredBytes))")
        return .payload([])
    }

    /// Gives every running ring the log while LOG_ALL is acked, and takes it away after.
    private func applyDirtyLog() {
        for queue in queues { applyDirtyLog(to: queue) }
    }

    private func applyDirtyLog(to queue: QueueState) {
        guard let ring = queue.ring else { return }
        ring.dirtyLog = loggingDirtyPages ? dirtyLog : nil
        if let address = queue.address, address.flags & VhostUserLimits.vringFlagLog != 0 {
            ring.usedRingLogAddress = address.log
        } else {
            ring.usedRingLogAddress = nil
        }
    }

    /// SEND_RARP, on the destination of a migration for a guest that cannot announce itself:
    /// a RARP from the guest's MAC into the TAP, as QEMU's own announce sends, so bridges and
    /// switches learn the VM's new port at once.
    private func announce(mac: [UInt8]) -> HandlerReply {
        guard mac.count == MACAddress.length else { return .failed("SEND_RARP: \(mac.count)-byte MAC") }
        guard let tap else { return .done }
        var frame = [UInt8](repeating: 0, count: headerSize) + EthernetAnnounce.rarp(from: mac)
        let written = frame.withUnsafeMutableBytes { VectorIO.write(tap.queues[0].raw, $0.baseAddress!, count: $0.count) }
        guard written == frame.count else {
            return .failed("SEND_RARP: writing the announce to \(tap.name) failed (\(written < 0 ? String(cString: strerror(Int32(-written))) : "short write"))")
        }
        logger.info("announced \(MACAddress.format(mac)) on \(tap.name) (RARP)")
        return .done
    }

    // MARK: - Limits

    /// Turns port security on with `policy`, or off with nil. Call with the queue threads parked.
    public func updatePortPolicy(_ policy: PortPolicy?) {
        portFilter = policy.map(PortFilter.init)
        filterUnicastAtTheTap()
    }

    /// With port security the kernel drops unicast for other MACs before tapwire reads it, so
    /// a neighbour's frame never lands in this guest's buffers; the receive check stays for
    /// what the kernel lets through.
    private func filterUnicastAtTheTap() {
        guard let tap else { return }
        do {
            try tap.setUnicastFilter(portFilter?.policy.mac)
        } catch {
            logger.warning("\(error): unicast for other MACs is dropped by tapwire instead, after it is read")
        }
    }

    public func updateLimits(tx: DirectionLimits?, rx: DirectionLimits?, now: UInt64) {
        for queue in queues {
            if queue.isReceive, let rx { queue.limiter.update(rx, now: now) }
            if !queue.isReceive, let tx { queue.limiter.update(tx, now: now) }
        }
    }

    public var currentLimits: (tx: DirectionLimits, rx: DirectionLimits) {
        (queues[1].limiter.limits, queues[0].limiter.limits)
    }
}

struct MapFailure: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}
