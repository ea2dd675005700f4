import Glibc
import Logging
import ControlAPI
import RateLimiter
import SystemCalls
import VirtioNet
import PortSecurity
import Synchronization

/// Answers control requests by hopping onto the device's loop thread through its mailbox:
/// the API threads never touch device state, and the packet path takes no lock. Metrics are
/// the exception: they read the loop's gauges and the queues' atomic counters directly.
struct LoopControlBackend: ControlBackend {
    let mailbox: LoopMailbox<BackendLoop>
    let name: String
    let socketPath: String

    /// Runs `body` on the loop thread; `pausingWorkers` parks the workers around it.
    private func onLoop<T: Sendable>(pausingWorkers: Bool = true,
                                     _ body: @escaping @Sendable (BackendLoop) -> T) async -> T {
        await withCheckedContinuation { continuation in
            mailbox.post { loop in
                continuation.resume(returning: pausingWorkers ? loop.withWorkersPaused { body(loop) } : body(loop))
            }
        }
    }

    // Queue state (faults, limiters) belongs to the worker threads: read and change it while
    // they are parked.
    func status() async -> VMStatus {
        let name = self.name, socketPath = self.socketPath
        return await onLoop { loop in loop.status(name: name, socketPath: socketPath) }
    }

    /// The loop's gauges; a backend made without them (the integration tests') asks the loop for them.
    var gauges: LoopGauges?

    private func loopGauges() async -> LoopGauges {
        if let gauges { return gauges }
        return await onLoop(pausingWorkers: false) { $0.gauges }
    }

    // A scrape reads atomics only: it neither waits for the loop nor parks the packet path.
    func metrics() async -> MetricsSnapshot {
        await loopGauges().metrics()
    }

    func scrape() async -> (status: VMStatus, metrics: MetricsSnapshot) {
        let gauges = await loopGauges()
        let status = VMStatus(name: name, state: gauges.connected.load(ordering: .relaxed) ? .connected : .waiting,
                              uptimeSeconds: 0, tap: gauges.tap, mac: gauges.mac, mtu: 0, socketPath: socketPath,
                              queuePairsEnabled: gauges.pairsEnabled.load(ordering: .relaxed),
                              limits: LimitsStatus(gauges.limits.withLock { $0 }))
        return (status, gauges.metrics())
    }

    func updateLimits(_ update: LimitUpdate, replace: Bool) async throws -> VMStatus {
        let name = self.name, socketPath = self.socketPath
        return await onLoop { loop in
            let current = loop.device.currentLimits
            let next = update.applied(to: RateLimits(tx: current.tx, rx: current.rx), replace: replace)
            loop.device.updateLimits(tx: next.tx, rx: next.rx, now: monotonicNanoseconds())
            loop.gauges.limits.withLock { $0 = next }
            loop.limitsChanged()
            loop.logger.info("rate limits changed: \(LimitFormatter.limits(next))")
            return loop.status(name: name, socketPath: socketPath)
        }
    }

    func updatePortSecurity(_ update: PortSecurityUpdate, replace: Bool) async throws -> PortSecurityStatus {
        let result: Result<PortSecurityStatus, ControlAPIError> = await onLoop { loop in
            Result { () throws(ControlAPIError) in
                let next = try update.applied(to: loop.device.portSecurityStatus, replace: replace)
                loop.device.updatePortPolicy(try PortPolicy(next))
                loop.logger.info("port security changed: \(loop.device.portSecurityStatus.summary)")
                return loop.device.portSecurityStatus
            }
        }
        return try result.get()
    }
}

extension BackendLoop {
    func status(name: String, socketPath: String) -> VMStatus {
        let device = self.device
        let queues = device.queues.map { q in
            QueueStatus(index: q.index, direction: q.isReceive ? .rx : .tx, size: Int(q.size), enabled: q.enabled,
                        running: q.isRunning, fault: q.fault)
        }
        let limits = device.currentLimits
        let acked = device.ackedFeatures
        let ackedOffloads = Offload.byName.filter { acked & Offload(arrayLiteral: $0.1).offeredFeatures != 0 }.map(\.0)
        let enabledPairs = (0..<device.config.queuePairs).filter { device.queues[2 * $0].enabled }.count
        return VMStatus(
            name: name, state: isConnected ? .connected : .waiting,
            uptimeSeconds: Double(monotonicNanoseconds() - startedAt) / 1e9,
            tap: device.tap?.name ?? "(sink)", mac: device.config.mac.map(MACAddress.format) ?? "",
            mtu: device.frontendMTU ?? device.config.mtu ?? device.tap?.mtu ?? 1500, socketPath: socketPath,
            negotiatedFeatures: NetFeature.describe(acked), negotiatedFeaturesRaw: acked,
            protocolFeaturesRaw: device.ackedProtocolFeatures, offloadsOffered: device.availableOffloads.names,
            offloadsAcked: ackedOffloads, queuePairsConfigured: device.config.queuePairs, queuePairsEnabled: enabledPairs,
            queues: queues, limits: LimitsStatus(RateLimits(tx: limits.tx, rx: limits.rx)),
            portSecurity: device.portSecurityStatus)
    }
}

/// What a metrics scrape reads without reaching the loop: the queues' counters are QueueStats'
/// atomics, the rest the loop stores after each event (and the limits after each change).
final class LoopGauges: Sendable {
    let connections = Atomic<Int>(0), disconnects = Atomic<Int>(0)
    let connected = Atomic<Bool>(false), pairsEnabled = Atomic<Int>(0)
    let limits: Mutex<RateLimits>
    let queues: [(index: Int, isReceive: Bool, stats: QueueStats)]
    let tap: String, mac: String, startedAt: UInt64

    /// Before the workers start: the device's limits are then the loop's to read.
    init(device: NetDevice, startedAt: UInt64) {
        self.startedAt = startedAt
        let current = device.currentLimits
        limits = Mutex(RateLimits(tx: current.tx, rx: current.rx))
        queues = device.queues.map { ($0.index, $0.isReceive, $0.stats) }
        tap = device.tap?.name ?? "(sink)"
        mac = device.config.mac.map(MACAddress.format) ?? ""
    }

    func metrics() -> MetricsSnapshot {
        let queues = self.queues.map { q in
            let s = q.stats
            var drops = [String: UInt64]()
            for reason in DropReason.allCases { drops[reason.label] = s.drops(reason) }
            return QueueMetrics(index: q.index, direction: q.isReceive ? .rx : .tx, frames: s.frames, bytes: s.bytes,
                                kicks: s.kicks, interrupts: s.interrupts, interruptsHeld: s.interruptsHeld, tapBatches: s.tapBatches, throttledEvents: s.throttledEvents,
                                throttledNanoseconds: s.throttledNanoseconds, drops: drops)
        }
        return MetricsSnapshot(uptimeSeconds: Double(monotonicNanoseconds() - startedAt) / 1e9,
                               connectionsTotal: UInt64(connections.load(ordering: .relaxed)),
                               disconnects: UInt64(disconnects.load(ordering: .relaxed)), queues: queues)
    }
}

/// The control API server, when --api-socket was given.
struct ControlPlane {
    let server: ControlServer

    static func start(command: TapwireCommand, loop: BackendLoop, logger: Logger) throws -> ControlPlane? {
        guard let path = command.apiSocket else { return nil }
        let backend = LoopControlBackend(mailbox: loop.mailbox, name: command.name,
                                         socketPath: command.socketPath ?? "fd \(command.fd ?? -1)", gauges: loop.gauges)
        let server = ControlServer(socketPath: path, backend: backend, logger: logger)
        try server.start()
        logger.info("control API on \(path)")
        return ControlPlane(server: server)
    }

    func stop() {
        server.shutdown()
    }
}

extension NetDevice {
    /// The port security in force, as the API shows it.
    var portSecurityStatus: PortSecurityStatus {
        let mac = config.mac.map(MACAddress.format)
        guard let policy = portFilter?.policy else { return PortSecurityStatus(mac: mac) }
        return PortSecurityStatus(enabled: true, mac: mac, allowedIPs: policy.allowedIPs.map(\.description),
                                  allowRouter: policy.allowRouter)
    }
}

extension PortPolicy {
    /// The policy an API status describes (nil: off). Its fields were checked by the update.
    init?(_ status: PortSecurityStatus) throws(ControlAPIError) {
        guard status.enabled else { return nil }
        guard let mac = status.mac.flatMap(MACAddress.parse) else {
            throw .conflict("port security needs the VM's MAC: start tapwire with --mac")
        }
        do {
            self.init(mac: mac, allowedIPs: try IPNetwork.parse(status.allowedIPs),
                      allowRouter: status.allowRouter)
        } catch {
            throw .badRequest("allowed_ips: \(error)")
        }
    }
}
