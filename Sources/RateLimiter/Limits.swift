// Limit configuration values and their JSON form (stdlib Codable only, no Foundation).
//
// Canonical JSON (what encoding produces, and what decoding accepts):
//   {"bandwidth": {"size": 81920, "refill_time_ns": 65536000, "one_time_burst": 0},
//    "ops":       {"size": 8, "refill_time_ns": 8000000}}
// A missing or null "bandwidth"/"ops" means no limit of that kind; "one_time_burst"
// may be omitted (0). Decoding also takes what a PATCH does for "bandwidth"/"ops" (see
// DirectionUpdate: "off", a flag string, a plain number), and the convenience form
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
        self = try DirectionUpdate(from: decoder).applied(to: .unlimited)
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
}

/// A change to one direction's limits: the body of PUT and PATCH /vm/limits, per
/// direction, and what tapwirectl's flags turn into.
///
///     {"tx": {"bandwidth": "100Mbit,burst=64KiB", "ops": "10000"}, "rx": {"ops": null}}
///
/// Within a direction, "bandwidth" and "ops" are each one of:
///   absent              PATCH: keep the current limit.  PUT: no limit.
///   null or "off"       remove the limit
///   "RATE[,burst=...]"  the flag syntax (--tx-bandwidth / --tx-ops), parsed by LimitParser
///   12500000            a plain number: bytes/s (bandwidth) or frames/s (ops), default burst
///   {"size": 81920, "refill_time_ns": 6553600, "one_time_burst": 0}   a canonical bucket
/// A kind may instead use the convenience keys ("bandwidth_rate", ...), where an absent key
/// keeps and null removes; a whole direction may be null or "off" to remove both of its
/// limits. Unknown keys are errors. `DirectionLimits` decodes the same, applied to no limits.
public struct DirectionUpdate: Sendable, Equatable {
    public enum Change: Sendable, Equatable {
        case keep
        case remove
        case set(BucketConfig)

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

    /// Removes both limits.
    public static let removeAll = DirectionUpdate(bandwidth: .remove, ops: .remove)

    /// Parses flag-style values: nil keeps, "off" removes, anything else goes through
    /// LimitParser. `bandwidthFlag` / `opsFlag` name the field in error messages
    /// (e.g. "--tx-bandwidth" or "tx.bandwidth").
    public static func parse(bandwidth: String?, ops: String?,
                             bandwidthFlag: String, opsFlag: String) throws(LimitParseError) -> DirectionUpdate {
        var update = DirectionUpdate()
        if let bandwidth {
            update.bandwidth = isOff(bandwidth) ? .remove : .set(try LimitParser.bandwidth(bandwidth, flag: bandwidthFlag))
        }
        if let ops {
            update.ops = isOff(ops) ? .remove : .set(try LimitParser.ops(ops, flag: opsFlag))
        }
        return update
    }

    /// "off" (any case, surrounding blanks ignored) removes a limit.
    public static func isOff(_ text: String) -> Bool {
        LimitParser.trimmed(text[...]).lowercased() == "off"
    }

    /// True when nothing changes.
    public var isEmpty: Bool { bandwidth == .keep && ops == .keep }

    /// `.keep` keeps what `current` has (PATCH); applied to `.unlimited` it means no limit (PUT).
    public func applied(to current: DirectionLimits) -> DirectionLimits {
        DirectionLimits(bandwidth: bandwidth.applied(to: current.bandwidth), ops: ops.applied(to: current.ops))
    }
}

/// Both directions' changes: the body of PUT and PATCH /vm/limits.
public struct LimitUpdate: Sendable, Equatable {
    /// nil: the direction was not mentioned.
    public var tx: DirectionUpdate?
    public var rx: DirectionUpdate?

    public init(tx: DirectionUpdate? = nil, rx: DirectionUpdate? = nil) {
        self.tx = tx
        self.rx = rx
    }

    /// True when nothing changes under PATCH.
    public var isEmpty: Bool { (tx?.isEmpty ?? true) && (rx?.isEmpty ?? true) }

    /// The limits after this update: `replace` (PUT) replaces both directions, anything
    /// not given becoming unlimited; otherwise (PATCH) only the given fields change.
    public func applied(to current: RateLimits, replace: Bool) -> RateLimits {
        let base = replace ? RateLimits.unlimited : current
        return RateLimits(tx: tx?.applied(to: base.tx) ?? base.tx, rx: rx?.applied(to: base.rx) ?? base.rx)
    }
}

// MARK: - Decoding machinery

/// Any JSON object key, for decoders that look at every key (to refuse unknown ones).
public struct JSONKey: CodingKey {
    public var stringValue: String
    public var intValue: Int? { nil }
    public init(_ string: String) { stringValue = string }
    public init?(stringValue: String) { self.stringValue = stringValue }
    public init?(intValue: Int) { nil }
}

/// "tx.bandwidth", "queues.[2].size": a coding path for error messages.
public func dottedPath(_ path: [any CodingKey]) -> String {
    path.map { $0.intValue.map { "[\($0)]" } ?? $0.stringValue }.joined(separator: ".")
}

func rejectUnknownKeys(_ decoder: any Decoder, allowed: [String], expected: String? = nil) throws {
    let c = try decoder.container(keyedBy: JSONKey.self)
    for key in c.allKeys where !allowed.contains(key.stringValue) {
        throw DecodingError.dataCorrupted(DecodingError.Context(
            codingPath: c.codingPath + [key],
            debugDescription: "unknown key \"\(key.stringValue)\"; "
                + (expected ?? "expected one of: \(allowed.joined(separator: ", "))")))
    }
}

func corrupted(_ path: [any CodingKey], _ description: String, _ underlying: (any Error)? = nil) -> DecodingError {
    .dataCorrupted(DecodingError.Context(codingPath: path, debugDescription: description, underlyingError: underlying))
}

extension LimitUpdate: Codable {
    enum CodingKeys: String, CodingKey { case tx, rx }

    public init(from decoder: any Decoder) throws {
        try rejectUnknownKeys(decoder, allowed: ["tx", "rx"], expected: "expected \"tx\" and/or \"rx\"")
        let c = try decoder.container(keyedBy: JSONKey.self)
        tx = try Self.decodeDirection(c, "tx")
        rx = try Self.decodeDirection(c, "rx")
    }

    private static func decodeDirection(_ c: KeyedDecodingContainer<JSONKey>,
                                        _ name: String) throws -> DirectionUpdate? {
        let key = JSONKey(name)
        guard c.contains(key) else { return nil }
        if try c.decodeNil(forKey: key) { return .removeAll }
        let expected = "expected an object like {\"bandwidth\": \"100Mbit\", \"ops\": \"10000\"}, null or \"off\""
        if let text = try? c.decode(String.self, forKey: key) {
            if DirectionUpdate.isOff(text) { return .removeAll }
            throw corrupted(c.codingPath + [key], expected + ", not the string \"\(text)\"")
        }
        do {
            return try c.decode(DirectionUpdate.self, forKey: key)
        } catch DecodingError.typeMismatch(_, let context) where context.codingPath.count == c.codingPath.count + 1 {
            throw corrupted(c.codingPath + [key], expected)
        }
    }
}

extension DirectionUpdate: Codable {
    static let limitKeys = ["bandwidth", "ops",
                            "bandwidth_rate", "bandwidth_burst", "bandwidth_one_time_burst",
                            "ops_rate", "ops_burst", "ops_one_time_burst"]

    public init(from decoder: any Decoder) throws {
        try rejectUnknownKeys(decoder, allowed: Self.limitKeys)
        let c = try decoder.container(keyedBy: JSONKey.self)
        self.init(bandwidth: try Self.decodeKind(c, "bandwidth"), ops: try Self.decodeKind(c, "ops"))
    }

    /// One kind of limit: its own key ("bandwidth") or its convenience keys ("bandwidth_rate",
    /// "bandwidth_burst", "bandwidth_one_time_burst", where null removes), not both.
    private static func decodeKind(_ c: KeyedDecodingContainer<JSONKey>, _ name: String) throws -> Change {
        let key = JSONKey(name)
        let rateKey = JSONKey(name + "_rate")
        let burstKey = JSONKey(name + "_burst")
        let oneTimeKey = JSONKey(name + "_one_time_burst")
        let convenience = [rateKey, burstKey, oneTimeKey].filter { c.contains($0) }
        let isBandwidth = name == "bandwidth"

        if c.contains(key) {
            if let other = convenience.first {
                throw corrupted(c.codingPath + [other],
                                "\"\(other.stringValue)\" cannot be combined with \"\(name)\"; use one form or the other")
            }
            return try decodeChange(c, key, isBandwidth: isBandwidth)
        }
        if convenience.isEmpty { return .keep }

        let rate = try scalar(c, rateKey)
        let burst = try scalar(c, burstKey)
        let oneTime = try scalar(c, oneTimeKey)
        guard let rate else {
            // {"bandwidth_rate": null} removes; a burst without a rate is meaningless.
            if c.contains(rateKey), burst == nil, oneTime == nil { return .remove }
            let offending = burst != nil ? burstKey : oneTimeKey
            throw corrupted(c.codingPath + [offending], "\"\(offending.stringValue)\" needs \"\(rateKey.stringValue)\"")
        }
        do {
            return .set(isBandwidth ? try LimitParser.bandwidth(rate: rate, burst: burst, oneTimeBurst: oneTime)
                                    : try LimitParser.ops(rate: rate, burst: burst, oneTimeBurst: oneTime))
        } catch {
            throw corrupted(c.codingPath + [JSONKey(error.flag)], error.description, error)
        }
    }

    /// The value of "bandwidth" or "ops": null, "off", a flag string, a plain number, or a canonical bucket.
    private static func decodeChange(_ c: KeyedDecodingContainer<JSONKey>, _ key: JSONKey,
                                     isBandwidth: Bool) throws -> Change {
        if try c.decodeNil(forKey: key) { return .remove }
        let path = c.codingPath + [key]
        var text: String?
        if let s = try? c.decode(String.self, forKey: key) {
            if isOff(s) { return .remove }
            text = s
        } else if let n = try? c.decode(UInt64.self, forKey: key) {
            text = String(n)
        }
        if let text {
            do {
                return .set(isBandwidth ? try LimitParser.bandwidth(text, flag: dottedPath(path))
                                        : try LimitParser.ops(text, flag: dottedPath(path)))
            } catch {
                throw corrupted(path, error.description, error)
            }
        }
        do {
            return .set(try c.decode(BucketConfig.self, forKey: key))
        } catch DecodingError.typeMismatch(_, let context) where context.codingPath.count == path.count {
            let syntax = isBandwidth ? "\"100Mbit,burst=64KiB\"" : "\"10000,burst=64\""
            throw corrupted(path, "expected a string like \(syntax), \"off\", null, or an object {\"size\": N, \"refill_time_ns\": N, \"one_time_burst\": N}")
        }
    }

    /// A string, or a JSON integer rendered as its decimal string; nil for absent/null.
    private static func scalar(_ c: KeyedDecodingContainer<JSONKey>, _ key: JSONKey) throws -> String? {
        guard c.contains(key), try !c.decodeNil(forKey: key) else { return nil }
        if let n = try? c.decode(UInt64.self, forKey: key) { return String(n) }
        return try c.decode(String.self, forKey: key)
    }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: JSONKey.self)
        for (name, change) in [("bandwidth", bandwidth), ("ops", ops)] {
            switch change {
            case .keep: break
            case .remove: try c.encodeNil(forKey: JSONKey(name))
            case .set(let config): try c.encode(config, forKey: JSONKey(name))
            }
        }
    }
}
