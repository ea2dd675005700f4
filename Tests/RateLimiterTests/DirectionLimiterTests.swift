import Testing
import RateLimiter

@Suite("DirectionLimiter")
struct DirectionLimiterTests {
    static let bytes1000 = BucketConfig(size: 1000, refillTimeNanoseconds: 1_000_000)   // 1 byte/us
    static let ops2 = BucketConfig(size: 2, refillTimeNanoseconds: 2_000_000)           // 1 op/ms

    @Test func unlimitedAdmitsEverything() {
        var l = DirectionLimiter(.unlimited, now: 0)
        #expect(l.isUnlimited)
        for i in 0..<1000 { #expect(l.admit(bytes: UInt64.max, now: UInt64(i % 3)) == .admitted) }
        #expect(l.throttledEvents == 0)
        #expect(l.bandwidthBucket == nil && l.opsBucket == nil)
        #expect(DirectionLimiter().isUnlimited)
    }

    @Test func zeroSizeOrZeroRefillMeansNoLimit() {
        let limits = DirectionLimits(bandwidth: BucketConfig(size: 0, refillTimeNanoseconds: 100),
                                     ops: BucketConfig(size: 10, refillTimeNanoseconds: 0))
        var l = DirectionLimiter(limits, now: 0)
        #expect(l.isUnlimited)
        #expect(limits.isUnlimited)
        #expect(l.limits == limits, "limits are reported as given")
        #expect(l.admit(bytes: 1 << 40, now: 0) == .admitted)
    }

    @Test func bytesRefusalGivesTheOpTokenBack() {
        var l = DirectionLimiter(DirectionLimits(bandwidth: Self.bytes1000, ops: Self.ops2), now: 0)
        #expect(!l.isUnlimited)
        #expect(l.admit(bytes: 900, now: 0) == .admitted)
        #expect(l.opsBucket?.tokens == 1)
        #expect(l.bandwidthBucket?.tokens == 100)
        // Ops would accept, bytes refuse: the op token must still be there.
        #expect(l.admit(bytes: 500, now: 0) == .throttled(wakeAfterNanoseconds: 400_000))
        #expect(l.opsBucket?.tokens == 1)
        #expect(l.bandwidthBucket?.tokens == 100)
        // A frame that fits still gets that op token.
        #expect(l.admit(bytes: 100, now: 0) == .admitted)
        #expect(l.opsBucket?.tokens == 0)
        #expect(l.bandwidthBucket?.tokens == 0)
    }

    @Test func opsRefusalTakesNoBytes() {
        var l = DirectionLimiter(DirectionLimits(bandwidth: Self.bytes1000, ops: Self.ops2), now: 0)
        #expect(l.admit(bytes: 10, now: 0) == .admitted)
        #expect(l.admit(bytes: 10, now: 0) == .admitted)
        #expect(l.admit(bytes: 10, now: 0) == .throttled(wakeAfterNanoseconds: 1_000_000))
        #expect(l.bandwidthBucket?.tokens == 980)
        #expect(l.throttledEvents == 1)
    }

    @Test func waitIsTheLongerOfTheTwoAndExact() {
        var l = DirectionLimiter(DirectionLimits(bandwidth: Self.bytes1000, ops: Self.ops2), now: 100)
        #expect(l.admit(bytes: 1000, now: 100) == .admitted)
        #expect(l.admit(bytes: 0, now: 100) == .admitted)
        // ops: 0 left, 1 op per ms -> 1 ms. bytes: 0 left, 700 bytes -> 700 us. Longer: ops.
        guard case .throttled(let w1) = l.admit(bytes: 700, now: 100) else { Issue.record("not throttled"); return }
        #expect(w1 == 1_000_000)
        var a = l
        #expect(a.admit(bytes: 700, now: 100 + w1 - 1) != .admitted)
        var b = l
        #expect(b.admit(bytes: 700, now: 100 + w1) == .admitted)
        // 0.3 ms later: 300 bytes and 0.3 ops have accrued; both need 0.7 ms more.
        let w2 = l.nanosecondsUntilAdmissible(bytes: 1000, now: 300_100)
        #expect(w2 == 700_000)
        #expect(l.nanosecondsUntilAdmissible(bytes: 1000, now: 2_000_000) == 0)
        #expect(l.throttledEvents == 1)
    }

    @Test func exactWakeForRandomLimitsAndFrames() {
        var rng = SplitMix64(seed: 99)
        for _ in 0..<500 {
            let bw = BucketConfig(size: .random(in: 1...200_000, using: &rng),
                                  refillTimeNanoseconds: .random(in: 1...100_000_000, using: &rng),
                                  oneTimeBurst: Bool.random(using: &rng) ? .random(in: 0...100_000, using: &rng) : 0)
            let ops = Bool.random(using: &rng)
                ? BucketConfig(size: .random(in: 1...64, using: &rng),
                               refillTimeNanoseconds: .random(in: 1...100_000_000, using: &rng))
                : nil
            var l = DirectionLimiter(DirectionLimits(bandwidth: bw, ops: ops), now: 0)
            var now: UInt64 = 0
            for _ in 0..<20 {
                let frame = UInt64.random(in: 0...300_000, using: &rng)
                switch l.admit(bytes: frame, now: now) {
                case .admitted:
                    now += UInt64.random(in: 0...10_000, using: &rng)
                case .throttled(let wait):
                    #expect(wait >= 1)
                    var early = l
                    #expect(early.admit(bytes: frame, now: now + wait - 1) != .admitted)
                    now += wait
                    #expect(l.admit(bytes: frame, now: now) == .admitted)
                }
            }
        }
    }

    @Test func loweringTheRateMidStreamClampsTokens() {
        var l = DirectionLimiter(DirectionLimits(bandwidth: BucketConfig(size: 10_000, refillTimeNanoseconds: 10_000_000)), now: 0)
        #expect(l.admit(bytes: 2_000, now: 0) == .admitted)        // 8000 left
        l.update(DirectionLimits(bandwidth: BucketConfig(size: 1_000, refillTimeNanoseconds: 10_000_000)), now: 0)
        #expect(l.bandwidthBucket?.tokens == 1_000)
        #expect(l.admit(bytes: 600, now: 0) == .admitted)
        // 100 bytes/ms now: the missing byte takes 10 us.
        #expect(l.admit(bytes: 401, now: 0) == .throttled(wakeAfterNanoseconds: 10_000))
        #expect(l.admit(bytes: 400, now: 0) == .admitted)
        // 500 bytes take 5 ms.
        #expect(l.admit(bytes: 500, now: 0) == .throttled(wakeAfterNanoseconds: 5_000_000))
    }

    @Test func raisingTheRateMidStreamGrantsNothingButRefillsFaster() {
        var l = DirectionLimiter(DirectionLimits(bandwidth: BucketConfig(size: 1_000, refillTimeNanoseconds: 10_000_000)), now: 0)
        #expect(l.admit(bytes: 1_000, now: 0) == .admitted)
        #expect(l.admit(bytes: 1_000, now: 0) == .throttled(wakeAfterNanoseconds: 10_000_000))
        // Bigger bucket, 10x the rate, at 1 ms: 100 bytes were earned at the old rate.
        l.update(DirectionLimits(bandwidth: BucketConfig(size: 100_000, refillTimeNanoseconds: 10_000_000)), now: 1_000_000)
        #expect(l.bandwidthBucket?.tokens == 100, "no free tokens from a larger size")
        // The held frame's wait shrinks: 900 bytes at 10 bytes/us = 90 us.
        #expect(l.admit(bytes: 1_000, now: 1_000_000) == .throttled(wakeAfterNanoseconds: 90_000))
        #expect(l.admit(bytes: 1_000, now: 1_090_000) == .admitted)
    }

    @Test func removingALimitAdmitsImmediately() {
        var l = DirectionLimiter(DirectionLimits(bandwidth: Self.bytes1000, ops: Self.ops2), now: 0)
        #expect(l.admit(bytes: 1000, now: 0) == .admitted)
        #expect(l.admit(bytes: 1000, now: 0) != .admitted)
        l.update(DirectionLimits(bandwidth: nil, ops: Self.ops2), now: 0)
        #expect(l.bandwidthBucket == nil)
        #expect(l.admit(bytes: 1000, now: 0) == .admitted, "the held frame goes at once")
        #expect(l.admit(bytes: 1, now: 0) != .admitted, "ops still limited")
        l.update(.unlimited, now: 0)
        #expect(l.isUnlimited)
        #expect(l.admit(bytes: 1 << 50, now: 0) == .admitted)
        #expect(l.limits == .unlimited)
    }

    @Test func addingALimitStartsWithAFullBucket() {
        var l = DirectionLimiter(.unlimited, now: 0)
        #expect(l.admit(bytes: 5_000, now: 0) == .admitted)
        l.update(DirectionLimits(bandwidth: Self.bytes1000), now: 7)
        #expect(!l.isUnlimited)
        #expect(l.bandwidthBucket?.tokens == 1000)
        #expect(l.admit(bytes: 600, now: 7) == .admitted)
        #expect(l.admit(bytes: 600, now: 7) == .throttled(wakeAfterNanoseconds: 200_000))
        #expect(l.limits == DirectionLimits(bandwidth: Self.bytes1000))
    }

    @Test func anUnchangedUpdateChangesNothing() {
        let limits = DirectionLimits(bandwidth: BucketConfig(size: 3_000, refillTimeNanoseconds: 7_000_001, oneTimeBurst: 500),
                                     ops: Self.ops2)
        var l = DirectionLimiter(limits, now: 0)
        #expect(l.admit(bytes: 1_234, now: 0) == .admitted)
        _ = l.admit(bytes: 2_900, now: 5)
        var m = l
        m.update(limits, now: 5)
        #expect(m == l)
        // Changing only ops leaves the bandwidth bucket exactly as it was.
        m.update(DirectionLimits(bandwidth: limits.bandwidth, ops: BucketConfig(size: 9, refillTimeNanoseconds: 1)), now: 5)
        #expect(m.bandwidthBucket == l.bandwidthBucket)
    }

    @Test func debtSurvivesARateChange() {
        var l = DirectionLimiter(DirectionLimits(bandwidth: BucketConfig(size: 10_240, refillTimeNanoseconds: 1_000_000)), now: 0)
        #expect(l.admit(bytes: 65_536, now: 0) == .admitted)
        #expect(l.bandwidthBucket?.debt == 65_536 - 10_240)
        l.update(DirectionLimits(bandwidth: BucketConfig(size: 1_000, refillTimeNanoseconds: 1_000)), now: 0)
        #expect(l.bandwidthBucket?.debt == 65_536 - 10_240)
        // 1 byte/ns: the debt plus one byte.
        #expect(l.admit(bytes: 1, now: 0) == .throttled(wakeAfterNanoseconds: 65_536 - 10_240 + 1))
    }

    @Test func vmLimiterHoldsBothDirections() {
        var vm = VMLimiter(RateLimits(tx: DirectionLimits(bandwidth: Self.bytes1000)), now: 0)
        #expect(!vm.tx.isUnlimited)
        #expect(vm.rx.isUnlimited)
        #expect(vm.tx.admit(bytes: 1001, now: 0) == .admitted)    // full bucket: over-consumption
        #expect(vm.tx.admit(bytes: 1, now: 0) != .admitted)
        #expect(vm.rx.admit(bytes: 1 << 40, now: 0) == .admitted)
        vm.update(RateLimits(rx: DirectionLimits(ops: Self.ops2)), now: 0)
        #expect(vm.tx.isUnlimited && !vm.rx.isUnlimited)
        #expect(vm.limits == RateLimits(rx: DirectionLimits(ops: Self.ops2)))
    }
}

@Suite struct ReceiveCharging {
    @Test func chargeGoesIntoDebtAndReadinessWaitsItOut() {
        // 1000 bytes per 1 ms bucket: 1 byte per microsecond.
        var l = DirectionLimiter(DirectionLimits(bandwidth: BucketConfig(size: 1000, refillTimeNanoseconds: 1_000_000)), now: 0)
        #expect(l.nanosecondsUntilReady(now: 0) == 0)
        l.charge(bytes: 3000, now: 0) // 2000 bytes of debt
        #expect(l.nanosecondsUntilReady(now: 0) == 2_001_000, "debt plus one byte must refill first")
        #expect(l.nanosecondsUntilReady(now: 2_001_000) == 0)
        var unlimited = DirectionLimiter()
        unlimited.charge(bytes: 1 << 40, now: 0)
        #expect(unlimited.nanosecondsUntilReady(now: 0) == 0)
    }

    @Test func chargeAlsoTakesAnOpToken() {
        var l = DirectionLimiter(DirectionLimits(ops: BucketConfig(size: 2, refillTimeNanoseconds: 2_000)), now: 0)
        l.charge(bytes: 0, now: 0)
        l.charge(bytes: 0, now: 0)
        #expect(l.nanosecondsUntilReady(now: 0) == 1_000, "one op refills per microsecond")
    }
}
