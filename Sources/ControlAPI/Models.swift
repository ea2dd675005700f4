// The JSON models shared by the daemon (which fills them in), the control server (which
// serves them) and tapwirectl (which reads them). Keys are snake_case, as in RateLimiter's
// canonical JSON, and stable: scripts read them with --json.

import RateLimiter

/// Whether a vhost-user frontend (QEMU, cloud-hypervisor, ...) is connected.
public enum VMState: String, Codable, Sendable, Equatable, CaseIterable {
    /// Listening on the vhost-user socket, no frontend yet (or it went away).
    case waiting
    /// A frontend is connected.
    case connected
}

/// A virtqueue's direction, from the guest's point of view: "rx" queues carry frames to the
/// guest, "tx" queues frames from it.
public enum QueueDirection: String, Codable, Sendable, Equatable, Hashable, CaseIterable {
    case rx
    case tx
}

/// One virtqueue as the daemon sees it.
public struct QueueStatus: Codable, Sendable, Equatable {
    /// The virtqueue index (rx = even, tx = odd for virtio-net).
    public var index: Int
    public var direction: QueueDirection
    /// The ring size the frontend configured (0 before it did).
    public var size: Int
    /// VHOST_USER_SET_VRING_ENABLE state.
    public var enabled: Bool
    /// Started (kick fd received and rings mapped) and not stopped.
    public var running: Bool
    /// Why the queue was stopped, if it was stopped by an error (a malformed descriptor
    /// chain, a bad address, ...).
    public var fault: String?

    public init(index: Int, direction: QueueDirection, size: Int, enabled: Bool, running: Bool,
                fault: String? = nil) {
        self.index = index
        self.direction = direction
        self.size = size
        self.enabled = enabled
        self.running = running
        self.fault = fault
    }
}

/// The rate limits in force, structured (RateLimiter's canonical form) and as text.
public struct LimitsStatus: Codable, Sendable, Equatable {
    /// What the guest transmits.
    public var tx: DirectionLimits
    /// What the guest receives.
    public var rx: DirectionLimits
    /// `tx` for humans, e.g. "bandwidth 100 Mbit/s (burst 80 KiB), ops unlimited".
    public var txHuman: String
    /// `rx` for humans.
    public var rxHuman: String

    public init(tx: DirectionLimits, rx: DirectionLimits) {
        self.tx = tx
        self.rx = rx
        self.txHuman = LimitFormatter.direction(tx)
        self.rxHuman = LimitFormatter.direction(rx)
    }

    public init(_ limits: RateLimits) {
        self.init(tx: limits.tx, rx: limits.rx)
    }

    public static let unlimited = LimitsStatus(.unlimited)

    enum CodingKeys: String, CodingKey {
        case tx, rx
        case txHuman = "tx_human"
        case rxHuman = "rx_human"
    }
}

/// `GET /vm`: what one tapwire process is and what it negotiated.
public struct VMStatus: Codable, Sendable, Equatable {
    /// The VM's name (--name), used in logs and metrics.
    public var name: String
    public var state: VMState
    /// Seconds since the daemon started.
    public var uptimeSeconds: Double
    /// The host TAP device, e.g. "tap0".
    public var tap: String
    /// The guest MAC address offered in the config space, "52:54:00:12:34:56".
    public var mac: String
    public var mtu: Int
    /// The vhost-user socket path.
    public var socketPath: String
    /// Negotiated virtio feature names, e.g. ["VIRTIO_NET_F_CSUM", "VIRTIO_F_VERSION_1"].
    public var negotiatedFeatures: [String]
    /// The negotiated virtio feature bits.
    public var negotiatedFeaturesRaw: UInt64
    /// The negotiated vhost-user protocol feature bits.
    public var protocolFeaturesRaw: UInt64
    /// Offloads offered to the guest (e.g. "csum", "tso4", "ufo").
    public var offloadsOffered: [String]
    /// Offloads the guest accepted.
    public var offloadsAcked: [String]
    public var queuePairsConfigured: Int
    public var queuePairsEnabled: Int
    public var queues: [QueueStatus]
    public var limits: LimitsStatus
    public var portSecurity: PortSecurityStatus

    public init(name: String, state: VMState, uptimeSeconds: Double, tap: String, mac: String, mtu: Int,
                socketPath: String, negotiatedFeatures: [String] = [], negotiatedFeaturesRaw: UInt64 = 0,
                protocolFeaturesRaw: UInt64 = 0, offloadsOffered: [String] = [], offloadsAcked: [String] = [],
                queuePairsConfigured: Int = 1, queuePairsEnabled: Int = 0, queues: [QueueStatus] = [],
                limits: LimitsStatus = .unlimited, portSecurity: PortSecurityStatus = .off) {
        self.name = name
        self.state = state
        self.uptimeSeconds = uptimeSeconds
        self.tap = tap
        self.mac = mac
        self.mtu = mtu
        self.socketPath = socketPath
        self.negotiatedFeatures = negotiatedFeatures
        self.negotiatedFeaturesRaw = negotiatedFeaturesRaw
        self.protocolFeaturesRaw = protocolFeaturesRaw
        self.offloadsOffered = offloadsOffered
        self.offloadsAcked = offloadsAcked
        self.queuePairsConfigured = queuePairsConfigured
        self.queuePairsEnabled = queuePairsEnabled
        self.queues = queues
        self.limits = limits
        self.portSecurity = portSecurity
    }

    enum CodingKeys: String, CodingKey {
        case name, state, tap, mac, mtu, queues, limits
        case uptimeSeconds = "uptime_seconds"
        case socketPath = "socket_path"
        case negotiatedFeatures = "negotiated_features"
        case negotiatedFeaturesRaw = "negotiated_features_raw"
        case protocolFeaturesRaw = "protocol_features_raw"
        case offloadsOffered = "offloads_offered"
        case offloadsAcked = "offloads_acked"
        case queuePairsConfigured = "queue_pairs_configured"
        case queuePairsEnabled = "queue_pairs_enabled"
        case portSecurity = "port_security"
    }
}

/// Counters of one virtqueue since the daemon started (they survive reconnects).
public struct QueueMetrics: Codable, Sendable, Equatable {
    public var index: Int
    public var direction: QueueDirection
    /// Frames moved (guest to TAP for tx, TAP to guest for rx).
    public var frames: UInt64
    /// Bytes of those frames (without the virtio-net header).
    public var bytes: UInt64
    /// Kicks received from the guest (tx) / wake-ups processed.
    public var kicks: UInt64
    /// Interrupts (call eventfd writes) sent to the guest.
    public var interrupts: UInt64
    /// Interrupts held back by moderation (--rx/--tx-coalesce-usecs), to go out later.
    public var interruptsHeld: UInt64
    /// Syscalls (io_uring submissions) that carried batches of frames to or from the TAP.
    public var tapBatches: UInt64
    /// Times the rate limiter made this queue wait.
    public var throttledEvents: UInt64
    /// Total time spent waiting on the rate limiter.
    public var throttledNanoseconds: UInt64
    /// Frames dropped, by reason (e.g. "tap_full", "no_rx_buffer", "bad_descriptor").
    public var drops: [String: UInt64]

    public init(index: Int, direction: QueueDirection, frames: UInt64 = 0, bytes: UInt64 = 0, kicks: UInt64 = 0,
                interrupts: UInt64 = 0, interruptsHeld: UInt64 = 0, tapBatches: UInt64 = 0, throttledEvents: UInt64 = 0, throttledNanoseconds: UInt64 = 0,
                drops: [String: UInt64] = [:]) {
        self.index = index
        self.direction = direction
        self.frames = frames
        self.bytes = bytes
        self.kicks = kicks
        self.interrupts = interrupts
        self.interruptsHeld = interruptsHeld
        self.tapBatches = tapBatches
        self.throttledEvents = throttledEvents
        self.throttledNanoseconds = throttledNanoseconds
        self.drops = drops
    }

    /// All drops, whatever the reason (saturating).
    public var totalDrops: UInt64 {
        drops.values.reduce(0) { $0.addingReportingOverflow($1).overflow ? .max : $0 &+ $1 }
    }

    enum CodingKeys: String, CodingKey {
        case index, direction, frames, bytes, kicks, interrupts, drops
        case interruptsHeld = "interrupts_held"
        case tapBatches = "tap_batches"
        case throttledEvents = "throttled_events"
        case throttledNanoseconds = "throttled_ns"
    }
}

/// `GET /metrics.json`: all counters at one instant.
public struct MetricsSnapshot: Codable, Sendable, Equatable {
    /// Seconds since the daemon started, when the snapshot was taken. Rates are computed
    /// from the difference of two snapshots' uptimes.
    public var uptimeSeconds: Double
    /// Frontend connections accepted since start.
    public var connectionsTotal: UInt64
    /// Frontend connections that ended (cleanly or not).
    public var disconnects: UInt64
    public var queues: [QueueMetrics]

    public init(uptimeSeconds: Double, connectionsTotal: UInt64 = 0, disconnects: UInt64 = 0,
                queues: [QueueMetrics] = []) {
        self.uptimeSeconds = uptimeSeconds
        self.connectionsTotal = connectionsTotal
        self.disconnects = disconnects
        self.queues = queues
    }

    enum CodingKeys: String, CodingKey {
        case queues, disconnects
        case uptimeSeconds = "uptime_seconds"
        case connectionsTotal = "connections_total"
    }
}

/// A JSON error body: `{"error": "..."}`.
public struct ErrorBody: Codable, Sendable, Equatable {
    public var error: String
    public init(error: String) { self.error = error }
}

/// `GET /healthz`.
public struct HealthBody: Codable, Sendable, Equatable {
    /// Always "ok" when the daemon answered.
    public var status: String
    public var state: VMState
    public init(status: String = "ok", state: VMState) {
        self.status = status
        self.state = state
    }
}
