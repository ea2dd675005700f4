import Testing
import RateLimiter

@Suite("TokenBucket")
struct TokenBucketTests {
    // 1000 tokens per 1 ms: one token per microsecond.
    func makeBucket(oneTimeBurst: UInt64 = 0, now: UInt64 = 5_000) -> TokenBucket {
        TokenBucket(size: 1000, refillTimeNanoseconds: 1_000_000, oneTimeBurst: oneTimeBurst, now: now)
    }

    @Test func startsFullAndRefusesBeyondSize() {
        var b = makeBucket()
        #expect(b.isFull)
        #expect(b.tokens == 1000)
        #expect(b.consume(600, now: 5_000) == true)
        #expect(b.tokens == 400)
        #expect(b.consume(401, now: 5_000) == false)
        #expect(b.tokens == 400, "a refusal takes nothing")
        #expect(b.consume(400, now: 5_000) == true)
        #expect(b.tokens == 0)
        #expect(b.consume(1, now: 5_000) == false)
        #expect(b.consume(0, now: 5_000) == true, "zero tokens always succeed")
    }

    @Test func refillsContinuouslyAtSizeOverRefillTime() {
        var b = makeBucket(now: 0)
        #expect(b.consume(1000, now: 0) == true)
        #expect(b.tokens(now: 999) == 0)
        #expect(b.tokens(now: 1_000) == 1)
        #expect(b.tokens(now: 1_999) == 1)
        #expect(b.tokens(now: 500_000) == 500)
        #expect(b.tokens(now: 1_000_000) == 1000)
        #expect(b.tokens(now: 9_000_000) == 1000, "refill caps at size")
        b.refill(now: 250_500)
        #expect(b.tokens == 250)
        #expect(b.lastUpdate == 250_500)
        // The half token accrued at 250_500 is not lost: 500 ns later there are 251.
        b.refill(now: 251_000)
        #expect(b.tokens == 251)
    }

    @Test func fractionalRatesKeepTheRemainder() {
        // 3 tokens per 10 ns = 0.3 tokens/ns.
        var b = TokenBucket(size: 3, refillTimeNanoseconds: 10, now: 0)
        #expect(b.consume(3, now: 0) == true)
        #expect(b.tokens(now: 3) == 0)   // 0.9
        #expect(b.tokens(now: 4) == 1)   // 1.2
        #expect(b.tokens(now: 7) == 2)   // 2.1
        #expect(b.tokens(now: 10) == 3)
        #expect(b.nanosecondsUntil(1, now: 0) == 4)   // ceil(10/3)
        #expect(b.nanosecondsUntil(2, now: 0) == 7)   // ceil(20/3)
        #expect(b.nanosecondsUntil(3, now: 0) == 10)
        // Refill in odd-sized steps: the fractions add up exactly.
        for t in stride(from: UInt64(1), through: 3, by: 1) { b.refill(now: t) }
        #expect(b.tokens == 0)
        b.refill(now: 4)
        #expect(b.tokens == 1)
    }

    @Test func refillIsIndependentOfHowOftenItIsCalled() {
        var rng = SplitMix64(seed: 42)
        for _ in 0..<200 {
            let size = UInt64.random(in: 1...1_000_000, using: &rng)
            let refill = UInt64.random(in: 1...10_000_000_000, using: &rng)
            var a = TokenBucket(size: size, refillTimeNanoseconds: refill, now: 0)
            _ = a.consume(UInt64.random(in: 0...(size * 3), using: &rng), now: 0)  // may over-consume
            var b = a
            var now: UInt64 = 0
            for _ in 0..<50 {
                now += UInt64.random(in: 0...(refill / 7 + 1), using: &rng)
                a.refill(now: now)
            }
            b.refill(now: now)
            #expect(a == b, "size \(size) refill \(refill)")
        }
    }

    @Test func oneTimeBurstIsSpentFirstAndNeverRefilled() {
        var b = makeBucket(oneTimeBurst: 500, now: 0)
        #expect(b.consume(100, now: 0) == true)
        #expect(b.oneTimeBurstRemaining == 400)
        #expect(b.tokens == 1000, "the bucket is untouched while the burst lasts")
        // 450 = the remaining 400 of the burst + 50 from the bucket.
        #expect(b.consume(450, now: 0) == true)
        #expect(b.oneTimeBurstRemaining == 0)
        #expect(b.tokens == 950)
        // Refill brings back the bucket, never the burst.
        b.refill(now: 10_000_000)
        #expect(b.tokens == 1000)
        #expect(b.oneTimeBurstRemaining == 0)
        #expect(b.consume(1000, now: 10_000_000) == true)
        #expect(b.consume(1, now: 10_000_000) == false)
    }

    @Test func oneTimeBurstIsNotLostOnRefusal() {
        // Bucket of 100 holding 30, with a fresh one-time burst of 10.
        var b = TokenBucket(size: 100, refillTimeNanoseconds: 1_000_000, now: 0)
        #expect(b.consume(70, now: 0) == true)
        b.reconfigure(BucketConfig(size: 100, refillTimeNanoseconds: 1_000_000, oneTimeBurst: 10), now: 0)
        #expect(b.oneTimeBurstRemaining == 10 && b.tokens == 30)
        // 50 > 10 + 30: refused, and (the fix over Firecracker) the burst is kept.
        #expect(b.consume(50, now: 0) == false)
        #expect(b.oneTimeBurstRemaining == 10)
        #expect(b.tokens == 30)
        // 10 more tokens are needed: 100 tokens per ms, so 100 us.
        #expect(b.nanosecondsUntil(50, now: 0) == 100_000)
        // 40 = burst 10 + 30 from the bucket.
        #expect(b.consume(40, now: 0) == true)
        #expect(b.oneTimeBurstRemaining == 0 && b.tokens == 0)
    }

    @Test func overConsumptionAdmitsALargeFrameIntoAFullBucketAndTheWaitCoversTheDebt() {
        // A 10 KiB bucket refilling in 8 ms (1.28 bytes/ns... 10240 B / 8e6 ns).
        let size: UInt64 = 10 * 1024, refill: UInt64 = 8_000_000
        var b = TokenBucket(size: size, refillTimeNanoseconds: refill, now: 0)
        let frame: UInt64 = 64 * 1024
        #expect(b.consume(frame, now: 0) == true, "a full bucket admits a frame larger than itself")
        #expect(b.tokens == 0)
        #expect(b.debt == frame - size)
        // The next small frame must wait for the debt and then its own tokens.
        let wait1 = b.nanosecondsUntil(1, now: 0)
        // (debt + 1) tokens at size/refill per ns, rounded up.
        let expected1 = ((frame - size + 1) * refill + size - 1) / size
        #expect(wait1 == expected1)
        var early = b
        #expect(early.consume(1, now: wait1 - 1) == false)
        // Another big frame needs the bucket completely full again: all of `frame`.
        let wait2 = b.nanosecondsUntil(frame, now: 0)
        #expect(wait2 == (frame * refill + size - 1) / size)
        #expect(b.consume(frame, now: wait2 - 1) == false)
        #expect(b.consume(frame, now: wait2) == true)
        #expect(b.debt == frame - size)
        // A big frame is not admitted into a bucket that is merely non-empty.
        var c = TokenBucket(size: size, refillTimeNanoseconds: refill, now: 0)
        #expect(c.consume(1, now: 0) == true)
        #expect(c.consume(frame, now: 0) == false)
        #expect(c.tokens == size - 1)
    }

    @Test func waitIsExactForRandomStates() {
        var rng = SplitMix64(seed: 7)
        for _ in 0..<2_000 {
            let size = UInt64.random(in: 1...5_000_000, using: &rng)
            let refill = UInt64.random(in: 1...2_000_000_000, using: &rng)
            let burst = Bool.random(using: &rng) ? UInt64.random(in: 0...size, using: &rng) : 0
            var b = TokenBucket(size: size, refillTimeNanoseconds: refill, oneTimeBurst: burst, now: 1_000)
            var now: UInt64 = 1_000
            // Drive it into a random state (possibly with debt and a carry).
            for _ in 0..<3 {
                _ = b.consume(UInt64.random(in: 0...(size * 2), using: &rng), now: now)
                now += UInt64.random(in: 0...refill, using: &rng)
            }
            let want = UInt64.random(in: 1...(size * 2), using: &rng)
            let wait = b.nanosecondsUntil(want, now: now)
            if wait > 0 {
                var early = b
                #expect(early.consume(want, now: now + wait - 1) == false,
                        "size \(size) refill \(refill) want \(want) wait \(wait)")
            }
            var onTime = b
            #expect(onTime.consume(want, now: now + wait) == true,
                    "size \(size) refill \(refill) want \(want) wait \(wait)")
        }
    }

    @Test func refundGivesTokensBackButNeverBeyondFull() {
        var b = makeBucket(now: 0)
        #expect(b.consume(300, now: 0) == true)
        b.refund(100)
        #expect(b.tokens == 800)
        b.refund(10_000)
        #expect(b.tokens == 1000 && b.isFull)
        #expect(b == makeBucket(now: 0), "a full refunded bucket is a fresh bucket")
    }

    @Test func clockGoingBackwardsIsIgnored() {
        var b = makeBucket(now: 10_000)
        #expect(b.consume(1000, now: 10_000) == true)
        b.refill(now: 5_000)
        #expect(b.lastUpdate == 10_000)
        #expect(b.tokens == 0)
        #expect(b.tokens(now: 11_000) == 1)
    }

    @Test func hugeValuesDoNotOverflow() {
        // Elapsed * size far beyond 64 bits.
        var b = TokenBucket(size: UInt64.max / 2, refillTimeNanoseconds: 3, now: 0)
        #expect(b.consume(UInt64.max / 2, now: 0) == true)
        b.refill(now: UInt64.max)
        #expect(b.isFull)
        // A debt so large that the wait saturates.
        var c = TokenBucket(size: 1, refillTimeNanoseconds: UInt64.max, now: 0)
        #expect(c.consume(UInt64.max, now: 0) == true)
        #expect(c.debt == UInt64.max - 1)
        #expect(c.nanosecondsUntil(1, now: 0) == UInt64.max)
        // The largest representable frame into a tiny full bucket.
        var d = TokenBucket(size: 1, refillTimeNanoseconds: 1, now: 0)
        #expect(d.consume(UInt64.max, now: 0) == true)
        #expect(d.nanosecondsUntil(1, now: 0) == UInt64.max)
    }

    @Test func reconfigureClampsKeepsDebtAndHandlesTheBurst() {
        var b = makeBucket(oneTimeBurst: 100, now: 0)
        #expect(b.consume(100 + 200, now: 0) == true)          // burst gone, 800 tokens
        // Smaller: clamp to the new size.
        b.reconfigure(BucketConfig(size: 500, refillTimeNanoseconds: 1_000_000, oneTimeBurst: 100), now: 0)
        #expect(b.tokens == 500)
        #expect(b.oneTimeBurstRemaining == 0, "an unchanged one-time burst is not granted again")
        // Larger: no free tokens.
        b.reconfigure(BucketConfig(size: 5000, refillTimeNanoseconds: 1_000_000, oneTimeBurst: 100), now: 0)
        #expect(b.tokens == 500)
        #expect(b.size == 5000)
        // A changed one-time burst is granted afresh.
        b.reconfigure(BucketConfig(size: 5000, refillTimeNanoseconds: 1_000_000, oneTimeBurst: 7), now: 0)
        #expect(b.oneTimeBurstRemaining == 7)
        // Debt survives a change.
        var c = makeBucket(now: 0)
        #expect(c.consume(3000, now: 0) == true)
        #expect(c.debt == 2000)
        c.reconfigure(BucketConfig(size: 100, refillTimeNanoseconds: 10_000), now: 0)
        #expect(c.debt == 2000)
        #expect(c.nanosecondsUntil(1, now: 0) == 2001 * 100)  // 100 tokens per 10 us
        // The rate applies from the moment of the change: half the time at the old rate.
        var d = makeBucket(now: 0)
        #expect(d.consume(1000, now: 0) == true)
        d.reconfigure(BucketConfig(size: 1000, refillTimeNanoseconds: 2_000_000), now: 500_000)
        #expect(d.tokens == 500)
        #expect(d.tokens(now: 1_000_000) == 750)
    }
}
