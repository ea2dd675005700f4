import Glibc
import CTapwire
import Dispatch
import Foundation
import Logging
import SystemCalls
import VirtioNet

/// One queue pair's data path on its own thread and epoll: the pair's kick eventfds, its TAP
/// queue and its rate-limit timers. Device state changes happen only while the worker is
/// parked (see `park`), so the packet path takes no lock.
final class QueuePairWorker: @unchecked Sendable {
    // @unchecked Sendable: its state is touched by its own thread, or by the control thread
    // while this worker is parked (the semaphores order those accesses).
    enum Token {
        static let kick: UInt64 = 1 << 32
        static let tap: UInt64 = 2 << 32
        static let timer: UInt64 = 3 << 32
        static let mailbox: UInt64 = 4 << 32
        static let kindMask: UInt64 = 0xffff_ffff << 32
    }

    let pair: Int
    let device: NetDevice
    let logger: Logger
    let epoll: Epoll
    let mailbox: LoopMailbox<QueuePairWorker>
    /// Index 0 is the pair's receive queue, 1 its transmit queue.
    private let timers: [Descriptor]
    private var registeredKicks: [Int32] = [-1, -1]
    private var tapInterest = false
    /// The receive queue waits for a kick (no buffers) or its timer (throttled).
    private var rxWaiting = false
    private var needsService = [false, false]
    private var anyNeedsService = false
    private var running = true
    private let finished = DispatchSemaphore(value: 0)
    /// After a transmit burst, look again this much later before asking for kicks (0: never).
    private var transmitPollNanoseconds: UInt64 { UInt64(device.config.transmitPollMicroseconds) * 1000 }

    init(pair: Int, device: NetDevice, logger: Logger) throws(SystemError) {
        self.pair = pair
        self.device = device
        self.logger = logger
        epoll = try Epoll()
        mailbox = try LoopMailbox()
        timers = [try TimerFD.make(), try TimerFD.make()]
        for (slot, timer) in timers.enumerated() {
            try epoll.add(timer.raw, events: Epoll.readable, token: Token.timer | UInt64(slot))
        }
        try epoll.add(mailbox.wake.raw, events: Epoll.readable, token: Token.mailbox)
    }

    func start() {
        let thread = Thread { [self] in
            do { try run() } catch { logger.critical("queue pair \(pair): \(error)") }
            finished.signal()
        }
        thread.start()
    }

    func stopAndWait() {
        mailbox.post { $0.running = false }
        finished.wait()
    }

    private func queueIndex(_ slot: Int) -> Int { 2 * pair + slot }

    private func run() throws(SystemError) {
        let events = UnsafeMutableBufferPointer<epoll_event>.allocate(capacity: 16)
        defer { events.deallocate() }
        while running {
            let count = try epoll.wait(into: events, timeoutMilliseconds: anyNeedsService ? 0 : -1)
            for i in 0..<count { dispatch(token: events[i].data.u64) }
            if anyNeedsService && running { service() }
        }
    }

    private func dispatch(token: UInt64) {
        let slot = Int(token & 0xffff_ffff)
        switch token & Token.kindMask {
        case Token.kick:
            EventFD.drain(registeredKicks[slot])
            device.queues[queueIndex(slot)].stats.kicks &+= 1
            mark(slot)
            if slot == 0 { rxWaiting = false; updateTapInterest() }
        case Token.tap:
            mark(0)
        case Token.timer:
            TimerFD.drain(timers[slot].raw)
            mark(slot)
            if slot == 0 { rxWaiting = false; updateTapInterest() }
        case Token.mailbox:
            mailbox.runPending(self)
        default:
            break
        }
    }

    @inline(__always)
    private func mark(_ slot: Int) {
        needsService[slot] = true
        anyNeedsService = true
    }

    private func service() {
        anyNeedsService = false
        let now = monotonicNanoseconds()
        for slot in 0..<2 where needsService[slot] {
            needsService[slot] = false
            let outcome = slot == 0 ? device.serviceReceive(pair: pair, now: now)
                                    : device.serviceTransmit(pair: pair, now: now, holdKicks: transmitPollNanoseconds > 0)
            switch outcome {
            case .idle:
                break
            case .drained:
                TimerFD.arm(timers[1].raw, afterNanoseconds: transmitPollNanoseconds)
            case .moreWork:
                mark(slot)
            case .needBuffers:
                rxWaiting = true
                updateTapInterest()
            case .throttled(let nanoseconds):
                TimerFD.arm(timers[slot].raw, afterNanoseconds: nanoseconds)
                if slot == 0 {
                    rxWaiting = true
                    updateTapInterest()
                }
            }
            // A queue the guest broke is no longer watched.
            if device.queues[queueIndex(slot)].fault != nil { reconcile() }
        }
    }

    // MARK: - Called on this thread, or by the control thread while parked

    /// Brings this worker's epoll in line with its two queues.
    func reconcile() {
        for slot in 0..<2 {
            let queue = device.queues[queueIndex(slot)]
            let wanted = queue.isRunning ? (queue.kick?.raw ?? -1) : -1
            let current = registeredKicks[slot]
            if wanted != current {
                if current >= 0 { epoll.remove(current) }
                registeredKicks[slot] = -1
                if wanted >= 0 {
                    do {
                        try epoll.add(wanted, events: Epoll.readable, token: Token.kick | UInt64(slot))
                        registeredKicks[slot] = wanted
                    } catch {
                        logger.error("queue \(queue.index): cannot watch its kick fd: \(error)")
                    }
                }
            }
            if queue.isRunning {
                // Work may already be waiting (a restart, or a kick sent before we watched).
                mark(slot)
                if slot == 0 { rxWaiting = false }
            }
        }
        updateTapInterest()
    }

    /// New limits or a reset: re-offer what is held now, forget old timers.
    func resetTimers() {
        for timer in timers { TimerFD.disarm(timer.raw) }
        rxWaiting = false
        for slot in 0..<2 where device.queues[queueIndex(slot)].isRunning { mark(slot) }
        updateTapInterest()
    }

    private func updateTapInterest() {
        guard let tap = device.tap else { return }
        let queue = device.queues[2 * pair]
        let wanted = queue.isRunning && queue.enabled && !rxWaiting
        guard wanted != tapInterest else { return }
        let fd = tap.queues[pair].raw
        if wanted {
            do {
                try epoll.add(fd, events: Epoll.readable, token: Token.tap)
                tapInterest = true
            } catch {
                logger.error("cannot watch TAP queue \(pair): \(error)")
            }
        } else {
            epoll.remove(fd)
            tapInterest = false
        }
    }

    /// Parks the worker between events and returns once it is parked; `release` resumes it.
    func park() -> DispatchSemaphore {
        let parked = DispatchSemaphore(value: 0)
        let release = DispatchSemaphore(value: 0)
        mailbox.post { _ in
            parked.signal()
            release.wait()
        }
        parked.wait()
        return release
    }
}
