import Glibc
import CTapwire

/// An epoll instance. Each registration carries a caller-chosen 64-bit token.
public final class Epoll: @unchecked Sendable {
    // @unchecked Sendable: used only by the event-loop thread that created it.
    public let descriptor: Descriptor

    public static let readable = UInt32(EPOLLIN.rawValue)
    public static let writable = UInt32(EPOLLOUT.rawValue)
    public static let hangup = UInt32(EPOLLHUP.rawValue) | UInt32(EPOLLRDHUP.rawValue)
    public static let error = UInt32(EPOLLERR.rawValue)

    public init() throws(SystemError) {
        descriptor = Descriptor(taking: try retryingInterrupts("epoll_create1") { epoll_create1(Int32(EPOLL_CLOEXEC)) })
    }

    public func add(_ fd: Int32, events: UInt32, token: UInt64) throws(SystemError) {
        try control(EPOLL_CTL_ADD, fd, events, token)
    }

    public func modify(_ fd: Int32, events: UInt32, token: UInt64) throws(SystemError) {
        try control(EPOLL_CTL_MOD, fd, events, token)
    }

    /// Removes `fd`; a descriptor that is already gone is not an error.
    public func remove(_ fd: Int32) {
        var event = epoll_event()
        _ = epoll_ctl(descriptor.raw, EPOLL_CTL_DEL, fd, &event)
    }

    private func control(_ op: Int32, _ fd: Int32, _ events: UInt32, _ token: UInt64) throws(SystemError) {
        var event = epoll_event()
        event.events = events
        event.data.u64 = token
        _ = try retryingInterrupts("epoll_ctl") { epoll_ctl(descriptor.raw, op, fd, &event) }
    }

    /// Waits for events; returns how many were written into `events`. EINTR counts as zero events.
    public func wait(into events: UnsafeMutableBufferPointer<epoll_event>, timeoutMilliseconds: Int32) throws(SystemError) -> Int {
        let n = epoll_wait(descriptor.raw, events.baseAddress, Int32(events.count), timeoutMilliseconds)
        if n < 0 {
            if Glibc.errno == EINTR { return 0 }
            throw SystemError("epoll_wait", errno: Glibc.errno)
        }
        return Int(n)
    }
}

/// An eventfd: the kick and call doorbells of vhost-user, and wake-ups between threads.
public enum EventFD {
    public static func make(nonBlocking: Bool = true) throws(SystemError) -> Descriptor {
        let flags = Int32(EFD_CLOEXEC) | (nonBlocking ? Int32(EFD_NONBLOCK) : 0)
        return Descriptor(taking: try retryingInterrupts("eventfd") { eventfd(0, flags) })
    }

    /// Adds one to the counter. A full counter (EAGAIN) already means "signalled".
    @inline(__always)
    public static func signal(_ fd: Int32) {
        var one: UInt64 = 1
        _ = resultOrNegativeErrno { write(fd, &one, 8) }
    }

    /// Reads and resets the counter; returns 0 when nothing was pending.
    @inline(__always)
    @discardableResult
    public static func drain(_ fd: Int32) -> UInt64 {
        var value: UInt64 = 0
        let n = resultOrNegativeErrno { read(fd, &value, 8) }
        return n == 8 ? value : 0
    }
}

/// A monotonic timerfd, used to resume a throttled queue at the exact moment tokens exist.
public enum TimerFD {
    public static func make() throws(SystemError) -> Descriptor {
        let fd = try retryingInterrupts("timerfd_create") {
            timerfd_create(CLOCK_MONOTONIC, Int32(TFD_NONBLOCK) | Int32(TFD_CLOEXEC))
        }
        return Descriptor(taking: fd)
    }

    /// Arms a one-shot timer `nanoseconds` from now (at least 1 ns; 0 would disarm).
    public static func arm(_ fd: Int32, afterNanoseconds nanoseconds: UInt64) {
        let ns = max(nanoseconds, 1)
        var spec = itimerspec()
        spec.it_value.tv_sec = Int(ns / 1_000_000_000)
        spec.it_value.tv_nsec = Int(ns % 1_000_000_000)
        _ = timerfd_settime(fd, 0, &spec, nil)
    }

    public static func disarm(_ fd: Int32) {
        var spec = itimerspec()
        _ = timerfd_settime(fd, 0, &spec, nil)
    }

    public static func drain(_ fd: Int32) {
        var expirations: UInt64 = 0
        _ = read(fd, &expirations, 8)
    }
}

/// A signalfd for SIGTERM/SIGINT so shutdown is an ordinary event in the loop.
public enum SignalFD {
    public static func make(blocking signals: [Int32]) throws(SystemError) -> Descriptor {
        var set = sigset_t()
        sigemptyset(&set)
        for signal in signals { sigaddset(&set, signal) }
        _ = try retryingInterrupts("pthread_sigmask") { pthread_sigmask(SIG_BLOCK, &set, nil) == 0 ? 0 : -1 }
        let fd = try retryingInterrupts("signalfd") { signalfd(-1, &set, Int32(SFD_NONBLOCK) | Int32(SFD_CLOEXEC)) }
        return Descriptor(taking: fd)
    }

    /// Returns the signal number read, or nil when none was pending.
    public static func read(_ fd: Int32) -> Int32? {
        var info = signalfd_siginfo()
        let n = resultOrNegativeErrno { Glibc.read(fd, &info, MemoryLayout<signalfd_siginfo>.size) }
        return n == MemoryLayout<signalfd_siginfo>.size ? Int32(info.ssi_signo) : nil
    }
}

/// The monotonic clock in nanoseconds, for the rate limiter and statistics.
@inline(__always)
public func monotonicNanoseconds() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return UInt64(ts.tv_sec) &* 1_000_000_000 &+ UInt64(ts.tv_nsec)
}
