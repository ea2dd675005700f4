import Testing
import VirtioNet

/// The hold-back rules alone, with a made-up clock: no ring, no kernel.
@Suite struct InterruptModerationTests {
    let microsecond: UInt64 = 1000
    let moderation = InterruptModeration(receiveHoldoffMicroseconds: 300, transmitHoldoffMicroseconds: 200)
    let start: UInt64 = 5_000_000_000

    @Test func bulkReceiveIsSpacedByTheHoldoff() {
        let deadline = moderation.receiveDeadline(now: start + 100 * microsecond, lastInterrupt: start,
                                                  bytesSinceInterrupt: 64 * 1024)
        #expect(deadline == start + 300 * microsecond, "held until 300 µs after the previous interrupt")
    }

    @Test func receiveIsNotHeldOnceTheHoldoffHasPassed() {
        #expect(moderation.receiveDeadline(now: start + 300 * microsecond, lastInterrupt: start, bytesSinceInterrupt: 1 << 20) == nil)
        #expect(moderation.receiveDeadline(now: start + 5_000 * microsecond, lastInterrupt: start, bytesSinceInterrupt: 1 << 20) == nil)
    }

    @Test func bulkIsARateNotATotal() {
        // 4 KiB in 20 µs is 1.6 Gbit/s: held.
        #expect(moderation.receiveDeadline(now: start + 20 * microsecond, lastInterrupt: start, bytesSinceInterrupt: 4096)
                == start + 300 * microsecond)
        // Exactly 1 Gbit/s (125 bytes per µs): held; a byte less: sent now.
        #expect(moderation.receiveDeadline(now: start + 150 * microsecond, lastInterrupt: start, bytesSinceInterrupt: 18_750) != nil)
        #expect(moderation.receiveDeadline(now: start + 150 * microsecond, lastInterrupt: start, bytesSinceInterrupt: 18_749) == nil)
    }

    @Test func theBulkRateIsAdjustable() {
        let slow = InterruptModeration(receiveHoldoffMicroseconds: 20_000, transmitHoldoffMicroseconds: 0, bulkMegabitsPerSecond: 10)
        // 2.8 KB per ms is 22 Mbit/s: bulk for a 10 Mbit/s threshold, not for the default.
        #expect(slow.receiveDeadline(now: start + 1_000 * microsecond, lastInterrupt: start, bytesSinceInterrupt: 2_800) != nil)
        #expect(InterruptModeration(receiveHoldoffMicroseconds: 20_000, transmitHoldoffMicroseconds: 0)
            .receiveDeadline(now: start + 1_000 * microsecond, lastInterrupt: start, bytesSinceInterrupt: 2_800) == nil)
    }

    @Test func sparseOrSmallReceiveIsNeverHeld() {
        #expect(moderation.receiveDeadline(now: start + 50 * microsecond, lastInterrupt: start, bytesSinceInterrupt: 100) == nil,
                "request/response traffic keeps its latency")
        #expect(moderation.receiveDeadline(now: start + 10 * microsecond, lastInterrupt: start, bytesSinceInterrupt: 0) == nil)
        #expect(moderation.receiveDeadline(now: start, lastInterrupt: 0, bytesSinceInterrupt: 1 << 20) == nil,
                "the first interrupt goes at once")
    }

    @Test func hugeCountsAndHoldoffsDoNotOverflow() {
        let long = InterruptModeration(receiveHoldoffMicroseconds: Int.max, transmitHoldoffMicroseconds: Int.max)
        #expect(long.receiveHoldoffNanoseconds == 10_000_000_000, "clamped to 10 s")
        #expect(long.receiveDeadline(now: start + 1, lastInterrupt: start, bytesSinceInterrupt: .max) == start + 10_000_000_000)
    }

    @Test func transmitWaitsOnlyWhileReceiveInterrupts() {
        #expect(moderation.transmitDeadline(now: start + 50 * microsecond, receiveLastInterrupt: start) == start + 250 * microsecond)
        #expect(moderation.transmitDeadline(now: start + 200 * microsecond, receiveLastInterrupt: start) == nil,
                "a receive side quiet for the holdoff carries nothing")
        #expect(moderation.transmitDeadline(now: start, receiveLastInterrupt: 0) == nil, "a guest that only sends is not made to wait")
    }

    @Test func offNeverHolds() {
        let off = InterruptModeration.off
        #expect(!off.isEnabled)
        #expect(off.receiveDeadline(now: start + 1, lastInterrupt: start, bytesSinceInterrupt: 1 << 30) == nil)
        #expect(off.transmitDeadline(now: start + 1, receiveLastInterrupt: start) == nil)
        #expect(InterruptModeration(receiveHoldoffMicroseconds: 0, transmitHoldoffMicroseconds: 5).isEnabled)
        #expect(InterruptModeration(receiveHoldoffMicroseconds: -3, transmitHoldoffMicroseconds: 0) == off, "negative means off")
    }
}
