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
import RateLimiter
import Synchronization

/// Serves the control API (ControlRouter's endpoints) on a unix socket, with a one-thread
/// event loop group of its own so it never runs on the packet threads.
public final class ControlServer: Sendable {
    /// Request bodies larger than this get 413.
    public static let defaultMaxBodyBytes = 64 * 1024
    /// A connection that sends nothing for this long (between requests) is closed.
    static let idleTimeout = TimeAmount.seconds(60)

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
        var gate = ResponseGate()
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
        self.backendTimeout = TimeAmount(backendTimeout)
        self.socketPermissions = socketPermissions.map { mode_t($0) }
    }

    /// True between a successful `start()` and `shutdown()`.
    public var isRunning: Bool { state.withLock { $0.channel != nil } }

    /// Binds the socket and starts serving; returns once the socket is listening.
    /// Throws if already started, if the path is too long, or if another process is
    /// serving on `socketPath`. Blocks the calling thread: from async code, the async
    /// overload is used.
    public func start() throws {
        let group = try prepareStart()
        let channel: any Channel
        do {
            channel = try makeBootstrap(group).bind(unixDomainSocketPath: socketPath, cleanupExistingSocketFile: true).wait()
        } catch {
            try? group.syncShutdownGracefully()
            throw bindError(error)
        }
        try finishStart(group: group, channel: channel)
    }

    /// `start()` without blocking a thread of the concurrency pool.
    public func start() async throws {
        let group = try prepareStart()
        let channel: any Channel
        do {
            channel = try await makeBootstrap(group).bind(unixDomainSocketPath: socketPath, cleanupExistingSocketFile: true).get()
        } catch {
            try? await group.shutdownGracefully()
            throw bindError(error)
        }
        try finishStart(group: group, channel: channel)
    }

    /// Stops serving, closes open connections and removes the socket file (if it is still
    /// the one `start()` created). Answers still being computed by the backend are dropped.
    /// Blocks until done (from async code, the async overload is used). Idempotent.
    public func shutdown() {
        guard let (group, channel, identity) = takeForShutdown() else { return }
        try? channel?.close().wait()
        try? group.syncShutdownGracefully()
        finishShutdown(identity)
    }

    /// `shutdown()` without blocking a thread of the concurrency pool.
    public func shutdown() async {
        guard let (group, channel, identity) = takeForShutdown() else { return }
        try? await channel?.close().get()
        try? await group.shutdownGracefully()
        finishShutdown(identity)
    }

    // MARK: Start and stop, shared by the blocking and async forms

    private func prepareStart() throws -> MultiThreadedEventLoopGroup {
        try state.withLock { state in
            if state.group != nil {
                throw ControlServerError(message: "control server on \(socketPath) is already running")
            }
            let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
            do {
                try Self.refuseLiveSocket(socketPath, group: group)
            } catch {
                try? group.syncShutdownGracefully()
                throw error
            }
            state.group = group
            state.gate = ResponseGate()
            return group
        }
    }

    private func makeBootstrap(_ group: MultiThreadedEventLoopGroup) -> ServerBootstrap {
        let router = ControlRouter(backend: backend)
        let logger = self.logger
        let maxBodyBytes = self.maxBodyBytes
        let backendTimeout = self.backendTimeout
        let gate = state.withLock { $0.gate }
        return ServerBootstrap(group: group)
            .serverChannelOption(ChannelOptions.backlog, value: 64)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(IdleStateHandler(readTimeout: ControlServer.idleTimeout))
                    try channel.pipeline.syncOperations.configureHTTPServerPipeline(withErrorHandling: true)
                    try channel.pipeline.syncOperations.addHandler(
                        ControlHTTPHandler(router: router, logger: logger, maxBodyBytes: maxBodyBytes,
                                           backendTimeout: backendTimeout, gate: gate))
                }
            }
    }

    private func bindError(_ error: any Error) -> ControlServerError {
        state.withLock { $0.group = nil }
        return ControlServerError(message: "cannot listen on \(socketPath): \(error)")
    }

    private func finishStart(group: MultiThreadedEventLoopGroup, channel: any Channel) throws {
        if let mode = socketPermissions, chmod(socketPath, mode) != 0 {
            let code = errno
            channel.close(promise: nil)
            group.shutdownGracefully { _ in }
            unlink(socketPath)
            state.withLock { $0.group = nil }
            throw ControlServerError(message: "cannot chmod \(socketPath): \(String(cString: strerror(code)))")
        }
        let identity = Self.identity(of: socketPath)
        state.withLock {
            $0.channel = channel
            $0.socketIdentity = identity
        }
        logger.info("control API listening", metadata: ["socket": .string(socketPath)])
    }

    private func takeForShutdown() -> (MultiThreadedEventLoopGroup, (any Channel)?, (UInt64, UInt64)?)? {
        state.withLock { state in
            guard let group = state.group, state.channel != nil else { return nil }
            // From here on no backend answer is handed to the event loop, which is about to go.
            state.gate.close()
            defer {
                state.group = nil
                state.channel = nil
                state.socketIdentity = nil
            }
            return (group, state.channel, state.socketIdentity)
        }
    }

    private func finishShutdown(_ identity: (UInt64, UInt64)?) {
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
    private static func refuseLiveSocket(_ path: String, group: MultiThreadedEventLoopGroup) throws {
        guard identity(of: path) != nil,
              let channel = try? ClientBootstrap(group: group).connectTimeout(.milliseconds(500))
                  .connect(unixDomainSocketPath: path).wait()
        else { return }
        channel.close(promise: nil)
        throw ControlServerError(message: "control socket \(path) is in use by another process")
    }
}

/// Lets backend answers reach the event loop only while the server runs.
final class ResponseGate: Sendable {
    private let open = Mutex(true)

    func ifOpen(_ body: () -> Void) {
        open.withLock { isOpen in
            if isOpen { body() }
        }
    }

    func close() {
        open.withLock { $0 = false }
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

    private let gate: ResponseGate

    init(router: ControlRouter, logger: Logger, maxBodyBytes: Int, backendTimeout: TimeAmount, gate: ResponseGate) {
        self.gate = gate
        self.router = router
        self.logger = logger
        self.maxBodyBytes = maxBodyBytes
        self.backendTimeout = backendTimeout
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head):
            let expectsContinue = head.headers[canonicalForm: "expect"].contains { $0.lowercased() == "100-continue" }
            if let length = head.headers.first(name: "content-length").flatMap({ Int($0) }), length > maxBodyBytes {
                // A client waiting for "100 Continue" will not send the body: close right away.
                reject(context: context, head: head, closeNow: expectsContinue)
                return
            }
            state = .receiving(head, context.channel.allocator.buffer(capacity: 0))
            if expectsContinue {
                // curl sends "Expect: 100-continue" for bodies over 1 KiB and waits a second otherwise.
                context.writeAndFlush(wrapOutboundOut(.head(HTTPResponseHead(version: head.version, status: .continue))),
                                      promise: nil)
            }
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

    private func reject(context: ChannelHandlerContext, head: HTTPRequestHead, closeNow: Bool = false) {
        state = .rejected
        var response = ControlResponse.error(.payloadTooLarge,
                                             "request body too large: the limit is \(maxBodyBytes) bytes")
        response.close = true
        // Otherwise close only once the request is over (.end above): closing with unread
        // data would make the client's read fail with ECONNRESET before it sees the answer.
        write(response, for: head, context: context, closeAfterWrite: closeNow)
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if event is IdleStateHandler.IdleStateEvent {
            // Nothing received for a while and no request in progress: drop the connection.
            if case .processing = state {} else {
                context.close(promise: nil)
                return
            }
        }
        context.fireUserInboundEventTriggered(event)
    }

    private func dispatch(context: ChannelHandlerContext, head: HTTPRequestHead, body: [UInt8]) {
        nextID &+= 1
        let id = nextID
        state = .processing(head, id: id)
        let bound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        let router = self.router
        let method = head.method, uri = head.uri
        let eventLoop = context.eventLoop
        let gate = self.gate
        // The backend runs on the concurrency pool; the answer comes back to the event loop
        // unless the server is shutting down (the loop may be gone by then).
        Task {
            let response = await router.handle(method: method, uri: uri, body: body)
            gate.ifOpen {
                eventLoop.execute {
                    let (handler, context) = bound.value
                    handler.finish(id: id, response: response, context: context)
                }
            }
        }
        let seconds = Double(backendTimeout.nanoseconds) / 1e9
        timeout = context.eventLoop.scheduleTask(in: backendTimeout) {
            let (handler, context) = bound.value
            var response = ControlResponse.error(.serviceUnavailable,
                                                 "tapwire did not answer within \(LimitFormatter.number(seconds, fractionDigits: 3)) s")
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
