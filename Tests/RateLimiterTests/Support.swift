import RateLimiter

/// Deterministic pseudo-random numbers (SplitMix64), so failures reproduce.
struct SplitMix64: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

/// What a greedy sender achieved.
struct SenderRun {
    /// Bytes admitted in total.
    var bytes: UInt64 = 0
    var frames: UInt64 = 0
    /// The clock when the run stopped (the first wake-up beyond the end, or the end).
    var now: UInt64 = 0
    /// Admissions that came right after a throttle (the bucket was exactly drained),
    /// as (time, bytes admitted strictly before this admission) pairs.
    var drainedAdmissions: [(time: UInt64, bytesBefore: UInt64)] = []
    /// Every admission time paired with cumulative bytes including it (only if recorded).
    var trace: [(time: UInt64, total: UInt64)] = []
}

/// A sender that offers frames back to back as soon as they are admitted and, when
/// throttled, sleeps exactly the returned wait (plus optional jitter), until `end`.
func runGreedySender(_ limiter: inout DirectionLimiter, from start: UInt64, until end: UInt64,
                     recordTrace: Bool = false,
                     jitter: ((inout SplitMix64) -> UInt64)? = nil,
                     rng: inout SplitMix64,
                     frameSize: (inout SplitMix64) -> UInt64) -> SenderRun {
    var run = SenderRun()
    var now = start
    var frame = frameSize(&rng)
    var afterThrottle = false
    while now <= end {
        switch limiter.admit(bytes: frame, now: now) {
        case .admitted:
            if afterThrottle { run.drainedAdmissions.append((now, run.bytes)) }
            afterThrottle = false
            run.bytes += frame
            run.frames += 1
            if recordTrace { run.trace.append((now, run.bytes)) }
            frame = frameSize(&rng)
        case .throttled(let wait):
            precondition(wait > 0)
            afterThrottle = true
            now += wait + (jitter?(&rng) ?? 0)
        }
    }
    run.now = now
    return run
}

func runGreedySender(_ limiter: inout DirectionLimiter, frame: UInt64, from start: UInt64 = 0,
                     until end: UInt64) -> SenderRun {
    var rng = SplitMix64(seed: 1)
    return runGreedySender(&limiter, from: start, until: end, rng: &rng) { _ in frame }
}

extension UInt64 {
    static let second: UInt64 = 1_000_000_000
    static let millisecond: UInt64 = 1_000_000
}
