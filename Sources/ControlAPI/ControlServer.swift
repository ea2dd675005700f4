// HTTP/1.1 control API on a unix domain socket (SwiftNIO), on its own thread.

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif
import Logging
import NIOCore
import NIOHTTP1
import NIOPosix
import Synchronization

/// Serves the control API (GET /vm, GET /metrics, GET /metrics.json, PUT|PATCH /vm/limits,
/// GET /healthz) on a unix socket, with a one-thread event loop group of its own so it never
/// runs on the packet threads.
///
///     let server = ControlServer(socketPath: "/run/tapwire/vm0.api", backend: daemon, logger: logger)
///     try server.start()
///     ...
///     server.shutdown()
public final class ControlServer: Sendable {
    /// Request bodies larger than this get 413.
    public static let defaultMaxBodyBytes = 64 * 1024

    public let socketPath: String
    private let backend: any ControlBackend
    private let logger: Logger
    private let maxBodyBytes: Int
    private let backendTimeout: TimeAmount
    private let socketPermissions: mode_t?
    private let state = Mutex(State())

    private struct State: ~Copyable {
        var group: MultiThreadedEventLoopGroup?
        var channel: (any Channel)?
        /// (st_dev, st_ino) of the socket file we created, so shutdown removes only ours.
        var socketIdentity: (UInt64, UInt64)?
    }

    /// - Parameters:
    ///   - socketPath: where to listen; an existing stale socket file there is replaced,
    ///     a live one (another process answering) is an error.
    ///   - maxBodyBytes: larger request bodies are answered with 413.
    ///   - backendTimeout: a backend call slower than this is answered with 503.
    ///   - socketPermissions: chmod applied to the socket after bind (nil: leave the umask's).
    public init(socketPath: String, backend: any ControlBackend, logger: Logger,
                maxBodyBytes: Int = ControlServer.defaultMaxBodyBytes,
                backendTimeout: Duration = .seconds(5),
                socketPermissions: UInt32? = 0o600) {
        self.socketPath = socketPath
        self.backend = backend
        self.logger = logger
        self.maxBodyBytes = maxBodyBytes
        let (seconds, attoseconds) = backendTimeout.components
        self.backendTimeout = .nanoseconds(Int64(seconds) * 1_000_000_000 + attoseconds / 1_000_000_000)
        self.socketPermissions = socketPermissions.map { mode_t($0) }
    }

    /// True between a successful `start()` and `shutdown()`.
    public var isRunning: Bool { state.withLock { $0.channel != nil } }

    /// Binds the socket and starts serving. Blocks until the socket is listening.
    /// Throws if already started, if the path is too long, or if another process is
    /// serving on `socketPath`.
    public func start() throws {
        if state.withLock({ $0.group != nil }) {
            throw ControlServerError(message: "control server on \(socketPath) is already running")
        }
        try Self.refuseLiveSocket(socketPath)

        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let router = ControlRouter(backend: backend)
        let logger = self.logger
        let maxBodyBytes = self.maxBodyBytes
        let backendTimeout = self.backendTimeout
        let bootstrap = ServerBootstrap(group: group)
            .serverChannelOption(ChannelOptions.backlog, value: 64)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.configureHTTPServerPipeline(withErrorHandling: true)
                    try channel.pipeline.syncOperations.addHandler(
                        ControlHTTPHandler(router: router, logger: logger, maxBodyBytes: maxBodyBytes,
                                           backendTimeout: backendTimeout))
                }
            }
        let channel: any Channel
        do {
            channel = try bootstrap.bind(unixDomainSocketPath: socketPath, cleanupExistingSocketFile: true).wait()
        } catch {
            try? group.syncShutdownGracefully()
            throw ControlServerError(message: "cannot listen on \(socketPath): \(error)")
        }
        if let mode = socketPermissions, chmod(socketPath, mode) != 0 {
            let code = errno
            try? channel.close().wait()
            try? group.syncShutdownGracefully()
            unlink(socketPath)
            throw ControlServerError(message: "cannot chmod \(socketPath): \(String(cString: strerror(code)))")
        }
        let identity = Self.identity(of: socketPath)
        state.withLock {
            $0.group = group
            $0.channel = channel
            $0.socketIdentity = identity
        }
        logger.info("control API listening", metadata: ["socket": .string(socketPath)])
    }

    /// Stops serving, closes open connections and removes the socket file (if it is still
    /// the one `start()` created). Blocks until done; must not be called on the server's
    /// own event loop (i.e. not from inside a backend call). Idempotent.
    public func shutdown() {
        let (group, channel, identity) = state.withLock { state in
            defer {
                state.group = nil
                state.channel = nil
                state.socketIdentity = nil
            }
            return (state.group, state.channel, state.socketIdentity)
        }
        guard let group else { return }
        try? channel?.close().wait()
        try? group.syncShutdownGracefully()
        if let identity, let current = Self.identity(of: socketPath), current == identity {
            unlink(socketPath)
        }
        logger.info("control API stopped", metadata: ["socket": .string(socketPath)])
    }

    private static func identity(of path: String) -> (UInt64, UInt64)? {
        var info = stat()
        guard lstat(path, &info) == 0, (info.st_mode & S_IFMT) == S_IFSOCK else { return nil }
        return (UInt64(info.st_dev), UInt64(info.st_ino))
    }

    /// Binding with cleanupExistingSocketFile would silently steal the socket of another
    /// running daemon; refuse if something answers there.
    private static func refuseLiveSocket(_ path: String) throws {
        guard identity(of: path) != nil else { return }
        switch UnixSocket.probe(path) {
        case .accepting:
            throw ControlServerError(message: "control socket \(path) is in use by another process")
        case .absentOrStale:
            return
        }
    }
}

/// Why the control server could not start.
public struct ControlServerError: Error, Sendable, CustomStringConvertible {
    public var message: String
    public var description: String { message }
}

// MARK: - The per-connection handler

/// Collects one request (head, body up to the limit, end), hands it to the router off the
/// event loop, and writes the answer back. HTTPServerPipelineHandler (added by
/// configureHTTPServerPipeline) holds back pipelined requests until each response is done.
final class ControlHTTPHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    private enum State {
        case idle
        case receiving(HTTPRequestHead, ByteBuffer)
        /// Answered with 413; the rest of the request is ignored and the connection closes.
        case rejected
        /// Waiting for the router (request `id`).
        case processing(HTTPRequestHead, id: UInt64)
    }

    private let router: ControlRouter
    private let logger: Logger
    private let maxBodyBytes: Int
    private let backendTimeout: TimeAmount
    private var state = State.idle
    private var nextID: UInt64 = 0
    private var timeout: Scheduled<Void>?

    init(router: ControlRouter, logger: Logger, maxBodyBytes: Int, backendTimeout: TimeAmount) {
        self.router = router
        self.logger = logger
        self.maxBodyBytes = maxBodyBytes
        self.backendTimeout = backendTimeout
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head):
            if let length = head.headers.first(name: "content-length").flatMap({ Int($0) }), length > maxBodyBytes {
                reject(context: context, head: head)
                return
            }
            state = .receiving(head, context.channel.allocator.buffer(capacity: 0))
        case .body(var chunk):
            guard case .receiving(let head, var buffer) = state else { return }
            if buffer.readableBytes + chunk.readableBytes > maxBodyBytes {
                reject(context: context, head: head)
                return
            }
            state = .idle  // drop the reference so the write below does not copy
            buffer.writeBuffer(&chunk)
            state = .receiving(head, buffer)
        case .end:
            switch state {
            case .receiving(let head, let buffer):
                dispatch(context: context, head: head, body: Array(buffer.readableBytesView))
            case .rejected:
                context.close(promise: nil)
            case .idle, .processing:
                break
            }
        }
    }

    private func reject(context: ChannelHandlerContext, head: HTTPRequestHead) {
        state = .rejected
        var response = ControlResponse.error(.payloadTooLarge,
                                             "request body too large: the limit is \(maxBodyBytes) bytes")
        response.close = true
        // Close only once the request is over (.end above): closing with unread data would
        // make the client's read fail with ECONNRESET before it sees the answer.
        write(response, for: head, context: context, closeAfterWrite: false)
    }

    private func dispatch(context: ChannelHandlerContext, head: HTTPRequestHead, body: [UInt8]) {
        nextID &+= 1
        let id = nextID
        state = .processing(head, id: id)
        let bound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        let router = self.router
        let method = head.method, uri = head.uri
        context.eventLoop.makeFutureWithTask {
            await router.handle(method: method, uri: uri, body: body)
        }.whenSuccess { response in
            let (handler, context) = bound.value
            handler.finish(id: id, response: response, context: context)
        }
        let seconds = Double(backendTimeout.nanoseconds) / 1e9
        timeout = context.eventLoop.scheduleTask(in: backendTimeout) {
            let (handler, context) = bound.value
            var response = ControlResponse.error(.serviceUnavailable,
                                                 "tapwire did not answer within \(LimitFormatting.number(seconds, fractionDigits: 3)) s")
            response.close = true
            handler.finish(id: id, response: response, context: context)
        }
    }

    private func finish(id: UInt64, response: ControlResponse, context: ChannelHandlerContext) {
        guard case .processing(let head, let current) = state, current == id else { return }
        timeout?.cancel()
        timeout = nil
        state = .idle
        write(response, for: head, context: context)
    }

    private func write(_ response: ControlResponse, for head: HTTPRequestHead, context: ChannelHandlerContext,
                       closeAfterWrite: Bool = true) {
        let keepAlive = head.isKeepAlive && !response.close
        var headers = HTTPHeaders()
        headers.add(name: "Content-Type", value: response.contentType)
        headers.add(name: "Content-Length", value: String(response.body.count))
        headers.add(name: "Cache-Control", value: "no-store")
        for (name, value) in response.extraHeaders { headers.add(name: name, value: value) }
        if !keepAlive {
            headers.add(name: "Connection", value: "close")
        } else if head.version.major == 1, head.version.minor == 0 {
            headers.add(name: "Connection", value: "keep-alive")
        }
        let level: Logger.Level = response.status.code >= 500 ? .warning : .debug
        logger.log(level: level, "control API request", metadata: [
            "method": .string(head.method.rawValue), "uri": .string(head.uri),
            "status": .stringConvertible(response.status.code),
        ])
        context.write(wrapOutboundOut(.head(HTTPResponseHead(version: head.version, status: response.status,
                                                              headers: headers))), promise: nil)
        if head.method != .HEAD, !response.body.isEmpty {
            var buffer = context.channel.allocator.buffer(capacity: response.body.count)
            buffer.writeBytes(response.body)
            context.write(wrapOutboundOut(.body(.byteBuffer(buffer))), promise: nil)
        }
        let channel = context.channel
        context.writeAndFlush(wrapOutboundOut(.end(nil))).whenComplete { _ in
            if !keepAlive, closeAfterWrite { channel.close(promise: nil) }
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        timeout?.cancel()
        timeout = nil
        state = .idle
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        logger.debug("control API connection error", metadata: ["error": .string("\(error)")])
        context.close(promise: nil)
    }
}
