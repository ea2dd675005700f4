import Glibc
import CTapwire
import Dispatch
import Foundation
import Logging
import SystemCalls
import Virtqueue
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
        static let heldInterrupt: UInt64 = 5 << 32
        static let kindMask: UInt64 = 0xffff_ffff << 32
    }

    let pair: Int
    let device: NetDevice
    let logger: Logger
    let epoll: Epoll
    let mailbox: LoopMailbox<QueuePairWorker>
    /// Index 0 is the pair's receive queue, 1 its transmit queue.
    private let timers: [Descriptor]
    /// Fires when an interrupt held back by moderation is due.
    private let interruptTimer: Descriptor
    private var interruptTimerDeadline: UInt64 = 0
    /// The kick eventfds this thread's epoll watches, held so that each stays open until it is
    /// removed from the epoll: closed first, its entry would outlive it (the frontend still
    /// holds the file) and could no longer be removed, waking the thread for ever.
    private var watchedKicks: [Descriptor?] = [nil, nil]
    private var tapInterest = false
    /// The receive queue waits for a kick (no buffers) or its timer (throttled).
    private var rxWaiting = false
    /// Of those, waiting for buffers (what busy polling looks for in the ring itself).
    private var rxNeedsBuffers = false
    /// While busy polling: until when (monotonic ns) to keep polling; 0 when not polling.
    private var pollUntil: UInt64 = 0
    private var needsService = [false, false]
    private var anyNeedsService = false
    private var running = true
    private let finished = DispatchSemaphore(value: 0)
    /// Whether kicks stay off after a transmit burst, and how long until the next look.
    private var transmitPoll: TransmitPollPolicy
    /// `--busy-poll`: how long to keep polling after the last frame moved (0: never poll).
    private var busyPollNanoseconds: UInt64 { UInt64(device.config.busyPollMicroseconds) * 1000 }

    init(pair: Int, device: NetDevice, logger: Logger) throws(SystemError) {
        self.pair = pair
        self.device = device
        self.logger = logger
        transmitPoll = device.config.transmitPollPolicy
        epoll = try Epoll()
        mailbox = try LoopMailbox()
        timers = [try TimerFD.make(), try TimerFD.make()]
        for (slot, timer) in timers.enumerated() {
            try epoll.add(timer.raw, events: Epoll.readable, token: Token.timer | UInt64(slot))
        }
        try epoll.add(mailbox.wake.raw, events: Epoll.readable, token: Token.mailbox)
        interruptTimer = try TimerFD.make()
        try epoll.add(interruptTimer.raw, events: Epoll.readable, token: Token.heldInterrupt)
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
        let busyPoll = busyPollNanoseconds
        while running {
            let polling = pollUntil != 0
            let count = try epoll.wait(into: events, timeoutMilliseconds: anyNeedsService || polling ? 0 : -1)
            for i in 0..<count { dispatch(token: events[i].data.u64) }
            if polling { lookForWork() }
            if anyNeedsService && running {
                let moved = framesMoved
                service()
                if busyPoll > 0 && framesMoved != moved { pollUntil = monotonicNanoseconds() &+ busyPoll }
            }
            if polling && monotonicNanoseconds() >= pollUntil { stopPolling() }
            armInterruptTimer()
        }
    }

    /// Keeps the held-interrupt timer on the pair's earliest held interrupt.
    @inline(__always)
    private func armInterruptTimer() {
        let deadline = device.heldInterruptDeadline(pair: pair)
        guard deadline != interruptTimerDeadline else { return }
        interruptTimerDeadline = deadline
        if deadline == 0 {
            TimerFD.disarm(interruptTimer.raw)
        } else {
            let now = monotonicNanoseconds()
            TimerFD.arm(interruptTimer.raw, afterNanoseconds: deadline > now ? deadline - now : 1)
        }
    }

    // MARK: - Busy polling

    private var framesMoved: UInt64 {
        device.queues[queueIndex(0)].stats.frames &+ device.queues[queueIndex(1)].stats.frames
    }

    /// Polling: a guest that posts without kicking (kicks are off) is seen in its rings.
    private func lookForWork() {
        let tx = device.queues[queueIndex(1)]
        if let ring = tx.ring, tx.fault == nil, ringHasWork(ring) { mark(1) }
        let rx = device.queues[queueIndex(0)]
        if rxNeedsBuffers, let ring = rx.ring, rx.fault == nil, ringHasWork(ring) {
            rxWaiting = false
            rxNeedsBuffers = false
            mark(0)
            updateTapInterest()
        }
    }

    private func ringHasWork(_ ring: SplitQueue) -> Bool {
        // A broken avail index counts as work: the service call reports and stops the queue.
        guard let pending = try? ring.pendingCount() else { return true }
        return pending > 0
    }

    /// The poll window closed without traffic: ask for transmit kicks again (taking whatever
    /// slipped in meanwhile) and sleep until an event.
    private func stopPolling() {
        pollUntil = 0
        let moved = framesMoved
        let now = monotonicNanoseconds()
        handle(slot: 1, serviceTransmit(now: now, holdKicks: false))
        if framesMoved != moved { pollUntil = now &+ busyPollNanoseconds }
    }

    private func dispatch(token: UInt64) {
        let slot = Int(token & 0xffff_ffff)
        switch token & Token.kindMask {
        case Token.kick:
            if let kick = watchedKicks[slot] { EventFD.drain(kick.raw) }
            device.queues[queueIndex(slot)].stats.kicks &+= 1
            mark(slot)
            if slot == 0 { rxWaiting = false; rxNeedsBuffers = false; updateTapInterest() }
        case Token.tap:
            mark(0)
        case Token.timer:
            TimerFD.drain(timers[slot].raw)
            mark(slot)
            if slot == 0 { rxWaiting = false; rxNeedsBuffers = false; updateTapInterest() }
        case Token.heldInterrupt:
            TimerFD.drain(interruptTimer.raw)
            interruptTimerDeadline = 0 // one-shot: it is disarmed now
            device.releaseDueInterrupts(pair: pair, now: monotonicNanoseconds())
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
        // Busy polling keeps transmit kicks off: the ring is looked at anyway.
        let holdKicks = transmitPoll.pollNanoseconds > 0 || busyPollNanoseconds > 0
        for slot in 0..<2 where needsService[slot] {
            needsService[slot] = false
            handle(slot: slot, slot == 0 ? device.serviceReceive(pair: pair, now: now)
                                         : serviceTransmit(now: now, holdKicks: holdKicks))
        }
    }

    /// One transmit service, told by the poll policy whether kicks may stay off after it, and
    /// telling the policy what it moved.
    @inline(__always)
    private func serviceTransmit(now: UInt64, holdKicks: Bool) -> ServiceOutcome {
        let stats = device.queues[queueIndex(1)].stats
        let before = stats.frames
        // Busy polling holds after any frame; otherwise the policy says from how many.
        let holdFrom = busyPollNanoseconds > 0 ? 1 : transmitPoll.holdKicksFrom(now: now)
        let outcome = device.serviceTransmit(pair: pair, now: now, holdKicks: holdKicks, holdKicksFrom: holdFrom)
        transmitPoll.record(frames: Int(truncatingIfNeeded: stats.frames &- before), now: now)
        return outcome
    }

    private func handle(slot: Int, _ outcome: ServiceOutcome) {
        switch outcome {
        case .idle:
            break
        case .drained:
            // Kicks are off: come back by timer, unless polling brings us back anyway.
            if pollUntil == 0 { TimerFD.arm(timers[1].raw, afterNanoseconds: max(transmitPoll.pollNanoseconds, 1000)) }
        case .moreWork:
            mark(slot)
        case .needBuffers:
            rxWaiting = true
            rxNeedsBuffers = true
            updateTapInterest()
        case .throttled(let nanoseconds):
            TimerFD.arm(timers[slot].raw, afterNanoseconds: nanoseconds)
            if slot == 0 {
                rxWaiting = true
                rxNeedsBuffers = false
                updateTapInterest()
            }
        }
        // A queue the guest broke is no longer watched.
        if device.queues[queueIndex(slot)].fault != nil { reconcile() }
    }

    // MARK: - Called on this thread, or by the control thread while parked

    /// Brings this worker's epoll in line with its two queues.
    func reconcile() {
        for slot in 0..<2 {
            let queue = device.queues[queueIndex(slot)]
            let wanted = queue.isRunning ? queue.kick : nil
            let current = watchedKicks[slot]
            if wanted !== current {
                if let current { epoll.remove(current.raw) }
                watchedKicks[slot] = nil
                if let wanted {
                    do {
                        try epoll.add(wanted.raw, events: Epoll.readable, token: Token.kick | UInt64(slot))
                        watchedKicks[slot] = wanted
                    } catch {
                        logger.error("queue \(queue.index): cannot watch its kick fd: \(error)")
                    }
                }
            }
            if queue.isRunning {
                // Work may already be waiting (a restart, or a kick sent before we watched).
                mark(slot)
                if slot == 0 { rxWaiting = false; rxNeedsBuffers = false }
            }
        }
        updateTapInterest()
    }

    /// New limits or a reset: re-offer what is held now, forget old timers.
    func resetTimers() {
        for timer in timers { TimerFD.disarm(timer.raw) }
        rxWaiting = false
        rxNeedsBuffers = false
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
