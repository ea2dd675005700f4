// A token bucket with an injected monotonic clock (nanoseconds, UInt64).
//
// Model (Firecracker's, with fixes):
//  * The bucket holds at most `size` tokens and refills continuously at
//    `size / refillTimeNanoseconds` tokens per nanosecond.
//  * An optional one-time burst is spent before the bucket and is never refilled.
//  * A request larger than `size` (after the one-time burst) is admitted once the
//    bucket is full; the excess becomes debt that later refills must pay off first.
//  * A refused request changes nothing (no partial spending of the one-time burst,
//    unlike Firecracker).
//
// Exactness: the state is kept as an integer deficit (tokens missing from a full
// bucket; above `size` it includes debt) plus a carry, the part of
// `elapsed * size` not yet converted into a whole token (always < refillTime).
// Refill adds `elapsed * size + carry` and divides by `refillTime` in 128-bit
// arithmetic, so no rounding is ever lost or duplicated and refill is independent
// of how often it is called: refill(t1); refill(t2) == refill(t2). Consuming at the
// limit for any length of time yields exactly size/refillTime tokens per
// nanosecond, to within one token.

/// A single token bucket (bytes or operations). All times are monotonic nanoseconds
/// supplied by the caller; the bucket never reads a clock.
public struct TokenBucket: Sendable, Equatable {
    /// The configuration the bucket was built with (oneTimeBurst is the configured,
    /// not the remaining, one-time burst).
    @usableFromInline internal var _config: BucketConfig
    /// One-time burst tokens not yet spent.
    @usableFromInline internal var _burstLeft: UInt64
    /// Tokens missing from a full bucket. `0` means full; above `size` the excess is debt.
    @usableFromInline internal var _deficit: UInt64
    /// Progress towards the next token, in units of 1/refillTime token. Always
    /// `< refillTime`, and `0` whenever the bucket is full.
    @usableFromInline internal var _carry: UInt64
    /// The time the bucket was last brought up to date.
    @usableFromInline internal var _lastUpdate: UInt64

    /// A full bucket. `size` and `refillTimeNanoseconds` must be non-zero (a zero
    /// in either means "no limit", which `DirectionLimiter` handles by having no
    /// bucket at all).
    public init(size: UInt64, refillTimeNanoseconds: UInt64, oneTimeBurst: UInt64 = 0, now: UInt64) {
        precondition(size > 0, "TokenBucket size must be greater than zero")
        precondition(refillTimeNanoseconds > 0, "TokenBucket refill time must be greater than zero")
        _config = BucketConfig(size: size, refillTimeNanoseconds: refillTimeNanoseconds, oneTimeBurst: oneTimeBurst)
        _burstLeft = oneTimeBurst
        _deficit = 0
        _carry = 0
        _lastUpdate = now
    }

    /// A full bucket built from `config`, which must be enabled (`config.isEnabled`).
    public init(_ config: BucketConfig, now: UInt64) {
        self.init(size: config.size, refillTimeNanoseconds: config.refillTimeNanoseconds,
                  oneTimeBurst: config.oneTimeBurst, now: now)
    }

    // MARK: Read-only state

    public var config: BucketConfig { _config }
    public var size: UInt64 { _config.size }
    public var refillTimeNanoseconds: UInt64 { _config.refillTimeNanoseconds }
    /// One-time burst tokens still available.
    public var oneTimeBurstRemaining: UInt64 { _burstLeft }
    /// The time of the last refill (the largest `now` seen).
    public var lastUpdate: UInt64 { _lastUpdate }

    /// Refillable tokens available as of `lastUpdate` (excluding the one-time burst).
    public var tokens: UInt64 { _deficit >= _config.size ? 0 : _config.size - _deficit }
    /// Tokens over-consumed beyond an empty bucket, still to be repaid by refill.
    public var debt: UInt64 { _deficit > _config.size ? _deficit - _config.size : 0 }
    /// True when the refillable part is full (as of `lastUpdate`).
    public var isFull: Bool { _deficit == 0 }

    /// Refillable tokens available at `now` (excluding the one-time burst), without mutating.
    public func tokens(now: UInt64) -> UInt64 {
        var copy = self
        copy.refill(now: now)
        return copy.tokens
    }

    // MARK: Operations

    /// Brings the bucket up to `now`. A `now` earlier than the last update is
    /// treated as "no time has passed" (the clock never runs backwards for us).
    @inlinable
    public mutating func refill(now: UInt64) {
        guard now > _lastUpdate else { return }
        let elapsed = now &- _lastUpdate
        _lastUpdate = now
        // Invariant: _carry == 0 when full, so nothing to do.
        guard _deficit != 0 else { return }
        let refillTime = UInt128(_config.refillTimeNanoseconds)
        // elapsed * size + carry < 2^128 - 2^64 + 2^64: cannot overflow.
        let gained = UInt128(elapsed) &* UInt128(_config.size) &+ UInt128(_carry)
        if gained >= UInt128(_deficit) &* refillTime {
            // Full: whatever arrived beyond full is discarded, as a bucket overflows.
            _deficit = 0
            _carry = 0
        } else {
            let (whole, fraction) = gained.quotientAndRemainder(dividingBy: refillTime)
            // whole < _deficit, so it fits and the subtraction cannot underflow.
            _deficit &-= UInt64(truncatingIfNeeded: whole)
            _carry = UInt64(truncatingIfNeeded: fraction)
        }
    }

    /// Whether `tokens` could be taken right now (as of `lastUpdate`; call
    /// `refill(now:)` first).
    @inlinable
    public func canConsume(_ tokens: UInt64) -> Bool {
        if tokens <= _burstLeft { return true }
        // A full bucket admits anything, even more than its size (over-consumption).
        if _deficit == 0 { return true }
        let rest = tokens &- _burstLeft
        return rest <= _config.size && _deficit <= _config.size &- rest
    }

    /// Takes `tokens`, which `canConsume` must have allowed. Spends the one-time
    /// burst first; anything above a full bucket's size becomes debt.
    @inlinable
    internal mutating func _take(_ tokens: UInt64) {
        if tokens <= _burstLeft {
            _burstLeft &-= tokens
            return
        }
        let rest = tokens &- _burstLeft
        _burstLeft = 0
        // Either rest <= size - deficit, or deficit == 0 (over-consumption): no overflow.
        _deficit &+= rest
    }

    /// Refills to `now`, then takes `tokens` if they are available (or if the bucket
    /// is full: over-consumption). Returns false, changing nothing but the refill,
    /// when they are not.
    @inlinable
    public mutating func consume(_ tokens: UInt64, now: UInt64) -> Bool {
        refill(now: now)
        guard canConsume(tokens) else { return false }
        _take(tokens)
        return true
    }

    /// Nanoseconds from `now` until `consume(tokens, now: now + result)` will succeed,
    /// assuming nothing else is consumed meanwhile. `0` if it would succeed at `now`.
    /// Exact: at `now + result - 1` it still fails. Saturates at `UInt64.max`.
    /// A request larger than the bucket needs the bucket full (debt repaid).
    public func nanosecondsUntil(_ tokens: UInt64, now: UInt64) -> UInt64 {
        var copy = self
        copy.refill(now: now)
        return copy._nanosecondsUntil(tokens)
    }

    /// `nanosecondsUntil` for a bucket already refilled to the moment of interest.
    @usableFromInline
    internal func _nanosecondsUntil(_ tokens: UInt64) -> UInt64 {
        if tokens <= _burstLeft { return 0 }
        let rest = tokens &- _burstLeft
        // The deficit must come down to `allowed`.
        let allowed: UInt64 = rest <= _config.size ? _config.size &- rest : 0
        if _deficit <= allowed { return 0 }
        let missing = _deficit &- allowed
        // Smallest t with t * size + carry >= missing * refillTime.
        // missing >= 1 and carry < refillTime, so the difference is positive.
        let size = UInt128(_config.size)
        let work = UInt128(missing) &* UInt128(_config.refillTimeNanoseconds) &- UInt128(_carry)
        let (q, r) = work.quotientAndRemainder(dividingBy: size)
        let t = r == 0 ? q : q &+ 1
        return t > UInt128(UInt64.max) ? UInt64.max : UInt64(truncatingIfNeeded: t)
    }

    /// Gives back `tokens` to the refillable part of the bucket (never beyond full,
    /// and never to the one-time burst): for a caller that took tokens and then did
    /// not use them. `DirectionLimiter` never needs it: it checks both buckets
    /// before taking from either.
    public mutating func refund(_ tokens: UInt64) {
        if tokens >= _deficit {
            _deficit = 0
            _carry = 0
        } else {
            _deficit &-= tokens
        }
    }

    /// Replaces the configuration live, at `now`:
    ///  * refills at the old rate up to `now` first;
    ///  * available tokens are kept but clamped to the new size (a larger size does
    ///    not grant tokens); debt is kept as debt;
    ///  * the partial token in progress is carried over proportionally;
    ///  * the one-time burst: if the configured value changed, the new value is
    ///    granted afresh; if unchanged, what is left of it is kept.
    /// `config` must be enabled.
    public mutating func reconfigure(_ config: BucketConfig, now: UInt64) {
        precondition(config.isEnabled, "TokenBucket.reconfigure needs a non-zero size and refill time")
        refill(now: now)
        let old = _config
        let newDeficit: UInt64
        if _deficit <= old.size {
            let have = old.size &- _deficit
            newDeficit = config.size &- min(have, config.size)
        } else {
            let owed = _deficit &- old.size
            let (sum, overflow) = config.size.addingReportingOverflow(owed)
            newDeficit = overflow ? UInt64.max : sum
        }
        if newDeficit == 0 {
            _carry = 0
        } else {
            // carry/oldRefill of a token == newCarry/newRefill (rounded down): < newRefill.
            let scaled = UInt128(_carry) &* UInt128(config.refillTimeNanoseconds) / UInt128(old.refillTimeNanoseconds)
            _carry = UInt64(truncatingIfNeeded: scaled)
        }
        _deficit = newDeficit
        if config.oneTimeBurst != old.oneTimeBurst {
            _burstLeft = config.oneTimeBurst
        }
        _config = config
    }
}
