// The limiter for one direction of one VM: a bandwidth bucket (bytes) and an ops
// bucket (frames), either optional.
//
// Hot path: `admit` is @inlinable and allocation-free. With no limits it is a single
// branch on a stored Bool. With limits it refills the buckets (one 128-bit
// multiply-divide each, skipped when no time has passed) and checks before taking:
// nothing is taken from either bucket unless both accept, which is Firecracker's
// "give the op token back when the bytes bucket refuses" done atomically (no token is
// ever lost, duplicated, or moved between the one-time burst and the bucket).
//
// When refused, `admit` returns the exact number of nanoseconds after which the same
// frame will be admitted (if nothing else consumes meanwhile): the caller arms a
// timerfd for `now + wait` and retries the same frame then. The retry at that moment
// is guaranteed to succeed; one nanosecond earlier it would not.

/// The outcome of offering a frame to a limiter.
public enum Admission: Equatable, Sendable {
    /// Send it now; its tokens have been taken.
    case admitted
    /// Hold it; retry the same frame `wakeAfterNanoseconds` from the `now` that was
    /// passed in. Nothing was taken. Always at least 1.
    case throttled(wakeAfterNanoseconds: UInt64)

    @inlinable
    public var isAdmitted: Bool {
        if case .admitted = self { return true }
        return false
    }
}

/// Rate limiting for one direction (guest tx or guest rx).
public struct DirectionLimiter: Sendable, Equatable {
    /// True when neither bucket exists: `admit` is then one branch.
    @usableFromInline internal var _unlimited: Bool
    @usableFromInline internal var _bandwidth: TokenBucket?
    @usableFromInline internal var _ops: TokenBucket?
    @usableFromInline internal var _throttledEvents: UInt64
    /// The limits as given (including disabled zero-size configs, reported back as is).
    @usableFromInline internal var _limits: DirectionLimits

    /// A limiter with full buckets at `now`. A config with zero size or zero refill
    /// time is treated as no limit.
    public init(_ limits: DirectionLimits, now: UInt64) {
        _limits = limits
        _bandwidth = limits.bandwidth.flatMap { $0.isEnabled ? TokenBucket($0, now: now) : nil }
        _ops = limits.ops.flatMap { $0.isEnabled ? TokenBucket($0, now: now) : nil }
        _unlimited = _bandwidth == nil && _ops == nil
        _throttledEvents = 0
    }

    /// An unlimited limiter.
    public init() {
        self.init(.unlimited, now: 0)
    }

    /// The limits currently in force, as last given to `init` or `update`.
    public var limits: DirectionLimits { _limits }

    /// True when nothing is limited.
    @inlinable
    public var isUnlimited: Bool { _unlimited }

    /// How many times `admit` has refused a frame (each retry that is refused again counts).
    public var throttledEvents: UInt64 { _throttledEvents }

    /// The bandwidth bucket (nil when bandwidth is unlimited), for status output.
    public var bandwidthBucket: TokenBucket? { _bandwidth }
    /// The ops bucket (nil when ops are unlimited), for status output.
    public var opsBucket: TokenBucket? { _ops }

    /// Replaces the limits live at `now`:
    ///  * a bucket whose config is unchanged is left exactly as it is;
    ///  * a changed bucket keeps its tokens, clamped to the new size, and its debt
    ///    (see `TokenBucket.reconfigure`); a changed one-time burst is granted afresh;
    ///  * a removed limit is gone: the next `admit` is not limited by it;
    ///  * an added limit starts with a full bucket.
    /// Admission decisions already returned stand. A frame the caller is holding after a
    /// `.throttled` should be offered again right after an update (its wait may have
    /// changed in either direction): call `admit` again, or re-arm the timer with
    /// `nanosecondsUntilAdmissible`.
    public mutating func update(_ limits: DirectionLimits, now: UInt64) {
        _bandwidth = Self.updated(_bandwidth, to: limits.bandwidth, now: now)
        _ops = Self.updated(_ops, to: limits.ops, now: now)
        _unlimited = _bandwidth == nil && _ops == nil
        _limits = limits
    }

    private static func updated(_ bucket: TokenBucket?, to config: BucketConfig?, now: UInt64) -> TokenBucket? {
        guard let config, config.isEnabled else { return nil }
        guard var bucket else { return TokenBucket(config, now: now) }
        if bucket.config != config {
            bucket.reconfigure(config, now: now)
        }
        return bucket
    }

    /// Offers a frame of `bytes` bytes at `now`. Takes one op token and `bytes` byte
    /// tokens if both buckets allow it (or a bucket is full: over-consumption),
    /// otherwise takes nothing and says how long to wait.
    @inlinable
    public mutating func admit(bytes: UInt64, now: UInt64) -> Admission {
        if _unlimited { return .admitted }
        return _admitLimited(bytes: bytes, now: now)
    }

    @inlinable
    internal mutating func _admitLimited(bytes: UInt64, now: UInt64) -> Admission {
        _ops?.refill(now: now)
        _bandwidth?.refill(now: now)
        if _ops?.canConsume(1) ?? true, _bandwidth?.canConsume(bytes) ?? true {
            _ops?._take(1)
            _bandwidth?._take(bytes)
            return .admitted
        }
        return _throttle(bytes: bytes)
    }

    /// The refused path, kept out of line.
    @usableFromInline
    internal mutating func _throttle(bytes: UInt64) -> Admission {
        _throttledEvents &+= 1
        return .throttled(wakeAfterNanoseconds: max(_waitForRefilled(bytes: bytes), 1))
    }

    /// Wait for buckets already refilled to the moment of interest. Each bucket only
    /// gains tokens while we wait, so after the longer of the two waits both accept.
    @usableFromInline
    internal func _waitForRefilled(bytes: UInt64) -> UInt64 {
        let opsWait = _ops?._nanosecondsUntil(1) ?? 0
        let bytesWait = _bandwidth?._nanosecondsUntil(bytes) ?? 0
        return max(opsWait, bytesWait)
    }

    /// Takes one op token and `bytes` byte tokens unconditionally, going into debt if need
    /// be. For guest receive: a frame is only sized once it has been read from the TAP, so
    /// it is paid for afterwards, and reading stops while the debt lasts.
    @inlinable
    public mutating func charge(bytes: UInt64, now: UInt64) {
        if _unlimited { return }
        _ops?.refill(now: now)
        _bandwidth?.refill(now: now)
        _ops?._take(1)
        _bandwidth?._take(bytes)
    }

    /// Nanoseconds until the buckets are out of debt and could admit at least a minimal
    /// frame (0 when they can now). For guest receive, before reading the next frame.
    @inlinable
    public func nanosecondsUntilReady(now: UInt64) -> UInt64 {
        if _unlimited { return 0 }
        return nanosecondsUntilAdmissible(bytes: 1, now: now)
    }

    /// Nanoseconds from `now` until `admit(bytes:now:)` would admit a frame of `bytes`
    /// (0 if it would now). Does not change anything. Saturates at UInt64.max.
    public func nanosecondsUntilAdmissible(bytes: UInt64, now: UInt64) -> UInt64 {
        if _unlimited { return 0 }
        var copy = self
        copy._ops?.refill(now: now)
        copy._bandwidth?.refill(now: now)
        return copy._waitForRefilled(bytes: bytes)
    }
}

/// The two directions of one VM.
public struct VMLimiter: Sendable, Equatable {
    /// Frames the guest transmits (guest -> TAP).
    public var tx: DirectionLimiter
    /// Frames the guest receives (TAP -> guest).
    public var rx: DirectionLimiter

    public init(_ limits: RateLimits, now: UInt64) {
        tx = DirectionLimiter(limits.tx, now: now)
        rx = DirectionLimiter(limits.rx, now: now)
    }

    public var limits: RateLimits { RateLimits(tx: tx.limits, rx: rx.limits) }

    public mutating func update(_ limits: RateLimits, now: UInt64) {
        tx.update(limits.tx, now: now)
        rx.update(limits.rx, now: now)
    }
}
