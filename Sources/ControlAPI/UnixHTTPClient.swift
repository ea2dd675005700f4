// HTTP/1.1 over a unix domain socket with NIO's client pipeline, shared by tapwirectl and
// the tests. One request per connection ("Connection: close").

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif
import NIOCore
import NIOHTTP1
import NIOPosix
import RateLimiter

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
            return "tapwire did not answer on \(path) within \(LimitFormatter.number(seconds, fractionDigits: 3)) s"
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
    public var headers: HTTPHeaders
    public var body: [UInt8]

    /// The first header named `name` (case-insensitive).
    public func header(_ name: String) -> String? { headers.first(name: name) }

    /// The body as UTF-8 text.
    public var text: String { String(decoding: body, as: UTF8.self) }
}

/// One HTTP/1.1 request per connection over a unix socket, on NIO's shared event loop group.
public struct UnixHTTPClient: Sendable {
    public var socketPath: String
    /// For the whole exchange: connect, write, and read the full response.
    public var timeout: Duration

    public init(socketPath: String, timeout: Duration = .seconds(5)) {
        self.socketPath = socketPath
        self.timeout = timeout
    }

    /// Sends one request and reads the whole response.
    public func request(_ method: String, _ path: String, body: [UInt8]? = nil,
                        contentType: String = "application/json") async throws(UnixHTTPClientError) -> UnixHTTPResponse {
        let socketPath = self.socketPath
        let (seconds, attoseconds) = timeout.components
        let timedOut = UnixHTTPClientError.timedOut(path: socketPath, seconds: Double(seconds) + Double(attoseconds) / 1e18)
        let loop = MultiThreadedEventLoopGroup.singleton.next()
        let answer = loop.makePromise(of: UnixHTTPResponse.self)
        // For the whole exchange, connecting included.
        let timer = loop.scheduleTask(in: TimeAmount(timeout)) { answer.fail(timedOut) }
        let channel: any Channel
        do {
            channel = try await ClientBootstrap(group: loop)
                .connectTimeout(TimeAmount(timeout))
                .channelInitializer { channel in
                    channel.eventLoop.makeCompletedFuture {
                        try channel.pipeline.syncOperations.addHTTPClientHandlers()
                        try channel.pipeline.syncOperations.addHandler(ResponseCollector(path: socketPath, answer: answer))
                    }
                }
                .connect(unixDomainSocketPath: socketPath).get()
        } catch {
            timer.cancel()
            answer.fail(error)
            throw Self.connectError(error, path: socketPath, timedOut: timedOut)
        }
        answer.futureResult.whenComplete { _ in
            timer.cancel()
            channel.close(promise: nil)
        }
        var headers = HTTPHeaders([("Host", "localhost"), ("User-Agent", "tapwirectl"), ("Accept", "*/*"),
                                   ("Connection", "close")])
        if let body {
            headers.add(name: "Content-Type", value: contentType)
            headers.add(name: "Content-Length", value: String(body.count))
        }
        // A write the server refuses (it answered and closed) does not fail the exchange:
        // the answer is read all the same.
        channel.write(HTTPClientRequestPart.head(HTTPRequestHead(version: .http1_1, method: HTTPMethod(rawValue: method),
                                                                 uri: path, headers: headers)), promise: nil)
        if let body { channel.write(HTTPClientRequestPart.body(.byteBuffer(ByteBuffer(bytes: body))), promise: nil) }
        channel.writeAndFlush(HTTPClientRequestPart.end(nil), promise: nil)
        do {
            return try await answer.futureResult.get()
        } catch let error as UnixHTTPClientError {
            throw error
        } catch {
            throw .malformedResponse(path: socketPath, detail: "\(error)")
        }
    }

    private static func connectError(_ error: any Error, path: String,
                                     timedOut: UnixHTTPClientError) -> UnixHTTPClientError {
        if case SocketAddressError.unixDomainSocketPathTooLong = error {
            return .socketPathTooLong(path: path, limit: MemoryLayout.size(ofValue: sockaddr_un().sun_path) - 1)
        }
        if case ChannelError.connectTimeout = error { return timedOut }
        guard let code = (error as? IOError)?.errnoCode else {
            return .malformedResponse(path: path, detail: "\(error)")
        }
        switch code {
        case ENOENT, ENOTDIR: return .noSuchSocket(path: path)
        case ECONNREFUSED:
            var info = stat()
            if stat(path, &info) == 0, (info.st_mode & S_IFMT) != S_IFSOCK { return .notASocket(path: path) }
            return .connectionRefused(path: path)
        case EACCES, EPERM: return .permissionDenied(path: path)
        case EAGAIN, EINPROGRESS, ETIMEDOUT: return timedOut
        default: return .system(path: path, call: "connect", errno: code)
        }
    }
}

/// Collects one response (NIO's decoder has parsed it) into the request's promise.
private final class ResponseCollector: ChannelInboundHandler {
    typealias InboundIn = HTTPClientResponsePart

    private let path: String
    private let answer: EventLoopPromise<UnixHTTPResponse>
    private var response: UnixHTTPResponse?

    init(path: String, answer: EventLoopPromise<UnixHTTPResponse>) {
        self.path = path
        self.answer = answer
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head):
            response = UnixHTTPResponse(status: Int(head.status.code), reason: head.status.reasonPhrase,
                                        headers: head.headers, body: [])
        case .body(let buffer):
            response?.body += buffer.readableBytesView
        case .end:
            if let response { answer.succeed(response) }
        }
    }

    // A promise completes once: these do nothing after the answer is in.
    func channelInactive(context: ChannelHandlerContext) {
        answer.fail(UnixHTTPClientError.connectionClosed(path: path))
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if let error = error as? HTTPParserError {
            // The decoder's way of saying the peer closed half-way.
            answer.fail(error == .invalidEOFState ? UnixHTTPClientError.connectionClosed(path: path)
                                                  : .malformedResponse(path: path, detail: "\(error)"))
        } else if let code = (error as? IOError)?.errnoCode, code == EPIPE || code == ECONNRESET {
            return  // the server answered and closed before reading all of the request
        } else {
            answer.fail(UnixHTTPClientError.system(path: path, call: "read", errno: (error as? IOError)?.errnoCode ?? EIO))
        }
        context.close(promise: nil)
    }
}
