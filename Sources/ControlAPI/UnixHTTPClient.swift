// A small blocking HTTP/1.1 client over a unix domain socket (plain Glibc calls), shared
// by tapwirectl and the tests. One request per connection ("Connection: close").

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// Why a request over the unix socket failed before an HTTP response arrived.
/// `description` is one line meant for a person.
public enum UnixHTTPClientError: Error, Sendable, Equatable, CustomStringConvertible {
    case socketPathTooLong(path: String, limit: Int)
    /// Nothing at the path.
    case noSuchSocket(path: String)
    /// Something other than a socket at the path.
    case notASocket(path: String)
    /// A socket file nobody listens on (the daemon exited without removing it).
    case connectionRefused(path: String)
    case permissionDenied(path: String)
    /// Connected, but no complete answer in time.
    case timedOut(path: String, seconds: Double)
    /// The server closed the connection before a complete response.
    case connectionClosed(path: String)
    case malformedResponse(path: String, detail: String)
    case system(path: String, call: String, errno: Int32)

    public var description: String {
        switch self {
        case .socketPathTooLong(let path, let limit):
            return "socket path is too long (\(path.utf8.count) bytes, the limit is \(limit)): \(path)"
        case .noSuchSocket(let path):
            return "no such socket: \(path) (is tapwire running with --api-socket \(path)?)"
        case .notASocket(let path):
            return "not a socket: \(path)"
        case .connectionRefused(let path):
            return "connection refused on \(path) (stale socket: tapwire is not running?)"
        case .permissionDenied(let path):
            return "permission denied on \(path) (try as the user tapwire runs as, or root)"
        case .timedOut(let path, let seconds):
            return "tapwire did not answer on \(path) within \(LimitFormatting.number(seconds, fractionDigits: 3)) s"
        case .connectionClosed(let path):
            return "tapwire closed the connection on \(path) without a complete answer"
        case .malformedResponse(let path, let detail):
            return "malformed HTTP response on \(path): \(detail)"
        case .system(let path, let call, let code):
            return "\(call) on \(path) failed: \(String(cString: strerror(code)))"
        }
    }
}

/// An HTTP response.
public struct UnixHTTPResponse: Sendable, Equatable {
    public var status: Int
    public var reason: String
    /// In arrival order, names as sent.
    public var headers: [Header]
    public var body: [UInt8]

    public struct Header: Sendable, Equatable {
        public var name: String
        public var value: String
    }

    public init(status: Int, reason: String, headers: [Header], body: [UInt8]) {
        self.status = status
        self.reason = reason
        self.headers = headers
        self.body = body
    }

    /// The first header named `name` (case-insensitive).
    public func header(_ name: String) -> String? {
        let lower = name.lowercased()
        return headers.first { $0.name.lowercased() == lower }?.value
    }

    /// The body as UTF-8 text.
    public var text: String { String(decoding: body, as: UTF8.self) }
}

/// Blocking HTTP/1.1 over a unix socket; `send` blocks the calling thread, the async
/// `request` runs it on a thread of its own so it never blocks the concurrency pool (nor
/// Dispatch's, which on Linux has as few threads as there are cores).
public struct UnixHTTPClient: Sendable {
    public var socketPath: String
    /// For the whole exchange: connect, write, and read the full response.
    public var timeout: Duration

    public init(socketPath: String, timeout: Duration = .seconds(5)) {
        self.socketPath = socketPath
        self.timeout = timeout
    }

    /// Sends one request and reads the whole response, off the cooperative thread pool.
    public func request(_ method: String, _ path: String, body: [UInt8]? = nil,
                        contentType: String = "application/json") async throws(UnixHTTPClientError) -> UnixHTTPResponse {
        let result = await withCheckedContinuation { (continuation: CheckedContinuation<Result<UnixHTTPResponse, UnixHTTPClientError>, Never>) in
            let client = self
            DetachedThread.start {
                do throws(UnixHTTPClientError) {
                    continuation.resume(returning: .success(try client.send(method, path, body: body, contentType: contentType)))
                } catch {
                    continuation.resume(returning: .failure(error))
                }
            }
        }
        return try result.get()
    }

    /// Sends one request and reads the whole response, blocking the calling thread.
    public func send(_ method: String, _ path: String, body: [UInt8]? = nil,
                     contentType: String = "application/json") throws(UnixHTTPClientError) -> UnixHTTPResponse {
        let deadline = ContinuousClock.now + timeout
        let fd = try UnixSocket.connect(socketPath, timeout: timeout)
        defer { close(fd) }

        var head = "\(method) \(path) HTTP/1.1\r\nHost: localhost\r\nUser-Agent: tapwirectl\r\nAccept: */*\r\nConnection: close\r\n"
        if let body {
            head += "Content-Type: \(contentType)\r\nContent-Length: \(body.count)\r\n"
        }
        head += "\r\n"
        var request = Array(head.utf8)
        if let body { request += body }

        // The server may answer before reading everything (413) and close: then the write
        // fails with EPIPE/ECONNRESET but the answer is still there to read.
        try writeAll(fd, request, deadline: deadline)
        return try readResponse(fd, method: method, deadline: deadline)
    }

    private func writeAll(_ fd: Int32, _ bytes: [UInt8], deadline: ContinuousClock.Instant) throws(UnixHTTPClientError) {
        var offset = 0
        while offset < bytes.count {
            let n = bytes.withUnsafeBytes { raw in
                Glibc.send(fd, raw.baseAddress! + offset, raw.count - offset, Int32(MSG_NOSIGNAL))
            }
            if n >= 0 {
                offset += n
                continue
            }
            let code = errno
            switch code {
            case EINTR: continue
            case EPIPE, ECONNRESET: return
            case EAGAIN, EWOULDBLOCK:
                if ContinuousClock.now >= deadline { throw .timedOut(path: socketPath, seconds: timeout.seconds) }
            default: throw .system(path: socketPath, call: "write", errno: code)
            }
        }
    }

    private func readResponse(_ fd: Int32, method: String, deadline: ContinuousClock.Instant) throws(UnixHTTPClientError) -> UnixHTTPResponse {
        var data: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 16 * 1024)
        var eof = false
        while true {
            if let response = try HTTPResponseParser.parse(data, requestMethod: method, eof: eof, path: socketPath) {
                return response
            }
            if eof { throw .connectionClosed(path: socketPath) }
            let remaining = deadline - ContinuousClock.now
            guard remaining > .zero else { throw .timedOut(path: socketPath, seconds: timeout.seconds) }
            var pfd = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            let ready = poll(&pfd, 1, Int32(clamping: remaining.milliseconds + 1))
            if ready < 0 {
                if errno == EINTR { continue }
                throw .system(path: socketPath, call: "poll", errno: errno)
            }
            if ready == 0 { continue }  // the deadline check above reports the timeout
            let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n > 0 {
                data += chunk[0..<n]
            } else if n == 0 {
                eof = true
            } else {
                let code = errno
                switch code {
                case EINTR, EAGAIN: continue
                case ECONNRESET: eof = true
                default: throw .system(path: socketPath, call: "read", errno: code)
                }
            }
        }
    }
}

/// Runs a closure on a new detached pthread (for blocking calls made from async code).
enum DetachedThread {
    private final class Box {
        let body: @Sendable () -> Void
        init(_ body: @escaping @Sendable () -> Void) { self.body = body }
    }

    static func start(_ body: @escaping @Sendable () -> Void) {
        let box = Unmanaged.passRetained(Box(body)).toOpaque()
        #if canImport(Darwin)
        var thread: pthread_t?
        #else
        var thread = pthread_t()
        #endif
        let rc = pthread_create(&thread, nil, { argument in
            let box = Unmanaged<Box>.fromOpaque(argument!).takeRetainedValue()
            box.body()
            return nil
        }, box)
        if rc != 0 {
            // No thread to be had: run it here rather than never.
            Unmanaged<Box>.fromOpaque(box).takeRetainedValue().body()
            return
        }
        #if canImport(Darwin)
        if let thread { pthread_detach(thread) }
        #else
        pthread_detach(thread)
        #endif
    }
}

extension Duration {
    var seconds: Double {
        let (s, atto) = components
        return Double(s) + Double(atto) / 1e18
    }

    var milliseconds: Int64 {
        let (s, atto) = components
        return s * 1000 + atto / 1_000_000_000_000_000
    }
}

// MARK: - Response parsing

enum HTTPResponseParser {
    /// Parses a complete response from `data`, or returns nil if more bytes are needed.
    /// `eof`: the peer closed, so a body without a length ends here.
    static func parse(_ data: [UInt8], requestMethod: String, eof: Bool,
                      path: String) throws(UnixHTTPClientError) -> UnixHTTPResponse? {
        var start = 0
        while true {
            guard let headEnd = find([13, 10, 13, 10], in: data, from: start) else {
                if data.count - start > 64 * 1024 { throw .malformedResponse(path: path, detail: "header section too large") }
                return nil
            }
            let headText = String(decoding: data[start..<headEnd], as: UTF8.self)
            var lines = headText.split(separator: "\r\n", omittingEmptySubsequences: false).map(String.init)
            let statusLine = lines.removeFirst()
            let parts = statusLine.split(separator: " ", maxSplits: 2, omittingEmptySubsequences: false)
            guard parts.count >= 2, parts[0].hasPrefix("HTTP/1."), let status = Int(parts[1]),
                  (100...999).contains(status) else {
                throw .malformedResponse(path: path, detail: "bad status line \"\(statusLine.prefix(80))\"")
            }
            let reason = parts.count > 2 ? String(parts[2]) : ""
            var headers: [UnixHTTPResponse.Header] = []
            for line in lines where !line.isEmpty {
                guard let colon = line.firstIndex(of: ":") else {
                    throw .malformedResponse(path: path, detail: "bad header line \"\(line.prefix(80))\"")
                }
                headers.append(.init(name: String(line[..<colon]),
                                     value: String(line[line.index(after: colon)...].trimmingBlanks())))
            }
            let bodyStart = headEnd + 4
            if (100..<200).contains(status) {  // interim (100 Continue): skip it
                start = bodyStart
                continue
            }
            var response = UnixHTTPResponse(status: status, reason: reason, headers: headers, body: [])
            if requestMethod == "HEAD" || status == 204 || status == 304 { return response }
            if response.header("Transfer-Encoding")?.lowercased().contains("chunked") == true {
                guard let body = try dechunk(data, from: bodyStart, path: path) else {
                    if eof { throw .connectionClosed(path: path) }
                    return nil
                }
                response.body = body
                return response
            }
            if let lengthText = response.header("Content-Length") {
                guard let length = Int(lengthText.trimmingBlanks()), length >= 0 else {
                    throw .malformedResponse(path: path, detail: "bad Content-Length \"\(lengthText)\"")
                }
                guard data.count - bodyStart >= length else {
                    if eof { throw .connectionClosed(path: path) }
                    return nil
                }
                response.body = Array(data[bodyStart..<(bodyStart + length)])
                return response
            }
            guard eof else { return nil }  // read to close
            response.body = Array(data[bodyStart...])
            return response
        }
    }

    /// Decodes a chunked body; nil if incomplete.
    static func dechunk(_ data: [UInt8], from start: Int, path: String) throws(UnixHTTPClientError) -> [UInt8]? {
        var body: [UInt8] = []
        var at = start
        while true {
            guard let lineEnd = find([13, 10], in: data, from: at) else { return nil }
            let sizeText = String(decoding: data[at..<lineEnd], as: UTF8.self)
            let sizeField = sizeText.split(separator: ";").first.map { String($0.trimmingBlanks()) } ?? ""
            guard let size = Int(sizeField, radix: 16), size >= 0 else {
                throw .malformedResponse(path: path, detail: "bad chunk size \"\(sizeText.prefix(40))\"")
            }
            at = lineEnd + 2
            if size == 0 {
                // Trailers, then an empty line.
                guard let end = find([13, 10, 13, 10], in: data, from: at - 2) else { return nil }
                _ = end
                return body
            }
            guard data.count >= at + size + 2 else { return nil }
            body += data[at..<(at + size)]
            at += size + 2
        }
    }

    static func find(_ needle: [UInt8], in data: [UInt8], from start: Int) -> Int? {
        guard data.count >= needle.count, start <= data.count - needle.count else { return nil }
        var i = max(0, start)
        while i <= data.count - needle.count {
            if data[i] == needle[0] {
                var match = true
                for j in 1..<needle.count where data[i + j] != needle[j] {
                    match = false
                    break
                }
                if match { return i }
            }
            i += 1
        }
        return nil
    }
}

// MARK: - Connecting

enum UnixSocket {
    enum ProbeResult { case accepting, absentOrStale }

    /// Whether something accepts connections at `path`.
    static func probe(_ path: String) -> ProbeResult {
        do {
            let fd = try connect(path, timeout: .milliseconds(500))
            close(fd)
            return .accepting
        } catch {
            return .absentOrStale
        }
    }

    static var pathLimit: Int { MemoryLayout<sockaddr_un>.size - MemoryLayout<sa_family_t>.size - 1 }

    /// A connected, blocking AF_UNIX stream socket with `timeout` as its send timeout
    /// (which also bounds a connect to a full backlog).
    static func connect(_ path: String, timeout: Duration) throws(UnixHTTPClientError) -> Int32 {
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        guard !bytes.isEmpty, bytes.count <= pathLimit else {
            throw .socketPathTooLong(path: path, limit: pathLimit)
        }
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            raw.copyBytes(from: bytes)
            raw[bytes.count] = 0
        }
        #if canImport(Glibc) || canImport(Musl)
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        #else
        let fd = socket(AF_UNIX, SOCK_STREAM, 0)
        #endif
        guard fd >= 0 else { throw .system(path: path, call: "socket", errno: errno) }
        var tv = timeval(tv_sec: Int(timeout.components.seconds),
                         tv_usec: Int(timeout.components.attoseconds / 1_000_000_000_000))
        if tv.tv_sec == 0, tv.tv_usec == 0 { tv.tv_usec = 1 }
        _ = setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        while true {
            let rc = withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
                }
            }
            if rc == 0 { return fd }
            let code = errno
            if code == EINTR { continue }
            close(fd)
            switch code {
            case ENOENT: throw .noSuchSocket(path: path)
            case ECONNREFUSED:
                var info = stat()
                if stat(path, &info) == 0, (info.st_mode & S_IFMT) != S_IFSOCK { throw .notASocket(path: path) }
                throw .connectionRefused(path: path)
            case EACCES, EPERM: throw .permissionDenied(path: path)
            case ENOTDIR: throw .noSuchSocket(path: path)
            case EAGAIN, EINPROGRESS, ETIMEDOUT: throw .timedOut(path: path, seconds: timeout.seconds)
            default: throw .system(path: path, call: "connect", errno: code)
            }
        }
    }
}
