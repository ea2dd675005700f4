// Limit configuration values and their JSON form (stdlib Codable only, no Foundation).
//
// Canonical JSON (what encoding produces, and what decoding accepts):
//   {"bandwidth": {"size": 81920, "refill_time_ns": 65536000, "one_time_burst": 0},
//    "ops":       {"size": 8, "refill_time_ns": 8000000}}
// A missing or null "bandwidth"/"ops" means no limit of that kind; "one_time_burst"
// may be omitted (0). Decoding additionally accepts the convenience form
//   {"bandwidth_rate": "100Mbit", "bandwidth_burst": "64KiB", "bandwidth_one_time_burst": "1MiB",
//    "ops_rate": "1000", "ops_burst": "16", "ops_one_time_burst": 100}
// whose values use LimitParser's syntax (strings, or plain JSON integers meaning
// bytes/s, bytes, frames/s or frames). Mixing "bandwidth" with "bandwidth_*" keys is
// an error, as is any unknown key (a typo must not silently mean "unlimited").
// Parse errors surface as DecodingError.dataCorrupted whose debugDescription is the
// LimitParseError's description (naming the key, the value and the accepted forms).

/// One token bucket's configuration: `size` tokens refilled in `refillTimeNanoseconds`
/// (rate = size / refillTime), plus a one-time burst spent first and never refilled.
/// A zero `size` or zero `refillTimeNanoseconds` disables the bucket (no limit), as in
/// Firecracker.
public struct BucketConfig: Sendable, Equatable, Hashable {
    public var size: UInt64
    public var refillTimeNanoseconds: UInt64
    public var oneTimeBurst: UInt64

    public init(size: UInt64, refillTimeNanoseconds: UInt64, oneTimeBurst: UInt64 = 0) {
        self.size = size
        self.refillTimeNanoseconds = refillTimeNanoseconds
        self.oneTimeBurst = oneTimeBurst
    }

    /// False when `size` or `refillTimeNanoseconds` is zero: such a bucket limits nothing.
    @inlinable
    public var isEnabled: Bool { size != 0 && refillTimeNanoseconds != 0 }
}

extension BucketConfig: Codable {
    enum CodingKeys: String, CodingKey, CaseIterable {
        case size
        case refillTimeNanoseconds = "refill_time_ns"
        case oneTimeBurst = "one_time_burst"
    }

    public init(from decoder: any Decoder) throws {
        try rejectUnknownKeys(decoder, allowed: CodingKeys.allCases.map(\.stringValue))
        let c = try decoder.container(keyedBy: CodingKeys.self)
        size = try c.decode(UInt64.self, forKey: .size)
        refillTimeNanoseconds = try c.decode(UInt64.self, forKey: .refillTimeNanoseconds)
        oneTimeBurst = try c.decodeIfPresent(UInt64.self, forKey: .oneTimeBurst) ?? 0
    }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(size, forKey: .size)
        try c.encode(refillTimeNanoseconds, forKey: .refillTimeNanoseconds)
        try c.encode(oneTimeBurst, forKey: .oneTimeBurst)
    }
}

/// The limits for one direction (guest transmit or guest receive). `nil` = no limit.
public struct DirectionLimits: Sendable, Equatable, Hashable {
    /// Bytes.
    public var bandwidth: BucketConfig?
    /// Frames (operations).
    public var ops: BucketConfig?

    public init(bandwidth: BucketConfig? = nil, ops: BucketConfig? = nil) {
        self.bandwidth = bandwidth
        self.ops = ops
    }

    public static let unlimited = DirectionLimits()

    /// True when neither bucket is enabled.
    public var isUnlimited: Bool {
        !(bandwidth?.isEnabled ?? false) && !(ops?.isEnabled ?? false)
    }
}

extension DirectionLimits: Codable {
    enum CodingKeys: String, CodingKey {
        case bandwidth, ops
    }

    public init(from decoder: any Decoder) throws {
        let fields = try LimitFields(from: decoder)
        bandwidth = fields.bandwidth.value
        ops = fields.ops.value
    }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encodeIfPresent(bandwidth, forKey: .bandwidth)
        try c.encodeIfPresent(ops, forKey: .ops)
    }
}

/// Both directions of one VM: JSON `{"tx": {...}, "rx": {...}}` (either may be omitted).
/// "tx" is what the guest transmits, "rx" what it receives.
public struct RateLimits: Sendable, Equatable, Hashable, Codable {
    public var tx: DirectionLimits
    public var rx: DirectionLimits

    public init(tx: DirectionLimits = .unlimited, rx: DirectionLimits = .unlimited) {
        self.tx = tx
        self.rx = rx
    }

    public static let unlimited = RateLimits()

    enum CodingKeys: String, CodingKey, CaseIterable { case tx, rx }

    public init(from decoder: any Decoder) throws {
        try rejectUnknownKeys(decoder, allowed: CodingKeys.allCases.map(\.stringValue))
        let c = try decoder.container(keyedBy: CodingKeys.self)
        tx = try c.decodeIfPresent(DirectionLimits.self, forKey: .tx) ?? .unlimited
        rx = try c.decodeIfPresent(DirectionLimits.self, forKey: .rx) ?? .unlimited
    }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(tx, forKey: .tx)
        try c.encode(rx, forKey: .rx)
    }
}

/// A partial update for one direction (for an HTTP PATCH): a key that is absent
/// keeps the current limit, an explicit `null` removes it, a value replaces it.
/// Accepts the same two JSON forms as `DirectionLimits`.
/// `{"ops": null}` removes the ops limit and keeps bandwidth;
/// `{"bandwidth_rate": "1Gbit"}` replaces bandwidth (with the default burst) and keeps ops.
public struct LimitPatch: Sendable, Equatable, Decodable {
    public enum Change: Sendable, Equatable {
        case keep
        case remove
        case set(BucketConfig)

        var value: BucketConfig? {
            if case .set(let config) = self { return config }
            return nil
        }

        public func applied(to current: BucketConfig?) -> BucketConfig? {
            switch self {
            case .keep: return current
            case .remove: return nil
            case .set(let config): return config
            }
        }
    }

    public var bandwidth: Change
    public var ops: Change

    public init(bandwidth: Change = .keep, ops: Change = .keep) {
        self.bandwidth = bandwidth
        self.ops = ops
    }

    public init(from decoder: any Decoder) throws {
        let fields = try LimitFields(from: decoder)
        bandwidth = fields.bandwidth
        ops = fields.ops
    }

    public func applied(to current: DirectionLimits) -> DirectionLimits {
        DirectionLimits(bandwidth: bandwidth.applied(to: current.bandwidth),
                        ops: ops.applied(to: current.ops))
    }
}

/// A partial update for both directions: `{"tx": {...patch...}}`; an absent direction is kept.
public struct RateLimitsPatch: Sendable, Equatable, Decodable {
    public var tx: LimitPatch
    public var rx: LimitPatch

    public init(tx: LimitPatch = LimitPatch(), rx: LimitPatch = LimitPatch()) {
        self.tx = tx
        self.rx = rx
    }

    enum CodingKeys: String, CodingKey, CaseIterable { case tx, rx }

    public init(from decoder: any Decoder) throws {
        try rejectUnknownKeys(decoder, allowed: CodingKeys.allCases.map(\.stringValue))
        let c = try decoder.container(keyedBy: CodingKeys.self)
        tx = try c.decodeIfPresent(LimitPatch.self, forKey: .tx) ?? LimitPatch()
        rx = try c.decodeIfPresent(LimitPatch.self, forKey: .rx) ?? LimitPatch()
    }

    public func applied(to current: RateLimits) -> RateLimits {
        RateLimits(tx: tx.applied(to: current.tx), rx: rx.applied(to: current.rx))
    }
}

// MARK: - Decoding machinery shared by DirectionLimits and LimitPatch

struct AnyCodingKey: CodingKey {
    var stringValue: String
    var intValue: Int? { nil }
    init(_ string: String) { stringValue = string }
    init?(stringValue: String) { self.stringValue = stringValue }
    init?(intValue: Int) { nil }
}

func rejectUnknownKeys(_ decoder: any Decoder, allowed: [String]) throws {
    let c = try decoder.container(keyedBy: AnyCodingKey.self)
    for key in c.allKeys where !allowed.contains(key.stringValue) {
        throw DecodingError.dataCorrupted(DecodingError.Context(
            codingPath: c.codingPath + [key],
            debugDescription: "unknown key \"\(key.stringValue)\"; expected one of: \(allowed.joined(separator: ", "))"))
    }
}

/// Decodes either the canonical or the convenience form into tri-state changes.
struct LimitFields {
    var bandwidth: LimitPatch.Change = .keep
    var ops: LimitPatch.Change = .keep

    static let keys = ["bandwidth", "ops",
                       "bandwidth_rate", "bandwidth_burst", "bandwidth_one_time_burst",
                       "ops_rate", "ops_burst", "ops_one_time_burst"]

    init(from decoder: any Decoder) throws {
        try rejectUnknownKeys(decoder, allowed: Self.keys)
        let c = try decoder.container(keyedBy: AnyCodingKey.self)
        bandwidth = try Self.decodeKind(c, name: "bandwidth", isBandwidth: true)
        ops = try Self.decodeKind(c, name: "ops", isBandwidth: false)
    }

    private static func decodeKind(_ c: KeyedDecodingContainer<AnyCodingKey>, name: String,
                                   isBandwidth: Bool) throws -> LimitPatch.Change {
        let canonical = AnyCodingKey(name)
        let rateKey = AnyCodingKey(name + "_rate")
        let burstKey = AnyCodingKey(name + "_burst")
        let oneTimeKey = AnyCodingKey(name + "_one_time_burst")
        let convenience = [rateKey, burstKey, oneTimeKey].filter { c.contains($0) }

        if c.contains(canonical) {
            if let other = convenience.first {
                throw DecodingError.dataCorrupted(DecodingError.Context(
                    codingPath: c.codingPath + [other],
                    debugDescription: "\"\(other.stringValue)\" cannot be combined with \"\(name)\"; use one form or the other"))
            }
            if try c.decodeNil(forKey: canonical) { return .remove }
            return .set(try c.decode(BucketConfig.self, forKey: canonical))
        }
        if convenience.isEmpty { return .keep }

        let rate = try scalar(c, rateKey)
        let burst = try scalar(c, burstKey)
        let oneTime = try scalar(c, oneTimeKey)
        guard let rate else {
            // {"bandwidth_rate": null} removes; a burst without a rate is meaningless.
            if c.contains(rateKey), burst == nil, oneTime == nil { return .remove }
            let offending = burst != nil ? burstKey : oneTimeKey
            throw DecodingError.dataCorrupted(DecodingError.Context(
                codingPath: c.codingPath + [offending],
                debugDescription: "\"\(offending.stringValue)\" needs \"\(rateKey.stringValue)\""))
        }
        do {
            if isBandwidth {
                return .set(try LimitParser.bandwidth(rate: rate, burst: burst, oneTimeBurst: oneTime,
                                                      rateField: rateKey.stringValue,
                                                      burstField: burstKey.stringValue,
                                                      oneTimeBurstField: oneTimeKey.stringValue))
            } else {
                return .set(try LimitParser.ops(rate: rate, burst: burst, oneTimeBurst: oneTime,
                                                rateField: rateKey.stringValue,
                                                burstField: burstKey.stringValue,
                                                oneTimeBurstField: oneTimeKey.stringValue))
            }
        } catch {
            throw DecodingError.dataCorrupted(DecodingError.Context(
                codingPath: c.codingPath + [AnyCodingKey(error.flag)],
                debugDescription: error.description, underlyingError: error))
        }
    }

    /// A string, or a JSON integer rendered as its decimal string; nil for absent/null.
    private static func scalar(_ c: KeyedDecodingContainer<AnyCodingKey>, _ key: AnyCodingKey) throws -> String? {
        guard c.contains(key), try !c.decodeNil(forKey: key) else { return nil }
        if let n = try? c.decode(UInt64.self, forKey: key) { return String(n) }
        return try c.decode(String.self, forKey: key)
    }
}
