import ControlAPI
import Logging
import RateLimiter
#if canImport(Glibc)
import Glibc
#endif

/// A backend with canned state that records what the server asked of it.
actor FakeBackend: ControlBackend {
    var limits = RateLimits.unlimited
    var portSecurity = PortSecurityStatus(mac: "52:54:00:12:34:56")
    var receivedUpdates: [(update: LimitUpdate, replace: Bool)] = []
    var updateError: (any Error)?
    /// How long status() takes (for the timeout test).
    var statusDelay: Duration = .zero
    var statusCalls = 0

    static let queues = [
        QueueStatus(index: 0, direction: .rx, size: 256, enabled: true, running: true),
        QueueStatus(index: 1, direction: .tx, size: 256, enabled: true, running: false,
                    fault: "descriptor 7 points outside guest memory"),
    ]

    static let snapshot = MetricsSnapshot(
        uptimeSeconds: 12.5, connectionsTotal: 3, disconnects: 2,
        queues: [
            QueueMetrics(index: 0, direction: .rx, frames: 1000, bytes: 1_500_000, kicks: 10, interrupts: 900, interruptsHeld: 40,
                         throttledEvents: 4, throttledNanoseconds: 1_500_000_000,
                         drops: ["no_rx_buffer": 7, "tap_error": 1]),
            QueueMetrics(index: 1, direction: .tx, frames: 2000, bytes: 3_000_000_000_000, kicks: 1999,
                         interrupts: 5, drops: [:]),
        ])

    func setUpdateError(_ error: (any Error)?) { updateError = error }
    func setStatusDelay(_ delay: Duration) { statusDelay = delay }

    func status() async -> VMStatus {
        statusCalls += 1
        if statusDelay > .zero { try? await Task.sleep(for: statusDelay) }
        return VMStatus(name: "vm \"one\"", state: .connected, uptimeSeconds: 12.5, tap: "tap0",
                        mac: "52:54:00:12:34:56", mtu: 1500, socketPath: "/run/tapwire/vm0.sock",
                        negotiatedFeatures: ["VIRTIO_F_VERSION_1", "VIRTIO_NET_F_MAC"],
                        negotiatedFeaturesRaw: (1 << 32) | (1 << 5), protocolFeaturesRaw: 0x8003,
                        offloadsOffered: ["csum", "tso4"], offloadsAcked: ["csum"],
                        queuePairsConfigured: 1, queuePairsEnabled: 1, queues: Self.queues,
                        limits: LimitsStatus(limits), portSecurity: portSecurity)
    }

    func metrics() async -> MetricsSnapshot { Self.snapshot }

    func updateLimits(_ update: LimitUpdate, replace: Bool) async throws -> VMStatus {
        receivedUpdates.append((update, replace))
        if let updateError { throw updateError }
        limits = update.applied(to: limits, replace: replace)
        return await status()
    }

    func updatePortSecurity(_ update: PortSecurityUpdate, replace: Bool) async throws -> PortSecurityStatus {
        portSecurity = try update.applied(to: portSecurity, replace: replace)
        return portSecurity
    }
}

/// A temp socket path short enough for sun_path.
func temporarySocketPath() -> String {
    "/tmp/twctl-\(getpid())-\(UInt32.random(in: 0...UInt32.max)).sock"
}

func fileExists(_ path: String) -> Bool {
    var info = stat()
    return lstat(path, &info) == 0
}

/// Starts a server with a fake backend, runs `body`, and shuts the server down.
func withServer(backendTimeout: Duration = .seconds(5),
                _ body: (ControlServer, FakeBackend, ControlClient) async throws -> Void) async throws {
    let backend = FakeBackend()
    let path = temporarySocketPath()
    var logger = Logger(label: "test")
    logger.logLevel = .critical
    let server = ControlServer(socketPath: path, backend: backend, logger: logger, backendTimeout: backendTimeout)
    try await server.start()
    do {
        try await body(server, backend, ControlClient(socketPath: path, timeout: .seconds(10)))
    } catch {
        await server.shutdown()
        throw error
    }
    await server.shutdown()
}

final class ThreadBody {
    let run: () -> Void
    init(_ run: @escaping () -> Void) { self.run = run }
}

/// Runs blocking socket code on a thread of its own, so it never holds up the concurrency
/// pool that the fake backend runs on (Dispatch's global queues share its few threads).
func offPool<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
    try await withCheckedThrowingContinuation { continuation in
        let box = Unmanaged.passRetained(ThreadBody { continuation.resume(with: Result { try body() }) }).toOpaque()
        var thread = pthread_t()
        let rc = pthread_create(&thread, nil, { argument in
            Unmanaged<ThreadBody>.fromOpaque(argument!).takeRetainedValue().run()
            return nil
        }, box)
        precondition(rc == 0, "pthread_create failed")
        pthread_detach(thread)
    }
}

/// A parsed Prometheus sample line.
struct PromSample: Equatable {
    var name: String
    var labels: [String: String]
    var value: Double
}

enum PromParseError: Error, CustomStringConvertible {
    case bad(line: String, why: String)
    var description: String {
        switch self { case .bad(let line, let why): return "\(why): \(line)" }
    }
}

/// Parses text format 0.0.4: comments (# HELP / # TYPE), blank lines, and
/// `name{label="value",...} value` lines. Checks that every sample's family was TYPEd first.
func parsePrometheus(_ text: String) throws -> [PromSample] {
    var samples: [PromSample] = []
    var typed: Set<String> = []
    for raw in text.split(separator: "\n", omittingEmptySubsequences: false) {
        let line = String(raw)
        if line.isEmpty { continue }
        if line.hasPrefix("#") {
            let parts = line.split(separator: " ", maxSplits: 3)
            guard parts.count >= 3, parts[1] == "HELP" || parts[1] == "TYPE" else {
                throw PromParseError.bad(line: line, why: "bad comment")
            }
            if parts[1] == "TYPE" {
                guard parts.count == 4, ["counter", "gauge", "histogram", "summary", "untyped"].contains(parts[3]) else {
                    throw PromParseError.bad(line: line, why: "bad TYPE")
                }
                typed.insert(String(parts[2]))
            }
            continue
        }
        var chars = Array(line)
        var i = 0
        func isNameChar(_ c: Character, first: Bool) -> Bool {
            c == "_" || c == ":" || (c.isASCII && c.isLetter) || (!first && c.isASCII && c.isNumber)
        }
        guard !chars.isEmpty, isNameChar(chars[0], first: true) else { throw PromParseError.bad(line: line, why: "bad name") }
        while i < chars.count, isNameChar(chars[i], first: i == 0) { i += 1 }
        let name = String(chars[0..<i])
        var labels: [String: String] = [:]
        if i < chars.count, chars[i] == "{" {
            i += 1
            while i < chars.count, chars[i] != "}" {
                let start = i
                while i < chars.count, isNameChar(chars[i], first: i == start), chars[i] != ":" { i += 1 }
                let label = String(chars[start..<i])
                guard !label.isEmpty, i + 1 < chars.count, chars[i] == "=", chars[i + 1] == "\"" else {
                    throw PromParseError.bad(line: line, why: "bad label")
                }
                i += 2
                var value = ""
                while i < chars.count, chars[i] != "\"" {
                    if chars[i] == "\\" {
                        i += 1
                        guard i < chars.count else { throw PromParseError.bad(line: line, why: "bad escape") }
                        switch chars[i] {
                        case "\\": value += "\\"
                        case "\"": value += "\""
                        case "n": value += "\n"
                        default: throw PromParseError.bad(line: line, why: "bad escape")
                        }
                    } else {
                        value.append(chars[i])
                    }
                    i += 1
                }
                guard i < chars.count else { throw PromParseError.bad(line: line, why: "unterminated label value") }
                i += 1
                guard labels.updateValue(value, forKey: label) == nil else {
                    throw PromParseError.bad(line: line, why: "duplicate label")
                }
                if i < chars.count, chars[i] == "," { i += 1 }
            }
            guard i < chars.count else { throw PromParseError.bad(line: line, why: "unterminated labels") }
            i += 1
        }
        guard i < chars.count, chars[i] == " " else { throw PromParseError.bad(line: line, why: "no space before value") }
        chars = Array(chars[(i + 1)...])
        let valueText = String(chars)
        let value: Double
        switch valueText {
        case "+Inf": value = .infinity
        case "-Inf": value = -.infinity
        case "NaN": value = .nan
        default:
            guard let v = Double(valueText) else { throw PromParseError.bad(line: line, why: "bad value") }
            value = v
        }
        guard typed.contains(name) else { throw PromParseError.bad(line: line, why: "sample before its # TYPE") }
        samples.append(PromSample(name: name, labels: labels, value: value))
    }
    return samples
}

// MARK: - Raw sockets for the transport tests

struct SocketError: Error, CustomStringConvertible {
    var call: String
    var code: Int32
    var description: String { "\(call): \(String(cString: strerror(code)))" }
}

func makeAddress(_ path: String) -> sockaddr_un {
    var address = sockaddr_un()
    address.sun_family = sa_family_t(AF_UNIX)
    withUnsafeMutableBytes(of: &address.sun_path) { raw in
        let bytes = Array(path.utf8)
        raw.copyBytes(from: bytes)
        raw[bytes.count] = 0
    }
    return address
}

func boundSocket(_ path: String) throws -> Int32 {
    let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
    guard fd >= 0 else { throw SocketError(call: "socket", code: errno) }
    var address = makeAddress(path)
    let rc = withUnsafePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
    }
    guard rc == 0 else { throw SocketError(call: "bind", code: errno) }
    return fd
}

/// A socket file left behind by a process that exited: bound, then closed.
func makeStaleSocket(_ path: String) throws {
    close(try boundSocket(path))
}

/// Accepts connections into the backlog but never reads or answers.
func listenWithoutAccepting(_ path: String) throws -> Int32 {
    let fd = try boundSocket(path)
    guard listen(fd, 8) == 0 else { throw SocketError(call: "listen", code: errno) }
    return fd
}

func connectRaw(_ path: String) throws -> Int32 {
    let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
    guard fd >= 0 else { throw SocketError(call: "socket", code: errno) }
    var address = makeAddress(path)
    let rc = withUnsafePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
    }
    guard rc == 0 else { throw SocketError(call: "connect", code: errno) }
    var tv = timeval(tv_sec: 5, tv_usec: 0)
    _ = setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    return fd
}

func sendAndReadToEOF(_ fd: Int32, _ text: String) throws -> String {
    let bytes = Array(text.utf8)
    guard bytes.withUnsafeBytes({ write(fd, $0.baseAddress, $0.count) }) == bytes.count else {
        throw SocketError(call: "write", code: errno)
    }
    var out: [UInt8] = []
    var buffer = [UInt8](repeating: 0, count: 4096)
    while true {
        let n = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        if n == 0 { break }
        guard n > 0 else { throw SocketError(call: "read", code: errno) }
        out += buffer[0..<n]
    }
    return String(decoding: out, as: UTF8.self)
}

func closeFD(_ fd: Int32) { close(fd) }
func unlinkPath(_ path: String) -> Int32 { unlink(path) }

/// Writes `text`, then reads until an empty line ends a response head.
func sendAndReadUntilBlankLine(_ fd: Int32, _ text: String) throws -> String {
    let bytes = Array(text.utf8)
    guard bytes.withUnsafeBytes({ write(fd, $0.baseAddress, $0.count) }) == bytes.count else {
        throw SocketError(call: "write", code: errno)
    }
    var out: [UInt8] = []
    var byte: UInt8 = 0
    while !(out.count >= 4 && out.suffix(4) == [13, 10, 13, 10]) {
        let n = read(fd, &byte, 1)
        guard n == 1 else { throw SocketError(call: "read", code: n == 0 ? ECONNRESET : errno) }
        out.append(byte)
    }
    return String(decoding: out, as: UTF8.self)
}
