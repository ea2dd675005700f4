import Glibc
import CTapwire
import Logging
import SystemCalls
import VhostUser
import VirtioNet

/// Where the frontend comes from.
public enum FrontendEndpoint: Sendable {
    /// Listen on a path (QEMU connects; the usual setup).
    case listen(path: String)
    /// An already listening socket inherited from the parent (`--fd N`).
    case inheritedListener(fd: Int32)
    /// Connect to a path QEMU listens on, retrying with back-off (`--client`).
    case connect(path: String)
}

/// Runs one VM's device. This control thread serves the vhost-user socket, signals and
/// control requests; each queue pair's data path runs on its own `QueuePairWorker` thread.
/// Whenever device state changes (a vhost-user message, a reset, a limit change, a status
/// read), the workers are parked between events first, so device state needs no locks.
// @unchecked Sendable: handed to exactly one thread that runs it; other threads only use `mailbox`.
public final class BackendLoop: @unchecked Sendable {
    enum Token {
        static let listener: UInt64 = 1 << 32
        static let connection: UInt64 = 2 << 32
        static let signal: UInt64 = 3 << 32
        static let mailbox: UInt64 = 4 << 32
        static let reconnect: UInt64 = 8 << 32
        static let kindMask: UInt64 = 0xffff_ffff << 32
    }

    public let device: NetDevice
    let endpoint: FrontendEndpoint
    public let logger: Logger
    let epoll: Epoll
    let mailbox: LoopMailbox<BackendLoop>
    let workers: [QueuePairWorker]
    private var listener: Descriptor?
    private var connection: VhostUserConnection?
    private var signals: Descriptor?
    private var reconnectTimer: Descriptor?
    private var reconnectDelayMilliseconds = 100
    /// The errno of the last connect failure logged, and when (0: none since the last connect).
    private var lastConnectFailure: (errno: Int32, loggedAt: UInt64) = (0, 0)
    /// Frontends refused while one was connected, and when that was last logged.
    private var refusedFrontends = 0
    private var lastRefusalLogged: UInt64 = 0
    private var running = true
    private var queuesChanged = false
    public let startedAt = monotonicNanoseconds()
    /// What a metrics scrape reads from the API thread instead of posting here.
    let gauges: LoopGauges

    public init(device: NetDevice, endpoint: FrontendEndpoint, logger: Logger) throws(SystemError) {
        self.device = device
        self.endpoint = endpoint
        self.logger = logger
        epoll = try Epoll()
        mailbox = try LoopMailbox()
        var made = [QueuePairWorker]()
        for pair in 0..<device.config.queuePairs { made.append(try QueuePairWorker(pair: pair, device: device, logger: logger)) }
        workers = made
        gauges = LoopGauges(device: device, startedAt: startedAt)
        try epoll.add(mailbox.wake.raw, events: Epoll.readable, token: Token.mailbox)
        // Device changes happen on this thread with the workers parked; they re-register then.
        device.onQueuesChanged = { [unowned self] in self.queuesChanged = true }
    }

    /// Opens the listening socket (or takes the inherited one) before privileges are dropped.
    public func prepare() throws(SystemError) {
        switch endpoint {
        case .listen(let path):
            let fd = try UnixSocket.listen(path: path)
            listener = fd
            try epoll.add(fd.raw, events: Epoll.readable, token: Token.listener)
            logger.info("listening on \(path)")
        case .inheritedListener(let raw):
            let fd = Descriptor(taking: raw)
            listener = fd
            try epoll.add(fd.raw, events: Epoll.readable, token: Token.listener)
            logger.info("listening on inherited fd \(raw)")
        case .connect(let path):
            let timer = try TimerFD.make()
            reconnectTimer = timer
            try epoll.add(timer.raw, events: Epoll.readable, token: Token.reconnect)
            TimerFD.arm(timer.raw, afterNanoseconds: 1)
            logger.info("connecting to \(path)")
        }
    }

    /// SIGTERM/SIGINT end the loop cleanly.
    public func handleTerminationSignals() throws(SystemError) {
        let fd = try SignalFD.make(blocking: [SIGTERM, SIGINT])
        signals = fd
        try epoll.add(fd.raw, events: Epoll.readable, token: Token.signal)
    }

    public func stop() { running = false }

    public func run() throws(SystemError) {
        for worker in workers { worker.start() }
        defer { for worker in workers { worker.stopAndWait() } }
        let capacity = 16
        let events = UnsafeMutableBufferPointer<epoll_event>.allocate(capacity: capacity)
        defer { events.deallocate() }
        while running {
            let count = try epoll.wait(into: events, timeoutMilliseconds: -1)
            for i in 0..<count {
                dispatch(token: events[i].data.u64, events: events[i].events)
                if !running { break }
            }
        }
        if connection != nil { disconnect(reason: "shutting down") }
        if case .listen(let path) = endpoint {
            listener = nil
            unlink(path)
        }
    }

    /// Runs `body` with every queue worker parked between events, then lets the workers
    /// re-register whatever the change touched.
    public func withWorkersPaused<T>(_ body: () -> T) -> T {
        let releases = workers.map { $0.park() }
        queuesChanged = false
        let result = body()
        if queuesChanged {
            for worker in workers { worker.reconcile() }
            queuesChanged = false
        }
        for release in releases { release.signal() }
        return result
    }

    private func dispatch(token: UInt64, events: UInt32) {
        switch token & Token.kindMask {
        case Token.connection:
            serviceConnection()
        case Token.listener:
            acceptFrontend()
        case Token.signal:
            if let fd = signals, let signal = SignalFD.read(fd.raw) {
                logger.info("received signal \(signal), shutting down")
                running = false
            }
        case Token.mailbox:
            mailbox.runPending(self)
        case Token.reconnect:
            if let timer = reconnectTimer { TimerFD.drain(timer.raw) }
            connectToFrontend()
        default:
            break
        }
        // After any event: the workers are running again, but what gauges reads is the loop's.
        gauges.connected.store(connection != nil, ordering: .relaxed)
        gauges.pairsEnabled.store((0..<device.config.queuePairs).filter { device.queues[2 * $0].enabled }.count,
                                  ordering: .relaxed)
    }

    // MARK: - Frontend connection

    private func acceptFrontend() {
        guard let listener else { return }
        let socket: Descriptor
        do { socket = try UnixSocket.accept(listener.raw) } catch {
            logger.warning("accept: \(error)")
            return
        }
        if connection != nil {
            // QEMU's netdev_add retries at once, thousands of times a second: say it sparingly.
            refusedFrontends += 1
            let now = monotonicNanoseconds()
            if refusedFrontends == 1 || now &- lastRefusalLogged >= Self.connectFailureLogInterval {
                logger.warning("refusing a second frontend: one VM per tapwire, and one is connected (\(refusedFrontends) refused so far)")
                lastRefusalLogged = now
            }
            return
        }
        adopt(socket)
    }

    private func connectToFrontend() {
        guard case .connect(let path) = endpoint, connection == nil else { return }
        do {
            let socket = try UnixSocket.connect(path: path)
            reconnectDelayMilliseconds = 100
            lastConnectFailure = (0, 0)
            adopt(socket)
        } catch {
            logConnectFailure(error, path: path)
            if let timer = reconnectTimer { TimerFD.arm(timer.raw, afterNanoseconds: UInt64(reconnectDelayMilliseconds) * 1_000_000) }
            reconnectDelayMilliseconds = min(reconnectDelayMilliseconds * 2, 5000)
        }
    }

    /// A new kind of failure is logged at once, with what to do where retrying cannot help;
    /// the same failure again only once a minute, so a long wait does not flood the log.
    private func logConnectFailure(_ error: SystemError, path: String) {
        let now = monotonicNanoseconds()
        let repeated = error.errno == lastConnectFailure.errno
        guard !repeated || now &- lastConnectFailure.loggedAt >= Self.connectFailureLogInterval else {
            logger.debug("connect \(path): \(error); retrying in \(reconnectDelayMilliseconds) ms")
            return
        }
        lastConnectFailure = (error.errno, now)
        if let advice = UnixSocket.connectFailureNeedsOperator(error, path: path) {
            logger.error("cannot connect to \(path): \(error). \(advice). Retrying meanwhile, at most every 5 s")
        } else {
            logger.info("waiting for the frontend's socket \(path) (\(error)); retrying, at most every 5 s")
        }
    }

    /// A repeated connect failure or refusal is logged at most this often (ns).
    private static let connectFailureLogInterval: UInt64 = 60_000_000_000

    private func adopt(_ socket: Descriptor) {
        do {
            // A frontend that stops half-way through a message cannot stall the data path for long.
            try UnixSocket.setReceiveTimeout(socket.raw, milliseconds: 5000)
            try epoll.add(socket.raw, events: Epoll.readable | Epoll.hangup, token: Token.connection)
        } catch {
            logger.error("cannot serve the new frontend: \(error)")
            return
        }
        connection = VhostUserConnection(socket: socket)
        gauges.connections.add(1, ordering: .relaxed)
        logger.info("frontend connected")
    }

    private func serviceConnection() {
        guard let connection else { return }
        let result: VhostUserConnection.ReceiveResult
        do { result = try connection.receive() } catch {
            disconnect(reason: "\(error)")
            return
        }
        switch result {
        case .closed:
            disconnect(reason: "frontend closed the connection")
        case .refused(let header, let error):
            let name = VhostUserRequest(rawValue: header.request)?.name ?? "request \(header.request)"
            logger.warning("refused \(name): \(error)")
            if case .unknownRequest = error {
                if header.needsReply && device.replyAckNegotiated { sendAck(header, ok: false, on: connection) }
            } else {
                // A malformed known request leaves the device in an unknown state: hang up.
                disconnect(reason: "malformed \(name): \(error)")
            }
        case .message(let header, let message):
            let name = VhostUserRequest(rawValue: header.request)?.name ?? "?"
            logger.trace("\(name)\(header.needsReply ? " (reply wanted)" : "")")
            switch withWorkersPaused({ device.handle(message) }) {
            case .payload(let payload):
                do { try connection.reply(to: header, payload: payload) } catch {
                    disconnect(reason: "replying to \(name): \(error)")
                }
            case .done:
                if header.needsReply && device.replyAckNegotiated { sendAck(header, ok: true, on: connection) }
            case .failed(let reason):
                logger.error("\(name) failed: \(reason)")
                if header.needsReply && device.replyAckNegotiated {
                    sendAck(header, ok: false, on: connection)
                } else if case .unsupported = message {
                    // Nothing owed and nothing changed: carry on.
                } else {
                    // The frontend cannot learn of the failure otherwise; its view and ours differ now.
                    disconnect(reason: "\(name) failed and the frontend did not ask for an ack")
                }
            }
        }
    }

    private func sendAck(_ header: MessageHeader, ok: Bool, on connection: VhostUserConnection) {
        do { try connection.reply(to: header, payload: MessageEncoder.u64(ok ? 0 : 1)) } catch {
            disconnect(reason: "sending an ack: \(error)")
        }
    }

    /// Drops the frontend and everything it gave us; the TAP stays for the next one.
    private func disconnect(reason: String) {
        guard let connection else { return }
        epoll.remove(connection.socket.raw)
        self.connection = nil
        gauges.disconnects.add(1, ordering: .relaxed)
        withWorkersPaused {
            for queue in device.queues where queue.stats.frames > 0 || queue.stats.kicks > 0 {
                let st = queue.stats
                logger.info("queue \(queue.index) (\(queue.isReceive ? "rx" : "tx")): \(st.frames) frames, \(st.bytes) bytes, \(st.kicks) kicks, \(st.interrupts) interrupts (\(st.interruptsHeld) held back), \(st.tapBatches) io_uring batches, \(st.totalDrops) drops")
            }
            device.resetConnection()
            for worker in workers { worker.resetTimers() }
        }
        logger.info("frontend disconnected (\(reason)); the TAP stays up for the next one")
        if case .connect = endpoint, running, let timer = reconnectTimer {
            TimerFD.arm(timer.raw, afterNanoseconds: UInt64(reconnectDelayMilliseconds) * 1_000_000)
        }
    }

    public var isConnected: Bool { connection != nil }

    /// New limits: every queue re-offers what it holds now instead of waiting out a timer
    /// computed under the old limits. Call inside `withWorkersPaused`.
    func limitsChanged() {
        for worker in workers { worker.resetTimers() }
    }
}

/// Jobs from other threads (the control API, the control thread) run on the owning loop's
/// thread between events.
public final class LoopMailbox<Owner>: Sendable {
    let wake: Descriptor
    private let jobs = Locked<[@Sendable (Owner) -> Void]>([])

    init() throws(SystemError) {
        wake = try EventFD.make()
    }

    public func post(_ job: @escaping @Sendable (Owner) -> Void) {
        jobs.withLock { $0.append(job) }
        EventFD.signal(wake.raw)
    }

    func runPending(_ owner: Owner) {
        EventFD.drain(wake.raw)
        let batch = jobs.withLock { pending in
            let taken = pending
            pending.removeAll()
            return taken
        }
        for job in batch { job(owner) }
    }
}
