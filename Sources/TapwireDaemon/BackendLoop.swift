import Glibc
import CTapwire
import Logging
import Synchronization
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

/// Runs one VM's device: the vhost-user socket, kicks, the TAP, timers and control requests,
/// all on one thread with one epoll, so device state needs no locks.
// @unchecked Sendable: handed to exactly one thread that runs it; other threads only use `mailbox`.
public final class BackendLoop: @unchecked Sendable {
    enum Token {
        static let listener: UInt64 = 1 << 32
        static let connection: UInt64 = 2 << 32
        static let signal: UInt64 = 3 << 32
        static let mailbox: UInt64 = 4 << 32
        static let kick: UInt64 = 5 << 32
        static let tap: UInt64 = 6 << 32
        static let timer: UInt64 = 7 << 32
        static let reconnect: UInt64 = 8 << 32
        static let kindMask: UInt64 = 0xffff_ffff << 32
    }

    public let device: NetDevice
    let endpoint: FrontendEndpoint
    public let logger: Logger
    let epoll: Epoll
    let mailbox: LoopMailbox
    private var listener: Descriptor?
    private var connection: VhostUserConnection?
    private var signals: Descriptor?
    private var reconnectTimer: Descriptor?
    private var reconnectDelayMilliseconds = 100
    private var registeredKicks: [Int32]
    private var tapInterest: [Bool]
    /// The receive queue of a pair waits for a kick (no buffers) or a timer (throttled).
    private var rxWaiting: [Bool]
    private var timers: [Descriptor]
    private var needsService: [Bool]
    private var anyNeedsService = false
    private var running = true
    public private(set) var connectionsAccepted = 0
    public private(set) var disconnects = 0
    public let startedAt = monotonicNanoseconds()
    /// Filled in after start-up so a control request can see the socket path.
    public var socketPathForStatus: String?

    public init(device: NetDevice, endpoint: FrontendEndpoint, logger: Logger) throws(SystemError) {
        self.device = device
        self.endpoint = endpoint
        self.logger = logger
        epoll = try Epoll()
        mailbox = try LoopMailbox()
        let queueCount = device.queues.count
        registeredKicks = Array(repeating: -1, count: queueCount)
        tapInterest = Array(repeating: false, count: queueCount / 2)
        rxWaiting = Array(repeating: false, count: queueCount / 2)
        needsService = Array(repeating: false, count: queueCount)
        var made = [Descriptor]()
        for _ in 0..<queueCount { made.append(try TimerFD.make()) }
        timers = made
        for (index, timer) in timers.enumerated() {
            try epoll.add(timer.raw, events: Epoll.readable, token: Token.timer | UInt64(index))
        }
        try epoll.add(mailbox.wake.raw, events: Epoll.readable, token: Token.mailbox)
        device.onQueuesChanged = { [unowned self] in self.reconcile() }
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
        let capacity = 64
        let events = UnsafeMutableBufferPointer<epoll_event>.allocate(capacity: capacity)
        defer { events.deallocate() }
        while running {
            let count = try epoll.wait(into: events, timeoutMilliseconds: anyNeedsService ? 0 : -1)
            for i in 0..<count {
                dispatch(token: events[i].data.u64, events: events[i].events)
                if !running { break }
            }
            if anyNeedsService { serviceQueues() }
        }
        if connection != nil { disconnect(reason: "shutting down") }
        if case .listen(let path) = endpoint {
            listener = nil
            unlink(path)
        }
    }

    private func dispatch(token: UInt64, events: UInt32) {
        let index = Int(token & 0xffff_ffff)
        switch token & Token.kindMask {
        case Token.kick:
            EventFD.drain(registeredKicks[index])
            device.queues[index].stats.kicks &+= 1
            markForService(index)
            if index % 2 == 0 { rxWaiting[index / 2] = false; updateTapInterest(pair: index / 2) }
        case Token.tap:
            markForService(2 * index)
        case Token.timer:
            TimerFD.drain(timers[index].raw)
            markForService(index)
            if index % 2 == 0 { rxWaiting[index / 2] = false; updateTapInterest(pair: index / 2) }
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
    }

    @inline(__always)
    private func markForService(_ queue: Int) {
        needsService[queue] = true
        anyNeedsService = true
    }

    /// Services every marked queue once; queues with budget left over stay marked.
    private func serviceQueues() {
        anyNeedsService = false
        let now = monotonicNanoseconds()
        for index in 0..<needsService.count where needsService[index] {
            needsService[index] = false
            let pair = index / 2
            let outcome = index % 2 == 0 ? device.serviceReceive(pair: pair, now: now)
                                         : device.serviceTransmit(pair: pair, now: now)
            switch outcome {
            case .idle:
                break
            case .moreWork:
                markForService(index)
            case .needBuffers:
                rxWaiting[pair] = true
                updateTapInterest(pair: pair)
            case .throttled(let nanoseconds):
                TimerFD.arm(timers[index].raw, afterNanoseconds: nanoseconds)
                if index % 2 == 0 {
                    rxWaiting[pair] = true
                    updateTapInterest(pair: pair)
                }
            }
        }
    }

    // MARK: - Registrations

    /// Brings epoll in line with the device: kick fds of started rings, TAP interest for
    /// receive queues that can take frames. Called after every control change.
    func reconcile() {
        for queue in device.queues {
            let wanted = queue.isRunning ? (queue.kick?.raw ?? -1) : -1
            let current = registeredKicks[queue.index]
            if wanted != current {
                if current >= 0 { epoll.remove(current) }
                registeredKicks[queue.index] = -1
                if wanted >= 0 {
                    do {
                        try epoll.add(wanted, events: Epoll.readable, token: Token.kick | UInt64(queue.index))
                        registeredKicks[queue.index] = wanted
                    } catch {
                        logger.error("queue \(queue.index): cannot watch its kick fd: \(error)")
                    }
                }
            }
            if queue.isRunning {
                // Work may already be waiting (a restart, or a kick sent before we watched).
                markForService(queue.index)
                if queue.isReceive { rxWaiting[queue.pair] = false }
            }
        }
        for pair in 0..<tapInterest.count { updateTapInterest(pair: pair) }
    }

    private func updateTapInterest(pair: Int) {
        guard let tap = device.tap else { return }
        let queue = device.queues[2 * pair]
        let wanted = queue.isRunning && queue.enabled && !rxWaiting[pair]
        guard wanted != tapInterest[pair] else { return }
        let fd = tap.queues[pair].raw
        if wanted {
            do {
                try epoll.add(fd, events: Epoll.readable, token: Token.tap | UInt64(pair))
                tapInterest[pair] = true
            } catch {
                logger.error("cannot watch TAP queue \(pair): \(error)")
            }
        } else {
            epoll.remove(fd)
            tapInterest[pair] = false
        }
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
            logger.warning("refusing a second frontend: one VM per tapwire, and one is connected")
            return
        }
        adopt(socket)
    }

    private func connectToFrontend() {
        guard case .connect(let path) = endpoint, connection == nil else { return }
        do {
            let socket = try UnixSocket.connect(path: path)
            reconnectDelayMilliseconds = 100
            adopt(socket)
        } catch {
            logger.debug("connect \(path): \(error); retrying in \(reconnectDelayMilliseconds) ms")
            if let timer = reconnectTimer { TimerFD.arm(timer.raw, afterNanoseconds: UInt64(reconnectDelayMilliseconds) * 1_000_000) }
            reconnectDelayMilliseconds = min(reconnectDelayMilliseconds * 2, 5000)
        }
    }

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
        connectionsAccepted += 1
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
            logger.trace("\(name)")
            switch device.handle(message) {
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
        disconnects += 1
        device.resetDevice()
        for timer in timers { TimerFD.disarm(timer.raw) }
        logger.info("frontend disconnected (\(reason)); the TAP stays up for the next one")
        if case .connect = endpoint, running, let timer = reconnectTimer {
            TimerFD.arm(timer.raw, afterNanoseconds: UInt64(reconnectDelayMilliseconds) * 1_000_000)
        }
    }

    public var isConnected: Bool { connection != nil }

    /// New limits: every queue re-offers what it holds now instead of waiting out a timer
    /// computed under the old limits.
    func limitsChanged() {
        for timer in timers { TimerFD.disarm(timer.raw) }
        for index in 0..<needsService.count where device.queues[index].isRunning {
            markForService(index)
            if index % 2 == 0 {
                rxWaiting[index / 2] = false
                updateTapInterest(pair: index / 2)
            }
        }
    }
}

/// Jobs from other threads (the control API) run on the loop thread between events.
public final class LoopMailbox: Sendable {
    let wake: Descriptor
    private let jobs = Mutex<[@Sendable (BackendLoop) -> Void]>([])

    init() throws(SystemError) {
        wake = try EventFD.make()
    }

    public func post(_ job: @escaping @Sendable (BackendLoop) -> Void) {
        jobs.withLock { $0.append(job) }
        EventFD.signal(wake.raw)
    }

    func runPending(_ loop: BackendLoop) {
        EventFD.drain(wake.raw)
        let batch = jobs.withLock { pending in
            let taken = pending
            pending.removeAll()
            return taken
        }
        for job in batch { job(loop) }
    }
}
