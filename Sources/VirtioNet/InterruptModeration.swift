/// When to hold a queue's interrupt back ("coalescing", as `ethtool -C rx-usecs` does on a
/// NIC). Each interrupt costs a guest far more than a frame does when QEMU relays it (under
/// TCG its main loop takes the global lock for every one, and the vCPU waits for that lock),
/// so while data streams in, interrupts are spaced out; sparse traffic gets them at once.
/// Pure logic: the queue asks with the clock and its counters, and sends or holds.
public struct InterruptModeration: Sendable, Equatable {
    /// Receive: the shortest gap between two interrupts while bulk data arrives (0: off).
    public var receiveHoldoffNanoseconds: UInt64
    /// Transmit: how long a completion interrupt may wait for the pair's next receive
    /// interrupt, while the receive queue is interrupting the guest anyway (0: off).
    public var transmitHoldoffNanoseconds: UInt64

    /// Receive traffic counts as bulk from this rate (since the last interrupt) up. Slower
    /// traffic (requests and responses, pings) is never held: its latency stays as it was.
    public var bulkMegabitsPerSecond: UInt64

    public static let off = InterruptModeration(receiveHoldoffMicroseconds: 0, transmitHoldoffMicroseconds: 0)

    public init(receiveHoldoffMicroseconds: Int, transmitHoldoffMicroseconds: Int, bulkMegabitsPerSecond: Int = 1000) {
        self.bulkMegabitsPerSecond = UInt64(min(max(bulkMegabitsPerSecond, 0), 1_000_000))
        // At most 10 s: the rate test in receiveDeadline multiplies by the holdoff.
        receiveHoldoffNanoseconds = UInt64(min(max(receiveHoldoffMicroseconds, 0), 10_000_000)) * 1000
        transmitHoldoffNanoseconds = UInt64(min(max(transmitHoldoffMicroseconds, 0), 10_000_000)) * 1000
    }

    public var isEnabled: Bool { receiveHoldoffNanoseconds != 0 || transmitHoldoffNanoseconds != 0 }

    /// Receive: when an interrupt due `now` should go instead, or nil to send it now. Held
    /// only while the previous interrupt was less than the holdoff ago (`lastInterrupt` 0:
    /// none yet) and the bytes since then come at a bulk rate.
    @inline(__always)
    public func receiveDeadline(now: UInt64, lastInterrupt: UInt64, bytesSinceInterrupt: UInt64) -> UInt64? {
        let elapsed = now &- lastInterrupt
        guard receiveHoldoffNanoseconds != 0, lastInterrupt != 0, elapsed < receiveHoldoffNanoseconds else { return nil }
        // bits / elapsed ns >= Mbit/s / 1000, without dividing. The clamps keep both sides
        // within 64 bits: elapsed < holdoff <= 10 s, rate <= 1 Tbit/s.
        let bytes = min(bytesSinceInterrupt, 1 << 40)
        guard bytes * 8000 >= bulkMegabitsPerSecond * elapsed else { return nil }
        return lastInterrupt &+ receiveHoldoffNanoseconds
    }

    /// Transmit: when a completion interrupt due `now` should go instead, or nil to send it
    /// now. Held only while the pair's receive queue interrupted within the holdoff: its next
    /// interrupt carries this one (the queues share one interrupt line under INTx, and a Linux
    /// guest reaps transmit completions while it receives). A quiet receive side (a guest
    /// that only sends) is never made to wait for its completions.
    @inline(__always)
    public func transmitDeadline(now: UInt64, receiveLastInterrupt: UInt64) -> UInt64? {
        guard transmitHoldoffNanoseconds != 0, receiveLastInterrupt != 0, now &- receiveLastInterrupt < transmitHoldoffNanoseconds else { return nil }
        return now &+ transmitHoldoffNanoseconds
    }
}
