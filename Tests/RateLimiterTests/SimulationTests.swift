import Testing
import RateLimiter

/// Long runs against a fake clock: a greedy sender that always has a frame ready and
/// sleeps exactly the wait the limiter returns.
@Suite("Long-run exactness")
struct SimulationTests {
    struct Case: CustomStringConvertible, Sendable {
        var rate: String
        var bitsPerSecond: UInt64
        var frame: UInt64
        var description: String { "\(rate) with \(frame)-byte frames" }
    }

    static let cases: [Case] = [
        Case(rate: "10Mbit", bitsPerSecond: 10_000_000, frame: 1514),
        Case(rate: "10Mbit", bitsPerSecond: 10_000_000, frame: 65 * 1024),
        Case(rate: "200Mbit", bitsPerSecond: 200_000_000, frame: 1514),
        Case(rate: "200Mbit", bitsPerSecond: 200_000_000, frame: 65 * 1024),
        Case(rate: "2Gbit", bitsPerSecond: 2_000_000_000, frame: 1514),
        Case(rate: "2Gbit", bitsPerSecond: 2_000_000_000, frame: 65 * 1024),
    ]

    @Test(arguments: cases)
    func tenSecondsAtTheLimit(_ c: Case) throws {
        let config = try LimitParser.bandwidth(c.rate, flag: "--tx-bandwidth")
        var limiter = DirectionLimiter(DirectionLimits(bandwidth: config), now: 0)
        let end = 10 * UInt64.second
        let run = runGreedySender(&limiter, frame: c.frame, until: end)
        let bytesPerSecond = Double(c.bitsPerSecond) / 8

        // Total: the initial bucket plus exactly rate x time, to within one frame.
        let ideal = Double(config.size) + bytesPerSecond * 10
        #expect(abs(Double(run.bytes) - ideal) <= Double(c.frame), "\(run.bytes) vs \(ideal)")

        // Steady state, between the first and last admission that followed a throttle
        // (the bucket was exactly drained at both): the achieved rate.
        let first = try #require(run.drainedAdmissions.first { $0.time >= UInt64.second / 2 })
        let last = try #require(run.drainedAdmissions.last)
        let span = Double(last.time - first.time) / 1e9
        #expect(span > 9)
        let achieved = Double(last.bytesBefore - first.bytesBefore) / span
        let error = abs(achieved - bytesPerSecond) / bytesPerSecond
        #expect(error < 0.005, "achieved \(achieved * 8) bit/s")
        // Much stronger than required, in exact integers: within one byte over the span.
        let bits = UInt128(last.bytesBefore - first.bytesBefore) * 8 * UInt128(UInt64.second)
        let allowed = UInt128(c.bitsPerSecond) * UInt128(last.time - first.time)
        let diff = bits > allowed ? bits - allowed : allowed - bits
        #expect(diff <= 8 * UInt128(UInt64.second), "off by \(Double(diff) / 8e9) bytes")
        #expect(limiter.throttledEvents > 0)
    }

    @Test func hoursAtTheLimitDoNotDriftByMoreThanOneToken() {
        // 10 Mbit/s with 65 KiB frames for three simulated hours.
        let config = BucketConfig(size: 81_920, refillTimeNanoseconds: 65_536_000)
        var limiter = DirectionLimiter(DirectionLimits(bandwidth: config), now: 0)
        let run = runGreedySender(&limiter, frame: 65 * 1024, until: 3 * 3600 * UInt64.second)
        let first = run.drainedAdmissions.first!, last = run.drainedAdmissions.last!
        // bytes * refill vs size * elapsed, exactly: within one token.
        let bytes = UInt128(last.bytesBefore - first.bytesBefore)
        let earned = UInt128(config.size) * UInt128(last.time - first.time)
        let scaled = bytes * UInt128(config.refillTimeNanoseconds)
        let diff = scaled > earned ? scaled - earned : earned - scaled
        #expect(diff <= UInt128(config.refillTimeNanoseconds), "off by \(Double(diff) / Double(config.refillTimeNanoseconds)) tokens")
        #expect(last.time - first.time > 3 * 3600 * UInt64.second - UInt64.second)
    }

    @Test func awkwardRatesDoNotDriftEither() {
        // A rate that is no round number of anything: 100_003 bytes per 7.777777777 s.
        let config = BucketConfig(size: 100_003, refillTimeNanoseconds: 7_777_777_777)
        var limiter = DirectionLimiter(DirectionLimits(bandwidth: config), now: 0)
        let run = runGreedySender(&limiter, frame: 1514, until: 2 * 3600 * UInt64.second)
        let first = run.drainedAdmissions.first!, last = run.drainedAdmissions.last!
        let bytes = UInt128(last.bytesBefore - first.bytesBefore)
        let earned = UInt128(config.size) * UInt128(last.time - first.time)
        let scaled = bytes * UInt128(config.refillTimeNanoseconds)
        let diff = scaled > earned ? scaled - earned : earned - scaled
        #expect(diff <= UInt128(config.refillTimeNanoseconds))
        #expect(run.frames > 60_000)
    }

    @Test func unalignedWakeupsLoseNoFractions() {
        // Wake-ups that land at arbitrary nanoseconds (late by 0..1 ms) leave fractions of a
        // token behind every time; they must carry over. Over two hours (~61k wake-ups) a
        // limiter that dropped them would fall tens of thousands of bytes short.
        let config = BucketConfig(size: 100_003, refillTimeNanoseconds: 7_777_777_777)
        var limiter = DirectionLimiter(DirectionLimits(bandwidth: config), now: 0)
        var rng = SplitMix64(seed: 11)
        let run = runGreedySender(&limiter, from: 0, until: 2 * 3600 * UInt64.second,
                                  jitter: { UInt64.random(in: 0...1_000_000, using: &$0) },
                                  rng: &rng) { _ in 1514 }
        // admitted = size + refilled(lastCall) - tokens left (< one frame), exactly.
        let lastCall = limiter.bandwidthBucket!.lastUpdate
        let earned = UInt128(config.size) * UInt128(lastCall) / UInt128(config.refillTimeNanoseconds)
        let total = UInt128(config.size) + earned
        #expect(UInt128(run.bytes) <= total)
        #expect(UInt128(run.bytes) + 1514 > total, "short by \(total - UInt128(run.bytes)) bytes")
    }

    @Test func overConsumingSmallBucketStillAveragesTheRate() {
        // A 10 KiB bucket at 10 Mbit/s and 64 KiB frames: every frame over-consumes.
        let config = try! LimitParser.bandwidth("10Mbit,burst=10KiB", flag: "--tx-bandwidth")
        #expect(config.size == 10_240)
        var limiter = DirectionLimiter(DirectionLimits(bandwidth: config), now: 0)
        let run = runGreedySender(&limiter, frame: 65_536, until: 10 * UInt64.second)
        let ideal = 1_250_000.0 * 10
        // Frames go when the bucket is full; the debt is repaid before the next: exactly
        // one frame per 65536 bytes of refill (52.4288 ms), the first at t = 0.
        #expect(run.frames == 10_000_000_000 / 52_428_800 + 1)
        #expect(abs(Double(run.bytes) - ideal) <= 65_536)
    }

    @Test func opsAndBandwidthTogetherObeyTheTighterLimit() throws {
        // 2 Gbit/s but only 100k frames/s: 1514-byte frames are ops-bound at 151.4 MB/s.
        let limits = DirectionLimits(bandwidth: try LimitParser.bandwidth("2Gbit", flag: "--rx-bandwidth"),
                                     ops: try LimitParser.ops("100k", flag: "--rx-ops"))
        var limiter = DirectionLimiter(limits, now: 0)
        let run = runGreedySender(&limiter, frame: 1514, until: 2 * UInt64.second)
        let size = limits.ops!.size
        #expect(run.frames >= 200_000 + size - 1 && run.frames <= 200_000 + size + 1, "\(run.frames)")
    }

    @Test func lateWakeupsNeverExceedTheBound() {
        // Random frame sizes, random lateness: admitted bytes never exceed
        // bucket + rate x elapsed + one frame of over-consumption.
        let config = try! LimitParser.bandwidth("200Mbit", flag: "--tx-bandwidth")
        var limiter = DirectionLimiter(DirectionLimits(bandwidth: config), now: 0)
        var rng = SplitMix64(seed: 5)
        let maxFrame: UInt64 = 65_562
        let run = runGreedySender(&limiter, from: 0, until: 2 * UInt64.second, recordTrace: true,
                                  jitter: { UInt64.random(in: 0...200_000, using: &$0) },
                                  rng: &rng) { UInt64.random(in: 60...maxFrame, using: &$0) }
        var worst = 0.0
        for point in run.trace {
            let allowed = Double(config.size) + 25_000_000.0 * Double(point.time) / 1e9 + Double(maxFrame)
            worst = max(worst, Double(point.total) - allowed)
        }
        #expect(worst <= 0)
        // And with up to 0.2 ms of lateness per wake-up the bucket (125 KB = 5 ms) absorbs
        // it: the achieved rate is still within 1% of 200 Mbit/s over 2 s.
        let achieved = Double(run.bytes - config.size) / 2
        #expect(abs(achieved - 25_000_000) / 25_000_000 < 0.01, "\(achieved * 8) bit/s")
    }

    @Test func rateChangesMidStreamTakeEffectAtOnce() throws {
        var limiter = DirectionLimiter(DirectionLimits(bandwidth: try LimitParser.bandwidth("10Mbit", flag: "f")), now: 0)
        // 2 s at 10 Mbit/s.
        let a = runGreedySender(&limiter, frame: 1514, until: 2 * UInt64.second)
        // At the switch the sender holds a frame; it re-offers it right after the update.
        let switchTime = 2 * UInt64.second
        limiter.update(DirectionLimits(bandwidth: try LimitParser.bandwidth("200Mbit", flag: "f")), now: switchTime)
        let b = runGreedySender(&limiter, frame: 1514, from: switchTime, until: 4 * UInt64.second)
        // Lower again.
        limiter.update(DirectionLimits(bandwidth: try LimitParser.bandwidth("10Mbit", flag: "f")), now: 4 * UInt64.second)
        let c = runGreedySender(&limiter, frame: 1514, from: 4 * UInt64.second, until: 6 * UInt64.second)

        let first = 2.0 * 1_250_000, second = 2.0 * 25_000_000, third = 2.0 * 1_250_000
        // Phase 1: the initial 80 KiB bucket plus the rate.
        #expect(abs(Double(a.bytes) - (81_920 + first)) <= 1514)
        // Phase 2: what was in the bucket (< 1 frame) plus the new rate; no fresh bucket.
        #expect(abs(Double(b.bytes) - second) <= 2 * 1514, "\(b.bytes)")
        // Phase 3: the bucket was drained at the switch, clamped tokens < 1 frame.
        #expect(abs(Double(c.bytes) - third) <= 2 * 1514, "\(c.bytes)")

        // Removed: everything goes at once. Added again: a fresh bucket.
        limiter.update(.unlimited, now: 6 * UInt64.second)
        for _ in 0..<10_000 { #expect(limiter.admit(bytes: 65_536, now: 6 * UInt64.second) == .admitted) }
        limiter.update(DirectionLimits(bandwidth: try LimitParser.bandwidth("10Mbit", flag: "f")), now: 7 * UInt64.second)
        let d = runGreedySender(&limiter, frame: 1514, from: 7 * UInt64.second, until: 8 * UInt64.second)
        #expect(abs(Double(d.bytes) - (81_920 + 1_250_000)) <= 1514)
    }
}
