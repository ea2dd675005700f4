// Prometheus text exposition format, version 0.0.4.
// https://prometheus.io/docs/instrumenting/exposition_formats/

import RateLimiter

/// Renders a VM's status and counters as Prometheus text (format 0.0.4).
public enum PrometheusRenderer {
    /// The Content-Type of the output.
    public static let contentType = "text/plain; version=0.0.4; charset=utf-8"

    public static func render(status: VMStatus, metrics: MetricsSnapshot) -> String {
        var out = Exposition()

        out.family("tapwire_up", .gauge, "1 when the tapwire control API answers.")
        out.sample("tapwire_up", [], 1 as UInt64)

        out.family("tapwire_info", .gauge, "Constant 1, labelled with the VM's identity.")
        out.sample("tapwire_info", [("vm", status.name), ("tap", status.tap), ("mac", status.mac),
                                    ("socket", status.socketPath)], 1 as UInt64)

        out.family("tapwire_connected", .gauge, "1 when a vhost-user frontend is connected.")
        out.sample("tapwire_connected", [], status.state == .connected ? 1 as UInt64 : 0)

        out.family("tapwire_uptime_seconds", .gauge, "Seconds since tapwire started.")
        out.sample("tapwire_uptime_seconds", [], metrics.uptimeSeconds)

        out.family("tapwire_connections_total", .counter, "vhost-user frontend connections accepted.")
        out.sample("tapwire_connections_total", [], metrics.connectionsTotal)

        out.family("tapwire_disconnects_total", .counter, "vhost-user frontend connections that ended.")
        out.sample("tapwire_disconnects_total", [], metrics.disconnects)

        out.family("tapwire_queue_pairs_enabled", .gauge, "Queue pairs the guest enabled.")
        out.sample("tapwire_queue_pairs_enabled", [], UInt64(max(0, status.queuePairsEnabled)))

        let queues = metrics.queues.sorted { ($0.index, $0.direction.rawValue) < ($1.index, $1.direction.rawValue) }
        func perQueue(_ name: String, _ type: Exposition.MetricType, _ help: String,
                      _ value: (QueueMetrics) -> String) {
            out.family(name, type, help)
            for q in queues {
                out.sample(name, [("queue", String(q.index)), ("direction", q.direction.rawValue)], text: value(q))
            }
        }
        perQueue("tapwire_frames_total", .counter, "Frames moved through a virtqueue.") { String($0.frames) }
        perQueue("tapwire_bytes_total", .counter, "Bytes of frames moved through a virtqueue.") { String($0.bytes) }
        perQueue("tapwire_kicks_total", .counter, "Kicks (available-buffer notifications) from the guest.") { String($0.kicks) }
        perQueue("tapwire_interrupts_total", .counter, "Interrupts (used-buffer notifications) sent to the guest.") { String($0.interrupts) }
        perQueue("tapwire_interrupts_held_total", .counter, "Interrupts held back by moderation to go out later.") {
            String($0.interruptsHeld)
        }
        perQueue("tapwire_tap_batches_total", .counter, "io_uring submissions carrying batches of frames to or from the TAP.") {
            String($0.tapBatches)
        }
        perQueue("tapwire_throttled_events_total", .counter, "Times the rate limiter made a virtqueue wait.") { String($0.throttledEvents) }
        perQueue("tapwire_throttled_seconds_total", .counter, "Time virtqueues spent waiting on the rate limiter.") {
            LimitFormatter.decimal(UInt128($0.throttledNanoseconds), scale: 9)
        }

        out.family("tapwire_drops_total", .counter, "Frames dropped, by reason.")
        for q in queues {
            for (reason, count) in q.drops.sorted(by: { $0.key < $1.key }) {
                out.sample("tapwire_drops_total", [("queue", String(q.index)), ("direction", q.direction.rawValue),
                                                   ("reason", reason)], count)
            }
        }

        let limits = [("tx", status.limits.tx), ("rx", status.limits.rx)]
        out.family("tapwire_rate_limit_bytes_per_second", .gauge,
                   "Configured bandwidth limit (tx: from the guest, rx: to the guest); 0 means unlimited.")
        for (direction, limit) in limits {
            out.sample("tapwire_rate_limit_bytes_per_second", [("direction", direction)],
                       limit.bandwidth.map(LimitFormatter.ratePerSecond) ?? 0)
        }
        out.family("tapwire_rate_limit_ops_per_second", .gauge,
                   "Configured frame-rate limit (tx: from the guest, rx: to the guest); 0 means unlimited.")
        for (direction, limit) in limits {
            out.sample("tapwire_rate_limit_ops_per_second", [("direction", direction)],
                       limit.ops.map(LimitFormatter.ratePerSecond) ?? 0)
        }
        return out.text
    }
}

/// Builds exposition text.
struct Exposition {
    enum MetricType: String { case counter, gauge }

    var text = ""

    mutating func family(_ name: String, _ type: MetricType, _ help: String) {
        text += "# HELP \(name) \(Self.escape(help, quote: false))\n# TYPE \(name) \(type.rawValue)\n"
    }

    mutating func sample(_ name: String, _ labels: [(String, String)], _ value: UInt64) {
        sample(name, labels, text: String(value))
    }

    mutating func sample(_ name: String, _ labels: [(String, String)], _ value: Double) {
        sample(name, labels, text: Self.format(value))
    }

    mutating func sample(_ name: String, _ labels: [(String, String)], text value: String) {
        text += name
        if !labels.isEmpty {
            text += "{" + labels.map { "\($0.0)=\"\(Self.escape($0.1))\"" }.joined(separator: ",") + "}"
        }
        text += " " + value + "\n"
    }

    /// Label values escape backslash, double quote and line feed; HELP text the same but the quote.
    static func escape(_ value: String, quote: Bool = true) -> String {
        var out = ""
        for ch in value {
            switch ch {
            case "\\": out += "\\\\"
            case "\"" where quote: out += "\\\""
            case "\n": out += "\\n"
            default: out.append(ch)
            }
        }
        return out
    }

    /// Integers without a fraction; NaN and infinities as Prometheus spells them.
    static func format(_ value: Double) -> String {
        if value.isNaN { return "NaN" }
        if value.isInfinite { return value < 0 ? "-Inf" : "+Inf" }
        if value == value.rounded(), abs(value) < 1e15 { return String(Int64(value)) }
        return String(value)
    }
}
