import Glibc
import ArgumentParser
import SystemCalls
import VhostUserFrontend

/// Virtio-net feature bits the tool cares about (virtio 1.2, 5.1.3).
enum Feature {
    static let csum: UInt64 = 1 << 0
    static let guestCsum: UInt64 = 1 << 1
    static let guestTSO4: UInt64 = 1 << 7
    static let guestTSO6: UInt64 = 1 << 8
    static let guestECN: UInt64 = 1 << 9
    static let guestUFO: UInt64 = 1 << 10
    static let hostTSO4: UInt64 = 1 << 11
    static let mergeableRxBuffers: UInt64 = 1 << 15
    static let guestUSO4: UInt64 = 1 << 54
    static let guestUSO6: UInt64 = 1 << 55
    static let eventIndex: UInt64 = 1 << 29
    static let version1: UInt64 = 1 << 32

    /// Everything that lets the device hand the guest frames larger than the MTU.
    static let guestLargeReceive = guestTSO4 | guestTSO6 | guestECN | guestUFO | guestUSO4 | guestUSO6

    static func headerSize(_ features: UInt64) -> Int {
        features & (version1 | mergeableRxBuffers) != 0 ? 12 : 10
    }
}

struct ToolError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// Connects to the backend and negotiates like QEMU: features offered & `wanted`, the memory
/// table, the RX (0) and TX (1) queues of `queueSize`, both enabled.
func connectFrontend(socket: String, memoryBytes: Int, wanted: UInt64, queueSize: UInt16,
                     timeoutMilliseconds: Int = 5000) throws -> (VhostUserFrontend, UInt64) {
    guard queueSize > 0, queueSize & (queueSize - 1) == 0, queueSize <= 32768 else {
        throw ToolError("--queue-size must be a power of two up to 32768, not \(queueSize)")
    }
    let frontend = try VhostUserFrontend(connectingTo: socket, memoryBytes: memoryBytes,
                                         timeoutMilliseconds: timeoutMilliseconds)
    let features = try frontend.start(wantedFeatures: wanted, queueCount: 2, queueSize: queueSize)
    return (frontend, features)
}

/// Rounds up to a multiple of 2 MiB (memfd sizes stay tidy) with room for the rings.
func arenaBytes(payloadBytes: Int) -> Int {
    let total = payloadBytes + (4 << 20)
    return (total + (2 << 20) - 1) & ~((2 << 20) - 1)
}

@inline(__always) func now() -> UInt64 { monotonicNanoseconds() }

func seconds(_ nanoseconds: UInt64) -> Double { Double(nanoseconds) / 1e9 }

/// `value` with `digits` decimals, without Foundation.
func fixed(_ value: Double, _ digits: Int = 2) -> String {
    guard value.isFinite else { return value.isNaN ? "nan" : (value > 0 ? "inf" : "-inf") }
    var scale = 1.0
    for _ in 0..<digits { scale *= 10 }
    let negative = value < 0
    let scaled = (abs(value) * scale).rounded()
    guard scaled < 9.0e18 else { return "\(value)" }
    let integer = UInt64(scaled)
    let whole = integer / UInt64(scale)
    var text = "\(whole)"
    if digits > 0 {
        var fraction = "\(integer % UInt64(scale))"
        while fraction.count < digits { fraction = "0" + fraction }
        text += "." + fraction
    }
    return negative && scaled != 0 ? "-" + text : text
}

/// 1234567 -> "1.23 M" style, for human output.
func humanRate(_ value: Double, unit: String) -> String {
    if value >= 1e9 { return fixed(value / 1e9, 3) + " G" + unit }
    if value >= 1e6 { return fixed(value / 1e6, 3) + " M" + unit }
    if value >= 1e3 { return fixed(value / 1e3, 3) + " k" + unit }
    return fixed(value, 1) + " " + unit
}

/// A flat JSON object, keys in insertion order.
struct JSONObject {
    private var fields: [String] = []

    mutating func add(_ key: String, _ value: Int) { fields.append("\"\(key)\": \(value)") }
    mutating func add(_ key: String, _ value: UInt64) { fields.append("\"\(key)\": \(value)") }
    mutating func add(_ key: String, _ value: Int64) { fields.append("\"\(key)\": \(value)") }
    mutating func add(_ key: String, _ value: Double, digits: Int = 3) {
        fields.append("\"\(key)\": \(value.isFinite ? fixed(value, digits) : "null")")
    }
    mutating func add(_ key: String, _ value: Bool) { fields.append("\"\(key)\": \(value)") }
    mutating func add(_ key: String, _ value: String) { fields.append("\"\(key)\": \"\(escape(value))\"") }
    mutating func add(_ key: String, _ value: String?) {
        if let value { add(key, value) } else { fields.append("\"\(key)\": null") }
    }
    mutating func add(_ key: String, object: JSONObject) { fields.append("\"\(key)\": \(object.text)") }

    var text: String { "{" + fields.joined(separator: ", ") + "}" }

    private func escape(_ s: String) -> String {
        var out = ""
        for c in s.unicodeScalars {
            switch c {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            default:
                if c.value < 0x20 { out += "\\u00" + (c.value < 0x10 ? "0" : "") + String(c.value, radix: 16) } else { out.unicodeScalars.append(c) }
            }
        }
        return out
    }
}

/// stderr, unbuffered, for progress and diagnostics (stdout stays for results).
func note(_ text: String) {
    var line = "tapwire-perf: " + text + "\n"
    line.withUTF8 { _ = write(2, $0.baseAddress, $0.count) }
}

/// Stops a run early on SIGINT/SIGTERM: the loops poll this flag, then drain and report.
enum Interrupt {
    nonisolated(unsafe) static var requested: Int32 = 0

    static func install() {
        signal(SIGINT) { _ in Interrupt.requested = 1 }
        signal(SIGTERM) { _ in Interrupt.requested = 1 }
    }

    @inline(__always) static var isRequested: Bool { requested != 0 }
}

/// Reads a TAP (or any interface) counter in the caller's network namespace.
struct InterfaceCounters {
    var rxPackets: UInt64 = 0, rxBytes: UInt64 = 0, rxDropped: UInt64 = 0
    var txPackets: UInt64 = 0, txBytes: UInt64 = 0, txDropped: UInt64 = 0

    /// Parses /proc/net/dev, which (unlike sysfs) shows the caller's network namespace.
    static func read(_ interface: String) -> InterfaceCounters? {
        let fd = open("/proc/net/dev", O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var bytes = [UInt8]()
        var chunk = [UInt8](repeating: 0, count: 8192)
        while true {
            let n = chunk.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
            if n <= 0 { break }
            bytes += chunk[0..<n]
        }
        for line in String(decoding: bytes, as: UTF8.self).split(separator: "\n") {
            let parts = line.split(separator: ":", maxSplits: 1)
            guard parts.count == 2, parts[0].drop(while: { $0 == " " }) == interface else { continue }
            let v = parts[1].split(separator: " ").compactMap { UInt64($0) }
            guard v.count >= 12 else { return nil }
            return InterfaceCounters(rxPackets: v[1], rxBytes: v[0], rxDropped: v[3],
                                     txPackets: v[9], txBytes: v[8], txDropped: v[11])
        }
        return nil
    }

    static func - (a: InterfaceCounters, b: InterfaceCounters) -> InterfaceCounters {
        InterfaceCounters(rxPackets: a.rxPackets &- b.rxPackets, rxBytes: a.rxBytes &- b.rxBytes,
                          rxDropped: a.rxDropped &- b.rxDropped, txPackets: a.txPackets &- b.txPackets,
                          txBytes: a.txBytes &- b.txBytes, txDropped: a.txDropped &- b.txDropped)
    }
}

func requireInterface(_ name: String) throws -> InterfaceCounters {
    guard let counters = InterfaceCounters.read(name) else {
        throw ToolError("no interface \(name) in this network namespace (run the tool with `ip netns exec NS` where the TAP lives)")
    }
    return counters
}

/// What `transmit` and `receive` share: where the backend is, the measurement window, and
/// the output form.
struct MeasurementWindow: ParsableArguments {
    @Option(help: "The backend's vhost-user socket.")
    var socket: String

    @Option(help: "Seconds to measure (after --warmup).")
    var duration: Double = 5

    @Option(help: "Seconds of traffic before the measurement window starts (fills caches and, with a rate limit, spends the initial full bucket).")
    var warmup: Double = 0

    @Flag(help: "Print one JSON object on stdout.")
    var json = false

    func validate() throws {
        if duration <= 0 || warmup < 0 { throw ValidationError("--duration must be positive and --warmup not negative") }
    }
}
